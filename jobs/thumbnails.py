"""Make thumbnails for clips that have none (tables embedded before thumbnails existed).

    vidcat thumbnails --db s3://bucket/lancedb [--table videos] [--decoders 4]

Each clip is decoded again by its recorded bounds with the run's decode settings, and its
middle sampled frame stored as a JPEG in `<table>_thumbnails`, under the table's lease.
The result (JSON: clips, written, failed, seconds) goes to stdout; exit 2 when the table
cannot be opened, 4 when another writer holds its lease.
"""

from __future__ import annotations

import argparse
import json
import os
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
from pipeline.db import DatabaseNotFound, StoreError, TableSchemaError, open_table
from pipeline.lease import Lease, LeaseHeld
from pipeline.runs import new_run_id
from pipeline.thumbnails import backfill_thumbnails


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="LanceDB directory or s3:// prefix")
    p.add_argument("--table", default="videos")
    p.add_argument(
        "--decoders", type=int, default=os.cpu_count() or 1, help="decoder processes at once"
    )
    add_s3_arguments(p)
    add_lease_arguments(p)
    args = p.parse_args(argv)
    setup_logging()
    try:
        s3 = s3_config(args)
        open_table(args.db, args.table, s3.storage_options())  # exists, readable
        with Lease(
            args.db, args.table, new_run_id("thumbnails"), "thumbnail backfill", s3,
            lease_config(args),
        ):  # fmt: skip
            result = backfill_thumbnails(args.db, args.table, s3, decoders=args.decoders)
    except (UsageError, DatabaseNotFound, StoreError, TableSchemaError) as exc:
        return fail(exc)
    except LeaseHeld as exc:
        return lease_held(exc)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
