"""The pipeline's single writer: clip embeddings and per-video failures into LanceDB.

The driver hands every output batch to :class:`LanceSink`, which buffers rows and commits
them in chunks. A commit upserts the chunk's clips on `clip_id`, deletes clips of the
chunk's videos that the new run no longer produces, and upserts or clears the videos'
rows in `<table>_errors`. Every step is idempotent, so a rerun of the same input leaves
the same content and a crash loses at most the chunk in flight.

Chunks end only where `video_id` changes: the stale-clip delete assumes a chunk holds all
of a video's clips, which holds as long as the upstream emits a video's rows contiguously.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import col

from pipeline import schema
from pipeline.compat import delete_matching, retry_transient, select_rows, upsert
from pipeline.db import (
    check_schema,
    check_table_name,
    connect,
    table_names,
)
from pipeline.manifest import RESERVED
from pipeline.schema import Status
from pipeline.uris import redact_text, redact_uri, redact_uris

logger = logging.getLogger(__name__)

_STATUSES = pa.array([s.value for s in Status])


@dataclass(frozen=True)
class SinkConfig:
    """Where and how the sink writes.

    Attributes:
        db_uri: LanceDB location: a local directory or `s3://bucket/prefix`.
        table: embeddings table; errors go to `<table>_errors`.
        chunk_rows: commit once this many rows are buffered...
        chunk_seconds: ...or once this long has passed since the last commit.
        storage_options: object-store options for remote databases (never logged).
        metadata_fields: manifest columns carried into the embeddings table, with their
            Arrow types and nulls as they come.
        store_vision_tokens: also write `<table>_vision_tokens`. Tokens take megabytes
            per clip and stay buffered until their chunk commits: lower `chunk_rows`.
    """

    db_uri: str
    table: str = "videos"
    chunk_rows: int = 4096
    chunk_seconds: float = 60.0
    storage_options: Mapping[str, str] | None = field(default=None, repr=False, compare=False)
    metadata_fields: tuple[pa.Field, ...] = ()
    store_vision_tokens: bool = False

    def __post_init__(self) -> None:
        if self.chunk_rows < 1 or not self.chunk_seconds > 0:
            raise ValueError("chunk_rows and chunk_seconds must be positive")
        check_table_name(self.table)
        names = [f.name for f in self.metadata_fields]
        clash = set(names) & RESERVED
        if clash or len(set(names)) != len(names):
            raise ValueError(f"metadata fields clash or repeat: {sorted(clash) or names}")


@dataclass
class SinkStats:
    """Counters for the run report."""

    clips_written: int = 0
    errors_written: int = 0
    errors_cleared: int = 0
    stale_clips_deleted: int = 0
    duplicates_collapsed: int = 0
    clips_dropped: int = 0
    videos_deleted: int = 0
    commits: int = 0
    commit_seconds: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _embeddings(column: pa.ChunkedArray, ok: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """Embedding column as `fixed_size_list<float32>[EMBED_DIM]`, null where not `ok`.

    Accepts fixed-size or variable lists and tensor extension types (Ray's, pyarrow's)
    whose rows flatten to EMBED_DIM values. Returns the array and a mask `[N]` of ok rows
    holding non-finite values, which the caller turns into failures.
    """
    dim, n = schema.EMBED_DIM, len(column)
    values = np.zeros((n, dim), dtype=np.float32)
    rows = np.flatnonzero(ok)
    if len(rows):
        taken = column.take(pa.array(rows)).combine_chunks()
        if isinstance(taken.type, pa.BaseExtensionType):
            taken = taken.storage
        if not (pa.types.is_list(taken.type) or pa.types.is_large_list(taken.type)) and not (
            pa.types.is_fixed_size_list(taken.type)
        ):
            raise ValueError(f"embedding column has type {column.type}; expected a list/tensor")
        lengths = pc.fill_null(pc.list_value_length(taken), 0).to_numpy(zero_copy_only=False)
        if taken.null_count or (lengths != dim).any():
            wrong = sorted(set(lengths[lengths != dim].tolist()))[:5]
            raise ValueError(f"ok rows need {dim}-value embeddings; got lengths {wrong} or null")
        values[rows] = taken.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    bad = ok & ~np.isfinite(values).all(axis=1)
    return schema.fixed_size_list(values, mask=~ok | bad), bad


def _as_table(batch: pa.Table | pa.RecordBatch) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    raise TypeError(f"LanceSink takes Arrow tables, got {type(batch).__name__}")


def _last_per_key(table: pa.Table, key: str) -> pa.Table:
    """Rows of `table`, keeping only the last row of each `key` value, in input order."""
    if len(table) < 2:
        return table
    indexed = table.select([key]).append_column("_row", pa.array(np.arange(len(table))))
    last = indexed.group_by(key, use_threads=False).aggregate([("_row", "max")])["_row_max"]
    return table.take(np.sort(last.to_numpy()))


def _project(rows: pa.Table, target: pa.Schema, extra: Mapping[str, pa.Array]) -> pa.Table:
    """`rows` laid out as `target`, with `extra` columns; nulls in required fields raise."""
    arrays = []
    for f in target:
        array = extra[f.name] if f.name in extra else rows[f.name]
        if not f.nullable and array.null_count:
            ids = rows[schema.VIDEO_ID].filter(pc.is_null(array)).to_pylist()[:5]
            raise ValueError(f"column {f.name!r} is null for videos {ids}")
        arrays.append(array.cast(f.type))
    return pa.Table.from_arrays(arrays, schema=target)


class LanceSink:
    """Buffers pipeline output and commits it to LanceDB in chunks (a context manager).

    Input batches (`pa.Table` or `pa.RecordBatch`) hold one row per clip with
    `status == "ok"` and one row per failed video otherwise, in the columns named in
    :mod:`pipeline.schema`; unknown columns (e.g. `frames`) are dropped.

    Within a chunk a video that has any failure row counts as failed, and its ok clips
    are dropped (`stats.clips_dropped`): a partial video would delete good clips as stale.
    A video that fails after an earlier success keeps its old clips beside its error row.
    """

    def __init__(self, config: SinkConfig, guard: Callable[[], None] | None = None) -> None:
        self.config = config
        #: Called before every change to the tables; raises to stop the writer (the run's
        #: lease check: a writer that lost the table's lease must not commit).
        self._guard = guard or (lambda: None)
        self.stats = SinkStats()
        self._db = connect(config.db_uri, config.storage_options)
        existing = table_names(self._db)
        self._clips_schema = schema.embeddings_schema(config.metadata_fields)
        self._errors_schema = schema.errors_schema()
        self._tokens_schema = schema.vision_tokens_schema()
        self._clips = self._open(config.table, self._clips_schema, existing)
        errors_name = schema.errors_table_name(config.table)
        self._errors = self._open(errors_name, self._errors_schema, existing)
        # An existing token table is kept in step even when this run stores no tokens:
        # re-embedded or pruned videos lose their (now outdated) tokens.
        tokens_name = schema.vision_tokens_table_name(config.table)
        self._tokens = None
        if config.store_vision_tokens or tokens_name in existing:
            self._tokens = self._open(tokens_name, self._tokens_schema, existing)
        # Thumbnails likewise; their table is made by the first batch that brings any.
        self._thumbs_schema = schema.thumbnails_schema()
        self._thumbs_name = schema.thumbnails_table_name(config.table)
        self._thumbs = None
        if self._thumbs_name in existing:
            self._thumbs = self._open(self._thumbs_name, self._thumbs_schema, existing)
        # Finding stale clips, earlier attempts and errors to clear takes a filtered scan
        # per chunk (fast once `video_id` has the BTREE index pipeline/index.py builds).
        # A table that was empty at open holds nothing from before this run, and each
        # video arrives in one contiguous run, so a first load skips those scans.
        self._had_rows = {
            id(t): t.count_rows() > 0
            for t in (self._clips, self._errors, self._tokens, self._thumbs)
            if t is not None
        }
        fields = [f for f in self._clips_schema if f.name != schema.EMBEDDED_AT]
        fields += [pa.field(schema.STATUS, pa.string()), pa.field(schema.MESSAGE, pa.string())]
        fields += [pa.field(schema.THUMBNAIL, pa.binary())]
        if config.store_vision_tokens:
            fields += [f for f in self._tokens_schema if f.name.startswith("vision")]
        self._staging = pa.schema([f.with_nullable(True) for f in fields])
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._last_commit = time.monotonic()
        self._closed = False

    def _open(self, name: str, expected: pa.Schema, existing: set[str]):
        shown = f"{name!r} in {redact_uri(self.config.db_uri)}"
        if name not in existing:
            logger.info("creating table %s", shown)
            # exist_ok: a repeat after a create whose answer was lost opens it (checked below).
            table = retry_transient(
                lambda: self._db.create_table(name, schema=expected, exist_ok=True),
                f"create {shown}",
            )
            check_schema(table, expected, shown)
            return table
        table = self._db.open_table(name)
        check_schema(table, expected, shown)
        return table

    @property
    def clips_table(self) -> lancedb.table.Table:
        return self._clips

    @property
    def errors_table(self) -> lancedb.table.Table:
        return self._errors

    @property
    def tokens_table(self) -> lancedb.table.Table | None:
        return self._tokens

    @property
    def thumbnails_table(self) -> lancedb.table.Table | None:
        return self._thumbs

    def table_version(self) -> int:
        """Current version of the embeddings table (for the run report)."""
        return self._clips.version

    def delete_videos(self, video_ids) -> int:
        """Remove every row of these videos from all tables (pruning).

        Args:
            video_ids: `pa.Array` or sequence of ids.

        Returns:
            How many of the ids had clip or error rows.
        """
        self.flush()
        self._guard()
        if isinstance(video_ids, pa.Array | pa.ChunkedArray):
            video_ids = video_ids.cast(pa.string())
        ids = pc.unique(pa.array(video_ids, pa.string())).to_pylist()
        found = set()
        for lo in range(0, len(ids), self.config.chunk_rows):
            where = col(schema.VIDEO_ID).isin(ids[lo : lo + self.config.chunk_rows])
            for table in (self._clips, self._errors):
                hits = select_rows(table, where, [schema.VIDEO_ID])[schema.VIDEO_ID]
                if len(hits):
                    found.update(pc.unique(hits).to_pylist())
                    retry_transient(lambda t=table, w=where: t.delete(w), "delete videos")
            for side in (self._tokens, self._thumbs):
                if side is not None:
                    _delete_if_any(side, where)
        self.stats.videos_deleted += len(found)
        return len(found)

    # ---- buffering ---------------------------------------------------------------------
    def write(self, batch) -> pa.Array:
        """Buffer one batch; commit whole videos once a chunk is full or old enough.

        Returns:
            Each row's status as it will be committed: the input's, except rows whose
            embedding is not finite, which become `embed_error`.
        """
        if self._closed:
            raise RuntimeError("write() on a closed LanceSink")
        table = _as_table(batch)
        status = pa.array([], pa.string())
        if len(table):
            staged = self._stage(table)
            status = staged[schema.STATUS].combine_chunks()
            self._buffer.append(staged)
            self._buffered += len(table)
        while self._buffered >= self.config.chunk_rows and self._commit_whole_videos(
            self.config.chunk_rows
        ):
            pass
        if self._buffered and time.monotonic() - self._last_commit >= self.config.chunk_seconds:
            self._commit_whole_videos(None)
        return status

    def flush(self) -> None:
        """Commit everything buffered; the caller vouches that no video continues after it."""
        if self._buffered:
            chunk = pa.concat_tables(self._buffer)
            self._buffer, self._buffered = [], 0
            self._commit(chunk)

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True
            logger.info("sink %s closed: %s", self.config.table, self.stats.as_dict())

    def __enter__(self) -> LanceSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Buffered rows are finished work; keep them unless saving them fails too.
        try:
            self.close()
        except Exception:
            logger.exception("could not flush the sink while handling another error")

    def _commit_whole_videos(self, limit: int | None) -> bool:
        """Commit buffered rows up to a video boundary (at most `limit` rows if one exists)."""
        table = pa.concat_tables(self._buffer)
        ids = table[schema.VIDEO_ID]
        changes = np.flatnonzero(pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False))
        cuts = changes + 1
        if not len(cuts):
            return False  # one video so far: it may continue in the next batch
        fitting = cuts[cuts <= limit] if limit else cuts
        cut = int(fitting[-1] if len(fitting) else cuts[0])
        rest = table.slice(cut)
        self._buffer, self._buffered = [rest], len(rest)
        self._commit(table.slice(0, cut))
        return True

    def _stage(self, batch: pa.Table) -> pa.Table:
        """Validate one input batch and lay it out as the staging schema."""
        missing = [
            c for c in (schema.VIDEO_ID, schema.URI, schema.STATUS) if c not in batch.schema.names
        ]
        if missing:
            raise ValueError(f"sink input lacks column(s) {missing}")
        n = len(batch)
        status = batch[schema.STATUS].cast(pa.string())
        unknown = pc.unique(status.filter(pc.invert(pc.is_in(status, value_set=_STATUSES))))
        if batch[schema.VIDEO_ID].null_count or len(unknown) or status.null_count:
            raise ValueError(f"null video_id/status or unknown status {unknown.to_pylist()}")
        ok = pc.equal(status, Status.OK.value).to_numpy(zero_copy_only=False)
        columns: dict[str, pa.Array | pa.ChunkedArray] = {schema.STATUS: status}
        if schema.EMBEDDING in batch.schema.names:
            columns[schema.EMBEDDING], bad = _embeddings(batch[schema.EMBEDDING], ok)
        elif ok.any():
            raise ValueError("ok rows need an embedding column")
        else:
            bad = ok
        if schema.CLIP_ID not in batch.schema.names and schema.CLIP_INDEX in batch.schema.names:
            pairs = zip(
                batch[schema.VIDEO_ID].to_pylist(),
                batch[schema.CLIP_INDEX].to_pylist(),
                strict=True,
            )
            columns[schema.CLIP_ID] = pa.array(
                [schema.clip_id(v, i) if i is not None else None for v, i in pairs], pa.string()
            )
        columns[schema.URI] = redact_uris(batch[schema.URI])
        messages = [None] * n
        if schema.MESSAGE in batch.schema.names:
            messages = [
                m and redact_text(m) for m in batch[schema.MESSAGE].cast(pa.string()).to_pylist()
            ]
        columns[schema.MESSAGE] = pa.array(messages, pa.string())
        if bad.any():  # a NaN embedding is a model failure, not a reason to stop the run
            bad_rows = pa.array(bad)
            columns[schema.STATUS] = pc.if_else(bad_rows, Status.EMBED_ERROR.value, status)
            columns[schema.MESSAGE] = pc.if_else(
                bad_rows, "non-finite values in embedding", columns[schema.MESSAGE]
            )
        tokens_expected = self.config.store_vision_tokens and ok.any()
        if tokens_expected and schema.VISION_TOKENS not in batch.schema.names:
            raise ValueError("store_vision_tokens is set but the batch has no vision_tokens")
        arrays = []
        for f in self._staging:
            value = columns.get(f.name, batch[f.name] if f.name in batch.schema.names else None)
            try:
                arrays.append(pa.nulls(n, f.type) if value is None else value.cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(f"column {f.name!r}: cannot cast to {f.type}: {exc}") from exc
        return pa.Table.from_arrays(arrays, schema=self._staging)

    # ---- committing --------------------------------------------------------------------
    def _commit(self, chunk: pa.Table) -> None:
        self._guard()
        started = time.monotonic()
        now = pa.scalar(datetime.now(UTC), pa.timestamp("us", tz="UTC"))
        ok = pc.equal(chunk[schema.STATUS], Status.OK.value)
        failed = chunk.filter(pc.invert(ok))
        failed_ids = pc.unique(failed[schema.VIDEO_ID])
        clips = chunk.filter(pc.and_(ok, pc.invert(pc.is_in(chunk[schema.VIDEO_ID], failed_ids))))
        self.stats.clips_dropped += pc.sum(ok).as_py() - len(clips)
        deduped = _last_per_key(clips, schema.CLIP_ID), _last_per_key(failed, schema.VIDEO_ID)
        self.stats.duplicates_collapsed += len(clips) + len(failed) - sum(map(len, deduped))
        clips, failed = deduped
        if len(clips):
            self._write_clips(clips, now)
        self._write_errors(failed, pc.unique(clips[schema.VIDEO_ID]), now)
        self.stats.commits += 1
        self.stats.commit_seconds += time.monotonic() - started
        self._last_commit = time.monotonic()
        logger.debug("committed %d clips, %d failures", len(clips), len(failed))

    def _write_clips(self, clips: pa.Table, now: pa.Scalar) -> None:
        stamp = {schema.EMBEDDED_AT: pa.repeat(now, len(clips))}
        rows = _project(clips, self._clips_schema, stamp)
        self.stats.clips_written += len(rows)
        self.stats.stale_clips_deleted += self._replace_videos(self._clips, rows)
        if self.config.store_vision_tokens:
            self._replace_videos(self._tokens, _project(clips, self._tokens_schema, {}))
        elif self._tokens is not None and self._had_rows[id(self._tokens)]:
            _delete_if_any(self._tokens, col(schema.VIDEO_ID).isin(_ids(rows)))
        self._write_thumbnails(clips)

    def _write_thumbnails(self, clips: pa.Table) -> None:
        """The clips' thumbnails replace their videos' old ones; a video re-embedded without
        thumbnails (thumbnails off) loses its old ones, which showed other frames."""
        thumbs = clips.filter(pc.is_valid(clips[schema.THUMBNAIL]))
        if len(thumbs) and self._thumbs is None:
            self._thumbs = self._open(self._thumbs_name, self._thumbs_schema, set())
            self._had_rows[id(self._thumbs)] = False
        if self._thumbs is None:
            return
        if len(thumbs):
            self._replace_videos(self._thumbs, _project(thumbs, self._thumbs_schema, {}))
        without = pc.unique(clips[schema.VIDEO_ID]).filter(
            pc.invert(
                pc.is_in(pc.unique(clips[schema.VIDEO_ID]), value_set=thumbs[schema.VIDEO_ID])
            )
        )
        if len(without) and self._had_rows[id(self._thumbs)]:
            _delete_if_any(self._thumbs, col(schema.VIDEO_ID).isin(without.to_pylist()))

    def _replace_videos(self, table, rows: pa.Table) -> int:
        """Make `rows` the complete set of clips of their videos; returns stale rows deleted.

        Two commits, upsert first: a crash between them leaves the new clips plus stale
        ones (never fewer clips than before), and the next write of the video removes the
        rest. `merge_insert(...).when_not_matched_by_source_delete(filter)` would be one
        commit, but in LanceDB 0.40 it scans the whole target table (1-6 s per chunk at
        1M rows, against 0.1-0.2 s for the upsert): :mod:`pipeline.compat`, entry 6.
        """
        upsert(table, rows, schema.CLIP_ID)
        if not self._had_rows[id(table)]:
            return 0
        # Reading the videos' clip ids and deleting the stale ones by key is several times
        # faster than one `video_id IN (..) AND clip_id NOT IN (..)` delete.
        where = col(schema.VIDEO_ID).isin(_ids(rows))
        existing = select_rows(table, where, [schema.CLIP_ID])[schema.CLIP_ID]
        stale = existing.filter(pc.invert(pc.is_in(existing, value_set=rows[schema.CLIP_ID])))
        if len(stale):
            where = col(schema.CLIP_ID).isin(stale.to_pylist())
            retry_transient(lambda: table.delete(where), "delete stale clips")
        return len(stale)

    def _write_errors(self, failed: pa.Table, ok_ids: pa.Array, now: pa.Scalar) -> None:
        had_rows = self._had_rows[id(self._errors)]
        if len(failed):
            ids = failed[schema.VIDEO_ID]
            before = pa.nulls(len(failed), pa.int32())
            if had_rows:
                where = col(schema.VIDEO_ID).isin(ids.to_pylist())
                previous = select_rows(self._errors, where, [schema.VIDEO_ID, schema.ATTEMPTS])
                where = pc.index_in(ids, value_set=previous[schema.VIDEO_ID])
                before = previous[schema.ATTEMPTS].take(where)
            extra = {
                schema.ATTEMPTS: pc.add(pc.fill_null(before, 0), 1),
                schema.FAILED_AT: pa.repeat(now, len(failed)),
            }
            rows = _project(failed, self._errors_schema, extra)
            upsert(self._errors, rows, schema.VIDEO_ID)
            self.stats.errors_written += len(rows)
        if len(ok_ids) and had_rows:
            cleared = col(schema.VIDEO_ID).isin(ok_ids.to_pylist())
            self.stats.errors_cleared += _delete_if_any(self._errors, cleared)


def _ids(rows: pa.Table) -> list[str]:
    return pc.unique(rows[schema.VIDEO_ID]).to_pylist()


def _delete_if_any(table, where) -> int:
    """Delete rows matching `where` (an expression on `video_id`); returns how many."""
    return delete_matching(table, where, schema.VIDEO_ID)
