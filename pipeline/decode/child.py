"""The decode child: probe and decode with PyAV, decord as the fallback (or the reverse).

Run by :class:`pipeline.decode.IsolatedDecoder` as `python -m pipeline.decode.child`; it
serves one job at a time over stdin/stdout until stdin closes. Everything that parses
untrusted bytes happens here, under `RLIMIT_DATA`, so a decoder bug costs this process only.

:func:`decode_path` is also callable in-process (benchmarks measure the isolation cost).

Frames: the "pyav" decoder (:mod:`.reader`) returns the same decoded pixels as decord, the
official evaluation's reader, frame for frame (same frame count, same RGB conversion, same
rotation), for 0.53-0.72 of its CPU at 720p-1080p: it decodes only the packets the sampled
frames depend on.
decord is imported only when it is used. With `sampling="keyframe"` (PyAV only) each frame
moves to the nearest keyframe of its segment, which decodes alone (approximate, opt-in).

Resizing: frames are decoded at full size and resized with
:func:`models.internvideo2.preprocess.resize_frames_np`, the official evaluation's torch
bicubic antialiased resize computed with numpy (same weights; one level apart on about 1e-5
of pixels), so the child never imports torch (1.2 CPU s and 200 MB per process). Letting
FFmpeg scale (decord's `width=`/`height=`, swscale) is cheaper still but moves pixels by
about 0.9 grey levels on average (`benchmarks/decode_throughput.py`).
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
import numpy as np

from models.internvideo2.preprocess import (
    middle_frame_indices,
    middle_frame_segments,
    resize_frames_np,
    window_frame_indices,
    window_frame_segments,
)
from pipeline.decode.protocol import (
    ALLOCATION_FAILURES,
    MIN_CLIP_STRIDE_S,
    describe,
    read_message,
    write_message,
)
from pipeline.decode.reader import index_stream, read_frames, snap_to_keyframes
from pipeline.schema import Status

#: Demuxers FFmpeg may pick. Playlist and concat demuxers (hls, concat) could open other
#: files, image demuxers would accept a still renamed .mp4: none of them is listed.
DEMUXERS = "mov,mp4,matroska,webm,avi,mpegts,mpeg,flv,asf,ogg"
PROBE_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": DEMUXERS}
#: The same, and `skip_frame=all` for the decoder FFmpeg's stream-info probe opens on its own:
#: it then reads the parameters from the headers and parsers instead of decoding frames (for
#: H.264 it decodes until it can tell the reorder delay: ~46 CPU ms at 1080p). Frames are
#: decoded by the stream's own codec context, which this does not reach. Kept only for the
#: MP4 family, whose sample tables give every packet's timestamps (the probe's decoder only
#: helps guess them where a container lacks them); other containers are opened again plainly.
FAST_OPEN_OPTIONS = {**PROBE_OPTIONS, "skip_frame": "all"}
FAST_OPEN_FORMATS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2"})
#: Still images (an image query), read only when a job asks for one: never for a video.
IMAGE_DEMUXERS = "png_pipe,jpeg_pipe,webp_pipe,bmp_pipe,image2"
IMAGE_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": IMAGE_DEMUXERS}
#: A trailing window shorter than this is dropped, unless it is the video's only clip.
MIN_TAIL_CLIP_S = MIN_CLIP_STRIDE_S
#: MJPEG quantizer of thumbnails (2 best .. 31 worst): ~6-15 KB for a 256-px frame.
THUMBNAIL_QUALITY = 5


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
    """One clip: `[start_s, end_s)`, its int64 `[T]` frame indices and the int64 `[T, 2]`
    segments `[a, b)` of the middle rule they are the middles of."""

    index: int
    start_s: float
    end_s: float
    indices: np.ndarray
    segments: np.ndarray


def open_container(path: str) -> av.container.InputContainer:
    """Open `path` with the whitelisted demuxers; unreadable is `probe_failed`. An MP4 is
    opened without decoding any frame (:data:`FAST_OPEN_OPTIONS`)."""
    try:
        container = av.open(path, options=FAST_OPEN_OPTIONS)
        if container.format.name in FAST_OPEN_FORMATS:
            return container
        container.close()
        return av.open(path, options=PROBE_OPTIONS)
    except MemoryError:
        raise
    except Exception as exc:
        raise DecodeFailure(Status.PROBE_FAILED, f"unreadable container: {exc}") from None


def probe(path: str, params: dict[str, Any]) -> Probe:
    """Read the container header; reject what is unreadable, not video, or too large."""
    with open_container(path) as container:
        return probe_container(container, params)


def probe_container(container: av.container.InputContainer, params: dict[str, Any]) -> Probe:
    """:func:`probe` of an open container (decoding then reuses it)."""
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
        segments = middle_frame_segments(num_frames, t)
        return [ClipPlan(0, 0.0, duration, middle_frame_indices(num_frames, t), segments)]
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
        window = (fps, lo, stop, num_frames, t)
        plans.append(
            ClipPlan(i, lo, hi, window_frame_indices(*window), window_frame_segments(*window))
        )
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
        with open_container(path) as container:
            info = probe_container(container, params)
            order = ("decord", "pyav") if params.get("decoder") == "decord" else ("pyav", "decord")
            errors = []
            for decoder in order:
                try:
                    plans, frames, thumbs = _DECODERS[decoder](
                        path, container, info, params, start_s, end_s, fault
                    )
                    break
                except (DecodeFailure, MemoryError):
                    raise
                except Exception as exc:  # this decoder cannot read the file; try the other
                    errors.append(f"{decoder}: {describe(exc, 500)}")
        if len(errors) == len(order):
            message = "; ".join(errors)
            if any(mark in message for mark in ALLOCATION_FAILURES):
                status = Status.OOM  # an allocation refused under the cap, in C code
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
    container: av.container.InputContainer,
    info: Probe,
    params: dict,
    start_s: float | None,
    end_s: float | None,
    fault: str | None,
) -> tuple[list[ClipPlan], np.ndarray, list[bytes]]:
    """decord, as the official evaluation reads videos: `get_batch` per clip (exact frames
    also with `sampling="keyframe"`: decord cannot tell which frames decode alone)."""
    if fault in ("decord_error", "decoders_error"):
        raise RuntimeError("injected decord failure")
    decord = _decord()
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
    container: av.container.InputContainer,
    info: Probe,
    params: dict,
    start_s: float | None,
    end_s: float | None,
    fault: str | None,
) -> tuple[list[ClipPlan], np.ndarray, list[bytes]]:
    """PyAV, decord's frames for less (:mod:`.reader`): one demux indexes the packets, every
    clip's frames are decoded in one pass over the runs they need, each frame is converted,
    resized and (the middle one) made a thumbnail as it comes out, so at most one full-size
    frame is held."""
    if fault in ("pyav_error", "decoders_error"):
        raise RuntimeError("injected pyav failure")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    index = index_stream(container, stream)
    if index.num_frames < 1 or not info.fps > 0:
        raise RuntimeError(f"{index.num_frames} packets at {info.fps} fps")
    plans = plan_clips(index.num_frames, info.fps, params, start_s, end_s)
    if params.get("sampling", "exact") == "keyframe":
        plans = [replace(p, indices=snap_to_keyframes(index, p.indices, p.segments)) for p in plans]
    frames = _empty_frames(len(plans), params)
    thumbs = [b""] * len(plans)
    middle = params["num_frames"] // 2
    slots = collections.defaultdict(list)  # frame index -> [(clip, position in clip)]
    for c, plan in enumerate(plans):
        for t, i in enumerate(plan.indices.tolist()):
            slots[i].append((c, t))

    def emit(i: int, frame: av.VideoFrame) -> None:
        rgb = rgb_frame(frame)
        resized = _resize(rgb[None], params)[0]
        for c, t in slots[i]:
            frames[c, t] = resized
            if t == middle:
                thumbs[c] = thumbnail(rgb, params)

    read_frames(container, stream, index, slots, emit)
    return plans, frames, thumbs


def rgb_frame(frame: av.VideoFrame) -> np.ndarray:
    """RGB `[H, W, 3]` of a decoded frame as decord gives it: converted with the frame's
    colour matrix and range (swscale, as decord's filter graph), turned upright when the
    stream's display matrix rotates it by a multiple of 90 degrees."""
    rgb = frame.to_ndarray(format="rgb24")
    rotation = frame.rotation or 0
    if rotation % 90 == 0 and rotation % 360:
        rgb = np.ascontiguousarray(np.rot90(rgb, (rotation // 90) % 4))  # counter-clockwise
    return rgb


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
    """uint8 `[T, H, W, 3]` -> `[T, size, size, 3]` (float copies of one frame's rows only)."""
    return resize_frames_np(frames, params["size"])


def _decord() -> Any:
    """The decord module, imported on first use (most children never need it)."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    return decord


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
    _exit_with_parent()
    write_message(replies, {"ready": True, "pid": os.getpid()})
    while True:
        try:
            job, _ = read_message(jobs)
        except EOFError:
            os._exit(0)  # nothing to flush; skips the interpreter's teardown
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
