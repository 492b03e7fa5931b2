"""Vector and scalar indices on the embeddings table, and the one vector-search entry point.

The project, not the analyst, picks the ANN index and its search parameters: `IndexConfig`
holds both, tuned on 1M clustered 512-d unit vectors (`benchmarks/query_latency.py`,
numbers in `benchmarks/query_latency_tuning.md`). Every search goes through
`vector_query`/`vector_search`, so the cosine metric, the prefilter and the tuned
`nprobes`/`ef`/`refine_factor` cannot be forgotten by a caller.

Index life cycle in LanceDB 0.40:

* `build_index` trains the IVF centroids and the quantizer on the rows present now, and
  builds a BTREE index on `video_id` (plus any bitmap columns). Below
  `IndexConfig.min_rows_for_index` no vector index is built: a flat scan of a small table
  is already fast and exact.
* After an append the new rows are *unindexed*: every query brute-forces them and merges
  the result with the ANN result, so latency grows with the backlog.
  `Table.optimize()` (compaction + index update; :func:`compact` keeps every version,
  deleting old ones is `pipeline.lifecycle`'s job) folds those rows into the
  existing indices **without retraining**: they are assigned to the trained centroids and
  quantized with the trained quantizer (its `retrain` flag is deprecated and ignored).
  That is cheap but keeps centroids fit to the old data, so `update_index` retrains from
  scratch once the table has grown `retrain_growth` times past the rows the index was
  trained on, or the unindexed backlog exceeds `retrain_backlog` of the indexed rows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import FTS, Bitmap, BTree, HnswSq, IvfFlat, IvfPq, IvfRq, IvfSq
from lancedb.query import LanceVectorQueryBuilder

from pipeline.compat import compact, tune_vector_query
from pipeline.schema import (
    CLIP_ID,
    EMBED_DIM,
    EMBEDDING,
    RESULT_COLUMNS,
    VIDEO_ID,
    embeddings_schema,
)

logger = logging.getLogger(__name__)

#: The only distance the project uses: the embeddings are unit-norm, so cosine distance
#: is `1 - dot` and `score = 1 - _distance` is the cosine similarity.
METRIC = "cosine"
DISTANCE = "_distance"
SCORE = "score"
#: Name LanceDB gives the vector index by default; fixed so stats can be looked up.
VECTOR_INDEX_NAME = f"{EMBEDDING}_idx"
#: Field-metadata key on the embedding column: rows the vector index was trained on.
TRAINED_ROWS_KEY = "vidcat:index_trained_rows"
#: Field-metadata key on the embedding column: the search calibration of the vector index
#: (`pipeline.recall`; empty when the index has none).
CALIBRATION_KEY = "vidcat:search_calibration"

IndexType = Literal["IVF_HNSW_SQ", "IVF_PQ", "IVF_SQ", "IVF_RQ", "IVF_FLAT"]
INDEX_TYPES: tuple[str, ...] = IndexType.__args__
#: `list_indices()` spellings of vector index types (any, not only those we build).
_VECTOR_INDEX_TYPES = frozenset(
    {"IvfHnswSq", "IvfHnswPq", "IvfHnswFlat", "IvfPq", "IvfSq", "IvfFlat", "IvfRq"}
)


@dataclass(frozen=True)
class CalibrationConfig:
    """How `build_index` measures recall and picks search parameters (`pipeline.recall`).

    For each query kind (`text`, `video`, `similar`) the cheapest tried parameters whose
    recall@k on queries drawn from the table itself reaches `target` are stored with the
    table; searches of that kind use them (`pipeline.recall.choose`).

    Attributes:
        target: recall@k every query kind must reach (0.95: 9.5 of the true 10 nearest).
        margin: standard errors of the measured recall (over its queries) kept above
            `target`: parameters reach the target when their mean recall less `margin`
            standard errors does (1.3: about 9 in 10 calibrations are at or above the
            target on the whole query distribution).
        k: the k of recall@k (and of the searches timed).
        queries: queries per kind for the parameter search.
        validation_queries: fresh queries per kind on which the chosen parameters are
            measured again; their recall is the one reported and stored.
        text_video_cosine: without text embeddings, synthetic text queries sit at this
            cosine from the row they describe (the modality gap of contrastive video-text
            models; 0.22 is the top-1 cosine measured for text queries in issue 13).
        text_noise_share: share of a synthetic text query's offset that is its own random
            direction; the rest is one direction shared by all text queries.
        video_cosine: synthetic video queries are held-out rows moved to this cosine.
        nprobes: probe counts tried (capped at the partition count, which is always tried).
        ef: HNSW beam widths tried (IVF_HNSW_* only).
        refine_factors: re-rank factors tried (quantized indices only).
        max_seconds: after this long no further beam width is tried (the best parameters
            found so far are kept).
        allow_exact: a kind that no tried parameters bring to the target is searched
            exactly (recall 1, the cost of a full scan); otherwise it gets the parameters
            with the highest recall.
        seed: sampling seed (calibrations of one table are repeatable).
    """

    target: float = 0.95
    margin: float = 1.3
    k: int = 10
    queries: int = 64
    validation_queries: int = 200
    text_video_cosine: float = 0.22
    text_noise_share: float = 0.3
    video_cosine: float = 0.99
    nprobes: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
    ef: tuple[int, ...] = (50, 100, 200, 400, 800)
    refine_factors: tuple[int, ...] = (1, 2, 3, 5, 10, 20, 40)
    max_seconds: float = 1800.0
    allow_exact: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError("target must be in (0, 1]")
        if self.margin < 0:
            raise ValueError("margin must be >= 0")
        if self.k < 1 or self.queries < 1 or self.validation_queries < 1:
            raise ValueError("k, queries and validation_queries must be >= 1")
        for name in ("text_video_cosine", "video_cosine"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        if not 0 <= self.text_noise_share <= 1:
            raise ValueError("text_noise_share must be in [0, 1]")
        for name in ("nprobes", "ef", "refine_factors"):
            values = getattr(self, name)
            if not values or min(values) < 1 or list(values) != sorted(set(values)):
                raise ValueError(f"{name} must be increasing positive integers")


@dataclass(frozen=True)
class IndexConfig:
    """How the embeddings table is indexed and searched.

    Build parameters are functions of the row count `N` at build time; search parameters
    are the starting point that each index build calibrates per query kind
    (`pipeline.recall`). The default is IVF_SQ (8-bit scalar-quantized vectors in
    ~4k-row partitions), 6 probes and a 2x exact re-rank: once calibrated it reached
    recall@10 >= 0.95 for text-like and catalog-like queries on all three benchmark
    catalogs at 1M rows (text 6.9 / 20.5 / 24.3 ms p50 on 2 cores), where IVF_HNSW_SQ
    (~16k-row partitions, each one graph; the default until 2026-12) needed 29 / 119 /
    173 ms for text, and it builds in 22-57 s instead of 195-684 s per 1M rows there
    (`benchmarks/README.md`, the recall section).
    On the catalog-like queries of its own tuning set IVF_HNSW_SQ is as good
    (`preset("IVF_HNSW_SQ")`, `vidcat index --index-type IVF_HNSW_SQ`); IVF_PQ needs a 10x
    re-rank and the longest build; IVF_RQ's 1-bit codes cannot rank near-ties; IVF_FLAT
    reads 4x more bytes per probed row.

    Attributes:
        index_type: LanceDB vector index type.
        rows_per_partition: IVF partitions = ceil(N / rows_per_partition), clamped to
            [min_partitions, max_partitions]. Fixed-size partitions keep the work per query
            (nprobes * rows_per_partition quantized rows) flat as the table grows. For
            IVF_HNSW_SQ use ~16k (each partition is one graph).
        min_partitions: lower clamp of the partition count.
        max_partitions: upper clamp of the partition count.
        m: HNSW out-degree (IVF_HNSW_* only).
        ef_construction: HNSW build beam width (IVF_HNSW_* only).
        num_sub_vectors: PQ sub-vectors (IVF_PQ only); 512 / 64 = 8 dims per code.
        sample_rate: k-means training sample per partition.
        min_rows_for_index: below this many rows no vector index is built and every
            search is a flat (exact) scan; measured crossover ~1.5-2k rows (an exact scan
            costs ~3 µs/row, an indexed query ~5-6 ms of mostly fixed overhead).
        nprobes: IVF partitions searched per query.
        ef: HNSW search beam width (IVF_HNSW_* only), raised to `k * refine_factor` for
            larger queries (HNSW cannot return more candidates than its beam); None leaves
            LanceDB's 1.5 * k.
        refine_factor: re-rank `refine_factor * k` candidates with the full-precision
            vectors. Required (>= 1) for quantized indices: without it LanceDB 0.40
            returns their internal quantized distance (not 1 - cosine) as `_distance`.
            None (no re-rank) only for IVF_FLAT, which stores exact vectors.
        btree_columns: scalar BTREE indices (high-cardinality filter columns).
        bitmap_columns: scalar bitmap indices (low-cardinality filter columns).
        retrain_growth: `update_index` retrains when rows exceed this multiple of the
            rows the index was trained on.
        retrain_backlog: `update_index` retrains when unindexed rows exceed this
            fraction of indexed rows.
        calibration: how a vector index build measures recall and calibrates the search
            parameters per query kind; None: no measurement, searches use the preset
            `nprobes`/`ef`/`refine_factor` above.
    """

    index_type: IndexType = "IVF_SQ"
    rows_per_partition: int = 4096
    min_partitions: int = 1
    max_partitions: int = 16_384
    m: int = 20
    ef_construction: int = 150
    num_sub_vectors: int = 64
    sample_rate: int = 256
    min_rows_for_index: int = 2000
    nprobes: int = 6
    ef: int | None = None
    refine_factor: int | None = 2
    btree_columns: tuple[str, ...] = (VIDEO_ID, CLIP_ID)
    bitmap_columns: tuple[str, ...] = field(default=())
    retrain_growth: float = 2.0
    retrain_backlog: float = 0.5
    calibration: CalibrationConfig | None = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}")
        positive = ("rows_per_partition", "min_partitions", "m", "ef_construction", "nprobes")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_partitions < self.min_partitions:
            raise ValueError("max_partitions must be >= min_partitions")
        if EMBED_DIM % self.num_sub_vectors:
            raise ValueError(f"num_sub_vectors must divide {EMBED_DIM}")
        if self.ef is not None and self.ef < 1:
            raise ValueError("ef must be >= 1 or None")
        if self.refine_factor is not None and self.refine_factor < 1:
            raise ValueError("refine_factor must be >= 1 or None")
        if self.refine_factor is None and self.index_type != "IVF_FLAT":
            # Quantized indices report a distance in their own (L2-like) units, not the
            # cosine distance; only the re-rank restores `score = cosine similarity`.
            raise ValueError(f"{self.index_type} needs refine_factor >= 1")
        if self.retrain_growth <= 1 or self.retrain_backlog <= 0:
            raise ValueError("retrain_growth must be > 1 and retrain_backlog > 0")

    @classmethod
    def preset(cls, index_type: IndexType, **overrides: Any) -> IndexConfig:
        """The tuned build and search parameters for `index_type` (see the tuning log).

        Search parameters only fit the partition size they were tuned with, so switching the
        index type goes through here rather than `dataclasses.replace(index_type=...)`.
        """
        if index_type not in _PRESETS:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}")
        return cls(**{"index_type": index_type, **_PRESETS[index_type], **overrides})

    def num_partitions(self, num_rows: int) -> int:
        """IVF partition count for a table of `num_rows` rows."""
        wanted = math.ceil(num_rows / self.rows_per_partition)
        return min(self.max_partitions, max(self.min_partitions, wanted))

    def vector_index(self, num_rows: int) -> HnswSq | IvfPq | IvfSq | IvfRq | IvfFlat:
        """The LanceDB index config object to build for `num_rows` rows."""
        common = {
            "distance_type": METRIC,
            "num_partitions": self.num_partitions(num_rows),
            "sample_rate": self.sample_rate,
        }
        if self.index_type == "IVF_HNSW_SQ":
            return HnswSq(**common, m=self.m, ef_construction=self.ef_construction)
        if self.index_type == "IVF_PQ":
            return IvfPq(**common, num_sub_vectors=self.num_sub_vectors)
        if self.index_type == "IVF_SQ":
            return IvfSq(**common)
        if self.index_type == "IVF_RQ":
            return IvfRq(**common, num_bits=1)
        return IvfFlat(**common)


#: Tuned per index type on 1M clustered vectors (`benchmarks/query_latency_tuning.md`):
#: recall@10 >= 0.99 unfiltered and under an 8% filter, p50 within a few ms of each other.
_PRESETS: dict[str, dict[str, Any]] = {
    "IVF_SQ": {"rows_per_partition": 4096, "nprobes": 6, "ef": None, "refine_factor": 2},
    # Each partition is one HNSW graph: big partitions, few probes, a wider beam.
    "IVF_HNSW_SQ": {"rows_per_partition": 16384, "nprobes": 2, "ef": 100, "refine_factor": 2},
    # 8-dim PQ codes rank near-ties poorly: recall 0.6-0.7 without a 10x exact re-rank.
    "IVF_PQ": {"rows_per_partition": 1024, "nprobes": 20, "ef": None, "refine_factor": 10},
    "IVF_FLAT": {"rows_per_partition": 1024, "nprobes": 5, "ef": None, "refine_factor": None},
    # RaBitQ, 1 bit per dimension (64 B per row): a cheap scan whose order needs a re-rank.
    "IVF_RQ": {"rows_per_partition": 4096, "nprobes": 8, "ef": None, "refine_factor": 10},
}


def vector_index_type(table: lancedb.table.Table) -> str | None:
    """Type of the vector index on the embedding column (`IVF_SQ`, ...), None without one."""
    if not has_vector_index(table):
        return None
    return table.index_stats(VECTOR_INDEX_NAME).index_type


def config_for_table(
    table: lancedb.table.Table, default: IndexConfig = IndexConfig()
) -> IndexConfig:
    """Search parameters for the index the table actually has.

    `default` when the table has no vector index or one of `default`'s type; otherwise the
    tuned preset of the type found (an index built by `jobs/build_index.py --index-type`),
    so probes and beam widths always match the index they are used on.
    """
    return _config_for_type(vector_index_type(table), default)


def _config_for_type(found: str | None, default: IndexConfig) -> IndexConfig:
    """`default`, or the preset of the index type `found` with `default`'s other settings."""
    if found is None or found == default.index_type:
        return default
    if found not in _PRESETS:
        logger.warning(
            "index type %s has no tuned preset: using %s's parameters", found, default.index_type
        )
        return default
    keep = (
        "min_partitions",
        "max_partitions",
        "sample_rate",
        "min_rows_for_index",
        "btree_columns",
        "bitmap_columns",
        "retrain_growth",
        "retrain_backlog",
        "calibration",
    )
    return IndexConfig.preset(found, **{name: getattr(default, name) for name in keep})


def has_vector_index(table: lancedb.table.Table) -> bool:
    """Whether `table` has a vector index on the embedding column."""
    return any(
        idx.columns == [EMBEDDING] and idx.index_type in _VECTOR_INDEX_TYPES
        for idx in table.list_indices()
    )


def build_index(
    table: lancedb.table.Table,
    config: IndexConfig = IndexConfig(),
    *,
    replace: bool = True,
    text_vectors: np.ndarray | None = None,
) -> dict[str, Any]:
    """Train the vector index (if the table is big enough), build the scalar indices, and
    calibrate the search parameters of the new vector index (`pipeline.recall`).

    Args:
        table: the embeddings table.
        config: index choice and parameters; `config.calibration` None skips the
            calibration (searches then use the presets).
        replace: rebuild indices that already exist; with False an existing index is kept.
        text_vectors: text embeddings to calibrate text queries with (`[n, 512]`); None:
            synthetic text queries.

    Returns:
        What was done: `rows`, `vector_index` (None when skipped, else `type`, `params`,
        `seconds`), `scalar_indices` (a list of `column`, `type`, `seconds`) and `recall`
        (None without a new vector index or calibration; else per query kind the chosen
        parameters, their recall@k and latency on validation queries and the presets'
        recall, see `pipeline.recall.calibrate`; `{"error": ...}` if it failed, in which
        case searches use the presets).
    """
    num_rows = table.count_rows()
    report: dict[str, Any] = {
        "rows": num_rows,
        "vector_index": None,
        "scalar_indices": [],
        "recall": None,
    }
    existing = {idx.name for idx in table.list_indices()}
    if num_rows < config.min_rows_for_index:
        logger.info("%d rows < %d: no vector index", num_rows, config.min_rows_for_index)
    elif replace or VECTOR_INDEX_NAME not in existing:
        index = config.vector_index(num_rows)
        start = time.perf_counter()
        table.create_index(EMBEDDING, config=index, replace=True, name=VECTOR_INDEX_NAME)
        # The old index's calibration goes with it, in the same commit.
        table.update_field_metadata(
            {"path": EMBEDDING, "metadata": {TRAINED_ROWS_KEY: str(num_rows), CALIBRATION_KEY: ""}}
        )
        report["vector_index"] = {
            "type": config.index_type,
            "params": {k: v for k, v in asdict(index).items() if v is not None},
            "seconds": time.perf_counter() - start,
        }
        logger.info("built %s on %d rows: %s", config.index_type, num_rows, report)
    scalar = [(c, BTree()) for c in config.btree_columns]
    scalar += [(c, Bitmap()) for c in config.bitmap_columns]
    for column, index in scalar:
        name = f"{column}_idx"
        if name in existing and not replace:
            continue
        start = time.perf_counter()
        table.create_index(column, config=index, replace=True, name=name)
        report["scalar_indices"].append(
            {
                "column": column,
                "type": type(index).__name__.upper(),
                "seconds": time.perf_counter() - start,
            }
        )
    if report["vector_index"] is not None and config.calibration is not None:
        report["recall"] = _calibrate(table, config, text_vectors)
    return report


def _calibrate(
    table: lancedb.table.Table, config: IndexConfig, text_vectors: np.ndarray | None
) -> dict[str, Any]:
    """Calibrate and store the search parameters; the report, or `{"error": ...}`."""
    from pipeline.recall import calibrate, write_calibration  # recall imports this module

    try:
        calibration, report = calibrate(table, config, text_vectors=text_vectors)
        write_calibration(table, calibration)
    except Exception as exc:  # the index is usable with the presets: report, do not fail
        logger.exception("search calibration failed: searches use the presets")
        return {"error": f"{type(exc).__name__}: {exc}"}
    return report


def trained_rows(table: lancedb.table.Table) -> int | None:
    """Rows the table's vector index was trained on (None: not recorded)."""
    return _trained_rows(table)


def _trained_rows(table: lancedb.table.Table) -> int | None:
    metadata = table.schema.field(EMBEDDING).metadata or {}
    value = metadata.get(TRAINED_ROWS_KEY.encode())
    return int(value) if value is not None else None


def update_index(table: lancedb.table.Table, config: IndexConfig = IndexConfig()) -> dict[str, Any]:
    """Bring the indices up to date after rows were appended.

    Folds new rows into the existing indices with `Table.optimize()` (no retraining), or
    retrains everything with `build_index` when the table outgrew the trained index (see
    the module docstring), or builds the first vector index once the table is big enough.

    Returns:
        `action` ("optimize", "retrain" or "build") and, for builds, `build_index`'s report.
    """
    num_rows = table.count_rows()
    stats = table.index_stats(VECTOR_INDEX_NAME) if has_vector_index(table) else None
    if stats is None:
        if num_rows >= config.min_rows_for_index:
            return {"action": "build", **build_index(table, config)}
        compact(table)
        return {"action": "optimize", "rows": num_rows}
    # An operator may have chosen another type with build_index.py: retrain keeps it.
    config = _config_for_type(stats.index_type, config)
    trained = _trained_rows(table) or stats.num_indexed_rows
    grown = num_rows > config.retrain_growth * trained
    backlog = stats.num_unindexed_rows > config.retrain_backlog * stats.num_indexed_rows
    if grown or backlog:
        logger.info(
            "retraining: %d rows, trained on %d, %d unindexed",
            num_rows,
            trained,
            stats.num_unindexed_rows,
        )
        report = build_index(table, config)
        # Compact afterwards: optimizing first would fold the backlog into the old index
        # only to throw that work away.
        compact(table)
        return {"action": "retrain", **report}
    start = time.perf_counter()
    compact(table)
    seconds = time.perf_counter() - start
    return {"action": "optimize", "rows": num_rows, "seconds": seconds, "recall": _stored(table)}


def _stored(table: lancedb.table.Table) -> dict[str, Any] | None:
    """The recall the table's stored calibration promises (the rows folded in since are
    searched with the same parameters); None without one."""
    from pipeline.recall import read_calibration  # recall imports this module

    calibration = read_calibration(table)
    return calibration.summary() if calibration is not None else None


def vector_query(
    table: lancedb.table.Table,
    vector: np.ndarray,
    k: int = 10,
    where: str | None = None,
    config: IndexConfig = IndexConfig(),
    *,
    exact: bool = False,
) -> LanceVectorQueryBuilder:
    """The project's k-NN query on the embedding column, not yet executed.

    Callers may add `.select(...)` before running it. LanceDB ignores the ANN parameters
    when the table has no vector index, so a small table is always scanned exactly.

    Args:
        table: the embeddings table.
        vector: query embedding `[512]`, unit-norm.
        k: number of rows to return.
        where: SQL filter over metadata, applied before the vector search.
        config: search parameters.
        exact: scan every row (ground truth for recall), even if an index exists.
    """
    query = np.asarray(vector, dtype=np.float32)
    if query.shape != (EMBED_DIM,):
        raise ValueError(f"query vector must have shape ({EMBED_DIM},), got {query.shape}")
    builder = table.search(query, vector_column_name=EMBEDDING).distance_type(METRIC).limit(k)
    if where:
        builder = builder.where(where, prefilter=True)
    if exact:
        return builder.bypass_vector_index()
    # Exactly `nprobes` partitions, also under a filter (`vector_search` covers a filter
    # that leaves too few rows in them), a beam wide enough for k, and the exact re-rank.
    return tune_vector_query(builder, k, config.nprobes, config.ef, config.refine_factor)


def vector_search(
    table: lancedb.table.Table,
    vector: np.ndarray,
    k: int = 10,
    where: str | None = None,
    config: IndexConfig = IndexConfig(),
    *,
    exact: bool = False,
    columns: Sequence[str] | None = RESULT_COLUMNS,
) -> pa.Table:
    """Top-k rows by cosine similarity to `vector`, best first.

    Args:
        table: the embeddings table.
        vector: query embedding `[512]`, unit-norm.
        k: number of rows to return.
        where: SQL filter over metadata (e.g. `"video_id = 'v1'"`), applied before the
            vector search. If the probed partitions hold fewer than k matching rows (a
            selective filter, or one whose rows lie far from the query) the search is
            repeated as an exact scan of the matching rows, so k rows come back whenever
            k rows pass the filter.
        config: search parameters.
        exact: scan every row, ignoring the index.
        columns: columns to return; None returns all of them. Each column is a random
            read per result row, so the default is a lean identifying set: all columns
            (with the 2 KiB embedding) made a 1M-row query ~3x slower.

    Returns:
        The rows with `_distance` (cosine distance) and `score` (`1 - _distance`, the
        cosine similarity), ordered by descending score.
    """

    def run(exact: bool) -> pa.Table:
        builder = vector_query(table, vector, k, where, config, exact=exact)
        if columns is not None:
            builder = builder.select([*columns, DISTANCE])
        return builder.to_arrow()

    result = run(exact)
    if where and not exact and result.num_rows < k:
        logger.debug("filter %r left %d < %d rows in the probed partitions", where,
                     result.num_rows, k)  # fmt: skip
        result = run(exact=True)
    score = pc.subtract(pa.scalar(1.0, pa.float32()), result[DISTANCE])
    return result.append_column(SCORE, score)


# ---- full-text and side-table indices ----------------------------------------------------
def text_columns(table: lancedb.table.Table) -> list[str]:
    """The table's text metadata columns (manifest columns of string type): what a hybrid
    search can match words in (captions, titles, categories)."""
    pipeline = set(embeddings_schema().names)
    return [
        f.name
        for f in table.schema
        if f.name not in pipeline
        and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
    ]


def fts_columns(table: lancedb.table.Table) -> list[str]:
    """Columns that have a full-text index."""
    return sorted(
        c
        for idx in table.list_indices()
        if str(idx.index_type).upper() == "FTS"
        for c in idx.columns
    )


def build_fts_indices(
    table: lancedb.table.Table, columns: Sequence[str], *, replace: bool = True
) -> list[dict[str, Any]]:
    """A full-text (inverted) index on each text column, for hybrid search.

    Rows added later are searched unindexed until the next `Table.optimize()`
    (:func:`update_index`, the nightly maintenance) folds them in, as for the vector index.

    Returns:
        One `column`, `type` ("FTS"), `seconds` per index built.
    """
    known = set(text_columns(table))
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise ValueError(
            f"no text metadata column {', '.join(map(repr, unknown))} for a full-text index "
            f"(text columns: {', '.join(sorted(known)) or 'none'})"
        )
    existing = set(fts_columns(table))
    report = []
    for column in columns:
        if column in existing and not replace:
            continue
        start = time.perf_counter()
        table.create_index(
            column, config=FTS(with_position=False), replace=True, name=f"{column}_fts_idx"
        )
        report.append({"column": column, "type": "FTS", "seconds": time.perf_counter() - start})
        logger.info("full-text index on %r built", column)
    return report


def build_key_index(table: lancedb.table.Table, *, replace: bool = True) -> dict[str, Any] | None:
    """A BTREE on `clip_id` of a side table keyed by clip (thumbnails), so a page's lookup
    by key reads one row instead of scanning the key column; None when it exists (and not
    `replace`)."""
    name = f"{CLIP_ID}_idx"
    if not replace and name in {idx.name for idx in table.list_indices()}:
        return None
    start = time.perf_counter()
    table.create_index(CLIP_ID, config=BTree(), replace=True, name=name)
    return {"column": CLIP_ID, "type": "BTREE", "seconds": time.perf_counter() - start}
