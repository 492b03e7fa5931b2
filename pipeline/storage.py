"""Small files beside the table (run reports, resolved configs), local or on S3."""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from .decode import S3Config

logger = logging.getLogger(__name__)


def filesystem_for(uri: str, s3: S3Config) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and in-filesystem path of a local path or `s3://` URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        kwargs: dict[str, Any] = {"anonymous": s3.anon, "region": s3.region or "us-east-1"}
        if s3.endpoint_url:
            ep = urlparse(s3.endpoint_url)
            kwargs.update(endpoint_override=ep.netloc, scheme=ep.scheme or "https")
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}"
    if parsed.scheme in ("", "file"):
        return pafs.LocalFileSystem(), os.path.abspath(parsed.path if parsed.scheme else uri)
    raise ValueError(f"unsupported storage scheme {parsed.scheme!r}")


def write_json(uri: str, payload: Any, s3: S3Config) -> None:
    """Write `payload` as indented JSON, atomically on local disks (temp file + rename)."""
    fs, path = filesystem_for(uri, s3)
    data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
    fs.create_dir(os.path.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)
    logger.debug("wrote %s", path)


def read_json(uri: str, s3: S3Config) -> Any:
    fs, path = filesystem_for(uri, s3)
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())
