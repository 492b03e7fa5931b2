"""Frame sampling and pixel preprocessing of the official InternVideo2 evaluation.

CPU workers call :func:`middle_frame_indices` / :func:`window_frame_indices` and
:func:`resize_frames_np` and ship uint8 `[B, T, 224, 224, 3]`; the GPU side calls
:func:`normalize_frames` on the model's device, so the 4x larger float tensor never crosses
a process boundary.

Sampling and :func:`resize_frames_np` need only numpy: torch is imported by the functions
that use it (:func:`resize_frames`, the reference resize, and :func:`normalize_frames`), so
the decoder processes start without it (about 1.2 CPU s and 200 MB each).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224


def middle_frame_indices(num_video_frames: int, num_frames: int) -> np.ndarray:
    """The official "middle" rule: T equal segments of the video, the middle frame of each.

    Segment bounds are `linspace(0, n, T + 1)` truncated to ints; segment `[a, b)` yields
    frame `(a + b - 1) // 2`. A video shorter than T frames gets one index per frame and
    the last index repeated up to T.

    Args:
        num_video_frames: frames in the video (or window), n ≥ 1.
        num_frames: frames to sample, T ≥ 1.

    Returns:
        int64 `[T]` frame indices in `[0, n)`.
    """
    segments = middle_frame_segments(num_video_frames, num_frames)
    return (segments[:, 0] + segments[:, 1] - 1) // 2


def middle_frame_segments(num_video_frames: int, num_frames: int) -> np.ndarray:
    """The segments of the middle rule: int64 `[T, 2]` bounds `[a, b)`, one per sampled frame
    (:func:`middle_frame_indices` takes the middle of each). A video shorter than T frames
    has one segment per frame, the last one repeated up to T.
    """
    if num_video_frames < 1:
        raise ValueError(f"cannot sample from a video with {num_video_frames} frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    segments = min(num_frames, num_video_frames)
    bounds = np.linspace(0, num_video_frames, segments + 1).astype(np.int64)
    pairs = np.stack([bounds[:-1], bounds[1:]], axis=1)
    if segments < num_frames:
        pairs = np.concatenate([pairs, np.repeat(pairs[-1:], num_frames - segments, axis=0)])
    return pairs


def window_frame_indices(
    fps: float, start_s: float, end_s: float, num_video_frames: int, num_frames: int
) -> np.ndarray:
    """Middle sampling restricted to the time window `[start_s, end_s)`.

    Follows the reference's clip handling: the window covers `int((end - start) * fps)`
    frames starting at frame `int(start * fps)`; indices are clamped to the video's frames.

    Returns:
        int64 `[T]` absolute frame indices.
    """
    first, length = _window(fps, start_s, end_s, num_video_frames)
    return middle_frame_indices(length, num_frames) + first


def window_frame_segments(
    fps: float, start_s: float, end_s: float, num_video_frames: int, num_frames: int
) -> np.ndarray:
    """:func:`middle_frame_segments` of the window :func:`window_frame_indices` samples:
    int64 `[T, 2]` absolute frame bounds `[a, b)`."""
    first, length = _window(fps, start_s, end_s, num_video_frames)
    return middle_frame_segments(length, num_frames) + first


def _window(fps: float, start_s: float, end_s: float, num_video_frames: int) -> tuple[int, int]:
    """First frame and frame count of the window `[start_s, end_s)`."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if end_s <= start_s:
        raise ValueError(f"empty window [{start_s}, {end_s})")
    first = int(start_s * fps)
    if first >= num_video_frames:
        raise ValueError(f"window starts at frame {first}, video has {num_video_frames}")
    return first, max(1, min(int((end_s - start_s) * fps), num_video_frames - first))


def resize_frames(frames: np.ndarray | torch.Tensor, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize uint8 frames to `size x size`, bicubic, aspect ratio not kept, no crop.

    This is the reference (torch's float kernel); the pipeline's decoders use
    :func:`resize_frames_np`, which gives the same pixels but for rare 1-level differences.

    Args:
        frames: uint8 `[T, H, W, 3]` RGB.

    Returns:
        uint8 `[T, size, size, 3]`.
    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected [T, H, W, 3] frames, got {tuple(x.shape)}")
    if x.shape[1] == size and x.shape[2] == size:
        return x.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    chw = x.permute(0, 3, 1, 2).float()
    out = F.interpolate(chw, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def resize_frames_np(frames: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """:func:`resize_frames` in numpy: the same bicubic antialiased filter with the same
    float32 weights, so the same pixels but for rare 1-level differences.

    The filter is separable: `out = Wy @ frame @ Wx.T` per channel, `Wy` and `Wx` the
    :func:`antialias_bicubic_weights` of each axis. torch sums the taps of one output pixel
    in float32, along the width first; here BLAS sums blocks of rows, height first (each
    input row is read once, contiguously). The sums differ by float32 rounding only, which
    moves a pixel across a .5 boundary, one level, on about 1e-5 of pixels
    (tests/test_decode_exact.py measures it; benchmarks/decode_resolutions.py prints it).
    2-3x cheaper than the torch kernel on one core at 720p-1080p (1.4x at 360p), and no
    torch in the process.

    Args:
        frames: uint8 `[T, H, W, 3]` RGB.

    Returns:
        uint8 `[T, size, size, 3]`.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected [T, H, W, 3] frames, got {tuple(frames.shape)}")
    count, height, width, _ = frames.shape
    if height == size and width == size:
        return frames
    out = np.empty((count, size, size, 3), np.uint8)
    rows = np.empty((size, width * 3), np.float32)
    for k, frame in enumerate(frames):
        flat = frame.reshape(height, width * 3)  # [H, W*3]: a row is contiguous
        for first, lo, hi, block in _weight_blocks(height, size, _ROWS_PER_BLOCK):
            rows[first : first + len(block)] = block @ flat[lo:hi].astype(np.float32)
        # [size, W, 3] -> [size * 3, W]: each output column is then a contiguous reduction.
        planes = rows.reshape(size, width, 3).transpose(0, 2, 1).reshape(size * 3, width)
        cols = np.empty((size * 3, size), np.float32)
        for first, lo, hi, block in _weight_blocks(width, size, _COLS_PER_BLOCK):
            cols[:, first : first + len(block)] = planes[:, lo:hi] @ block.T
        pixels = cols.reshape(size, 3, size).transpose(0, 2, 1)
        out[k] = np.clip(np.rint(pixels), 0, 255)  # rint: half to even, like torch.round
    return out


#: Output rows (columns) per matrix product: a block reads the union of its taps once.
_ROWS_PER_BLOCK, _COLS_PER_BLOCK = 8, 16


@functools.lru_cache(maxsize=64)
def antialias_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """Weights of torch's antialiased bicubic resize along one axis (`align_corners=False`),
    float32 `[out_size, in_size]`, equal to the ones torch 2.x computes on x86 CPUs.

    The filter is Keys' cubic with a = -0.5 (PIL's), stretched by the scale when
    downsampling so that it integrates over the source pixels an output pixel covers: output
    pixel i, centred on `scale * (i + 0.5)`, takes the source pixels within `2 * scale`
    (2 when upsampling) with weights `cubic((j - centre + 0.5) / scale)`, normalized to sum
    to 1. torch evaluates this in float32, with the cubic's multiply-adds fused (FMA); the
    same operations, each rounded to float32 here, give bit-equal weights (the test compares
    every weight for sizes 8..4100).
    """
    f32, f64 = np.float32, np.float64
    scale = f32(in_size) / f32(out_size)
    upsampling = scale < 1
    support = f32(2) if upsampling else f32(2) * scale
    inv_scale = f32(1) if upsampling else f32(1.0 / float(scale))
    centre = (float(scale) * (np.arange(out_size) + 0.5)).astype(f32)
    lo = np.maximum(((centre - support).astype(f64) + 0.5).astype(np.int64), 0)
    hi = np.minimum(((centre + support).astype(f64) + 0.5).astype(np.int64), in_size)
    taps = np.arange(int((hi - lo).max()))
    offset = (taps[None] + lo[:, None]).astype(f32) - centre[:, None]
    x = np.abs(((offset.astype(f64) + 0.5) * float(inv_scale)).astype(f32))
    a = -0.5

    def fma(p: np.ndarray, q: np.ndarray, r: float) -> np.ndarray:
        return (p.astype(f64) * q.astype(f64) + r).astype(f32)  # one rounding, like an FMA

    near = fma((fma(x, np.full_like(x, a + 2), -(a + 3)) * x).astype(f32), x, 1.0)
    far = (fma(fma((x - f32(5)).astype(f32), x, 8.0), x, -4.0) * f32(a)).astype(f32)
    w = np.where(x < 1, near, np.where(x < 2, far, f32(0))).astype(f32)
    w[taps[None] >= (hi - lo)[:, None]] = 0
    total = np.zeros(out_size, f32)
    for column in w.T:  # float32 running sum, tap by tap
        total = (total + column).astype(f32)
    w = (w / np.where(total == 0, f32(1), total)[:, None]).astype(f32)
    weights = np.zeros((out_size, in_size), f32)
    for i in range(out_size):
        weights[i, lo[i] : hi[i]] = w[i, : hi[i] - lo[i]]
    weights.setflags(write=False)  # cached: shared by every caller
    return weights


@functools.lru_cache(maxsize=64)
def _weight_blocks(
    in_size: int, out_size: int, per_block: int
) -> tuple[tuple[int, int, int, np.ndarray], ...]:
    """`(first output, first input, end input, weights [n, end - first input])` per block of
    `per_block` outputs: the nonzero band of :func:`antialias_bicubic_weights`."""
    weights = antialias_bicubic_weights(in_size, out_size)
    blocks = []
    for first in range(0, out_size, per_block):
        band = weights[first : first + per_block]
        used = np.flatnonzero(band.any(axis=0))
        lo, hi = int(used[0]), int(used[-1]) + 1
        blocks.append((first, lo, hi, np.ascontiguousarray(band[:, lo:hi])))
    return tuple(blocks)


def normalize_frames(
    frames: torch.Tensor,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """uint8 `[B, T, H, W, 3]` → normalized float `[B, T, 3, H, W]` on `device`.

    The result is a view whose memory is ordered `[B, 3, T, H, W]` (see below); call
    `.contiguous()` before anything that needs `[B, T, 3, H, W]` order in memory.

    The uint8 tensor is moved first and converted on the device, so the host-to-device copy
    carries a quarter of the bytes.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if frames.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames, got {frames.dtype}")
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"expected [B, T, H, W, 3] frames, got {tuple(frames.shape)}")
    x = frames.to(device, non_blocking=True) if device is not None else frames
    # Reorder while still uint8 (a quarter of the bytes), straight into the `[B, 3, T, H, W]`
    # memory order the patch-embedding Conv3d reads, and return a `[B, T, 3, H, W]` view of
    # it: the encoder's own permute then yields a contiguous input, where a `[B, T, 3, ...]`
    # buffer made the convolution copy it first (that copy was half the tiny model's CPU
    # time). One float buffer, updated in place: the same operations in the same order as
    # `(x / 255 - mean) / std`, so the values are bit-identical.
    x = x.permute(0, 4, 1, 2, 3).contiguous().float().div_(255.0).transpose(1, 2)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 1, 3, 1, 1)
    return x.sub_(mean).div_(std).to(dtype)
