"""CUDA-only checks, run on a lent GPU machine (no Ray/LanceDB there): the golden tensors on
CUDA in float32, the embed stage's class on CUDA in bfloat16 against CPU float32, and the
`compile_blocks` path against eager."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.internvideo2 import InternVideo2Config, load_internvideo2  # noqa: E402
from pipeline import schema  # noqa: E402
from pipeline.embed import EmbedConfig, EmbedStage, ModelSpec  # noqa: E402


def golden(ref: Path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = InternVideo2Config.from_json(ref / "config.json")
    io = {k: torch.from_numpy(v) for k, v in np.load(ref / "io.npz").items()}
    m = load_internvideo2(ref / "checkpoint.pt", cfg, device="cuda")
    with torch.inference_mode():
        tok, _ = m.video_features(io["video_pixels"])
        _, hid = m.encode_text(io["text_input_ids"], io["text_attention_mask"])
        v, t = io["itm_video_index"], io["itm_text_index"]
        itm = m.match_logits(hid[t], io["text_attention_mask"][t], tok[v])
    errs = {
        "video_tokens": (tok.cpu() - io["video_tokens"]).abs().max().item(),
        "video_embedding": (m.encode_video(io["video_pixels"]).cpu() - io["video_embedding"])
        .abs()
        .max()
        .item(),
        "text_hidden": (hid.cpu() - io["text_hidden"]).abs().max().item(),
        "itm_logits": (itm.cpu() - io["itm_logits"]).abs().max().item(),
    }
    print("golden on CUDA fp32:", {k: f"{e:.1e}" for k, e in errs.items()})
    assert max(errs.values()) < 1e-5, errs


def embed_stage() -> None:
    rng = np.random.default_rng(0)
    n = 12
    frames = rng.integers(0, 256, (n, 4, 224, 224, 3), dtype=np.uint8)
    status = np.array(["ok"] * (n - 2) + ["timeout", "decode_error"], dtype=object)

    def batch():
        return {
            schema.FRAMES: frames.copy(),
            schema.STATUS: status.copy(),
            schema.MESSAGE: np.array([""] * n, dtype=object),
            schema.VIDEO_ID: np.array([f"v{i}" for i in range(n)], dtype=object),
        }

    spec = ModelSpec(model="tiny-random")
    gpu = EmbedStage(EmbedConfig(model=spec, device="cuda", store_vision_tokens=True))
    cpu = EmbedStage(EmbedConfig(model=spec, device="cpu"))
    assert gpu.dtype == torch.bfloat16 and cpu.dtype == torch.float32
    a, b = gpu(batch()), cpu(batch())
    ok = status == "ok"
    cos = (a[schema.EMBEDDING][ok] * b[schema.EMBEDDING][ok]).sum(-1)
    assert np.all(a[schema.EMBEDDING][~ok] == 0)
    assert a[schema.VISION_TOKENS_SHAPE][0].tolist() == [1 + 49 * 4, 64]
    print(f"EmbedStage cuda/bf16 vs cpu/fp32: min cosine {cos.min():.5f}")
    assert cos.min() > 0.99, cos


def compiled_matches_eager() -> None:
    cfg = InternVideo2Config.tiny_random()
    from models.internvideo2 import random_internvideo2

    m = random_internvideo2(cfg, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(8, 4, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        eager = m.encode_video(x).float()
        m.compile_blocks()
        comp = m.encode_video(x).float()
    cos = torch.nn.functional.cosine_similarity(eager, comp).min().item()
    print(f"compile_blocks vs eager (bf16): min cosine {cos:.5f}")
    assert cos > 0.999


if __name__ == "__main__":
    golden(Path(sys.argv[1]))
    embed_stage()
    compiled_matches_eager()
    print("GPU CHECKS OK")
