from __future__ import annotations

import dataclasses
import hashlib
import io
import os

import av
import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import make_sample_catalog as job
from pipeline import sample_catalog, schema
from pipeline.decode import DecodeConfig
from pipeline.decode.child import decode_path
from pipeline.sample_catalog import make_sample_catalog, render_frames, sample_videos
from pipeline.schema import Status
from pipeline.storage import S3Config
from pipeline.uris import resolve_uri

SMALL = {"num_videos": 4, "seconds": 0.8, "width": 64, "height": 48, "fps": 10}


def _digests(manifest: str) -> list[str]:
    """Hash of every video's decoded frames: what the catalog is made of. (File bytes were
    seen to differ once between an encode in the test process and one in a worker, with
    the same decoded pictures, so the bytes are not the contract.)"""
    root = os.path.dirname(manifest)
    uris = pq.read_table(manifest)[schema.URI].to_pylist()
    out = []
    for u in uris:
        h = hashlib.sha256()
        with av.open(os.path.join(root, u)) as container:
            for frame in container.decode(video=0):
                h.update(frame.to_ndarray(format="rgb24").tobytes())
        out.append(h.hexdigest())
    return out


def test_manifest_and_videos(tmp_path):
    manifest = make_sample_catalog(str(tmp_path / "cat"), **SMALL, seed=3)
    assert manifest == str(tmp_path / "cat" / "manifest.parquet")
    table = pq.read_table(manifest)
    assert table.column_names == ["video_id", "uri", "caption", "category", "duration_s"]
    rows = table.to_pylist()
    assert [r["video_id"] for r in rows] == [f"sample-{i:06d}" for i in range(4)]
    assert all(r["duration_s"] == 0.8 and r["category"] in sample_catalog.SHAPES for r in rows)
    assert all(r["caption"].startswith("a ") and " moving " in r["caption"] for r in rows)
    root = os.path.dirname(manifest)
    params = DecodeConfig().worker_params()
    for row in rows:
        resolved = resolve_uri(row["uri"], (root,), base_dir=root)  # relative to the manifest
        header, frames = decode_path(resolved.path, params)
        assert header["status"] == Status.OK and header["clips"][0]["end_s"] == 0.8
        assert frames.shape == (1, 4, 224, 224, 3)


def test_deterministic_for_a_seed_and_parallel_safe(tmp_path):
    first = make_sample_catalog(str(tmp_path / "a"), **SMALL, seed=1, workers=1)
    again = make_sample_catalog(str(tmp_path / "b"), **SMALL, seed=1, workers=2)
    other = make_sample_catalog(str(tmp_path / "c"), **SMALL, seed=2, workers=1)
    assert _digests(first) == _digests(again)
    assert pq.read_table(first).equals(pq.read_table(again))
    assert _digests(first) != _digests(other)
    # Video i depends on (seed, i) only, so a larger catalog starts with the smaller one.
    assert sample_videos(8, seed=1)[:4] == sample_videos(4, seed=1)


def test_videos_are_distinct_and_moving():
    videos = sample_videos(12, seed=0)
    assert len({v.caption for v in videos}) == 12
    clips = [render_frames(v, 1.0, 64, 48, 10).astype(np.int16) for v in videos]
    for i, a in enumerate(clips):
        assert np.abs(a[0] - a[-1]).mean() > 0.5  # the shape moved
        for b in clips[i + 1 :]:
            # Different colours, shapes or motion: a visible share of pixels differs clearly.
            assert (np.abs(a - b).max(axis=-1) > 30).mean() > 0.01


def test_motion_is_told_only_by_frame_order():
    # The shape crosses the centre half-way, so a video played backwards is, pixel for
    # pixel, the video of the opposite direction: where the shape is says nothing about
    # where it goes (the demo model must read the frame order to tell directions apart).
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    for video in sample_videos(8, seed=4):
        for seconds, fps in ((2.2, 20), (3.0, 25), (1.0, 7)):
            forward = render_frames(video, seconds, 96, 72, fps)
            back = dataclasses.replace(video, direction=opposite[video.direction])
            assert np.array_equal(forward[::-1], render_frames(back, seconds, 96, 72, fps))
            assert not np.array_equal(forward, forward[::-1])
    # Half-way, the shape sits in the middle of the frame (odd frame count: one frame).
    video = dataclasses.replace(sample_videos(1, seed=0)[0], shape="square", size=0.25)
    middle = render_frames(video, 1.0, 64, 48, 9)[4]
    ys, xs = np.nonzero((middle == sample_catalog.COLORS[video.color]).all(axis=-1))
    assert (xs.min() + xs.max()) / 2 == pytest.approx(31.5, abs=1)
    assert (ys.min() + ys.max()) / 2 == pytest.approx(23.5, abs=1)


def test_s3_output(s3_bucket):
    endpoint, bucket = s3_bucket
    manifest = make_sample_catalog(
        f"s3://{bucket}/demo/", **SMALL, s3=S3Config(endpoint_url=endpoint)
    )
    assert manifest == f"s3://{bucket}/demo/manifest.parquet"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    body = s3.get_object(Bucket=bucket, Key="demo/manifest.parquet")["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    uris = table[schema.URI].to_pylist()
    assert uris[0] == f"s3://{bucket}/demo/videos/sample-000000.mp4"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="demo/")["Contents"]}
    assert keys == {"demo/manifest.parquet"} | {u[len(f"s3://{bucket}/") :] for u in uris}


def test_job_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--num-videos", "2", "--seconds", "0.5", "--size", "32x32", "--fps", "8"]
    assert job.main(["--out", str(out), *args, "--absolute-uris"]) == 0
    manifest = capsys.readouterr().out.strip()  # the manifest alone on stdout
    assert manifest == str(out / "manifest.parquet")
    assert all(os.path.isabs(u) for u in pq.read_table(manifest)[schema.URI].to_pylist())
    assert (out / "sample_catalog.json").exists()
    for bad in (["--help"], ["--out", str(out), "--size", "big"]):
        with pytest.raises(SystemExit):
            job.main(bad)
    # Invalid sizes or endpoints are `error: ...` and exit 2, not a traceback.
    capsys.readouterr()
    assert job.main(["--out", str(out), "--num-videos", "0"]) == 2
    assert job.main(["--out", "s3://b/x", "--s3-endpoint-url", "minio:9000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    with pytest.raises(ValueError):
        make_sample_catalog(str(out), num_videos=0)
