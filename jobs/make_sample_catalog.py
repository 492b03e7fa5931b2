"""Write a synthetic catalog of short videos and its manifest (local directory or S3).

python -m jobs.make_sample_catalog --out demo_out/catalog --num-videos 24
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from pipeline.decode import S3Config
from pipeline.sample_catalog import make_sample_catalog


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 320x240, got {text!r}") from None
    return width, height


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory or s3://bucket/prefix")
    parser.add_argument("--num-videos", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each video")
    parser.add_argument("--size", type=_size, default=(320, 240), help="WxH (default 320x240)")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="encoding processes")
    parser.add_argument("--absolute-uris", action="store_true", help="absolute local paths")
    parser.add_argument("--s3-endpoint-url", default=None, help="e.g. http://127.0.0.1:9000")
    parser.add_argument("--s3-region", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    settings = {
        "num_videos": args.num_videos,
        "seconds": args.seconds,
        "width": args.size[0],
        "height": args.size[1],
        "fps": args.fps,
        "seed": args.seed,
    }
    started = time.perf_counter()
    manifest = make_sample_catalog(
        args.out,
        **settings,
        s3=S3Config(endpoint_url=args.s3_endpoint_url, region=args.s3_region),
        workers=args.workers,
        absolute_uris=args.absolute_uris,
    )
    if not args.out.startswith("s3://"):
        with open(os.path.join(args.out, "sample_catalog.json"), "w") as f:
            json.dump(settings, f, indent=2)
    logging.info("%d videos in %.1f s", args.num_videos, time.perf_counter() - started)
    print(manifest)
    return manifest


if __name__ == "__main__":
    main()
