"""Decode CPU per clip by codec, GOP and resolution: today's path against the old one, measured
in the same run (inputs to the capacity plan in infra/README.md).

Sources are encoded like real catalogs: x264 and x265 (HEVC), preset medium (B-frames,
B-pyramid; x265 with its default open GOPs), a keyframe every 2 s or 10 s (scene cuts off),
360p / 720p / 1080p at 25 fps, at web bitrates (x264 1 / 3 / 6 Mb/s, x265 0.7 / 2 / 4), over
content that keeps the encoder busy (a textured background panning under grain, a moving
block). One 10-s video per encode, one clip of 4 frames each, the pipeline's defaults.

Paths, each in-process and single-threaded (CPU = this process's CPU time, decoder threads
included), taking turns pass by pass:

* old: the decoder child before this change: PyAV probe, decord `get_batch`, torch's float
  resize, thumbnail;
* new: today's child (`decode_path`, decoder "pyav", exact sampling): one open (an MP4's
  without FFmpeg's stream-info probe decoding frames), one demux, decode only what the 4
  frames need, numpy resize, thumbnail;
* keyframe: the same with `sampling="keyframe"` (approximate);
* new 2 threads: the new path with FFmpeg frame threads (CPU and wall: threads inside a
  decoder vs more decoder processes).

Frames are checked, outside the timing: the new path's RGB frames (before the resize)
against decord's and against a decode of every frame; the resized frames against the old
path's (torch) resize.

    python benchmarks/decode_resolutions.py [--seconds 10] [--repeats 3] [--cache-dir DIR]

Encodes are cached in --cache-dir (default `.bench-cache/decode_resolutions/` in the repository,
ignored by git; about 8 minutes on one busy core the first time).
"""

from __future__ import annotations

import os

# One BLAS thread, as in the decoder child (process.py sets it there): numpy's resize makes
# small matrix products, and threads would only contend (and cost CPU) on them.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import subprocess
import sys
import time
from pathlib import Path

import av
import decord
import numpy as np
import torch

from models.internvideo2.preprocess import resize_frames, resize_frames_np
from pipeline.decode import DecodeConfig
from pipeline.decode.child import (
    PROBE_OPTIONS,
    decode_path,
    open_container,
    plan_clips,
    probe_container,
    rgb_frame,
    thumbnail,
)
from pipeline.decode.reader import index_stream, read_frames

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}
#: kb/s per (codec, size): web-typical ABR targets (x265 about 2/3 of x264's for the same look).
KBPS = {
    ("libx264", "360p"): 1000,
    ("libx264", "720p"): 3000,
    ("libx264", "1080p"): 6000,
    ("libx265", "360p"): 700,
    ("libx265", "720p"): 2000,
    ("libx265", "1080p"): 4000,
}
GOPS_S = (2, 10)
FPS = 25
#: Clips/s one H200 embeds at T=4, bf16, per-block compiled (results/encoder_compiled_h200.log).
GPU_CLIPS_PER_S = 200
#: The capacity plan's headroom on decode cores.
HEADROOM = 1.25


def frames(width: int, height: int, count: int, seed: int):
    """RGB `[H, W, 3]` frames: blocky texture panning 3 px/frame right, 1 down, under +-8
    grain, with a red block sliding across."""
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 256, (height // 8 + count // 8 + 2, width // 8 + count // 2 + 2, 3))
    texture = np.repeat(np.repeat(tile.astype(np.uint8), 8, 0), 8, 1)
    side = height // 5
    for t in range(count):
        frame = texture[t // 8 : t // 8 + height, 3 * t // 2 : 3 * t // 2 + width].astype(np.int16)
        frame += rng.integers(-8, 9, frame.shape, dtype=np.int16)
        x = int((width - side) * (0.5 + 0.45 * np.sin(t / 15)))
        frame[height // 2 - side // 2 : height // 2 + side // 2, x : x + side] = (220, 40, 40)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def encode(path: Path, codec: str, size: str, gop_s: int, seconds: float) -> Path:
    if path.exists():
        return path
    width, height = SIZES[size]
    gop, kbps = gop_s * FPS, KBPS[codec, size]
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = kbps * 1000
        options = {"preset": "medium", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        if codec == "libx265":
            options["x265-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error"
        stream.options = options
        for i, rgb in enumerate(frames(width, height, round(seconds * FPS), seed=gop_s)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    tmp.rename(path)
    return path


def describe_encode(path: Path) -> dict:
    """Measured bitrate, frame types, keyframes, and the share of frames others reference."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        seconds = float(stream.duration * stream.time_base)
    with av.open(str(path)) as container:
        container.streams.video[0].codec_context.skip_frame = "NONREF"
        references = sum(1 for _ in container.decode(video=0))
    return {
        "kbps": sum(p.size for p in packets) * 8 / seconds / 1000,
        "frames": len(packets),
        "keyframes": sum(p.is_keyframe for p in packets),
        "references": references,
    }


def old_path(path: str, params: dict) -> tuple[list, np.ndarray]:
    """The decoder child before this change: probe, decord get_batch per clip, torch resize
    one frame at a time, thumbnail of the middle frame. Its probe opened the file plainly
    (FFmpeg's stream-info probe decoding H.264 frames)."""
    with av.open(path, options=PROBE_OPTIONS) as container:
        probe_container(container, params)
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    plans = plan_clips(len(reader), reader.get_avg_fps(), params)
    out = []
    for plan in plans:
        batch = reader.get_batch(plan.indices.tolist()).asnumpy()
        thumbnail(batch[len(batch) // 2], params)
        out.append(np.concatenate([resize_frames(f[None], params["size"]) for f in batch]))
    del reader
    return plans, np.stack(out)


def new_path(path: str, params: dict) -> tuple[dict, np.ndarray]:
    header, frames = decode_path(path, params)
    assert header["status"] == "ok" and header["decoder"] == "pyav", header
    return header, frames


def new_path_threads(path: str, params: dict, threads: int = 2) -> None:
    """The new path with FFmpeg frame threads (the child runs one thread per decoder)."""
    with open_container(path) as container:
        info = probe_container(container, params)
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        stream.codec_context.thread_type = "FRAME"
        index = index_stream(container, stream)
        (plan,) = plan_clips(index.num_frames, info.fps, params)
        middle = int(plan.indices[len(plan.indices) // 2])

        def emit(i: int, frame: av.VideoFrame) -> None:
            rgb = rgb_frame(frame)
            resize_frames_np(rgb[None], params["size"])
            if i == middle:
                thumbnail(rgb, params)

        read_frames(container, stream, index, plan.indices.tolist(), emit)


def cpu_and_wall(fn, path: str, params: dict) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn(path, params)
    return time.process_time() - cpu, time.perf_counter() - wall


def check_frames(path: str, params: dict) -> dict:
    """Equality of the new path's frames with decord's and with a decode of every frame."""
    reader = decord.VideoReader(path, num_threads=1)
    (plan,) = plan_clips(len(reader), reader.get_avg_fps(), params)
    indices = plan.indices.tolist()
    old = reader.get_batch(indices).asnumpy()
    del reader
    got = {}
    with open_container(path) as container:
        stream = container.streams.video[0]
        index = index_stream(container, stream)
        emit = lambda i, frame: got.__setitem__(i, rgb_frame(frame))  # noqa: E731
        decoded = read_frames(container, stream, index, indices, emit)
    with av.open(path) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    new = np.stack([got[i] for i in indices])
    resized_old = resize_frames(new)
    diff = np.abs(resize_frames_np(new).astype(np.int16) - resized_old)
    return {
        "same_as_decord": sum(np.array_equal(a, b) for a, b in zip(new, old, strict=True)),
        "same_as_every": sum(np.array_equal(new[k], every[i]) for k, i in enumerate(indices)),
        "count": len(indices),
        "decoded": decoded,
        "last": max(indices) + 1,
        "resize_max": int(diff.max()),
        "resize_differ": int((diff > 0).sum()),
        "resize_pixels": diff.size,
    }


def embedding_change(model, old: np.ndarray, new: np.ndarray, keyframe: np.ndarray) -> tuple:
    """1 - cosine between the tiny random model's embeddings of the clip's frames: the new
    path's against the old path's, and keyframe sampling's against the exact frames'."""
    from pipeline.embed import encode_frames

    a, b, c = (encode_frames(model, x)[0] for x in (old, new, keyframe))

    def distance(x, y):
        cosine = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
        return float(np.abs(1 - cosine).max())

    return distance(b, a), distance(c, b)


def resize_cost(path: str, params: dict, repeats: int) -> tuple[float, float]:
    """CPU ms to resize the clip's 4 decoded frames: torch's float kernel vs numpy."""
    with open_container(path) as container:
        stream = container.streams.video[0]
        frames = [rgb_frame(f) for _, f in zip(range(4), container.decode(stream), strict=False)]
    batch = np.stack(frames)
    torch_ms, numpy_ms = [], []
    for _ in range(repeats):
        cpu = time.process_time()
        for frame in batch:
            resize_frames(frame[None], params["size"])
        torch_ms.append((time.process_time() - cpu) * 1e3)
        cpu = time.process_time()
        resize_frames_np(batch, params["size"])
        numpy_ms.append((time.process_time() - cpu) * 1e3)
    return float(np.median(torch_ms)), float(np.median(numpy_ms))


def start_up_cost() -> list[tuple[str, float, float]]:
    """CPU s and peak RSS (MB) of a fresh interpreter importing the decoder child: as it is
    now, and with the two modules the old child also imported (torch, decord)."""
    rows = []
    for label, code in (
        ("new child (av, numpy, pyarrow)", "import pipeline.decode.child"),
        (
            "old child imports (+ torch, decord)",
            "import torch; torch.set_num_threads(1); import decord; import pipeline.decode.child",
        ),
    ):
        cpu = []
        for _ in range(3):
            before = os.times()
            subprocess.run([sys.executable, "-c", code], check=True)
            after = os.times()
            cpu.append(after.children_user + after.children_system)
            cpu[-1] -= before.children_user + before.children_system
        # VmHWM: the peak of this process alone (ru_maxrss can carry the forking parent's).
        peak = "print(next(x for x in open('/proc/self/status') if x.startswith('VmHWM')))"
        out = subprocess.run(
            [sys.executable, "-c", f"{code}; {peak}"], check=True, capture_output=True, text=True
        )
        rows.append((label, float(np.median(cpu)), int(out.stdout.split()[-2]) / 1024))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", default="360p,720p,1080p")
    p.add_argument("--codecs", default="libx264,libx265")
    default_cache = Path(__file__).resolve().parent.parent / ".bench-cache" / "decode_resolutions"
    p.add_argument("--cache-dir", default=str(default_cache))
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as the old child did
    decord.logging.set_level(decord.logging.QUIET)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    from pipeline.models import ModelSpec

    torch.manual_seed(0)
    model = ModelSpec(model="tiny-random").build("cpu", torch.float32)
    params = DecodeConfig().worker_params()
    keyframe_params = {**params, "sampling": "keyframe"}
    rows = []
    for codec in args.codecs.split(","):
        for size in args.sizes.split(","):
            for gop_s in GOPS_S:
                name = f"{codec}-{size}-gop{gop_s}s-{args.seconds:g}s.mp4"
                path = str(encode(cache / name, codec, size, gop_s, args.seconds))
                info = describe_encode(Path(path))
                new_path(path, params)  # warm caches (weights, page cache) outside the timing
                old_path(path, params)
                timers = {
                    "old": old_path,
                    "new": new_path,
                    "keyframe": lambda q, _: new_path(q, keyframe_params),
                    "threads": new_path_threads,
                }
                samples = {k: [] for k in timers}
                for _ in range(args.repeats):
                    for key, fn in timers.items():
                        samples[key].append(cpu_and_wall(fn, path, params))
                cost = {k: tuple(np.median(v, axis=0)) for k, v in samples.items()}
                exact, exact_frames = new_path(path, params)
                approx, approx_frames = new_path(path, keyframe_params)
                _, old_frames = old_path(path, params)
                embedding = embedding_change(model, old_frames, exact_frames, approx_frames)
                shift = np.abs(
                    np.array(approx["clips"][0]["frame_indices"])
                    - np.array(exact["clips"][0]["frame_indices"])
                )
                check = check_frames(path, params)
                resize = resize_cost(path, params, args.repeats)
                check["embedding"] = embedding
                rows.append((codec, size, gop_s, info, cost, shift, check, resize))
                print(f"done {name} at {time.perf_counter() - started:.0f} s", flush=True)
    report(rows, args, start_up_cost(), time.perf_counter() - started)


def report(rows, args, start_up, elapsed) -> None:
    codec_name = {"libx264": "x264", "libx265": "x265"}
    print()
    print(
        f"## Decode CPU per clip: one {args.seconds:g}-s video = one clip of 4 frames, "
        f"{FPS} fps, preset medium; median of {args.repeats} alternating passes"
    )
    print(f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    print()
    print(
        "| codec | source | GOP | kb/s | refs/frames | old CPU ms | new CPU ms | **new/old** "
        "| keyframe CPU ms | keyframe/old | keyframe shift (frames: mean, max) "
        "| new 2 threads CPU / wall ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for codec, size, gop_s, info, cost, shift, _, _ in rows:
        old, new, key, thr = (cost[k] for k in ("old", "new", "keyframe", "threads"))
        print(
            f"| {codec_name[codec]} | {size} | {gop_s} s | {info['kbps']:.0f} "
            f"| {info['references']}/{info['frames']} | {old[0] * 1e3:.0f} | {new[0] * 1e3:.0f} "
            f"| **{new[0] / old[0]:.2f}** | {key[0] * 1e3:.0f} | {key[0] / old[0]:.2f} "
            f"| {shift.mean():.1f}, {shift.max()} | {thr[0] * 1e3:.0f} / {thr[1] * 1e3:.0f} |"
        )
    print()
    print(
        f"## Decode cores per GPU ({GPU_CLIPS_PER_S} clips/s per H200, T=4 compiled; "
        f"x {HEADROOM} headroom)"
    )
    print()
    print("| codec | source | GOP | old | new | keyframe |")
    print("|---|---|---:|---:|---:|---:|")
    for codec, size, gop_s, _, cost, _, _, _ in rows:
        cores = [GPU_CLIPS_PER_S * cost[k][0] * HEADROOM for k in ("old", "new", "keyframe")]
        print(
            f"| {codec_name[codec]} | {size} | {gop_s} s | "
            + " | ".join(f"{c:.0f}" for c in cores)
            + " |"
        )
    print()
    print("## Frames (new path, before the resize) and the resize")
    print()
    print(
        "| codec | source | GOP | = decord | = decode of every frame | frames decoded "
        "(of those up to the last sampled) | resize: torch / numpy CPU ms (4 frames) "
        "| pixels 1 level apart | max | embedding 1-cos new vs old | keyframe vs exact |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    differ = pixels = 0
    for codec, size, gop_s, _, _, _, check, resize in rows:
        differ, pixels = differ + check["resize_differ"], pixels + check["resize_pixels"]
        print(
            f"| {codec_name[codec]} | {size} | {gop_s} s | {check['same_as_decord']}/"
            f"{check['count']} | {check['same_as_every']}/{check['count']} "
            f"| {check['decoded']} of {check['last']} | {resize[0]:.1f} / {resize[1]:.1f} "
            f"| {check['resize_differ']} of {check['resize_pixels']} | {check['resize_max']} "
            f"| {check['embedding'][0]:.1e} | {check['embedding'][1]:.1e} |"
        )
    print(
        f"\nAll resized frames: {differ} of {pixels} values ({differ / pixels:.1e}) 1 level apart."
    )
    print(
        "Embeddings: tiny random model (InternVideo2's architecture, small, random weights), "
        "float32 on the CPU; 1 - cosine, 0 when equal to float32 rounding."
    )
    print()
    print("## Decoder process start-up (fresh interpreter importing the child; median of 3)")
    print()
    print("| child | CPU s | peak RSS MB |")
    print("|---|---:|---:|")
    for label, cpu, rss in start_up:
        print(f"| {label} | {cpu:.2f} | {rss:.0f} |")
    print(f"\nBenchmark wall time: {elapsed / 60:.1f} min.")


if __name__ == "__main__":
    main()
