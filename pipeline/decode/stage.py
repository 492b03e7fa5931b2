"""The decode stage: a batch of manifest rows → one row per clip, one row per failed video."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from .. import schema
from ..schema import Status
from ..uris import redact_uri
from .config import DecodeConfig
from .process import DecoderPool, IsolatedDecoder
from .result import DecodeResult

logger = logging.getLogger(__name__)

#: `DecodeStage` cuts its output after this many bytes of frames (whole videos).
OUTPUT_BATCH_BYTES = 256 << 20
_MANIFEST_COLUMNS = (schema.VIDEO_ID, schema.URI, schema.VERSION, schema.START_S, schema.END_S)
#: Per-row output columns and their Arrow types (frames and frame_indices are built apart).
_ROW_TYPES = {
    schema.VIDEO_ID: pa.string(),
    schema.URI: pa.string(),
    schema.CLIP_INDEX: pa.int32(),
    schema.CLIP_START_S: pa.float64(),
    schema.CLIP_END_S: pa.float64(),
    schema.DECODER: pa.string(),
    schema.STATUS: pa.string(),
    schema.MESSAGE: pa.string(),
    schema.ATTEMPTS: pa.int32(),
    schema.CONTENT_VERSION: pa.string(),
    schema.NUM_CLIPS: pa.int32(),
    schema.DECODE_SECONDS: pa.float64(),
}


class DecodeStage:
    """Ray Data callable class: manifest batch (an Arrow table) → Arrow tables of clips.

    Used as `ds.map_batches(DecodeStage, fn_constructor_kwargs={"config": cfg},
    batch_format="pyarrow", ...)`. Each actor spreads a batch's videos over a
    :class:`DecoderPool` of `decoders` processes, so one Ray actor can keep several cores
    busy: fewer actors per node means less of Ray's per-worker start-up and memory.

    Output columns: video_id, uri (redacted), clip_index (int32), clip_start_s, clip_end_s
    (float64), frames (a fixed-shape uint8 tensor `[T, size, size, 3]` per row, zeros on
    error rows: :func:`pipeline.schema.frames_array`), frame_indices (list<int32>), thumbnail
    (binary JPEG of the clip's middle sampled frame, null when off), decoder,
    status, message, attempts (int32), content_version, num_clips (int32: rows of the video
    in all) and decode_seconds (the video's wall time split over its rows). On error rows
    clip_index, the bounds and frame_indices are null, as are decoder and content_version
    wherever they are unknown. Columns other than the manifest's own are copied onto every
    row of their video with their Arrow types; one named like an output column is dropped.
    """

    def __init__(
        self, config: DecodeConfig, decoders: int = 1, output_bytes: int = OUTPUT_BATCH_BYTES
    ) -> None:
        self.config = config
        self.output_bytes = output_bytes
        self._decoders = DecoderPool(config, decoders)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        """Decode a batch of videos; yield their rows in input order, whole videos per output
        batch, a batch as soon as its frames reach `output_bytes` (a video larger than that
        alone), so the frames of a batch of long videos are never all held, and copied, at
        once. Ray Data takes the generator as is; :meth:`decode_batch` joins the batches."""
        if not isinstance(batch, pa.Table):
            raise TypeError(f"DecodeStage takes Arrow tables, got {type(batch).__name__}")
        rows = _ManifestRows(batch)
        started = time.perf_counter()
        clip_bytes = self.config.num_frames * self.config.size**2 * 3
        results = self._decoders.imap(
            lambda decoder, i: self._decode_row(decoder, rows, i), range(len(batch))
        )
        group, group_rows, first, total = [], 0, 0, 0
        for result in results:
            group.append(result)
            group_rows += max(1, len(result[1].clips))  # a failed video is one row
            if group_rows * clip_bytes >= self.output_bytes:
                yield self._assemble(batch, group, first)
                total, first = total + group_rows, first + len(group)
                group, group_rows = [], 0
        if group or not len(batch):
            yield self._assemble(batch, group, first)
            total += group_rows
        logger.debug(
            "decoded %d videos into %d rows in %.2f s",
            len(batch),
            total,
            time.perf_counter() - started,
        )

    def decode_batch(self, batch: pa.Table) -> pa.Table:
        """All rows of a batch as one table (callers outside Ray Data)."""
        return pa.concat_tables(list(self(batch)))

    @property
    def child_pids(self) -> list[int | None]:
        """PIDs of the decoder processes (None: not started yet, or stopped)."""
        return self._decoders.child_pids

    def close(self) -> None:
        """Stop the decoder processes (they also exit on their own when this process dies);
        the stage stays usable and starts them again on its next batch."""
        self._decoders.close()

    def _decode_row(
        self, decoder: IsolatedDecoder, rows: _ManifestRows, i: int
    ) -> tuple[str, DecodeResult, float]:
        video_id, uri, version = rows.video_id[i], rows.uri[i], rows.version[i]
        start_s, end_s = rows.start_s[i], rows.end_s[i]
        video_started = time.perf_counter()
        try:
            result = decoder.decode(uri, start_s, end_s, version, video_id=video_id)
            version = schema.range_version(result.content_version, start_s, end_s)
            result = dataclasses.replace(result, content_version=version)
        except Exception as exc:  # a bug here must cost one row, not the batch
            logger.exception("decode of %s raised", video_id)
            result = DecodeResult(
                Status.DECODE_ERROR, redact_uri(uri), f"internal error: {type(exc).__name__}"
            )
        if result.status is not Status.OK:
            logger.warning(
                "decode failed: video_id=%s uri=%s status=%s: %s",
                video_id,
                result.uri,
                result.status.value,
                result.message,
            )
        return video_id, result, time.perf_counter() - video_started

    def _assemble(
        self, batch: pa.Table, results: list[tuple[str, DecodeResult, float]], first: int = 0
    ) -> pa.Table:
        """Rows of `results`, the videos of input rows `first, first + 1, ...`."""
        t, size = self.config.num_frames, self.config.size
        num_out = sum(max(1, len(r.clips)) for _, r, _ in results)
        frames = np.zeros((num_out, t, size, size, 3), np.uint8)
        indices: list[list[int] | None] = []
        thumbs: list[bytes | None] = []
        rows: dict[str, list] = {name: [] for name in _ROW_TYPES}
        source = []
        for src, (video_id, result, seconds) in enumerate(results):
            num_clips = max(1, len(result.clips))
            for clip in result.clips or (None,):
                if clip is not None:
                    frames[len(source)] = clip.frames
                indices.append(clip.frame_indices.tolist() if clip is not None else None)
                thumbs.append(clip.thumbnail if clip is not None else None)
                source.append(src)
                values = {
                    schema.VIDEO_ID: video_id,
                    schema.URI: result.uri,
                    schema.CLIP_INDEX: clip.index if clip else None,
                    schema.CLIP_START_S: clip.start_s if clip else None,
                    schema.CLIP_END_S: clip.end_s if clip else None,
                    schema.DECODER: result.decoder,
                    schema.STATUS: result.status.value,
                    schema.MESSAGE: result.message or None,
                    schema.ATTEMPTS: result.attempts,
                    schema.CONTENT_VERSION: result.content_version,
                    schema.NUM_CLIPS: num_clips,
                    # Split evenly so that summing any set of rows counts each video once.
                    schema.DECODE_SECONDS: seconds / num_clips,
                }
                for name, value in values.items():
                    rows[name].append(value)
        columns = {name: pa.array(rows[name], _ROW_TYPES[name]) for name in _ROW_TYPES}
        columns[schema.FRAMES] = schema.frames_array(frames)
        columns[schema.FRAME_INDICES] = pa.array(indices, pa.list_(pa.int32()))
        columns[schema.THUMBNAIL] = pa.array(thumbs, pa.binary())
        take = pa.array(np.asarray(source, np.int64) + first, pa.int64())
        for name in batch.column_names:
            if name not in _MANIFEST_COLUMNS and name not in columns:
                columns[name] = batch.column(name).take(take)
        return pa.table(columns)


class _ManifestRows:
    """The manifest columns of a batch as Python values, one list per column (nulls as None,
    an empty version as None, a bound that is not a number as NaN for the child to refuse)."""

    def __init__(self, batch: pa.Table) -> None:
        def values(name: str) -> list[Any]:
            if name not in batch.column_names:
                return [None] * len(batch)
            return batch.column(name).to_pylist()

        self.video_id = [str(v) for v in values(schema.VIDEO_ID)]
        self.uri = values(schema.URI)
        self.version = [str(v) if v not in (None, "") else None for v in values(schema.VERSION)]
        self.start_s = [_bound(v) for v in values(schema.START_S)]
        self.end_s = [_bound(v) for v in values(schema.END_S)]


def _bound(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan  # the worker turns a non-number bound into an error row
    return value if not math.isnan(value) else None
