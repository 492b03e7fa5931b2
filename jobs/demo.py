"""The demo: make the sample catalog, embed it, and search it.

    make demo                                  # tiny random model, clearly labelled
    make demo CHECKPOINT=/models/InternVideo2-stage2_1b-224p-f4.pt

Uses an embedded local Ray and local directories. With `--checkpoint` the real
InternVideo2 1B embeds the catalog (and `--tokenizer` points at bert-large-uncased);
without it, the random `tiny-random` model runs, and every row's `model` column says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import embed_catalog
from pipeline.sample_catalog import make_sample_catalog

log = logging.getLogger("vidcat.demo")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out", help="where the catalog and the table go")
    p.add_argument("--num-videos", type=int, default=24)
    p.add_argument("--checkpoint", default=None, help="InternVideo2 1B weights (else tiny-random)")
    p.add_argument("--tokenizer", default=None, help="bert-large-uncased directory (real model)")
    p.add_argument("--query", default="a red circle moving right")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    out = Path(args.out).resolve()
    manifest = out / "catalog" / "manifest.parquet"
    if not manifest.exists():
        make_sample_catalog(str(out / "catalog"), num_videos=args.num_videos)
    model = (
        ["--model", "internvideo2-1b", "--checkpoint", args.checkpoint]
        if args.checkpoint
        else ["--model", "tiny-random"]
    )
    if not args.checkpoint:
        log.warning("no --checkpoint: embedding with the RANDOM tiny test model (tiny-random)")
    code = embed_catalog.main(
        [
            "--manifest",
            str(manifest),
            "--db",
            str(out / "lancedb"),
            "--max-error-rate",
            "0.0",
            *model,
        ]
    )
    if code:
        return code
    from pipeline import query

    qargs = ["text", args.query, "--db", str(out / "lancedb"), "--k", "5", *model]
    if args.tokenizer:
        qargs += ["--tokenizer", args.tokenizer]
    note = "" if args.checkpoint else "  (random model: scores are meaningless)"
    print(f"\nquery: {args.query!r}{note}")
    return query.main(qargs)


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
