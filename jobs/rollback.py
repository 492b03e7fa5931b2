"""Restore the catalog (embeddings, errors and vision-token tables) to a refresh tag.

python jobs/rollback.py --db s3://bucket/lancedb --list
python jobs/rollback.py --db s3://bucket/lancedb --to refresh-20261126T020000Z
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
from pipeline.lifecycle import list_tags, rollback
from pipeline.sink import TableSchemaError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="LanceDB directory or s3:// prefix")
    p.add_argument("--table", default="videos")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", metavar="TAG", help="tag to restore, e.g. refresh-20261126T020000Z")
    what.add_argument("--list", action="store_true", help="list the tags and their versions")
    p.add_argument("--s3-endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"))
    p.add_argument("--s3-region", default=os.environ.get("AWS_REGION"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    options = S3Config(args.s3_endpoint_url, args.s3_region).storage_options() or None
    try:
        if args.list:
            print(json.dumps(list_tags(args.db, args.table, options), indent=2))
        else:
            print(json.dumps(rollback(args.db, args.table, args.to, options), indent=2))
    except (KeyError, FileNotFoundError, TableSchemaError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
