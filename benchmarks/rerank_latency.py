"""Re-ranking latency on CPU with the tiny model: stored vs recomputed vision tokens.

Builds a small catalog (sample videos → the pipeline's decode and embed stages → the
sink, vision tokens stored), then times `CatalogSearch.text(q, k=10, rerank=True,
rerank_k=32)` with each token source against the same query without re-ranking, in the
same run. Prints p50/p95 and where the time goes (`Reranker.last_stats`).

    python benchmarks/rerank_latency.py [--clips 32] [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.decode import DecodeConfig, DecodeStage
from pipeline.embed import EmbedConfig, EmbedStage
from pipeline.models import ModelSpec
from pipeline.query import CatalogSearch
from pipeline.runner import RunConfig
from pipeline.runs import RunFiles
from pipeline.sample_catalog import make_sample_catalog
from pipeline.sink import LanceSink, SinkConfig

SPEC = ModelSpec(model="tiny-random")
QUERY = "a red circle moving right"


def build(root: Path, clips: int) -> str:
    manifest = make_sample_catalog(str(root), num_videos=clips, seconds=3.0)
    decode = DecodeConfig(allowed_roots=(str(root),), base_dir=str(root))
    embed = EmbedConfig(
        model=SPEC, store_vision_tokens=True, signature_extra=decode.signature_inputs()
    )
    rows = EmbedStage(embed)(DecodeStage(decode).decode_batch(pq.read_table(manifest)))
    db = str(root / "db")
    meta = tuple(pq.read_schema(manifest).field(c) for c in ("caption", "category"))
    with LanceSink(SinkConfig(db, metadata_fields=meta, store_vision_tokens=True)) as sink:
        sink.write(rows)
    run = RunConfig(
        manifest=manifest,
        db=db,
        allowed_roots=(str(root),),
        decode=decode,
        embed=EmbedConfig(model=SPEC),
    )
    RunFiles(db, "videos", run.s3).write_config("00000000T000000Z-bench", run.to_dict())
    return db


def timed(search: CatalogSearch, runs: int, **kw) -> tuple[list[float], list[dict]]:
    for _ in range(2):
        search.text(QUERY, k=10, **kw)
    times, stats = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        search.text(QUERY, k=10, **kw)
        times.append(time.perf_counter() - t0)
        if kw.get("rerank"):
            stats.append(dict(search.reranker.last_stats))
    return times, stats


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vidcat-rerank-") as tmp:
        db = build(Path(tmp), args.clips)
        rows = []
        with CatalogSearch(db, model=SPEC) as plain:
            base, _ = timed(plain, args.runs)
        rows.append(("none", base, None))
        cases = [("stored", "stored", None), ("recompute", "recompute", None)]
        cases.append(("recompute, 1 decoder", "recompute", 1))
        for name, source, decoders in cases:
            with CatalogSearch(
                db, model=SPEC, rerank_tokens=source, rerank_decoders=decoders
            ) as search:
                t, stats = timed(search, args.runs, rerank=True, rerank_k=32)
                if decoders is None and source == "recompute":
                    name += f", {search.reranker.config.decoders} decoders"
            rows.append((name, t, stats))
    base_p50 = statistics.median(base)
    print(
        f"tiny-random on CPU ({args.threads} thread), {args.clips} clips, rerank_k=32, "
        f"median of {args.runs}"
    )
    print(
        f"{'tokens':<24} {'p50 ms':>8} {'p95 ms':>8} {'x no-rerank':>11} "
        f"{'tokens ms':>10} {'decode ms':>10} {'match ms':>9}"
    )
    for name, t, stats in rows:
        extra = ("", "", "")
        if stats:
            med = {
                k: statistics.median(s[k] for s in stats) * 1e3
                for k in ("tokens_seconds", "decode_seconds", "match_seconds")
            }
            extra = (
                f"{med['tokens_seconds']:.1f}",
                f"{med['decode_seconds']:.1f}",
                f"{med['match_seconds']:.1f}",
            )
        print(
            f"{name:<24} {statistics.median(t) * 1e3:>8.1f} {pct(t, 95) * 1e3:>8.1f} "
            f"{statistics.median(t) / base_p50:>11.1f} {extra[0]:>10} {extra[1]:>10} "
            f"{extra[2]:>9}"
        )


if __name__ == "__main__":
    main()
