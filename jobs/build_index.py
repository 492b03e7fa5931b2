"""(Re)build the ANN index (cosine) and the scalar indices of the embeddings table.

Nightly refreshes keep the index up to date by themselves (`pipeline.lifecycle`); this
job forces a full rebuild, e.g. after changing `IndexConfig` or loading a big backfill.

    vidcat index --db s3://bucket/lancedb [--table videos] [--fts auto|none|COL,...]

It also builds the full-text indices hybrid search uses (`--fts`, default: every text
metadata column) and the key index of the thumbnails table.

The index report (JSON) goes to stdout; errors to stderr (`error: …`, exit 2; exit 4 when
another writer holds the table's lease). The build holds the lease.
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
from pipeline.db import DatabaseNotFound, StoreError, TableSchemaError, catalog_tables, open_table
from pipeline.index import (
    INDEX_TYPES,
    IndexConfig,
    build_fts_indices,
    build_index,
    build_key_index,
    text_columns,
)
from pipeline.lease import Lease, LeaseHeld
from pipeline.runs import new_run_id


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="LanceDB directory or s3:// prefix")
    p.add_argument("--table", default="videos")
    p.add_argument(
        "--index-type",
        choices=INDEX_TYPES,
        default=IndexConfig.index_type,
        help="default: the project's choice; each type gets its tuned partition size and "
        "search parameters, and searches and retrains follow the type the table has",
    )
    p.add_argument(
        "--min-rows",
        type=int,
        default=IndexConfig.min_rows_for_index,
        help="below this many rows no vector index is built (exact search)",
    )
    p.add_argument(
        "--keep-existing", action="store_true", help="only build indices that do not exist yet"
    )
    p.add_argument(
        "--fts",
        default="auto",
        help="text columns to give a full-text index, for hybrid search: auto (every text "
        "metadata column), none, or a comma-separated list",
    )
    add_s3_arguments(p)
    add_lease_arguments(p)
    args = p.parse_args(argv)
    setup_logging()
    try:
        s3 = s3_config(args)
        config = IndexConfig.preset(args.index_type, min_rows_for_index=args.min_rows)
        table = open_table(args.db, args.table, s3.storage_options())
        owner = new_run_id("index")
        with Lease(args.db, args.table, owner, "index build", s3, lease_config(args)):
            replace = not args.keep_existing
            report = build_index(table, config, replace=replace)
            fts = _fts_columns(args.fts, table)
            report["fts_indices"] = build_fts_indices(table, fts, replace=replace)
            thumbs = catalog_tables(args.db, args.table, s3.storage_options()).get(
                schema.thumbnails_table_name(args.table)
            )
            report["thumbnail_index"] = (
                build_key_index(thumbs, replace=replace) if thumbs is not None else None
            )
    except (UsageError, DatabaseNotFound, StoreError, TableSchemaError, ValueError) as exc:
        return fail(exc)
    except LeaseHeld as exc:
        return lease_held(exc)
    print(json.dumps(report, indent=2))
    return 0


def _fts_columns(value: str, table) -> list[str]:
    if value == "auto":
        return text_columns(table)
    if value == "none":
        return []
    columns = [c.strip() for c in value.split(",") if c.strip()]
    if not columns:
        raise UsageError("--fts takes auto, none or a comma-separated list of columns")
    return columns


if __name__ == "__main__":
    sys.exit(main())
