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
from .build import MAX_BLOCKS, rows_per_block
from .compat import dataset_from_refs
from .manifest import fnv1a64
from .uris import redact_uris

if TYPE_CHECKING:
    from .manifest import ManifestInfo
    from .sink import LanceSink

logger = logging.getLogger(__name__)

#: Target rows per bucket: bounds the driver's memory during the diff.
BUCKET_ROWS = 250_000
_READ_BATCH = 65_536
_ROW = "__vidcat_manifest_row"
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

    def counts(self) -> dict[str, int]:
        """The plan's counts, as the run report names them."""
        return {
            "new": self.new,
            "changed": self.changed,
            "retried": self.retried,
            "skipped": self.skipped,
        }

    def summary(self) -> str:
        return (
            f"{self.mode}: {self.new} new, {self.changed} changed, {self.retried} retried, "
            f"{self.skipped} skipped, {self.to_prune} to prune"
        )

    def dataset(self) -> ray.data.Dataset:
        """The manifest rows to embed (all manifest columns) as a Ray dataset."""
        blocks = [(ref, meta) for ref, n, meta in self.embed_refs if n]
        return dataset_from_refs([ref for ref, _ in blocks], [meta for _, meta in blocks])

    def add(self, found: Classification, manifest: pa.Table, block_rows: int) -> None:
        """Count one bucket's classification; put its rows to embed (taken from `manifest`)
        and its ids to prune in the object store, `block_rows` rows per block."""
        self.new += found.new
        self.changed += found.changed
        self.retried += found.retried
        self.skipped += found.skipped
        self.known += found.known
        self.versions_resolved += found.versions_resolved
        if len(found.gone):
            self.prune_refs.append((ray.put(found.gone), len(found.gone)))
        rows = manifest.take(found.embed)
        for start in range(0, len(rows), block_rows):
            block = rows.slice(start, block_rows)
            self.embed_refs.append((ray.put(block), len(block), block_metadata(block)))

    def apply_prune(self, sink: LanceSink) -> int:
        deleted = 0
        for ref, n in self.prune_refs:
            if n:
                deleted += sink.delete_videos(ray.get(ref))
        return deleted


def block_metadata(block: pa.Table) -> Any:
    """Ray Data's metadata of a block, computed here, where the block already is."""
    from ray.data.block import BlockMetadataWithSchema

    return BlockMetadataWithSchema.from_block(block)


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
    max_blocks: int = MAX_BLOCKS,
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
    bucket_blocks = max(1, max_blocks // buckets)
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
            found = classify(
                m,
                state.read(b, _state_schema()),
                errors.read(b, _errors_state_schema()),
                signature=signature,
                mode=mode,
                prune=prune,
                version_of=version_of,
            )
            plan.add(found, m, rows_per_block(len(found.embed), block_rows, bucket_blocks))
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


@dataclass(frozen=True)
class Classification:
    """What one diff decided, per manifest row (see the module docstring for the rules).

    Attributes:
        new, changed, retried, skipped: counts of manifest rows.
        embed: sorted positions of the manifest rows to embed.
        gone: ids in the table or the errors table that the manifest lacks (when pruning).
        known: distinct ids in the table and the errors table (when pruning).
        versions_resolved: missing manifest versions looked up through `version_of`.
    """

    new: int
    changed: int
    retried: int
    skipped: int
    embed: np.ndarray
    gone: pa.Array
    known: int = 0
    versions_resolved: int = 0


def _empty_state() -> pa.Table:
    return pa.table(
        {name: pa.array([], pa.string()) for name in (schema.VIDEO_ID, *_STATE_COLUMNS)}
    )


_STATE_COLUMNS = ("t_version", "t_signature", "t_uri")


def classify(
    manifest: pa.Table,
    state: pa.Table,
    errors: pa.Table,
    *,
    signature: str,
    mode: Literal["incremental", "full"],
    prune: bool = False,
    version_of=None,
) -> Classification:
    """Diff manifest rows against what the tables hold for the same ids; no side effects
    beyond `version_of`.

    Args:
        manifest: manifest rows (`video_id`, `uri`, optional `version`, `start_s`, `end_s`;
            other columns are ignored).
        state: the embeddings table's rows of these ids (`video_id`, `content_version`,
            `signature`, `uri`), one per clip.
        errors: the errors table's rows (`video_id`, `status`, `content_version`,
            `signature`, `uri`).
        signature: this run's model signature.
        mode: `incremental` (skip unchanged) or `full` (embed everything).
        prune: also list the ids of `state` and `errors` that `manifest` lacks.
        version_of: `f(uris) -> versions` for known videos whose row has no version.
    """
    s = _collapse_state(state) if len(state) else _empty_state()
    e = errors.rename_columns(
        [c if c == schema.VIDEO_ID else "e_" + c for c in errors.column_names]
    )
    gone, known = pa.array([], pa.string()), 0
    if prune:
        ids = pc.unique(
            pa.concat_arrays(
                [s[schema.VIDEO_ID].combine_chunks(), e[schema.VIDEO_ID].combine_chunks()]
            )
        )
        present = manifest[schema.VIDEO_ID].combine_chunks()
        gone, known = ids.filter(pc.invert(pc.is_in(ids, value_set=present))), len(ids)
    if not len(manifest):
        return Classification(0, 0, 0, 0, np.zeros(0, np.int64), gone, known)
    # Only the keys go through the joins (Arrow cannot join list/struct/map columns, and
    # metadata names must not meet the state's); rows are referred to by position.
    wanted = (schema.VIDEO_ID, schema.URI, schema.VERSION, schema.START_S, schema.END_S)
    keys = [c for c in wanted if c in manifest.column_names]
    numbered = manifest.select(keys).append_column(
        _ROW, pa.array(np.arange(len(manifest), dtype=np.int64))
    )
    j = numbered.join(s, schema.VIDEO_ID, join_type="left outer").join(
        e, schema.VIDEO_ID, join_type="left outer"
    )
    n = len(j)
    in_table = pc.is_valid(j["t_uri"])
    in_errors = pc.is_valid(j["e_" + schema.STATUS])
    new = pc.invert(pc.or_(in_table, in_errors))
    resolved = 0
    if mode == "full":
        embed, retried = pa.array(np.ones(n, bool)), pa.array(np.zeros(n, bool))
    else:
        have = j[schema.VERSION] if schema.VERSION in j.column_names else pa.nulls(n, pa.string())
        # An empty version is no version: decode records the ETag / size+mtime instead.
        have = pc.if_else(pc.equal(have, ""), pa.scalar(None, pa.string()), have)
        version, resolved = _resolve_versions(j, have, pc.invert(new), version_of)
        version = _with_range(j, version)
        uri = redact_uris(j[schema.URI])

        def unchanged(prefix: str, version_column: str) -> pa.ChunkedArray:
            same_signature = pc.fill_null(pc.equal(j[prefix + schema.SIGNATURE], signature), False)
            same_version = _same(version, j[version_column])
            return pc.and_(pc.and_(same_signature, same_version), _same(uri, j[prefix + "uri"]))

        retried = pc.and_(
            in_errors, pc.fill_null(pc.is_in(j["e_" + schema.STATUS], value_set=_RETRYABLE), False)
        )
        # An error row is the latest word on a video (it may sit beside older clips).
        skip = pc.if_else(
            in_errors,
            pc.and_(pc.invert(retried), unchanged("e_", "e_" + schema.CONTENT_VERSION)),
            pc.and_(in_table, unchanged("t_", "t_version")),
        )
        embed = pc.invert(skip)
    n_embed = pc.sum(embed).as_py() or 0
    n_new = pc.sum(pc.and_(embed, new)).as_py() or 0
    n_retried = pc.sum(pc.and_(embed, retried)).as_py() or 0
    return Classification(
        new=n_new,
        changed=n_embed - n_new - n_retried,
        retried=n_retried,
        skipped=n - n_embed,
        embed=np.sort(j[_ROW].filter(embed).to_numpy()),
        gone=gone,
        known=known,
        versions_resolved=resolved,
    )


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


def _resolve_versions(j, version, known, version_of) -> tuple[pa.Array, int]:
    """Fill missing manifest versions of already-known videos via `version_of` (stat only);
    returns the versions and how many were looked up."""
    need = pc.and_(known, pc.is_null(version))
    idx = np.flatnonzero(pc.fill_null(need, False).to_numpy(zero_copy_only=False))
    if not len(idx) or version_of is None:
        return version, 0
    found = version_of(j[schema.URI].take(pa.array(idx)).to_pylist())
    values = version.to_pylist()
    for i, v in zip(idx, found, strict=True):
        values[i] = v
    return pa.array(values, pa.string()), len(idx)


def stat_versions(resolve_one, uris: list[str], threads: int = 32) -> list[str | None]:
    """Resolve content versions concurrently (stat/HEAD calls are I/O bound)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(resolve_one, uris))
