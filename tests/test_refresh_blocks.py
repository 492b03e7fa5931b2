"""The refresh plan's manifest blocks reach Ray Data without a remote metadata task."""

from __future__ import annotations

import pyarrow as pa

from pipeline.refresh import block_metadata, dataset_from_refs


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
