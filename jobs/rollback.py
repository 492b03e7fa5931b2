"""Restore the catalog (embeddings, errors and vision-token tables) to a refresh tag.

    vidcat rollback --db s3://bucket/lancedb --list
    vidcat rollback --db s3://bucket/lancedb --to refresh-20261126T020000Z

Tags or the restored versions (JSON) go to stdout; errors to stderr (`error: …`, exit 2;
exit 4 when another writer holds the table's lease). A rollback holds the lease.
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
from pipeline.db import DatabaseNotFound, StoreError, TableSchemaError
from pipeline.lease import Lease, LeaseHeld
from pipeline.lifecycle import list_tags, rollback
from pipeline.runs import new_run_id


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="LanceDB directory or s3:// prefix")
    p.add_argument("--table", default="videos")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", metavar="TAG", help="tag to restore, e.g. refresh-20261126T020000Z")
    what.add_argument("--list", action="store_true", help="list the tags and their versions")
    add_s3_arguments(p)
    add_lease_arguments(p)
    args = p.parse_args(argv)
    setup_logging()
    try:
        s3 = s3_config(args)
        options = s3.storage_options()
        if args.list:
            result = list_tags(args.db, args.table, options)
        else:
            list_tags(args.db, args.table, options)  # the table exists: then take its lease
            with Lease(
                args.db, args.table, new_run_id("rollback"), "rollback", s3, lease_config(args)
            ):
                result = rollback(args.db, args.table, args.to, options)
    except KeyError as exc:  # no such tag: its message is the first argument
        return fail(exc.args[0] if exc.args else exc)
    except (UsageError, DatabaseNotFound, StoreError, TableSchemaError) as exc:
        return fail(exc)
    except LeaseHeld as exc:
        return lease_held(exc)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
