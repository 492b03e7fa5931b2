"""Uploaded query media (sniffed, size-capped, staged privately) and catalog video bytes
(HTTP Range over local files and S3 objects).

Uploads are judged by their first bytes, never by the name or the `Content-Type` the
client sent; what passes is staged in a private temporary directory and decoded only by
the isolated decoder (its own process, memory cap and timeout, image or video demuxers
only). Catalog videos are served by the server itself: an S3 object is streamed as ranged
reads through the server's credentials rather than by a presigned URL, because a
presigned URL carries the access key id and lets the client reach the bucket directly.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

#: (offset, magic, kind, extension)
_MAGIC: tuple[tuple[int, bytes, str, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image", ".png"),
    (0, b"\xff\xd8\xff", "image", ".jpg"),
    (0, b"BM", "image", ".bmp"),
    (4, b"ftyp", "video", ".mp4"),  # MP4, MOV, 3GP, M4V
    (0, b"\x1a\x45\xdf\xa3", "video", ".mkv"),  # Matroska, WebM
    (0, b"\x00\x00\x01\xba", "video", ".mpg"),  # MPEG program stream
)
#: Bytes of an upload read before it is judged.
SNIFF_BYTES = 32
_CHUNK = 1 << 20


class UploadRejected(ValueError):
    """An upload that is too big (`status` 413) or of a type not taken (415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sniff(head: bytes) -> tuple[str, str] | None:
    """(`image` or `video`, file extension) of a file from its first bytes, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", ".webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", ".avi"
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:  # MPEG-TS sync bytes
        return "video", ".ts"
    for offset, magic, kind, ext in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if magic == b"BM" and len(head) < 14:
                continue
            return kind, ext
    return None


@dataclass
class StagedUpload:
    """An upload on disk in the server's private upload directory; `close()` removes it."""

    path: str
    kind: str
    size: int

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


async def stage_upload(
    chunks: AsyncIterator[bytes],
    expect: str,
    max_bytes: int,
    declared: int | None,
    directory: str,
) -> StagedUpload:
    """Write a request body to a private temporary file, checking size and type as it
    arrives (the declared `Content-Length` first, so an oversized upload is refused before
    its body is read).

    Args:
        chunks: the body.
        expect: `image` or `video`.
        max_bytes: most bytes taken.
        declared: the request's Content-Length, if any.
        directory: a private (0700) directory; one for the server, so a single decoder
            process, allowed only that directory, decodes every upload.

    Raises:
        UploadRejected: too big (413), empty, or not an image/video of the expected kind (415).
    """
    if declared is not None and declared > max_bytes:
        raise UploadRejected(413, f"the upload is {declared} bytes; at most {max_bytes} taken")
    name = os.path.join(directory, f"upload-{uuid.uuid4().hex}")
    out = None
    try:
        head, size, kind = b"", 0, None
        async for chunk in chunks:
            if not chunk:
                continue
            size += len(chunk)
            if size > max_bytes:
                raise UploadRejected(413, f"the upload exceeds {max_bytes} bytes")
            if out is None:
                head += chunk
                if len(head) < 189:
                    continue  # enough bytes to judge any format (MPEG-TS needs 189)
                kind, out = _open_staged(name, head, expect)
                continue
            out.write(chunk)
        if out is None:
            if not head:
                raise UploadRejected(415, "the upload is empty")
            kind, out = _open_staged(name, head, expect)
        out.close()
        return StagedUpload(out.name, kind, size)
    except BaseException:
        if out is not None:
            out.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out.name)
        raise


def _open_staged(name: str, head: bytes, expect: str):
    found = sniff(head)
    if found is None:
        raise UploadRejected(415, f"the upload is not a known {expect} format")
    kind, ext = found
    if kind != expect:
        raise UploadRejected(415, f"the upload is {kind} data; this endpoint takes {expect}")
    out = open(name + ext, "xb")  # noqa: SIM115 (closed by the caller)
    out.write(head)
    return kind, out


# ---- catalog video bytes ----------------------------------------------------------------
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def content_type(name: str) -> str:
    """MIME type of a video by its name (browsers need it to play the bytes)."""
    kind, _ = mimetypes.guess_type(name)
    return kind or "application/octet-stream"


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """The one byte range `[start, end]` a Range header asks for; None for the whole file
    (no header, or one the server ignores, e.g. several ranges); "unsatisfiable" when it
    lies outside the file."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match:
        return None  # several ranges or another unit: the whole file, as RFC 9110 allows
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, end


def s3_body(client, bucket: str, key: str, start: int, end: int) -> Iterator[bytes]:
    """Bytes `[start, end]` of an S3 object, streamed in 1 MiB chunks."""
    response = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")
    body = response["Body"]
    try:
        yield from body.iter_chunks(_CHUNK)
    finally:
        body.close()
