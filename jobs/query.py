"""Search an embeddings table by text, by catalog video or by a video file.

    vidcat query text "a red circle moving right" --db demo_out/lancedb --k 5
    vidcat query similar sample-000007 --db demo_out/lancedb --format json
    vidcat query video clip.mp4 --db demo_out/lancedb --format csv
    vidcat query image still.png --db demo_out/lancedb --filter category:eq:circle
    vidcat query clip sample-000007:0 --db demo_out/lancedb --offset 10

`--filter column:op:value` (repeatable; ops eq ne lt le gt ge in contains prefix null
notnull, see pipeline/filters.py) is checked against the table's columns and types;
`--where` takes raw SQL. `--hybrid` fuses the text search with the full-text index.

Results go to stdout (an aligned table, JSON or CSV); log lines and errors to stderr, and
one `search:` line there says which parameters the search used and the recall@10 to
expect from them (`--recall 0.8|fast|balanced|exact` trades recall for speed).
Exit codes: 0 results printed (possibly none); 2 the query cannot run as asked
(`error: …`: no such database or table, bad filter, bad k, model or tokenizer missing).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
from typing import Any

import pyarrow as pa

from jobs.common import UsageError, add_s3_arguments, fail, s3_config
from pipeline.models import INTERNVIDEO2_1B, MODEL_NAMES, ModelSpec
from pipeline.query import CatalogSearch, QueryError
from pipeline.rerank import TOKEN_SOURCES

_MAX_CELL = 40


def _cell(value: Any) -> Any:
    """A JSON/CSV-safe value: NaN → None, lists stay lists, timestamps → ISO strings."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_cell(v) for v in value]
    if value is not None and not isinstance(value, str | int | float | bool):
        return str(value)
    return value


def format_results(rows: pa.Table, fmt: str = "table") -> str:
    """Render results as an aligned text table (cells cut at 40 characters), JSON (a list
    of row objects) or CSV (lists as JSON)."""
    records = [{k: _cell(v) for k, v in r.items()} for r in rows.to_pylist()]
    if fmt == "json":
        return json.dumps(records, indent=2)
    names = rows.column_names
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        for r in records:
            writer.writerow(
                [
                    "" if r[n] is None else json.dumps(r[n]) if isinstance(r[n], list) else r[n]
                    for n in names
                ]
            )
        return out.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")

    def text(value: Any) -> str:
        s = "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
        s = " ".join(s.split())  # newlines and tabs would break the alignment
        return s if len(s) <= _MAX_CELL else s[: _MAX_CELL - 1] + "…"

    cells = [[text(r[n]) for n in names] for r in records]
    widths = [max([len(n), *(len(c[i]) for c in cells)]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in rows.schema.types]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(names)), sep, *(line(c) for c in cells)])


def model_spec(args: argparse.Namespace, embedded: tuple[str, int] | None, s3: Any) -> ModelSpec:
    """The query's model: `--model`/`--checkpoint`, else what the table was embedded with
    (a model that needs no weights file, such as `tiny-random` with its seed)."""
    identity, frames = embedded or ("", 4)
    name = args.model or (INTERNVIDEO2_1B if args.checkpoint else None)
    if name is None:
        spec = ModelSpec.for_identity(identity, frames, s3=s3)
        if spec is None:
            raise QueryError(
                f"this query needs the model the table was embedded with ({identity or '?'}): "
                "pass --checkpoint (internvideo2-1b)"
            )
        return spec
    known = ModelSpec.for_identity(identity, frames) if name == identity.partition("@")[0] else None
    return ModelSpec(
        model=name,
        checkpoint=args.checkpoint,
        num_frames=frames,
        s3=s3,
        seed=known.seed if known else 0,
    )


def _combine(where: str | None, filters: str | None) -> str | None:
    """`--where` and the `--filter`s together (both must hold)."""
    if where and filters:
        return f"({where}) AND {filters}"
    return where or filters


def recall_arg(text: str | None) -> float | str | None:
    """`--recall` as a number when it is one; names (and mistakes) go to the searcher."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Search a vidcat embeddings table by text, by catalog video or by video file.",
    )
    p.add_argument("mode", choices=("text", "similar", "clip", "video", "image"))
    p.add_argument("arg", help="query text, video_id, clip_id, or video/image path or URI")
    p.add_argument("--db", required=True, help="LanceDB directory or s3:// URI")
    p.add_argument("--table", default="videos")
    p.add_argument("--k", type=int, default=10, help="results to return")
    p.add_argument("--offset", type=int, default=0, help="results to skip (paging)")
    p.add_argument("--where", default=None, help="SQL filter, e.g. \"category = 'sports'\"")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="COLUMN:OP:VALUE",
        help="structured filter, checked against the table (repeatable; all must hold)",
    )
    p.add_argument(
        "--hybrid",
        action="store_true",
        help="text: fuse with the full-text index of the text columns (vidcat index --fts)",
    )
    p.add_argument("--rerank", action="store_true", help="re-rank text results (match head)")
    p.add_argument("--rerank-k", type=int, default=32, help="cosine candidates to re-rank")
    p.add_argument("--rerank-tokens", choices=TOKEN_SOURCES, default="auto")
    p.add_argument(
        "--dedup",
        action="store_true",
        help="one result per near-duplicate group (the best), with group_size (vidcat dedup)",
    )
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument(
        "--model",
        choices=MODEL_NAMES,
        default=None,
        help="default: the table's own when it needs no weights file, or internvideo2-1b with "
        "--checkpoint",
    )
    p.add_argument("--checkpoint", default=None, help="1B weights: path, s3:// URI or hub id")
    p.add_argument("--tokenizer", default=None, help="vocab.txt or its directory, or hub id")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--recall",
        default=None,
        help="recall@10 to search for: a number in (0, 1] or fast (0.8), balanced (the "
        "table's calibrated target, default), exact (a full scan); the fastest calibrated "
        "parameters expected to reach it",
    )
    add_s3_arguments(p)
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run one query and print the results on stdout; errors go to stderr with exit 2."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.rerank and args.mode != "text":
        return fail(f"--rerank re-ranks text queries only; {args.mode} queries cannot use it")
    if args.hybrid and args.mode != "text":
        return fail(f"--hybrid applies to text queries only, not {args.mode} queries")
    search = None
    try:
        s3 = s3_config(args)
        options = s3.storage_options()
        probe = CatalogSearch(args.db, args.table, storage_options=options)
        model = None
        if args.mode not in ("similar", "clip"):
            model = model_spec(args, probe.embedded_with(), s3)
        search = CatalogSearch(
            args.db,
            args.table,
            recall=recall_arg(args.recall),
            model=model,
            tokenizer=args.tokenizer,
            storage_options=options,
            device=args.device,
            rerank_tokens=args.rerank_tokens,
        )
        where = _combine(args.where, search.filter_sql(args.filter))
        page = {"offset": args.offset, "dedup": args.dedup}
        if args.mode == "text":
            mode = "hybrid" if args.hybrid else "vector"
            rows = search.text(
                args.arg, args.k, where, args.rerank, args.rerank_k, mode=mode, **page
            )
        elif args.mode == "similar":
            rows = search.similar(args.arg, args.k, where, **page)
        elif args.mode == "clip":
            rows = search.similar_clip(args.arg, args.k, where, **page)
        elif args.mode == "image":
            rows = search.image(args.arg, args.k, where, **page)
        else:
            rows = search.video(args.arg, args.k, where, **page)
    except (QueryError, UsageError, ValueError) as exc:  # TokenizerError becomes QueryError
        return fail(exc)
    finally:
        if search is not None:
            search.close()
    if search.last_search is not None:
        print(f"search: {search.last_search.describe()}", file=sys.stderr)
    print(format_results(rows, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
