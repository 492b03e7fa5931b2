"""Decode cost per core by source resolution (inputs to the capacity plan in infra/README).

For 360p, 720p and 1080p h264 sources (10 s, 25 fps, GOP 2 s), the CPU time per video of
our isolated decode (probe + decord + 4 middle frames + resize, parent and child CPU)
against decoding every frame with PyAV, measured in the same run.

    python benchmarks/decode_resolutions.py [--videos 6] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_throughput import Timer, child_cpu_s, pyav_every_frame, seconds_per_video

from pipeline.decode import DecodeConfig, IsolatedDecoder
from pipeline.sample_catalog import make_sample_catalog

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vidcat-res-") as tmp:
        config = DecodeConfig(allowed_roots=(tmp,), timeout_s=600)
        pyav_config = DecodeConfig(allowed_roots=(tmp,), timeout_s=600, decoder="pyav")
        with IsolatedDecoder(config) as decoder, IsolatedDecoder(pyav_config) as pyav_decoder:
            for label, (w, h) in SIZES.items():
                out = os.path.join(tmp, label)
                make_sample_catalog(out, args.videos, seconds=args.seconds, width=w, height=h)
                paths = sorted(str(q) for q in Path(out, "videos").iterdir())
                # Start both children (and their imports) outside the measured passes.
                decoder.decode(paths[0])
                pyav_decoder.decode(paths[0])

                def isolated(path: str, dec: IsolatedDecoder = decoder) -> None:
                    assert dec.decode(path).status == "ok"

                timers = {
                    "base": Timer(pyav_every_frame),
                    "ours": Timer(isolated, lambda: child_cpu_s(decoder.child_pid)),
                    "ours_pyav": Timer(
                        lambda q: isolated(q, pyav_decoder),
                        lambda: child_cpu_s(pyav_decoder.child_pid),
                    ),
                }
                t = seconds_per_video(timers, paths, args.repeats)
                rows.append((label, t["ours"][0], t["ours_pyav"][0], t["base"][0]))
    print(f"{args.videos} videos per size, {args.seconds:g} s, 25 fps, h264; CPU time per video")
    print(
        "| source | decord CPU ms | decord videos/s/core | pyav-seek CPU ms "
        "| pyav-seek videos/s/core | PyAV all frames CPU ms | best x |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, ours, ours_pyav, base in rows:
        print(
            f"| {label} | {ours * 1e3:.0f} | {1 / ours:.1f} | {ours_pyav * 1e3:.0f} | "
            f"{1 / ours_pyav:.1f} | {base * 1e3:.0f} | {base / min(ours, ours_pyav):.1f} |"
        )


if __name__ == "__main__":
    main()
