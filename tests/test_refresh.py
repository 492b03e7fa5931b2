"""Refresh plan internals: hashing, state collapse, and blocks handed to Ray Data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema
from pipeline.refresh import (
    _collapse_state,
    block_metadata,
    dataset_from_refs,
    fnv1a64,
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
