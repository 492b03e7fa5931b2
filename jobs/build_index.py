"""(Re)build the ANN index (cosine) and the scalar indices of the embeddings table, and
calibrate its search parameters to a target recall.

Nightly refreshes keep the index up to date by themselves (`pipeline.lifecycle`); this
job forces a full rebuild, e.g. after changing `IndexConfig` or loading a big backfill.

    vidcat index --db s3://bucket/lancedb [--table videos] [--fts auto|none|COL,...]
        [--target-recall 0.95] [--text-from auto|none|COL,...] [--checkpoint CKPT]
        [--text-embeddings texts.npy] [--no-calibration]

It also builds the full-text indices hybrid search uses (`--fts`, default: every text
metadata column) and the key index of the thumbnails table.

The build measures recall@10 of text, video and similar queries drawn from the table
against an exact scan and stores, per kind, the fastest search parameters that reach the
target (`pipeline.recall`). Text queries are `--text-embeddings` when given, else the
table's own text metadata (captions, titles: `--text-from`) embedded with the table's
model when that model runs here (a bundled one, or the 1B with `--checkpoint`), else
synthetic queries at the usual text-video cosine. The index report (JSON, with `recall`
per kind) goes to stdout, a `recall:` line per kind to stderr; errors to stderr
(`error: …`, exit 2; exit 4 when another writer holds the table's lease). The build holds
the lease.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

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
    CalibrationConfig,
    IndexConfig,
    build_fts_indices,
    build_index,
    build_key_index,
    text_columns,
)
from pipeline.lease import Lease, LeaseHeld
from pipeline.query import QueryError
from pipeline.runs import new_run_id

log = logging.getLogger("vidcat.index")


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
    p.add_argument(
        "--target-recall",
        type=float,
        default=CalibrationConfig.target,
        help="recall@10 each query kind's calibrated search parameters must reach",
    )
    p.add_argument(
        "--text-embeddings",
        default=None,
        metavar="NPY",
        help="a .npy file of text query embeddings [n, 512] (the table's model) to "
        "calibrate text search with; default: synthetic text queries",
    )
    p.add_argument(
        "--text-from",
        default="auto",
        help="text metadata to embed as the calibration's text queries: auto (every text "
        "metadata column, when the table's model runs here), none (synthetic queries), or a "
        "comma-separated list of columns (then the model is required)",
    )
    p.add_argument(
        "--checkpoint", default=None, help="1B weights for --text-from: path, s3:// or hub id"
    )
    p.add_argument("--tokenizer", default=None, help="vocab.txt or its directory, or hub id")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.set_defaults(model=None)  # jobs.query.model_spec: the table's own model, or the 1B
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="skip the recall measurement; searches use the index type's presets",
    )
    add_s3_arguments(p)
    add_lease_arguments(p)
    args = p.parse_args(argv)
    setup_logging()
    try:
        s3 = s3_config(args)
        calibration = None
        if not args.no_calibration:
            calibration = CalibrationConfig(target=args.target_recall)
        config = IndexConfig.preset(
            args.index_type, min_rows_for_index=args.min_rows, calibration=calibration
        )
        texts = _text_embeddings(args.text_embeddings)
        table = open_table(args.db, args.table, s3.storage_options())
        text_from = None
        if calibration is not None and texts is None:
            count = calibration.queries + calibration.validation_queries
            texts, text_from = texts_from_metadata(args, table, s3, count, calibration.seed)
        owner = new_run_id("index")
        with Lease(args.db, args.table, owner, "index build", s3, lease_config(args)):
            replace = not args.keep_existing
            report = build_index(table, config, replace=replace, text_vectors=texts)
            if text_from is not None and isinstance(report.get("recall"), dict):
                report["recall"]["text_queries_from"] = text_from
            fts = _fts_columns(args.fts, table)
            report["fts_indices"] = build_fts_indices(table, fts, replace=replace)
            thumbs = catalog_tables(args.db, args.table, s3.storage_options()).get(
                schema.thumbnails_table_name(args.table)
            )
            report["thumbnail_index"] = (
                build_key_index(thumbs, replace=replace) if thumbs is not None else None
            )
    except (
        UsageError, DatabaseNotFound, StoreError, TableSchemaError, ValueError, QueryError
    ) as exc:  # fmt: skip
        return fail(exc)
    except LeaseHeld as exc:
        return lease_held(exc)
    for line in recall_lines(report):
        print(line, file=sys.stderr)
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


def recall_lines(report: dict) -> list[str]:
    """`recall: <kind> …` lines for an index report (none without a calibration)."""
    recall = report.get("recall")
    if not recall:
        return []
    if "error" in recall:
        return [f"recall: not measured ({recall['error']}); searches use the presets"]
    k = recall.get("k", 10)
    lines = []
    for kind in ("text", "video", "similar"):
        r = recall[kind]
        params = ", ".join(f"{name} {value}" for name, value in r["params"].items())
        lines.append(
            f"recall: {kind:<7} recall@{k} {r[f'recall@{k}']:.3f} (presets "
            f"{r[f'preset_recall@{k}']:.3f}) p50 {r['p50_ms']:.1f} ms with {params}"
        )
    return lines


def texts_from_metadata(
    args: argparse.Namespace, table, s3, count: int, seed: int
) -> tuple[np.ndarray | None, dict | None]:
    """Up to `count` distinct values of the table's text metadata embedded with the table's
    model, as the calibration's text queries, and what they were; (None, None) when
    `--text-from none`, or `auto` without a model that runs here or without text."""
    from jobs.query import model_spec
    from pipeline.query import CatalogSearch

    if args.text_from == "none":
        return None, None
    explicit = args.text_from != "auto"
    if explicit:
        columns = [c.strip() for c in args.text_from.split(",") if c.strip()]
    else:
        columns = text_columns(table)
    missing = sorted(set(columns) - set(table.schema.names))
    if missing:
        raise UsageError(f"--text-from: no column {', '.join(missing)} in the table")
    options = s3.storage_options()
    probe = CatalogSearch(args.db, args.table, storage_options=options)
    embedded = probe.embedded_with()
    if embedded is None or not columns:
        return None, None
    try:  # the query CLI's rule: --checkpoint, else the table's model if it needs no file
        spec = model_spec(args, embedded, s3)
    except QueryError as exc:
        if explicit:
            raise UsageError(f"--text-from: {exc}") from None
        log.info("calibration: synthetic text queries (%s)", exc)
        return None, None
    rows = table.search().select(columns).limit(None).to_arrow()
    values: set[str] = set()
    for name in columns:
        values.update(v.strip() for v in rows[name].drop_null().to_pylist() if v and v.strip())
    if not values:
        return None, None
    rng = np.random.default_rng(seed)
    texts = sorted(values)
    texts = [texts[i] for i in rng.permutation(len(texts))[:count]]
    search = CatalogSearch(
        args.db,
        args.table,
        model=spec,
        tokenizer=args.tokenizer,
        storage_options=options,
        device=args.device,
    )
    vectors = np.stack([search.embed_text(t) for t in texts])
    used = {"columns": columns, "texts": len(texts), "model": embedded[0]}
    log.info("calibration: %d texts of %s embedded as text queries", len(texts), columns)
    return vectors, used


def _text_embeddings(path: str | None) -> np.ndarray | None:
    if path is None:
        return None
    try:
        texts = np.load(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read --text-embeddings {path}: {exc}") from None
    if texts.ndim != 2 or texts.shape[1] != 512 or not np.isfinite(texts).all():
        raise UsageError(f"--text-embeddings must hold finite [n, 512] vectors, got {texts.shape}")
    return texts


if __name__ == "__main__":
    sys.exit(main())
