"""Run-report storage: which table locations are accepted, and S3 endpoint and region."""

from __future__ import annotations

import os

import lancedb
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from pipeline.storage import S3Config, check_db_uri, filesystem_for, read_json, write_json


@pytest.mark.parametrize("uri", ["db", "/data/db", "/data/50%off", "file:///data/db", "s3://b/db"])
def test_check_db_uri_accepts_local_file_and_s3(uri):
    check_db_uri(uri)


@pytest.mark.parametrize(
    "uri, match",
    [
        ("gs://bucket/db", "unsupported storage scheme 'gs'"),
        ("az://container/db", "unsupported storage scheme 'az'"),
        ("memory://db", "unsupported storage scheme 'memory'"),
        ("s3:///db", "s3 location has no bucket"),
        ("file://localhost/data/db", "file:///absolute/path without a host"),
        ("file:///data/a%20b", "without a host, '%'"),
        ("file:///data/db?x=1", "without a host, '%', '\\?'"),
    ],
)
def test_check_db_uri_refuses_what_reports_cannot_follow(uri, match):
    with pytest.raises(ValueError, match=match):
        check_db_uri(uri)
    # The report writer refuses the same locations, with the same message.
    with pytest.raises(ValueError, match=match):
        filesystem_for(uri, S3Config())


def test_file_uri_reports_land_beside_the_lancedb_table(tmp_path):
    db = f"file://{tmp_path}/my db"
    lancedb.connect(db).create_table("t", pa.table({"x": [1]}))
    write_json(f"{db}/_vidcat/run.json", {"ok": True}, S3Config())
    assert sorted(os.listdir(tmp_path / "my db")) == ["_vidcat", "t.lance"]
    assert read_json(f"{db}/_vidcat/run.json", S3Config()) == {"ok": True}
    fs, path = filesystem_for(db, S3Config())
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/my db"


def _region_env(monkeypatch, region: str) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/vidcat-test-aws-config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:9"])
def test_region_comes_from_the_environment_unless_given(monkeypatch, no_network, endpoint):
    _region_env(monkeypatch, "eu-west-3")
    fs, path = filesystem_for("s3://bucket/db", S3Config(endpoint_url=endpoint))
    assert fs.region == "eu-west-3" and path == "bucket/db"
    given = S3Config(endpoint_url=endpoint, region="ap-south-1")
    assert filesystem_for("s3://bucket/db", given)[0].region == "ap-south-1"
    assert no_network == []


def test_reports_on_s3_endpoint_without_a_region(s3_bucket, no_network):
    endpoint, bucket = s3_bucket
    s3 = S3Config(endpoint_url=endpoint)
    write_json(f"s3://{bucket}/db/_vidcat/run.json", {"rows": 3}, s3)
    assert read_json(f"s3://{bucket}/db/_vidcat/run.json", s3) == {"rows": 3}
    assert no_network == []
