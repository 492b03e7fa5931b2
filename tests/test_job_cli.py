"""jobs/embed_catalog.py's arguments reach the run configuration."""

from __future__ import annotations

import dataclasses

import pytest

from jobs.embed_catalog import build_config, parse_args

BASE = ["--manifest", "m.parquet", "--db", "db", "--model", "tiny-random"]


def test_decoder_choice_reaches_the_decode_config():
    assert build_config(parse_args(BASE), has_gpu=False).decode.decoder == "decord"
    cfg = build_config(parse_args([*BASE, "--decoder", "pyav"]), has_gpu=False)
    assert cfg.decode.decoder == "pyav"
    assert cfg.decode.worker_params()["decoder"] == "pyav"
    with pytest.raises(SystemExit):
        parse_args([*BASE, "--decoder", "opencv"])


@pytest.mark.parametrize(
    ("argv", "cpus", "gpu", "layout"),
    [
        ([], 2, False, (1, 2)),  # the embedded default: one actor, a decoder per core
        ([], 16, True, (5, 3)),  # 15 free CPUs beside the embed actor: 5 x 3, none idle
        ([], 18, True, (17, 1)),  # 17 free (prime): one decoder per actor
        ([], 33, True, (8, 4)),
        (["--decode-actors", "150"], 300, True, (150, 1)),  # decode actors = decode cores
        (["--decoders-per-actor", "4"], 16, True, (3, 4)),
        (["--decode-actors", "2", "--decoders-per-actor", "3"], 64, True, (2, 3)),
    ],
)
def test_decode_layout(monkeypatch, argv, cpus, gpu, layout):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": float(cpus)})
    res = build_config(parse_args([*BASE, *argv]), has_gpu=gpu).resources
    assert res.resolved_decode_layout() == layout


def test_decoders_per_actor_is_validated():
    res = build_config(parse_args(BASE), has_gpu=False).resources
    with pytest.raises(ValueError, match="decoders_per_actor"):
        dataclasses.replace(res, decoders_per_actor=0)
