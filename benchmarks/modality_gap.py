"""The text↔video cosine gap of an embedded catalog (issue: recall on text queries).

Text queries sit away from the catalog's vectors in contrastive video-text models (the
modality gap), which is why the index calibrates text searches apart from video ones
(`pipeline.recall`). This measures the gap on a table embedded with a model that retrieves
something (`demo-shapes` on the sample catalog: `make demo` first), exactly, without any
index:

* text → its videos: cosine of each distinct caption's text embedding with the videos
  whose caption it is (mean), with the best video of the table (top-1), and with the
  table's mean video;
* video → video: each clip's cosine to its nearest other clip, and to a random other clip.

The gap is the difference between where a video's neighbours are and where a text's best
match is. `benchmarks/query_latency.py` generates text-like queries at top-1 cosine 0.22 by
default; this is the number to compare that with.

Usage:
    make demo && python benchmarks/modality_gap.py --db demo_out/lancedb
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="demo_out/lancedb")
    parser.add_argument("--table", default="videos")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from pipeline.db import open_table
    from pipeline.models import ModelSpec
    from pipeline.query import CatalogSearch

    table = open_table(args.db, args.table)
    rows = table.search().select(["clip_id", "caption", "embedding", "model"]).limit(None)
    rows = rows.to_arrow()
    models = set(rows["model"].to_pylist())
    if len(models) != 1:
        print(f"error: expected one model in the table, found {sorted(models)}", file=sys.stderr)
        return 2
    model_identity = models.pop()
    vectors = np.stack(rows["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    captions = np.asarray(rows["caption"].to_pylist(), dtype=object)
    identity, frames = CatalogSearch(args.db, args.table).embedded_with()
    spec = ModelSpec.for_identity(identity, frames)  # the table's own model
    if spec is None:
        print(
            f"error: {identity} needs its weights; this script runs bundled models", file=sys.stderr
        )
        return 2
    search = CatalogSearch(args.db, args.table, model=spec, device="cpu")
    texts = sorted(set(captions))
    t = np.stack([search.embed_text(c) for c in texts])
    sims = t @ vectors.T  # [texts, clips]
    own = np.array([sims[i, captions == c].mean() for i, c in enumerate(texts)])
    top1 = sims.max(axis=1)
    mean_video = vectors.mean(axis=0)
    mean_video /= np.linalg.norm(mean_video)
    to_mean = t @ mean_video
    vv = vectors @ vectors.T
    np.fill_diagonal(vv, -np.inf)
    nearest = vv.max(axis=1)
    rng = np.random.default_rng(args.seed)
    n = len(vectors)
    other = (np.arange(n) + rng.integers(1, n, n)) % n
    random_pair = np.einsum("ij,ij->i", vectors, vectors[other])
    top1_is_own = np.array([captions[sims[i].argmax()] == c for i, c in enumerate(texts)])

    def stat(x: np.ndarray) -> str:
        return f"{np.mean(x):.3f} [{np.percentile(x, 5):.3f}-{np.percentile(x, 95):.3f}]"

    print(f"table {args.db}/{args.table}: {n} clips, {len(texts)} captions, model {model_identity}")
    print("cosine, mean [5th-95th percentile]:")
    print(f"  text -> videos with its caption:   {stat(own)}")
    own_first = f"(the caption's own video first: {top1_is_own.mean():.2f})"
    print(f"  text -> best video of the table:   {stat(top1)}  {own_first}")
    print(f"  text -> the table's mean video:    {stat(to_mean)}")
    print(f"  video -> nearest other video:      {stat(nearest)}")
    print(f"  video -> a random other video:     {stat(random_pair)}")
    print(
        f"gap (video's nearest neighbour minus text's best match): "
        f"{np.mean(nearest) - np.mean(top1):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
