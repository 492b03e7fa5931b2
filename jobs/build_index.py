"""(Re)build the ANN index (cosine) and the scalar indices of the embeddings table.

Nightly refreshes keep the index up to date by themselves (`pipeline.lifecycle`); this
job forces a full rebuild, e.g. after changing `IndexConfig` or loading a big backfill.

    vidcat index --db s3://bucket/lancedb [--table videos]

The index report (JSON) goes to stdout; errors to stderr (`error: …`, exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.common import UsageError, add_s3_arguments, fail, s3_config, setup_logging
from pipeline.db import DatabaseNotFound, StoreError, TableSchemaError, open_table
from pipeline.index import INDEX_TYPES, IndexConfig, build_index


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
    add_s3_arguments(p)
    args = p.parse_args(argv)
    setup_logging()
    try:
        options = s3_config(args).storage_options()
        config = IndexConfig.preset(args.index_type, min_rows_for_index=args.min_rows)
        table = open_table(args.db, args.table, options)
    except (UsageError, DatabaseNotFound, StoreError, TableSchemaError, ValueError) as exc:
        return fail(exc)
    print(json.dumps(build_index(table, config, replace=not args.keep_existing), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
