"""What a run must do: diff the manifest against the table, in bounded driver memory.

Both sides are streamed once and spilled to local Parquet buckets by a hash of `video_id`;
each bucket is then joined in memory (a few hundred thousand rows at most), classified,
and the rows to embed are put in Ray's object store, from where the graph reads them. The
driver never holds more than one bucket, so a 10-million-row manifest against a
10-million-row table costs bucket-sized memory, not table-sized.

Per manifest row (incremental mode):

* not in the table or the errors table → **new**;
* embedded with the same content version and model signature, and no error since →
  **skipped** (no fetch);
* in the errors table with a retryable status (`schema.RETRYABLE`: `fetch_error`,
  `timeout`, `decoder_crash`, `embed_error`) → **retried**; with another status and
  unchanged version and signature → **skipped** (a deterministic failure is not retried
  every night);
* anything else (new version, new signature) → **changed**. An empty `version` counts as
  none: the version recorded is then the object's ETag / size+mtime, looked up again.

Full mode embeds every row (counted as new/changed). With `prune`, videos in the table
or the errors table that are gone from the manifest are deleted.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from . import schema
from .uris import redact_uris

if TYPE_CHECKING:
    from .manifest import ManifestInfo
    from .sink import LanceSink

logger = logging.getLogger(__name__)

#: Target rows per bucket: bounds the driver's memory during the diff.
BUCKET_ROWS = 250_000
_READ_BATCH = 65_536
_ROW = "__vidcat_manifest_row"
#: Most blocks a plan puts in the object store: each costs the driver ~2 ms (`ray.put` and
#: its metadata), so 1024 are ~2 s of planning, and 1024 decode tasks keep a few hundred
#: decoders busy (4096 made a 10M-row plan 10 s slower).
PLAN_MAX_BLOCKS = 1024
_RETRYABLE = pa.array(sorted(s.value for s in schema.RETRYABLE))


@dataclass
class RefreshPlan:
    """Counts, the rows to embed (as object-store refs) and the ids to prune."""

    mode: str
    new: int = 0
    changed: int = 0
    retried: int = 0
    skipped: int = 0
    embed_refs: list = field(default_factory=list)
    prune_refs: list = field(default_factory=list)
    versions_resolved: int = 0
    #: Videos in the table or the errors table (counted when pruning).
    known: int = 0

    @property
    def to_embed(self) -> int:
        return self.new + self.changed + self.retried

    @property
    def to_prune(self) -> int:
        return sum(n for _, n in self.prune_refs)

    def summary(self) -> str:
        return (
            f"{self.mode}: {self.new} new, {self.changed} changed, {self.retried} retried, "
            f"{self.skipped} skipped, {self.to_prune} to prune"
        )

    def dataset(self) -> ray.data.Dataset:
        """The manifest rows to embed (all manifest columns) as a Ray dataset."""
        blocks = [(ref, meta) for ref, n, meta in self.embed_refs if n]
        return dataset_from_refs([ref for ref, _ in blocks], [meta for _, meta in blocks])

    def apply_prune(self, sink: LanceSink) -> int:
        deleted = 0
        for ref, n in self.prune_refs:
            if n:
                deleted += sink.delete_videos(ray.get(ref))
        return deleted


def rows_per_block(num_rows: int, batch: int, max_blocks: int) -> int:
    """Rows per block of rows to decode: one decode batch, or the smallest whole multiple
    of it that keeps `num_rows` within `max_blocks` blocks (one Ray Data task each)."""
    return batch * max(1, math.ceil(num_rows / (batch * max_blocks)))


def block_metadata(block: pa.Table) -> Any:
    """Ray Data's metadata of a block, computed here, where the block already is."""
    from ray.data.block import BlockMetadataWithSchema

    return BlockMetadataWithSchema.from_block(block)


def dataset_from_refs(refs: list, metadata: list) -> ray.data.Dataset:
    """A dataset of blocks already in the object store, with metadata known in the driver.

    `ray.data.from_arrow_refs` runs one remote task per block just to read row counts and
    the schema back, and on a quiet cluster the first such task starts a worker process
    (~1.2 CPU s measured on the 2-core dev VM). This builds the same logical plan that
    `ray.data.from_blocks` builds, from refs. It uses Ray Data internals pinned by
    `ray>=2.60,<2.61`; if they move, the public call is the fallback.
    """
    try:
        from ray.data._internal.logical.interfaces import LogicalPlan
        from ray.data._internal.logical.operators import FromBlocks
        from ray.data._internal.stats import DatasetStats
        from ray.data.context import DataContext
        from ray.data.dataset import MaterializedDataset
    except ImportError:  # a Ray outside the pinned range
        logger.warning("Ray Data internals moved: metadata of %d blocks read remotely", len(refs))
        return ray.data.from_arrow_refs(refs)
    context = DataContext.get_current().copy()
    stats = DatasetStats(metadata={"FromBlocks": metadata}, parent=None)
    return MaterializedDataset(LogicalPlan(FromBlocks(refs, metadata), context), context, stats)


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def fnv1a64(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit FNV-1a of every string's UTF-8 bytes, vectorized over the Arrow buffers.

    One numpy pass per byte position, over only the strings that long, so the work is the
    column's byte count and no Python object is made per row (a per-row `hash()` held
    ~280 MiB of allocator memory after 10M ids). Deterministic across processes and runs.
    Nulls hash like the empty string.
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    ids = ids.cast(pa.large_string())
    n = len(ids)
    if n == 0:
        return np.zeros(0, np.uint64)
    _, offsets_buf, data_buf = ids.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64, count=n + 1, offset=ids.offset * 8)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    if ids.null_count:
        lengths = np.where(ids.is_valid().to_numpy(zero_copy_only=False), lengths, 0)
    h = np.full(n, _FNV_OFFSET, np.uint64)
    live = np.flatnonzero(lengths)
    i = 0
    with np.errstate(over="ignore"):
        while len(live):
            h[live] = (h[live] ^ data[starts[live] + i].astype(np.uint64)) * _FNV_PRIME
            i += 1
            live = live[lengths[live] > i]
    return h


def hash_buckets(ids: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """Bucket of every id: the same id always lands in the same bucket, in any process."""
    if buckets == 1:
        return np.zeros(len(ids), np.int64)
    return (fnv1a64(ids) % np.uint64(buckets)).astype(np.int64)


class _Spill:
    """Per-bucket Parquet writers in a private temp directory."""

    def __init__(self, root: str, name: str, buckets: int) -> None:
        self.paths = [os.path.join(root, f"{name}-{b:04d}.parquet") for b in range(buckets)]
        self.writers: list[pq.ParquetWriter | None] = [None] * buckets
        self.buckets = buckets

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if not len(batch):
            return
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        which = hash_buckets(table[schema.VIDEO_ID].combine_chunks(), self.buckets)
        order = np.argsort(which, kind="stable")
        sorted_table = table.take(pa.array(order))
        bounds = np.searchsorted(which[order], np.arange(self.buckets + 1))
        for b in range(self.buckets):
            lo, hi = bounds[b], bounds[b + 1]
            if hi > lo:
                if self.writers[b] is None:
                    self.writers[b] = pq.ParquetWriter(self.paths[b], table.schema)
                self.writers[b].write_table(sorted_table.slice(lo, hi - lo))

    def close(self) -> None:
        for w in self.writers:
            if w is not None:
                w.close()

    def read(self, b: int, schema_: pa.Schema) -> pa.Table:
        if self.writers[b] is None:
            return schema_.empty_table()
        return pq.read_table(self.paths[b])


def _state_schema() -> pa.Schema:
    return pa.schema(
        [
            (schema.VIDEO_ID, pa.string()),
            (schema.CONTENT_VERSION, pa.string()),
            (schema.SIGNATURE, pa.string()),
            (schema.URI, pa.string()),
        ]
    )


def _errors_state_schema() -> pa.Schema:
    return pa.schema(
        [
            (schema.VIDEO_ID, pa.string()),
            (schema.STATUS, pa.string()),
            (schema.CONTENT_VERSION, pa.string()),
            (schema.SIGNATURE, pa.string()),
            (schema.URI, pa.string()),
        ]
    )


def _scan(table, columns: list[str]):
    """Stream `columns` of a LanceDB table in record batches."""
    return table.search().select(columns).limit(None).to_batches(_READ_BATCH)


def plan_refresh(
    info: ManifestInfo,
    sink: LanceSink,
    *,
    signature: str,
    mode: Literal["incremental", "full"],
    prune: bool,
    version_of=None,
    spill_dir: str | None = None,
    block_rows: int = 16,
    max_blocks: int = PLAN_MAX_BLOCKS,
) -> RefreshPlan:
    """Diff the manifest against the sink's tables; see the module docstring for the rules.

    Args:
        info: the validated manifest.
        sink: open sink (its tables are read, not written).
        signature: this run's model signature.
        mode: `incremental` (skip unchanged) or `full` (embed everything).
        prune: plan deletion of videos absent from the manifest.
        version_of: `f(uris: list[str]) -> list[str | None]` resolving the content version
            of existing videos whose manifest row has no `version` (ETag / size+mtime,
            never the bytes); None leaves them "changed".
        spill_dir: where buckets are spilled (default: system temp dir).
        block_rows: rows per object-store block of rows to embed (one Ray Data block, one
            decode task each): the decode batch, or a multiple of it when the rows to embed
            would otherwise make more than about `max_blocks` blocks. Sized per bucket from
            the rows it embeds (buckets hold a uniform share), so an incremental run of a
            few changed videos in a huge manifest still spreads them over every decoder.
    """
    clips_rows = sink.clips_table.count_rows()
    error_rows = sink.errors_table.count_rows()
    buckets = max(1, -(-max(info.num_rows, clips_rows, error_rows) // BUCKET_ROWS))
    plan = RefreshPlan(mode=mode)
    root = tempfile.mkdtemp(prefix="vidcat-plan-", dir=spill_dir)
    try:
        manifest = _Spill(root, "manifest", buckets)
        # The scanner's default readahead (4 files, 16 batches) held ~0.5 GB of a 10M-row
        # manifest in 8 files; one file and two batches ahead hold ~90 MB, and read faster.
        scan = info.dataset().to_batches(
            batch_size=_READ_BATCH, fragment_readahead=1, batch_readahead=2
        )
        for batch in scan:
            manifest.write(batch)
        manifest.close()
        state = _Spill(root, "state", buckets)
        errors = _Spill(root, "errors", buckets)
        if mode == "incremental" or prune:
            for batch in _scan(sink.clips_table, _state_schema().names):
                state.write(batch)
            for batch in _scan(sink.errors_table, _errors_state_schema().names):
                errors.write(batch)
        state.close()
        errors.close()
        for b in range(buckets):
            m = manifest.read(b, info.schema)
            s = state.read(b, _state_schema())
            e = errors.read(b, _errors_state_schema())
            blocks = (block_rows, max(1, max_blocks // buckets))
            _plan_bucket(plan, m, s, e, signature, mode, prune, version_of, blocks)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    logger.info("refresh plan (%d buckets): %s", buckets, plan.summary())
    return plan


def _ranks(column: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """`(ranks, values)`: int32 rank of every row's string in `values` (its distinct values,
    sorted), nulls kept; comparing ranks is comparing the strings."""
    encoded = column.combine_chunks().dictionary_encode()
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank_of = np.empty(len(order), np.int32)
    rank_of[order] = np.arange(len(order), dtype=np.int32)
    return pc.take(pa.array(rank_of), encoded.indices), pc.take(encoded.dictionary, order)


def _collapse_state(s: pa.Table) -> pa.Table:
    """One row per video: clips share version, signature and uri, unless an interrupted or
    mixed write left them inconsistent, which then reads as "changed" (null signature).

    Min/max run on int32 ranks of the strings rather than on the strings: the same result,
    at about a quarter of the memory and time of Arrow's string min/max group-by.
    """
    columns = (schema.CONTENT_VERSION, schema.SIGNATURE, schema.URI)
    ranked = {schema.VIDEO_ID: s[schema.VIDEO_ID]}
    values = {}
    for c in columns:
        ranked[c], values[c] = _ranks(s[c])
    agg = (
        pa.table(ranked)
        .group_by(schema.VIDEO_ID)
        .aggregate([(c, op) for c in columns for op in ("min", "max")])
    )

    def value(c: str, op: str) -> pa.Array:
        return pc.take(values[c], agg[f"{c}_{op}"])

    consistent = pc.and_(
        pc.equal(agg[f"{schema.CONTENT_VERSION}_min"], agg[f"{schema.CONTENT_VERSION}_max"]),
        pc.equal(agg[f"{schema.SIGNATURE}_min"], agg[f"{schema.SIGNATURE}_max"]),
    )
    return pa.table(
        {
            schema.VIDEO_ID: agg[schema.VIDEO_ID],
            "t_version": value(schema.CONTENT_VERSION, "min"),
            "t_signature": pc.if_else(
                pc.fill_null(consistent, False), value(schema.SIGNATURE, "min"), None
            ),
            "t_uri": value(schema.URI, "min"),
        }
    )


def _same(a, b) -> pa.ChunkedArray:
    """Null-safe equality of optional strings: two nulls (or empty strings) are equal."""
    a, b = (pc.if_else(pc.fill_null(pc.equal(x, ""), False), None, x) for x in (a, b))
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    return pc.or_(pc.fill_null(pc.equal(a, b), False), both_null)


def _plan_bucket(plan, m, s, e, signature, mode, prune, version_of, blocks) -> None:
    """Classify one bucket's manifest rows; `blocks`: (rows per block at least, blocks this
    bucket may make at most)."""
    s = (
        _collapse_state(s)
        if len(s)
        else pa.table(
            {
                schema.VIDEO_ID: pa.array([], pa.string()),
                "t_version": pa.array([], pa.string()),
                "t_signature": pa.array([], pa.string()),
                "t_uri": pa.array([], pa.string()),
            }
        )
    )
    e = e.rename_columns([c if c == schema.VIDEO_ID else "e_" + c for c in e.column_names])
    if prune:
        known = pc.unique(
            pa.concat_arrays(
                [s[schema.VIDEO_ID].combine_chunks(), e[schema.VIDEO_ID].combine_chunks()]
            )
        )
        gone = known.filter(
            pc.invert(pc.is_in(known, value_set=m[schema.VIDEO_ID].combine_chunks()))
        )
        plan.known += len(known)
        if len(gone):
            plan.prune_refs.append((ray.put(gone), len(gone)))
    if not len(m):
        return
    # Only the keys go through the joins (Arrow cannot join list/struct/map columns, and
    # metadata names must not meet the state's); rows to embed are taken from `m` by number.
    wanted = (schema.VIDEO_ID, schema.URI, schema.VERSION, schema.START_S, schema.END_S)
    keys = [c for c in wanted if c in m.column_names]
    numbered = m.select(keys).append_column(_ROW, pa.array(np.arange(len(m), dtype=np.int64)))
    j = numbered.join(s, schema.VIDEO_ID, join_type="left outer").join(
        e, schema.VIDEO_ID, join_type="left outer"
    )
    n = len(j)
    in_table = pc.is_valid(j["t_uri"])
    in_errors = pc.is_valid(j["e_" + schema.STATUS])
    new = pc.invert(pc.or_(in_table, in_errors))
    if mode == "full":
        embed, retried = pa.array(np.ones(n, bool)), pa.array(np.zeros(n, bool))
    else:
        have = j[schema.VERSION] if schema.VERSION in j.column_names else pa.nulls(n, pa.string())
        # An empty version is no version: decode records the ETag / size+mtime instead.
        have = pc.if_else(pc.equal(have, ""), pa.scalar(None, pa.string()), have)
        version = _with_range(j, _resolve_versions(plan, j, have, pc.invert(new), version_of))
        uri = redact_uris(j[schema.URI])
        unchanged_t = pc.and_(
            pc.and_(
                pc.fill_null(pc.equal(j["t_signature"], signature), False),
                _same(version, j["t_version"]),
            ),
            _same(uri, j["t_uri"]),
        )
        unchanged_e = pc.and_(
            pc.and_(
                pc.fill_null(pc.equal(j["e_" + schema.SIGNATURE], signature), False),
                _same(version, j["e_" + schema.CONTENT_VERSION]),
            ),
            _same(uri, j["e_" + schema.URI]),
        )
        retried = pc.and_(
            in_errors, pc.fill_null(pc.is_in(j["e_" + schema.STATUS], value_set=_RETRYABLE), False)
        )
        # An error row is the latest word on a video (it may sit beside older clips).
        skip = pc.if_else(
            in_errors, pc.and_(pc.invert(retried), unchanged_e), pc.and_(in_table, unchanged_t)
        )
        embed = pc.invert(skip)
    n_embed = pc.sum(embed).as_py() or 0
    n_new = pc.sum(pc.and_(embed, new)).as_py() or 0
    n_retried = pc.sum(pc.and_(embed, retried)).as_py() or 0
    plan.new += n_new
    plan.retried += n_retried
    plan.changed += n_embed - n_new - n_retried
    plan.skipped += n - n_embed
    rows = m.take(np.sort(j[_ROW].filter(embed).to_numpy()))
    block_rows = rows_per_block(len(rows), *blocks)
    for start in range(0, len(rows), block_rows):
        block = rows.slice(start, block_rows)
        plan.embed_refs.append((ray.put(block), len(block), block_metadata(block)))


def _with_range(j: pa.Table, version: pa.Array) -> pa.Array:
    """`schema.range_version` of every row that restricts its range (what decode records)."""
    bounds = [c for c in (schema.START_S, schema.END_S) if c in j.column_names]
    if not bounds:
        return version
    limited = pc.fill_null(
        functools.reduce(pc.or_, [pc.is_valid(j[c]) for c in bounds]), False
    ).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(limited)
    if not len(rows):
        return version
    values = version.to_pylist()
    start, end = (
        j[c].to_pylist() if c in j.column_names else [None] * len(j)
        for c in (schema.START_S, schema.END_S)
    )
    for r in rows:
        values[r] = schema.range_version(values[r], _bound(start[r]), _bound(end[r]))
    return pa.array(values, pa.string())


def _bound(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _resolve_versions(plan, j, version, known, version_of):
    """Fill missing manifest versions of already-known videos via `version_of` (stat only)."""
    need = pc.and_(known, pc.is_null(version))
    idx = np.flatnonzero(pc.fill_null(need, False).to_numpy(zero_copy_only=False))
    if not len(idx) or version_of is None:
        return version
    found = version_of(j[schema.URI].take(pa.array(idx)).to_pylist())
    plan.versions_resolved += len(idx)
    values = version.to_pylist()
    for i, v in zip(idx, found, strict=True):
        values[i] = v
    return pa.array(values, pa.string())


def stat_versions(resolve_one, uris: list[str], threads: int = 32) -> list[str | None]:
    """Resolve content versions concurrently (stat/HEAD calls are I/O bound)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(resolve_one, uris))
