"""jobs/embed_catalog.py's arguments reach the run configuration."""

from __future__ import annotations

import dataclasses
import json
import logging

import pyarrow as pa
import pytest

from jobs import embed_catalog
from jobs.embed_catalog import build_config, parse_args
from pipeline import runner, runs
from pipeline.manifest import ManifestError

BASE = ["--manifest", "m.parquet", "--db", "db", "--model", "tiny-random"]


def test_decoder_choice_reaches_the_decode_config():
    default = build_config(parse_args(BASE), has_gpu=False).decode
    assert (default.decoder, default.sampling) == ("pyav", "exact")
    cfg = build_config(parse_args([*BASE, "--decoder", "decord"]), has_gpu=False)
    assert cfg.decode.decoder == "decord"
    assert cfg.decode.worker_params()["decoder"] == "decord"
    cfg = build_config(parse_args([*BASE, "--sampling", "keyframe"]), has_gpu=False)
    assert cfg.decode.worker_params()["sampling"] == "keyframe"
    assert ("sampling", "keyframe") in cfg.decode.signature_inputs()
    for bad in (["--decoder", "opencv"], ["--sampling", "nearest"]):
        with pytest.raises(SystemExit):
            parse_args([*BASE, *bad])


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


def test_allowed_roots_are_made_absolute(tmp_path, monkeypatch):
    """Decode actors on other nodes, and later queries, have another working directory."""
    monkeypatch.chdir(tmp_path)
    argv = [*BASE, "--allowed-root", "media", "--allowed-root", "file://clips", "--allowed-root"]
    cfg = build_config(parse_args([*argv, "s3://bucket/videos"]), has_gpu=False)
    assert cfg.allowed_roots == (
        str(tmp_path / "media"),
        str(tmp_path / "clips"),
        "s3://bucket/videos",
    )


def test_decoders_per_actor_is_validated():
    res = build_config(parse_args(BASE), has_gpu=False).resources
    with pytest.raises(ValueError, match="decoders_per_actor"):
        dataclasses.replace(res, decoders_per_actor=0)


@pytest.fixture
def job(monkeypatch, tmp_path):
    """`main` of the job without Ray (the run below never reaches the Ray graph), on a
    one-row local manifest; yields a function running the job with extra arguments."""
    import pyarrow.parquet as pq
    import ray

    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"video_id": ["a"], "uri": ["a.mp4"]}), manifest)
    base = ["--model", "tiny-random", "--no-maintenance"]
    paths = ["--manifest", str(manifest), "--db", str(tmp_path / "db")]

    def main(*argv: str) -> int:
        return embed_catalog.main([*base, *argv, *([] if "--manifest" in argv else paths)])

    return main


@pytest.mark.parametrize(
    "error", [ValueError("bad value"), pa.ArrowInvalid("bad cast"), OSError("lost disk")]
)
def test_a_failure_after_the_tables_are_open_exits_1_with_its_traceback(
    job, monkeypatch, caplog, capsys, error
):
    """pyarrow's and LanceDB's errors are ValueErrors: one raised once the run has opened
    (and may have written) its tables is a failure, not invalid input."""

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(runner, "plan_refresh", fail)
    caplog.set_level(logging.INFO)
    assert job() == runs.EXIT_FAILED
    [failed] = [r for r in caplog.records if r.getMessage() == "run failed"]
    assert failed.exc_info is not None and failed.exc_info[1] is error
    assert not [r for r in caplog.records if "invalid" in r.getMessage()]
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: the run failed: ") and "a rerun" in last


def test_invalid_arguments_and_manifests_exit_2(job, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    assert job("--num-frames", "99") == runs.EXIT_INVALID_INPUT
    assert job("--table", "a/b") == runs.EXIT_INVALID_INPUT
    assert job("--table", "..") == runs.EXIT_INVALID_INPUT  # reports would land in <db>/
    gcs = ["--manifest", str(tmp_path / "m.parquet"), "--db", "gs://bucket/db"]
    capsys.readouterr()
    assert job(*gcs) == runs.EXIT_INVALID_INPUT  # refused up front, not after the run
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unsupported storage scheme 'gs'" in err
    assert job("--batch-size", "0") == runs.EXIT_INVALID_INPUT
    assert job("--clip-seconds", "30", "--clip-overlap", "29.999") == runs.EXIT_INVALID_INPUT
    missing = ["--manifest", str(tmp_path / "nope.parquet"), "--db", str(tmp_path / "db")]
    assert job(*missing) == runs.EXIT_INVALID_INPUT
    assert not (tmp_path / "db").exists()  # nothing was written
    assert not [r for r in caplog.records if r.exc_info]


def test_the_resolved_config_is_logged_redacted(job, monkeypatch, caplog):
    def refuse(cfg):
        raise ManifestError("manifest is unusable")

    monkeypatch.setattr(embed_catalog, "run", refuse)
    caplog.set_level(logging.INFO)
    argv = [
        "--manifest",
        "s3://AKIAX:SECRET@bucket/m.parquet?X-Amz-Signature=SIG",
        "--db",
        "//user:SECRET@minio/db",
    ]
    assert job(*argv) == runs.EXIT_INVALID_INPUT
    [config] = [r.getMessage() for r in caplog.records if "resolved config" in r.getMessage()]
    shown = json.loads(config.partition(": ")[2])
    assert shown["manifest"] == "s3://***@bucket/m.parquet?***"
    assert shown["db"] == "//***@minio/db"
    assert not [r for r in caplog.records if "SECRET" in r.getMessage() or "SIG" in r.getMessage()]


def test_the_resolved_config_hides_secrets_holding_quotes_or_spaces(job, monkeypatch, caplog):
    """Each config value is redacted whole, so a password that splits a free-text token
    (legal in userinfo, or pasted by hand) is hidden, and every other value is logged as is."""
    seen = []

    def refuse(cfg):
        seen.append(cfg)
        raise ManifestError("manifest is unusable")

    monkeypatch.setattr(embed_catalog, "run", refuse)
    caplog.set_level(logging.INFO)
    argv = ["--manifest", "s3://AKIA:se'cret@bucket/m.parquet", "--db", "s3://u:p w@bucket/db"]
    # Without a scheme, free-text redaction cannot tell where such a secret ends.
    argv += ["--allowed-root", "//u:p w@minio/videos"]
    assert job(*argv) == runs.EXIT_INVALID_INPUT
    [config] = [r.getMessage() for r in caplog.records if "resolved config" in r.getMessage()]
    assert "se'cret" not in config and "cret@" not in config and "p w" not in config
    expected = seen[0].to_dict()
    expected.update(manifest="s3://***@bucket/m.parquet", db="s3://***@bucket/db")
    expected.update(allowed_roots=["//***@minio/videos"])
    assert json.loads(config.partition(": ")[2]) == expected
    assert expected["mode"] == "incremental" and expected["decode"]["decoder"] == "pyav"
    assert expected["decode"]["sampling"] == "exact"


def test_a_run_is_refused_while_another_writer_holds_the_table(job, tmp_path, capsys):
    """Exit 4 before anything is written, naming the holder; --lease-wait waits for it."""
    from pipeline.lease import Lease, LeaseConfig

    with Lease(str(tmp_path / "db"), "videos", "nightly-20261206", config=LeaseConfig(ttl_s=30)):
        capsys.readouterr()
        assert job() == runs.EXIT_LEASE_HELD
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: table 'videos' in ") and "nightly-20261206" in err
        assert "--lease-wait" in err and len(err.splitlines()) == 1
        assert job("--lease-wait", "0.5") == runs.EXIT_LEASE_HELD
    assert not (tmp_path / "db" / "videos.lance").exists()  # no table was created
