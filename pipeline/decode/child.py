"""The decode child: probe with PyAV, decode with decord or PyAV (each the other's fallback).

Run by :class:`pipeline.decode.IsolatedDecoder` as `python -m pipeline.decode.child`; it
serves one job at a time over stdin/stdout until stdin closes. Everything that parses
untrusted bytes happens here, under `RLIMIT_DATA`, so a decoder bug costs this process only.

:func:`decode_path` is also callable in-process (benchmarks measure the isolation cost).

Resizing: frames are decoded at full size and resized with
:func:`models.internvideo2.preprocess.resize_frames` (torch bicubic with antialias, the
official evaluation's preprocessing). Letting decord scale (`width=`/`height=`, FFmpeg
swscale) is cheaper (4 frames: about 11 vs 19 ms CPU per 320x240 video, 58 vs 144 ms per
1280x720 one) but moves pixels by about 0.9 grey levels on average, so embeddings would
drift from the reference; measured by `benchmarks/decode_throughput.py`. The cost is in
resize_frames' float path: torch's uint8 channels-last kernel gives nearly the same pixels
(mean difference 0.005 levels, max 7) at half the cost, a change for preprocess.py rather
than here.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import fractions
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import av
import decord
import numpy as np
import torch

from models.internvideo2.preprocess import (
    middle_frame_indices,
    resize_frames,
    window_frame_indices,
)
from pipeline.decode.protocol import (
    ALLOCATION_FAILURES,
    MIN_CLIP_STRIDE_S,
    describe,
    read_message,
    write_message,
)
from pipeline.schema import Status

#: Demuxers FFmpeg may pick. Playlist and concat demuxers (hls, concat) could open other
#: files, image demuxers would accept a still renamed .mp4: none of them is listed.
DEMUXERS = "mov,mp4,matroska,webm,avi,mpegts,mpeg,flv,asf,ogg"
PROBE_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": DEMUXERS}
#: Still images (an image query), read only when a job asks for one: never for a video.
IMAGE_DEMUXERS = "png_pipe,jpeg_pipe,webp_pipe,bmp_pipe,image2"
IMAGE_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": IMAGE_DEMUXERS}
#: A trailing window shorter than this is dropped, unless it is the video's only clip.
MIN_TAIL_CLIP_S = MIN_CLIP_STRIDE_S
#: MJPEG quantizer of thumbnails (2 best .. 31 worst): ~6-15 KB for a 256-px frame.
THUMBNAIL_QUALITY = 5
#: The PyAV fallback seeks when the next wanted frame is further ahead than this.
_SEEK_AHEAD_S = 2.0


class DecodeFailure(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Probe:
    width: int
    height: int
    fps: float
    num_frames: int
    duration_s: float


@dataclass(frozen=True)
class ClipPlan:
    """One clip: `[start_s, end_s)` and its int64 `[T]` frame indices."""

    index: int
    start_s: float
    end_s: float
    indices: np.ndarray


def probe(path: str, params: dict[str, Any]) -> Probe:
    """Read the container header; reject what is unreadable, not video, or too large."""
    try:
        container = av.open(path, options=PROBE_OPTIONS)
    except MemoryError:
        raise
    except Exception as exc:
        raise DecodeFailure(Status.PROBE_FAILED, f"unreadable container: {exc}") from None
    with container:
        if not container.streams.video:
            fmt = container.format.name
            raise DecodeFailure(Status.NO_VIDEO_STREAM, f"no video stream in {fmt} container")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width > params["max_width"] or height > params["max_height"]:
            limit = f"{params['max_width']}x{params['max_height']}"
            raise DecodeFailure(Status.RESOLUTION_EXCEEDED, f"{width}x{height} exceeds {limit}")
        if width <= 0 or height <= 0:
            raise DecodeFailure(Status.PROBE_FAILED, "no frame size in the header")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / av.time_base
        num_frames = stream.frames or (round(duration * fps) if fps > 0 else 0)
    longest = max(duration, num_frames / fps if fps > 0 else 0.0)
    if longest > params["max_duration_s"]:
        message = f"duration {longest:.0f} s exceeds {params['max_duration_s']:g} s"
        raise DecodeFailure(Status.RESOLUTION_EXCEEDED, message)
    return Probe(width, height, fps, int(num_frames), duration)


def plan_clips(
    num_frames: int,
    fps: float,
    params: dict[str, Any],
    start_s: float | None = None,
    end_s: float | None = None,
) -> list[ClipPlan]:
    """Split `[start_s, end_s)` of a video into clips and pick each clip's frames.

    The video lasts `D = num_frames / fps`. The whole video when it is at most
    `clip_seconds` long is one clip sampled with the official middle rule; otherwise windows
    of `clip_seconds` with stride `clip_seconds - clip_overlap_s`, the last one possibly
    shorter (dropped below :data:`MIN_TAIL_CLIP_S` unless it is the only one). An `end_s`
    within half a frame of `D` means "to the end", so re-decoding a clip by its recorded
    bounds picks the same frames as the run that produced it.
    """
    t = params["num_frames"]
    if num_frames < 1 or not fps > 0:
        raise DecodeFailure(Status.TOO_FEW_FRAMES, f"{num_frames} frames at {fps} fps")
    duration = num_frames / fps
    start = 0.0 if start_s is None else start_s
    to_end = end_s is None or end_s >= duration - 0.5 / fps
    end = duration if to_end else end_s
    if not (0 <= start < end) or int(start * fps) >= num_frames:
        message = f"range [{start}, {end}) selects no frame of a {duration:.3f} s video"
        raise DecodeFailure(Status.TOO_FEW_FRAMES, message)
    clip_s = params["clip_seconds"]
    if start == 0 and to_end and duration <= clip_s:
        return [ClipPlan(0, 0.0, duration, middle_frame_indices(num_frames, t))]
    stride = clip_s - params["clip_overlap_s"]
    bounds = []
    while True:
        lo = start + len(bounds) * stride
        hi = min(lo + clip_s, end)
        bounds.append((lo, hi))
        if hi >= end:
            break
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_TAIL_CLIP_S:
        bounds.pop()
    plans = []
    for i, (lo, hi) in enumerate(bounds):
        # Past-the-end bound: window_frame_indices then clamps to the last frame.
        stop = duration + 1.0 if to_end and hi >= end else hi
        plans.append(ClipPlan(i, lo, hi, window_frame_indices(fps, lo, stop, num_frames, t)))
    return plans


def decode_path(
    path: str,
    params: dict[str, Any],
    start_s: float | None = None,
    end_s: float | None = None,
    fault: str | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Probe and decode one local file.

    Returns:
        The reply header (status, message, decoder, clips with bounds and frame indices,
        frames shape, `thumbnails`: one JPEG per clip, as bytes) and uint8 frames
        `[N, T, size, size, 3]` (`N = 0` on failure).
    """
    if params.get("still_image"):
        return _decode_still(path, params)
    try:
        _inject_fault(fault)
        info = probe(path, params)
        order = ("pyav", "decord") if params.get("decoder") == "pyav" else ("decord", "pyav")
        errors = []
        for decoder in order:
            try:
                plans, frames, thumbs = _DECODERS[decoder](
                    path, info, params, start_s, end_s, fault
                )
                break
            except (DecodeFailure, MemoryError):
                raise
            except Exception as exc:  # this decoder cannot read the file; try the other
                errors.append(f"{decoder}: {describe(exc, 500)}")
        else:
            message = "; ".join(errors)
            if any(mark in message for mark in ALLOCATION_FAILURES):
                status = Status.OOM  # e.g. torch's allocator refusing a frame under the cap
            elif info.num_frames == 0:
                status = Status.TOO_FEW_FRAMES
            else:
                status = Status.DECODE_ERROR
            raise DecodeFailure(status, message)
    except DecodeFailure as failure:
        return _failure(failure.status, failure.message)
    except MemoryError:
        return _failure(Status.OOM, "decoder ran out of memory under its cap")
    header = {
        "status": Status.OK.value,
        "message": "",
        "decoder": decoder,
        "clips": [
            {"index": p.index, "start_s": p.start_s, "end_s": p.end_s, "frame_indices": []}
            for p in plans
        ],
        "shape": list(frames.shape),
        # JPEG bytes per clip (empty when thumbnails are off); `main` sends them after the
        # frames and puts their lengths here.
        "thumbnails": thumbs,
    }
    for clip, plan in zip(header["clips"], plans, strict=True):
        clip["frame_indices"] = [int(i) for i in plan.indices]
    return header, frames


def _decode_still(path: str, params: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """One still image (PNG, JPEG, WebP, BMP) as a one-frame clip `[1, 1, size, size, 3]`."""
    try:
        with av.open(path, options=IMAGE_OPTIONS) as container:
            if not container.streams.video:
                raise DecodeFailure(Status.NO_VIDEO_STREAM, "no image in the file")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width > params["max_width"] or height > params["max_height"]:
                limit = f"{params['max_width']}x{params['max_height']}"
                raise DecodeFailure(Status.RESOLUTION_EXCEEDED, f"{width}x{height} exceeds {limit}")
            frame = next(container.decode(stream), None)
            if frame is None:
                raise DecodeFailure(Status.TOO_FEW_FRAMES, "the image holds no frame")
            rgb = frame.to_ndarray(format="rgb24")
    except DecodeFailure as failure:
        return _failure(failure.status, failure.message)
    except MemoryError:
        return _failure(Status.OOM, "decoder ran out of memory under its cap")
    except Exception as exc:
        return _failure(Status.PROBE_FAILED, f"unreadable image: {describe(exc, 500)}")
    frames = _resize(rgb[None], params)[None]
    header = {
        "status": Status.OK.value,
        "message": "",
        "decoder": "pyav",
        "clips": [{"index": 0, "start_s": 0.0, "end_s": 0.0, "frame_indices": [0]}],
        "shape": list(frames.shape),
        "thumbnails": [b""],
    }
    return header, frames


def _decode_decord(
    path: str,
    info: Probe,
    params: dict,
    start_s: float | None,
    end_s: float | None,
    fault: str | None,
) -> tuple[list[ClipPlan], np.ndarray, list[bytes]]:
    """decord, as the official evaluation reads videos: `get_batch` per clip."""
    if fault in ("decord_error", "decoders_error"):
        raise RuntimeError("injected decord failure")
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    try:
        num_frames, fps = len(reader), reader.get_avg_fps()
        if num_frames < 1 or not fps > 0:  # broken metadata: let PyAV's probe try
            raise RuntimeError(f"decord reports {num_frames} frames at {fps} fps")
        plans = plan_clips(num_frames, fps, params, start_s, end_s)
        frames = _empty_frames(len(plans), params)
        thumbs = []
        for i, plan in enumerate(plans):
            batch = reader.get_batch(plan.indices.tolist()).asnumpy()
            thumbs.append(thumbnail(batch[len(batch) // 2], params))
            frames[i] = _resize(batch, params)
    finally:
        del reader  # frees FFmpeg's buffers now, not at the next garbage collection
    return plans, frames, thumbs


def _decode_pyav(
    path: str,
    info: Probe,
    params: dict,
    start_s: float | None,
    end_s: float | None,
    fault: str | None,
) -> tuple[list[ClipPlan], np.ndarray, list[bytes]]:
    """PyAV: seek and decode only up to the wanted frames; indices come from timestamps."""
    if fault in ("pyav_error", "decoders_error"):
        raise RuntimeError("injected pyav failure")
    if info.num_frames < 1 or not info.fps > 0:
        raise RuntimeError(f"probe reports {info.num_frames} frames at {info.fps} fps")
    plans = plan_clips(info.num_frames, info.fps, params, start_s, end_s)
    wanted = sorted({int(i) for plan in plans for i in plan.indices})
    found = _pyav_frames(path, wanted, info.fps)
    if not found:
        raise DecodeFailure(Status.TOO_FEW_FRAMES, "no frame could be decoded")
    frames = _empty_frames(len(plans), params)
    thumbs = []
    for i, plan in enumerate(plans):
        picked = [found[int(j)] for j in plan.indices]
        thumbs.append(thumbnail(picked[len(picked) // 2][1], params))
        frames[i] = _resize(np.stack([rgb for _, rgb in picked]), params)
        plans[i] = replace(plan, indices=np.array([k for k, _ in picked], np.int64))
    return plans, frames, thumbs


def _pyav_frames(path: str, wanted: list[int], fps: float) -> dict[int, tuple[int, np.ndarray]]:
    """Map each wanted index to (index actually decoded, RGB `[H, W, 3]`): the first frame
    at or after it, or the last frame of the stream when the stream ends first."""
    found: dict[int, tuple[int, np.ndarray]] = {}
    pending = collections.deque(wanted)
    with av.open(path, options=PROBE_OPTIONS) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        base, time_base = stream.start_time or 0, stream.time_base
        frames, position, sought, last = None, -1, None, None
        while pending:
            target = pending[0]
            if frames is None or (target - position > _SEEK_AHEAD_S * fps and sought != target):
                offset = base + int(target / fps / time_base)
                container.seek(offset, stream=stream, backward=True, any_frame=False)
                frames, sought = container.decode(stream), target
            frame = next(frames, None)
            if frame is None:
                break
            if frame.pts is not None:
                position = round(float((frame.pts - base) * time_base) * fps)
            else:
                position += 1
            last = (position, frame)
            rgb = None
            while pending and pending[0] <= position:
                rgb = frame.to_ndarray(format="rgb24") if rgb is None else rgb
                found[pending.popleft()] = (position, rgb)
        if pending and last is not None:
            rgb = last[1].to_ndarray(format="rgb24")
            found.update((index, (last[0], rgb)) for index in pending)
    return found


_DECODERS = {"decord": _decode_decord, "pyav": _decode_pyav}


def thumbnail(rgb: np.ndarray, params: dict) -> bytes:
    """A JPEG of one RGB `[H, W, 3]` frame, its long side `thumbnail_size` pixels (aspect
    kept, area-averaged), or b"" when thumbnails are off (`thumbnail_size` 0)."""
    long_side = int(params.get("thumbnail_size") or 0)
    if long_side <= 0:
        return b""
    height, width = rgb.shape[:2]
    scale = min(1.0, long_side / max(height, width))
    # Even sides: the JPEG's 4:2:0 chroma planes are half size.
    w, h = max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
        width=w, height=h, format="yuvj420p", interpolation="AREA"
    )
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = w, h, "yuvj420p"
    codec.time_base = fractions.Fraction(1, 25)
    codec.options = {"qmin": str(THUMBNAIL_QUALITY), "qmax": str(THUMBNAIL_QUALITY)}
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


def _resize(frames: np.ndarray, params: dict) -> np.ndarray:
    """resize_frames one frame at a time: the same pixels, but the float copy it makes is
    one frame, not T (4 frames of 8K video would be 1.6 GB of float32 under the cap)."""
    return np.concatenate([resize_frames(frame[None], params["size"]) for frame in frames])


def _empty_frames(num_clips: int, params: dict) -> np.ndarray:
    size = params["size"]
    return np.empty((num_clips, params["num_frames"], size, size, 3), np.uint8)


def _failure(status: Status, message: str) -> tuple[dict[str, Any], np.ndarray]:
    header = {"status": status.value, "message": message[:2000], "decoder": ""}
    return header, np.empty(0, np.uint8)


def _inject_fault(fault: str | None) -> None:
    """Test hooks (DecodeConfig.fault_injection): misbehave the way broken decoders do."""
    if fault == "hang":
        while True:
            time.sleep(3600)
    elif fault == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault == "oom":
        hog = []
        while True:  # address space only; the cap raises MemoryError long before RAM fills
            hog.append(np.empty(256 << 20, np.uint8))
    elif fault == "bad_alloc":  # how decord dies when FFmpeg's allocation fails under the cap
        print("terminate called after throwing an instance of 'std::bad_alloc'", file=sys.stderr)
        sys.stderr.flush()
        os.abort()


def _exit_with_parent() -> None:
    """Exit when the parent dies (reparenting changes our ppid), even in the middle of a
    hung decode; a thread because PR_SET_PDEATHSIG fires on the parent *thread's* exit."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-limit-mb", type=int, required=True)
    args = parser.parse_args(argv)
    # fd 1 is the reply channel; anything a C library prints goes to stderr instead.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    jobs = os.fdopen(os.dup(0), "rb", buffering=0)
    limit = args.memory_limit_mb << 20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    faulthandler.enable()
    torch.set_num_threads(1)
    decord.logging.set_level(decord.logging.QUIET)
    _exit_with_parent()
    write_message(replies, {"ready": True, "pid": os.getpid()})
    while True:
        try:
            job, _ = read_message(jobs)
        except EOFError:
            os._exit(0)  # nothing to flush; skips torch's slow interpreter teardown
        header, frames = decode_path(
            job["path"], job, job.get("start_s"), job.get("end_s"), job.get("fault")
        )
        thumbs = header.pop("thumbnails", [])
        header["thumbnails"] = [len(t) for t in thumbs]
        write_message(replies, header, frames, *thumbs)
        if header["status"] == Status.OOM:
            return 0  # the parent starts a fresh process for the next job


if __name__ == "__main__":
    sys.exit(main())
