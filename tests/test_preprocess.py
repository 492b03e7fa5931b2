import numpy as np
import pytest
import torch

from models.internvideo2.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    middle_frame_indices,
    normalize_frames,
    resize_frames,
    window_frame_indices,
)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 75, 100, 250, 1001])
# Powers of two, as the models sample: the official `linspace` bounds are then exact
# multiples of n / T, so the integer bounds below are the same numbers.
@pytest.mark.parametrize("t", [1, 2, 4, 8, 16])
def test_middle_sampling_properties(n, t):
    got = middle_frame_indices(n, t).tolist()
    assert len(got) == t
    assert all(0 <= i < n for i in got)
    assert got == sorted(got)  # non-decreasing
    segments = min(n, t)  # a video shorter than T has one segment per frame
    for k in range(segments):
        start, end = k * n // segments, (k + 1) * n // segments  # segment k: [start, end)
        assert start <= got[k] < end, (k, start, end)
        assert got[k] == (start + end - 1) // 2, (k, start, end)
    if n >= t:
        assert len(set(got)) == t  # one distinct frame per segment
    else:
        assert got[:n] == list(range(n))  # every frame once, then the last one repeated
        assert got[n:] == [n - 1] * (t - n)


def test_middle_sampling_known_values():
    assert middle_frame_indices(100, 4).tolist() == [12, 37, 62, 87]
    assert middle_frame_indices(2, 4).tolist() == [0, 1, 1, 1]  # short video: last repeated


def test_window_sampling_offsets_and_clamps():
    got = window_frame_indices(25.0, 10.0, 20.0, 1000, 4)
    assert got.tolist() == (middle_frame_indices(250, 4) + 250).tolist()
    # A window running past the end is clamped to the video's frames.
    tail = window_frame_indices(25.0, 30.0, 40.0, 800, 4)
    assert tail.max() < 800 and tail.min() >= 750
    with pytest.raises(ValueError):
        window_frame_indices(25.0, 5.0, 5.0, 100, 4)
    with pytest.raises(ValueError):
        window_frame_indices(25.0, 50.0, 60.0, 100, 4)


def test_invalid_counts():
    with pytest.raises(ValueError):
        middle_frame_indices(0, 4)
    with pytest.raises(ValueError):
        middle_frame_indices(10, 0)


def test_resize_is_bicubic_without_crop():
    frames = np.zeros((2, 48, 64, 3), np.uint8)
    frames[:, :, 32:] = 255  # right half white: stays the right half after a non-cropping resize
    out = resize_frames(frames)
    assert out.shape == (2, 224, 224, 3) and out.dtype == np.uint8
    assert out[:, :, :100].max() == 0 and out[:, :, 124:].min() == 255
    same = np.random.default_rng(0).integers(0, 255, (1, 224, 224, 3), dtype=np.uint8)
    assert np.array_equal(resize_frames(same), same)


def test_normalize_layout_and_values():
    frames = torch.zeros(2, 4, 8, 8, 3, dtype=torch.uint8)
    frames[..., 0] = 255
    out = normalize_frames(frames)
    assert out.shape == (2, 4, 3, 8, 8) and out.dtype == torch.float32
    assert torch.allclose(out[:, :, 0], torch.tensor((1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]))
    assert torch.allclose(out[:, :, 1], torch.tensor(-IMAGENET_MEAN[1] / IMAGENET_STD[1]))
    assert normalize_frames(frames, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(TypeError):
        normalize_frames(frames.float())


def test_normalize_is_bit_identical_to_the_plain_formula_and_leaves_input_alone():
    frames = torch.from_numpy(
        np.random.default_rng(3).integers(0, 256, (3, 4, 16, 12, 3), dtype=np.uint8)
    )
    before = frames.clone()
    x = frames.permute(0, 1, 4, 2, 3).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    out = normalize_frames(frames)
    assert torch.equal(out, (x - mean) / std)
    assert torch.equal(frames, before)
    # Laid out for the patch embedding: its [B, 3, T, H, W] permute is contiguous.
    assert out.permute(0, 2, 1, 3, 4).is_contiguous()
