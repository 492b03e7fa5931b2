"""Near-duplicate clips and videos: re-uploads, re-encodes, trims and crops.

Two clips are near-duplicates when the cosine similarity of their embeddings is at least
`1 - eps` (`DedupConfig.eps`, default 0.05). Groups are the connected components of that
relation (union-find), so a group may hold clips that are duplicates only through another
member. Each group has one representative chosen by a configurable rule, and the run
writes `<table>_duplicates` (`schema.duplicates_schema()`, one row per grouped clip).
`vidcat dedup` (`jobs/find_duplicates.py`) runs it; `vidcat embed --dedup` runs it after an
embedding run, under that run's lease.

**Which pairs are compared.** All pairs would cost N²/2 dot products (5e11 at 1M clips).
Instead the clips are clustered with spherical k-means (:mod:`pipeline.kmeans`: our torch
implementation, CPU or GPU; why not faiss or LanceDB's IVF centroids is in its docstring),
each clip gets its `probes` nearest centroids (default 2), and a pair is compared when both
clips have the same nearest centroid, or when one's nearest centroid is among the other's
next-nearest ones. So each clip meets the members of its own cluster *and* of its second
nearest cluster, and a duplicate pair that a cluster border splits is still found (the
planted border pairs of `tests/test_dedup.py` are missed with `probes=1`). The number of
clusters is `round(sqrt(N))`: assigning costs N*K dot products and comparing ~1.5*N²/K
for even clusters, so K ~ sqrt(N) balances them (1,000 clusters of ~1,000 clips at 1M;
the benchmark's uneven clusters compared 4.3*N²/K pairs, three quarters of them visitors).

**Tiles.** Within a cluster the members are compared in tiles of `tile` x `tile` (a
matmul of unit vectors is the cosine), the upper triangle only for member-member tiles,
and the visitors (clips whose second-nearest centroid this is) against all members. Each
tile also yields every clip's best similarity seen (its approximate nearest neighbour), and
only the rows whose maximum reaches the threshold are searched for pairs. A tile with very
many pairs (a large group) contributes a spanning forest of them, so memory stays bounded.

**Representative** (`DedupConfig.keep`): `earliest` (the clip embedded first; ties by
`clip_id`), `longest` (the clip of the longest video, measured by its clips' extent
`max(clip_end_s) - min(clip_start_s)`, then the longer clip: a trim loses to its source),
or a column of the table, `COLUMN` or `COLUMN:max` (largest value wins, e.g. a bitrate or
a width) or `COLUMN:min` (smallest wins, e.g. an upload time); nulls lose, then earliest.

**Incremental runs.** Each run saves its state under `<db>/_vidcat/<table>/dedup/`: the
centroids, and per clip its `embedded_at`, nearest centroids, nearest-neighbour similarity
and group (Parquet; `state.json` names the current files). The next run compares the
table with it: a clip whose `clip_id` and `embedded_at` are unchanged keeps its centroids;
new and re-embedded clips are assigned to the saved centroids and compared only with the
clips of the clusters they touch (by the same rule as above); groups that lost a member
(deleted or re-embedded clip) are recomputed from their remaining members; other groups
stay. With the same centroids this gives exactly the groups of a full pass. A full pass
(new centroids) runs instead when `--full` is given, when there is no state, when eps,
probes or the embedding signature changed, or when the rows added, changed and deleted
since the last full pass exceed `max_backlog` (20 %) of the rows that pass clustered:
centroids trained on old data keep working for new rows, but clusters that fill up
unevenly make the comparisons dearer and the approximation coarser. The 20 % is a
judgment, not a measurement: it keeps a nightly pass incremental for a week of 2-3 %
growth, and re-clusters before the new rows are a sizeable part of any cluster.

**Similarities.** `similarity` in the output is the cosine similarity of the clip to its
group's representative (1 for the representative itself; it may be below `1 - eps` for a
clip that joined the group through another member). Each run also records, for every clip,
its nearest-neighbour similarity among the clips it was compared with, and writes the count
of clips whose nearest neighbour is within eps for eps = 0.01..0.20 in its report
(`<db>/_vidcat/<table>/runs/<run_id>.dedup.json`) and a histogram beside it
(`<run_id>.dedup.png`, :mod:`pipeline.png`): look at it before choosing eps. In incremental
runs an unchanged clip keeps its earlier value, raised by closer new clips; a clip whose
nearest neighbour was deleted keeps the old value until the next full pass.

**Signatures.** Embeddings are comparable only within one `signature`; a run compares the
rows of the table's most common signature and reports how many others it left out.

**Video-level view** (:func:`duplicate_videos`): computed on read from the duplicates
table (its `video_clips` column holds each video's clip count), not stored: it is a cheap
self-join of a small table and its `min_fraction` stays a reader's choice.

Memory: the embeddings of the table are read whole (2 KiB per clip, 2 GiB per 1M clips),
plus one `[tile, tile]` block per comparison and `[65536, K]` per assignment chunk.

Measured (`benchmarks/dedup.py`, 1M clips with 1 % planted near-duplicates, 2 busy
shared cores): full pass 265 s (194 s of it comparing), peak RSS 4.3 GiB; incremental pass
after 1 % new rows 19 s (7.2 %; 11.5 s of it reading the embeddings); planted pairs found
0.9999 / 0.9997, precision 1.0; exact all-pairs on a 50k subset agreed pair for pair.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import schema
from .compat import retry_transient, scan_batches, sql_string
from .db import check_schema, connect, open_table, table_names
from .lifecycle import compact_and_clean
from .runs import RunFiles, new_run_id
from .storage import S3Config, filesystem_for, read_json, write_bytes, write_json
from .uris import redact_uri

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

KEEP_RULES = ("earliest", "longest")
#: eps values whose clip counts every run reports (docs/table-schema.md).
REPORT_EPS = tuple(round(0.01 * i, 2) for i in range(1, 21))
#: Histogram of nearest-neighbour similarities: equal bins over [HIST_LO, 1].
HIST_LO, HIST_BINS = 0.5, 100
STATE_DIR = "dedup"
STATE_FILE = "state.json"
STATE_FORMAT = 1
_BATCH = 65_536
#: Nearest-neighbour similarity of a clip that met no other clip (below any cosine).
NOT_COMPARED = -2.0
#: Per-tile pair count above which a tile contributes a spanning forest of its pairs.
_REDUCE_ABOVE = 1 << 16


@dataclass(frozen=True)
class DedupConfig:
    """How near-duplicates are found (module docstring).

    Attributes:
        eps: clips with cosine similarity >= 1 - eps are near-duplicates; in (0, 1).
        keep: representative rule: `earliest`, `longest`, `COLUMN`, `COLUMN:max`,
            `COLUMN:min`.
        probes: nearest centroids per clip; 1 compares within clusters only, 2 also with the
            second-nearest cluster (border pairs).
        clusters: k-means clusters; None: `round(sqrt(rows))`.
        iterations: k-means iterations.
        sample_per_cluster: k-means trains on at most this many rows per cluster.
        tile: rows per side of a comparison block.
        max_backlog: a full pass runs when rows added, changed and deleted since the last
            full pass exceed this fraction of the rows that pass clustered.
        seed: k-means seed.
        device: `auto`, `cpu` or `cuda` for k-means and the comparisons.
        workers: comparison threads on CPU (default: torch's thread count; `PairFinder`).
        retention: versions of the duplicates table older than this are deleted.
    """

    eps: float = 0.05
    keep: str = "earliest"
    probes: int = 2
    clusters: int | None = None
    iterations: int = 10
    sample_per_cluster: int = 64
    tile: int = 4096
    max_backlog: float = 0.2
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    retention: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        if self.probes < 1 or self.iterations < 0 or self.sample_per_cluster < 1:
            raise ValueError("probes and sample_per_cluster must be >= 1, iterations >= 0")
        if self.clusters is not None and self.clusters < 1:
            raise ValueError("clusters must be >= 1")
        if self.tile < 2 or self.max_backlog < 0:
            raise ValueError("tile must be >= 2 and max_backlog >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        self.keep_rule()  # validates

    @property
    def threshold(self) -> float:
        return 1.0 - self.eps

    def keep_rule(self) -> tuple[str, str | None, bool]:
        """`(rule, column, largest_wins)`: rule is `earliest`, `longest` or `column`."""
        if self.keep in KEEP_RULES:
            return self.keep, None, True
        name, _, order = self.keep.partition(":")
        if not name or order not in ("", "max", "min"):
            raise ValueError(
                f"keep must be earliest, longest, COLUMN, COLUMN:max or COLUMN:min, "
                f"got {self.keep!r}"
            )
        return "column", name, order != "min"

    def num_clusters(self, rows: int) -> int:
        wanted = self.clusters or round(math.sqrt(rows))
        return max(1, min(rows, wanted))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "retention": self.retention.total_seconds()}


# ---- connected components ------------------------------------------------------------


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the graph on `n` nodes with edges `a[i] -- b[i]`.

    Vectorized union-find: hook each edge's larger root onto its smaller one, then
    compress paths, until every edge lies inside one component.

    Returns:
        `[n]` int64: each node's component, named by its smallest node.
    """
    parent = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    while len(a):
        ra, rb = parent[a], parent[b]
        if np.array_equal(ra, rb):
            break
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:  # path compression until every node points at its root
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    return parent


def _spanning(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges with the components of `a -- b` but at most one per node (node -- root)."""
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    roots = components(len(nodes), inverse[: len(a)], inverse[len(a) :])
    keep = roots != np.arange(len(nodes))
    return nodes[keep], nodes[roots[keep]]


# ---- the pair search ---------------------------------------------------------------------


class PairFinder:
    """Compares clips in tiles and collects the pairs at or above the threshold.

    Args:
        x: `[N, D]` float32 unit embeddings (not copied).
        threshold: cosine similarity a pair needs (1 - eps).
        tile: rows per side of a comparison block.
        device: where the blocks are multiplied.
        nn: `[N]` best similarity seen per clip so far (updated in place); None: all
            :data:`NOT_COMPARED`.
        workers: comparisons run at once on CPU (threads, each with one torch thread:
            on a shared 2-core machine, waking torch's thread pool for every block of a
            ~1k-row cluster cost more than the block itself); default: torch's thread
            count.
    """

    def __init__(
        self,
        x: np.ndarray,
        threshold: float,
        tile: int = 4096,
        device: str = "cpu",
        nn: np.ndarray | None = None,
        workers: int | None = None,
    ) -> None:
        import torch

        from .kmeans import resolve_device

        self.x, self.threshold, self.tile = x, float(threshold), tile
        self.device = resolve_device(device)
        self.nn = np.full(len(x), NOT_COMPARED, np.float32) if nn is None else nn
        self.compared = 0
        cpu = self.device.type == "cpu"
        # torch's own thread count: it honours OMP_NUM_THREADS (os.cpu_count() would count
        # the host's cores, not a container's share).
        self.workers = max(1, workers or torch.get_num_threads()) if cpu else 1
        self._lock = threading.Lock()
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []
        self._tril = torch.ones(tile, tile, dtype=torch.bool, device=self.device).tril()

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """All pairs found so far, `(a [E], b [E])` row indices (a spanning subset of a
        tile's pairs when it had very many)."""
        if not self._a:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self._a), np.concatenate(self._b)

    def _rows(self, rows: np.ndarray) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.x[rows]).to(self.device)

    def compare(self, rows_a: np.ndarray, rows_b: np.ndarray | None = None) -> None:
        """Compare `rows_a` with `rows_b`, or every pair within `rows_a` (upper triangle)
        when `rows_b` is None. The two sets must not overlap."""
        import torch

        same = rows_b is None
        rows_b = rows_a if same else rows_b
        if not len(rows_a) or not len(rows_b) or (same and len(rows_a) < 2):
            return
        xb_all = self._rows(rows_b)
        xa_all = xb_all if same else self._rows(rows_a)
        t = self.tile
        for i in range(0, len(rows_a), t):
            xa, ia = xa_all[i : i + t], rows_a[i : i + t]
            for j in range(i if same else 0, len(rows_b), t):
                xb, ib = xb_all[j : j + t], rows_b[j : j + t]
                s = xa @ xb.T
                if same and i == j:  # the diagonal block: strictly upper triangle
                    s.masked_fill_(self._tril[: len(xa), : len(xb)], NOT_COMPARED - 1)
                    pairs = len(xa) * (len(xa) - 1) // 2
                else:
                    pairs = len(xa) * len(xb)
                row_max = s.max(dim=1).values
                col_max = s.max(dim=0).values.cpu().numpy()
                hit = torch.nonzero(row_max >= self.threshold).flatten()
                a = b = None
                if len(hit):
                    r, c = torch.nonzero(s[hit] >= self.threshold, as_tuple=True)
                    a, b = ia[hit[r].cpu().numpy()], ib[c.cpu().numpy()]
                    if len(a) > _REDUCE_ABOVE:
                        a, b = _spanning(a, b)
                row_max = row_max.cpu().numpy()
                with self._lock:  # visitors of one cluster are members of another
                    self.compared += pairs
                    self.nn[ia] = np.maximum(self.nn[ia], row_max)
                    self.nn[ib] = np.maximum(self.nn[ib], col_max)
                    if a is not None:
                        self._a.append(a)
                        self._b.append(b)

    def run(self, tasks: list[Callable[[], None]]) -> None:
        """Run comparison tasks, `workers` at a time on CPU (one torch thread each)."""
        if self.workers == 1 or len(tasks) < 2:
            for task in tasks:
                task()
            return
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(self.workers) as pool:
                for _ in pool.map(lambda task: task(), tasks):
                    pass
        finally:
            torch.set_num_threads(threads)


def _buckets(keys: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` sorted by `keys` and the `[k + 1]` bounds of each key's run."""
    order = np.argsort(keys, kind="stable")
    return rows[order], np.searchsorted(keys[order], np.arange(k + 1))


def find_pairs(
    finder: PairFinder,
    labels: np.ndarray,
    rows: np.ndarray | None = None,
    new: np.ndarray | None = None,
) -> None:
    """Compare every candidate pair among `rows` (module docstring: same nearest centroid,
    or one's nearest centroid among the other's next ones); with `new`, only the pairs with
    at least one new clip.

    Args:
        finder: collects the pairs and nearest-neighbour similarities.
        labels: `[N, probes]` nearest centroids of every clip, nearest first.
        rows: clips to consider (default: all).
        new: `[N]` bool; when given, pairs of two clips that are not new are skipped.
    """
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows, np.int64)
    if not len(rows):
        return
    k = int(labels.max()) + 1
    members, m_bounds = _buckets(labels[rows, 0], rows, k)
    visit_rows = np.tile(rows, labels.shape[1] - 1)
    visit_keys = labels[rows, 1:].T.reshape(-1)
    visitors, v_bounds = _buckets(visit_keys, visit_rows, k)
    tasks: list[tuple[int, Callable[[], None]]] = []

    def cluster_task(m: np.ndarray, v: np.ndarray) -> Callable[[], None]:
        if new is None:
            return lambda: (finder.compare(m), finder.compare(v, m))
        m_new, v_new = new[m], new[v]
        mn, mo, vn, vo = m[m_new], m[~m_new], v[v_new], v[~v_new]
        return lambda: (
            finder.compare(mn),
            finder.compare(mn, mo),
            finder.compare(vn, m),
            finder.compare(vo, mn),
        )

    for c in range(k):
        m = members[m_bounds[c] : m_bounds[c + 1]]
        v = visitors[v_bounds[c] : v_bounds[c + 1]]
        if new is not None and not new[m].any() and not new[v].any():
            continue
        if len(m):
            tasks.append((len(m) * (len(m) + len(v)), cluster_task(m, v)))
    # The biggest clusters first, so that no worker is left with one at the end.
    tasks.sort(key=lambda sized: sized[0], reverse=True)
    finder.run([task for _, task in tasks])


# ---- reading the catalog -----------------------------------------------------------------


@dataclass
class Catalog:
    """The rows a pass works on: one signature's clips, their metadata and embeddings."""

    meta: pa.Table  # clip_id, video_id, embedded_at, clip_start_s, clip_end_s[, keep column]
    x: np.ndarray  # [N, 512] float32
    signature: str | None
    other_signature_rows: int


def read_catalog(table, keep_column: str | None = None) -> Catalog:
    """Read the clips of the table's most common signature (metadata and embeddings).

    Raises:
        ValueError: `keep_column` is not a column of the table (or is the embedding).
    """
    names = table.schema.names
    if keep_column is not None and (keep_column not in names or keep_column == schema.EMBEDDING):
        raise ValueError(f"--keep column {keep_column!r} is not a column of the table")
    sigs = table.search().select([schema.SIGNATURE]).limit(None).to_arrow()[schema.SIGNATURE]
    counts = pa.table({"s": sigs}).group_by("s").aggregate([("s", "count")])
    signature, rows, other = None, 0, 0
    if len(counts):
        pairs = sorted(zip(counts["s_count"].to_pylist(), counts["s"].to_pylist(), strict=True))
        rows, signature = pairs[-1]
        other = len(sigs) - rows
    base = [schema.CLIP_ID, schema.VIDEO_ID, schema.EMBEDDED_AT, schema.CLIP_START_S,
            schema.CLIP_END_S]  # fmt: skip
    columns = list(dict.fromkeys([*base, *([keep_column] if keep_column else [])]))
    where = f"{schema.SIGNATURE} = {sql_string(signature)}" if other else None
    x = np.empty((rows, schema.EMBED_DIM), np.float32)
    metas, pos = [], 0
    for batch in scan_batches(table, [*columns, schema.EMBEDDING], where, _BATCH):
        n = len(batch)
        if pos + n > len(x):  # rows arrived since the count (a writer without the lease)
            x = np.concatenate([x, np.empty((pos + n - len(x), schema.EMBED_DIM), np.float32)])
        emb = batch.column(schema.EMBEDDING).flatten().to_numpy(zero_copy_only=False)
        x[pos : pos + n] = emb.reshape(n, schema.EMBED_DIM)
        # A copy: the scanner's metadata arrays share buffers with its embeddings (kept
        # as they were, 1M rows held 4.5 GiB instead of 3 GiB).
        metas.append(batch.select(columns).take(pa.array(np.arange(n))))
        pos += n
    if metas:
        meta = pa.Table.from_batches(metas)
    else:
        meta = pa.schema([table.schema.field(c) for c in columns]).empty_table()
    return Catalog(meta, x[:pos], signature, other)


# ---- saved state ---------------------------------------------------------------------------


@dataclass
class State:
    """What a pass leaves for the next one (module docstring, "Incremental runs")."""

    info: dict[str, Any]
    centroids: np.ndarray  # [K, D]
    clips: pa.Table  # clip_id, embedded_at, labels [probes], nn, group_id (null: none)


def state_dir(db_uri: str, table: str, s3: S3Config | None = None) -> str:
    """`<db>/_vidcat/<table>/dedup`: where the saved centroids and assignments live."""
    return f"{RunFiles(db_uri, table, s3).table_dir}/{STATE_DIR}"


def read_state(db_uri: str, table: str, s3: S3Config | None = None) -> State | None:
    """The state the last pass saved, None when there is none."""
    s3 = s3 or S3Config()
    root = state_dir(db_uri, table, s3)
    try:
        info = read_json(f"{root}/{STATE_FILE}", s3)
    except FileNotFoundError:
        return None
    if info.get("format") != STATE_FORMAT:
        logger.warning("dedup state format %r is not %d: ignored", info.get("format"), STATE_FORMAT)
        return None
    try:
        fs, path = filesystem_for(f"{root}/{info['generation']}", s3)
        centroids = pq.read_table(f"{path}/centroids.parquet", filesystem=fs)["centroid"]
        k = len(centroids)
        flat = centroids.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        clips = pq.read_table(f"{path}/clips.parquet", filesystem=fs)
    except (OSError, KeyError, ValueError) as exc:  # pyarrow's errors are OSError/ValueError
        logger.warning("dedup state under %s unreadable (%s): a full pass", redact_uri(root), exc)
        return None
    return State(info, np.ascontiguousarray(flat.reshape(k, -1), np.float32), clips)


def _write_state(db_uri: str, table: str, s3: S3Config, state: State) -> str:
    """Write the state's files under a new generation, then point `state.json` at it (one
    atomic write), then remove older generations. Returns the state.json URI."""
    root = state_dir(db_uri, table, s3)
    generation = state.info["generation"]
    fs, path = filesystem_for(f"{root}/{generation}", s3)
    fs.create_dir(path, recursive=True)
    centroids = pa.table({"centroid": schema.fixed_size_list(state.centroids)})
    pq.write_table(centroids, f"{path}/centroids.parquet", filesystem=fs)
    pq.write_table(state.clips, f"{path}/clips.parquet", filesystem=fs)
    write_json(f"{root}/{STATE_FILE}", state.info, s3)
    from pyarrow import fs as pafs

    _, root_path = filesystem_for(root, s3)
    for info in fs.get_file_info(pafs.FileSelector(root_path, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name != generation:
            fs.delete_dir(info.path)
    return f"{root}/{STATE_FILE}"


# ---- one pass --------------------------------------------------------------------------------


def _representatives(cat: Catalog, rows: np.ndarray, comp: np.ndarray, cfg: DedupConfig):
    """The representative row of each group: `{component: row}` as two aligned arrays."""
    rule, column, largest = cfg.keep_rule()
    meta = cat.meta.take(pa.array(rows))
    keys: dict[str, Any] = {"comp": comp[rows]}
    order: list[tuple[str, str]] = [("comp", "ascending")]
    if rule == "longest":
        per_video = cat.meta.group_by(schema.VIDEO_ID).aggregate(
            [(schema.CLIP_START_S, "min"), (schema.CLIP_END_S, "max")]
        )
        extent = pc.subtract(per_video[f"{schema.CLIP_END_S}_max"],
                             per_video[f"{schema.CLIP_START_S}_min"])  # fmt: skip
        idx = pc.index_in(meta[schema.VIDEO_ID], per_video[schema.VIDEO_ID])
        keys["video_len"] = pc.take(extent, idx)
        keys["clip_len"] = pc.subtract(meta[schema.CLIP_END_S], meta[schema.CLIP_START_S])
        order += [("video_len", "descending"), ("clip_len", "descending")]
    elif rule == "column":
        keys["value"] = meta[column]
        order.append(("value", "descending" if largest else "ascending"))
    keys["at"] = meta[schema.EMBEDDED_AT]
    keys["clip"] = meta[schema.CLIP_ID]
    keys["row"] = rows
    order += [("at", "ascending"), ("clip", "ascending")]
    ranked = pa.table(keys)
    keys_3 = [(name, direction, "at_end") for name, direction in order]  # nulls lose
    ranked = ranked.take(pc.sort_indices(ranked, sort_keys=keys_3))
    comps = ranked["comp"].to_numpy()
    first = np.ones(len(comps), bool)
    first[1:] = comps[1:] != comps[:-1]
    return comps[first], ranked["row"].to_numpy()[first]


def _groups_table(cat: Catalog, comp: np.ndarray, cfg: DedupConfig, run_id: str) -> pa.Table:
    """The duplicates table's rows for the components `comp` `[N]` of the catalog."""
    sizes = np.bincount(comp, minlength=len(comp))
    rows = np.flatnonzero(sizes[comp] >= 2)
    if not len(rows):
        return schema.duplicates_schema().empty_table()
    rep_comp, rep_row = _representatives(cat, rows, comp, cfg)
    rep_of = np.full(len(comp), -1, np.int64)
    rep_of[rep_comp] = rep_row
    reps = rep_of[comp[rows]]
    sim = np.einsum("nd,nd->n", cat.x[rows], cat.x[reps]).astype(np.float32)
    sim[rows == reps] = 1.0
    clip_ids = cat.meta[schema.CLIP_ID].take(pa.array(rows))
    video_ids = cat.meta[schema.VIDEO_ID].take(pa.array(rows))
    # group_id: the group's smallest clip_id (the same in full and incremental passes)
    named = pa.table({"comp": comp[rows], "clip": clip_ids})
    first = named.group_by("comp").aggregate([("clip", "min")])
    gid = pc.take(first["clip_min"], pc.index_in(named["comp"], first["comp"]))
    per_video = cat.meta.group_by(schema.VIDEO_ID).aggregate([(schema.CLIP_ID, "count")])
    clips = pc.take(per_video[f"{schema.CLIP_ID}_count"],
                    pc.index_in(video_ids, per_video[schema.VIDEO_ID]))  # fmt: skip
    out = pa.table(
        {
            schema.CLIP_ID: clip_ids,
            schema.VIDEO_ID: video_ids,
            schema.EMBEDDED_AT: cat.meta[schema.EMBEDDED_AT].take(pa.array(rows)),
            schema.GROUP_ID: gid,
            schema.GROUP_SIZE: pa.array(sizes[comp[rows]], pa.int32()),
            schema.REPRESENTATIVE_CLIP_ID: cat.meta[schema.CLIP_ID].take(pa.array(reps)),
            schema.SIMILARITY: pa.array(sim, pa.float32()),
            schema.VIDEO_CLIPS: pc.cast(clips, pa.int32()),
            schema.RUN_ID: pa.array([run_id] * len(rows), pa.string()),
        }
    )
    out = out.sort_by([(schema.GROUP_ID, "ascending"), (schema.CLIP_ID, "ascending")])
    return out.cast(schema.duplicates_schema())


@dataclass
class _Pass:
    """What one pass computed, before anything is written."""

    mode: str
    reason: str
    centroids: np.ndarray
    labels: np.ndarray  # [N, probes] int32
    comp: np.ndarray  # [N] component of each row
    nn: np.ndarray  # [N] nearest-neighbour similarity
    counts: dict[str, int]
    compared: int
    seconds: dict[str, float]
    rows_at_full: int
    backlog: int
    full_run_id: str


def _chain(groups: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges linking the rows of each group into a chain (keeps groups as they were)."""
    order = np.argsort(groups, kind="stable")
    g, r = groups[order], rows[order]
    same = g[1:] == g[:-1]
    return r[:-1][same], r[1:][same]


def _full(cat: Catalog, cfg: DedupConfig, reason: str, run_id: str) -> _Pass:
    from .kmeans import nearest_centroids, spherical_kmeans

    seconds: dict[str, float] = {}
    n = len(cat.x)
    t = time.perf_counter()
    k = cfg.num_clusters(n) if n else 1
    if n:
        centroids = spherical_kmeans(
            cat.x,
            k,
            iterations=cfg.iterations,
            sample_per_cluster=cfg.sample_per_cluster,
            seed=cfg.seed,
            device=cfg.device,
        )
    else:
        centroids = np.zeros((0, schema.EMBED_DIM), np.float32)
    seconds["cluster"] = time.perf_counter() - t
    t = time.perf_counter()
    probes = min(cfg.probes, max(len(centroids), 1))
    labels, _ = (
        nearest_centroids(cat.x, centroids, probes, cfg.device)
        if n
        else (np.zeros((0, probes), np.int32), None)
    )
    seconds["assign"] = time.perf_counter() - t
    t = time.perf_counter()
    finder = PairFinder(cat.x, cfg.threshold, cfg.tile, cfg.device, workers=cfg.workers)
    find_pairs(finder, labels)
    seconds["compare"] = time.perf_counter() - t
    t = time.perf_counter()
    comp = components(n, *finder.edges())
    seconds["groups"] = time.perf_counter() - t
    counts = {"rows": n, "new": n, "changed": 0, "deleted": 0, "unchanged": 0}
    return _Pass("full", reason, centroids, labels, comp, finder.nn, counts, finder.compared,
                 seconds, n, 0, run_id)  # fmt: skip


def _diff(cat: Catalog, state: State) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(pos, unchanged, gone)`: each row's index in the state's clips (-1: none), whether
    it is unchanged there (same `clip_id` and `embedded_at`), and the state rows that no
    unchanged row matches (deleted or re-embedded clips)."""
    idx = pc.index_in(cat.meta[schema.CLIP_ID], state.clips[schema.CLIP_ID])
    pos = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    found = pos >= 0
    unchanged = np.zeros(len(pos), bool)
    if found.any():
        then = state.clips[schema.EMBEDDED_AT].take(pa.array(pos[found]))
        now = cat.meta[schema.EMBEDDED_AT].filter(pa.array(found))
        unchanged[found] = pc.equal(then, now).to_numpy(zero_copy_only=False)
    kept = np.zeros(len(state.clips), bool)
    kept[pos[unchanged]] = True
    return pos, unchanged, ~kept


def _incremental(cat: Catalog, cfg: DedupConfig, state: State, diff, reason: str) -> _Pass:
    from .kmeans import nearest_centroids

    pos, unchanged, gone = diff
    seconds: dict[str, float] = {}
    n, centroids = len(cat.x), state.centroids
    probes = state.clips.schema.field("labels").type.list_size
    new = ~unchanged
    t = time.perf_counter()
    labels = np.empty((n, probes), np.int32)
    nn = np.full(n, NOT_COMPARED, np.float32)
    old_labels = state.clips["labels"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    old_labels = old_labels.reshape(len(state.clips), probes)
    labels[unchanged] = old_labels[pos[unchanged]]
    nn[unchanged] = state.clips["nn"].to_numpy(zero_copy_only=False)[pos[unchanged]]
    if new.any():
        labels[new], _ = nearest_centroids(cat.x[new], centroids, probes, cfg.device)
    seconds["assign"] = time.perf_counter() - t

    t = time.perf_counter()
    finder = PairFinder(cat.x, cfg.threshold, cfg.tile, cfg.device, nn=nn, workers=cfg.workers)
    # Groups of the last pass, on this pass's rows; those that lost a member are redone.
    group_codes = pc.dictionary_encode(state.clips[schema.GROUP_ID]).combine_chunks()
    codes = pc.fill_null(group_codes.indices, -1).to_numpy(zero_copy_only=False)
    valid = codes >= 0
    affected = np.zeros(len(group_codes.dictionary) + 1, bool)
    affected[codes[gone & valid]] = True
    row_code = np.full(n, -1, np.int64)
    old = np.flatnonzero(unchanged)
    has = valid[pos[old]]
    row_code[old[has]] = codes[pos[old[has]]]
    grouped = row_code >= 0
    redo = grouped & affected[np.where(grouped, row_code, len(affected) - 1)]
    keep = grouped & ~redo
    find_pairs(finder, labels, rows=np.flatnonzero(redo))
    find_pairs(finder, labels, new=new)
    seconds["compare"] = time.perf_counter() - t

    t = time.perf_counter()
    a, b = finder.edges()
    ca, cb = _chain(row_code[keep], np.flatnonzero(keep))
    comp = components(n, np.concatenate([a, ca]), np.concatenate([b, cb]))
    seconds["groups"] = time.perf_counter() - t
    changed = int((new & (pos >= 0)).sum())
    counts = {
        "rows": n,
        "new": int(new.sum()) - changed,
        "changed": changed,
        "deleted": int(gone.sum()) - changed,
        "unchanged": int(unchanged.sum()),
        "groups_redone": int(affected.sum()),
    }
    backlog = state.info["backlog"] + counts["new"] + counts["changed"] + counts["deleted"]
    return _Pass("incremental", reason, centroids, labels, comp, nn, counts, finder.compared,
                 seconds, state.info["rows_at_full"], backlog,
                 state.info["full_run_id"])  # fmt: skip


def _plan(cat: Catalog, cfg: DedupConfig, state: State | None, full: bool):
    """`(mode, reason, diff)`: whether this pass can be incremental, and why not."""
    if full:
        return "full", "requested", None
    if state is None:
        return "full", "no saved state", None
    info = state.info
    for what, now in (("eps", cfg.eps), ("probes", cfg.probes), ("signature", cat.signature)):
        if info.get(what) != now:
            return "full", f"{what} changed ({info.get(what)!r} -> {now!r})", None
    if state.centroids.shape[1:] != cat.x.shape[1:] or not len(state.centroids):
        return "full", "no usable centroids", None
    diff = _diff(cat, state)
    pos, unchanged, gone = diff
    pending = int((~unchanged).sum() + gone.sum() - ((~unchanged) & (pos >= 0)).sum())
    backlog = info["backlog"] + pending
    bound = cfg.max_backlog * max(info["rows_at_full"], 1)
    if backlog > bound:
        at_full = info["rows_at_full"]
        return "full", f"backlog {backlog} rows > {cfg.max_backlog:g} x {at_full}", None
    return "incremental", f"backlog {backlog} rows <= {bound:.0f}", diff


def nn_summary(nn: np.ndarray, eps: float) -> dict[str, Any]:
    """Counts of clips by nearest-neighbour similarity (the report's `nn_similarity`)."""
    seen = nn[nn >= -1.0]
    counts, _ = np.histogram(seen, bins=HIST_BINS, range=(HIST_LO, 1.0 + 1e-6))
    return {
        "clips_with_neighbour_within_eps": {
            f"{e:.2f}": int((seen >= 1.0 - e).sum()) for e in REPORT_EPS
        },
        "threshold": 1.0 - eps,
        "histogram": {
            "lo": HIST_LO,
            "hi": 1.0,
            "counts": counts.tolist(),
            "below_lo": int((seen < HIST_LO).sum()),
        },
        "compared_clips": len(seen),
    }


def _write_duplicates(
    db_uri: str, table: str, rows: pa.Table, options: Mapping[str, str] | None, retention
) -> int:
    """Replace the duplicates table's rows (a new version; create it if needed); older
    versions past `retention` are deleted, never a tagged one. Returns the table version."""
    name = schema.duplicates_table_name(table)
    db = connect(db_uri, options)
    if name in table_names(db):
        handle = db.open_table(name)
        check_schema(handle, schema.duplicates_schema(), f"{name!r} in {redact_uri(db_uri)}")
        retry_transient(lambda: handle.add(rows, mode="overwrite"), f"write {name}")
    else:
        handle = retry_transient(
            lambda: db.create_table(name, rows, schema=schema.duplicates_schema(), exist_ok=True),
            f"create {name}",
        )
    # Tag-aware: maintenance tags this table with every refresh, and Lance refuses a
    # cleanup that reaches a tagged version (pipeline.compat, entry 3).
    compact_and_clean(handle, retention)
    return handle.version


def run_dedup(
    db_uri: str,
    table: str = "videos",
    config: DedupConfig | None = None,
    *,
    s3: S3Config | None = None,
    full: bool = False,
    guard: Callable[[], None] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Find the near-duplicates of a table and write `<table>_duplicates`, the state for
    the next pass, and the run report with its histogram.

    The caller holds the table's lease (:class:`pipeline.lease.Lease`); `guard` (its
    `check`) is called before each write, so a writer that lost its lease writes nothing
    more.

    Args:
        db_uri: LanceDB directory or `s3://` prefix.
        table: the embeddings table.
        config: eps, representative rule, clustering.
        s3: endpoint settings for a database on S3.
        full: re-cluster even when an incremental pass would do.
        guard: raises when the lease is lost.
        run_id: the report's name (default: a new `...-dedup` id).

    Returns:
        The run report (docs/table-schema.md, "Near-duplicates run report").

    Raises:
        DatabaseNotFound, StoreError, SchemaVersionError: the table cannot be read.
        ValueError: `--keep` names no column of the table.
    """
    config = config or DedupConfig()
    s3 = s3 or S3Config()
    guard = guard or (lambda: None)
    run_id = run_id or new_run_id("dedup")
    options = s3.storage_options()
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    handle = open_table(db_uri, table, options)
    cat = read_catalog(handle, config.keep_rule()[1])
    read_s = time.perf_counter() - t0
    state = read_state(db_uri, table, s3)
    mode, reason, diff = _plan(cat, config, state, full)
    logger.info("dedup %s of %s: %d clips, %s pass (%s)", run_id, table, len(cat.x), mode, reason)
    if mode == "full":
        done = _full(cat, config, reason, run_id)
    else:
        done = _incremental(cat, config, state, diff, reason)
    t = time.perf_counter()
    rows = _groups_table(cat, done.comp, config, run_id)
    groups_s = time.perf_counter() - t

    t = time.perf_counter()
    guard()
    version = _write_duplicates(db_uri, table, rows, options, config.retention)
    grouped = pc.is_in(cat.meta[schema.CLIP_ID], rows[schema.CLIP_ID])
    where = pc.index_in(cat.meta[schema.CLIP_ID], rows[schema.CLIP_ID])
    gid = pc.take(rows[schema.GROUP_ID], where)
    probes = done.labels.shape[1]
    clips = pa.table(
        {
            schema.CLIP_ID: cat.meta[schema.CLIP_ID],
            schema.EMBEDDED_AT: cat.meta[schema.EMBEDDED_AT],
            "labels": pa.FixedSizeListArray.from_arrays(
                pa.array(done.labels.reshape(-1).astype(np.int32)), probes
            ),
            "nn": pa.array(done.nn, pa.float32()),
            schema.GROUP_ID: pc.if_else(grouped, gid, pa.scalar(None, pa.string())),
        }
    )
    info = {
        "format": STATE_FORMAT,
        "generation": run_id,
        "eps": config.eps,
        "probes": config.probes,
        "signature": cat.signature,
        "clusters": len(done.centroids),
        "rows_at_full": done.rows_at_full,
        "backlog": done.backlog,
        "full_run_id": done.full_run_id,
        "updated_at": datetime.now(UTC).isoformat(),
    }
    guard()
    state_uri = _write_state(db_uri, table, s3, State(info, done.centroids, clips))
    write_s = time.perf_counter() - t

    runs = RunFiles(db_uri, table, s3)
    report_uri = f"{runs.runs_dir}/{run_id}.dedup.json"
    png_uri = f"{runs.runs_dir}/{run_id}.dedup.png"
    nn = nn_summary(done.nn, config.eps)
    from .png import histogram_png

    guard()
    write_bytes(
        png_uri,
        histogram_png(np.asarray(nn["histogram"]["counts"]), HIST_LO, 1.0, config.threshold),
        s3,
    )
    groups = len(pc.unique(rows[schema.GROUP_ID])) if len(rows) else 0
    report = {
        "run_id": run_id,
        "table": table,
        "duplicates_table": schema.duplicates_table_name(table),
        "duplicates_version": version,
        "mode": done.mode,
        "reason": done.reason,
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "config": config.to_dict(),
        "signature": cat.signature,
        "rows_other_signature": cat.other_signature_rows,
        "counts": {
            **done.counts,
            "clusters": len(done.centroids),
            "pairs_compared": done.compared,
            "groups": groups,
            "clips_in_groups": len(rows),
            "duplicate_clips": len(rows) - groups,
            "video_pairs": len(duplicate_videos(rows)),
        },
        "backlog": {
            "rows": done.backlog,
            "rows_at_full": done.rows_at_full,
            "bound": config.max_backlog * done.rows_at_full,
            "full_run_id": done.full_run_id,
        },
        "nn_similarity": nn,
        "seconds": {
            "read": read_s,
            **done.seconds,
            "representatives": groups_s,
            "write": write_s,
            "wall": time.perf_counter() - t0,
        },
        "state_uri": state_uri,
        "histogram_uri": png_uri,
    }
    write_json(report_uri, report, s3)
    report["report_uri"] = report_uri
    logger.info(
        "dedup %s: %d groups, %d clips in groups, %d video pairs, %.1f s",
        run_id,
        groups,
        len(rows),
        report["counts"]["video_pairs"],
        report["seconds"]["wall"],
    )
    return report


# ---- reading the results ---------------------------------------------------------------------

VIDEO_PAIR_COLUMNS = (
    "video_id_a", "video_id_b", "clips_a", "clips_b", "matched_a", "matched_b",
    "fraction_a", "fraction_b", "shared_groups", "relation",
)  # fmt: skip


def duplicate_videos(
    duplicates: pa.Table, min_fraction: float = 0.5, max_group_videos: int = 1000
) -> pa.Table:
    """Pairs of videos most of whose clips fall in the same groups.

    For videos A and B, `matched_a` counts A's clips that share a group with a clip of B
    (`fraction_a = matched_a / clips_a`, A's clip count from `video_clips`). A pair is
    listed when `max(fraction_a, fraction_b) >= min_fraction`: `relation` is `same` when
    both fractions reach it (a re-upload or re-encode), `contained` when only one does (a
    trim: most of the shorter video is in the longer one). Groups spanning more than
    `max_group_videos` videos (a logo or a black screen shared by half the catalog) are left
    out of this view; they stay in the duplicates table.

    Args:
        duplicates: rows of `<table>_duplicates` (clip_id, video_id, group_id, video_clips).

    Returns:
        :data:`VIDEO_PAIR_COLUMNS`, `video_id_a < video_id_b`, best matched first.
    """
    d = duplicates.select([schema.CLIP_ID, schema.VIDEO_ID, schema.GROUP_ID, schema.VIDEO_CLIPS])
    spread = d.group_by(schema.GROUP_ID).aggregate([(schema.VIDEO_ID, "count_distinct")])
    wide = spread.filter(pc.greater(spread[f"{schema.VIDEO_ID}_count_distinct"], max_group_videos))
    if len(wide):
        d = d.filter(pc.invert(pc.is_in(d[schema.GROUP_ID], wide[schema.GROUP_ID])))
    other = d.select([schema.GROUP_ID, schema.VIDEO_ID]).rename_columns([schema.GROUP_ID, "other"])
    joined = d.join(other, schema.GROUP_ID, join_type="inner")
    joined = joined.filter(pc.not_equal(joined[schema.VIDEO_ID], joined["other"]))
    per = joined.group_by([schema.VIDEO_ID, "other"]).aggregate(
        [
            (schema.CLIP_ID, "count_distinct"),
            (schema.GROUP_ID, "count_distinct"),
            (schema.VIDEO_CLIPS, "max"),
        ]
    )
    per = pa.table(
        {
            "video": per[schema.VIDEO_ID],
            "other": per["other"],
            "matched": per[f"{schema.CLIP_ID}_count_distinct"],
            "shared": per[f"{schema.GROUP_ID}_count_distinct"],
            "clips": per[f"{schema.VIDEO_CLIPS}_max"],
        }
    )
    a = per.filter(pc.less(per["video"], per["other"]))
    b = per.filter(pc.greater(per["video"], per["other"])).select(
        ["video", "other", "matched", "clips"]
    )
    b = b.rename_columns(["other", "video", "matched_b", "clips_b"])
    pairs = a.join(b, ["video", "other"], join_type="inner")
    fa = pc.divide(pc.cast(pairs["matched"], pa.float64()), pc.cast(pairs["clips"], pa.float64()))
    fb = pc.divide(pc.cast(pairs["matched_b"], pa.float64()),
                   pc.cast(pairs["clips_b"], pa.float64()))  # fmt: skip
    lo, hi = pc.min_element_wise(fa, fb), pc.max_element_wise(fa, fb)
    relation = pc.if_else(pc.greater_equal(lo, min_fraction), "same", "contained")
    out = pa.table(
        {
            "video_id_a": pairs["video"],
            "video_id_b": pairs["other"],
            "clips_a": pc.cast(pairs["clips"], pa.int32()),
            "clips_b": pc.cast(pairs["clips_b"], pa.int32()),
            "matched_a": pc.cast(pairs["matched"], pa.int32()),
            "matched_b": pc.cast(pairs["matched_b"], pa.int32()),
            "fraction_a": fa,
            "fraction_b": fb,
            "shared_groups": pc.cast(pairs["shared"], pa.int32()),
            "relation": relation,
            "_lo": lo,
            "_hi": hi,
        }
    )
    out = out.filter(pc.greater_equal(out["_hi"], min_fraction))
    out = out.sort_by([("_lo", "descending"), ("_hi", "descending"),
                       ("video_id_a", "ascending"), ("video_id_b", "ascending")])  # fmt: skip
    return out.select(list(VIDEO_PAIR_COLUMNS))


def read_duplicates(
    db_uri: str, table: str = "videos", storage_options: Mapping[str, str] | None = None
) -> pa.Table:
    """The rows of `<table>_duplicates` (raises `DatabaseNotFound` before a first run)."""
    handle = open_table(db_uri, schema.duplicates_table_name(table), storage_options)
    return handle.search().limit(None).to_arrow()


def read_duplicate_videos(
    db_uri: str,
    table: str = "videos",
    storage_options: Mapping[str, str] | None = None,
    min_fraction: float = 0.5,
) -> pa.Table:
    """:func:`duplicate_videos` of the table's latest dedup run."""
    return duplicate_videos(read_duplicates(db_uri, table, storage_options), min_fraction)


def collapse_groups(rows: pa.Table, groups: pa.Table, k: int) -> pa.Table:
    """Search results with one row per group: the first (best) row of each, with
    `group_size` (1 for a clip in no group), at most `k` rows.

    A result is in its group only when its `embedded_at` is the one the dedup run saw: a
    clip re-embedded since (or restored to an older embedding by a rollback) may no longer
    look like its old group, so it stands alone until the next run. A clip deleted since
    is never a result; it still counts in its group's `group_size` (the size at the run).

    Args:
        rows: results, best first, with `clip_id` and `embedded_at`.
        groups: `clip_id`, `embedded_at`, `group_id`, `group_size` of the duplicates table.
    """
    idx = pc.index_in(rows[schema.CLIP_ID], groups[schema.CLIP_ID])
    then = pc.take(groups[schema.EMBEDDED_AT], idx)
    found = pc.fill_null(pc.equal(then, rows[schema.EMBEDDED_AT]), False)
    # A clip in no group is its own group. Its clip_id may equal a group id (a stale clip
    # whose old group is named after it), so the two kinds of key are kept apart.
    gid = pc.take(groups[schema.GROUP_ID], idx).to_pylist()
    clip = rows[schema.CLIP_ID].to_pylist()
    key = [
        ("g", g) if f else ("c", c) for f, g, c in zip(found.to_pylist(), gid, clip, strict=True)
    ]
    size = pc.if_else(found, pc.take(groups[schema.GROUP_SIZE], idx), pa.scalar(1, pa.int32()))
    seen: dict[tuple[str, str], int] = {}
    for i, name in enumerate(key):
        seen.setdefault(name, i)  # each group's first (best) row
    first = np.fromiter(seen.values(), np.int64, len(seen))
    keep = np.sort(first)[:k]
    out = rows.take(pa.array(keep))
    return out.append_column(schema.GROUP_SIZE, pc.take(size, pa.array(keep)))
