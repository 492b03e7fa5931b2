"""Which manifest URIs vidcat may read, and how they are shown.

Every URI is checked here before anything touches the filesystem or the network: only
`s3://bucket/key`, `file:///abs/path` and plain paths under an allowed root pass. The
checks are pure string work plus `os.path.realpath` (which follows symlinks with
`lstat`/`readlink`, never `open`), so a rejected URI costs no request and no file open.

:func:`redact_uri` is applied to every URI that reaches a table, a log line or an error
message, and :func:`redact_text` to free text that may quote one, so credentials or
presigned-URL signatures pasted into a manifest (with or without a scheme) never leak.
:func:`redact_values` applies :func:`redact_uri` to every string of a JSON-like value
(a resolved config), so a secret that free-text scanning would miss is still hidden.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# RFC 3986 scheme; a single letter followed by ':' is treated as a scheme too.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
# Lenient S3 bucket rule (AWS plus legacy/MinIO names): no ':', '@', '/' or spaces.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._\-]{1,254}$")
_MAX_SHOWN = 1024
# Free text is scanned token by token (linear time whatever the text): a token ends at
# whitespace, a quote or an angle bracket; a URI starts at a scheme or at "//".
_TOKEN = re.compile(r"[^\s'\"<>]+")
_URI_START = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*:|//")
# Userinfo that token scanning would cut short (a password holding a space, quote or angle
# bracket): from "scheme://" to the last "@" before the next "/" on the same line, and
# before any bracket or brace (never in userinfo; FFmpeg writes "[tcp @ 0x55d0]"). Each
# scan stops at a "/", which every "scheme://" holds, so scans never overlap: linear time.
_SPLIT_USERINFO = re.compile(r"(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]*://)([^/\r\n\[\]{}]*)@")
_TOKEN_BREAK = re.compile(r"[\s'\"<>]")
_QUERY_MARK = re.compile(r"[?#]")


class UriRejected(ValueError):
    """A URI vidcat refuses to read. The message holds only the redacted URI."""


@dataclass(frozen=True)
class ResolvedUri:
    """Where one video lives, after validation.

    Attributes:
        kind: "s3" or "local".
        bucket: S3 bucket ("" for local files).
        key: S3 object key ("" for local files).
        path: absolute, symlink-free local path ("" for S3 objects).
    """

    kind: Literal["s3", "local"]
    bucket: str = ""
    key: str = ""
    path: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.kind == "s3" else self.path


def _printable(text: str) -> str:
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "...(truncated)"


def redact_uri(uri: object) -> str:
    """A URI that is safe to store or log.

    Userinfo becomes `***@`, a query string `?***` and a fragment `#***`; control
    characters are escaped and very long values truncated. Without a scheme,
    `//user:secret@host/key` keeps only the host and path, and a query string or fragment
    is hidden only when it looks like parameters: everything from the first `?` or `#` on
    becomes `?***`/`#***` when an `=` follows it (`bucket/v.mp4?X-Amz-Signature=...`, a
    presigned URL pasted without its scheme; `v.mp4#access_token=...`). A local file named
    `/data/Episode #3.mp4` or `/data/what?.mp4` keeps its name, so its row can be decoded
    again; a bare `?token` without `=` is kept too. An `@` in a path is kept. Valid `s3://`
    and `file://` URIs come back unchanged, so the redacted URI of a row that was embedded
    can be decoded again.
    """
    if not isinstance(uri, str):
        return f"<{type(uri).__name__}>"
    match = _SCHEME.match(uri)
    head, rest = (uri[: match.end()], uri[match.end() :]) if match else ("", uri)
    # Without a scheme the string may be a local file whose name holds a "?" or "#".
    params_only = not head
    if not rest.startswith("//"):
        if head and "@" in rest:  # "scheme:opaque": hide anything that looks like userinfo
            rest = "***@" + rest.rpartition("@")[2]
        return _printable(head + _strip_query(rest, params_only))
    # The authority ends at the first "/" here, not at "?" or "#", so a secret holding
    # those characters is still hidden.
    authority, slash, path = rest[2:].partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    elif ":" in authority and "@" in path:
        # "user:secret/with/slashes@host/..." splits the secret at its first "/"; a valid
        # s3 bucket never holds ":", so hiding everything up to the last "@" is safe.
        authority, slash, path = "***@" + path.rpartition("@")[2], "", ""
    return _printable(head + "//" + _strip_query(authority + slash + path, params_only))


#: Characters `redact_uri` may change (userinfo, query, fragment, anything non-printable or
#: non-ASCII): a URI without any of them and at most `_MAX_SHOWN` long comes back as is.
#: Rows that match but need no change (a file named "Episode #3.mp4") come back as is too.
_NEEDS_REDACTION = r"[@?#]|[^\x20-\x7e]"


def redact_uris(uris: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`redact_uri` over a string column, in Arrow: only rows that may change are touched.

    Nulls stay null. A catalog's URIs are almost all plain `s3://bucket/key`s, so a
    10M-row column costs one regex scan instead of 10M Python calls.
    """
    if isinstance(uris, pa.ChunkedArray):
        uris = uris.combine_chunks()
    uris = uris.cast(pa.string())
    suspect = pc.or_(
        pc.match_substring_regex(uris, _NEEDS_REDACTION),
        pc.greater(pc.utf8_length(uris), _MAX_SHOWN),
    )
    rows = np.flatnonzero(pc.fill_null(suspect, False).to_numpy(zero_copy_only=False))
    if not len(rows):
        return uris
    values = uris.to_pylist()
    for r in rows:
        values[r] = redact_uri(values[r])
    return pa.array(values, pa.string())


def redact_values(value: Any) -> Any:
    """A JSON-like value (dicts, lists, scalars) with `redact_uri` applied to every string.

    For structured data such as a resolved config, where each URI is a whole string: a
    secret holding a space or a quote, which `redact_text` may miss, is hidden too. Keys,
    numbers, booleans and None are kept, and so are strings without userinfo, parameters
    or control characters ("decord", "incremental", "7 days, 0:00:00", paths).
    """
    if isinstance(value, dict):
        return {k: redact_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_values(v) for v in value]
    return redact_uri(value) if isinstance(value, str) else value


def redact_text(text: str) -> str:
    """Free text (an error message, a log line) with `redact_uri` applied to every URI in it.

    Text is scanned token by token, a token ending at whitespace, a quote or an angle
    bracket. A URI is the rest of a token from a `scheme:` or a `//` on, or a whole token
    whose query or fragment follows a `/` or holds a `=` (`bucket/v.mp4?X-Amz-Signature=`).
    Tokens without `@`, `?` or `#` stay as they are, and so does FFmpeg's "Stream #0:0".

    Userinfo `user:secret` whose secret holds one of those breaks is caught only after a
    scheme and within one line: from `scheme://` to the last `@` before the next `/`
    becomes `scheme://***@` (`s3://AKIA:se'cret@bucket/k`). Hence the limits: without a
    scheme (`//user:p w@host/k`) such a secret is shown, and so may be one whose user
    name holds a break or that holds both a break and a `/`, `[`, `]`, `{` or `}`
    (`s3://AKIA:wJal/rX Ut@bucket/k`); and a path-less URL with a port followed on its
    line by an `@` before any `/` (`http://h:9000 or me@x.org`) loses the text between
    them. Structured values (a config) should go through `redact_values` instead.
    """
    return _TOKEN.sub(_redact_token, _SPLIT_USERINFO.sub(_redact_split_userinfo, text))


def _redact_split_userinfo(match: re.Match) -> str:
    userinfo = match.group(2)
    split = _TOKEN_BREAK.search(userinfo)
    # No break: one token, left to `_redact_token`. No "user:" before the break: prose
    # ("s3://bucket failed for me@x.org"), not userinfo.
    if split is None or ":" not in userinfo[: split.start()]:
        return match.group()
    return match.group(1) + "***@"


def _redact_token(match: re.Match) -> str:
    token = match.group()
    if "@" not in token and "?" not in token and "#" not in token:
        return token
    start = _URI_START.search(token)
    if start is not None:
        return token[: start.start()] + redact_uri(token[start.start() :])
    mark = min(i for i in (token.find("?"), token.find("#"), len(token)) if i >= 0)
    if "/" in token[:mark] or "=" in token[mark:]:
        return redact_uri(token)
    return token  # an "@" in a path is not userinfo


def _strip_query(text: str, params_only: bool = False) -> str:
    """`text` up to its first `?` or `#`, followed by that mark and `***`.

    With `params_only`, unchanged unless an `=` follows the mark: a local file name may
    hold a `?` or `#`, a query string or fragment worth hiding holds parameters.
    """
    mark = _QUERY_MARK.search(text)
    if mark is None or (params_only and "=" not in text[mark.end() :]):
        return text
    return text[: mark.end()] + "***"


def resolve_uri(
    uri: str, allowed_roots: tuple[str, ...] = (), base_dir: str | None = None
) -> ResolvedUri:
    """Validate a manifest URI and say where it points.

    Args:
        uri: `s3://bucket/key`, `file:///abs/path`, an absolute path, or a path relative
            to `base_dir`.
        allowed_roots: local directories videos may be read from; a local path must lie
            inside one of them after symlinks and `..` are resolved. Empty means no local
            file is allowed.
        base_dir: directory (local path or `s3://bucket/prefix`) that relative URIs are
            resolved against, normally the manifest's directory. Without it, relative URIs
            are rejected.

    Raises:
        UriRejected: scheme other than s3/file, credentials, query string or fragment,
            empty bucket or key, `file://` with a host, NUL byte, or a local path outside
            every allowed root.
    """
    shown = redact_uri(uri)
    if not isinstance(uri, str) or not uri:
        raise UriRejected(f"empty or non-string uri: {shown}")
    if "\x00" in uri:
        raise UriRejected(f"NUL byte in uri: {shown}")
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme == "s3":
        return _resolve_s3(uri[match.end() :], shown)
    if scheme == "file":
        return _resolve_local(_file_uri_path(uri[match.end() :], shown), allowed_roots, shown)
    if scheme:
        raise UriRejected(f"scheme {scheme!r} is not allowed (only s3 and file): {shown}")
    if os.path.isabs(uri):
        return _resolve_local(uri, allowed_roots, shown)
    if base_dir is None:
        raise UriRejected(f"relative uri without a base directory: {shown}")
    if base_dir.lower().startswith("s3://"):
        bucket, _, prefix = base_dir[5:].partition("/")
        prefix = posixpath.normpath(prefix) if prefix.strip("/") else ""
        key = posixpath.normpath(posixpath.join(prefix, uri))
        if not key.startswith(prefix + "/" if prefix else "") or key.split("/")[0] == "..":
            raise UriRejected(f"relative uri escapes its base prefix: {shown}")
        return _resolve_s3(f"//{bucket}/{key}", shown)
    return _resolve_local(os.path.join(base_dir, uri), allowed_roots, shown)


def _resolve_s3(rest: str, shown: str) -> ResolvedUri:
    if not rest.startswith("//"):
        raise UriRejected(f"s3 uri must look like s3://bucket/key: {shown}")
    if "?" in rest or "#" in rest:
        raise UriRejected(f"query strings and fragments are not allowed on s3 uris: {shown}")
    bucket, _, key = rest[2:].partition("/")
    if "@" in bucket:
        raise UriRejected(f"credentials in uri are not allowed: {shown}")
    if not _BUCKET.match(bucket):
        raise UriRejected(f"invalid or empty bucket: {shown}")
    if not key or key.endswith("/"):
        raise UriRejected(f"empty object key: {shown}")
    return ResolvedUri(kind="s3", bucket=bucket, key=key)


def _file_uri_path(rest: str, shown: str) -> str:
    if "?" in rest or "#" in rest:
        raise UriRejected(f"query strings and fragments are not allowed on file uris: {shown}")
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host:
            raise UriRejected(f"file uri with a host is not allowed: {shown}")
        rest = slash + path
    if not rest.startswith("/"):
        raise UriRejected(f"file uri must hold an absolute path: {shown}")
    path = unquote(rest)
    if "\x00" in path:
        raise UriRejected(f"NUL byte in uri: {shown}")
    return path


def _resolve_local(path: str, allowed_roots: tuple[str, ...], shown: str) -> ResolvedUri:
    real = os.path.realpath(path)
    for root in allowed_roots:
        real_root = os.path.realpath(root)
        # commonpath compares whole components: /data/videos2 is not inside /data/videos.
        if os.path.commonpath([real_root, real]) == real_root and real != real_root:
            return ResolvedUri(kind="local", path=real)
    raise UriRejected(f"local path is outside the allowed roots: {shown}")
