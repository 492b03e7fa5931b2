"""Golden-output parity with the reference implementation (float32, tiny model)."""

import numpy as np
import pytest
import torch
from fixtures import TINY_CHECKPOINT, TINY_CONFIG, TINY_IO

from models.internvideo2 import InternVideo2Config, load_internvideo2

TOL = 2e-6


@pytest.fixture(scope="module")
def io():
    return {k: torch.from_numpy(v) for k, v in np.load(TINY_IO).items()}


@pytest.fixture(scope="module")
def config():
    return InternVideo2Config.from_json(TINY_CONFIG)


@pytest.fixture(scope="module", params=["sdpa", "math"])
def model(request, config):
    m = load_internvideo2(TINY_CHECKPOINT, config)
    m.set_attention_impl(request.param)
    return m


def close(actual, expected):
    assert actual.shape == expected.shape
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= TOL, f"max abs error {err:.3g} > {TOL}"


@torch.inference_mode()
def test_video_path(model, io):
    tokens, pooled = model.video_features(io["video_pixels"])
    close(tokens, io["video_tokens"])
    close(pooled, io["video_pooled"])
    close(model.encode_video(io["video_pixels"]), io["video_embedding"])


@torch.inference_mode()
def test_image_path_uses_image_position_embedding(model, io):
    tokens, _ = model.video_features(io["image_pixels"])
    close(tokens, io["image_tokens"])
    close(model.encode_video(io["image_pixels"]), io["image_embedding"])


@torch.inference_mode()
def test_text_path(model, io):
    emb, hidden = model.encode_text(io["text_input_ids"], io["text_attention_mask"])
    close(hidden, io["text_hidden"])
    close(emb, io["text_embedding"])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(emb)), atol=1e-6)


@torch.inference_mode()
def test_matching_logits_for_every_pair(model, io):
    tokens, _ = model.video_features(io["video_pixels"])
    _, hidden = model.encode_text(io["text_input_ids"], io["text_attention_mask"])
    v, t = io["itm_video_index"], io["itm_text_index"]
    logits = model.match_logits(hidden[t], io["text_attention_mask"][t], tokens[v])
    close(logits, io["itm_logits"])


@torch.inference_mode()
def test_temporal_interpolation(config, io):
    t = int(io["interp_num_frames"])
    model = load_internvideo2(TINY_CHECKPOINT, config, num_frames=t)
    assert model.num_frames == t
    assert model.load_report.interpolated == ["vision_encoder.pos_embed"]
    tokens, _ = model.video_features(io["interp_pixels"])
    close(tokens, io["interp_tokens"])
    close(model.encode_video(io["interp_pixels"]), io["interp_embedding"])


def test_loaded_model_is_frozen_eval(model):
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


@torch.inference_mode()
def test_wrong_frame_count_is_a_clear_error(model, io):
    pixels = io["interp_pixels"]  # 4 frames, model built for 2
    with pytest.raises(ValueError, match="interpolate"):
        model.video_features(pixels)


@torch.inference_mode()
def test_misaligned_pairs_rejected(model, io):
    tokens, _ = model.video_features(io["video_pixels"])
    _, hidden = model.encode_text(io["text_input_ids"], io["text_attention_mask"])
    with pytest.raises(ValueError, match="align"):
        model.match_logits(hidden, io["text_attention_mask"], tokens)
