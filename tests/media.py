"""Synthesized test media: good and broken videos, written with PyAV at test time.

Good videos paint frame `i` in a solid colour that encodes `i` (red and green channels in
steps of 16, which survive h264 and yuv420p), so a test can read back which frame a decoder
returned with :func:`frame_index_of`.
"""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np

from pipeline import sample_catalog

_STEP = 16


def index_color(i: int) -> tuple[int, int, int]:
    """RGB of frame `i` (0 <= i < 256)."""
    return ((i % _STEP) * _STEP + _STEP // 2, (i // _STEP % _STEP) * _STEP + _STEP // 2, 0)


def frame_index_of(rgb: np.ndarray) -> int:
    """The frame index a decoded `[H, W, 3]` frame (any size) was painted with."""
    r, g = (float(rgb[..., c].mean()) for c in (0, 1))
    return round((r - _STEP // 2) / _STEP) + _STEP * round((g - _STEP // 2) / _STEP)


def write_video(
    path: Path, num_frames: int, width: int = 64, height: int = 48, fps: int = 25
) -> Path:
    """h264/yuv420p mp4 whose frame `i` has colour :func:`index_color(i % 256)`, written by
    the sample catalog's encoder (the project's one H.264 writer)."""

    def frames():
        for i in range(num_frames):
            rgb = np.empty((height, width, 3), np.uint8)
            rgb[:] = index_color(i % 256)
            yield rgb

    sample_catalog.write_video(str(path), frames(), fps)
    return path


def write_zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def write_truncated(path: Path, num_frames: int = 25) -> Path:
    """A good mp4 cut in half; its index (written last) is lost."""
    write_video(path, num_frames)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_random_bytes(path: Path, size: int = 4096, seed: int = 0) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes())
    return path


def write_audio_only(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """An mp4 with one AAC track of silence and no video."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        for k in range(int(seconds * rate) // 1024):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, k * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_png(path: Path, width: int = 64, height: int = 48) -> Path:
    """A PNG still, whatever the file's extension (e.g. a `.mp4`)."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "rgb24"
    frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 200, np.uint8), "rgb24")
    path.write_bytes(b"".join(bytes(p) for p in codec.encode(frame)))
    return path


def write_huge_resolution(path: Path, width: int = 16000, height: int = 16000) -> Path:
    """A QuickTime file whose header declares `width x height` raw video, with a few tiny packets
    (a real frame would be 384 MB); a decoder that trusted it would allocate for it."""
    with av.open(str(path), "w", format="mov") as container:
        stream = container.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        container.start_encoding()
        for i in range(3):
            packet = av.Packet(b"\0" * 64)
            packet.stream, packet.pts, packet.dts = stream, i, i
            packet.time_base, packet.is_keyframe = fractions.Fraction(1, 25), True
            container.mux(packet)
    return path
