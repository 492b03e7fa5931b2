"""What a decoder process costs to start: CPU seconds and peak RSS of the isolated decoder
child from its start to its first result (one 1-s 320x240 h264 video), median over fresh
processes.

    python benchmarks/decoder_startup.py [--processes 5]

To compare with another revision, run it with PYTHONPATH pointing at that checkout (the
child is started from the `pipeline` package the script imports).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import av
import numpy as np

from pipeline.decode import DecodeConfig, IsolatedDecoder


def write_video(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(25):
            rgb = rng.integers(0, 256, (240, 320, 3), np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def child_cost(pid: int) -> tuple[float, float]:
    """CPU s (user + system) and peak RSS (MB) of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    return cpu, peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        video = str(write_video(Path(tmp) / "clip.mp4"))
        cpu, rss, decoders = [], [], set()
        for _ in range(args.processes):
            with IsolatedDecoder(DecodeConfig(allowed_roots=(tmp,))) as decoder:
                result = decoder.decode(video)
                assert result.status == "ok", result
                decoders.add(result.decoder)
                c, r = child_cost(decoder.child_pid)
            cpu.append(c)
            rss.append(r)
    print(
        f"decoder child ({', '.join(sorted(decoders))}), start to first result: "
        f"CPU s median {statistics.median(cpu):.2f} [{min(cpu):.2f}-{max(cpu):.2f}], "
        f"peak RSS MB median {statistics.median(rss):.0f}, over {len(cpu)} processes"
    )


if __name__ == "__main__":
    main()
