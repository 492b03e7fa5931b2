"""CUDA-only checks (marker `gpu`): deselected on machines without a CUDA device.

Run on a GPU machine with `pytest -m gpu tests/test_gpu.py`; they need only torch, numpy
and pyarrow (no Ray or LanceDB).
"""

import numpy as np
import pytest
import torch
from fixtures import TINY_CHECKPOINT, TINY_CONFIG, TINY_IO

from models.internvideo2 import InternVideo2Config, load_internvideo2, random_internvideo2
from pipeline import schema
from pipeline.embed import EmbedConfig, EmbedStage
from pipeline.models import ModelSpec

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@torch.inference_mode()
def test_golden_tensors_on_cuda_float32():
    cfg = InternVideo2Config.from_json(TINY_CONFIG)
    io = {k: torch.from_numpy(v) for k, v in np.load(TINY_IO).items()}
    m = load_internvideo2(TINY_CHECKPOINT, cfg, device="cuda")
    tokens, _ = m.video_features(io["video_pixels"])
    _, hidden = m.encode_text(io["text_input_ids"], io["text_attention_mask"])
    v, t = io["itm_video_index"], io["itm_text_index"]
    logits = m.match_logits(hidden[t], io["text_attention_mask"][t], tokens[v])
    for got, want in ((tokens, "video_tokens"), (hidden, "text_hidden"), (logits, "itm_logits")):
        assert (got.cpu() - io[want]).abs().max().item() < 1e-5, want
    emb = m.encode_video(io["video_pixels"]).cpu()
    assert (emb - io["video_embedding"]).abs().max().item() < 1e-5


def test_embed_stage_bf16_on_cuda_matches_float32_on_cpu():
    rng = np.random.default_rng(0)
    n = 12
    frames = rng.integers(0, 256, (n, 4, 224, 224, 3), dtype=np.uint8)
    status = np.array(["ok"] * (n - 2) + ["timeout", "decode_error"], dtype=object)

    def batch():
        return {
            schema.FRAMES: frames.copy(),
            schema.STATUS: status.copy(),
            schema.MESSAGE: np.array([""] * n, dtype=object),
        }

    spec = ModelSpec(model="tiny-random")
    gpu = EmbedStage(EmbedConfig(model=spec, device="cuda", store_vision_tokens=True))
    cpu = EmbedStage(EmbedConfig(model=spec, device="cpu"))
    assert gpu.dtype == torch.bfloat16 and cpu.dtype == torch.float32
    a, b = gpu(batch()), cpu(batch())
    ok = status == "ok"
    cos = (a[schema.EMBEDDING][ok] * b[schema.EMBEDDING][ok]).sum(-1)
    assert cos.min() > 0.99
    assert np.all(a[schema.EMBEDDING][~ok] == 0)
    assert a[schema.VISION_TOKENS_SHAPE][0].tolist() == [1 + 49 * 4, 64]


@torch.inference_mode()
def test_compiled_blocks_match_eager():
    m = random_internvideo2(InternVideo2Config.tiny_random(), device="cuda", dtype=torch.bfloat16)
    # Drawn on the CPU from a seeded generator: the same input on every run and device.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 3, 224, 224, generator=gen).to("cuda", torch.bfloat16)
    eager = m.encode_video(x).float()
    m.compile_blocks()
    compiled = m.encode_video(x).float()
    assert torch.nn.functional.cosine_similarity(eager, compiled).min().item() > 0.999
