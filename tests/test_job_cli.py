"""jobs/embed_catalog.py's arguments reach the run configuration."""

from __future__ import annotations

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
