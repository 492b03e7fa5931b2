"""Manifest rows on their way from the decode stage into the tables: metadata nulls and
secrets in URIs that have no scheme.

The batches cross the stage boundaries as they do under Ray Data (decode output → Arrow
block → the embed stage's numpy batch → Arrow block → sink) without starting Ray.
"""

from __future__ import annotations

import logging

import lancedb
import pyarrow as pa
import pytest
from media import write_video

from pipeline import schema
from pipeline.decode import DecodeConfig, DecodeStage
from pipeline.embed import EmbedConfig, EmbedStage
from pipeline.models import ModelSpec
from pipeline.schema import Status
from pipeline.sink import LanceSink, SinkConfig

METADATA = (
    pa.field("year", pa.int64()),
    pa.field("rank", pa.int32()),
    pa.field("score", pa.float64()),
    pa.field("title", pa.string()),
    pa.field("flag", pa.bool_()),
    pa.field("shot_at", pa.timestamp("us", tz="UTC")),
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    for name in ("a", "b", "c"):
        write_video(root / f"{name}.mp4", 10)
    return root


def test_metadata_nulls_survive_decode_embed_and_sink(root, tmp_path):
    manifest = pa.table(
        {
            schema.VIDEO_ID: ["a", "b", "c", "gone"],
            schema.URI: ["a.mp4", "b.mp4", "c.mp4", "missing.mp4"],
            "year": pa.array([2020, None, 2**60 + 1, None], pa.int64()),
            "rank": pa.array([None, 2, 3, 4], pa.int32()),
            "score": pa.array([0.5, None, 1.5, None], pa.float64()),
            "title": ["t", None, "u", None],
            "flag": [True, None, False, None],
            "shot_at": pa.array([1, None, 2, None], pa.timestamp("us", tz="UTC")),
        }
    )
    decode = DecodeStage(DecodeConfig(allowed_roots=(str(root),), base_dir=str(root)))
    try:
        decoded = decode.decode_batch(manifest)
    finally:
        decode.close()
    assert decoded["year"].to_pylist() == [2020, None, 2**60 + 1, None]
    assert decoded["score"].to_pylist() == [0.5, None, 1.5, None]

    embed = EmbedStage(EmbedConfig(model=ModelSpec(model="tiny-random"), device="cpu"))
    rows = embed(decoded)  # Arrow from decode to sink, as in the pipeline's graph
    config = SinkConfig(db_uri=str(tmp_path / "db"), metadata_fields=METADATA)
    with LanceSink(config) as sink:
        sink.write(rows)

    table = lancedb.connect(config.db_uri).open_table("videos")
    assert [table.schema.field(f.name).type for f in METADATA] == [f.type for f in METADATA]
    got = {r[schema.VIDEO_ID]: r for r in table.to_arrow().to_pylist()}
    assert sorted(got) == ["a", "b", "c"]
    # Exact: a float64 detour (a null number as NaN) would round 2**60 + 1.
    assert [got[v]["year"] for v in "abc"] == [2020, None, 2**60 + 1]
    assert [got[v]["rank"] for v in "abc"] == [None, 2, 3]
    assert [got[v]["score"] for v in "abc"] == [0.5, None, 1.5]
    assert [got[v]["title"] for v in "abc"] == ["t", None, "u"]
    assert [got[v]["flag"] for v in "abc"] == [True, None, False]
    assert got["b"]["shot_at"] is None and got["c"]["shot_at"].microsecond == 2
    [error] = lancedb.connect(config.db_uri).open_table("videos_errors").to_arrow().to_pylist()
    assert (error[schema.VIDEO_ID], error[schema.STATUS]) == ("gone", Status.FETCH_ERROR)


@pytest.mark.parametrize("base", ["local", "s3"])
def test_secrets_in_uris_without_a_scheme_never_reach_rows_or_logs(
    root, tmp_path, caplog, no_network, base
):
    uris = {
        "network-path": "//AKIAX:SECRET@minio/bucket/v.mp4",
        "presigned": "bucket/v.mp4?X-Amz-Signature=SIG",
        "fragment": "bucket/v.mp4#token=SIG",
    }
    batch = pa.table({schema.VIDEO_ID: list(uris), schema.URI: list(uris.values())})
    base_dir = str(root) if base == "local" else "s3://catalog/videos"
    stage = DecodeStage(DecodeConfig(allowed_roots=(str(root),), base_dir=base_dir))
    with caplog.at_level(logging.DEBUG):
        out = stage.decode_batch(batch)
        stage.close()
        config = SinkConfig(db_uri=str(tmp_path / "db"))
        with LanceSink(config) as sink:
            sink.write(out)
    statuses = dict(
        zip(out[schema.VIDEO_ID].to_pylist(), out[schema.STATUS].to_pylist(), strict=True)
    )
    if base == "s3":  # no s3 uri takes a query or fragment, nor a host that is no bucket
        assert statuses == dict.fromkeys(uris, Status.URI_REJECTED)
    else:  # a local file may be named "v.mp4?...": looked for, and not found
        assert statuses == {
            "network-path": Status.URI_REJECTED,
            "presigned": Status.FETCH_ERROR,
            "fragment": Status.FETCH_ERROR,
        }
    assert no_network == []  # nothing was fetched from anywhere
    errors = lancedb.connect(config.db_uri).open_table("videos_errors").to_arrow().to_pylist()
    assert len(errors) == len(uris)
    shown = {e[schema.VIDEO_ID]: e[schema.URI] for e in errors}
    assert shown == {
        "network-path": "//***@minio/bucket/v.mp4",
        "presigned": "bucket/v.mp4?***",
        "fragment": "bucket/v.mp4#***",
    }
    logged = [r.getMessage() for r in caplog.records]
    assert sum("decode failed" in m for m in logged) == len(uris)
    for text in [*logged, *map(str, errors)]:
        assert "SECRET" not in text and "SIG" not in text, text
