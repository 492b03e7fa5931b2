"""Training and evaluation data for the `demo-shapes` model, made from the sample catalog.

A catalog is rendered with :func:`pipeline.sample_catalog.make_sample_catalog` into a
temporary directory and each video is decoded by the pipeline's own decode function (the
same frames the embed stage sees: middle sampling, bicubic resize to 224x224), so the model
trains and is evaluated on exactly what it will embed. The files are deleted afterwards;
the frames stay in memory (uint8, 0.6 MB per video at T=4).

Every video carries its caption and its attribute labels (indices into :data:`VALUES`);
:func:`describe` turns labels back into the caption, and :data:`TRANSFORMS` lists the frame
transforms that keep a caption true once its labels are mapped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import torch

from models.internvideo2.losses import ANY
from models.internvideo2.train import FrameTransform, TrainingSet
from pipeline.decode import DecodeConfig
from pipeline.decode.child import decode_path
from pipeline.sample_catalog import (
    CAPTION,
    COLORS,
    DIRECTIONS,
    RENDER_VERSION,
    SHAPES,
    SampleVideo,
    make_sample_catalog,
    sample_videos,
)

logger = logging.getLogger(__name__)

#: The attributes of a caption, in label order, and the values each can take.
ATTRIBUTES = ("shape", "color", "background", "direction")
VALUES: tuple[tuple[str, ...], ...] = (SHAPES, tuple(COLORS), tuple(COLORS), tuple(DIRECTIONS))
_DIRECTION = ATTRIBUTES.index("direction")


def _direction_map(swaps: dict[str, str]) -> tuple[tuple[int, ...] | None, ...]:
    names = VALUES[_DIRECTION]
    mapped = tuple(names.index(swaps.get(name, name)) for name in names)
    return tuple(mapped if i == _DIRECTION else None for i in range(len(ATTRIBUTES)))


#: Transforms under which every caption stays true with its direction relabelled. A
#: horizontal mirror turns left into right (shapes, colours and the vertical background
#: gradient are symmetric left-right); the frames played backwards are those of the
#: catalog's video of the opposite direction (its shapes cross the centre half-way). A
#: vertical flip is not here: it would turn the triangle upside down.
TRANSFORMS = (
    FrameTransform(
        "mirror", flip_width=True, relabel=_direction_map({"left": "right", "right": "left"})
    ),
    FrameTransform(
        "reverse",
        flip_time=True,
        relabel=_direction_map({"left": "right", "right": "left", "up": "down", "down": "up"}),
    ),
)


@dataclass(frozen=True)
class CatalogSpec:
    """One rendered catalog: which videos (seed, count) and how they are encoded."""

    seed: int
    num_videos: int
    width: int = 128
    height: int = 96
    fps: int = 12
    seconds: float = 3.0

    def __post_init__(self) -> None:
        if self.num_videos < 1 or self.width < 16 or self.height < 16 or self.fps < 1:
            raise ValueError(f"invalid catalog spec {self}")
        if self.seconds <= 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")


#: Encodings (width, height, fps, seconds) of the training catalogs: small frames (the
#: decoder resizes every frame to 224x224, and small videos render fast), three aspect
#: ratios, frame rates and lengths that space the sampled frames differently in time.
TRAINING_ENCODINGS = (
    (128, 96, 12, 3.0),
    (160, 120, 10, 2.0),
    (144, 108, 15, 4.0),
    (112, 112, 8, 2.5),
    (192, 144, 12, 3.5),
    (192, 108, 16, 3.0),
)
#: Training videos of the committed checkpoint, split evenly over the encodings (what fits
#: the ~20-minute CPU budget with the epochs of `jobs/train_demo_model.py`).
TRAIN_VIDEOS = 3000
#: The held-out catalog: a seed and an encoding no training catalog uses.
HELD_OUT = CatalogSpec(seed=9001, num_videos=120, width=400, height=300, fps=30, seconds=3.0)
#: How held-out videos are re-encoded for the copy-detection metric (see :func:`reencode`).
COPY_ENCODING = {"width": 240, "height": 180, "crf": 35}


def training_specs(seed: int, num_videos: int = TRAIN_VIDEOS) -> tuple[CatalogSpec, ...]:
    """The training catalogs for `seed`: `num_videos` spread over :data:`TRAINING_ENCODINGS`.

    Catalog seeds are `1000 * (seed + 1) + k`, never :data:`HELD_OUT`'s seed.
    """
    if num_videos < 1 or seed < 0:
        raise ValueError(
            f"need at least one training video and seed >= 0, got {num_videos}, {seed}"
        )
    parts = len(TRAINING_ENCODINGS)
    counts = [num_videos // parts + (k < num_videos % parts) for k in range(parts)]
    specs = tuple(
        CatalogSpec(1000 * (seed + 1) + k, count, width, height, fps, seconds)
        for k, ((width, height, fps, seconds), count) in enumerate(
            zip(TRAINING_ENCODINGS, counts, strict=True)
        )
        if count
    )
    if any(s.seed == HELD_OUT.seed for s in specs):
        raise ValueError(f"seed {seed} would train on the held-out catalog's videos")
    return specs


@dataclass
class VideoSet:
    """Decoded videos with what they show.

    Attributes:
        frames: uint8 `[N, T, 224, 224, 3]`, the decode stage's output for each video.
        labels: int64 `[N, A]` attribute values (indices into :data:`VALUES`).
        captions: the `N` captions.
        copies: uint8 `[N, T, 224, 224, 3]`, the frames of a re-encoded copy of each
            video (another resolution and bitrate), or None.
        specs: the catalogs the videos come from, in order.
    """

    frames: np.ndarray
    labels: np.ndarray
    captions: list[str]
    copies: np.ndarray | None = None
    specs: tuple[CatalogSpec, ...] = ()

    def __len__(self) -> int:
        return len(self.captions)

    def as_training_set(self) -> TrainingSet:
        """The frames and labels as the trainer's clips, captioned by :func:`describe` and
        augmented by :data:`TRANSFORMS` (shares the arrays, copies nothing)."""
        return TrainingSet(
            torch.from_numpy(self.frames), torch.from_numpy(self.labels), describe, TRANSFORMS
        )


def labels_of(video: SampleVideo) -> tuple[int, ...]:
    """The attribute labels of one sample video, in :data:`ATTRIBUTES` order."""
    values = (video.shape, video.color, video.background, video.direction)
    return tuple(names.index(v) for names, v in zip(VALUES, values, strict=True))


def describe(labels: Sequence[int]) -> str:
    """The caption of `labels`; an attribute labelled :data:`ANY` is left out.

    With every attribute named this is the sample catalog's own caption, e.g. "a red
    square moving left on a blue background"; without colour, direction and background it
    shrinks to "a square".
    """
    shape, color, background, direction = (
        None if label == ANY else names[label] for names, label in zip(VALUES, labels, strict=True)
    )
    if shape is None:
        raise ValueError("a caption always names the shape")
    text = f"a {color} {shape}" if color else f"a {shape}"
    if direction:
        text += f" moving {direction}"
    if background:
        text += f" on a {background} background"
    return text


def render_videos(spec: CatalogSpec, *, copies: dict | None = None, workers: int | None = None):
    """Render the catalog `spec` and decode every video as the pipeline would.

    Args:
        spec: which catalog.
        copies: when given, also re-encode every video with :func:`reencode` using these
            keyword arguments (`width`, `height`, `crf`) and decode the copies.
        workers: encoding processes (default: one per CPU).

    Returns:
        A :class:`VideoSet`.
    """
    params = DecodeConfig(thumbnail_size=0).worker_params()  # frames only, no JPEGs
    videos = sample_videos(spec.num_videos, spec.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vidcat-train-") as tmp:
        manifest = make_sample_catalog(
            tmp,
            num_videos=spec.num_videos,
            seconds=spec.seconds,
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            seed=spec.seed,
            workers=workers or os.cpu_count() or 1,
            absolute_uris=True,
        )
        rows = pq.read_table(manifest).to_pylist()
        rendered = time.perf_counter()
        frames = _decode_all([row["uri"] for row in rows], params)
        copied = None
        if copies is not None:
            paths = []
            for row in rows:
                path = row["uri"].removesuffix(".mp4") + ".copy.mp4"
                reencode(row["uri"], path, **copies)
                paths.append(path)
            copied = _decode_all(paths, params)
    logger.info(
        "catalog %s: rendered in %.1f s, decoded%s in %.1f s",
        spec,
        rendered - started,
        " and re-encoded" if copies is not None else "",
        time.perf_counter() - rendered,
    )
    captions = [row[CAPTION] for row in rows]
    if captions != [v.caption for v in videos]:
        raise RuntimeError("the manifest's captions differ from the catalog's specs")
    labels = np.array([labels_of(v) for v in videos], np.int64)
    return VideoSet(frames, labels, captions, copied, (spec,))


def cached_videos(
    spec: CatalogSpec,
    cache: str | os.PathLike | None,
    *,
    copies: dict | None = None,
    workers: int | None = None,
) -> VideoSet:
    """:func:`render_videos`, kept as an `.npz` in the directory `cache` (None: no cache).

    The file name holds the spec, the copies' encoding, the decode settings and the
    renderer's version, so a changed decoder or catalog never reads stale frames; a second
    run skips rendering and decoding (minutes on a busy 2-core machine).
    """
    if cache is None:
        return render_videos(spec, copies=copies, workers=workers)
    params = DecodeConfig(thumbnail_size=0).worker_params()
    key = json.dumps([dataclasses.asdict(spec), copies, params, RENDER_VERSION], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(cache) / f"catalog-{spec.seed}-{digest}.npz"
    if path.exists():
        with np.load(path) as npz:
            saved = {k: npz[k] for k in npz.files}
        logger.info("catalog %s: decoded frames from %s", spec, path)
        return VideoSet(
            saved["frames"],
            saved["labels"],
            [str(c) for c in saved["captions"]],
            saved.get("copies"),
            (spec,),
        )
    videos = render_videos(spec, copies=copies, workers=workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"frames": videos.frames, "labels": videos.labels, "captions": videos.captions}
    if videos.copies is not None:
        arrays["copies"] = videos.copies
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)
    return videos


def render_held_out(
    spec: CatalogSpec = HELD_OUT, workers: int | None = None, cache: str | None = None
) -> VideoSet:
    """The held-out catalog with a re-encoded copy of each video (:data:`COPY_ENCODING`)."""
    return cached_videos(spec, cache, copies=COPY_ENCODING, workers=workers)


def render_training_set(
    specs: Sequence[CatalogSpec], workers: int | None = None, cache: str | None = None
) -> VideoSet:
    """Several catalogs (e.g. of other sizes, frame rates and lengths) as one set."""
    parts = [cached_videos(spec, cache, workers=workers) for spec in specs]
    return VideoSet(
        np.concatenate([p.frames for p in parts]),
        np.concatenate([p.labels for p in parts]),
        [c for p in parts for c in p.captions],
        None,
        tuple(specs),
    )


def reencode(src: str, dst: str, width: int, height: int, crf: int = 35) -> None:
    """Write a copy of the video `src` at another resolution and quality (h264, PyAV).

    Frames are scaled by FFmpeg's swscale (bicubic) and encoded like
    :func:`pipeline.sample_catalog.write_video`, single-threaded, at `crf` (23 there).
    """
    with av.open(src) as source, av.open(dst, "w", format="mp4") as target:
        stream_in = source.streams.video[0]
        rate = stream_in.average_rate
        stream = target.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"preset": "veryfast", "crf": str(crf)}
        for i, frame in enumerate(source.decode(stream_in)):
            out = frame.reformat(width=width, height=height, format="yuv420p")
            out.pts = i
            target.mux(stream.encode(out))
        target.mux(stream.encode())


def _decode_all(paths: Sequence[str], params: dict) -> np.ndarray:
    t, size = params["num_frames"], params["size"]
    frames = np.empty((len(paths), t, size, size, 3), np.uint8)
    for i, path in enumerate(paths):
        header, clip = decode_path(path, params)
        if header["status"] != "ok" or clip.shape[0] != 1:
            raise RuntimeError(f"cannot decode {path}: {header.get('message')}")
        frames[i] = clip[0]
    return frames
