"""Find near-duplicate clips (re-uploads, re-encodes, trims, crops) and write
`<table>_duplicates`.

    vidcat dedup --db s3://bucket/lancedb [--table videos] [--eps 0.05] [--keep earliest]
    vidcat dedup --db data/lancedb --full                  # re-cluster from scratch
    vidcat dedup --db data/lancedb --videos                # print the video pairs, read only

Incremental by default: only clips added or re-embedded since the last run are compared
(against the saved centroids); a full pass runs when there is no saved state, eps changed,
or the backlog passed --max-backlog. `vidcat embed --dedup` runs the same pass at the end of
an embedding run. The run report (JSON) goes to stdout, and beside the table's run reports
with a histogram of nearest-neighbour similarities (`<run_id>.dedup.{json,png}`).

Exit codes: 0 done; 2 invalid input (`error: …`: no such database or table, bad
arguments, a --keep column the table lacks); 4 another writer holds the table's lease.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.common import (
    UsageError,
    add_lease_arguments,
    add_s3_arguments,
    fail,
    lease_config,
    lease_held,
    s3_config,
    setup_logging,
)
from pipeline.db import (
    DatabaseNotFound,
    StoreError,
    TableSchemaError,
    check_table_name,
    open_table,
)
from pipeline.dedup import DedupConfig, read_duplicate_videos, run_dedup
from pipeline.lease import Lease, LeaseHeld
from pipeline.runs import new_run_id
from pipeline.storage import check_db_uri


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="LanceDB directory or s3:// prefix")
    p.add_argument("--table", default="videos")
    p.add_argument(
        "--eps",
        type=float,
        default=DedupConfig.eps,
        help="clips with cosine similarity >= 1 - eps are near-duplicates",
    )
    p.add_argument(
        "--keep",
        default=DedupConfig.keep,
        metavar="earliest|longest|COLUMN[:max|:min]",
        help="the representative of each group: the clip embedded first, the clip of the "
        "longest video, or the largest (:min smallest) value of a column",
    )
    p.add_argument("--full", action="store_true", help="re-cluster instead of an incremental pass")
    p.add_argument(
        "--max-backlog",
        type=float,
        default=DedupConfig.max_backlog,
        help="a full pass runs once rows added, changed and deleted since the last full pass "
        "exceed this fraction of the table",
    )
    p.add_argument("--clusters", type=int, default=None, help="k-means clusters (default sqrt N)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--videos",
        action="store_true",
        help="print the video pairs of the last run (JSON lines) instead of running",
    )
    p.add_argument(
        "--min-fraction",
        type=float,
        default=0.5,
        help="with --videos: share of a video's clips that must match the other video",
    )
    add_s3_arguments(p)
    add_lease_arguments(p)
    args = p.parse_args(argv)
    setup_logging()
    try:
        s3 = s3_config(args)
        check_db_uri(args.db)
        check_table_name(args.table)
        if args.videos:
            pairs = read_duplicate_videos(
                args.db, args.table, s3.storage_options(), args.min_fraction
            )
            for row in pairs.to_pylist():
                print(json.dumps(row))
            return 0
        try:
            config = DedupConfig(
                eps=args.eps,
                keep=args.keep,
                max_backlog=args.max_backlog,
                clusters=args.clusters,
                device=args.device,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        # Before the lease, whose file would otherwise create a missing database directory.
        open_table(args.db, args.table, s3.storage_options())
        run_id = new_run_id("dedup")
        with Lease(args.db, args.table, run_id, "dedup", s3, lease_config(args)) as lease:
            report = run_dedup(
                args.db, args.table, config, s3=s3, full=args.full, guard=lease.check, run_id=run_id
            )
    except (UsageError, DatabaseNotFound, StoreError, TableSchemaError, ValueError) as exc:
        return fail(exc)
    except LeaseHeld as exc:
        return lease_held(exc)
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
