"""Re-ranking compute on a GPU with the 1B shapes: recomputed vs stored vision tokens.

For one text query and `rerank_k` candidate clips, times (median of `--iters`):

* text: tokenized query → `encode_text` (19 BERT-large layers);
* recompute: uint8 frames on the host → device → vision encoder → `match_logits`;
* stored: bf16 vision tokens on the host (as read from the side table) → device →
  `match_logits`.

Decoding the candidates' frames (CPU) and reading the side table (I/O) are measured by
`benchmarks/query_latency.py` on the real table; this script isolates the GPU work.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.internvideo2 import InternVideo2Config, random_internvideo2
from models.internvideo2.preprocess import normalize_frames


def median_ms(fn, device, warmup=2, iters=10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


@torch.inference_mode()
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--rerank-k", type=int, default=32)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--text-len", type=int, default=40)
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    make = InternVideo2Config.tiny_random if args.tiny else InternVideo2Config.stage2_1b
    cfg = make(num_frames=args.frames)
    model = random_internvideo2(cfg, device=device, dtype=dtype)
    k, size = args.rerank_k, cfg.vision.img_size
    ids = torch.randint(1000, 2000, (1, args.text_len))
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0
    frames = torch.randint(0, 256, (k, args.frames, size, size, 3), dtype=torch.uint8)
    n_tok = cfg.vision.num_tokens(args.frames)
    stored = torch.randn(k, n_tok, cfg.vision.embed_dim).to(torch.bfloat16)
    if device.type == "cuda":
        frames, stored = frames.pin_memory(), stored.pin_memory()

    def text():
        return model.encode_text(ids, mask)

    _, hidden = text()
    hid, msk = hidden.expand(k, -1, -1), mask.to(device).expand(k, -1)

    def recompute():
        tokens, _ = model.video_features(normalize_frames(frames, dtype, device))
        return model.match_logits(hid, msk, tokens)

    def from_store():
        return model.match_logits(hid, msk, stored.to(device, non_blocking=True))

    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "text_ms": median_ms(text, device, iters=args.iters),
        "recompute_ms": median_ms(recompute, device, iters=args.iters),
        "stored_ms": median_ms(from_store, device, iters=args.iters),
        "tokens_mb_per_clip": n_tok * cfg.vision.embed_dim * 2 / 2**20,
    }
    print(
        f"{out['device']} · {'tiny' if args.tiny else '1B'} · rerank_k={k} · T={args.frames}\n"
        f"  encode_text            {out['text_ms']:8.2f} ms\n"
        f"  recompute tokens+match {out['recompute_ms']:8.2f} ms\n"
        f"  stored tokens+match    {out['stored_ms']:8.2f} ms\n"
        f"  tokens per clip        {out['tokens_mb_per_clip']:8.2f} MiB (bf16)"
    )
    return out


if __name__ == "__main__":
    main()
