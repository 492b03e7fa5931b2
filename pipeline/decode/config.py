"""Decode settings: frames, clip windows, limits, and where videos may be read from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..storage import S3Config
from .protocol import DECODERS, FAULT_MODES, MIN_CLIP_STRIDE_S, SAMPLINGS


@dataclass(frozen=True)
class DecodeConfig:
    """Decode stage settings.

    Attributes:
        num_frames: frames T sampled per clip (middle rule), 1..16.
        size: output side in pixels (frames are `[T, size, size, 3]`).
        clip_seconds: videos up to this long give one clip; longer ones windows of it.
        clip_overlap_s: overlap between consecutive windows, at least 0 and at most
            `clip_seconds - MIN_CLIP_STRIDE_S`, so windows start at least 1 s apart.
        timeout_s: wall clock per video in the child, transfer of frames included.
        memory_limit_mb: `RLIMIT_DATA` of the child (heap and anonymous mappings; shared
            library code is not counted, so a CUDA torch build does not eat the budget).
        max_width, max_height, max_duration_s: larger videos are `resolution_exceeded`.
        max_bytes: larger files are `resolution_exceeded` too, told from the file's size
            (a stat, or the HEAD an S3 open makes) before any byte is read.
        decoder: tried first; the other one is the fallback. "decord" reads frames the way
            the official evaluation does; "pyav" (default) gives the same decoded pixels
            (tested on B-frame, long-GOP and open-GOP HEVC files) for 0.53-0.72 of the CPU at
            720p-1080p: it decodes only the packets the sampled frames depend on
            (benchmarks/decode_resolutions.py).
        sampling: "exact" (default), the middle rule's frames; "keyframe" moves each frame
            to the nearest keyframe inside its segment, when the segment has one, so it
            decodes alone (approximate and cheaper; the rows' `frame_indices` say which
            frames were used, and the embedding signature changes). PyAV only: the decord
            fallback decodes the exact frames.
        allowed_roots: local directories videos may be read from (empty: no local files).
        base_dir: directory (local or `s3://bucket/prefix`) relative URIs resolve against.
        s3: S3 endpoint settings.
        temp_dir: where fetched S3 objects are staged (default: the system temp dir).
        max_attempts: tries for a retryable failure (timeout, crash, transient fetch error).
        thumbnail_size: long side in pixels of each clip's JPEG thumbnail (its middle
            sampled frame, aspect ratio kept), for pages that show results; 0 makes none.
        still_image: read the file as one still image (PNG, JPEG, WebP, BMP), a one-frame
            clip (image queries; `num_frames` must be 1); never set for catalog videos.
        fault_injection: test hook, `(video_id, mode)` pairs run inside the child; modes in
            :data:`~pipeline.decode.protocol.FAULT_MODES`.
    """

    num_frames: int = 4
    size: int = 224
    clip_seconds: float = 30.0
    clip_overlap_s: float = 0.0
    timeout_s: float = 60.0
    memory_limit_mb: int = 4096
    max_width: int = 7680
    max_height: int = 4320
    max_duration_s: float = 24 * 3600
    max_bytes: int = 20 << 30
    decoder: str = "pyav"
    sampling: str = "exact"
    allowed_roots: tuple[str, ...] = ()
    base_dir: str | None = None
    s3: S3Config = field(default_factory=S3Config)
    temp_dir: str | None = None
    max_attempts: int = 1
    thumbnail_size: int = 256
    still_image: bool = False
    fault_injection: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        checks = {
            "num_frames must be in 1..16": 1 <= self.num_frames <= 16,
            "size must be >= 8": self.size >= 8,
            "clip_seconds must be > 0": self.clip_seconds > 0,
            "clip_overlap_s must be >= 0": self.clip_overlap_s >= 0,
            f"clip_seconds - clip_overlap_s (the window stride) must be >= {MIN_CLIP_STRIDE_S} s": (
                self.clip_seconds - self.clip_overlap_s >= MIN_CLIP_STRIDE_S
            ),
            "timeout_s must be > 0": self.timeout_s > 0,
            "memory_limit_mb must be >= 512": self.memory_limit_mb >= 512,
            "max_width/max_height must be > 0": self.max_width > 0 and self.max_height > 0,
            "max_duration_s must be > 0": self.max_duration_s > 0,
            "max_bytes must be > 0": self.max_bytes > 0,
            "max_attempts must be >= 1": self.max_attempts >= 1,
            "thumbnail_size must be 0 (none) or 16..1024": self.thumbnail_size == 0
            or 16 <= self.thumbnail_size <= 1024,
            "still_image needs num_frames 1": not self.still_image or self.num_frames == 1,
            f"decoder must be one of {DECODERS}": self.decoder in DECODERS,
            f"sampling must be one of {SAMPLINGS}": self.sampling in SAMPLINGS,
            "allowed_roots must be a tuple of str": isinstance(self.allowed_roots, tuple),
            f"fault_injection modes must be in {sorted(FAULT_MODES)}": all(
                mode in FAULT_MODES for _, mode in self.fault_injection
            ),
        }
        failed = [msg for msg, ok in checks.items() if not ok]
        if failed:
            raise ValueError("invalid DecodeConfig: " + "; ".join(failed))

    def worker_params(self) -> dict[str, Any]:
        """The settings the child needs for every job (plain JSON values)."""
        keys = ("num_frames", "size", "clip_seconds", "clip_overlap_s", "decoder", "sampling")
        keys += ("thumbnail_size", "still_image")
        limits = ("max_width", "max_height", "max_duration_s")
        return {k: getattr(self, k) for k in keys + limits}

    def signature_inputs(self) -> tuple[tuple[str, str], ...]:
        """The settings that change an embedding: frame count, frame size, clip windows, and
        approximate sampling (exact sampling adds nothing, so exact rows keep the signature
        they had before the option existed; the decoder is not part of it: both decoders
        give the same frames)."""
        inputs = (
            ("num_frames", str(self.num_frames)),
            ("size", str(self.size)),
            ("clip_seconds", repr(self.clip_seconds)),
            ("clip_overlap_s", repr(self.clip_overlap_s)),
        )
        if self.sampling != "exact":
            inputs += (("sampling", self.sampling),)
        return inputs
