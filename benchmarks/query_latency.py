"""Vector-query latency and recall@10 of the embeddings table: exact scan vs the ANN index.

Builds a synthetic catalog table (the real `embeddings_schema` plus `category` and
`duration_s` metadata) of clustered unit 512-d vectors, indexes it with
`pipeline.index.build_index`, and times k=10 queries through `pipeline.index.vector_search`
with and without a `where` prefilter. Recall@10 is measured against numpy brute force.

Synthetic data (why it looks like this): uniformly random 512-d vectors have no
neighbour structure and defeat every ANN index, while copies of stored vectors make
recall trivial. Real embeddings sit on low-dimensional manifolds around semantic
clusters, so each vector here is

    x = normalize(c + local * (z @ U_c) + iso * g / sqrt(512))

with `c` one of `--clusters` unit centres (which themselves lean towards one of
clusters/40 "topic" directions with weight 0.85, so neighbouring clusters overlap),
`U_c` a random 16-dimensional subspace per cluster, `z ~ N(0, I/16)` and `g ~ N(0, I)`.
With the defaults (local 1.0, iso 0.7) a vector's cosine to its own centre is ~0.64 while
a centre's cosine to its nearest other centre is ~0.75 (so IVF partitions cut through
clusters), two vectors of one cluster are ~0.4 apart in cosine, a query's 1st/10th
neighbour ~0.68/0.61, and the gap between its 9th and 10th neighbour ~0.004: neighbours
are genuinely close but ordered by detail that quantization can swap. Queries are fresh
draws from the same process (a random cluster, new z and g), never copies of stored rows.
Cluster sizes are log-normal, rows come in videos of 4-12 clips from one cluster, and
`category` (12 values, 'sports' ~8% of rows) is drawn per video independently of the
cluster. The run prints these statistics; `--intrinsic-dim 64` gives a harder variant.

Timing: every case first answers `--warmup` unrelated queries (index pages in cache, as in
a serving process), then each query is timed end to end in Python (builder, execution,
Arrow result, score column). Cases take turns query by query, so load from other
processes on the shared CPU hits them alike. Exact search is timed on the first
`--exact-queries` queries only, because at 1M rows it takes seconds per query.

Usage:
    python benchmarks/query_latency.py                 # 1M rows, ~5 minutes on 2 cores
    python benchmarks/query_latency.py --rows 20000 --clusters 40   # quick run, seconds
    python benchmarks/query_latency.py --db /tmp/qbench --reuse --nprobes 4 8 --refine 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import schema
from pipeline.index import (
    INDEX_TYPES,
    CalibrationConfig,
    IndexConfig,
    build_index,
    config_for_table,
    has_vector_index,
    vector_search,
)
from pipeline.recall import KINDS, calibrate, choose, read_calibration, write_calibration

TABLE = "clips"
CATEGORY = "category"
DURATION_S = "duration_s"
CATEGORIES = (
    "sports", "news", "music", "gaming", "cooking", "travel",
    "education", "comedy", "science", "animals", "fashion", "vlog",
)  # fmt: skip
FILTER = f"{CATEGORY} = 'sports'"
#: A rare filter (~0.7% of rows, ~7k at 1M): where an index probing a few partitions finds
#: few of the matching rows, and `CatalogSearch` scans them exactly (`exact_below`).
RARE_FILTER = f"{CATEGORY} = 'sports' AND {DURATION_S} < 60"
K = 10

#: A search under test: (query vector [512], k, where or None) -> result with `clip_id`.
SearchFn = Callable[[np.ndarray, int, str | None], pa.Table]


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the synthetic catalog (see the module docstring)."""

    rows: int = 1_000_000
    clusters: int = 2000
    intrinsic_dim: int = 16
    local_spread: float = 1.0
    iso_spread: float = 0.7
    topic_weight: float = 0.85
    #: log-normal sigma of the cluster sizes (0.5: sizes within ~3x of each other)
    size_sigma: float = 0.5
    #: log-normal sigma of a per-cluster factor on both spreads (0: all clusters alike)
    spread_sigma: float = 0.0
    seed: int = 0


@dataclass
class Synthetic:
    """Generated vectors and what is needed to draw queries from the same distribution."""

    vectors: np.ndarray  # [N, 512] float32, unit rows
    video: np.ndarray  # [N] int64 video ordinal
    clip_index: np.ndarray  # [N] int32
    video_category: np.ndarray  # [V] category ordinal
    centres: np.ndarray  # [C, 512]
    bases: np.ndarray  # [C, r, 512]
    weights: np.ndarray  # [C]
    cluster: np.ndarray  # [N] cluster of each row
    spread: np.ndarray  # [C] factor on the cluster's spreads


def _normalize(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_synthetic(spec: SyntheticSpec) -> Synthetic:
    """Draw `spec.rows` clustered unit vectors grouped into videos."""
    rng = np.random.default_rng(spec.seed)
    d, r = schema.EMBED_DIM, spec.intrinsic_dim
    topics = _normalize(rng.standard_normal((max(1, spec.clusters // 40), d), dtype=np.float32))
    own = _normalize(rng.standard_normal((spec.clusters, d), dtype=np.float32))
    lean = topics[rng.integers(0, len(topics), spec.clusters)]
    w = spec.topic_weight
    centres = _normalize(w * lean + np.sqrt(1 - w * w) * own)
    bases = rng.standard_normal((spec.clusters, r, d), dtype=np.float32) / np.sqrt(d)
    weights = rng.lognormal(0.0, spec.size_sigma, spec.clusters)
    weights /= weights.sum()

    clips = rng.integers(4, 13, spec.rows // 4 + 1)  # more videos than needed
    num_videos = int(np.searchsorted(np.cumsum(clips), spec.rows)) + 1
    clips = clips[:num_videos]
    video = np.repeat(np.arange(num_videos), clips)[: spec.rows]
    starts = np.cumsum(clips) - clips
    clip_index = (np.arange(spec.rows) - starts[video]).astype(np.int32)
    video_cluster = rng.choice(spec.clusters, num_videos, p=weights)
    video_category = rng.integers(0, len(CATEGORIES), num_videos)
    cluster = video_cluster[video]
    # A separate stream, so that spread_sigma = 0 draws exactly the data of earlier runs.
    spread = np.exp(spec.spread_sigma * np.random.default_rng([spec.seed, 7]).standard_normal(
        spec.clusters)).astype(np.float32)  # fmt: skip

    vectors = np.empty((spec.rows, d), dtype=np.float32)
    order = np.argsort(cluster, kind="stable")
    bounds = np.searchsorted(cluster[order], np.arange(spec.clusters + 1))
    for c in range(spec.clusters):
        rows = order[bounds[c] : bounds[c + 1]]
        if len(rows):
            vectors[rows] = _draw(centres[c], bases[c], len(rows), spec, rng, spread[c])
    _normalize(vectors)
    return Synthetic(
        vectors, video, clip_index, video_category, centres, bases, weights, cluster, spread
    )


def _draw(centre, basis, n, spec: SyntheticSpec, rng, scale=1.0, iso=True) -> np.ndarray:
    z = rng.standard_normal((n, spec.intrinsic_dim), dtype=np.float32)
    g = rng.standard_normal((n, schema.EMBED_DIM), dtype=np.float32)
    scale = float(scale)
    local = scale * spec.local_spread / np.sqrt(spec.intrinsic_dim)
    noise = scale * spec.iso_spread / np.sqrt(schema.EMBED_DIM) if iso else 0.0
    return centre + local * (z @ basis) + noise * g


def make_queries(data: Synthetic, spec: SyntheticSpec, n: int, seed: int):
    """`[n, 512]` fresh unit vectors, each around a cluster drawn by cluster weight, and
    those clusters `[n]`."""
    rng = np.random.default_rng([spec.seed, seed])
    clusters = rng.choice(len(data.centres), n, p=data.weights)
    queries = np.stack(
        [_draw(data.centres[c], data.bases[c], 1, spec, rng, data.spread[c])[0] for c in clusters]
    )
    return _normalize(queries.astype(np.float32)), clusters


def _orthogonal_unit(v: np.ndarray, to: np.ndarray) -> np.ndarray:
    """Rows of `v` with their component along the matching (unit) rows of `to` removed,
    normalized."""
    v = v - np.einsum("nd,nd->n", v, to)[:, None] * to
    return _normalize(v.astype(np.float32))


@dataclass(frozen=True)
class TextSpec:
    """How the generator's "text model" places a text query (see `make_text_queries`)."""

    top1: float = 0.22
    noise_share: float = 0.3
    seed: int = 0


def text_direction(spec: SyntheticSpec, text: TextSpec) -> np.ndarray:
    """The shared direction every text query of this generator leans towards: a fixed
    random unit vector (the text embeddings' mean direction of a contrastive model)."""
    rng = np.random.default_rng([spec.seed, text.seed, 11])
    return _normalize(rng.standard_normal((1, schema.EMBED_DIM)))[0].astype(np.float32)


def make_text_queries(
    data: Synthetic, spec: SyntheticSpec, n: int, seed: int, text: TextSpec = TextSpec()
):
    """`[n, 512]` text-like unit queries and their clusters `[n]`.

    A text query describes a clip's content, not its pixels: the content part is a cluster's
    centre plus its local variation, without the isotropic noise of a rendered clip. It
    then sits in the text model's own region of the sphere, away from every video: the
    query is `normalize(content + s * (cos(a) * tau + sin(a) * g))` with `tau` the shared
    text direction (`text_direction`), `g` a fresh random direction per query (what the
    text says that the clip does not show, and the reverse), both orthogonal to the
    content, `sin(a)^2 = noise_share`, and `s` set so that the median cosine of a query to
    its nearest row is `top1` (0.22: the modality gap of contrastive video-text models).
    """
    rng = np.random.default_rng([spec.seed, seed, text.seed, 3])
    clusters = rng.choice(len(data.centres), n, p=data.weights)
    content = np.stack(
        [
            _draw(data.centres[c], data.bases[c], 1, spec, rng, data.spread[c], iso=False)[0]
            for c in clusters
        ]
    )
    content = _normalize(content.astype(np.float32))
    tau = np.broadcast_to(text_direction(spec, text), content.shape)
    g = rng.standard_normal(content.shape, dtype=np.float32)
    a = np.arcsin(np.sqrt(text.noise_share))
    offset = np.cos(a) * _orthogonal_unit(tau, content) + np.sin(a) * _orthogonal_unit(g, content)
    offset = _normalize(offset)
    pilot = slice(0, min(n, 64))

    def top1(scale: float) -> float:
        q = _normalize(content[pilot] + scale * offset[pilot])
        best = exact_topk(data.vectors, q, 1)[:, 0]
        return float(np.median(np.einsum("qd,qd->q", q, data.vectors[best])))

    lo, hi = 0.0, 64.0
    for _ in range(14):  # top1(scale) falls as the offset grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if top1(mid) > text.top1 else (lo, mid)
    return _normalize(content + hi * offset), clusters


def describe(data: Synthetic, queries: np.ndarray, clusters: np.ndarray, truth: np.ndarray) -> str:
    """Neighbour-structure statistics of the synthetic data, for the record."""
    sample = np.random.default_rng(0).integers(0, len(data.vectors), 10_000)
    to_centre = np.einsum("nd,nd->n", data.vectors[sample], data.centres[data.cluster[sample]])
    gram = data.centres @ data.centres.T
    np.fill_diagonal(gram, -1.0)
    sims = np.einsum("qd,qkd->qk", queries, data.vectors[truth])
    own = np.mean(data.cluster[truth] == clusters[:, None])
    return (
        f"cos(row, its centre)={to_centre.mean():.2f}  cos(centre, nearest centre)="
        f"{gram.max(axis=1).mean():.2f}  query top1={sims[:, 0].mean():.3f} "
        f"top10={sims[:, -1].mean():.3f} gap(9th-10th)={np.mean(sims[:, -2] - sims[:, -1]):.4f}"
        f"  top10 in query's cluster={own:.2f}"
    )


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, rows=None) -> np.ndarray:
    """Row indices `[Q, k]` of the k most cosine-similar vectors, best first (numpy)."""
    rows = np.arange(len(vectors)) if rows is None else rows
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(rows), 100_000):
        chunk = rows[start : start + 100_000]
        sims = queries @ vectors[chunk].T
        top = np.argpartition(-sims, min(k, len(chunk) - 1), axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(sims, top, 1)], axis=1)
        best_i = np.concatenate([best_i, chunk[top]], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_s = np.take_along_axis(best_s, keep, 1)
        best_i = np.take_along_axis(best_i, keep, 1)
    return best_i


def clip_ids(data: Synthetic) -> np.ndarray:
    return np.array(
        [
            schema.clip_id(f"v{v:08d}", int(i))
            for v, i in zip(data.video, data.clip_index, strict=True)
        ],
        dtype=object,
    )


def catalog_batches(
    data: Synthetic, ids: np.ndarray, batch: int = 100_000
) -> Iterator[pa.RecordBatch]:
    """The synthetic rows in `embeddings_schema` order, plus category and duration."""
    video_duration = video_durations(data)
    now = pa.scalar(datetime.now(UTC), pa.timestamp("us", tz="UTC"))
    target = table_schema()
    for start in range(0, len(data.vectors), batch):
        sl = slice(start, start + batch)
        n = len(data.vectors[sl])
        video = data.video[sl]
        clip = data.clip_index[sl]
        video_ids = np.char.add("v", np.char.zfill(video.astype(str), 8))

        def const(value: str, n: int = n) -> pa.Array:
            return pa.array([value] * n, pa.string())

        columns = {
            schema.CLIP_ID: pa.array(ids[sl], pa.string()),
            schema.VIDEO_ID: pa.array(video_ids, pa.string()),
            schema.CLIP_INDEX: pa.array(clip, pa.int32()),
            schema.CLIP_START_S: pa.array(clip * 4.0),
            schema.CLIP_END_S: pa.array(clip * 4.0 + 4.0),
            schema.URI: pa.array(np.char.add(np.char.add("s3://bench/", video_ids), ".mp4")),
            schema.EMBEDDING: pa.FixedSizeListArray.from_arrays(
                pa.array(data.vectors[sl].ravel()), schema.EMBED_DIM
            ),
            schema.MODEL: const("internvideo2-s2-1b"),
            schema.SIGNATURE: const("bench"),
            schema.NUM_FRAMES: pa.array(np.full(n, 8, np.int32)),
            schema.FRAME_INDICES: pa.nulls(n, pa.list_(pa.int32())),
            schema.DECODER: const("decord"),
            schema.CONTENT_VERSION: const("1"),
            schema.EMBEDDED_AT: pa.array([now.value] * n, pa.timestamp("us", tz="UTC")),
            CATEGORY: pa.array(np.asarray(CATEGORIES)[data.video_category[video]]),
            DURATION_S: pa.array(video_duration[video]),
        }
        yield pa.RecordBatch.from_pydict(columns, schema=target)


def video_durations(data: Synthetic) -> np.ndarray:
    """Each video's `duration_s` (uniform 10-600 s, seeded)."""
    return np.random.default_rng(1).uniform(10.0, 600.0, len(data.video_category))


def table_schema() -> pa.Schema:
    return schema.embeddings_schema(
        (pa.field(CATEGORY, pa.string()), pa.field(DURATION_S, pa.float64()))
    )


@dataclass
class Queries:
    """Queries of one kind with their true top-K rows (`truth`, numpy brute force) and the
    prefilter each one is searched with (None: none)."""

    kind: str
    vectors: np.ndarray
    truth: np.ndarray
    where: list[str | None]

    def head(self, n: int) -> Queries:
        return Queries(self.kind, self.vectors[:n], self.truth[:n], self.where[:n])


def similar_queries(data: Synthetic, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`CatalogSearch.similar`'s queries for `n` random videos: the renormalized mean of a
    video's clips, and the filter that excludes the video itself."""
    rng = np.random.default_rng([seed, 5])
    videos = rng.choice(int(data.video.max()) + 1, n, replace=False)
    order = np.argsort(data.video, kind="stable")
    bounds = np.searchsorted(data.video[order], np.stack([videos, videos + 1]))
    means = np.stack([data.vectors[order[a:b]].mean(axis=0) for a, b in bounds.T])
    where = [f"{schema.VIDEO_ID} != 'v{v:08d}'" for v in videos]
    return _normalize(means.astype(np.float32)), where


def truth_excluding_videos(
    data: Synthetic, queries: np.ndarray, where: list[str | None], k: int
) -> np.ndarray:
    """Exact top-k rows of each query, leaving out the video its filter excludes."""
    wide = exact_topk(data.vectors, queries, k + 12)  # a video has at most 12 clips
    out = np.empty((len(queries), k), dtype=np.int64)
    for i, (rows, w) in enumerate(zip(wide, where, strict=True)):
        own = int(w.rsplit("'v", 1)[1].rstrip("'")) if w else -1
        out[i] = [r for r in rows if data.video[r] != own][:k]
    return out


@dataclass
class Result:
    kind: str
    case: str
    where: str | None
    queries: int
    p50_ms: float
    p95_ms: float
    recall: float
    params: str = ""


def measure(
    cases: dict[str, SearchFn],
    queries: Queries,
    ids: np.ndarray,
    warmup: np.ndarray,
    label: str | None = None,
) -> list[Result]:
    """Time every case on every query and score its recall@K against the true rows.

    The cases take turns query by query, so load from other processes on the shared CPU
    hits them alike and their ratios stay meaningful even when absolute numbers drift.
    `label` names the filter in the output (similar queries: `video_id != own`).
    """
    for vector, where in zip(warmup, itertools.cycle(queries.where), strict=False):
        for fn in cases.values():
            fn(vector, K, where)
    latencies = {case: [] for case in cases}
    recalls = {case: [] for case in cases}
    for vector, expected, where in zip(queries.vectors, queries.truth, queries.where, strict=True):
        wanted = set(ids[expected[:K]])
        for case, fn in cases.items():
            start = time.perf_counter()
            result = fn(vector, K, where)
            latencies[case].append(time.perf_counter() - start)
            found = set(result[schema.CLIP_ID].to_pylist())
            recalls[case].append(len(found & wanted) / K)
    results = []
    shown = label if label is not None else queries.where[0]
    for case, fn in cases.items():
        ms = np.asarray(latencies[case]) * 1000
        p50, p95 = np.percentile(ms, [50, 95])
        recall = float(np.mean(recalls[case]))
        params = getattr(fn, "params", "")
        results.append(
            Result(queries.kind, case, shown, len(ms), float(p50), float(p95), recall, params)
        )
    return results


def _case(fn: SearchFn, params: str) -> SearchFn:
    fn.params = params  # type: ignore[attr-defined]
    return fn


def search_cases(table, kind: str, configs: Sequence[IndexConfig]) -> dict[str, SearchFn]:
    """The searches to compare for one query kind: the table's calibrated parameters for
    the kind (what `CatalogSearch` uses), the presets of its index type (what it used
    before calibration), and any grid configurations; plug further ones in here."""
    base = config_for_table(table)
    cases: dict[str, SearchFn] = {}
    calibration = read_calibration(table)
    for name, choice in (
        ("calibrated", choose(calibration, base, kind) if calibration else None),
        ("presets", choose(None, base, kind)),
    ):
        if choice is None:
            continue
        cfg, exact = choice.params.apply(base), choice.params.exact
        fn = lambda v, k, w, cfg=cfg, exact=exact: vector_search(table, v, k, w, cfg, exact=exact)  # noqa: E731
        cases[name] = _case(fn, str(choice.params))
    for cfg in configs:
        name = f"nprobes={cfg.nprobes} ef={cfg.ef} refine={cfg.refine_factor}"
        fn = lambda v, k, w, cfg=cfg: vector_search(table, v, k, w, cfg)  # noqa: E731
        cases[name] = _case(fn, name)
    return cases


def print_table(results: list[Result]) -> None:
    header = (
        f"{'kind':<8} {'case':<26} {'filter':<42} {'queries':>7} {'p50 ms':>9} {'p95 ms':>9} "
        f"{'recall@10':>9}  parameters"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.kind:<8} {r.case:<26} {r.where or '-':<42} {r.queries:>7} {r.p50_ms:>9.2f} "
            f"{r.p95_ms:>9.2f} {r.recall:>9.3f}  {r.params}"
        )
    for r in results:
        exact = next(
            (e for e in results if (e.kind, e.where, e.case) == (r.kind, r.where, "exact")), None
        )
        if exact and r.case != "exact":
            ratio50, ratio95 = r.p50_ms / exact.p50_ms, r.p95_ms / exact.p95_ms
            label = f"{r.kind} {r.case} / exact ({r.where or 'no filter'})"
            print(f"{label}: p50 {ratio50:.4f}x, p95 {ratio95:.4f}x")


def _build_settings(config: IndexConfig) -> dict:
    """What decides whether a saved index can be reused: the build parameters."""
    skip = ("nprobes", "ef", "refine_factor", "calibration")
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}
    return json.loads(json.dumps(settings))


def calibration_texts(args, data: Synthetic, spec: SyntheticSpec) -> np.ndarray | None:
    """Text embeddings for the calibration (`--calibration-text`): None (its synthetic text
    queries), or fresh draws of this benchmark's text generator (another seed than the
    measured queries), as an operator with a model passes `vidcat index --text-embeddings`."""
    if args.calibration_text == "synthetic":
        return None
    cal = CalibrationConfig()
    texts, _ = make_text_queries(data, spec, cal.queries + cal.validation_queries, seed=3)
    return texts


def open_or_build(args, spec: SyntheticSpec, config: IndexConfig):
    """Create (or with --reuse, reopen) the table and its indices, calibrated unless
    --no-calibration; return what is needed."""
    db_dir = Path(args.db or tempfile.mkdtemp(prefix="vidcat-qbench-"))
    sidecar = db_dir / "synthetic.json"
    saved = json.loads(sidecar.read_text()) if args.reuse and sidecar.exists() else {}
    timings: dict[str, float] = {}

    start = time.perf_counter()
    data = make_synthetic(spec)
    ids = clip_ids(data)
    timings["generate_s"] = time.perf_counter() - start
    db = lancedb.connect(db_dir)
    same_spec = "spec" in saved and SyntheticSpec(**saved["spec"]) == spec
    if same_spec and TABLE in db.list_tables().tables:
        table = db.open_table(TABLE)
    else:
        start = time.perf_counter()
        reader = pa.RecordBatchReader.from_batches(table_schema(), catalog_batches(data, ids))
        table = db.create_table(TABLE, data=reader, mode="overwrite")
        timings["write_s"] = time.perf_counter() - start
        saved = {"spec": dataclasses.asdict(spec)}
    build_cfg = _build_settings(config)
    if saved.get("index") != build_cfg or not args.reuse:
        report = build_index(table, config, text_vectors=calibration_texts(args, data, spec))
        timings["index_s"] = (report["vector_index"] or {}).get("seconds", 0.0)
        timings["scalar_index_s"] = sum(s["seconds"] for s in report["scalar_indices"])
        timings["calibration_s"] = (report["recall"] or {}).get("seconds", 0.0)
        print("build_index:", json.dumps(report, default=str))
        saved["index"] = build_cfg
    elif (
        config.calibration is not None
        and has_vector_index(table)
        and (args.recalibrate or read_calibration(table) is None)
    ):
        start = time.perf_counter()
        texts = calibration_texts(args, data, spec)
        calibration, report = calibrate(table, config, text_vectors=texts)
        write_calibration(table, calibration)
        timings["calibration_s"] = time.perf_counter() - start
        print("calibrate:", json.dumps(report, default=str))
    db_dir.mkdir(parents=True, exist_ok=True)
    sidecar.write_text(json.dumps(saved))
    return db_dir, table, data, ids, timings


#: The benchmark's catalogs (`--dist`): the data the presets were tuned on, one with other
#: cluster sizes, spreads and local dimension, and one close to uniform.
DISTRIBUTIONS: dict[str, SyntheticSpec] = {
    "base": SyntheticSpec(),
    # Half as many clusters of very unequal sizes (log-normal sigma 1.2), each with its own
    # spread (sigma 0.35), a 48-d local subspace and more noise; topics overlap less.
    "other": SyntheticSpec(
        clusters=1000, intrinsic_dim=48, local_spread=1.3, iso_spread=0.9, topic_weight=0.7,
        size_sigma=1.2, spread_sigma=0.35,
    ),
    # Noise dominates: a row's cosine to its own centre ~0.32, a query's nearest row ~0.26.
    "uniform": SyntheticSpec(
        clusters=2000, intrinsic_dim=64, local_spread=1.5, iso_spread=2.5, topic_weight=0.5
    ),
}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dist", choices=sorted(DISTRIBUTIONS), default="base")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--clusters", type=int, help="default: the distribution's")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--exact-queries", type=int, default=20, help="exact search is slow")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument(
        "--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="query kinds to time"
    )
    p.add_argument("--db", help="database directory (default: a new temp dir, deleted after)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reopen the table/index of an earlier run with the same --db, spec and config",
    )
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="with --reuse: calibrate the search parameters again (default: only when the "
        "reused index has no calibration)",
    )
    p.add_argument(
        "--no-calibration", action="store_true", help="build without calibration (presets)"
    )
    p.add_argument(
        "--calibration-text",
        choices=("synthetic", "benchmark"),
        default="synthetic",
        help="text queries the calibration uses: its own synthetic ones (a table without a "
        "model), or draws of this benchmark's text generator (as given text embeddings)",
    )
    for name in ("intrinsic-dim", "local-spread", "iso-spread", "topic-weight", "size-sigma",
                 "spread-sigma"):  # fmt: skip
        kind = int if name == "intrinsic-dim" else float
        p.add_argument(f"--{name}", type=kind, help="default: the distribution's")
    p.add_argument("--seed", type=int, default=0)
    d = IndexConfig()
    p.add_argument("--index-type", choices=INDEX_TYPES, default=d.index_type)
    p.add_argument("--rows-per-partition", type=int, help="default: the index type's preset")
    p.add_argument("--m", type=int, default=d.m)
    p.add_argument("--ef-construction", type=int, default=d.ef_construction)
    p.add_argument("--num-sub-vectors", type=int, default=d.num_sub_vectors)
    p.add_argument("--min-rows-for-index", type=int, default=d.min_rows_for_index)
    p.add_argument("--target-recall", type=float, default=CalibrationConfig.target)
    p.add_argument("--nprobes", type=int, nargs="+", default=[], help="extra grid cases")
    p.add_argument("--ef", type=int, nargs="+", default=[0], help="grid; 0: unset")
    p.add_argument("--refine", type=int, nargs="+", default=[0], help="grid; 0: unset")
    p.add_argument("--no-filter", action="store_true", help="skip the where-filtered runs")
    return p.parse_args(argv)


def make_spec(args: argparse.Namespace) -> SyntheticSpec:
    """The `--dist` distribution with any knob given on the command line."""
    knobs = ("clusters", "intrinsic_dim", "local_spread", "iso_spread", "topic_weight",
             "size_sigma", "spread_sigma")  # fmt: skip
    given = {k: getattr(args, k) for k in knobs if getattr(args, k) is not None}
    return dataclasses.replace(DISTRIBUTIONS[args.dist], rows=args.rows, seed=args.seed, **given)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    total = time.perf_counter()
    spec = make_spec(args)
    calibration = None if args.no_calibration else CalibrationConfig(target=args.target_recall)
    overrides = {"rows_per_partition": args.rows_per_partition} if args.rows_per_partition else {}
    config = IndexConfig.preset(
        args.index_type, m=args.m, ef_construction=args.ef_construction,
        num_sub_vectors=args.num_sub_vectors, min_rows_for_index=args.min_rows_for_index,
        bitmap_columns=(CATEGORY,), calibration=calibration, **overrides,
    )  # fmt: skip
    print(f"dist={args.dist} spec={dataclasses.asdict(spec)}")
    db_dir, table, data, ids, timings = open_or_build(args, spec, config)
    try:
        start = time.perf_counter()
        sets: dict[str, Queries] = {}
        video, clusters = make_queries(data, spec, args.queries, seed=1)
        truth = exact_topk(data.vectors, video, K)
        sets["video"] = Queries("video", video, truth, [None] * len(video))
        print("data:", describe(data, video, clusters, truth))
        text, _ = make_text_queries(data, spec, args.queries, seed=1)
        sets["text"] = Queries("text", text, exact_topk(data.vectors, text, K), [None] * len(text))
        similar, excluded = similar_queries(data, args.queries, seed=1)
        similar_truth = truth_excluding_videos(data, similar, excluded, K)
        sets["similar"] = Queries("similar", similar, similar_truth, excluded)
        in_filter = np.flatnonzero(data.video_category[data.video] == CATEGORIES.index("sports"))
        truth_filtered = exact_topk(data.vectors, video, K, rows=in_filter)
        filtered = Queries("video", video, truth_filtered, [FILTER] * len(video))
        rare = in_filter[video_durations(data)[data.video[in_filter]] < 60]
        truth_rare = exact_topk(data.vectors, video, K, rows=rare)
        rare_filtered = Queries("video", video, truth_rare, [RARE_FILTER] * len(video))
        print(f"filters: {FILTER!r} {len(in_filter)} rows, {RARE_FILTER!r} {len(rare)} rows")
        timings["queries_and_truth_s"] = time.perf_counter() - start
        for kind in ("text", "video", "similar"):
            top1 = np.einsum("qd,qd->q", sets[kind].vectors, data.vectors[sets[kind].truth[:, 0]])
            print(f"{kind} queries: median top-1 cosine {np.median(top1):.3f}")
        warmup, _ = make_queries(data, spec, args.warmup, seed=2)

        configs = []
        for n, e, r in itertools.product(args.nprobes, args.ef, args.refine):
            try:
                configs.append(
                    dataclasses.replace(
                        config_for_table(table), nprobes=n, ef=e or None, refine_factor=r or None
                    )
                )
            except ValueError as err:  # e.g. no re-rank on a quantized index
                print(f"skipping nprobes={n} ef={e} refine={r}: {err}")
        indexed = has_vector_index(table)
        print(f"rows={table.count_rows()} vector_index={indexed} db={db_dir}")
        exact = {"exact": _case(lambda v, k, w: vector_search(table, v, k, w, exact=True), "")}
        results = []
        runs = [
            (sets[kind], None if kind != "similar" else "video_id != own") for kind in args.kinds
        ]
        if not args.no_filter and "video" in args.kinds:
            runs += [(filtered, FILTER), (rare_filtered, RARE_FILTER)]
        for queries, label in runs:
            n = args.exact_queries
            results += measure(exact, queries.head(n), ids, warmup[:3], label)
            if indexed:
                cases = search_cases(table, queries.kind, configs)
                results += measure(cases, queries, ids, warmup, label)
        print_table(results)
        timings["total_s"] = time.perf_counter() - total
        print("timings:", {k: round(v, 1) for k, v in timings.items()})
    finally:
        if not args.db:
            shutil.rmtree(db_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
