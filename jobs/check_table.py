"""Verify a catalog's tables against their contract; optionally repair duplicate keys.

    vidcat check --db s3://bucket/lancedb [--table videos] [--manifest s3://.../manifests/]
    vidcat check --db data/lancedb --repair          # remove duplicate keys (newest kept)

The report (JSON: `ok`, `violations` with counts and examples, `info`) goes to stdout.
Exit codes: 0 every invariant holds; 5 some do not (listed); 2 the tables or the manifest
cannot be read; 4 `--repair` found another writer holding the table's lease.
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
from pipeline import schema
from pipeline.check import check_catalog, repair_duplicates
from pipeline.db import DatabaseNotFound, StoreError, TableSchemaError, catalog_tables
from pipeline.lease import Lease, LeaseHeld
from pipeline.manifest import ManifestError, validate_manifest
from pipeline.runs import EXIT_CHECK_FAILED, new_run_id


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="LanceDB directory or s3:// prefix")
    p.add_argument("--table", default="videos")
    p.add_argument("--manifest", default=None, help="also check every video of this manifest")
    p.add_argument(
        "--repair",
        action="store_true",
        help="first remove duplicate keys, keeping each key's newest row (takes the lease)",
    )
    add_s3_arguments(p)
    add_lease_arguments(p)
    args = p.parse_args(argv)
    setup_logging()
    try:
        s3 = s3_config(args)
        ids = None
        if args.manifest:
            info = validate_manifest(
                args.manifest, endpoint_url=s3.endpoint_url, region=s3.region, metadata_columns=None
            )
            ids = info.dataset().to_table(columns=[schema.VIDEO_ID])[schema.VIDEO_ID]
        repaired = None
        if args.repair:
            tables = catalog_tables(args.db, args.table, s3.storage_options())
            owner = new_run_id("repair")
            with Lease(args.db, args.table, owner, "repair", s3, lease_config(args)):
                repaired = repair_duplicates(tables, args.table)
        report = check_catalog(args.db, args.table, s3, ids)
    except (UsageError, ManifestError, DatabaseNotFound, StoreError, TableSchemaError) as exc:
        return fail(exc)
    except LeaseHeld as exc:
        return lease_held(exc)
    out = report.to_dict()
    if repaired is not None:
        out["repaired"] = repaired
    print(json.dumps(out, indent=2, default=str))
    return 0 if report.ok else EXIT_CHECK_FAILED


if __name__ == "__main__":
    sys.exit(main())
