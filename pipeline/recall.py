"""Recall of the table's own searches, measured on the table, and the search parameters
calibrated to reach a target recall for each kind of query.

Fixed search parameters (the presets of :mod:`pipeline.index`) reach their recall only
on data like the data they were tuned on; text queries of a contrastive video-text model
and catalogs with other cluster structure lose most of it (issue 13: recall@10 0.07-0.49
with the presets). So every vector index build (`build_index`, and each build or retrain
of `update_index` in the nightly maintenance) ends with :func:`calibrate`:

1. **Queries from the table itself**, three kinds, each searched the way
   `pipeline.query.CatalogSearch` searches it:

   * `video` (a query video, `CatalogSearch.video`): a held-out row moved to cosine
     `video_cosine` (0.99) by a random direction; the row itself is left out of the truth
     and of the results, so the query behaves like a new clip of the catalog's kind;
   * `similar` (`CatalogSearch.similar`): the renormalized mean of a sampled video's clips,
     with that video excluded by the same `video_id != ...` prefilter;
   * `text` (`CatalogSearch.text`): the text embeddings given (a model's embeddings of
     captions or of real queries), or else synthetic ones: a held-out row `x` moved to
     cosine `text_video_cosine` (0.22) by an offset `u` orthogonal to `x`,
     `q = x * c + u * sqrt(1 - c^2)`, with `u` made of one direction shared by all text
     queries (the mean direction of a text modality, here a fixed random direction: the
     modality gap) and, for `text_noise_share` of its squared length, a random direction
     of its own (what a caption says that the clip does not show). Both numbers are
     measurable with a model: the cosine of captions to their clips, and how much of
     the caption-minus-clip offsets one mean direction explains. The row itself stays a
     valid result, as a caption's own clip is.

2. **Ground truth**: one exact scan of every row of the table for all queries at once
   (:func:`exact_neighbours`: the cosine top-k, with the same exclusions), which is what
   `vector_search(..., exact=True)` returns per query (tested), at the cost of one read
   of the embedding column instead of one per query (2 s per query at 1M rows).

3. **Search**: for each beam width (HNSW) the fewest probes that reach the target with the
   widest re-rank tried, then the narrowest re-rank that still does; the candidate of each
   beam is timed, the fastest ones are measured again on fresh validation queries, taking
   turns query by query with the presets, and the fastest that reaches the target there
   wins, or among those within `_SAME_COST` (10 %) of its p50 the one with the highest
   recall (:func:`calibrate`). A kind that no tried parameters bring to the target is searched
   exactly when `allow_exact` (recall 1 at the cost of a scan) or gets the parameters of
   the highest recall.

The result, with every measured point, is stored as JSON in the embedding field's
metadata (:data:`CALIBRATION_KEY`) beside the rows the index was trained on, so every
reader searches the same way, and :func:`choose` answers what a search of one kind
should use: the calibrated parameters, the cheapest measured ones for another recall
(`recall=0.8`, or a preset name: `fast` 0.8, `balanced` the calibrated target, `exact`),
or the presets for a table without a (current) calibration, with the recall to expect.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .compat import sql_string
from .index import (
    CALIBRATION_KEY,
    VECTOR_INDEX_NAME,
    CalibrationConfig,
    IndexConfig,
    has_vector_index,
    trained_rows,
    vector_search,
)
from .schema import CLIP_ID, EMBED_DIM, EMBEDDING, RESULT_COLUMNS, VIDEO_ID

logger = logging.getLogger(__name__)

#: The query kinds, as `CatalogSearch` names its methods.
KINDS: tuple[str, ...] = ("text", "video", "similar")
#: Format version of the stored JSON.
CALIBRATION_VERSION = 1
#: Named recall levels a caller may ask for instead of a number (None: the target).
PRESETS: dict[str, float | None] = {"fast": 0.8, "balanced": None, "exact": 1.0}
#: Candidates timed again on the validation queries, per kind.
_FINALISTS = 3
#: Passing candidates whose p50 is within this fraction of the fastest one's count as
#: equally fast; the one with the highest recall among them wins.
_SAME_COST = 0.10
#: Probe steps tried above the winner when it misses the target on the validation set.
_STEP_UPS = 4


@dataclass(frozen=True)
class Params:
    """Search parameters of one measured configuration (`exact`: a full scan)."""

    nprobes: int | None = None
    ef: int | None = None
    refine_factor: int | None = None
    exact: bool = False

    def apply(self, config: IndexConfig) -> IndexConfig:
        """`config` with these search parameters (unchanged for an exact scan)."""
        if self.exact:
            return config
        return dataclasses.replace(
            config, nprobes=self.nprobes, ef=self.ef, refine_factor=self.refine_factor
        )

    def as_dict(self) -> dict[str, Any]:
        if self.exact:
            return {"exact": True}
        return {"nprobes": self.nprobes, "ef": self.ef, "refine_factor": self.refine_factor}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Params:
        if data.get("exact"):
            return cls(exact=True)
        return cls(data["nprobes"], data.get("ef"), data.get("refine_factor"))

    def __str__(self) -> str:
        if self.exact:
            return "exact scan"
        parts = [f"nprobes {self.nprobes}"]
        if self.ef is not None:
            parts.append(f"ef {self.ef}")
        if self.refine_factor is not None:
            parts.append(f"refine {self.refine_factor}")
        return ", ".join(parts)


EXACT = Params(exact=True)


# ---- queries drawn from the table ------------------------------------------------------


@dataclass
class QuerySet:
    """Queries of one kind, how each is searched, and (once computed) its true top-k."""

    kind: str
    vectors: np.ndarray  # [Q, 512] float32, unit rows
    #: a held-out row left out of the truth and of the results (`video` kind)
    exclude_clip: list[str | None]
    #: a video excluded by a prefilter, as `CatalogSearch.similar` does (`similar` kind)
    exclude_video: list[str | None]
    truth: list[list[str]] = dataclasses.field(default_factory=list)
    #: cosine of each query to its nearest row (after exclusions)
    top1: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.vectors)

    def subset(self, rows: slice) -> QuerySet:
        return QuerySet(
            self.kind,
            self.vectors[rows],
            self.exclude_clip[rows],
            self.exclude_video[rows],
            self.truth[rows],
            None if self.top1 is None else self.top1[rows],
        )


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _orthogonal_unit(v: np.ndarray, to: np.ndarray) -> np.ndarray:
    """Rows of `v` without their component along the (unit) rows of `to`, normalized."""
    return _unit_rows(v - np.einsum("nd,nd->n", v, to)[:, None] * to)


def _at_cosine(x: np.ndarray, offset: np.ndarray, cosine: float) -> np.ndarray:
    """Unit rows at `cosine` from the unit rows `x`, moved along `offset` (made orthogonal)."""
    u = _orthogonal_unit(offset, x)
    return _unit_rows(cosine * x + math.sqrt(max(0.0, 1 - cosine * cosine)) * u)


def _embeddings(rows: pa.Table) -> np.ndarray:
    flat = rows[EMBEDDING].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(rows), EMBED_DIM)


def _sample_rows(table: Any, count: int, rng: np.random.Generator) -> pa.Table:
    total = table.count_rows()
    offsets = np.sort(rng.choice(total, size=min(count, total), replace=False))
    return table.take_offsets(offsets.tolist()).select([CLIP_ID, VIDEO_ID, EMBEDDING]).to_arrow()


def synthetic_text(
    rows: np.ndarray, config: CalibrationConfig, rng: np.random.Generator
) -> np.ndarray:
    """Text-like queries for the unit rows `rows` (see the module docstring, step 1)."""
    shared_rng = np.random.default_rng([config.seed, 11])
    shared = _unit_rows(shared_rng.standard_normal((1, EMBED_DIM)))
    own = _unit_rows(rng.standard_normal(rows.shape).astype(np.float32))
    a = math.asin(math.sqrt(config.text_noise_share))
    offset = math.cos(a) * _orthogonal_unit(np.broadcast_to(shared, rows.shape), rows)
    offset = offset + math.sin(a) * _orthogonal_unit(own, rows)
    return _at_cosine(rows, offset, config.text_video_cosine)


def draw_queries(
    table: Any,
    config: CalibrationConfig,
    count: int,
    rng: np.random.Generator,
    text_vectors: np.ndarray | None = None,
) -> dict[str, QuerySet]:
    """`count` queries of every kind, drawn from the table (module docstring, step 1).

    Args:
        table: the embeddings table.
        config: calibration settings.
        count: queries per kind (fewer when the table is small: at most a tenth of its
            rows are held out per kind).
        rng: the sampling generator (draws for disjoint sets come from one generator).
        text_vectors: text embeddings to use as the `text` queries (the first `count`).
    """
    total = table.count_rows()
    count = max(1, min(count, total // 10))
    sample = _sample_rows(table, 3 * count, rng)
    vectors = _embeddings(sample)
    clips = sample[CLIP_ID].to_pylist()
    order = rng.permutation(len(sample))
    video_rows, text_rows, similar_rows = (order[i * count : (i + 1) * count] for i in range(3))
    sets: dict[str, QuerySet] = {}

    noise = rng.standard_normal((len(video_rows), EMBED_DIM)).astype(np.float32)
    moved = _at_cosine(vectors[video_rows], noise, config.video_cosine)
    sets["video"] = QuerySet(
        "video", moved, [clips[i] for i in video_rows], [None] * len(video_rows)
    )

    if text_vectors is not None:
        text = _unit_rows(np.asarray(text_vectors, np.float32).reshape(-1, EMBED_DIM)[:count])
    else:
        text = synthetic_text(vectors[text_rows], config, rng)
    sets["text"] = QuerySet("text", text, [None] * len(text), [None] * len(text))

    videos = list(dict.fromkeys(sample[VIDEO_ID].take(pa.array(similar_rows)).to_pylist()))
    means = _video_means(table, videos)
    sets["similar"] = QuerySet(
        "similar", np.stack([means[v] for v in videos]), [None] * len(videos), videos
    )
    return sets


def _video_means(table: Any, videos: Sequence[str]) -> dict[str, np.ndarray]:
    """The renormalized mean clip embedding of each video (`CatalogSearch.similar`'s query)."""
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(videos), 200):
        chunk = videos[start : start + 200]
        where = f"{VIDEO_ID} IN ({', '.join(sql_string(v) for v in chunk)})"
        rows = table.search().where(where).select([VIDEO_ID, EMBEDDING]).limit(None).to_arrow()
        emb = _embeddings(rows)
        ids = np.asarray(rows[VIDEO_ID].to_pylist(), dtype=object)
        for v in chunk:
            mean = emb[ids == v].mean(axis=0)
            norm = float(np.linalg.norm(mean))
            out[v] = (mean / norm if norm > 1e-6 else emb[ids == v][0]).astype(np.float32)
    return out


def exact_neighbours(
    table: Any, sets: Iterable[QuerySet], k: int, batch_rows: int = 32_768
) -> None:
    """Fill each set's `truth` (clip ids of the cosine top-k, best first) and `top1` by
    one scan of every row, honouring the sets' exclusions."""
    sets = list(sets)
    queries = np.concatenate([s.vectors for s in sets]).astype(np.float32)
    # Each excluded clip or video, and the queries (possibly several) that exclude it.
    exclusions = []
    for column, field in ((CLIP_ID, "exclude_clip"), (VIDEO_ID, "exclude_video")):
        owners: dict[str, list[int]] = {}
        for i, key in enumerate(key for s in sets for key in getattr(s, field)):
            if key is not None:
                owners.setdefault(key, []).append(i)
        if owners:
            exclusions.append((column, pa.array(list(owners), pa.string()), list(owners.values())))

    best_score = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_id = np.full((len(queries), k), None, dtype=object)
    scan = table.search().select([CLIP_ID, VIDEO_ID, EMBEDDING]).limit(None)
    for batch in scan.to_batches(batch_rows):
        if batch.num_rows == 0:
            continue
        emb = _embeddings(pa.Table.from_batches([batch]))
        sims = queries @ emb.T
        for column, keys, owners in exclusions:
            hit = pc.index_in(batch[column], value_set=keys)
            for row in np.flatnonzero(hit.is_valid().to_numpy(zero_copy_only=False)):
                sims[owners[hit[int(row)].as_py()], row] = -np.inf
        take = min(k, batch.num_rows)
        top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        ids = np.asarray(batch[CLIP_ID].to_pylist(), dtype=object)
        score = np.concatenate([best_score, np.take_along_axis(sims, top, 1)], axis=1)
        cand = np.concatenate([best_id, ids[top]], axis=1)
        keep = np.argsort(-score, axis=1, kind="stable")[:, :k]
        best_score = np.take_along_axis(score, keep, 1)
        best_id = np.take_along_axis(cand, keep, 1)
    start = 0
    for s in sets:
        stop = start + len(s)
        s.truth = [[c for c in row if c is not None] for row in best_id[start:stop]]
        s.top1 = best_score[start:stop, 0].astype(np.float64)
        start = stop


# ---- measuring a configuration ---------------------------------------------------------


@dataclass
class Measurement:
    """Recall@k and per-query latency of one configuration on one query set."""

    recall: float
    per_query: np.ndarray  # recall of each query
    seconds: np.ndarray  # latency of each query

    @property
    def p50_ms(self) -> float:
        return float(np.median(self.seconds) * 1000)

    def lower(self, sigmas: float) -> float:
        """The mean recall less `sigmas` standard errors of it (over the queries)."""
        n = len(self.per_query)
        spread = float(np.std(self.per_query, ddof=1)) if n > 1 else 0.0
        return self.recall - sigmas * spread / math.sqrt(max(1, n))

    def reaches(self, target: float, sigmas: float) -> bool:
        return self.lower(sigmas) >= target

    @property
    def p95_ms(self) -> float:
        return float(np.percentile(self.seconds, 95) * 1000)


def search_once(
    table: Any, config: IndexConfig, params: Params, queries: QuerySet, i: int, k: int
) -> tuple[list[str], float]:
    """Search query `i` of `queries` as `CatalogSearch` would; (clip ids, seconds)."""
    extra = 1 if queries.exclude_clip[i] is not None else 0
    video = queries.exclude_video[i]
    where = f"{VIDEO_ID} != {sql_string(video)}" if video is not None else None
    start = time.perf_counter()
    rows = vector_search(
        table,
        queries.vectors[i],
        k + extra,
        where,
        params.apply(config),
        exact=params.exact,
        columns=RESULT_COLUMNS,
    )
    seconds = time.perf_counter() - start
    found = [c for c in rows[CLIP_ID].to_pylist() if c != queries.exclude_clip[i]]
    return found[:k], seconds


def measure(
    table: Any,
    config: IndexConfig,
    candidates: Sequence[Params],
    queries: QuerySet,
    k: int,
) -> list[Measurement]:
    """Recall@k and latency of each candidate on every query; the candidates take turns
    query by query, so load from other processes hits them alike."""
    hits = np.zeros((len(candidates), len(queries)))
    seconds = np.zeros((len(candidates), len(queries)))
    for i in range(len(queries)):
        wanted = set(queries.truth[i])
        for j, params in enumerate(candidates):
            found, seconds[j, i] = search_once(table, config, params, queries, i, k)
            hits[j, i] = len(wanted.intersection(found)) / max(1, len(wanted))
    return [Measurement(float(h.mean()), h, s) for h, s in zip(hits, seconds, strict=True)]


# ---- the stored calibration ------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """What searches of one kind use, and the recall to expect from it."""

    kind: str
    params: Params
    #: recall@k measured for these parameters on this table; None: not measured
    recall: float | None
    #: `calibrated`, `override` (a caller's recall or preset), `preset` (no calibration),
    #: `pinned` (parameters the caller fixed), `no index` (a small table, scanned exactly)
    #: or `filter leaves N rows` (a filter few enough rows pass to scan them exactly)
    source: str
    p50_ms: float | None = None

    def describe(self) -> str:
        """One line: `text queries: nprobes 16, ef 200, refine 5 (calibrated), expected
        recall@10 0.962`."""
        expected = (
            f"expected recall@10 {self.recall:.3f}"
            if self.recall is not None
            else "expected recall unknown (the table has no search calibration)"
        )
        return f"{self.kind} queries: {self.params} ({self.source}), {expected}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **self.params.as_dict(),
            "expected_recall": self.recall,
            "source": self.source,
        }


@dataclass(frozen=True)
class Calibration:
    """A table's calibrated search parameters, as stored with it."""

    index_type: str
    trained_rows: int
    rows: int
    k: int
    target: float
    text_queries: str
    chosen: dict[str, dict[str, Any]]  # kind -> params, recall, p50_ms, reached
    measured: list[dict[str, Any]]  # params, kind, recall, p50_ms (the search's points)
    seconds: float

    def to_json(self) -> str:
        return json.dumps({"version": CALIBRATION_VERSION, **dataclasses.asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> Calibration | None:
        data = json.loads(text)
        if data.pop("version", None) != CALIBRATION_VERSION:
            return None
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """The recall this calibration promises, per kind, as a report shows it (`stored`:
        measured by an earlier build, on `rows` rows)."""
        out: dict[str, Any] = {"target": self.target, "k": self.k, "rows": self.rows}
        for kind, entry in self.chosen.items():
            out[kind] = {
                "params": entry["params"],
                f"recall@{self.k}": round(entry["recall"], 4),
                "p50_ms": round(entry["p50_ms"], 2),
            }
        return {**out, "stored": True}

    def choice(self, kind: str) -> Choice:
        entry = self.chosen[kind]
        return Choice(
            kind,
            Params.from_dict(entry["params"]),
            entry["recall"],
            "calibrated",
            entry.get("p50_ms"),
        )

    def cheapest(self, kind: str, recall: float) -> Choice:
        """The fastest measured parameters of `kind` expected to reach `recall`; an exact
        scan when none is."""
        if recall >= 1.0:
            return Choice(kind, EXACT, 1.0, "override")
        options = [m for m in self.measured if m["kind"] == kind and m["recall"] >= recall]
        chosen = self.chosen[kind]
        if chosen["recall"] >= recall:
            options.append({"params": chosen["params"], **chosen})
        if not options:
            return Choice(kind, EXACT, 1.0, "override")
        best = min(options, key=lambda m: m["p50_ms"])
        return Choice(
            kind, Params.from_dict(best["params"]), best["recall"], "override", best["p50_ms"]
        )


def read_calibration(table: Any) -> Calibration | None:
    """The table's stored calibration when it belongs to the index the table has now
    (same type, same training rows); None otherwise."""
    metadata = table.schema.field(EMBEDDING).metadata or {}
    raw = metadata.get(CALIBRATION_KEY.encode())
    if not raw:
        return None
    try:
        calibration = Calibration.from_json(raw.decode())
    except (ValueError, TypeError, KeyError) as exc:
        logger.warning("unreadable search calibration on the table (%s): presets used", exc)
        return None
    if calibration is None or not has_vector_index(table):
        return None
    current = table.index_stats(VECTOR_INDEX_NAME).index_type
    if calibration.index_type != current or calibration.trained_rows != trained_rows(table):
        logger.info("the stored search calibration is for another index: presets used")
        return None
    return calibration


def write_calibration(table: Any, calibration: Calibration | None) -> None:
    """Store (None: clear) the calibration in the embedding field's metadata."""
    text = calibration.to_json() if calibration is not None else ""
    table.update_field_metadata({"path": EMBEDDING, "metadata": {CALIBRATION_KEY: text}})


def resolve_recall(recall: float | str | None, target: float | None) -> float | None:
    """A caller's `recall` (a number in (0, 1] or a preset name) as a number; None: the
    calibrated target."""
    if recall is None:
        return None
    if isinstance(recall, str):
        if recall not in PRESETS:
            raise ValueError(f"recall must be a number in (0, 1] or one of {sorted(PRESETS)}")
        value = PRESETS[recall]
        return target if value is None else value
    if isinstance(recall, bool) or not isinstance(recall, int | float) or not 0 < recall <= 1:
        raise ValueError(f"recall must be a number in (0, 1] or one of {sorted(PRESETS)}")
    return float(recall)


def choose(
    calibration: Calibration | None,
    config: IndexConfig,
    kind: str,
    recall: float | str | None = None,
) -> Choice:
    """The search parameters for a query of `kind` (see the module docstring).

    Args:
        calibration: the table's (`read_calibration`), or None.
        config: the presets of the table's index (`config_for_table`), used without a
            calibration.
        kind: `text`, `video` or `similar`.
        recall: None: the calibrated parameters; a number or preset name: the fastest
            measured parameters expected to reach it (`exact` or 1.0: an exact scan).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    wanted = resolve_recall(recall, calibration.target if calibration else None)
    if wanted is not None and wanted >= 1.0:
        return Choice(kind, EXACT, 1.0, "override")
    if calibration is None or kind not in calibration.chosen:
        preset = Params(config.nprobes, config.ef, config.refine_factor)
        return Choice(kind, preset, None, "preset")
    if wanted is None:
        return calibration.choice(kind)
    return calibration.cheapest(kind, wanted)


# ---- calibration -----------------------------------------------------------------------


def _probe_grid(config: CalibrationConfig, partitions: int) -> list[int]:
    return sorted({p for p in config.nprobes if p < partitions} | {partitions})


class _Search:
    """Measured points of one calibration, each measured once per kind."""

    def __init__(self, table, config: IndexConfig, sets: dict[str, QuerySet], k: int):
        self.table, self.config, self.sets, self.k = table, config, sets, k
        self.points: dict[tuple[str, Params], Measurement] = {}

    def __call__(self, kind: str, params: Params) -> Measurement:
        key = (kind, params)
        if key not in self.points:
            sets = self.sets[kind]
            m = measure(self.table, self.config, [params], sets, self.k)[0]
            self.points[key] = m
            logger.debug("%s %s: recall %.3f p50 %.1f ms", kind, params, m.recall, m.p50_ms)
        return self.points[key]


def _fewest(values: Sequence, reaches: Callable[[Any], bool]) -> int | None:
    """Index of the first of `values` for which the monotone `reaches` holds; None when
    none does. Tries indices 0, 1, 3, 7, ... (each step twice the last) and then bisects,
    so a small answer costs few (and cheap) trials."""
    failing, i, step = -1, 0, 1
    while not reaches(values[i]):
        failing = i
        if i == len(values) - 1:
            return None
        i, step = min(i + step, len(values) - 1), step * 2
    while i - failing > 1:
        mid = (failing + i) // 2
        if reaches(values[mid]):
            i = mid
        else:
            failing = mid
    return i


def _candidates(
    search: _Search,
    kind: str,
    probes: list[int],
    beams: list[int | None],
    refines: list[int | None],
    target: tuple[float, float],
    k: int,
    deadline: float,
) -> list[tuple[Params, Measurement]]:
    """One candidate per beam width, narrowest first: the fewest probes that reach
    `target` with the widest re-rank the beam holds (HNSW returns at most `ef` candidates,
    so `refine_factor <= ef / k`), then the narrowest re-rank that still does. A wider beam
    is tried only while it saves probes."""
    found: list[tuple[Params, Measurement]] = []
    for ef in beams:
        if found and time.monotonic() > deadline:
            logger.warning("calibration of %s: time is up after %d beam widths", kind, len(found))
            break
        fits = [r for r in refines if r is None or ef is None or r * k <= ef] or refines[:1]
        widest = fits[-1]
        cap = probes.index(found[-1][0].nprobes) + 1 if found else len(probes)
        p = _fewest(
            probes[:cap], lambda n, ef=ef, r=widest: search(kind, Params(n, ef, r)).reaches(*target)
        )
        if p is None:
            continue
        nprobes = probes[p]
        r = _fewest(
            fits, lambda r, ef=ef, n=nprobes: search(kind, Params(n, ef, r)).reaches(*target)
        )
        params = Params(nprobes, ef, fits[r])
        if found and nprobes == found[-1][0].nprobes:
            break  # a wider beam that saves no probe only costs more
        found.append((params, search(kind, params)))
        if p == 0:
            break  # one probe: nothing cheaper is left to find
    return found


def calibrate(
    table: Any,
    config: IndexConfig,
    calibration: CalibrationConfig | None = None,
    text_vectors: np.ndarray | None = None,
) -> tuple[Calibration, dict[str, Any]]:
    """Measure recall on the table and choose each kind's search parameters.

    Args:
        table: the embeddings table, with its vector index built from `config`.
        config: the index's build and preset search parameters.
        calibration: calibration settings; default `config.calibration`.
        text_vectors: text embeddings to use as the text queries (`[n, 512]`; the first
            `queries` for the search, the next `validation_queries` for validation);
            None: synthetic ones (module docstring).

    Returns:
        The calibration to store, and the report (per kind: chosen parameters, recall@k
        on the validation queries, p50/p95 ms, the preset parameters' recall on the same
        queries; plus the query and ground-truth counts and seconds).
    """
    cal = calibration or config.calibration or CalibrationConfig()
    start = time.perf_counter()
    rng = np.random.default_rng(cal.seed)
    texts = None if text_vectors is None else np.asarray(text_vectors, np.float32)
    search_sets = draw_queries(table, cal, cal.queries, rng, texts)
    valid_texts = None if texts is None else texts[len(search_sets["text"]) :]
    if valid_texts is not None and not len(valid_texts):
        valid_texts = texts
    valid_sets = draw_queries(table, cal, cal.validation_queries, rng, valid_texts)
    truth_start = time.perf_counter()
    exact_neighbours(table, [*search_sets.values(), *valid_sets.values()], cal.k)
    truth_seconds = time.perf_counter() - truth_start

    partitions = config.num_partitions(trained_rows(table) or table.count_rows())
    probes = _probe_grid(cal, partitions)
    hnsw = config.index_type.startswith("IVF_HNSW")
    beams: list[int | None] = list(cal.ef) if hnsw else [None]
    flat = config.index_type == "IVF_FLAT"
    refines: list[int | None] = [None] if flat else list(cal.refine_factors)
    preset = Params(config.nprobes, config.ef, config.refine_factor)
    search = _Search(table, config, search_sets, cal.k)
    deadline = time.monotonic() + cal.max_seconds
    chosen: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {}
    for kind in KINDS:
        goal = (cal.target, cal.margin)
        found = _candidates(search, kind, probes, beams, refines, goal, cal.k, deadline)
        found.sort(key=lambda c: c[1].p50_ms)
        finalists = [p for p, _ in found[:_FINALISTS]]
        if not finalists:  # nothing tried reaches the target: the best recall steps up
            tried = [(m.recall, p) for (kd, p), m in search.points.items() if kd == kind]
            finalists = [max(tried, key=lambda t: t[0])[1]]
        winner, measured, baseline = _validate(
            table, config, valid_sets[kind], finalists, preset, probes, cal
        )
        if not measured.reaches(cal.target, cal.margin) and cal.allow_exact:
            logger.warning(
                "calibration: no tried %s parameters reach recall %.2f for %s queries "
                "(best %s: %.3f): exact scan",
                config.index_type, cal.target, kind, winner, measured.recall,
            )  # fmt: skip
            winner = EXACT
            few = valid_sets[kind].subset(slice(0, min(5, len(valid_sets[kind]))))
            measured = measure(table, config, [EXACT], few, cal.k)[0]
        chosen[kind] = {
            "params": winner.as_dict(),
            "recall": measured.recall,
            "p50_ms": measured.p50_ms,
            "reached": measured.reaches(cal.target, cal.margin),
        }
        top1 = valid_sets[kind].top1
        report[kind] = {
            "params": winner.as_dict(),
            f"recall@{cal.k}": round(measured.recall, 4),
            "recall_lower_bound": round(measured.lower(cal.margin), 4),
            "p50_ms": round(measured.p50_ms, 2),
            "p95_ms": round(measured.p95_ms, 2),
            "queries": len(measured.seconds),
            "preset": preset.as_dict(),
            f"preset_recall@{cal.k}": round(baseline.recall, 4),
            "preset_p50_ms": round(baseline.p50_ms, 2),
            "top1_cosine": round(float(np.median(top1)), 4) if top1 is not None else None,
        }
        logger.info(
            "calibrated %s queries: %s, recall@%d %.3f (presets %.3f), p50 %.1f ms",
            kind, winner, cal.k, measured.recall, baseline.recall, measured.p50_ms,
        )  # fmt: skip
    measured_points = [
        {"params": p.as_dict(), "kind": kind, "recall": m.recall, "p50_ms": m.p50_ms}
        for (kind, p), m in search.points.items()
    ]
    text_source = "given" if texts is not None else (
        f"synthetic: cosine {cal.text_video_cosine} to a held-out row, "
        f"noise share {cal.text_noise_share}"
    )  # fmt: skip
    seconds = time.perf_counter() - start
    result = Calibration(
        index_type=config.index_type,
        trained_rows=trained_rows(table) or table.count_rows(),
        rows=table.count_rows(),
        k=cal.k,
        target=cal.target,
        text_queries=text_source,
        chosen=chosen,
        measured=measured_points,
        seconds=seconds,
    )
    report.update(
        target=cal.target,
        k=cal.k,
        text_queries=text_source,
        partitions=partitions,
        points_measured=len(search.points),
        ground_truth_seconds=round(truth_seconds, 1),
        seconds=round(seconds, 1),
    )
    return result, report


def _validate(
    table: Any,
    config: IndexConfig,
    queries: QuerySet,
    finalists: list[Params],
    preset: Params,
    probes: list[int],
    cal: CalibrationConfig,
) -> tuple[Params, Measurement, Measurement]:
    """The fastest finalist (or the presets) that reaches the target on fresh queries, all
    timed in turns, or among those within `_SAME_COST` of its p50 the one with the highest
    recall (a few percent of latency is within the noise of a shared machine, and recall
    is what a caller cannot see); when none reaches the target, the best one with more
    probes, up to `_STEP_UPS` steps. Returns the winner, its measurement and the presets'
    measurement."""
    tried = list(dict.fromkeys([*finalists, preset]))
    results = measure(table, config, tried, queries, cal.k)
    baseline = results[tried.index(preset)]
    passing = [(m.p50_ms, i) for i, m in enumerate(results) if m.reaches(cal.target, cal.margin)]
    if passing:
        fastest = min(passing)[0]
        close = [i for p50, i in passing if p50 <= fastest * (1 + _SAME_COST)]
        i = max(close, key=lambda j: (results[j].recall, -results[j].p50_ms))
        return tried[i], results[i], baseline
    i = max(range(len(results)), key=lambda j: results[j].recall)
    params, measured = tried[i], results[i]
    for _ in range(_STEP_UPS):
        higher = [p for p in probes if p > (params.nprobes or 0)]
        if not higher or params.exact:
            break
        params = dataclasses.replace(params, nprobes=higher[0])
        measured = measure(table, config, [params], queries, cal.k)[0]
        if measured.reaches(cal.target, cal.margin):
            break
    return params, measured, baseline
