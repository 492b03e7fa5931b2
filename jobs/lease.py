"""Show who holds a table's write lease, or break a lease whose holder is gone.

    vidcat lease --db s3://bucket/lancedb [--table videos]          # the holder, as JSON
    vidcat lease --db s3://bucket/lancedb --break                    # remove it

A lease its holder stopped renewing expires by itself after its TTL (`--lease-ttl` of the
job that took it); break one only when its holder is known to be gone. A holder that is
still running finds its lease broken at its next renewal and stops writing.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.common import UsageError, add_s3_arguments, fail, s3_config, setup_logging
from pipeline.db import check_table_name
from pipeline.lease import break_lease, lease_holder


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="LanceDB directory or s3:// prefix")
    p.add_argument("--table", default="videos")
    p.add_argument("--break", dest="break_", action="store_true", help="remove the lease")
    add_s3_arguments(p)
    args = p.parse_args(argv)
    setup_logging()
    try:
        s3 = s3_config(args)
        check_table_name(args.table)
        holder = break_lease(args.db, args.table, s3) if args.break_ else None
        if not args.break_:
            holder = lease_holder(args.db, args.table, s3)
    except (UsageError, ValueError, OSError) as exc:
        return fail(exc)
    print(json.dumps({"held": holder is not None and not args.break_, "lease": holder}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
