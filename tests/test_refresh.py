"""Refresh plan internals: hashing, state collapse, and blocks handed to Ray Data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline import schema
from pipeline.build import rows_per_block
from pipeline.compat import dataset_from_refs
from pipeline.manifest import fnv1a64
from pipeline.refresh import (
    Classification,
    RefreshPlan,
    _collapse_state,
    block_metadata,
    classify,
    hash_buckets,
)


def test_dataset_from_refs_keeps_blocks_rows_and_schema(ray_cluster):
    ray = ray_cluster
    blocks = [
        pa.table({"video_id": [f"v{i}" for i in range(s, s + n)], "uri": ["x"] * n})
        for s, n in ((0, 3), (3, 3), (6, 1))
    ]
    refs = [ray.put(b) for b in blocks]
    ds = dataset_from_refs(refs, [block_metadata(b) for b in blocks])
    # Known without executing anything: the metadata came from the driver.
    assert ds.count() == 7
    assert ds.schema().names == ["video_id", "uri"]
    assert ds.num_blocks() == 3
    seen = [len(batch["video_id"]) for batch in ds.iter_batches(batch_size=None)]
    assert seen == [3, 3, 1]
    assert ds.take_all() == ray.data.from_arrow_refs(refs).take_all()


def test_fnv1a64_known_values_slices_chunks_and_nulls():
    assert fnv1a64(pa.array([], pa.string())).tolist() == []
    h = fnv1a64(pa.array(["", "a", "foobar"]))
    assert h.tolist() == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8]
    ids = pa.array([f"video-{i:07d}" for i in range(1000)] + ["caf\u00e9", None])
    whole = fnv1a64(ids)
    assert whole[-1] == fnv1a64(pa.array([""]))[0]  # null hashes like ""
    assert len(set(whole[:1000].tolist())) == 1000
    # The same id gives the same hash whatever array it sits in (slices, chunks).
    np.testing.assert_array_equal(fnv1a64(ids.slice(500, 502)), whole[500:])
    chunked = pa.chunked_array([ids.slice(0, 300), ids.slice(300)])
    np.testing.assert_array_equal(fnv1a64(chunked), whole)
    buckets = hash_buckets(ids.slice(0, 1000), 8)
    assert buckets.min() >= 0 and buckets.max() < 8
    assert np.bincount(buckets, minlength=8).min() > 80  # spread, not all in one


def _collapse_with_string_minmax(s: pa.Table) -> pa.Table:
    """The previous implementation (string min/max group-by), as the oracle."""
    agg = s.group_by(schema.VIDEO_ID).aggregate(
        [
            (c, op)
            for c in (schema.CONTENT_VERSION, schema.SIGNATURE, schema.URI)
            for op in ("min", "max")
        ]
    )
    consistent = pc.and_(
        pc.equal(agg[f"{schema.CONTENT_VERSION}_min"], agg[f"{schema.CONTENT_VERSION}_max"]),
        pc.equal(agg[f"{schema.SIGNATURE}_min"], agg[f"{schema.SIGNATURE}_max"]),
    )
    return pa.table(
        {
            schema.VIDEO_ID: agg[schema.VIDEO_ID],
            "t_version": agg[f"{schema.CONTENT_VERSION}_min"],
            "t_signature": pc.if_else(
                pc.fill_null(consistent, False), agg[f"{schema.SIGNATURE}_min"], None
            ),
            "t_uri": agg[f"{schema.URI}_min"],
        }
    )


def test_rank_coded_collapse_equals_string_min_max():
    rng = np.random.default_rng(5)
    n = 5000

    def pick(options):
        return [options[i] for i in rng.integers(0, len(options), n)]

    s = pa.table(
        {
            schema.VIDEO_ID: pa.array([f"v{i}" for i in rng.integers(0, 1500, n)]),
            schema.CONTENT_VERSION: pa.array(pick(["1", "2", "10", None, "caf\u00e9", ""])),
            schema.SIGNATURE: pa.array(pick(["sigA", "sigB", None])),
            schema.URI: pa.array(pick(["s3://b/a.mp4", "s3://b/B.mp4", "/x", None])),
        }
    )
    # Videos whose clips agree, as most do: every clip of v-same has one version/signature.
    same = pa.table(
        {
            schema.VIDEO_ID: ["same"] * 3,
            schema.CONTENT_VERSION: ["7"] * 3,
            schema.SIGNATURE: ["sigA"] * 3,
            schema.URI: ["s3://b/same.mp4"] * 3,
        }
    )
    s = pa.concat_tables([s, same])
    got = _collapse_state(s).sort_by(schema.VIDEO_ID)
    want = _collapse_with_string_minmax(s).sort_by(schema.VIDEO_ID)
    assert got.to_pylist() == want.to_pylist()
    row = got.filter(pc.equal(got[schema.VIDEO_ID], "same")).to_pylist()[0]
    assert row["t_signature"] == "sigA" and row["t_version"] == "7"


def _bucket(m: pa.Table, s: pa.Table | None = None, e: pa.Table | None = None,
            version_of=None) -> Classification:  # fmt: skip
    """Classify manifest rows in incremental mode, with the run signature "sig" (pure: no
    Ray, no tables)."""
    empty_state = pa.table({c: pa.array([], pa.string()) for c in _STATE})
    empty_errors = pa.table({c: pa.array([], pa.string()) for c in _ERRORS})
    return classify(
        m,
        empty_state if s is None else s,
        empty_errors if e is None else e,
        signature="sig",
        mode="incremental",
        version_of=version_of,
    )


_STATE = (schema.VIDEO_ID, schema.CONTENT_VERSION, schema.SIGNATURE, schema.URI)
_ERRORS = (schema.VIDEO_ID, schema.STATUS, schema.CONTENT_VERSION, schema.SIGNATURE, schema.URI)


def _planned_rows(m: pa.Table, found: Classification) -> pa.Table:
    return m.take(found.embed)


def test_nested_metadata_columns_reach_the_rows_to_embed():
    """Arrow cannot join list/struct/map columns: only keys are joined, rows are taken."""
    m = pa.table(
        {
            schema.VIDEO_ID: ["b", "a", "c"],
            schema.URI: ["s3://x/b.mp4", "s3://x/a.mp4", "s3://x/c.mp4"],
            "tags": pa.array([["x", "y"], [], None], pa.list_(pa.string())),
            "info": pa.array([{"w": 1}, {"w": 2}, {"w": 3}]),
            "props": pa.array([[("k", "v")], [], [("a", "b")]], pa.map_(pa.string(), pa.string())),
            "t_uri": ["clash?", "no", "no"],  # the state's join column names are no problem
        }
    )
    s = pa.table(
        {
            schema.VIDEO_ID: ["a"],
            schema.CONTENT_VERSION: ["etag-a"],
            schema.SIGNATURE: ["sig"],
            schema.URI: ["s3://x/a.mp4"],
        }
    )
    plan = _bucket(m, s, version_of=lambda uris: ["etag-a"] * len(uris))
    assert (plan.new, plan.skipped) == (2, 1)
    rows = _planned_rows(m, plan)
    assert rows.schema == m.schema
    assert (
        rows.to_pylist() == m.filter(pc.is_in(m[schema.VIDEO_ID], pa.array(["b", "c"]))).to_pylist()
    )


def test_empty_manifest_version_is_looked_up_like_a_missing_one():
    """Decode records the ETag for `version == ""`; the plan compares against the same."""
    m = pa.table({schema.VIDEO_ID: ["a"], schema.URI: ["s3://x/a.mp4"], schema.VERSION: [""]})
    s = pa.table(
        {
            schema.VIDEO_ID: ["a"],
            schema.CONTENT_VERSION: ["etag-1"],
            schema.SIGNATURE: ["sig"],
            schema.URI: ["s3://x/a.mp4"],
        }
    )
    asked = []
    unchanged = _bucket(m, s, version_of=lambda uris: asked.extend(uris) or ["etag-1"])
    assert (unchanged.skipped, unchanged.changed, asked) == (1, 0, ["s3://x/a.mp4"])
    changed = _bucket(m, s, version_of=lambda uris: ["etag-2"])
    assert (changed.skipped, changed.changed) == (0, 1)


@pytest.mark.parametrize(
    ("status", "retried"),
    [("embed_error", True), ("timeout", True), ("fetch_error", True), ("decode_error", False)],
)
def test_transient_failures_are_retried_deterministic_ones_skipped(status, retried):
    m = pa.table({schema.VIDEO_ID: ["a"], schema.URI: ["s3://x/a.mp4"], schema.VERSION: ["1"]})
    e = pa.table(
        {
            schema.VIDEO_ID: ["a"],
            schema.STATUS: [status],
            schema.CONTENT_VERSION: ["1"],
            schema.SIGNATURE: ["sig"],
            schema.URI: ["s3://x/a.mp4"],
        }
    )
    plan = _bucket(m, e=e)
    assert (plan.retried, plan.skipped) == ((1, 0) if retried else (0, 1))


def test_an_edited_range_is_a_change():
    """Decode records `version#t=start,end` for a restricted row; the plan compares the same,
    so trimming a row's range re-embeds it and an untouched row is skipped."""
    s = pa.table(
        {
            schema.VIDEO_ID: ["a", "b", "c"],
            schema.CONTENT_VERSION: ["v1#t=10.0,20.0", "v1#t=5.0,", "v1"],
            schema.SIGNATURE: ["sig"] * 3,
            schema.URI: ["s3://x/a.mp4", "s3://x/b.mp4", "s3://x/c.mp4"],
        }
    )

    def manifest(a_end: float, c_start: float | None) -> pa.Table:
        return pa.table(
            {
                schema.VIDEO_ID: ["a", "b", "c"],
                schema.URI: ["s3://x/a.mp4", "s3://x/b.mp4", "s3://x/c.mp4"],
                schema.VERSION: ["v1"] * 3,
                schema.START_S: pa.array([10.0, 5.0, c_start], pa.float64()),
                schema.END_S: pa.array([a_end, None, None], pa.float64()),
            }
        )

    same = _bucket(manifest(20.0, None), s)
    assert (same.skipped, same.changed) == (3, 0)
    edited = _bucket(manifest(25.0, 3.0), s)
    assert (edited.skipped, edited.changed) == (1, 2)
    rows = _planned_rows(manifest(25.0, 3.0), edited)
    assert sorted(rows[schema.VIDEO_ID].to_pylist()) == ["a", "c"]


def test_blocks_follow_the_rows_to_embed_not_the_manifest_size(ray_cluster):
    """A few changed videos of a huge manifest still make decode-batch blocks (one decode
    task each, spread over every decoder); many make bigger blocks, within the cap."""
    m = pa.table(
        {
            schema.VIDEO_ID: [f"v{i:03d}" for i in range(100)],
            schema.URI: [f"s3://x/{i}.mp4" for i in range(100)],
        }
    )

    def sizes(blocks: tuple[int, int]) -> list[int]:
        plan = RefreshPlan(mode="full")
        empty = pa.table({c: pa.array([], pa.string()) for c in _STATE})
        errors = pa.table({c: pa.array([], pa.string()) for c in _ERRORS})
        found = classify(m, empty, errors, signature="sig", mode="full")
        plan.add(found, m, rows_per_block(len(found.embed), *blocks))
        assert sum(n for _, n, _ in plan.embed_refs) == 100
        return [n for _, n, _ in plan.embed_refs]

    assert sizes((16, 4096)) == [16] * 6 + [4]
    assert sizes((16, 2)) == [64, 36]  # at most 2 blocks: a multiple of the decode batch
