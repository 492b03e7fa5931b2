"""docs/table-schema.md's recipe for reading the tables outside vidcat runs as written."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline import schema
from pipeline.lifecycle import MaintenanceConfig, maintain
from pipeline.sink import LanceSink, SinkConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "table-schema.md"
META = (pa.field("category", pa.string()),)


@pytest.fixture
def db(tmp_path) -> str:
    """A table the sink wrote (5 clips, one failure) and tagged by maintenance."""
    db = str(tmp_path / "db")
    n = 5
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, schema.EMBED_DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ok = pa.table(
        {
            schema.VIDEO_ID: [f"v{i}" for i in range(n)],
            schema.CLIP_INDEX: pa.array([0] * n, pa.int32()),
            schema.URI: [f"/media/v{i}.mp4" for i in range(n)],
            schema.STATUS: ["ok"] * n,
            schema.EMBEDDING: schema.fixed_size_list(emb),
            schema.MODEL: ["tiny-random@x"] * n,
            schema.SIGNATURE: ["sig"] * n,
            schema.NUM_FRAMES: pa.array([4] * n, pa.int32()),
            "category": ["sports", "news", "sports", "news", "sports"],
        }
    )
    failed = pa.table(
        {
            schema.VIDEO_ID: ["bad"],
            schema.URI: ["/media/bad.mp4"],
            schema.STATUS: ["probe_failed"],
            schema.MESSAGE: ["unreadable"],
        }
    )
    with LanceSink(SinkConfig(db_uri=db, metadata_fields=META)) as sink:
        sink.write(pa.concat_tables([ok, failed], promote_options="permissive"))
    maintain(db, "videos", config=MaintenanceConfig(), now=datetime(2026, 12, 1, tzinfo=UTC))
    return db


def _snippets() -> list[str]:
    section = DOC.read_text().split("## Reading the tables outside vidcat", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_the_reading_recipe_runs_as_documented(db):
    snippets = _snippets()
    assert len(snippets) == 2
    results = []
    for code in snippets:
        assert 'DB = "data/lancedb"' in code
        namespace: dict = {}
        exec(code.replace('DB = "data/lancedb"', f"DB = {db!r}"), namespace)
        results.append(namespace)
    lance_ns, engines = results
    assert lance_ns["videos"].count_rows() == 5
    assert lance_ns["latest"].num_rows == 5 and lance_ns["sports"].num_rows == 3
    assert lance_ns["errors"][schema.STATUS].to_pylist() == ["probe_failed"]
    assert lance_ns["tag"] == "refresh-20261201T000000Z"
    assert lance_ns["pinned"].count_rows() == 5
    assert engines["per_category"] == [("news", 2, 2), ("sports", 3, 3)]
    assert engines["failures"] == [("probe_failed", 1)]
    assert engines["recent"].height == 3 and engines["recent"].columns == [
        "clip_id",
        "video_id",
        "embedded_at",
    ]
