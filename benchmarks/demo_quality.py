"""Retrieval quality of `demo-shapes` through the real pipeline, on a held-out catalog.

    python benchmarks/demo_quality.py                   # 160 videos, ~8 min on 2 busy cores
    python benchmarks/demo_quality.py --videos 60 --json out.json

Renders a sample catalog with a seed and an encoding no training catalog used (see
:mod:`pipeline.retrieval_quality`), re-encodes each video at another resolution and bitrate,
embeds the catalog with `jobs/embed_catalog.py` and queries every distinct caption through
`CatalogSearch`: text→video R@1/R@5 and per-attribute top-1 accuracy, with and without
re-ranking, video→video top-1 of the re-encoded copies, and the caption choice per
attribute (does each video's own caption beat those differing in that attribute alone),
also with every clip's frames played backwards, scored against the clip's own caption (the
direction choice should fall to 0) and against the caption of what the reversed clip shows,
its direction reversed (every attribute should stay as it was). Prints
a Markdown table on stdout and writes the JSON with `--json`. Everything is made under a
temporary directory (or `--work`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import retrieval_quality as rq
from pipeline.models import DEMO_SHAPES, MODEL_NAMES, ModelSpec
from pipeline.query import CatalogSearch
from pipeline.training_data import ATTRIBUTES, CatalogSpec

#: The benchmark's catalog: seed, size, frame rate and length that training never used.
SPEC = CatalogSpec(seed=31337, num_videos=160, width=272, height=204, fps=18, seconds=2.6)


def table(result: dict) -> str:
    plain, reranked = result["text_to_video"], result["reranked"]
    lines = [
        f"| metric | plain search | re-ranked (top {reranked['rerank_k']}) |",
        "| --- | --- | --- |",
        f"| text→video R@1 | {plain['r1']:.3f} | {reranked['r1']:.3f} |",
        f"| text→video R@5 | {plain['r5']:.3f} | {reranked['r5']:.3f} |",
    ]
    for name in ATTRIBUTES:
        a, b = plain["attribute_top1"][name], reranked["attribute_top1"][name]
        lines.append(f"| top-1 {name} right | {a:.3f} | {b:.3f} |")
    if "copies" in result:
        lines.append(f"| re-encoded copy → original top-1 | {result['copies']['top1']:.3f} | |")
    choice, backwards = result["caption_choice"], result["caption_choice_reversed_frames"]
    relabelled = result["caption_choice_reversed_relabelled"]
    for name in ATTRIBUTES:
        lines.append(f"| caption choice: {name} | {choice[name]:.3f} | |")
    for name in ATTRIBUTES:
        lines.append(
            f"| frames played backwards, caption choice: {name} (own caption / reversed "
            f"caption) | {backwards[name]:.3f} / {relabelled[name]:.3f} | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=SPEC.num_videos)
    p.add_argument("--model", choices=MODEL_NAMES, default=DEMO_SHAPES)
    p.add_argument("--rerank-k", type=int, default=32, help="candidates re-ranked (CLI default)")
    p.add_argument("--work", default=None, help="directory for the catalog and table")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.videos < 5 or args.rerank_k < 5:
        p.error("--videos and --rerank-k must be at least 5")
    if args.model == "internvideo2-1b":
        p.error("the held-out catalog's captions are what demo-shapes knows; use demo-shapes")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = CatalogSpec(**{**SPEC.__dict__, "num_videos": args.videos})
    with tempfile.TemporaryDirectory(prefix="vidcat-quality-") as tmp:
        work = Path(args.work or tmp)
        started = time.perf_counter()
        catalog = rq.make_held_out(work, spec)
        made = time.perf_counter() - started
        embed_s = rq.run_embed_job(catalog.manifest, str(work / "lancedb"), args.model)
        search = CatalogSearch(str(work / "lancedb"), model=ModelSpec(model=args.model))
        try:
            result = rq.measure(search, catalog, rerank_k=args.rerank_k)
            model = ModelSpec(model=args.model).build("cpu", torch.float32)
            backwards = {k: v[::-1] for k, v in rq.decode_catalog(catalog).items()}
            reversed_vectors = rq.embed_in_process(model, backwards)
            result["caption_choice_reversed_frames"] = rq.caption_choice(
                search, catalog, reversed_vectors
            )
            result["caption_choice_reversed_relabelled"] = rq.caption_choice(
                search, rq.played_backwards(catalog), reversed_vectors
            )
        finally:
            search.close()
    result.update(model=args.model, catalog_seconds=round(made, 1), embed_seconds=round(embed_s, 1))
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
