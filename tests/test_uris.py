from __future__ import annotations

import builtins
import io
import os

import pyarrow as pa
import pytest

from pipeline.uris import (
    ResolvedUri,
    UriRejected,
    redact_text,
    redact_uri,
    redact_uris,
    redact_values,
    resolve_uri,
)

REDACTION_CASES = [
    ("s3://AKIAEXAMPLE:s3cr3t@bucket/x.mp4", "s3://***@bucket/x.mp4"),
    ("s3://AKIAEXAMPLE:s3/cr3t+k@bucket/x.mp4", "s3://***@bucket/x.mp4"),
    ("s3://AKIAEXAMPLE:s3c?r#3t@bucket/x.mp4", "s3://***@bucket/x.mp4"),
    (
        "https://h.example/v.mp4?X-Amz-Signature=abc&X-Amz-Credential=AK",
        "https://h.example/v.mp4?***",
    ),
    ("s3://bucket/v.mp4#s3cr3t", "s3://bucket/v.mp4#***"),
    ("s3:AKIAEXAMPLE:s3cr3t@bucket/x.mp4", "s3:***@bucket/x.mp4"),
    ("s3://bucket/user@example.com/v.mp4", "s3://bucket/user@example.com/v.mp4"),
    ("file:///data/v.mp4", "file:///data/v.mp4"),
    ("/data/a@b.mp4", "/data/a@b.mp4"),  # an "@" in a path is not userinfo
    # With a scheme, any query string or fragment is hidden.
    ("s3://bucket/Episode #3.mp4", "s3://bucket/Episode #***"),
    ("file:///data/what?.mp4", "file:///data/what?***"),
    # Without a scheme: a network-path reference, a presigned URL's path and query.
    ("//AKIAEXAMPLE:s3cr3t@minio/bucket/v.mp4", "//***@minio/bucket/v.mp4"),
    ("//AKIAEXAMPLE:s3/cr3t@minio/bucket/v.mp4", "//***@minio/bucket/v.mp4"),
    ("//minio/bucket/v.mp4#token=s3cr3t", "//minio/bucket/v.mp4#***"),
    ("bucket/v.mp4?X-Amz-Signature=s3cr3t", "bucket/v.mp4?***"),
    ("/data/v.mp4#access_token=s3cr3t", "/data/v.mp4#***"),
    ("a.mp4#access_token=s3cr3t", "a.mp4#***"),
    ("/data/Episode #3.mp4?sig=s3cr3t", "/data/Episode #***"),  # "=" after the first mark
    # ...but a "?" or "#" not followed by parameters is part of a file name.
    ("/data/Episode #3.mp4", "/data/Episode #3.mp4"),
    ("/data/what?.mp4", "/data/what?.mp4"),
    ("/data/a@b?.mp4", "/data/a@b?.mp4"),
    ("ep#1.mp4", "ep#1.mp4"),
    ("ep#2.mp4", "ep#2.mp4"),
    ("//data/Episode #3.mp4", "//data/Episode #3.mp4"),
    ("/data/x\x00y\n.mp4", "/data/x\\x00y\\n.mp4"),
]


@pytest.mark.parametrize(("uri", "shown"), REDACTION_CASES)
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown
    assert "s3cr3t" not in redact_uri(uri)


def test_redact_uris_matches_redact_uri_row_by_row():
    """The vectorized column version (sink, refresh plan) screens rows with a regex; it must
    agree with `redact_uri` on every kind of URI, leave nulls null and keep plain rows."""
    uris = [u for u, _ in REDACTION_CASES]
    uris += ["s3://bucket/plain/key.mp4", "/data/caf\u00e9.mp4", "/" + "a" * 5000, None, ""]
    out = redact_uris(pa.chunked_array([uris[:4], uris[4:]]))
    assert out.to_pylist() == [None if u is None else redact_uri(u) for u in uris]
    plain = pa.array(["s3://b/1.mp4", "s3://b/2.mp4"])
    assert redact_uris(plain).to_pylist() == plain.to_pylist()
    assert redact_uris(pa.array([], pa.string())).to_pylist() == []


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("GET https://h/v.mp4?X-Amz-Signature=s3cr3t failed", "GET https://h/v.mp4?*** failed"),
        ("bad uri: //AKIAX:s3cr3t@minio/b/v.mp4 (x)", "bad uri: //***@minio/b/v.mp4 (x)"),
        ("No such file: '/m/b/v.mp4?X-Amz-Signature=s3cr3t'", "No such file: '/m/b/v.mp4?***'"),
        ("v.mp4?sig=s3cr3t, retry", "v.mp4?*** retry"),
        ("opts=s3://AKIAX:s3cr3t@b/k", "opts=s3://***@b/k"),
        ("AKIAX:s3cr3t@minio/b/v.mp4", "AKIAX:***@minio/b/v.mp4"),
        ("No such file: '/data/Episode #3.mp4?sig=s3cr3t'", "No such file: '/data/Episode #***'"),
        # A password holding a token break (a quote, a space, an angle bracket).
        ("GET s3://AKIA:s3'cr3t@bucket/m.parquet: 403", "GET s3://***@bucket/m.parquet: 403"),
        ('{"db": "s3://u:s3 cr3t@bucket/db"}', '{"db": "s3://***@bucket/db"}'),
        ("<https://u:s3<cr3t>@h/v.mp4>", "<https://***@h/v.mp4>"),
        ("a\nb s3://u:s3 cr3t@b/k\nc@d", "a\nb s3://***@b/k\nc@d"),
        # Nothing URI-like: left alone.
        ("Stream #0:0: Video: h264, user@example.com, what?", None),
        ("decord: RuntimeError: boom; pyav: EOF", None),
        ("Stream #0:0(und): Video: h264 (High) (avc1 / 0x31637661), yuv420p, 1920x1080", None),
        ("Invalid data found when processing input", None),
        ("No such file: PosixPath('/data/Episode #3.mp4')", None),
        ("[Errno 2] No such file or directory: '/data/what?.mp4'", None),
        ("[tcp @ 0x55d0] Connection to tcp://h:443 failed [http @ 0x55d1] retry", None),
        ("s3://bucket failed for user@example.com: timeout", None),
        ("copy s3://b/k to s3://b/k2 'done' by me@x.org", None),
    ],
)
def test_redact_text(text, shown):
    assert redact_text(text) == (text if shown is None else shown)


@pytest.mark.timeout(120)  # a hang guard, not a benchmark: a backtracking regex takes hours
def test_redact_text_is_linear_on_long_tokens():
    shown = redact_text("a/" * 50_000 + "?sig=s3cr3t " + "b" * 100_000 + "#")
    assert "s3cr3t" not in shown and shown.endswith(" " + "b" * 100_000 + "#")
    for text in ["s3://u:p w " * 50_000, "a://" * 50_000]:
        redact_text(text)
    assert "u:p" not in redact_text("s3://" + "u:p w@" * 50_000)


def test_redact_values_redacts_every_string_and_keeps_the_rest():
    config = {
        "manifest": "s3://AKIA:s3'cr3t@bucket/m.parquet",
        "roots": ["/data/Episode #3.mp4", "//u:s3 cr3t@minio/b"],
        "nested": {"db": "https://h/db?X-Amz-Signature=s3cr3t", "n": 3, "on": True, "x": None},
        "enums": ["decord", "pyav", "incremental", "full", "all", "cuda", "7 days, 0:00:00"],
        "checkpoint": "OpenGVLab/InternVideo2@main",
    }
    assert redact_values(config) == {
        "manifest": "s3://***@bucket/m.parquet",
        "roots": ["/data/Episode #3.mp4", "//***@minio/b"],
        "nested": {"db": "https://h/db?***", "n": 3, "on": True, "x": None},
        "enums": config["enums"],
        "checkpoint": "OpenGVLab/InternVideo2@main",
    }


def test_redact_uri_non_strings_and_long_values():
    assert redact_uri(None) == "<NoneType>"
    assert redact_uri(b"s3://k:s@b/x") == "<bytes>"
    assert len(redact_uri("/" + "a" * 5000)) < 1100


def test_resolve_s3():
    assert resolve_uri("s3://my-bucket/a/b c.mp4") == ResolvedUri("s3", "my-bucket", "a/b c.mp4")
    assert str(resolve_uri("S3://my-bucket/k.mp4")) == "s3://my-bucket/k.mp4"


def test_resolve_relative_against_s3_base():
    assert resolve_uri("v/1.mp4", base_dir="s3://cat/m") == ResolvedUri("s3", "cat", "m/v/1.mp4")
    assert resolve_uri("1.mp4", base_dir="s3://cat") == ResolvedUri("s3", "cat", "1.mp4")
    for uri, base in [
        ("../x.mp4", "s3://cat/m"),
        ("../m2/x.mp4", "s3://cat/m"),
        ("../x", "s3://cat"),
    ]:
        with pytest.raises(UriRejected, match="escapes"):
            resolve_uri(uri, base_dir=base)


def test_resolve_local(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    video = root / "sub" / "v.mp4"
    roots = (str(root),)
    assert resolve_uri(str(video), roots) == ResolvedUri("local", path=str(video))
    assert resolve_uri(f"file://{video}", roots).path == str(video)
    assert resolve_uri("file://" + str(root / "sub" / "a%20b.mp4"), roots).path.endswith("a b.mp4")
    assert resolve_uri("sub/v.mp4", roots, base_dir=str(root)).path == str(video)
    assert resolve_uri("sub/../sub/v.mp4", roots, base_dir=str(root)).path == str(video)


def test_symlink_out_of_root_is_rejected(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(UriRejected, match="outside the allowed roots"):
        resolve_uri(str(root / "link" / "v.mp4"), (str(root),))
    # A symlinked root is fine: both sides are resolved.
    (tmp_path / "alias").symlink_to(root)
    assert resolve_uri(str(root / "v.mp4"), (str(tmp_path / "alias"),)).path == str(root / "v.mp4")


def test_root_prefix_is_a_path_prefix_not_a_string_prefix(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos2").mkdir()
    with pytest.raises(UriRejected):
        resolve_uri(str(tmp_path / "videos2" / "v.mp4"), (str(tmp_path / "videos"),))
    with pytest.raises(UriRejected):  # the root itself is not a file inside it
        resolve_uri(str(tmp_path / "videos"), (str(tmp_path / "videos"),))


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("http://x/y.mp4", "scheme 'http'"),
        ("https://x/y.mp4", "scheme 'https'"),
        ("gs://bucket/y.mp4", "scheme 'gs'"),
        ("ftp://x/y.mp4", "scheme 'ftp'"),
        ("data:video/mp4;base64,AAAA", "scheme 'data'"),
        ("s3://key:secret@bucket/x.mp4", "credentials"),
        ("s3://bucket/x.mp4?versionId=1", "query"),
        ("s3://bucket/x.mp4#frag", "query strings and fragments"),
        ("s3:///x.mp4", "bucket"),
        ("s3://bucket/", "empty object key"),
        ("s3://bucket", "empty object key"),
        ("s3://bucket:443/x.mp4", "bucket"),
        ("s3:bucket/x.mp4", "s3://bucket/key"),
        ("file://host/etc/passwd", "with a host"),
        ("file://localhost/etc/passwd", "with a host"),
        ("file:relative.mp4", "absolute path"),
        ("file:///etc/passwd?x=1", "query"),
        ("file:///etc/passwd", "outside the allowed roots"),
        ("/etc/passwd", "outside the allowed roots"),
        ("../outside.mp4", "outside the allowed roots"),
        ("/data/v\x00.mp4", "NUL"),
        ("file:///data/v%00.mp4", "NUL"),
        ("", "empty"),
    ],
)
def test_rejected_without_opening_anything(tmp_path, monkeypatch, uri, reason):
    root = tmp_path / "root"
    root.mkdir()

    def forbidden(*args, **kwargs):
        raise AssertionError(f"opened {args[:1]}")

    for module, name in [(builtins, "open"), (io, "open"), (os, "open"), (os, "listdir")]:
        monkeypatch.setattr(module, name, forbidden)
    with pytest.raises(UriRejected, match=reason) as err:
        resolve_uri(uri, (str(root),), base_dir=str(root))
    assert "secret" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_no_roots_means_no_local_files(tmp_path):
    with pytest.raises(UriRejected):
        resolve_uri(str(tmp_path / "v.mp4"))
    with pytest.raises(UriRejected, match="without a base directory"):
        resolve_uri("v.mp4", (str(tmp_path),))
