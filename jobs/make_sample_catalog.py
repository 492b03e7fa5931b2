"""Write a synthetic catalog of short videos and its manifest (local directory or S3).

    vidcat sample-catalog --out demo_out/catalog --num-videos 24

The manifest's path or URI goes to stdout; log lines to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from jobs.common import UsageError, add_s3_arguments, fail, s3_config, setup_logging
from pipeline.sample_catalog import make_sample_catalog


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 320x240, got {text!r}") from None
    return width, height


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory or s3://bucket/prefix")
    parser.add_argument("--num-videos", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each video")
    parser.add_argument("--size", type=_size, default=(320, 240), help="WxH (default 320x240)")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="encoding processes")
    parser.add_argument("--absolute-uris", action="store_true", help="absolute local paths")
    add_s3_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()

    settings = {
        "num_videos": args.num_videos,
        "seconds": args.seconds,
        "width": args.size[0],
        "height": args.size[1],
        "fps": args.fps,
        "seed": args.seed,
    }
    started = time.perf_counter()
    try:
        manifest = make_sample_catalog(
            args.out,
            **settings,
            s3=s3_config(args),
            workers=args.workers,
            absolute_uris=args.absolute_uris,
        )
    except (UsageError, ValueError) as exc:
        return fail(exc)
    if not args.out.startswith("s3://"):
        with open(os.path.join(args.out, "sample_catalog.json"), "w") as f:
            json.dump(settings, f, indent=2)
    logging.info("%d videos in %.1f s", args.num_videos, time.perf_counter() - started)
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
