"""Object storage: the one place that knows how vidcat reaches S3 and local files.

:class:`S3Config` says where objects live and how hard to retry; every client vidcat uses
is made here from it, with that library's own retry mechanism configured:

* s3fs (video fetches: it exposes the ETag and pins ranged reads to it) and boto3
  (checkpoints) through botocore's `standard` retry mode,
* pyarrow's `S3FileSystem` (manifests, run files) with `AwsStandardS3RetryStrategy`,
* LanceDB's object store (`storage_options`) with its `client_max_retries` and
  `client_retry_timeout`.

Credentials come only from the standard AWS chain (environment, shared profile, IRSA web
identity); they are never stored here and never logged. The module also holds the small
JSON files vidcat keeps beside its tables (:func:`write_json`, :func:`read_json`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse, urlsplit

import pyarrow.fs as pafs

from .uris import redact_uri

logger = logging.getLogger(__name__)

#: Characters a `file://` URI would percent-decode or cut off while LanceDB, which takes the
#: text after `file://` literally, keeps them: such a URI names two different directories.
_AMBIGUOUS_IN_FILE_URI = ("%", "?", "#")


@dataclass(frozen=True)
class S3Config:
    """Where S3 objects live, and how transient errors are retried.

    Attributes:
        endpoint_url: `http://host[:port]` or `https://host[:port]` (MinIO, a test server);
            None for AWS.
        region: S3 region; None leaves it to each client's own lookup (AWS_DEFAULT_REGION /
            AWS_REGION, the profile, then us-east-1).
        anon: access S3 without credentials.
        max_attempts: tries per request (first try included) for throttling, 5xx and
            connection errors, in every client.
        retry_timeout_s: LanceDB's object store gives up retrying a request after this long.
    """

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    max_attempts: int = 5
    retry_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or not self.retry_timeout_s > 0:
            raise ValueError("invalid S3Config: max_attempts must be >= 1, retry_timeout_s > 0")
        # pyarrow, s3fs and LanceDB each parse the endpoint their own way. Without a scheme,
        # "127.0.0.1:9000" has no host for pyarrow, which then sent requests (and the AWS
        # credentials) to AWS itself; only a URL that all of them read alike is accepted.
        if not self.endpoint_url:
            return
        try:
            url = urlsplit(self.endpoint_url)
            url.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            url = None
        if (
            url is None
            or not self.endpoint_url.startswith(("http://", "https://"))
            or not url.hostname
            or "@" in url.netloc
            or url.path not in ("", "/")
            or url.query
            or url.fragment
        ):
            raise ValueError(
                "invalid S3 endpoint: it must be http://host[:port] or https://host[:port], "
                f"got {redact_uri(self.endpoint_url)!r}"
            )

    @classmethod
    def from_storage_options(cls, options: dict[str, str] | None) -> S3Config:
        """The config whose :meth:`storage_options` are `options` (endpoint, region, anon)."""
        opts = options or {}
        return cls(
            endpoint_url=opts.get("endpoint") or opts.get("aws_endpoint"),
            region=opts.get("region") or opts.get("aws_region"),
            anon=str(opts.get("skip_signature", "")).lower() == "true",
        )

    # ---- clients ------------------------------------------------------------------------
    def storage_options(self) -> dict[str, str]:
        """LanceDB / object_store `storage_options` (no secrets)."""
        opts = {
            "client_max_retries": str(self.max_attempts - 1),
            "client_retry_timeout": str(round(self.retry_timeout_s)),
        }
        if self.endpoint_url:
            opts["endpoint"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                opts["allow_http"] = "true"
        if self.region:
            opts["region"] = self.region
        if self.anon:
            opts["skip_signature"] = "true"
        return opts

    def _botocore_config(self) -> Any:
        from botocore import UNSIGNED
        from botocore.config import Config

        return Config(
            retries={"mode": "standard", "max_attempts": self.max_attempts},
            signature_version=UNSIGNED if self.anon else None,
            region_name=self.region,
        )

    def s3fs(self) -> Any:
        """An `s3fs.S3FileSystem` for this endpoint (video fetches).

        s3fs rather than `pyarrow.fs.S3FileSystem`: the fetch must record the object's ETag
        and read exactly that version, and s3fs exposes the ETag of its HEAD and sends
        `If-Match` on every ranged GET, while pyarrow's `FileInfo` has no ETag. Requests are
        retried by botocore; s3fs's own loop (default 5) retries a body read that broke off.
        """
        import s3fs  # deferred: the decode child and CPU-only callers never need it

        client_kwargs = {"region_name": self.region} if self.region else {}
        return s3fs.S3FileSystem(
            anon=self.anon,
            endpoint_url=self.endpoint_url,
            client_kwargs=client_kwargs,
            config_kwargs={"retries": {"mode": "standard", "max_attempts": self.max_attempts}},
            use_listings_cache=False,
        )

    def client(self) -> Any:
        """A boto3 S3 client (checkpoint downloads, presigning)."""
        import boto3  # deferred: only remote objects need it

        return boto3.client("s3", endpoint_url=self.endpoint_url, config=self._botocore_config())

    def arrow_filesystem(self) -> pafs.S3FileSystem:
        """pyarrow's S3 filesystem (manifests, run files); without a region, pyarrow looks
        it up itself (AWS_DEFAULT_REGION / AWS_REGION, the profile, then us-east-1)."""
        kwargs: dict[str, Any] = {
            "anonymous": self.anon,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=self.max_attempts),
        }
        if self.region:
            kwargs["region"] = self.region
        if self.endpoint_url:
            # __post_init__ admits only http(s)://host[:port], so the override is never empty.
            endpoint = urlparse(self.endpoint_url)
            kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme)
        return pafs.S3FileSystem(**kwargs)


def check_db_uri(uri: str) -> None:
    """Refuse a table location that the run files could not be written beside.

    LanceDB opens more schemes than the run files' pyarrow filesystems do, so a `gs://` table
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


def filesystem_for(uri: str, s3: S3Config) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and in-filesystem path of a local path or `s3://` URI.

    A `file://` URI's path is the text after `file://`, as LanceDB reads it.

    Raises:
        ValueError: from :func:`check_db_uri`.
    """
    check_db_uri(uri)
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return s3.arrow_filesystem(), f"{parsed.netloc}{parsed.path}"
    return pafs.LocalFileSystem(), local_path(uri)


def local_path(uri: str) -> str:
    """The absolute path of a local location (a plain path or `file:///path`)."""
    parsed = urlparse(uri)
    return os.path.abspath(parsed.path if parsed.scheme else uri)


def is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


def write_json(uri: str, payload: Any, s3: S3Config) -> None:
    """Write `payload` as indented JSON, atomically on local disks (temp file + rename)."""
    write_bytes(uri, json.dumps(payload, indent=2, sort_keys=True, default=str).encode(), s3)


def write_bytes(uri: str, data: bytes, s3: S3Config) -> None:
    """Write a small file, atomically on local disks (temp file + rename); one PUT on S3."""
    fs, path = filesystem_for(uri, s3)
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
