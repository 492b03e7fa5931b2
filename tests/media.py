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


def write_coded_video(
    path: Path,
    num_frames: int,
    codec: str = "libx264",
    gop: int = 250,
    width: int = 160,
    height: int = 96,
    fps: int = 25,
    rotation: int = 0,
    colorspace: int | None = None,
    seed: int = 0,
) -> Path:
    """A video encoded the way catalogs are: preset medium (B-frames, a B-pyramid, x265's
    open GOPs), a keyframe every `gop` frames, over content that keeps every frame type busy
    (a textured background panning under grain, and a moving block). `rotation` sets the
    display matrix (counter-clockwise degrees), `colorspace` the colour matrix tag (1 BT.709).
    """
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height // 4 + 8, width // 4 + num_frames, 3), np.uint8)
    texture = np.repeat(np.repeat(texture, 4, 0), 4, 1).astype(np.int16)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        if colorspace is not None:
            context = stream.codec_context
            context.colorspace = context.color_primaries = context.color_trc = colorspace
        if rotation:
            stream.set_display_rotation(rotation)
        options = {"preset": "medium", "g": str(gop), "keyint_min": str(gop)}
        if codec == "libx265":
            options["x265-params"] = f"keyint={gop}:min-keyint={gop}:log-level=error"
        stream.options = options
        side = height // 3
        for i in range(num_frames):
            rgb = texture[:height, i // 2 : i // 2 + width].copy()
            rgb += rng.integers(-10, 11, rgb.shape, dtype=np.int16)
            x = (7 * i) % (width - side)
            rgb[side : 2 * side, x : x + side] = (230, 40, 40)
            frame = av.VideoFrame.from_ndarray(np.clip(rgb, 0, 255).astype(np.uint8), "rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def decode_every_frame(path: Path) -> list[np.ndarray]:
    """RGB `[H, W, 3]` of every frame, decoded in order from the first packet: the reference
    for which pixels frame `i` has (rotation not applied)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
