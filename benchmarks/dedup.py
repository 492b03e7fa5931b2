"""Near-duplicate detection at catalog scale: recall, precision, full vs incremental cost.

Data: `make_synthetic` of `query_latency.py` (clustered unit 512-d vectors, see there),
with `--dup-fraction` (1 %) of the rows replaced by planted near-duplicates: a row becomes
`cos(t) * source + sin(t) * u` (u a random unit vector orthogonal to the source, cos(t)
uniform in [0.97, 0.999]) of another row of the same 50k-row block, so every block holds
whole planted families (a source and its copies). The rows go into a LanceDB table with
the real embeddings schema, and the passes run through `pipeline.dedup.run_dedup`, each in
its own process (`pass` subcommand) so that its wall time and peak RSS are its own.

Measured, all in one run:

1. ground truth and baseline on the first 50k-row block (`--subset`): exact all-pairs
   cosine (tiled matmul over the upper triangle) vs the clustered search (k-means, two
   probes) on the same rows: pair recall and precision, and both times (planting works in
   blocks of `--subset` rows, so the subset holds whole families);
2. the full pass over the whole table: recall and precision of the planted families
   (a family's pairs are found when its rows end in one group; a found pair is correct
   when both rows are of one family), wall time and peak RSS;
3. `--new-fraction` (1 %) new rows appended (half fresh draws from the generator, half
   planted copies of existing rows), then the incremental pass: the same numbers, and its
   cost against the full pass.

Usage:
    python benchmarks/dedup.py                          # 1M rows
    python benchmarks/dedup.py --rows 100000            # quick
    python benchmarks/dedup.py --compare-faiss          # also k-means with faiss-cpu
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from query_latency import (
    SyntheticSpec,
    catalog_batches,
    clip_ids,
    make_queries,
    make_synthetic,
    table_schema,
)

from pipeline import schema
from pipeline.dedup import DedupConfig, PairFinder, components, find_pairs

TABLE = "clips"
BLOCK = 50_000


def plant(x: np.ndarray, fraction: float, rng, block: int = BLOCK) -> np.ndarray:
    """Overwrite `fraction` of the rows of each block with near-copies of other rows of the
    block; returns `[N]` family ids (-1: no family; else the source row)."""
    family = np.full(len(x), -1, np.int64)
    for start in range(0, len(x), block):
        n = min(block, len(x) - start)
        m = round(n * fraction)
        if m < 1:
            continue
        picks = start + rng.choice(n, 2 * m, replace=False)
        copies, sources = picks[:m], picks[m:]
        sources = sources[rng.integers(0, m, m)]  # some sources get several copies
        _copy(x, copies, sources, rng)
        family[copies] = sources
        family[sources] = sources
    return family


def _copy(x: np.ndarray, copies: np.ndarray, sources: np.ndarray, rng) -> None:
    u = rng.standard_normal((len(copies), x.shape[1]), dtype=np.float32)
    s = x[sources]
    u -= np.einsum("nd,nd->n", u, s)[:, None] * s
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    c = rng.uniform(0.97, 0.999, len(copies)).astype(np.float32)[:, None]
    x[copies] = c * s + np.sqrt(1 - c * c) * u


def exact_pairs(x: np.ndarray, threshold: float, tile: int = 4096) -> set[tuple[int, int]]:
    """Every pair with cosine >= threshold, by brute force over the upper triangle."""
    import torch

    t = torch.from_numpy(x)
    found = set()
    for i in range(0, len(x), tile):
        for j in range(i, len(x), tile):
            s = t[i : i + tile] @ t[j : j + tile].T
            if i == j:
                s = s.triu(1)
            r, c = torch.nonzero(s >= threshold, as_tuple=True)
            found.update(zip((r + i).tolist(), (c + j).tolist(), strict=True))
    return found


def clustered_pairs(x: np.ndarray, cfg: DedupConfig) -> set[tuple[int, int]]:
    """The pairs the dedup pass compares and keeps, in memory (no table)."""
    from pipeline.kmeans import nearest_centroids, spherical_kmeans

    centroids = spherical_kmeans(
        x, cfg.num_clusters(len(x)), iterations=cfg.iterations,
        sample_per_cluster=cfg.sample_per_cluster, seed=cfg.seed, device="cpu",
    )  # fmt: skip
    labels, _ = nearest_centroids(x, centroids, cfg.probes)
    finder = PairFinder(x, cfg.threshold, cfg.tile, "cpu")
    find_pairs(finder, labels)
    a, b = finder.edges()
    return {(min(p, q), max(p, q)) for p, q in zip(a.tolist(), b.tolist(), strict=True)}


def family_scores(groups: dict[str, str], family: dict[str, int]) -> dict[str, float]:
    """Recall and precision of planted families against the groups found.

    Args:
        groups: clip_id -> group_id of the duplicates table.
        family: clip_id -> family id of every planted row.
    """
    by_family: dict[int, list[str]] = {}
    for clip, fam in family.items():
        by_family.setdefault(fam, []).append(clip)
    true_pairs = found_true = 0
    for members in by_family.values():
        gids = [groups.get(c) for c in members]
        true_pairs += len(members) * (len(members) - 1) // 2
        counts: dict[str, int] = {}
        for g in gids:
            if g is not None:
                counts[g] = counts.get(g, 0) + 1
        found_true += sum(n * (n - 1) // 2 for n in counts.values())
    by_group: dict[str, list[str]] = {}
    for clip, g in groups.items():
        by_group.setdefault(g, []).append(clip)
    found_pairs = correct = 0
    for members in by_group.values():
        found_pairs += len(members) * (len(members) - 1) // 2
        counts = {}
        for c in members:
            f = family.get(c)
            if f is not None:
                counts[f] = counts.get(f, 0) + 1
        correct += sum(n * (n - 1) // 2 for n in counts.values())
    return {
        "planted_pairs": true_pairs,
        "found_pairs": found_pairs,
        "recall": found_true / true_pairs if true_pairs else 1.0,
        "precision": correct / found_pairs if found_pairs else 1.0,
    }


def run_pass(db: str, full: bool, cfg_args: list[str]) -> dict:
    """One `run_dedup` in a fresh process: its report and peak RSS."""
    cmd = [sys.executable, __file__, "pass", "--db", db, *cfg_args, *(["--full"] if full else [])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pass_main(argv: list[str]) -> None:
    import resource

    from pipeline.dedup import run_dedup

    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--full", action="store_true")
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report = run_dedup(args.db, TABLE, DedupConfig(eps=args.eps, device="cpu"), full=args.full)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    print(json.dumps({"report": report, "wall_s": wall, "peak_rss_mib": rss}, default=str))


def groups_of(db: str) -> dict[str, str]:
    dup = lancedb.connect(db).open_table(f"{TABLE}_duplicates").to_arrow()
    return dict(zip(dup[schema.CLIP_ID].to_pylist(), dup[schema.GROUP_ID].to_pylist(), strict=True))


def compare_faiss(x: np.ndarray, k: int, cfg: DedupConfig) -> None:
    """k-means on the same sample: ours (torch) vs faiss-cpu, time and mean cosine to the
    nearest centroid."""
    from pipeline.kmeans import nearest_centroids, spherical_kmeans

    sample = x[np.random.default_rng(1).choice(len(x), k * cfg.sample_per_cluster, replace=False)]
    t = time.perf_counter()
    ours = spherical_kmeans(sample, k, iterations=cfg.iterations, sample_per_cluster=10**9)
    ours_s = time.perf_counter() - t
    try:
        import faiss
    except ImportError:
        print("faiss not importable: pip install faiss-cpu to compare")
        return
    km = faiss.Kmeans(x.shape[1], k, niter=cfg.iterations, spherical=True, seed=1,
                      max_points_per_centroid=10**9, verbose=False)  # fmt: skip
    t = time.perf_counter()
    km.train(sample)
    faiss_s = time.perf_counter() - t
    for name, cents, secs in (("torch (ours)", ours, ours_s), ("faiss-cpu", km.centroids, faiss_s)):
        _, sims = nearest_centroids(sample, np.asarray(cents, np.float32), 1)
        print(f"k-means {name:13s} {len(sample)} x 512, k={k}, {cfg.iterations} iterations: "
              f"{secs:6.1f} s, mean cos to centroid {sims.mean():.4f}")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "pass":
        _pass_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dup-fraction", type=float, default=0.01)
    p.add_argument("--new-fraction", type=float, default=0.01)
    p.add_argument("--subset", type=int, default=BLOCK)
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--db", default=None, help="keep the table here (default: a temp dir)")
    p.add_argument("--compare-faiss", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = DedupConfig(eps=args.eps, device="cpu")
    cfg_args = ["--eps", str(args.eps), *(["--threads", str(args.threads)] if args.threads else [])]
    print(f"started {datetime.now(UTC).isoformat()} on {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    rng = np.random.default_rng(7)
    t = time.perf_counter()
    spec = SyntheticSpec(rows=args.rows)
    data = make_synthetic(spec)
    family = plant(data.vectors, args.dup_fraction, rng, block=args.subset)
    ids = clip_ids(data)
    print(
        f"data: {args.rows} rows, {int((family >= 0).sum())} in planted families "
        f"({len(np.unique(family[family >= 0]))} families), {time.perf_counter() - t:.0f} s"
    )

    # 1. the subset: exact all-pairs vs clustered
    sub = np.ascontiguousarray(data.vectors[: args.subset])
    t = time.perf_counter()
    exact = exact_pairs(sub, cfg.threshold)
    exact_s = time.perf_counter() - t
    t = time.perf_counter()
    ours = clustered_pairs(sub, cfg)
    ours_s = time.perf_counter() - t
    hit = len(exact & ours)
    fam = family[: args.subset]
    rows = np.flatnonzero(fam >= 0)
    planted = {
        (int(a), int(b)) for a in rows for b in rows if a < b and fam[a] == fam[b]
    } if len(rows) < 5000 else set()  # fmt: skip
    print(f"subset {len(sub)} rows, eps {args.eps}: exact all-pairs {len(exact)} pairs in "
          f"{exact_s:.1f} s; clustered {len(ours)} pairs in {ours_s:.1f} s "
          f"({exact_s / ours_s:.1f}x faster); pair recall {hit / max(len(exact), 1):.4f}, "
          f"precision {hit / max(len(ours), 1):.4f}")  # fmt: skip
    if planted:
        comp = components(len(sub), *np.array(sorted(ours)).T) if ours else np.arange(len(sub))
        same = sum(comp[a] == comp[b] for a, b in planted)
        print(
            f"subset planted family pairs {len(planted)}: in one group {same / len(planted):.4f}"
            f" (pairs of two copies below the threshold join through their source)"
        )
    if args.compare_faiss:
        compare_faiss(data.vectors, cfg.num_clusters(args.rows), cfg)

    # 2. the table and the full pass
    root = args.db or tempfile.mkdtemp(prefix="dedup-bench-")
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    table = lancedb.connect(root).create_table(
        TABLE, pa.RecordBatchReader.from_batches(table_schema(), catalog_batches(data, ids))
    )
    print(f"table written in {time.perf_counter() - t:.0f} s: {table.count_rows()} rows")
    fam_of = {ids[i]: int(family[i]) for i in np.flatnonzero(family >= 0)}
    full = run_pass(root, True, cfg_args)
    _print_pass("full", full, family_scores(groups_of(root), fam_of))

    # 3. new rows, then the incremental pass
    m = round(args.rows * args.new_fraction)
    fresh, _ = make_queries(data, spec, m - m // 2, seed=99)
    copies = np.empty((m // 2, schema.EMBED_DIM), np.float32)
    sources = rng.choice(args.rows, m // 2, replace=False)
    _copy_into = np.concatenate([data.vectors[sources], copies])  # sources then copies
    _copy(_copy_into, np.arange(m // 2, m), np.arange(m // 2), rng)
    new_x = np.concatenate([fresh, _copy_into[m // 2 :]]).astype(np.float32)
    new_ids = np.array([schema.clip_id(f"new{i:07d}", 0) for i in range(m)], dtype=object)
    table.add(_new_rows(new_x, new_ids, datetime.now(UTC) + timedelta(seconds=1)))
    for j, src in enumerate(sources):
        fam_of[new_ids[m - m // 2 + j]] = int(family[src]) if family[src] >= 0 else int(src)
        fam_of.setdefault(ids[src], fam_of[new_ids[m - m // 2 + j]])
    inc = run_pass(root, False, cfg_args)
    _print_pass("incremental", inc, family_scores(groups_of(root), fam_of))
    print(
        f"incremental / full wall time: {inc['wall_s'] / full['wall_s']:.3f}; "
        f"peak RSS {inc['peak_rss_mib']:.0f} / {full['peak_rss_mib']:.0f} MiB"
    )
    if args.db is None:
        shutil.rmtree(root, ignore_errors=True)


def _new_rows(x: np.ndarray, ids: np.ndarray, at: datetime) -> pa.Table:
    """Appended rows in the benchmark table's schema: one clip per new video."""
    n = len(x)
    videos = [c.split("#")[0] for c in ids]
    columns = {
        schema.CLIP_ID: pa.array(list(ids), pa.string()),
        schema.VIDEO_ID: videos,
        schema.CLIP_INDEX: pa.array(np.zeros(n, np.int32)),
        schema.CLIP_START_S: pa.array(np.zeros(n)),
        schema.CLIP_END_S: pa.array(np.full(n, 4.0)),
        schema.URI: [f"s3://bench/{v}.mp4" for v in videos],
        schema.EMBEDDING: schema.fixed_size_list(x),
        schema.MODEL: ["internvideo2-s2-1b"] * n,
        schema.SIGNATURE: ["bench"] * n,
        schema.NUM_FRAMES: pa.array(np.full(n, 8, np.int32)),
        schema.FRAME_INDICES: pa.nulls(n, pa.list_(pa.int32())),
        schema.DECODER: ["decord"] * n,
        schema.CONTENT_VERSION: ["1"] * n,
        schema.EMBEDDED_AT: pa.array([at] * n, pa.timestamp("us", tz="UTC")),
        "category": ["news"] * n,
        "duration_s": pa.array(np.full(n, 4.0)),
    }
    return pa.table(columns, schema=table_schema())


def _print_pass(name: str, result: dict, scores: dict) -> None:
    r = result["report"]
    secs = ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items())
    print(
        f"{name} pass ({r['reason']}): {r['counts']['rows']} rows, "
        f"{r['counts']['clusters']} clusters, {r['counts']['pairs_compared']:.3g} pairs "
        f"compared, {r['counts']['groups']} groups / {r['counts']['clips_in_groups']} clips; "
        f"wall {result['wall_s']:.1f} s ({secs}); peak RSS {result['peak_rss_mib']:.0f} MiB"
    )
    print(
        f"  planted families: recall {scores['recall']:.4f}, precision "
        f"{scores['precision']:.4f} ({scores['planted_pairs']} planted pairs, "
        f"{scores['found_pairs']} pairs in groups)"
    )
    within = r["nn_similarity"]["clips_with_neighbour_within_eps"]
    print(f"  clips with a neighbour within eps: {within}")


if __name__ == "__main__":
    main()
