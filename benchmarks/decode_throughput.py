"""Decode throughput per core: our decode vs decoding every frame with PyAV.

Ours is probe (PyAV) + decord + middle sampling of 4 frames per clip + resize to 224,
through :class:`pipeline.decode.IsolatedDecoder` (and in-process, to price the isolation).
The baseline decodes every frame to RGB with PyAV, as NVIDIA's video curator does. Every
decoder runs single-threaded, so each number is per core.

    python benchmarks/decode_throughput.py                      # 48 short + one 20-min video
    python benchmarks/decode_throughput.py --long-minutes 0     # short videos only

The 20-minute video is generated once into --cache-dir (about a minute on one core).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import decord
import numpy as np
import torch
import torch.nn.functional as F

from models.internvideo2.preprocess import middle_frame_indices, resize_frames
from pipeline.decode import DecodeConfig, IsolatedDecoder
from pipeline.decode.child import decode_path
from pipeline.sample_catalog import iter_frames, make_sample_catalog, sample_videos, write_video


def pyav_every_frame(path: str, to_rgb: bool = True) -> np.ndarray | None:
    """The curator way: decode every frame to RGB, then take the middle frames and resize
    them like ours (only the sampled frames are kept, so a long video fits in memory)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        wanted = set(middle_frame_indices(max(1, stream.frames), 4).tolist())
        kept = []
        for i, frame in enumerate(container.decode(stream)):
            if to_rgb:
                rgb = frame.to_ndarray(format="rgb24")
                if i in wanted:
                    kept.append(rgb)
    return resize_frames(np.stack(kept)) if kept else None


def decord_full_then_resize(path: str) -> np.ndarray:
    reader = decord.VideoReader(path, num_threads=1)
    batch = reader.get_batch(middle_frame_indices(len(reader), 4).tolist()).asnumpy()
    return resize_frames(batch)


def decord_scaled(path: str) -> np.ndarray:
    reader = decord.VideoReader(path, num_threads=1, width=224, height=224)
    return reader.get_batch(middle_frame_indices(len(reader), 4).tolist()).asnumpy()


def decord_full_then_uint8_resize(path: str) -> np.ndarray:
    """What resize_frames would cost on torch's uint8 channels-last kernel (not used yet)."""
    reader = decord.VideoReader(path, num_threads=1)
    batch = torch.from_numpy(
        reader.get_batch(middle_frame_indices(len(reader), 4).tolist()).asnumpy()
    )
    x = batch.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    out = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True)
    return out.permute(0, 2, 3, 1).numpy()


def child_cpu_s(pid: int | None) -> float:
    """CPU seconds used so far by process `pid`, exited threads included (10 ms ticks)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@dataclass
class Timer:
    """A decode function, and the CPU time of a helper process it uses (if any)."""

    fn: Callable[[str], object]
    helper_cpu_s: Callable[[], float] = lambda: 0.0


def seconds_per_video(
    timers: dict[str, Timer], paths: list[str], repeats: int
) -> dict[str, tuple[float, float, float]]:
    """(CPU s, wall s, CPU s of this process alone) per video for each function.

    CPU time (this process plus the decode child, over a pass of all videos) is what "per
    core" means and is not inflated by other load on the machine; the median wall time per
    video is shown beside it. The functions take turns pass by pass, so a change in load
    hits them alike; each number is the median over `repeats` passes.
    """
    cpu: dict[str, list[float]] = {name: [] for name in timers}
    own: dict[str, list[float]] = {name: [] for name in timers}
    wall: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            cpu0, helper0 = time.process_time(), timer.helper_cpu_s()
            for path in paths:
                wall0 = time.perf_counter()
                timer.fn(path)
                wall[name].append(time.perf_counter() - wall0)
            own[name].append((time.process_time() - cpu0) / len(paths))
            cpu[name].append(own[name][-1] + (timer.helper_cpu_s() - helper0) / len(paths))
    return {
        name: (
            float(np.median(cpu[name])),
            float(np.median(wall[name])),
            float(np.median(own[name])),
        )
        for name in timers
    }


def isolation_cost(
    decoder: IsolatedDecoder, params: dict, paths: list[str], passes: int
) -> dict[str, tuple[float, float]]:
    """CPU ms per video (mean, standard error over passes) of the parent and the child of
    the isolated decode, and of the same decode in-process, alternating pass by pass."""
    parent, child, alone = [], [], []
    for _ in range(passes):
        cpu0, child0 = time.process_time(), child_cpu_s(decoder.child_pid)
        for path in paths:
            decoder.decode(path)
        parent.append((time.process_time() - cpu0) / len(paths) * 1e3)
        child.append((child_cpu_s(decoder.child_pid) - child0) / len(paths) * 1e3)
        cpu0 = time.process_time()
        for path in paths:
            decode_path(path, params)
        alone.append((time.process_time() - cpu0) / len(paths) * 1e3)
    total = [p + c - a for p, c, a in zip(parent, child, alone, strict=True)]
    return {
        name: (float(np.mean(v)), float(np.std(v) / np.sqrt(len(v))))
        for name, v in (("parent", parent), ("child", child), ("alone", alone), ("extra", total))
    }


def long_video(cache_dir: str, minutes: float, width: int, height: int, fps: int) -> str:
    path = os.path.join(cache_dir, f"long-{minutes:g}min-{width}x{height}-{fps}fps.mp4")
    if not os.path.exists(path):
        print(f"generating {path} ...", flush=True)
        started = time.perf_counter()
        video = sample_videos(1, seed=123)[0]
        write_video(path + ".tmp", iter_frames(video, minutes * 60, width, height, fps), fps)
        os.replace(path + ".tmp", path)
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-short", type=int, default=48)
    parser.add_argument("--long-minutes", type=float, default=20.0)
    parser.add_argument("--long-fps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    default_cache = os.path.join(os.path.expanduser("~"), ".cache", "vidcat-bench")
    parser.add_argument("--cache-dir", default=default_cache)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the decode child runs torch single-threaded too
    os.makedirs(args.cache_dir, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        short = make_sample_catalog(os.path.join(tmp, "short"), args.num_short, seed=0)
        short_paths = [
            os.path.join(os.path.dirname(short), "videos", f)
            for f in sorted(os.listdir(os.path.join(os.path.dirname(short), "videos")))
        ]
        hd = make_sample_catalog(os.path.join(tmp, "hd"), 8, width=1280, height=720, seed=1)
        hd_paths = [
            os.path.join(os.path.dirname(hd), "videos", f)
            for f in sorted(os.listdir(os.path.join(os.path.dirname(hd), "videos")))
        ]
        config = DecodeConfig(allowed_roots=(tmp, args.cache_dir), timeout_s=600)
        params = config.worker_params()
        rows = []

        with IsolatedDecoder(config) as decoder:
            started = time.perf_counter()
            assert decoder.decode(short_paths[0]).status == "ok"
            spawn_s = time.perf_counter() - started

            def isolated(path: str) -> None:
                result = decoder.decode(path)
                assert result.status == "ok", result.message

            def in_process(path: str, decoder: str = "decord") -> None:
                header, _ = decode_path(path, {**params, "decoder": decoder})
                assert header["status"] == "ok" and header["decoder"] == decoder, header

            timers = {
                "base": Timer(pyav_every_frame),
                "no_rgb": Timer(lambda p: pyav_every_frame(p, to_rgb=False)),
                "in_process": Timer(in_process),
                "isolated": Timer(isolated, lambda: child_cpu_s(decoder.child_pid)),
                "pyav_primary": Timer(lambda p: in_process(p, "pyav")),
            }
            rows.append(("short", seconds_per_video(timers, short_paths, args.repeats)))
            iso = isolation_cost(decoder, params, short_paths, 2 * args.repeats)
            if args.long_minutes > 0:
                path = long_video(args.cache_dir, args.long_minutes, 320, 240, args.long_fps)
                clips = len(decoder.decode(path).clips)
                rows.append(("long", seconds_per_video(timers, [path], args.repeats)))

        resize_rows = []
        for name, paths in (("320x240", short_paths), ("1280x720", hd_paths)):
            timers = {
                "full": Timer(decord_full_then_resize),
                "scaled": Timer(decord_scaled),
                "uint8": Timer(decord_full_then_uint8_resize),
            }
            t = {k: v[0] for k, v in seconds_per_video(timers, paths, args.repeats).items()}
            diffs = {}
            for key, fn in (("scaled", decord_scaled), ("uint8", decord_full_then_uint8_resize)):
                delta = [np.abs(decord_full_then_resize(p).astype(np.int16) - fn(p)) for p in paths]
                diffs[key] = (np.mean([d.mean() for d in delta]), max(d.max() for d in delta))
            resize_rows.append((name, t, diffs))

    print()
    print(f"## Decode throughput, 1 core per decoder ({os.cpu_count()} cores on this machine)")
    print(f"short: {args.num_short} videos 320x240, 3 s, 25 fps, h264 (sample catalog)")
    if args.long_minutes > 0:
        print(
            f"long: one {args.long_minutes:g}-minute video 320x240, {args.long_fps} fps, "
            f"h264, GOP 2 s; ours samples {clips} clips x 4 frames (clip_seconds=30)"
        )
    print()
    print("| case | decoder | CPU ms/video | videos/s/core | vs PyAV all frames | wall ms/video |")
    print("|---|---|---:|---:|---:|---:|")
    labels = {
        "base": "PyAV, every frame to RGB, then sample 4 + resize (baseline)",
        "no_rgb": "PyAV, every frame, no RGB conversion (lower bound)",
        "in_process": "ours in-process (probe + decord + 4 frames/clip + resize)",
        "isolated": "ours through IsolatedDecoder (parent + child CPU)",
        "pyav_primary": "ours in-process with decoder='pyav' (seek + decode to each frame)",
    }
    for case, t in rows:
        base = t["base"][0]
        for key, label in labels.items():
            cpu, wall, _ = t[key]
            print(
                f"| {case} | {label} | {cpu * 1e3:.1f} | {1 / cpu:.1f} | {base / cpu:.1f}x "
                f"| {wall * 1e3:.1f} |"
            )
    print()
    print(
        f"Isolation cost per short video (CPU ms, mean ± s.e. over {2 * args.repeats} "
        f"alternating passes): parent {iso['parent'][0]:.2f} ± {iso['parent'][1]:.2f} "
        f"(resolve, pipe, unpack) + child {iso['child'][0]:.2f} ± {iso['child'][1]:.2f} "
        f"vs in-process {iso['alone'][0]:.2f} ± {iso['alone'][1]:.2f}: "
        f"{iso['extra'][0]:+.2f} ± {iso['extra'][1]:.2f} ms. "
        f"Child start {spawn_s:.2f} s wall, once per actor and after each crash."
    )
    print(f"Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    print()
    print("## Resize of the 4 sampled frames to 224x224 (decode + resize, CPU ms/video)")
    print()
    print(
        "| source | decode full + resize_frames (chosen) | decord width/height=224 "
        "| decode full + torch uint8 channels-last bicubic |"
    )
    print("|---|---:|---:|---:|")
    for name, t, diffs in resize_rows:
        print(
            f"| {name} | {t['full'] * 1e3:.1f} "
            f"| {t['scaled'] * 1e3:.1f} (abs diff mean {diffs['scaled'][0]:.3f}, "
            f"max {diffs['scaled'][1]}) "
            f"| {t['uint8'] * 1e3:.1f} (abs diff mean {diffs['uint8'][0]:.3f}, "
            f"max {diffs['uint8'][1]}) |"
        )


if __name__ == "__main__":
    main()
