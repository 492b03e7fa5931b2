"""Thumbnails for clips that have none: a backfill for tables embedded before thumbnails.

The pipeline writes each clip's thumbnail as it embeds (`<table>_thumbnails`); a table
embedded earlier has none, so pages would have to decode videos to show results. This
re-decodes each such clip by its recorded bounds with the run's decode settings (the same
frames the embedding was made from; `frame_indices` are checked), in parallel decoder
processes, and writes the thumbnails under the table's lease.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import schema
from .compat import retry_transient, upsert
from .db import catalog_tables, connect
from .decode import DecodeConfig, DecoderPool, IsolatedDecoder
from .runs import RunFiles
from .schema import Status
from .storage import S3Config

logger = logging.getLogger(__name__)

#: Clips written per commit.
_CHUNK = 512


def missing_thumbnails(tables: dict[str, Any], table: str) -> pa.Table:
    """Clips of `table` without a thumbnail: clip_id, video_id, uri, bounds, frame_indices."""
    columns = [
        schema.CLIP_ID,
        schema.VIDEO_ID,
        schema.URI,
        schema.CLIP_START_S,
        schema.CLIP_END_S,
        schema.FRAME_INDICES,
    ]
    clips = tables[table].search().select(columns).limit(None).to_arrow()
    name = schema.thumbnails_table_name(table)
    if name not in tables:
        return clips
    have = tables[name].search().select([schema.CLIP_ID]).limit(None).to_arrow()
    return clips.filter(pc.invert(pc.is_in(clips[schema.CLIP_ID], value_set=have[schema.CLIP_ID])))


def backfill_thumbnails(
    db_uri: str,
    table: str = "videos",
    s3: S3Config | None = None,
    decoders: int = 2,
    thumbnail_size: int | None = None,
) -> dict[str, Any]:
    """Make and store the thumbnails of every clip of `table` that has none.

    The caller holds the table's lease. Clips that cannot be decoded again (the video is
    gone, or the frames picked differ from the recorded ones) are counted and skipped.

    Returns:
        `clips` (that had none), `written`, `failed`, `seconds`.
    """
    s3 = s3 or S3Config()
    started = time.perf_counter()
    tables = catalog_tables(db_uri, table, s3.storage_options())
    todo = missing_thumbnails(tables, table)
    settings = RunFiles(db_uri, table, s3).latest_decode_settings() or {"s3": s3}
    decode = DecodeConfig(**settings)
    if thumbnail_size is not None or not decode.thumbnail_size:
        decode = dataclasses.replace(decode, thumbnail_size=thumbnail_size or 256)
    rows = todo.to_pylist()
    logger.info("%d clips of %r have no thumbnail", len(rows), table)
    pool = DecoderPool(decode, max(1, decoders))
    written = failed = 0
    name = schema.thumbnails_table_name(table)
    target = tables.get(name)
    try:
        for lo in range(0, len(rows), _CHUNK):
            part = rows[lo : lo + _CHUNK]
            thumbs = pool.map(_thumbnail_of, part)
            ok = [(r, t) for r, t in zip(part, thumbs, strict=True) if t is not None]
            failed += len(part) - len(ok)
            if not ok:
                continue
            batch = pa.table(
                {
                    schema.CLIP_ID: [r[schema.CLIP_ID] for r, _ in ok],
                    schema.VIDEO_ID: [r[schema.VIDEO_ID] for r, _ in ok],
                    schema.THUMBNAIL: pa.array([t for _, t in ok], pa.binary()),
                },
                schema=schema.thumbnails_schema(),
            )
            if target is None:
                target = _create(db_uri, name, s3)
            upsert(target, batch, schema.CLIP_ID)
            written += len(ok)
            logger.info("thumbnails: %d of %d written", written, len(rows))
    finally:
        pool.close()
    return {
        "clips": len(rows),
        "written": written,
        "failed": failed,
        "seconds": time.perf_counter() - started,
    }


def _thumbnail_of(decoder: IsolatedDecoder, row: dict) -> bytes | None:
    start, end = row[schema.CLIP_START_S], row[schema.CLIP_END_S]
    result = decoder.decode(row[schema.URI], start_s=start, end_s=end)
    if result.status is not Status.OK:
        logger.warning(
            "clip %s: no thumbnail, %s: %s",
            row[schema.CLIP_ID],
            result.status.value,
            result.message,
        )
        return None
    clip = next((c for c in result.clips if abs(c.start_s - (start or 0.0)) < 1e-6), None)
    expected = row[schema.FRAME_INDICES]
    if clip is None or (expected is not None and clip.frame_indices.tolist() != expected):
        logger.warning(
            "clip %s: no thumbnail, the frames differ from the run's", row[schema.CLIP_ID]
        )
        return None
    return clip.thumbnail


def _create(db_uri: str, name: str, s3: S3Config):
    db = connect(db_uri, s3.storage_options())
    return retry_transient(
        lambda: db.create_table(name, schema=schema.thumbnails_schema(), exist_ok=True),
        f"create {name}",
    )
