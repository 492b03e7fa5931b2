"""Small files beside the table (run reports, resolved configs), local or on S3."""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from .decode import S3Config
from .uris import redact_uri

logger = logging.getLogger(__name__)

#: Characters a `file://` URI would percent-decode or cut off while LanceDB, which takes the
#: text after `file://` literally, keeps them: such a URI names two different directories.
_AMBIGUOUS_IN_FILE_URI = ("%", "?", "#")


def check_db_uri(uri: str) -> None:
    """Refuse a table location that the run reports could not be written beside.

    LanceDB opens more schemes than the reports' pyarrow filesystems do, so a `gs://` table
    would fail only when the run report is written, after all the work.

    Raises:
        ValueError: `uri` is not a local path, `file:///absolute/path` or `s3://bucket/...`.
    """
    parsed = urlparse(uri)
    scheme = parsed.scheme
    if scheme == "s3" and not parsed.netloc:
        raise ValueError(f"s3 location has no bucket: {redact_uri(uri)}")
    if scheme == "file" and (
        not uri.startswith("file:///") or any(c in uri for c in _AMBIGUOUS_IN_FILE_URI)
    ):
        raise ValueError(
            f"file location must be file:///absolute/path without a host, '%', '?' or '#' "
            f"(or a plain local path): {redact_uri(uri)}"
        )
    if scheme not in ("", "file", "s3"):
        raise ValueError(
            f"unsupported storage scheme {scheme!r} (use a local path, file:// or s3://): "
            f"{redact_uri(uri)}"
        )


def s3_filesystem(s3: S3Config) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem for `s3`; without a region, pyarrow looks it up itself
    (AWS_DEFAULT_REGION / AWS_REGION, the profile, then us-east-1)."""
    kwargs: dict[str, Any] = {"anonymous": s3.anon}
    if s3.region:
        kwargs["region"] = s3.region
    if s3.endpoint_url:
        # S3Config admits only http(s)://host[:port], so the override is never empty.
        endpoint = urlparse(s3.endpoint_url)
        kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme)
    return pafs.S3FileSystem(**kwargs)


def filesystem_for(uri: str, s3: S3Config) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and in-filesystem path of a local path or `s3://` URI.

    A `file://` URI's path is the text after `file://`, as LanceDB reads it.

    Raises:
        ValueError: from :func:`check_db_uri`.
    """
    check_db_uri(uri)
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return s3_filesystem(s3), f"{parsed.netloc}{parsed.path}"
    return pafs.LocalFileSystem(), os.path.abspath(parsed.path if parsed.scheme else uri)


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
