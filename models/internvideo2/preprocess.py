"""Frame sampling and pixel preprocessing of the official InternVideo2 evaluation.

CPU workers call :func:`middle_frame_indices` / :func:`window_frame_indices` and
:func:`resize_frames` and ship uint8 `[B, T, 224, 224, 3]`; the GPU side calls
:func:`normalize_frames` on the model's device, so the 4x larger float tensor never crosses
a process boundary.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

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
    if num_video_frames < 1:
        raise ValueError(f"cannot sample from a video with {num_video_frames} frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    segments = min(num_frames, num_video_frames)
    bounds = np.linspace(0, num_video_frames, segments + 1).astype(np.int64)
    indices = (bounds[:-1] + bounds[1:] - 1) // 2
    if segments < num_frames:
        indices = np.concatenate([indices, np.full(num_frames - segments, indices[-1])])
    return indices


def window_frame_indices(
    fps: float, start_s: float, end_s: float, num_video_frames: int, num_frames: int
) -> np.ndarray:
    """Middle sampling restricted to the time window `[start_s, end_s)`.

    Follows the reference's clip handling: the window covers `int((end - start) * fps)`
    frames starting at frame `int(start * fps)`; indices are clamped to the video's frames.

    Returns:
        int64 `[T]` absolute frame indices.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if end_s <= start_s:
        raise ValueError(f"empty window [{start_s}, {end_s})")
    first = int(start_s * fps)
    if first >= num_video_frames:
        raise ValueError(f"window starts at frame {first}, video has {num_video_frames}")
    length = max(1, min(int((end_s - start_s) * fps), num_video_frames - first))
    return middle_frame_indices(length, num_frames) + first


def resize_frames(frames: np.ndarray | torch.Tensor, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize uint8 frames to `size x size`, bicubic, aspect ratio not kept, no crop.

    Args:
        frames: uint8 `[T, H, W, 3]` RGB.

    Returns:
        uint8 `[T, size, size, 3]`.
    """
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected [T, H, W, 3] frames, got {tuple(x.shape)}")
    if x.shape[1] == size and x.shape[2] == size:
        return x.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    chw = x.permute(0, 3, 1, 2).float()
    out = F.interpolate(chw, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def normalize_frames(
    frames: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """uint8 `[B, T, H, W, 3]` → normalized float `[B, T, 3, H, W]` on `device`.

    The result is a view whose memory is ordered `[B, 3, T, H, W]` (see below); call
    `.contiguous()` before anything that needs `[B, T, 3, H, W]` order in memory.

    The uint8 tensor is moved first and converted on the device, so the host-to-device copy
    carries a quarter of the bytes.
    """
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
