"""Video-encoder throughput: the reference-style path vs the fast inference path, same run.

Builds InternVideo2 with random weights (1B shapes by default, `--tiny` for the CPU test
model) and times `encode_video` from uint8 frames on the device (normalization included):

* reference-style: float32, explicit softmax attention, batch 1 (how the reference and
  NVIDIA's curator stage run it);
* fast: bfloat16, `scaled_dot_product_attention`, no distillation heads, batched; eager and
  optionally with every vision block `torch.compile`d.

It also prints how far the fast path's embeddings are from float32 ones (max |Δ| and the
minimum cosine similarity over a batch of real-looking frames).

    python benchmarks/encoder_throughput.py                 # GPU, 1B shapes
    python benchmarks/encoder_throughput.py --tiny          # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.internvideo2 import InternVideo2Config, random_internvideo2
from models.internvideo2.preprocess import normalize_frames


def synthetic_frames(batch: int, frames: int, size: int, device, seed: int = 0) -> torch.Tensor:
    """Smooth, video-like uint8 frames (gradients plus noise), not uniform noise."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    base = torch.linspace(0, 255, size)
    img = (base[None, :, None] + base[None, None, :]) / 2  # [1, H, W]
    phase = torch.rand(batch, frames, 1, 1, 3, generator=g) * 255
    noise = torch.randn(batch, frames, size, size, 3, generator=g) * 12
    x = (img[None, :, :, :, None] + phase + noise) % 256
    return x.to(torch.uint8).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_encoder(model, frames_u8, dtype, device, warmup: int, iters: int) -> float:
    """Median seconds per call of normalize + encode_video on a resident uint8 batch."""

    def step():
        return model.encode_video(normalize_frames(frames_u8, dtype, device))

    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


@torch.inference_mode()
def fidelity(ref_model, fast_model, frames_u8, device) -> dict:
    ref = ref_model.encode_video(normalize_frames(frames_u8, torch.float32, device)).float()
    fast = fast_model.encode_video(normalize_frames(frames_u8, torch.bfloat16, device)).float()
    cos = torch.nn.functional.cosine_similarity(ref, fast, dim=-1)
    return {"max_abs_diff": (ref - fast).abs().max().item(), "min_cosine": cos.min().item()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random model (CPU smoke run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=None,
        help="batch sizes at T=4; halved per doubling of T (default 32 64 128)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time per-block torch.compile (default: on CUDA)",
    )
    p.add_argument(
        "--compile-frames",
        type=int,
        nargs="+",
        default=[4],
        help="frame counts at which the compiled path is timed (compiling costs ~1 min)",
    )
    p.add_argument("--reference-iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference path is true float32
        torch.backends.cudnn.allow_tf32 = False
    do_compile = args.compile if args.compile is not None else device.type == "cuda"
    fast_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base_bs = args.batch_sizes or ([4, 8, 16] if args.tiny else [32, 64, 128])
    if args.tiny:
        args.frames = [t for t in args.frames if t <= 8] or [4]

    def make(t: int, dtype: torch.dtype):
        cfg = (InternVideo2Config.tiny_random if args.tiny else InternVideo2Config.stage2_1b)(
            num_frames=t
        )
        return random_internvideo2(cfg, seed=0, device=device, dtype=dtype), cfg

    rows: list[dict] = []
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": "tiny-random" if args.tiny else "1B shapes",
        "rows": rows,
    }
    for t in args.frames:
        ref_model, cfg = make(t, torch.float32)
        size = cfg.vision.img_size
        ref_model.set_attention_impl("math")
        x1 = synthetic_frames(1, t, size, device)
        sec = time_encoder(ref_model, x1, torch.float32, device, 2, args.reference_iters)
        ref_vps = 1 / sec
        rows.append({"T": t, "path": "reference fp32 math b1", "batch": 1, "videos_s": ref_vps})
        print(f"T={t:2d} reference fp32 batch 1: {ref_vps:8.1f} videos/s", flush=True)

        fast_model = random_internvideo2(cfg, seed=0, device=device, dtype=fast_dtype)
        ref_model.set_attention_impl("sdpa")
        fid = fidelity(ref_model, fast_model, synthetic_frames(16, t, size, device, 1), device)
        results.setdefault("fidelity", {})[t] = fid
        print(
            f"T={t:2d} fast vs fp32: max|Δ|={fid['max_abs_diff']:.2e} "
            f"min cos={fid['min_cosine']:.5f}",
            flush=True,
        )
        del ref_model
        scale = max(1, t // 4)
        batches = sorted({max(1, b // scale) for b in base_bs})
        for b in batches:
            x = synthetic_frames(b, t, size, device, 2)
            vps = b / time_encoder(fast_model, x, fast_dtype, device, args.warmup, args.iters)
            rows.append(
                {
                    "T": t,
                    "path": f"fast {str(fast_dtype)[6:]} sdpa eager",
                    "batch": b,
                    "videos_s": vps,
                    "vs_reference": vps / ref_vps,
                }
            )
            print(
                f"T={t:2d} fast eager batch {b:3d}: {vps:8.1f} videos/s "
                f"({vps / ref_vps:.1f}x reference)",
                flush=True,
            )
        if do_compile and t in args.compile_frames:
            fast_model.compile_blocks()
            b = batches[-1]
            x = synthetic_frames(b, t, size, device, 2)
            t0 = time.perf_counter()
            time_encoder(fast_model, x, fast_dtype, device, 1, 1)
            compile_s = time.perf_counter() - t0
            vps = b / time_encoder(fast_model, x, fast_dtype, device, args.warmup, args.iters)
            rows.append(
                {
                    "T": t,
                    "path": f"fast {str(fast_dtype)[6:]} sdpa compiled",
                    "batch": b,
                    "videos_s": vps,
                    "vs_reference": vps / ref_vps,
                    "compile_s": compile_s,
                }
            )
            print(
                f"T={t:2d} fast compiled batch {b:3d}: {vps:8.1f} videos/s "
                f"({vps / ref_vps:.1f}x reference; compile {compile_s:.0f}s)",
                flush=True,
            )
        del fast_model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\n{results['device']} · torch {results['torch']} · {results['model']}")
    print(f"{'T':>3} {'path':<28} {'batch':>5} {'videos/s':>9} {'x ref':>6}")
    for r in rows:
        print(
            f"{r['T']:>3} {r['path']:<28} {r['batch']:>5} {r['videos_s']:>9.1f} "
            f"{r.get('vs_reference', 1.0):>6.1f}"
        )
    for t, fid in results.get("fidelity", {}).items():
        print(
            f"T={t}: fast-path embeddings vs fp32: max|Δ| {fid['max_abs_diff']:.2e}, "
            f"min cosine {fid['min_cosine']:.5f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
