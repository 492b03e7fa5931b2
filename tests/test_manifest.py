"""Manifest validation: local files, directories, S3 prefixes on a loopback server."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import manifest
from pipeline.manifest import (
    ManifestError,
    default_allowed_root,
    manifest_filesystem,
    validate_manifest,
)


def rows(ids, **extra) -> pa.Table:
    columns = {"video_id": ids, "uri": [f"s3://videos/{i}.mp4" for i in ids]}
    return pa.table(columns | extra)


def write(path, table: pa.Table) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path)
    return str(path)


def test_single_file(tmp_path):
    path = write(
        tmp_path / "m.parquet",
        rows(["a", "b"], version=["1", "2"], start_s=[0, 1], end_s=[5.0, 6.0], title=["x", "y"]),
    )
    info = validate_manifest(path)
    assert info.paths == (path,) and info.num_rows == 2
    assert info.metadata_columns == ("title",)
    assert info.columns == ("video_id", "uri", "version", "start_s", "end_s", "title")
    assert info.schema.field("start_s").type == pa.float64()
    assert info.metadata_fields == (pa.field("title", pa.string()),)
    assert info.base_dir == str(tmp_path)
    assert validate_manifest(f"file://{path}").paths == (path,)
    assert default_allowed_root(path) == str(tmp_path)


def test_directory_unifies_files_and_reads_batches(tmp_path):
    write(tmp_path / "m/part-0.parquet", rows(["a", "b"], start_s=[0, 1], title=["x", "y"]))
    write(tmp_path / "m/sub/part-1.parquet", rows(["c"], end_s=[3.0], score=[7]))
    write(tmp_path / "m/_SUCCESS.parquet", rows(["a"]))  # bookkeeping, not data
    (tmp_path / "m/notes.txt").write_text("ignored")
    info = validate_manifest(str(tmp_path / "m"), metadata_columns=["score"])
    assert len(info.paths) == 2 and info.num_rows == 3
    assert info.metadata_columns == ("score",)
    got = pa.Table.from_batches(list(info.iter_batches())).sort_by("video_id").to_pylist()
    assert got[0] == {
        "video_id": "a",
        "uri": "s3://videos/a.mp4",
        "start_s": 0.0,
        "end_s": None,
        "score": None,
    }
    assert got[2]["score"] == 7 and got[2]["end_s"] == 3.0
    assert validate_manifest(str(tmp_path / "m"), metadata_columns=None).metadata_columns == ()
    assert default_allowed_root(str(tmp_path / "m")) == str(tmp_path / "m")


def test_dictionary_and_large_string_ids_are_accepted(tmp_path):
    ids = pa.array(["a", "b"]).dictionary_encode()
    path = write(tmp_path / "m.parquet", pa.table({"video_id": ids, "uri": ["x", "y"]}))
    assert validate_manifest(path).schema.field("video_id").type == pa.string()


@pytest.mark.parametrize(
    "table, match",
    [
        (pa.table({"video_id": ["a"]}), r"m\.parquet: missing required column\(s\) \['uri'\]"),
        (pa.table({"video_id": [1], "uri": ["x"]}), "'video_id' has type int64"),
        (rows(["a"], start_s=["0"]), "'start_s' has type string"),
    ],
)
def test_structural_errors_name_the_file(tmp_path, table, match):
    with pytest.raises(ManifestError, match=match):
        validate_manifest(write(tmp_path / "m.parquet", table))


@pytest.mark.parametrize(
    "table, problem, row",
    [
        (rows(["a", None, "c"]), "null video_id: 1 row(s)", "row 1 (video_id=None)"),
        (rows(["a", " ", "c"]), "empty video_id", "row 1 (video_id=' ')"),
        (pa.table({"video_id": ["a", "b"], "uri": ["x", None]}), "null or empty uri", "row 1"),
        (rows(["a", "b"], start_s=[0.0, 4.0], end_s=[1.0, 4.0]), "start_s >= end_s", "row 1"),
        (rows(["a", "b"], start_s=[-1.0, 0.0]), "negative start_s", "row 0 (video_id='a')"),
        (rows(["a", "b"], end_s=[1.0, float("nan")]), "non-finite end_s", "row 1"),
        # Without a start_s (missing or null) the window starts at 0.
        (rows(["a", "b"], end_s=[1.0, 0.0]), "end_s <= 0: 1 row(s)", "row 1 (video_id='b')"),
        (rows(["a", "b"], start_s=[None, 0.5], end_s=[0.0, 1.0]), "end_s <= 0", "row 0"),
        (rows(["a", "b"], end_s=[-2.0, 1.0]), "end_s <= 0", "row 0"),
        (rows(["a", "b", "a", "a"]), "duplicate video_id (1 distinct ids): 3 row(s)", "row 3"),
    ],
)
def test_row_errors_name_file_and_rows(tmp_path, table, problem, row):
    path = write(tmp_path / "m.parquet", table)
    with pytest.raises(ManifestError) as err:
        validate_manifest(path)
    assert problem in str(err.value) and f"{path} {row}" in str(err.value)


def test_all_problems_are_reported_together_with_counts(tmp_path):
    ids = [f"v{i}" for i in range(30)]
    ids[3] = ids[4] = None
    write(tmp_path / "m/a.parquet", rows(ids, start_s=[-1.0] * 30))
    write(tmp_path / "m/b.parquet", rows(["v0", "v1"]))
    with pytest.raises(ManifestError) as err:
        validate_manifest(str(tmp_path / "m"))
    message = str(err.value)
    assert "null video_id: 2 row(s)" in message
    assert "negative start_s: 30 row(s)" in message and message.count("negative start_s") == 1
    assert message.count("a.parquet row") == 2 + 10 + 2  # examples are capped at ten
    assert "'v0' at " in message and "b.parquet row 0" in message


def test_unreadable_inputs(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        validate_manifest(str(tmp_path / "missing.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match=r"no \*\.parquet files"):
        validate_manifest(str(tmp_path / "empty"))
    (tmp_path / "bad.parquet").write_text("video_id,uri\na,b\n")
    with pytest.raises(ManifestError, match=r"bad\.parquet: not a readable Parquet file"):
        validate_manifest(str(tmp_path / "bad.parquet"))
    with pytest.raises(ManifestError, match="unsupported manifest scheme 'gs'"):
        validate_manifest("gs://bucket/m.parquet")


def test_type_conflicts_between_files(tmp_path):
    write(tmp_path / "m/a.parquet", rows(["a"], title=["x"]))
    write(tmp_path / "m/b.parquet", rows(["b"], title=[[1, 2]]))
    with pytest.raises(ManifestError, match=r"column types differ between files.*title"):
        validate_manifest(str(tmp_path / "m"))
    # Leaving the conflicting column out makes the manifest usable.
    assert validate_manifest(str(tmp_path / "m"), metadata_columns="none").num_rows == 2


@pytest.mark.parametrize(
    "selection, match",
    [
        (["nope"], r"unknown metadata column\(s\) \['nope'\]"),
        (["model"], r"\['model'\] clash"),
        # Columns the stages add between decode and the sink clash as well.
        (["num_clips", "embed_seconds"], r"\['num_clips', 'embed_seconds'\] clash"),
        ("title", "must be 'all', 'none' or a list"),
    ],
)
def test_metadata_selection_errors(tmp_path, selection, match):
    path = write(
        tmp_path / "m.parquet",
        rows(["a"], title=["x"], model=["m"], num_clips=[3], embed_seconds=[0.5]),
    )
    with pytest.raises(ManifestError, match=match):
        validate_manifest(path, metadata_columns=selection)


def test_all_none_columns_written_by_pandas_take_the_other_files_types(tmp_path):
    # pandas writes a column of only None with Arrow's null type.
    empty = pd.DataFrame(
        {"video_id": ["a"], "uri": ["x"], "version": [None], "start_s": [None], "end_s": [None]}
    )
    empty["score"] = None
    (tmp_path / "m").mkdir()
    empty.to_parquet(tmp_path / "m/a.parquet")
    assert pa.types.is_null(pq.read_schema(tmp_path / "m/a.parquet").field("end_s").type)
    write(
        tmp_path / "m/b.parquet",
        rows(["b"], version=["2"], start_s=[1], end_s=[4.0], score=pa.array([7], pa.int32())),
    )
    info = validate_manifest(str(tmp_path / "m"))
    types = dict(zip(info.columns, info.schema.types, strict=True))
    assert types == {
        "video_id": pa.string(),
        "uri": pa.string(),
        "version": pa.string(),
        "start_s": pa.float64(),
        "end_s": pa.float64(),
        "score": pa.int32(),
    }
    got = pa.Table.from_batches(list(info.iter_batches())).sort_by("video_id").to_pylist()
    assert got == [
        {
            "video_id": "a",
            "uri": "x",
            "version": None,
            "start_s": None,
            "end_s": None,
            "score": None,
        },
        {
            "video_id": "b",
            "uri": "s3://videos/b.mp4",
            "version": "2",
            "start_s": 1.0,
            "end_s": 4.0,
            "score": 7,
        },
    ]


def test_dictionary_metadata_unifies_with_plain_strings(tmp_path):
    categorical = pd.DataFrame({"video_id": ["a", "b"], "uri": ["x", "y"]})
    categorical["genre"] = pd.Categorical(["news", "sport"])
    (tmp_path / "m").mkdir()
    categorical.to_parquet(tmp_path / "m/a.parquet")
    write(tmp_path / "m/b.parquet", rows(["c"], genre=["news"]))
    info = validate_manifest(str(tmp_path / "m"))
    assert info.metadata_fields == (pa.field("genre", pa.string()),)
    got = pa.Table.from_batches(list(info.iter_batches())).sort_by("video_id")
    assert got["genre"].to_pylist() == ["news", "sport", "news"]
    # A single categorical file gives the same column type as a plain one.
    single = validate_manifest(str(tmp_path / "m/a.parquet"))
    assert single.metadata_fields == (pa.field("genre", pa.string()),)


@pytest.mark.parametrize(
    "endpoint", ["127.0.0.1:9000", "minio:9000", "ftp://minio:9000", "http://", "http://k:s@h"]
)
def test_s3_endpoint_without_scheme_and_host_is_refused(tmp_path, no_network, endpoint):
    with pytest.raises(ManifestError, match="S3 endpoint: it must be http://host"):
        manifest_filesystem("s3://catalog/m.parquet", endpoint_url=endpoint)
    with pytest.raises(ManifestError, match="S3 endpoint: it must be http://host"):
        validate_manifest("s3://catalog/m.parquet", endpoint_url=endpoint)
    assert no_network == []


def test_s3_region_comes_from_the_environment_unless_given(monkeypatch, no_network):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/vidcat-test-aws-config")
    fs, path = manifest_filesystem("s3://catalog/m/", endpoint_url="http://127.0.0.1:9")
    assert fs.region == "eu-west-3" and path == "catalog/m"
    assert manifest_filesystem("s3://catalog/m/")[0].region == "eu-west-3"
    assert manifest_filesystem("s3://catalog/m/", region="ap-south-1")[0].region == "ap-south-1"
    assert no_network == []


def test_entirely_null_metadata_column(tmp_path):
    path = write(tmp_path / "m.parquet", rows(["a"], empty=pa.nulls(1)))
    with pytest.raises(ManifestError, match="entirely null"):
        validate_manifest(path)


def test_large_manifest_in_many_batches(tmp_path):
    """The 10M-row path at 200k rows: several files, several batches each."""
    n = 200_000
    ids = np.char.add("vid-", np.arange(n).astype(str)).astype(object)
    for part in range(4):
        chunk = ids[part::4]
        write(tmp_path / f"m/p{part}.parquet", rows(list(chunk), start_s=np.zeros(len(chunk))))
    assert validate_manifest(str(tmp_path / "m")).num_rows == n
    write(tmp_path / "m/p9.parquet", rows(["vid-123456", "vid-7"]))
    with pytest.raises(ManifestError, match=r"2 distinct ids\): 4 row\(s\)") as err:
        validate_manifest(str(tmp_path / "m"))
    assert "p9.parquet row 0" in str(err.value) and "p9.parquet row 1" in str(err.value)


def test_hash_collisions_are_confirmed_exactly(tmp_path, monkeypatch):
    # Every id of the same length collides; only the truly repeated one is reported.
    monkeypatch.setattr(
        manifest, "fnv1a64", lambda ids: np.array([len(s) for s in ids.to_pylist()], np.uint64)
    )
    path = write(tmp_path / "m.parquet", rows(["aa", "bb", "cc", "bb", "d"]))
    with pytest.raises(ManifestError) as err:
        validate_manifest(path)
    assert "duplicate video_id (1 distinct ids): 2 row(s)" in str(err.value)
    assert "'bb' at " in str(err.value)
    monkeypatch.setattr(manifest, "fnv1a64", lambda ids: np.zeros(len(ids), np.uint64))
    assert validate_manifest(write(tmp_path / "ok.parquet", rows(["a", "b", "c"]))).num_rows == 3


def test_s3_prefix_of_several_files(s3_bucket):
    import boto3

    endpoint, bucket = s3_bucket  # a fresh bucket: the moto server is shared by the session
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for part, ids in enumerate([["a", "b"], ["c"], ["d", "e"]]):
        sink = pa.BufferOutputStream()
        pq.write_table(rows(ids, title=ids), sink)
        s3.put_object(
            Bucket=bucket, Key=f"m/part-{part}.parquet", Body=sink.getvalue().to_pybytes()
        )
    s3.put_object(Bucket=bucket, Key="m/README", Body=b"not data")

    info = validate_manifest(f"s3://{bucket}/m/", endpoint_url=endpoint)
    assert info.paths == tuple(f"{bucket}/m/part-{i}.parquet" for i in range(3))
    assert info.num_rows == 5 and info.base_dir == f"s3://{bucket}/m"
    assert sorted(pa.Table.from_batches(list(info.iter_batches()))["title"].to_pylist()) == list(
        "abcde"
    )
    single = validate_manifest(f"s3://{bucket}/m/part-1.parquet", endpoint_url=endpoint)
    assert single.num_rows == 1 and single.base_dir == f"s3://{bucket}/m"
    assert default_allowed_root(f"s3://{bucket}/m/") is None

    sink = pa.BufferOutputStream()
    pq.write_table(rows(["a"]), sink)
    s3.put_object(Bucket=bucket, Key="m/part-9.parquet", Body=sink.getvalue().to_pybytes())
    with pytest.raises(ManifestError, match=rf"'a' at s3://{bucket}/m/part-0\.parquet row 0"):
        validate_manifest(f"s3://{bucket}/m", endpoint_url=endpoint)
    with pytest.raises(ManifestError, match="not found"):
        validate_manifest(f"s3://{bucket}/nothing/", endpoint_url=endpoint)
