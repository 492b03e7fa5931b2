"""Vector/scalar indices and vector search on small real LanceDB tables in tmp_path."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from pipeline.index import (
    DISTANCE,
    SCORE,
    VECTOR_INDEX_NAME,
    IndexConfig,
    build_index,
    config_for_table,
    has_vector_index,
    update_index,
    vector_index_type,
    vector_query,
    vector_search,
)
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

ROWS = 5000
TABLE_SCHEMA = embeddings_schema((pa.field("category", pa.string()),))
CLUSTERS = 20
#: Tiny build parameters so a 5,000-row index trains in about a second; no search
#: calibration (`tests/test_recall.py` covers it), these tests are about the index itself.
TINY = IndexConfig(
    calibration=None,
    index_type="IVF_SQ",
    min_rows_for_index=1000,
    rows_per_partition=2500,
    m=8,
    ef_construction=40,
    nprobes=2,
    ef=40,
    refine_factor=2,
    bitmap_columns=("category",),
)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def centres() -> np.ndarray:
    return unit(np.random.default_rng(0).standard_normal((CLUSTERS, EMBED_DIM)))


def clustered(centres: np.ndarray, n: int, seed: int, cluster: int | None = None):
    """`n` unit vectors around the centres (cosine ~0.7 to their centre) and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(centres), n) if cluster is None else np.full(n, cluster)
    noise = rng.standard_normal((n, EMBED_DIM)) / np.sqrt(EMBED_DIM)
    return unit(centres[labels] + noise), labels


def rows(vectors: np.ndarray, labels: np.ndarray, first: int = 0) -> pa.Table:
    """Rows of the real embeddings schema; 'far' marks cluster 0, every other row is 'near'."""
    n = len(vectors)
    ids = np.arange(first, first + n)
    now = datetime.now(UTC)
    columns = {
        CLIP_ID: [f"c{i:06d}" for i in ids],
        VIDEO_ID: [f"v{i // 10:05d}" for i in ids],
        CLIP_INDEX: (ids % 10).astype(np.int32),
        CLIP_START_S: (ids % 10) * 4.0,
        CLIP_END_S: (ids % 10) * 4.0 + 4.0,
        URI: [f"s3://test/v{i // 10:05d}.mp4" for i in ids],
        EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), EMBED_DIM),
        MODEL: ["tiny"] * n,
        SIGNATURE: ["sig"] * n,
        NUM_FRAMES: np.full(n, 8, np.int32),
        FRAME_INDICES: [None] * n,
        DECODER: ["decord"] * n,
        CONTENT_VERSION: ["1"] * n,
        EMBEDDED_AT: [now] * n,
        "category": np.where(labels == 0, "far", "near"),
    }
    return pa.table(columns, schema=TABLE_SCHEMA)


@pytest.fixture
def table(tmp_path, centres):
    vectors, labels = clustered(centres, ROWS, seed=1)
    db = lancedb.connect(tmp_path / "db")
    return db.create_table("clips", rows(vectors, labels)), vectors, labels


def exact_ids(vectors: np.ndarray, query: np.ndarray, k: int, mask=None) -> list[str]:
    sims = vectors @ query
    if mask is not None:
        sims = np.where(mask, sims, -np.inf)
    return [f"c{i:06d}" for i in np.argsort(-sims)[:k]]


def test_config_partitions_and_validation():
    cfg = IndexConfig(rows_per_partition=10_000, min_partitions=2, max_partitions=50)
    assert cfg.num_partitions(1) == 2
    assert cfg.num_partitions(10**9) == 50
    assert cfg.num_partitions(250_000) == 25
    assert IndexConfig().vector_index(1_000_000).distance_type == "cosine"
    with pytest.raises(ValueError):
        IndexConfig(index_type="IVF_MAGIC")
    with pytest.raises(ValueError):
        IndexConfig(num_sub_vectors=7)
    with pytest.raises(ValueError):
        IndexConfig(refine_factor=0)
    with pytest.raises(ValueError):
        IndexConfig(nprobes=0)
    # Without a re-rank a quantized index's `_distance` is not a cosine distance.
    with pytest.raises(ValueError, match="refine_factor"):
        IndexConfig(refine_factor=None)
    assert IndexConfig(index_type="IVF_FLAT", refine_factor=None).refine_factor is None


def test_small_table_is_searched_exactly(table, centres):
    tbl, vectors, _ = table
    report = build_index(tbl, IndexConfig(min_rows_for_index=ROWS + 1))
    assert report["vector_index"] is None
    assert [s["column"] for s in report["scalar_indices"]] == [VIDEO_ID, CLIP_ID]
    assert not has_vector_index(tbl)
    query = clustered(centres, 1, seed=99)[0][0]
    plan = vector_query(tbl, query, 10).explain_plan()
    assert "KNNVectorDistance" in plan and "ANN" not in plan
    got = vector_search(tbl, query, 10)[CLIP_ID].to_pylist()
    assert got == exact_ids(vectors, query, 10)


@pytest.mark.parametrize("index_type", ["IVF_HNSW_SQ", "IVF_PQ", "IVF_SQ", "IVF_FLAT"])
def test_index_is_used_above_min_rows(table, centres, index_type):
    tbl, vectors, _ = table
    # PQ codes are coarse; it needs a deep re-rank to sort a cluster's members.
    refine = 20 if index_type == "IVF_PQ" else TINY.refine_factor
    cfg = dataclasses.replace(TINY, index_type=index_type, num_sub_vectors=32, refine_factor=refine)
    report = build_index(tbl, cfg)
    assert report["vector_index"]["type"] == index_type
    assert report["vector_index"]["params"]["num_partitions"] == 2
    assert has_vector_index(tbl)
    assert tbl.index_stats(VECTOR_INDEX_NAME).index_type == index_type
    queries = clustered(centres, 20, seed=7)[0]
    assert "ANNSubIndex" in vector_query(tbl, queries[0], 10, config=cfg).explain_plan()
    recall = np.mean(
        [
            len(set(vector_search(tbl, q, 10, config=cfg)[CLIP_ID].to_pylist())
                & set(exact_ids(vectors, q, 10))) / 10
            for q in queries
        ]
    )  # fmt: skip
    assert recall >= 0.9
    # exact=True bypasses the index even when one exists.
    assert "ANN" not in vector_query(tbl, queries[0], 10, exact=True).explain_plan()


@pytest.mark.parametrize("indexed", [False, True])
def test_results_ordered_by_cosine_with_score(table, centres, indexed):
    tbl, vectors, _ = table
    if indexed:
        build_index(tbl, TINY)
    query = clustered(centres, 1, seed=5)[0][0]
    result = vector_search(tbl, query, 10, config=TINY, columns=None)
    assert result.num_rows == 10
    score = result[SCORE].to_numpy()
    assert np.all(np.diff(score) <= 1e-6)
    np.testing.assert_allclose(result[DISTANCE].to_numpy(), 1 - score, atol=1e-6)
    stored = np.stack(result[EMBEDDING].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(score, stored @ query, atol=1e-5)
    rows_ = [int(c[1:]) for c in result[CLIP_ID].to_pylist()]
    np.testing.assert_allclose(score, vectors[rows_] @ query, atol=1e-5)


@pytest.mark.parametrize("indexed", [False, True])
def test_where_filter_applies_before_vector_search(table, centres, indexed):
    tbl, vectors, labels = table
    if indexed:
        build_index(tbl, TINY)
    # A query in cluster 3: its true neighbours are all 'near'; only cluster 0 is 'far'.
    query = clustered(centres, 1, seed=11, cluster=3)[0][0]
    where = "category = 'far'"
    result = vector_search(tbl, query, 10, where, TINY, columns=[CLIP_ID, "category"])
    assert result.num_rows == 10
    assert set(result["category"].to_pylist()) == {"far"}
    expected = exact_ids(vectors, query, 10, mask=labels == 0)
    assert len(set(result[CLIP_ID].to_pylist()) & set(expected)) >= 9
    # The same filter applied after the search would find (almost) nothing.
    post = vector_query(tbl, query, 10, config=TINY).where(where, prefilter=False).to_arrow()
    assert post.num_rows < 10
    # Scalar index on video_id serves equality filters.
    one_video = vector_search(tbl, query, 10, "video_id = 'v00042'", TINY)
    assert set(one_video[VIDEO_ID].to_pylist()) == {"v00042"}
    assert one_video.num_rows == 10


def test_filtered_search_falls_back_to_exact_when_probes_miss(table, centres):
    tbl, vectors, labels = table
    # 10 partitions, 1 probed: a query whose partition holds fewer than 10 rows of the
    # 'far' cluster. k-means (unseeded in LanceDB) may put cluster 0 beside any other
    # cluster, so the query's cluster is picked among those it did not.
    cfg = dataclasses.replace(TINY, rows_per_partition=500, nprobes=1)
    build_index(tbl, cfg)
    where = "category = 'far'"
    for cluster in range(1, CLUSTERS):
        query = clustered(centres, 1, seed=12, cluster=cluster)[0][0]
        probed = vector_query(tbl, query, 10, where, cfg).to_arrow()
        if probed.num_rows < 10:
            break
    assert probed.num_rows < 10
    result = vector_search(tbl, query, 10, where, cfg, columns=[CLIP_ID])
    assert result[CLIP_ID].to_pylist() == exact_ids(vectors, query, 10, mask=labels == 0)


def test_update_index_folds_appended_rows_in(table, centres):
    tbl, _, _ = table
    build_index(tbl, TINY)
    new_vectors, new_labels = clustered(centres, 500, seed=21)
    tbl.add(rows(new_vectors, new_labels, first=ROWS))
    assert tbl.index_stats(VECTOR_INDEX_NAME).num_unindexed_rows == 500
    report = update_index(tbl, TINY)
    assert report["action"] == "optimize"
    stats = tbl.index_stats(VECTOR_INDEX_NAME)
    assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (ROWS + 500, 0)
    # The new rows are found through the index (each is its own nearest neighbour).
    for i in range(0, 500, 50):
        top = vector_search(tbl, new_vectors[i], 1, config=TINY)
        assert top[CLIP_ID][0].as_py() == f"c{ROWS + i:06d}"
        assert top[SCORE][0].as_py() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("extra", "partitions"),
    [(ROWS + 1000, 5), (3000, 4)],  # grown past 2x the trained rows; backlog > 50%
    ids=["growth", "backlog"],
)
def test_update_index_retrains(table, centres, extra, partitions):
    tbl, _, _ = table
    build_index(tbl, TINY)
    more, labels = clustered(centres, extra, seed=31)
    tbl.add(rows(more, labels, first=ROWS))
    report = update_index(tbl, TINY)
    assert report["action"] == "retrain"
    assert report["vector_index"]["params"]["num_partitions"] == partitions
    stats = tbl.index_stats(VECTOR_INDEX_NAME)
    assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (ROWS + extra, 0)


def test_build_index_keeps_existing_indices_without_replace(table):
    tbl, _, _ = table
    first = build_index(tbl, TINY)
    scalar = len(TINY.btree_columns) + len(TINY.bitmap_columns)
    assert first["vector_index"] is not None and len(first["scalar_indices"]) == scalar == 3
    again = build_index(tbl, TINY, replace=False)
    assert again["vector_index"] is None and again["scalar_indices"] == []
    assert has_vector_index(tbl)


def test_update_index_builds_first_index_once_big_enough(tmp_path, centres):
    vectors, labels = clustered(centres, 800, seed=41)
    tbl = lancedb.connect(tmp_path / "db").create_table("clips", rows(vectors, labels))
    assert update_index(tbl, TINY)["action"] == "optimize"
    assert not has_vector_index(tbl)
    more, more_labels = clustered(centres, 400, seed=42)
    tbl.add(rows(more, more_labels, first=800))
    assert update_index(tbl, TINY)["action"] == "build"
    assert has_vector_index(tbl)


def test_vector_query_rejects_wrong_shape(table):
    tbl, _, _ = table
    with pytest.raises(ValueError, match="shape"):
        vector_search(tbl, np.zeros(EMBED_DIM + 1, np.float32), 10)


def test_presets_fix_search_parameters_per_index_type():
    assert IndexConfig() == IndexConfig.preset("IVF_SQ")
    hnsw = IndexConfig.preset("IVF_HNSW_SQ", min_rows_for_index=10)
    assert (hnsw.index_type, hnsw.rows_per_partition, hnsw.nprobes, hnsw.ef) == (
        "IVF_HNSW_SQ",
        16384,
        2,
        100,
    )
    assert hnsw.min_rows_for_index == 10
    assert IndexConfig.preset("IVF_PQ").refine_factor == 10
    assert IndexConfig.preset("IVF_FLAT").refine_factor is None
    with pytest.raises(ValueError, match="index_type"):
        IndexConfig.preset("IVF_MAGIC")


def test_search_and_retrain_follow_the_index_type_the_table_has(table, centres):
    """An operator's `build_index.py --index-type IVF_HNSW_SQ` is kept by searches (its
    tuned probes and beam) and by the nightly retrain, which is called with the default."""
    tbl, vectors, _ = table
    assert vector_index_type(tbl) is None
    assert config_for_table(tbl, TINY) is TINY
    hnsw = IndexConfig.preset("IVF_HNSW_SQ", min_rows_for_index=1000, m=8, ef_construction=40)
    build_index(tbl, hnsw)
    assert vector_index_type(tbl) == "IVF_HNSW_SQ"
    found = config_for_table(tbl, TINY)
    assert (found.index_type, found.nprobes, found.ef, found.refine_factor) == (
        "IVF_HNSW_SQ",
        2,
        100,
        2,
    )
    assert found.bitmap_columns == TINY.bitmap_columns
    # The operator's build and retrain settings carry over; only the search ones follow
    # the type found.
    tuned = dataclasses.replace(
        TINY, retrain_backlog=0.2, retrain_growth=3.0, max_partitions=64, sample_rate=128
    )
    kept = config_for_table(tbl, tuned)
    assert (kept.retrain_backlog, kept.retrain_growth, kept.max_partitions, kept.sample_rate) == (
        0.2,
        3.0,
        64,
        128,
    )
    top = vector_search(tbl, vectors[7], 1, config=found)
    assert top[CLIP_ID][0].as_py() == "c000007"
    more, labels = clustered(centres, ROWS + 500, seed=51)
    tbl.add(rows(more, labels, first=ROWS))
    report = update_index(tbl, TINY)  # grown past 2x: retrain, default config passed
    assert report["action"] == "retrain"
    assert report["vector_index"]["type"] == "IVF_HNSW_SQ"
    assert vector_index_type(tbl) == "IVF_HNSW_SQ"


def test_hnsw_search_returns_k_rows_when_k_times_refine_exceeds_ef(table, centres):
    """HNSW refuses a beam (`ef`) narrower than the candidates it returns (k x refine): with
    the default ef of 100 and refine 2, every query for more than 50 rows failed outright."""
    tbl, vectors, _ = table
    cfg = dataclasses.replace(TINY, index_type="IVF_HNSW_SQ", ef=20)
    build_index(tbl, cfg)
    query = clustered(centres, 1, seed=11)[0][0]
    found = vector_search(tbl, query, 60, config=cfg)
    assert found.num_rows == 60
    assert len(set(found[CLIP_ID].to_pylist()) & set(exact_ids(vectors, query, 60))) >= 54
    near = vector_search(
        tbl, query, 60, where="category = 'near'", config=cfg, columns=[CLIP_ID, "category"]
    )
    assert near.num_rows == 60 and set(near["category"].to_pylist()) == {"near"}
