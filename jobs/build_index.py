"""(Re)build the ANN index (cosine) and the scalar indices of the embeddings table.

Nightly refreshes keep the index up to date by themselves (`pipeline.lifecycle`); this
job forces a full rebuild, e.g. after changing `IndexConfig` or loading a big backfill.

    python jobs/build_index.py --db s3://bucket/lancedb [--table videos]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.decode import S3Config
from pipeline.index import IndexConfig, build_index
from pipeline.sink import TableSchemaError, open_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="LanceDB directory or s3:// prefix")
    p.add_argument("--table", default="videos")
    p.add_argument(
        "--index-type",
        choices=["IVF_HNSW_SQ", "IVF_PQ", "IVF_SQ", "IVF_FLAT"],
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
    p.add_argument("--s3-endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"))
    p.add_argument("--s3-region", default=os.environ.get("AWS_REGION"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    options = S3Config(args.s3_endpoint_url, args.s3_region).storage_options() or None
    config = IndexConfig.preset(args.index_type, min_rows_for_index=args.min_rows)
    try:
        table = open_table(args.db, args.table, options)
    except (FileNotFoundError, TableSchemaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(build_index(table, config, replace=not args.keep_existing), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
