"""Synthetic embeddings tables for index and search tests: clustered unit vectors like a
video catalog's, as rows of the real embeddings schema, and a small calibrated catalog."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from pipeline.index import CalibrationConfig, IndexConfig, build_fts_indices, build_index
from pipeline.schema import (
    CLIP_END_S,
    CLIP_ID,
    CLIP_INDEX,
    CLIP_START_S,
    CONTENT_VERSION,
    DECODER,
    EMBED_DIM,
    EMBEDDED_AT,
    EMBEDDING,
    FRAME_INDICES,
    MODEL,
    NUM_FRAMES,
    SIGNATURE,
    URI,
    VIDEO_ID,
    embeddings_schema,
)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """Unit vectors like a video catalog's (see benchmarks/query_latency.py's generator):
    topic-leaning cluster centres, a low-dimensional spread around each, plus noise."""
    rng = np.random.default_rng(seed)
    topics = unit(rng.standard_normal((max(1, clusters // 10), EMBED_DIM)))
    centres = unit(
        0.85 * topics[rng.integers(0, len(topics), clusters)]
        + 0.53 * unit(rng.standard_normal((clusters, EMBED_DIM)))
    )
    bases = rng.standard_normal((clusters, 16, EMBED_DIM)) / np.sqrt(EMBED_DIM)
    label = rng.integers(0, clusters, n)
    z = rng.standard_normal((n, 16)) / 4.0
    local = np.einsum("nr,nrd->nd", z, bases[label])
    noise = 0.7 * rng.standard_normal((n, EMBED_DIM)) / np.sqrt(EMBED_DIM)
    return unit(centres[label] + local + noise)


def rows(vectors: np.ndarray, first: int = 0, model: str = "tiny") -> pa.Table:
    """Rows of the real embeddings schema, 4 clips per video, embedded by `model`."""
    n = len(vectors)
    ids = np.arange(first, first + n)
    video = [f"v{i // 4:06d}" for i in ids]
    columns = {
        CLIP_ID: [f"{v}#{i % 4:05d}" for v, i in zip(video, ids, strict=True)],
        VIDEO_ID: video,
        CLIP_INDEX: (ids % 4).astype(np.int32),
        CLIP_START_S: (ids % 4) * 4.0,
        CLIP_END_S: (ids % 4) * 4.0 + 4.0,
        URI: [f"s3://test/{v}.mp4" for v in video],
        EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), EMBED_DIM),
        MODEL: [model] * n,
        SIGNATURE: ["sig"] * n,
        NUM_FRAMES: np.full(n, 4, np.int32),
        FRAME_INDICES: [None] * n,
        DECODER: ["decord"] * n,
        CONTENT_VERSION: ["1"] * n,
        EMBEDDED_AT: [datetime.now(UTC)] * n,
    }
    return pa.table(columns, schema=embeddings_schema())


#: A vector index a small table can have (3 partitions of 1000 rows), with a calibration
#: quick enough for a test.
SMALL_INDEX = IndexConfig.preset(
    "IVF_HNSW_SQ",
    rows_per_partition=1000,
    m=12,
    ef_construction=80,
    min_rows_for_index=1000,
    calibration=CalibrationConfig(queries=32, validation_queries=96),
)
COLOURS = ("red", "green", "blue", "yellow")


def calibrated_catalog(db: Path | str, model: str = "tiny") -> lancedb.table.Table:
    """A `videos` table of 3000 clustered clips recorded as embedded by `model` (a query
    model's identity, so that its searches accept them), each with a `caption`, with a
    calibrated vector index and the captions' full-text index: every search kind has
    calibrated parameters on it."""
    table = rows(clustered(3000, seed=21), model=model)
    captions = [f"clip {i} of a {COLOURS[i % 4]} thing" for i in range(table.num_rows)]
    table = table.append_column("caption", pa.array(captions, pa.string()))
    created = lancedb.connect(db).create_table("videos", table)
    report = build_index(created, SMALL_INDEX)
    assert report["recall"] and "error" not in report["recall"], report["recall"]
    build_fts_indices(created, ["caption"])
    return created
