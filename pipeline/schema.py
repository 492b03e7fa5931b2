"""The data contract: column names, Arrow types and status values of every table vidcat owns.

Other modules import names from here instead of spelling column strings themselves, so a
rename is one edit and `docs/table-schema.md` has one source to follow.
"""

from __future__ import annotations

import enum

import numpy as np
import pyarrow as pa

#: Width of the shared video/text embedding space (InternVideo2 stage-2 projections).
EMBED_DIM = 512
#: Bumped whenever a column is added, removed or changes meaning; stored in table metadata.
SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"vidcat.schema_version"

# ---- manifest -------------------------------------------------------------------------
VIDEO_ID = "video_id"
URI = "uri"
VERSION = "version"
START_S = "start_s"
END_S = "end_s"
MANIFEST_REQUIRED = (VIDEO_ID, URI)
MANIFEST_OPTIONAL = (VERSION, START_S, END_S)

# ---- embeddings table -----------------------------------------------------------------
CLIP_ID = "clip_id"
CLIP_INDEX = "clip_index"
CLIP_START_S = "clip_start_s"
CLIP_END_S = "clip_end_s"
EMBEDDING = "embedding"
MODEL = "model"
SIGNATURE = "signature"
NUM_FRAMES = "num_frames"
FRAME_INDICES = "frame_indices"
DECODER = "decoder"
CONTENT_VERSION = "content_version"
EMBEDDED_AT = "embedded_at"

# ---- errors table ---------------------------------------------------------------------
STATUS = "status"
MESSAGE = "message"
ATTEMPTS = "attempts"
FAILED_AT = "failed_at"

# ---- thumbnail side table (what pages show) ----------------------------------------------
#: A JPEG of the clip's middle sampled frame, aspect ratio kept (`DecodeConfig.thumbnail_size`
#: on its long side); in flight from decode to the sink, then in `<table>_thumbnails`.
THUMBNAIL = "thumbnail"

# ---- near-duplicates table (`vidcat dedup`) -------------------------------------------
GROUP_ID = "group_id"
GROUP_SIZE = "group_size"
REPRESENTATIVE_CLIP_ID = "representative_clip_id"
SIMILARITY = "similarity"
VIDEO_CLIPS = "video_clips"
RUN_ID = "run_id"

# ---- vision-token side table (opt-in, for re-ranking) ----------------------------------
VISION_TOKENS = "vision_tokens"
VISION_TOKENS_SHAPE = "vision_tokens_shape"

#: In-flight column carrying decoded frames between the decode and embed stages, an Arrow
#: fixed-shape tensor of uint8 `[T, size, size, 3]` per clip (:func:`frames_array`); never
#: written to a table.
FRAMES = "frames"
#: In-flight column: rows (clips, or 1 for a failure) the row's video produced in total, so
#: the driver can regroup a video whose clips were split across embed batches.
NUM_CLIPS = "num_clips"
#: In-flight timing columns summed into the run report.
DECODE_SECONDS = "decode_seconds"
EMBED_SECONDS = "embed_seconds"


#: Identifying columns of every search result row (before `score` and metadata).
RESULT_COLUMNS = (CLIP_ID, VIDEO_ID, CLIP_INDEX, CLIP_START_S, CLIP_END_S, URI)


class Status(enum.StrEnum):
    """Outcome of one manifest row. Everything but ``OK`` becomes an errors-table row."""

    OK = "ok"
    URI_REJECTED = "uri_rejected"  # scheme/path not allowed; no request was made
    FETCH_ERROR = "fetch_error"  # object missing, access denied, network failure
    PROBE_FAILED = "probe_failed"  # container unreadable (0-byte, random bytes, truncated header)
    NO_VIDEO_STREAM = "no_video_stream"  # e.g. audio-only file
    TOO_FEW_FRAMES = "too_few_frames"  # fewer decodable frames than the clip needs (0)
    RESOLUTION_EXCEEDED = "resolution_exceeded"  # width/height/duration/file size beyond the limits
    DECODE_ERROR = "decode_error"  # both decoders raised
    DECODER_CRASH = "decoder_crash"  # the isolated decode process died (segfault, abort)
    TIMEOUT = "timeout"  # the isolated decode process exceeded its wall-clock budget
    OOM = "oom"  # the isolated decode process hit its memory cap
    EMBED_ERROR = "embed_error"  # the model raised on this clip's batch


#: Failures worth retrying on the next incremental run (transient by nature). `embed_error`
#: is a batch the model raised on (device out of memory, driver error) or clips lost in the
#: pipeline; a video whose embedding is non-finite again costs one more embed per run.
RETRYABLE = frozenset(
    {Status.FETCH_ERROR, Status.TIMEOUT, Status.DECODER_CRASH, Status.EMBED_ERROR}
)


def range_version(version: str | None, start_s: float | None, end_s: float | None) -> str | None:
    """The `content_version` recorded for a manifest row: the object's version, followed by a
    media fragment `#t=start,end` when the row restricts the range, so that editing a row's
    `start_s`/`end_s` re-embeds it. An unknown version (None or "") stays as it is.

    >>> range_version("etag", 10.0, None)
    'etag#t=10.0,'
    """
    if not version or (start_s is None and end_s is None):
        return version

    def bound(value: float | None) -> str:
        return "" if value is None else repr(float(value))

    return f"{version}#t={bound(start_s)},{bound(end_s)}"


def embeddings_schema(metadata_fields: tuple[pa.Field, ...] = ()) -> pa.Schema:
    """Arrow schema of the embeddings table.

    Args:
        metadata_fields: manifest columns carried through as metadata, appended at the end.
    """
    fields = [
        pa.field(CLIP_ID, pa.string(), nullable=False),
        pa.field(VIDEO_ID, pa.string(), nullable=False),
        pa.field(CLIP_INDEX, pa.int32(), nullable=False),
        pa.field(CLIP_START_S, pa.float64()),
        pa.field(CLIP_END_S, pa.float64()),
        pa.field(URI, pa.string(), nullable=False),
        pa.field(EMBEDDING, pa.list_(pa.float32(), EMBED_DIM), nullable=False),
        pa.field(MODEL, pa.string(), nullable=False),
        pa.field(SIGNATURE, pa.string(), nullable=False),
        pa.field(NUM_FRAMES, pa.int32(), nullable=False),
        pa.field(FRAME_INDICES, pa.list_(pa.int32())),
        pa.field(DECODER, pa.string()),
        pa.field(CONTENT_VERSION, pa.string()),
        pa.field(EMBEDDED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
        *metadata_fields,
    ]
    return pa.schema(fields, metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()})


def errors_schema() -> pa.Schema:
    """Arrow schema of the `<table>_errors` table: one row per failed video."""
    return pa.schema(
        [
            pa.field(VIDEO_ID, pa.string(), nullable=False),
            pa.field(URI, pa.string(), nullable=False),
            pa.field(STATUS, pa.string(), nullable=False),
            pa.field(MESSAGE, pa.string()),
            pa.field(ATTEMPTS, pa.int32(), nullable=False),
            pa.field(CONTENT_VERSION, pa.string()),
            pa.field(SIGNATURE, pa.string()),
            pa.field(DECODER, pa.string()),
            pa.field(FAILED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
        ],
        metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()},
    )


def vision_tokens_schema() -> pa.Schema:
    """Arrow schema of the optional `<table>_vision_tokens` side table.

    Tokens are the vision encoder's final hidden states `[1 + 256*T, 1408]` stored as raw
    bfloat16 bytes (Arrow has no bf16 type) with their shape beside them.
    """
    return pa.schema(
        [
            pa.field(CLIP_ID, pa.string(), nullable=False),
            pa.field(VIDEO_ID, pa.string(), nullable=False),
            pa.field(SIGNATURE, pa.string(), nullable=False),
            pa.field(VISION_TOKENS, pa.large_binary(), nullable=False),
            pa.field(VISION_TOKENS_SHAPE, pa.list_(pa.int32(), 2), nullable=False),
        ],
        metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()},
    )


def thumbnails_schema() -> pa.Schema:
    """Arrow schema of the `<table>_thumbnails` side table: one JPEG per clip."""
    return pa.schema(
        [
            pa.field(CLIP_ID, pa.string(), nullable=False),
            pa.field(VIDEO_ID, pa.string(), nullable=False),
            pa.field(THUMBNAIL, pa.binary(), nullable=False),
        ],
        metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()},
    )


def duplicates_schema() -> pa.Schema:
    """Arrow schema of the `<table>_duplicates` table: one row per clip that has at least
    one near-duplicate (docs/table-schema.md)."""
    return pa.schema(
        [
            pa.field(CLIP_ID, pa.string(), nullable=False),
            pa.field(VIDEO_ID, pa.string(), nullable=False),
            pa.field(EMBEDDED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field(GROUP_ID, pa.string(), nullable=False),
            pa.field(GROUP_SIZE, pa.int32(), nullable=False),
            pa.field(REPRESENTATIVE_CLIP_ID, pa.string(), nullable=False),
            pa.field(SIMILARITY, pa.float32(), nullable=False),
            pa.field(VIDEO_CLIPS, pa.int32(), nullable=False),
            pa.field(RUN_ID, pa.string(), nullable=False),
        ],
        metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()},
    )


def clip_id(video_id: str, clip_index: int) -> str:
    """Stable key of one clip: the video id and the clip's ordinal within it."""
    return f"{video_id}#{clip_index:05d}"


def errors_table_name(table: str) -> str:
    return f"{table}_errors"


def vision_tokens_table_name(table: str) -> str:
    return f"{table}_vision_tokens"


def thumbnails_table_name(table: str) -> str:
    return f"{table}_thumbnails"


def duplicates_table_name(table: str) -> str:
    return f"{table}_duplicates"


# ---- Arrow helpers for the in-flight columns -------------------------------------------


def fixed_size_list(values: np.ndarray, mask: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """`[N, D]` numbers as an Arrow `fixed_size_list<D>` column (no copy when contiguous),
    null where `mask` `[N]` is True."""
    values = np.ascontiguousarray(values)
    if values.ndim != 2:
        raise ValueError(f"expected a [N, D] array, got shape {values.shape}")
    nulls = None if mask is None else pa.array(mask, pa.bool_())
    return pa.FixedSizeListArray.from_arrays(
        pa.array(values.reshape(-1)), values.shape[1], mask=nulls
    )


def frames_array(frames: np.ndarray) -> pa.ExtensionArray:
    """uint8 frames `[N, T, H, W, 3]` as an Arrow fixed-shape tensor column (no copy)."""
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 5:
        raise ValueError(
            f"expected uint8 [N, T, H, W, 3] frames, got {frames.dtype} {frames.shape}"
        )
    tensor = pa.fixed_shape_tensor(pa.uint8(), list(frames.shape[1:]))
    storage = fixed_size_list(frames.reshape(len(frames), int(np.prod(frames.shape[1:]))))
    return pa.ExtensionArray.from_storage(tensor, storage)


def frames_ndarray(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A :func:`frames_array` column back as uint8 `[N, T, H, W, 3]` (no copy for one chunk)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not isinstance(column.type, pa.FixedShapeTensorType):
        raise TypeError(f"{FRAMES} must be an Arrow fixed-shape tensor column, got {column.type}")
    return column.to_numpy_ndarray()
