"""The fetch + decode stage against real files, a real S3 API and a real child process."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time

import boto3
import numpy as np
import pyarrow as pa
import pytest
from media import (
    frame_index_of,
    write_audio_only,
    write_huge_resolution,
    write_png,
    write_random_bytes,
    write_truncated,
    write_video,
    write_zero_bytes,
)

from models.internvideo2.preprocess import middle_frame_indices, window_frame_indices
from pipeline import decode, schema
from pipeline.decode import (
    DecodeConfig,
    DecoderPool,
    DecodeStage,
    IsolatedDecoder,
    fetch,
    process,
    protocol,
)
from pipeline.decode.child import MIN_TAIL_CLIP_S, decode_path, plan_clips
from pipeline.schema import Status
from pipeline.storage import S3Config

SECRET = "s3cr3tK3y"
GOOD_FRAMES, LONG_FRAMES, LONG_FPS = 50, 125, 5  # good: 2 s at 25 fps; long: 25 s at 5 fps


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Small test videos under `<tmp>/root`, plus a file outside that root."""
    root = tmp_path_factory.mktemp("media") / "root"
    root.mkdir()
    write_video(root / "good.mp4", GOOD_FRAMES)
    write_video(root / "one_frame.mp4", 1)
    write_video(root / "long.mp4", LONG_FRAMES, fps=LONG_FPS)
    write_zero_bytes(root / "zero.mp4")
    write_truncated(root / "truncated.mp4")
    write_random_bytes(root / "random.mp4")
    write_audio_only(root / "audio.mp4")
    write_png(root / "image.mp4")
    write_huge_resolution(root / "huge.mp4")
    write_video(root.parent / "outside.mp4", 5)
    return root


@pytest.fixture(scope="module")
def decoder(media):
    """A shared decoder (one child process) for tests that need no special config."""
    with IsolatedDecoder(DecodeConfig(allowed_roots=(str(media),), clip_seconds=10)) as dec:
        yield dec


def assert_frames_match(frames: np.ndarray, indices: np.ndarray) -> None:
    assert frames.shape[1:] == (224, 224, 3) and frames.dtype == np.uint8
    assert [frame_index_of(f) for f in frames] == [int(i) for i in indices]


def test_good_video_gives_official_middle_indices(decoder, media):
    result = decoder.decode(str(media / "good.mp4"))
    assert result.status is Status.OK and result.decoder == "pyav" and result.message == ""
    (clip,) = result.clips
    assert (clip.index, clip.start_s, clip.end_s) == (0, 0.0, GOOD_FRAMES / 25)
    np.testing.assert_array_equal(clip.frame_indices, middle_frame_indices(GOOD_FRAMES, 4))
    assert clip.frame_indices.tolist() == [5, 18, 30, 43]
    assert_frames_match(clip.frames, clip.frame_indices)
    st = os.stat(media / "good.mp4")
    assert result.content_version == f"{st.st_size}-{st.st_mtime_ns}"
    assert decoder.decode(str(media / "good.mp4"), version="v7").content_version == "v7"


def test_one_frame_video_repeats_its_frame(decoder, media):
    result = decoder.decode(str(media / "one_frame.mp4"))
    assert result.status is Status.OK
    assert result.clips[0].frame_indices.tolist() == [0, 0, 0, 0]
    assert_frames_match(result.clips[0].frames, [0, 0, 0, 0])


def test_long_video_is_split_into_windows(decoder, media):
    result = decoder.decode(str(media / "long.mp4"))  # 25 s, clip_seconds=10
    bounds = [(c.index, c.start_s, c.end_s) for c in result.clips]
    assert bounds == [(0, 0.0, 10.0), (1, 10.0, 20.0), (2, 20.0, 25.0)]
    for clip, end in zip(result.clips, (10.0, 20.0, 26.0), strict=True):
        expected = window_frame_indices(LONG_FPS, clip.start_s, end, LONG_FRAMES, 4)
        np.testing.assert_array_equal(clip.frame_indices, expected)
        assert_frames_match(clip.frames, clip.frame_indices)
    assert result.clips[2].frame_indices.tolist() == [102, 108, 114, 121]


def test_start_and_end_restrict_the_range(decoder, media):
    (clip,) = decoder.decode(str(media / "long.mp4"), start_s=3.0, end_s=7.0).clips
    assert (clip.start_s, clip.end_s) == (3.0, 7.0)
    np.testing.assert_array_equal(clip.frame_indices, window_frame_indices(5, 3.0, 7.0, 125, 4))
    assert_frames_match(clip.frames, clip.frame_indices)
    clips = decoder.decode(str(media / "long.mp4"), start_s=12.0).clips
    assert [(c.start_s, c.end_s) for c in clips] == [(12.0, 22.0), (22.0, 25.0)]
    for start, end in [(30.0, None), (5.0, 5.0), (-1.0, 4.0), (float("nan"), 4.0)]:
        result = decoder.decode(str(media / "long.mp4"), start_s=start, end_s=end)
        assert result.status is Status.TOO_FEW_FRAMES and not result.clips


def test_redecoding_a_clip_by_its_bounds_gives_the_same_frames(decoder, media):
    for name in ("long.mp4", "good.mp4", "one_frame.mp4"):
        for clip in decoder.decode(str(media / name)).clips:
            (again,) = decoder.decode(str(media / name), clip.start_s, clip.end_s).clips
            np.testing.assert_array_equal(again.frame_indices, clip.frame_indices)
            np.testing.assert_array_equal(again.frames, clip.frames)


@pytest.mark.parametrize(
    ("num_frames", "start", "end", "overlap", "expected"),
    [
        (125, None, None, 0.0, [(0, 10), (10, 20), (20, 25)]),
        (125, None, None, 4.0, [(0, 10), (6, 16), (12, 22), (18, 25)]),
        (102, None, None, 0.0, [(0, 10), (10, 20)]),  # 20.4 s: the 0.4 s tail is dropped
        (3, None, None, 0.0, [(0, 0.6)]),  # a short video is one clip, however short
        (125, 24.5, None, 0.0, [(24.5, 25)]),  # a short range is kept: it is the only clip
        (125, 0.0, 10.0, 0.0, [(0, 10)]),
        (125, 2.0, 24.95, 0.0, [(2, 12), (12, 22), (22, 25)]),  # within half a frame of the end
    ],
)
def test_plan_clips(num_frames, start, end, overlap, expected):
    params = {"num_frames": 4, "clip_seconds": 10.0, "clip_overlap_s": overlap}
    plans = plan_clips(num_frames, 5.0, params, start, end)
    assert [(p.start_s, p.end_s) for p in plans] == [(float(a), float(b)) for a, b in expected]
    assert [p.index for p in plans] == list(range(len(plans)))
    assert all(len(p.indices) == 4 and p.indices.min() >= 0 for p in plans)
    assert all(p.indices.max() < num_frames for p in plans)
    assert MIN_TAIL_CLIP_S == 1.0


@pytest.mark.parametrize("primary", ["decord", "pyav"])
def test_each_decoder_falls_back_on_the_other(media, primary):
    other = {"decord": "pyav", "pyav": "decord"}[primary]
    faults = (("fail", f"{primary}_error"), ("both", "decoders_error"))
    config = DecodeConfig(
        allowed_roots=(str(media),), clip_seconds=10, decoder=primary, fault_injection=faults
    )
    with IsolatedDecoder(config) as dec:
        for name in ("good.mp4", "long.mp4", "one_frame.mp4"):
            first = dec.decode(str(media / name))
            fallback = dec.decode(str(media / name), video_id="fail")
            assert (first.decoder, fallback.decoder) == (primary, other)
            assert len(fallback.clips) == len(first.clips)
            for a, b in zip(first.clips, fallback.clips, strict=True):
                assert (a.start_s, a.end_s) == (b.start_s, b.end_s)
                np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
                assert_frames_match(b.frames, b.frame_indices)
                assert np.abs(a.frames.astype(int) - b.frames).mean() < 2
        failed = dec.decode(str(media / "good.mp4"), video_id="both")
        assert failed.status is Status.DECODE_ERROR
        assert "decord" in failed.message and "pyav" in failed.message


def test_limits_apply_to_real_videos(media):
    """In-process decode_path, the function the child runs for every job."""
    params = DecodeConfig().worker_params()
    assert decode_path(str(media / "good.mp4"), params)[0]["status"] == Status.OK
    for limits in ({"max_width": 32}, {"max_height": 32}, {"max_duration_s": 1.0}):
        header, frames = decode_path(str(media / "good.mp4"), {**params, **limits})
        assert header["status"] == Status.RESOLUTION_EXCEEDED and frames.size == 0, limits


def columns(table: pa.Table) -> dict:
    """A decode stage's output as Python values per column, frames as uint8 `[N, T, H, W, 3]`."""
    out = {n: table[n].to_pylist() for n in table.column_names if n != schema.FRAMES}
    out[schema.FRAMES] = schema.frames_ndarray(table[schema.FRAMES])
    return out


def _upload(endpoint: str, bucket: str, key: str, path) -> str:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.upload_file(str(path), bucket, key)
    return s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


@pytest.mark.parametrize("decoders", [1, 3])
def test_batch_with_every_kind_of_bad_row(media, s3_bucket, caplog, decoders):
    """Every bad input costs exactly its own row, also with several decoder processes
    working on one batch at once (rows keep their input order)."""
    endpoint, bucket = s3_bucket
    etag = _upload(endpoint, bucket, "videos/good.mp4", media / "good.mp4")
    rows = [  # (video_id, uri, expected status)
        ("good-local", "good.mp4", Status.OK),
        ("good-s3", f"s3://{bucket}/videos/good.mp4", Status.OK),
        ("zero", "zero.mp4", Status.PROBE_FAILED),
        ("truncated", "truncated.mp4", Status.PROBE_FAILED),
        ("random", "random.mp4", Status.PROBE_FAILED),
        ("audio", "audio.mp4", Status.NO_VIDEO_STREAM),
        ("image", "image.mp4", Status.PROBE_FAILED),
        ("one-frame", "one_frame.mp4", Status.OK),
        ("huge", "huge.mp4", Status.RESOLUTION_EXCEEDED),
        ("hang", "good.mp4", Status.TIMEOUT),
        ("after-hang", "good.mp4", Status.OK),
        ("segfault", f"s3://{bucket}/videos/good.mp4", Status.DECODER_CRASH),
        ("after-segfault", "good.mp4", Status.OK),
        ("oom", "good.mp4", Status.OOM),
        ("after-oom", "good.mp4", Status.OK),
        ("bad-alloc", "good.mp4", Status.OOM),
        ("missing-s3", f"s3://{bucket}/videos/missing.mp4", Status.FETCH_ERROR),
        ("missing-local", "missing.mp4", Status.FETCH_ERROR),
        ("http", "http://x/y.mp4", Status.URI_REJECTED),
        ("passwd", "file:///etc/passwd", Status.URI_REJECTED),
        ("outside", "../outside.mp4", Status.URI_REJECTED),
        ("creds", f"s3://AKIAFAKE:{SECRET}@{bucket}/videos/good.mp4", Status.URI_REJECTED),
        (
            "presigned",
            f"s3://{bucket}/videos/good.mp4?X-Amz-Signature={SECRET}",
            Status.URI_REJECTED,
        ),
        ("no-uri", None, Status.URI_REJECTED),
    ]
    faults = (
        ("hang", "hang"),
        ("segfault", "segfault"),
        ("oom", "oom"),
        ("bad-alloc", "bad_alloc"),
    )
    config = DecodeConfig(
        allowed_roots=(str(media),),
        base_dir=str(media),
        timeout_s=2.0,
        s3=S3Config(endpoint_url=endpoint, region="us-east-1"),
        fault_injection=faults,
    )
    batch = pa.table(
        {
            schema.VIDEO_ID: [r[0] for r in rows],
            schema.URI: pa.array([r[1] for r in rows], pa.string()),
            "caption": [f"caption of {r[0]}" for r in rows],
            "rank": np.arange(len(rows), dtype=np.int64),
            schema.STATUS: ["from the manifest"] * len(rows),
        }
    )
    stage = DecodeStage(config, decoders=decoders)
    with caplog.at_level(logging.DEBUG, logger="pipeline.decode"):
        table = stage.decode_batch(batch)
    stage.close()
    out = columns(table)
    # With several decoders the batch ran in parallel: more than one feeding thread started
    # a decoder process (each thread grabs its own decoder before any child is up).
    messages = [(r.threadName, r.getMessage()) for r in caplog.records]
    starters = {t for t, m in messages if m.startswith("decoder process") and m.endswith("started")}
    assert starters == {"MainThread"} if decoders == 1 else len(starters) >= 2
    assert list(out[schema.VIDEO_ID]) == [r[0] for r in rows]

    assert len(out[schema.VIDEO_ID]) == len(rows)  # short videos: one clip or one error each
    by_id = {vid: j for j, vid in enumerate(out[schema.VIDEO_ID])}
    assert set(by_id) == {r[0] for r in rows}
    for video_id, _, status in rows:
        j = by_id[video_id]
        assert out[schema.STATUS][j] == status.value, (video_id, out[schema.MESSAGE][j])
        assert out["caption"][j] == f"caption of {video_id}"
        assert out["rank"][j] == [r[0] for r in rows].index(video_id)
        if status is Status.OK:
            assert out[schema.MESSAGE][j] is None and out[schema.DECODER][j] == config.decoder
            assert out[schema.CLIP_INDEX][j] == 0
            assert_frames_match(out[schema.FRAMES][j], np.array(out[schema.FRAME_INDICES][j]))
        else:
            assert out[schema.MESSAGE][j] and out[schema.CLIP_INDEX][j] is None
            assert not out[schema.FRAMES][j].any()
            assert out[schema.FRAME_INDICES][j] is None
            assert out[schema.CLIP_START_S][j] is None
        assert out[schema.ATTEMPTS][j] == 1 and out[schema.NUM_CLIPS][j] == 1
        assert out[schema.DECODE_SECONDS][j] >= 0
    assert out[schema.DECODE_SECONDS][by_id["hang"]] >= 2.0  # the timeout it waited for
    assert out[schema.FRAME_INDICES][by_id["good-s3"]] == [5, 18, 30, 43]
    assert out[schema.CONTENT_VERSION][by_id["good-s3"]] == etag
    assert out[schema.URI][by_id["good-s3"]] == f"s3://{bucket}/videos/good.mp4"
    assert out[schema.URI][by_id["creds"]] == f"s3://***@{bucket}/videos/good.mp4"
    assert out[schema.FRAMES].shape == (len(rows), 4, 224, 224, 3)
    assert table[schema.FRAME_INDICES].type == pa.list_(pa.int32())
    assert table[schema.ATTEMPTS].type == pa.int32() and table["rank"].type == pa.int64()
    assert table[schema.CLIP_START_S].type == pa.float64()
    # Where the decoder never ran (rejected before any request), it is unknown: null.
    assert out[schema.DECODER][by_id["http"]] is None
    assert out[schema.CONTENT_VERSION][by_id["http"]] is None
    assert set(out[schema.STATUS]) <= {s.value for s in Status}  # manifest's "status" dropped

    shown = " ".join(map(str, out[schema.MESSAGE])) + " ".join(map(str, out[schema.URI]))
    assert SECRET not in shown and SECRET not in caplog.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == sum(s is not Status.OK for *_, s in rows)


def test_rejected_uris_make_no_request_and_open_no_file(media, tmp_path, monkeypatch):
    """An S3 endpoint that listens but never answers, and an audit hook on file opens."""
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.setblocking(False)
    endpoint = f"http://127.0.0.1:{trap.getsockname()[1]}"
    opened: list[str] = []
    watching = threading.Event()

    def audit(event, args):
        if watching.is_set() and event == "open" and args and isinstance(args[0], str):
            opened.append(args[0])

    sys.addaudithook(audit)
    uris = [
        "http://127.0.0.1:1/y.mp4",
        "file:///etc/passwd",
        "../outside.mp4",
        f"s3://AKIAFAKE:{SECRET}@bucket/x.mp4",
        "s3://bucket/x.mp4?versionId=3",
        "gs://bucket/x.mp4",
    ]
    config = DecodeConfig(allowed_roots=(str(media),), base_dir=str(media), s3=S3Config(endpoint))
    with IsolatedDecoder(config) as dec:
        watching.set()
        try:
            results = [dec.decode(uri) for uri in uris]
        finally:
            watching.clear()
        assert dec.child_pid is None  # no job reached the decoder process
    assert [r.status for r in results] == [Status.URI_REJECTED] * len(uris)
    assert all(r.attempts == 1 for r in results)
    with pytest.raises(BlockingIOError):
        trap.accept()  # nobody connected
    trap.close()
    assert not [p for p in opened if "passwd" in p or "outside" in p], opened


def test_temp_file_is_private_and_always_removed(media, s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    _upload(endpoint, bucket, "good.mp4", media / "good.mp4")
    staging = tmp_path / "staging"
    staging.mkdir()
    config = DecodeConfig(
        s3=S3Config(endpoint_url=endpoint),
        temp_dir=str(staging),
        timeout_s=2.0,
        fault_injection=(("hang", "hang"), ("segfault", "segfault")),
    )
    uri = f"s3://{bucket}/good.mp4"
    with IsolatedDecoder(config) as dec:
        assert dec.decode(uri).status is Status.OK
        assert not list(staging.iterdir())
        assert dec.decode(uri, video_id="segfault").status is Status.DECODER_CRASH
        assert not list(staging.iterdir())

        modes = []

        def look() -> None:  # while the child hangs on it, the staged file is 0600
            deadline = time.monotonic() + 10
            while not modes and time.monotonic() < deadline:
                modes.extend(p.stat().st_mode & 0o777 for p in staging.iterdir())
                time.sleep(0.02)

        watcher = threading.Thread(target=look)
        watcher.start()
        assert dec.decode(uri, video_id="hang").status is Status.TIMEOUT
        watcher.join()
        assert modes == [0o600]
        assert not list(staging.iterdir())


def _open_files_of_ours(tmp_path) -> list[str]:
    """Targets of this process's descriptors that are vidcat temp files or lie under
    `tmp_path`. Only those: Ray's and moto's threads open and close other descriptors at any
    time, so a count of every descriptor is not this code's to assert."""
    ours = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing (the listing's own descriptor, too)
            continue
        if os.path.basename(target).startswith("vidcat-") or target.startswith(f"{tmp_path}/"):
            ours.append(target)
    return sorted(ours)


def test_a_failing_s3_filesystem_leaks_no_descriptor(media, tmp_path, monkeypatch):
    def unavailable(self):
        raise OSError("no credentials")

    monkeypatch.setattr(S3Config, "s3fs", unavailable)
    config = DecodeConfig(temp_dir=str(tmp_path), max_attempts=3)
    with IsolatedDecoder(config) as dec:
        before = _open_files_of_ours(tmp_path)
        results = [dec.decode(f"s3://bucket/v{i}.mp4") for i in range(5)]
        assert _open_files_of_ours(tmp_path) == before
    assert {(r.status, r.attempts) for r in results} == {(Status.FETCH_ERROR, 3)}
    assert "no credentials" in results[0].message
    assert not list(tmp_path.iterdir())


def test_files_over_max_bytes_are_refused_before_reading(media, s3_bucket, tmp_path, monkeypatch):
    endpoint, bucket = s3_bucket
    good = media / "good.mp4"
    etag = _upload(endpoint, bucket, "good.mp4", good)
    size = good.stat().st_size

    def no_download(*args):
        raise AssertionError("downloaded an object over max_bytes")

    config = DecodeConfig(
        allowed_roots=(str(media),),
        s3=S3Config(endpoint_url=endpoint, region="us-east-1"),
        temp_dir=str(tmp_path),
        max_bytes=size - 1,
        max_attempts=2,
    )
    with IsolatedDecoder(config) as dec:
        with monkeypatch.context() as patch:
            patch.setattr(fetch.shutil, "copyfileobj", no_download)
            results = [dec.decode(str(good)), dec.decode(f"s3://{bucket}/good.mp4")]
        assert dec.child_pid is None  # nothing reached the decoder process
        for result in results:
            assert result.status is Status.RESOLUTION_EXCEEDED, result.message
            assert result.attempts == 1 and f"{size} bytes exceeds max_bytes" in result.message
        local, remote = results
        assert local.content_version == decode.local_version(good.stat())
        assert remote.content_version == etag
        assert not list(tmp_path.iterdir())
    at_limit = dataclasses.replace(config, max_bytes=size)
    with IsolatedDecoder(at_limit) as dec:
        assert dec.decode(str(good)).status is Status.OK
        assert dec.decode(f"s3://{bucket}/good.mp4").status is Status.OK


@pytest.mark.timeout(120)  # a hang guard; the oom/timeout split is the status itself
def test_child_is_respawned_after_crash_timeout_and_kill(media, monkeypatch):
    config = DecodeConfig(
        allowed_roots=(str(media),),
        timeout_s=20.0,
        fault_injection=(("segfault", "segfault"), ("hang", "hang")),
    )
    good = str(media / "good.mp4")
    with IsolatedDecoder(config) as dec:
        assert dec.decode(good).status is Status.OK
        first = dec.child_pid
        assert dec.decode(good, video_id="segfault").status is Status.DECODER_CRASH
        assert dec.child_pid is None
        assert dec.decode(good).status is Status.OK
        second = dec.child_pid
        assert second not in (None, first)

        # Death by SIGKILL from outside (the kernel's OOM killer does this) reads as oom,
        # not as the timeout (20 s) that the hung job would otherwise reach. The kill comes
        # once the job is in the child's pipe, so it cannot land before the job is sent.
        sent = threading.Event()

        def send_then_flag(*args, **kwargs):
            write_message(*args, **kwargs)
            sent.set()

        def kill_child() -> None:
            sent.wait()
            os.kill(second, signal.SIGKILL)

        write_message = process.write_message
        killer = threading.Thread(target=kill_child)
        with monkeypatch.context() as patch:
            patch.setattr(process, "write_message", send_then_flag)
            killer.start()
            result = dec.decode(good, video_id="hang")
        killer.join()
        assert result.status is Status.OOM, result.message
        assert "SIGKILL" in result.message
        assert dec.decode(good).status is Status.OK


def test_retryable_failures_are_retried(media):
    config = DecodeConfig(
        allowed_roots=(str(media),), max_attempts=2, fault_injection=(("s", "segfault"),)
    )
    with IsolatedDecoder(config) as dec:
        crashed = dec.decode(str(media / "good.mp4"), video_id="s")
        assert (crashed.status, crashed.attempts) == (Status.DECODER_CRASH, 2)
        missing = dec.decode(str(media / "missing.mp4"))
        assert (missing.status, missing.attempts) == (Status.FETCH_ERROR, 1)
        rejected = dec.decode("http://x/y.mp4")
        assert (rejected.status, rejected.attempts) == (Status.URI_REJECTED, 1)


def test_stage_accepts_arrow_batches_and_odd_values(media):
    long, good = str(media / "long.mp4"), str(media / "good.mp4")
    table = pa.table(
        {
            schema.VIDEO_ID: ["a", "b", "c", "d"],
            schema.URI: [long, good, None, long],
            schema.START_S: [2.0, None, None, 2.0],
            schema.END_S: [6.0, None, None, None],
            schema.VERSION: ["v1", None, None, ""],
            "tags": [["x"], [], None, ["y"]],
        }
    )
    stage = DecodeStage(DecodeConfig(allowed_roots=(str(media),), num_frames=2, clip_seconds=10))
    result = stage.decode_batch(table)
    out = columns(result)
    assert list(out[schema.VIDEO_ID]) == ["a", "b", "c", "d", "d", "d"]
    assert list(out[schema.STATUS]) == ["ok", "ok", "uri_rejected", "ok", "ok", "ok"]
    assert list(out[schema.NUM_CLIPS]) == [1, 1, 1, 3, 3, 3]
    assert list(out[schema.CLIP_START_S][3:]) == [2.0, 12.0, 22.0]
    assert out[schema.DECODE_SECONDS][3] == out[schema.DECODE_SECONDS][5] > 0
    assert out[schema.FRAMES].shape == (6, 2, 224, 224, 3)
    # A restricted range is part of what was embedded (see schema.range_version).
    assert out[schema.CONTENT_VERSION][0] == "v1#t=2.0,6.0"
    assert out[schema.CONTENT_VERSION][1] == decode.local_version(os.stat(good))
    assert out[schema.CONTENT_VERSION][3] == decode.local_version(os.stat(long)) + "#t=2.0,"
    assert (out[schema.CLIP_START_S][0], out[schema.CLIP_END_S][0]) == (2.0, 6.0)
    assert list(out["tags"][0]) == ["x"] and list(out["tags"][5]) == ["y"]
    assert result["tags"].type == pa.list_(pa.string())  # passthrough keeps its Arrow type
    assert schema.START_S not in out and schema.VERSION not in out
    # Output is cut into whole videos once a batch holds `output_bytes` of frames: here
    # every clip (2 x 224 x 224 x 3 bytes) reaches it, so each video comes out on its own.
    small = DecodeStage(stage.config, output_bytes=1)
    try:
        parts = list(small(table))
    finally:
        small.close()
    assert [p[schema.VIDEO_ID].to_pylist() for p in parts] == [["a"], ["b"], ["c"], ["d"] * 3]
    assert [p["tags"].to_pylist()[-1] for p in parts] == [["x"], [], None, ["y"]]
    timings = [schema.DECODE_SECONDS]
    assert pa.concat_tables(parts).drop_columns(timings).equals(result.drop_columns(timings))
    empty = stage.decode_batch(table.slice(0, 0))
    assert schema.frames_ndarray(empty[schema.FRAMES]).shape == (0, 2, 224, 224, 3)
    assert len(empty["tags"]) == 0
    (pid,) = stage.child_pids
    assert pid is not None
    stage.close()
    assert stage.child_pids == [None]
    again = stage.decode_batch(table.slice(1, 1))  # usable after close: the decoder restarts
    assert again[schema.STATUS].to_pylist() == ["ok"] and stage.child_pids != [None]
    stage.close()


def test_child_environment_has_no_aws_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    env = process._child_env()
    assert SECRET not in env.values() and not any(k.startswith("AWS_") for k in env)
    assert env["OMP_NUM_THREADS"] == "1"


def test_s3_config(s3_bucket, media):
    endpoint, bucket = s3_bucket
    config = S3Config(endpoint_url=endpoint, region="us-east-1")
    retries = {"client_max_retries": "4", "client_retry_timeout": "180"}
    assert config.storage_options() == {
        "endpoint": endpoint,
        "allow_http": "true",
        "region": "us-east-1",
        **retries,
    }
    assert S3Config(anon=True).storage_options() == {"skip_signature": "true", **retries}
    _upload(endpoint, bucket, "x.mp4", media / "good.mp4")
    assert config.s3fs().info(f"{bucket}/x.mp4")["size"] == os.path.getsize(media / "good.mp4")


@pytest.mark.parametrize(
    "bad",
    [
        {"num_frames": 0},
        {"num_frames": 17},
        {"clip_seconds": 0},
        {"clip_overlap_s": 30.0},
        {"clip_overlap_s": -1.0},
        {"clip_seconds": 30.0, "clip_overlap_s": 29.999},
        {"clip_seconds": 0.5},
        {"timeout_s": 0},
        {"memory_limit_mb": 100},
        {"max_attempts": 0},
        {"fault_injection": (("v", "explode"),)},
        {"decoder": "opencv"},
        {"max_bytes": 0},
    ],
)
def test_decode_config_validation(bad):
    with pytest.raises(ValueError, match="invalid DecodeConfig"):
        DecodeConfig(**bad)


def test_clip_windows_start_at_least_one_second_apart():
    with pytest.raises(ValueError, match=r"\(the window stride\) must be >= 1.0 s"):
        DecodeConfig(clip_seconds=30.0, clip_overlap_s=29.999)
    assert DecodeConfig(clip_seconds=30.0, clip_overlap_s=29.0).clip_overlap_s == 29.0
    assert DecodeConfig(clip_seconds=1.0).clip_seconds == 1.0
    # One bound for "too short to be a window" in the config and in the worker.
    assert decode.MIN_CLIP_STRIDE_S == MIN_TAIL_CLIP_S


@pytest.mark.parametrize(
    "endpoint",
    [
        "127.0.0.1:9000",
        "minio:9000",
        "localhost:9000",
        "ftp://minio:9000",
        "HTTP://minio:9000",
        "http://",
        "http://:9000",
        "http://minio:port",
        "http://key:secret@minio:9000",
        "http://minio:9000/bucket",
        "https://minio:9000?region=x",
    ],
)
def test_s3_endpoint_must_be_an_http_url_with_a_host(endpoint):
    with pytest.raises(ValueError, match="S3 endpoint: it must be http://host") as err:
        S3Config(endpoint_url=endpoint)
    assert "secret" not in str(err.value)


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:9000", "https://s3.example.com", "http://[::1]:9000/", None]
)
def test_s3_endpoint_accepted(endpoint):
    assert S3Config(endpoint_url=endpoint).endpoint_url == endpoint


@pytest.mark.slow
def test_stage_under_ray_data(media, ray_cluster):
    import ray

    rows = [
        {schema.VIDEO_ID: "good", schema.URI: str(media / "good.mp4"), "caption": "g"},
        {schema.VIDEO_ID: "long", schema.URI: str(media / "long.mp4"), "caption": "l"},
        {schema.VIDEO_ID: "bad", schema.URI: str(media / "random.mp4"), "caption": "r"},
    ]
    config = DecodeConfig(allowed_roots=(str(media),), clip_seconds=10)
    for decoders in (1, 2):
        ds = ray.data.from_items(rows).map_batches(
            DecodeStage,
            fn_constructor_kwargs={"config": config, "decoders": decoders},
            batch_format="pyarrow",
            batch_size=2,
            concurrency=1,
        )
        out = sorted(ds.take_all(), key=lambda r: (r[schema.VIDEO_ID], r[schema.CLIP_INDEX]))
        assert [(r[schema.VIDEO_ID], r[schema.STATUS]) for r in out] == [
            ("bad", "probe_failed"),
            ("good", "ok"),
            ("long", "ok"),
            ("long", "ok"),
            ("long", "ok"),
        ]
        assert [r["caption"] for r in out] == ["r", "g", "l", "l", "l"]
        for row in out[1:]:
            assert np.asarray(row[schema.FRAMES]).shape == (4, 224, 224, 3)
            assert_frames_match(np.asarray(row[schema.FRAMES]), np.array(row[schema.FRAME_INDICES]))


def test_pipe_protocol_roundtrip_timeout_validation_and_eof():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as reader, os.fdopen(write_fd, "wb") as writer:
        frames = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
        protocol.write_message(writer, {"status": "ok", "n": 1}, frames)
        header, payload = protocol.read_message(reader, time.monotonic() + 5)
        assert header == {"status": "ok", "n": 1} and bytes(payload) == frames.tobytes()
        with pytest.raises(TimeoutError):
            protocol.read_message(reader, time.monotonic() + 0.1)

        def refuse(header, size):
            raise ValueError(f"{size} bytes refused")

        protocol.write_message(writer, {}, b"x" * 10)
        with pytest.raises(ValueError, match="10 bytes refused"):
            protocol.read_message(reader, time.monotonic() + 5, refuse)
        writer.close()
        with pytest.raises(EOFError):
            protocol.read_message(reader, time.monotonic() + 5)


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ({"status": "exploded"}, 0),
        ({"status": "probe_failed"}, 10),
        ({"status": "ok", "clips": []}, 0),
        ({"status": "ok", "clips": [{}], "shape": [1, 4, 224, 224, 3]}, 602112),
        ({"status": "ok", "clips": [{}], "shape": [1, 4, 8, 8, 3], "decoder": "decord"}, 768),
        ({"status": "ok", "clips": [{}], "shape": [1, 4, 224, 224, 3], "decoder": "decord"}, 5),
        # Thumbnails: missing, one short, too big, or not counted in the payload.
        (
            {"status": "ok", "clips": [{}], "shape": [1, 4, 224, 224, 3], "decoder": "decord"},
            602112,
        ),
        (
            {
                "status": "ok",
                "clips": [{}, {}],
                "shape": [2, 4, 224, 224, 3],
                "decoder": "pyav",
                "thumbnails": [10],
            },
            2 * 602112 + 10,
        ),
        (
            {
                "status": "ok",
                "clips": [{}],
                "shape": [1, 4, 224, 224, 3],
                "decoder": "pyav",
                "thumbnails": [2 << 20],
            },
            602112 + (2 << 20),
        ),
        (
            {
                "status": "ok",
                "clips": [{}],
                "shape": [1, 4, 224, 224, 3],
                "decoder": "pyav",
                "thumbnails": [10],
            },
            602112,
        ),
    ],
)
def test_malformed_replies_are_refused(header, size):
    good_clip = {"index": 0, "start_s": 0.0, "end_s": 1.0, "frame_indices": [0, 1, 2, 3]}
    checker = IsolatedDecoder(DecodeConfig())
    with pytest.raises(ValueError):
        checker._validate(header, size)
    for bad_clip in ({**good_clip, "index": "0"}, {**good_clip, "frame_indices": [0, 1]}):
        reply = {"status": "ok", "clips": [bad_clip], "shape": [1, 4, 224, 224, 3]}
        with pytest.raises(ValueError):
            checker._validate({**reply, "decoder": "decord", "thumbnails": [0]}, 602112)
    good = {"status": "ok", "clips": [good_clip], "shape": [1, 4, 224, 224, 3], "decoder": "pyav"}
    checker._validate({**good, "thumbnails": [0]}, 602112)
    checker._validate({**good, "thumbnails": [9000]}, 602112 + 9000)


def test_decoder_pool_imap_keeps_order_and_a_bounded_window():
    """Results come in input order, and a consumer that stops taking them stops the pool
    after a window of twice the decoders: a batch of long videos is not all held at once."""
    pool = DecoderPool(DecodeConfig(), size=2)
    started: list[int] = []

    def work(decoder, i):  # the decoders' processes are never started: nothing decodes
        started.append(i)
        time.sleep(0.01 * (i % 3))
        return i * i

    try:
        results = pool.imap(work, range(50))
        assert next(results) == 0
        time.sleep(0.3)
        assert len(started) <= 2 * 2 + 1
        assert list(results) == [i * i for i in range(1, 50)]
        assert pool.map(work, range(7)) == [i * i for i in range(7)]
    finally:
        pool.close()


@pytest.mark.timeout(60)  # a hang guard: nothing here waits on a clock
def test_decoder_pool_imap_stopped_early_cancels_what_has_not_started():
    """A consumer that stops taking results cancels the items submitted but not started:
    they never run, even once the pool has threads free for them."""
    size = 2
    pool = DecoderPool(DecodeConfig(), size=size)
    started: list[int] = []
    changed = threading.Condition()
    release = threading.Event()

    def work(decoder, i):  # the decoders' processes are never started: nothing decodes
        with changed:
            started.append(i)
            changed.notify_all()
        if i:
            release.wait()
        return i

    try:
        results = pool.imap(work, range(50))
        assert next(results) == 0
        # The window holds 2 * size items (0 .. 2*size - 1). Item 0 is done, so its thread
        # takes the next one; then every thread blocks: items 0 .. size have started and
        # size + 1 .. 2*size - 1 (here item 3) wait in the queue. Wait for that state.
        with changed:
            changed.wait_for(lambda: len(started) == size + 1)
        results.close()  # the consumer stops: the queued items are cancelled, not run
    finally:
        release.set()
        pool.close()  # waits for the running items, and would run any left in the queue
    assert sorted(started) == list(range(size + 1))
