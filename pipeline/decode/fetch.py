"""Fetching a video for the decoder: local files in place, S3 objects into private temp files.

The content version of what is fetched is recorded (the manifest's `version`, else the S3
ETag or a local file's size and mtime), and files larger than `DecodeConfig.max_bytes` are
refused from their size alone, before any byte is read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

from ..schema import Status
from ..uris import ResolvedUri, UriRejected, resolve_uri
from .config import DecodeConfig
from .protocol import describe
from .result import Failure

_COPY_BLOCK = 8 << 20


def local_version(st: os.stat_result) -> str:
    """Content version of a local file without a manifest version: size and mtime."""
    return f"{st.st_size}-{st.st_mtime_ns}"


def content_version_of(uri: str, config: DecodeConfig, fs: Any = None) -> str | None:
    """The content version decode would record for `uri`, from metadata alone.

    A stat for local files, a HEAD (the ETag) for S3 objects: never the bytes. None when
    the URI is rejected or the object cannot be stat'ed (decode will record why).
    """
    try:
        resolved = resolve_uri(uri, config.allowed_roots, config.base_dir)
    except UriRejected:
        return None
    try:
        if resolved.kind == "local":
            return local_version(os.stat(resolved.path))
        fs = fs or config.s3.s3fs()
        return str(fs.info(f"{resolved.bucket}/{resolved.key}").get("ETag", "")).strip('"') or None
    except Exception:  # missing, denied, network: not a version
        return None


class Fetcher:
    """Gives the decoder a local path for a resolved URI (one S3 client, made on first use)."""

    def __init__(self, config: DecodeConfig) -> None:
        self.config = config
        self._fs: Any = None

    @contextlib.contextmanager
    def fetch(self, resolved: ResolvedUri, version: str | None) -> Iterator[tuple[str, str | None]]:
        """Yield a local path and the content version (None when S3 gave no ETag); S3
        objects go to a 0600 temp file that is deleted on the way out, whatever happened to
        the child.

        Raises:
            Failure: `fetch_error` (retryable unless the object is missing or denied) or
                `resolution_exceeded` (the file is larger than `max_bytes`).
        """
        if resolved.kind == "local":
            try:
                st = os.stat(resolved.path)
            except OSError as exc:
                retry = not isinstance(exc, FileNotFoundError | PermissionError)
                raise Failure(Status.FETCH_ERROR, describe(exc), retryable=retry) from None
            if not stat.S_ISREG(st.st_mode):
                raise Failure(Status.FETCH_ERROR, "not a regular file", retryable=False)
            self._check_size(st.st_size, version or local_version(st))
            yield resolved.path, version or local_version(st)
            return
        ext = os.path.splitext(resolved.key)[1]
        suffix = ext if len(ext) <= 8 and ext[1:].isalnum() else ""
        fd, tmp = tempfile.mkstemp(prefix="vidcat-", suffix=suffix, dir=self.config.temp_dir)
        try:
            # Owned by a file object at once, so every way out below closes the descriptor.
            with os.fdopen(fd, "wb") as dst:
                try:
                    etag = self._download(resolved, dst, version)
                except Failure:
                    raise
                except Exception as exc:  # s3fs/botocore raise many types; all fetch errors
                    retry = not isinstance(exc, FileNotFoundError | PermissionError)
                    raise Failure(Status.FETCH_ERROR, describe(exc), retryable=retry) from None
            yield tmp, version or etag or None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _download(self, resolved: ResolvedUri, dst: BinaryIO, version: str | None) -> str:
        if self._fs is None:
            self._fs = self.config.s3.s3fs()
        path = f"{resolved.bucket}/{resolved.key}"
        with self._fs.open(path, "rb", block_size=_COPY_BLOCK) as src:
            # Opening reads the object's metadata (a HEAD), no bytes: the size is checked
            # before any GET.
            etag = str(src.details.get("ETag", "")).strip('"')
            self._check_size(src.size, version or etag)
            # s3fs pins every ranged GET to this ETag (If-Match), so the bytes match it.
            shutil.copyfileobj(src, dst, _COPY_BLOCK)
            return etag

    def _check_size(self, size: int, content_version: str) -> None:
        if size > self.config.max_bytes:
            failure = Failure(
                Status.RESOLUTION_EXCEEDED,
                f"file of {size} bytes exceeds max_bytes {self.config.max_bytes}",
                retryable=False,
            )
            failure.content_version = content_version  # a new version is worth a new try
            raise failure
