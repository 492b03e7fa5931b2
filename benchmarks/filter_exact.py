"""Exact scan vs the calibrated vector index under filters of several selectivities, on a
table `query_latency.py` built (`--db DIR --reuse` there first).

For each filter: the rows it leaves and what `count_rows` costs, p50 of an exact scan of
the filtered rows and of the index search with the table's calibrated `video` parameters,
and the index's recall@10 against that exact scan. Catalog-like queries (fresh draws of the
benchmark generator). This is what `CatalogSearch(exact_below=...)` was chosen from.

    python benchmarks/filter_exact.py --db /tmp/qbench --dist base
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import lancedb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import query_latency as ql

from pipeline.index import config_for_table, vector_search
from pipeline.recall import choose, read_calibration

FILTERS = (
    "video_id = 'v00000123'",
    "video_id < 'v00000100'",
    "video_id < 'v00000400'",
    "video_id < 'v00001000'",
    "category = 'sports' AND duration_s < 60",
    "duration_s < 11",
    "category = 'sports'",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True)
    p.add_argument("--dist", choices=sorted(ql.DISTRIBUTIONS), default="base")
    p.add_argument("--queries", type=int, default=12)
    args = p.parse_args()
    table = lancedb.connect(args.db).open_table(ql.TABLE)
    spec = dataclasses.replace(ql.DISTRIBUTIONS[args.dist], rows=table.count_rows(), seed=0)
    queries, _ = ql.make_queries(ql.make_synthetic(spec), spec, args.queries, seed=7)
    base = config_for_table(table)
    choice = choose(read_calibration(table), base, "video")
    config = choice.params.apply(base)
    print(f"index search: {choice.params} ({choice.source})")
    for where in FILTERS:
        start = time.perf_counter()
        rows = table.count_rows(where)
        count_ms = (time.perf_counter() - start) * 1000
        exact, index, found = [], [], []
        for q in queries:
            start = time.perf_counter()
            truth = vector_search(table, q, ql.K, where, config, exact=True)
            exact.append(time.perf_counter() - start)
            start = time.perf_counter()
            hits = vector_search(table, q, ql.K, where, config)
            index.append(time.perf_counter() - start)
            want = set(truth["clip_id"].to_pylist())
            found.append(len(want & set(hits["clip_id"].to_pylist())) / max(1, len(want)))
        print(
            f"{where!r:45} rows {rows:7d} count {count_ms:6.1f} ms  exact p50 "
            f"{np.median(exact) * 1000:7.1f} ms  index p50 {np.median(index) * 1000:6.1f} ms "
            f"recall {np.mean(found):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
