"""A synthetic video catalog: short h264 clips of coloured shapes moving over a background.

Each video is one shape (square, circle, triangle) of one colour moving in one direction
over a vertical gradient of another colour, so videos differ visually and a caption such as
"a red square moving left on a blue background" describes each one. Generation is
deterministic for a seed (each video draws from its own `(seed, index)` generator and x264
runs single-threaded), and parallel over processes, so benchmarks can make hundreds.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema
from pipeline.storage import S3Config

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "cyan": (40, 200, 210),
    "pink": (240, 130, 180),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MANIFEST_NAME = "manifest.parquet"
#: Changes whenever the same spec renders other pixels (caches of decoded frames key on it).
RENDER_VERSION = 2
CAPTION, CATEGORY, DURATION_S = "caption", "category", "duration_s"


@dataclass(frozen=True)
class SampleVideo:
    """What one synthetic video shows; `speed` is in frame widths (or heights) per second."""

    video_id: str
    shape: str
    color: str
    background: str
    direction: str
    speed: float
    size: float

    @property
    def caption(self) -> str:
        return (
            f"a {self.color} {self.shape} moving {self.direction} on a {self.background} background"
        )


def sample_videos(num_videos: int, seed: int = 0) -> list[SampleVideo]:
    """The specs of a catalog; video `i` depends only on `(seed, i)`."""
    names = list(COLORS)
    videos = []
    for i in range(num_videos):
        rng = np.random.default_rng([seed, i])
        color, background = rng.choice(len(names), size=2, replace=False)
        videos.append(
            SampleVideo(
                video_id=f"sample-{i:06d}",
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                color=names[color],
                background=names[background],
                direction=list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))],
                speed=float(rng.uniform(0.1, 0.3)),
                size=float(rng.uniform(0.2, 0.4)),
            )
        )
    return videos


def _shape_mask(shape: str, side: int) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side] + 0.5
    if shape == "circle":
        return (yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= (side / 2) ** 2
    if shape == "triangle":  # apex up: the row's half-width grows with its depth
        return np.abs(xx - side / 2) <= yy / 2
    return np.ones((side, side), bool)


def iter_frames(
    video: SampleVideo, seconds: float, width: int, height: int, fps: int
) -> Iterator[np.ndarray]:
    """RGB uint8 `[height, width, 3]` frames of one video, `round(seconds * fps)` of them,
    one at a time (a 20-minute video does not fit in memory as one array)."""
    top = np.asarray(COLORS[video.background], np.float32)
    ramp = np.linspace(1.0, 0.55, height, dtype=np.float32)[:, None, None]
    background = np.broadcast_to(ramp * top, (height, width, 3)).astype(np.uint8)
    side = max(4, int(video.size * min(width, height)))
    mask = _shape_mask(video.shape, side)
    dx, dy = DIRECTIONS[video.direction]
    count = max(1, round(seconds * fps))
    for t in range(count):
        frame = background.copy()
        # The shape crosses the centre half-way through the video, so where it is says
        # nothing about where it goes: only the order of the frames does (a video played
        # backwards is a video of the opposite direction). It wraps around, so it stays on
        # screen for any length, once its path is longer than the frame (never at the
        # catalog's speeds in clips under 3.3 s).
        travel = video.speed * (t - (count - 1) / 2) / fps
        x = int(((0.5 + dx * travel) % 1.0) * (width + side)) - side
        y = int(((0.5 + dy * travel) % 1.0) * (height + side)) - side
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + side, width), min(y + side, height)
        if x0 < x1 and y0 < y1:
            region = mask[y0 - y : y1 - y, x0 - x : x1 - x]
            frame[y0:y1, x0:x1][region] = COLORS[video.color]
        yield frame


def render_frames(
    video: SampleVideo, seconds: float, width: int, height: int, fps: int
) -> np.ndarray:
    """All frames of one video, RGB uint8 `[N, height, width, 3]`."""
    return np.stack(list(iter_frames(video, seconds, width, height, fps)))


def write_video(path: str, frames: Iterable[np.ndarray], fps: int) -> None:
    """Encode RGB `[H, W, 3]` frames as h264/yuv420p mp4, single-threaded so the same
    frames give the same bytes."""
    with av.open(path, "w", format="mp4") as container:
        stream = None
        for i, rgb in enumerate(frames):
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
                stream.codec_context.thread_count = 1
                stream.options = {"preset": "veryfast", "crf": "23", "g": str(2 * fps)}
            # Explicit conversion and pts: left to PyAV's encode path, the same frames gave
            # different bytes from run to run.
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        if stream is None:
            raise ValueError("no frames to write")
        container.mux(stream.encode())


def _render_one(args: tuple[SampleVideo, str, float, int, int, int]) -> None:
    video, path, seconds, width, height, fps = args
    write_video(path, iter_frames(video, seconds, width, height, fps), fps)


def make_sample_catalog(
    out: str,
    num_videos: int = 24,
    seconds: float = 3.0,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    seed: int = 0,
    s3: S3Config | None = None,
    workers: int | None = None,
    absolute_uris: bool = False,
) -> str:
    """Write `num_videos` videos under `out/videos/` and `out/manifest.parquet`.

    Args:
        out: local directory or `s3://bucket/prefix`.
        s3: endpoint settings when `out` is on S3 (credentials from the AWS chain).
        workers: encoding processes, always fresh ones (default: one per CPU, at most one
            per 8 videos).
        absolute_uris: local manifests hold absolute paths instead of paths relative to
            the manifest's directory.

    Returns:
        The manifest's path or `s3://` URI. Columns: video_id, uri, caption, category
        (the shape), duration_s.
    """
    if num_videos < 1 or seconds <= 0 or width < 16 or height < 16 or fps < 1:
        raise ValueError("need num_videos >= 1, seconds > 0, a size of at least 16x16, fps >= 1")
    on_s3 = out.startswith("s3://")
    with tempfile.TemporaryDirectory(prefix="vidcat-sample-") as staging:
        root = staging if on_s3 else os.path.abspath(out)
        os.makedirs(os.path.join(root, "videos"), exist_ok=True)
        videos = sample_videos(num_videos, seed)
        names = [f"videos/{v.video_id}.mp4" for v in videos]
        jobs = [
            (v, os.path.join(root, n), seconds, width, height, fps)
            for v, n in zip(videos, names, strict=True)
        ]
        workers = workers or max(1, min(os.cpu_count() or 1, num_videos // 8))
        # Always in fresh processes, also for one worker: encoded in a process that had
        # imported torch, the same frames came out as different h264 (in one run of three),
        # so the caller's state must not reach the encoder.
        spawn = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            list(pool.map(_render_one, jobs, chunksize=4))
        if on_s3:
            prefix = out.rstrip("/")
            uris = [f"{prefix}/{n}" for n in names]
        else:
            uris = [os.path.join(root, n) if absolute_uris else n for n in names]
        duration = max(1, round(seconds * fps)) / fps
        table = pa.table(
            {
                schema.VIDEO_ID: [v.video_id for v in videos],
                schema.URI: uris,
                CAPTION: [v.caption for v in videos],
                CATEGORY: [v.shape for v in videos],
                DURATION_S: pa.array([duration] * num_videos, pa.float64()),
            }
        )
        pq.write_table(table, os.path.join(root, MANIFEST_NAME))
        if not on_s3:
            return os.path.join(root, MANIFEST_NAME)
        fs = (s3 or S3Config()).s3fs()
        bucket_prefix = out[len("s3://") :].rstrip("/")
        for name in [*names, MANIFEST_NAME]:
            fs.put_file(os.path.join(root, name), f"{bucket_prefix}/{name}")
        return f"{out.rstrip('/')}/{MANIFEST_NAME}"
