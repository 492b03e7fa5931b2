"""What the parent and the decoder child agree on: message framing and shared constants.

The pipe carries a small JSON header plus raw frame bytes in both directions, never
pickles: the child parses hostile input, so the parent must not execute what it sends back.
This module imports nothing heavy, so both sides can use it.
"""

from __future__ import annotations

import json
import math
import select
import struct
import time
from collections.abc import Callable
from typing import Any, BinaryIO

#: Decoders the child knows; the configured one is tried first, the other is the fallback.
DECODERS = ("decord", "pyav")
#: Which frames a clip gets: "exact" the middle rule's frames; "keyframe" (approximate,
#: PyAV only) the keyframe nearest each of them within its segment, where there is one.
SAMPLINGS = ("exact", "keyframe")
#: Test hooks executed inside the child; reachable only through DecodeConfig, never a manifest.
FAULT_MODES = frozenset(
    {"hang", "segfault", "oom", "bad_alloc", "decord_error", "pyav_error", "decoders_error"}
)
#: Text of allocation failures that do not surface as MemoryError: torch's allocator, FFmpeg's
#: ENOMEM, an uncaught C++ std::bad_alloc (which aborts the child; found in its stderr).
ALLOCATION_FAILURES = ("bad_alloc", "allocate memory")
#: Largest thumbnail the parent accepts from the child (a JPEG of a 256-px frame is ~10 KB).
MAX_THUMBNAIL_BYTES = 1 << 20
#: Smallest step between consecutive clip windows (a 1 ms step gave thousands of windows per
#: video), and the shortest trailing window kept when a video has others.
MIN_CLIP_STRIDE_S = 1.0

_HEADER = struct.Struct(">IQ")  # header length, payload length
_MAX_HEADER_BYTES = 64 << 20


def write_message(out: BinaryIO, header: dict, *payload: Any) -> None:
    """Send a JSON header and a raw payload: the parts given (bytes or C-contiguous arrays),
    one after the other, without joining them first."""
    data = json.dumps(header).encode()
    views = [memoryview(part).cast("B") for part in payload]
    out.write(_HEADER.pack(len(data), sum(v.nbytes for v in views)))
    out.write(data)
    for view in views:
        out.write(view)
    out.flush()


def _read_exact(stream: BinaryIO, size: int, deadline: float) -> bytearray:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        remaining = None if deadline == math.inf else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError
        if not select.select([stream], [], [], remaining)[0]:
            raise TimeoutError
        n = stream.readinto(view[got:])
        if not n:
            raise EOFError
        got += n
    return buf


def read_message(
    stream: BinaryIO,
    deadline: float = math.inf,
    validate: Callable[[dict, int], None] | None = None,
) -> tuple[dict, bytearray]:
    """Receive one message from a raw (unbuffered) pipe.

    Args:
        stream: raw binary stream, so `select` sees every byte not yet read.
        deadline: `time.monotonic()` value; past it `TimeoutError` is raised.
        validate: called with the header and the announced payload size before the payload
            is allocated; raises `ValueError` to refuse it.

    Raises:
        TimeoutError, EOFError (the peer died), ValueError (malformed message).
    """
    header_len, payload_len = _HEADER.unpack(_read_exact(stream, _HEADER.size, deadline))
    if header_len > _MAX_HEADER_BYTES:
        raise ValueError(f"header of {header_len} bytes")
    header = json.loads(_read_exact(stream, header_len, deadline))
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    if validate is not None:
        validate(header, payload_len)
    return header, _read_exact(stream, payload_len, deadline)


def describe(exc: BaseException, limit: int = 1000) -> str:
    """`Type: message` of an exception, cut to `limit` characters."""
    return f"{type(exc).__name__}: {exc}"[:limit]
