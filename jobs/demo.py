"""The demo: make the sample catalog, embed it, and search it.

    make demo                                  # demo-shapes, the bundled toy model
    make demo CHECKPOINT=/models/InternVideo2-stage2_1b-224p-f4.pt \
        TOKENIZER=/models/bert-large-uncased

Uses an embedded local Ray and local directories. With `--checkpoint` the real
InternVideo2 1B embeds the catalog and `--tokenizer` points at bert-large-uncased (else
the query fetches it from the hub; with HF_HUB_OFFLINE set the demo refuses to start).
Without it, `demo-shapes` runs: a small InternVideo2 bundled with vidcat and trained on the
sample catalog's synthetic shapes only, so the query finds what it names; every row's
`model` column says `demo-shapes` (`--model tiny-random`: the random test model).
An existing catalog is reused when it has `--num-videos` videos and made again otherwise.
The default 96 videos include "a red circle moving right on a black background", the
default query.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq

from jobs import embed_catalog
from jobs.common import setup_logging
from pipeline.models import DEMO_SHAPES, TINY_RANDOM
from pipeline.sample_catalog import make_sample_catalog

log = logging.getLogger("vidcat.demo")


def tokenizer_problem(checkpoint: str | None, tokenizer: str | None) -> str | None:
    """Why the query step would fail after the whole embed, or None.

    The real model's query needs bert-large-uncased: from `tokenizer`, else from the hub,
    which an offline machine cannot reach (a copy in the local hub cache is used when
    named explicitly: `--tokenizer bert-large-uncased`).
    """
    if tokenizer:
        from models.internvideo2.tokenizer import TokenizerError, load_tokenizer

        try:
            load_tokenizer(tokenizer)
        except TokenizerError as exc:
            return f"--tokenizer: {exc}"
        return None
    if not checkpoint:
        return None  # demo-shapes and tiny-random bring their own vocabulary
    from huggingface_hub import is_offline_mode

    if is_offline_mode():
        return (
            "--checkpoint without --tokenizer fetches bert-large-uncased from the hub, but "
            "HF_HUB_OFFLINE is set: pass --tokenizer DIR (the directory holding its "
            "vocab.txt; with make: TOKENIZER=DIR)"
        )
    return None


def catalog_is_current(manifest: Path, num_videos: int) -> bool:
    """Whether the sample catalog at `manifest` can be reused: it lists `num_videos` videos."""
    try:
        return pq.read_metadata(manifest).num_rows == num_videos
    except (OSError, ValueError):  # missing or not Parquet (ArrowInvalid is a ValueError)
        return False


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out", help="where the catalog and the table go")
    p.add_argument("--num-videos", type=int, default=96)
    p.add_argument(
        "--checkpoint", default=None, help="InternVideo2 1B weights (else the --model below)"
    )
    p.add_argument(
        "--model",
        choices=(DEMO_SHAPES, TINY_RANDOM),
        default=DEMO_SHAPES,
        help="model without --checkpoint: the bundled toy model, or the random test model",
    )
    p.add_argument("--tokenizer", default=None, help="bert-large-uncased directory (real model)")
    # A whole caption: demo-shapes puts its one video first; with the background left out
    # ("a red circle moving right") that video comes 3rd, behind a red square moving right
    # and a red circle moving left (the model cannot tell left from right).
    p.add_argument("--query", default="a red circle moving right on a black background")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = build_parser(prog)
    args = p.parse_args(argv)
    # Before any work: otherwise the query fails only after the whole embed.
    if problem := tokenizer_problem(args.checkpoint, args.tokenizer):
        p.error(problem)
    setup_logging()

    out = Path(args.out).resolve()
    manifest = out / "catalog" / "manifest.parquet"
    remade = not catalog_is_current(manifest, args.num_videos)
    if remade:
        if manifest.exists():
            log.warning("the catalog in %s is not %d videos: making it again", out, args.num_videos)
        make_sample_catalog(str(out / "catalog"), num_videos=args.num_videos)
    model = (
        ["--model", "internvideo2-1b", "--checkpoint", args.checkpoint]
        if args.checkpoint
        else ["--model", args.model]
    )
    if not args.checkpoint and args.model == TINY_RANDOM:
        log.warning("embedding with the RANDOM tiny test model (tiny-random)")
    elif not args.checkpoint:
        log.warning(
            "no --checkpoint: embedding with %s, a toy model that knows only the sample "
            "catalog's synthetic shapes (CHECKPOINT=... for the real InternVideo2 1B)",
            DEMO_SHAPES,
        )
    code = embed_catalog.main(
        [
            "--manifest",
            str(manifest),
            "--db",
            str(out / "lancedb"),
            "--max-error-rate",
            "0.0",
            # The table follows a catalog this run made (a smaller one drops videos); a
            # catalog found in place is left, and so are the table's other rows.
            *(["--prune"] if remade else []),
            *model,
        ]
    )
    if code:
        return code
    index_text(str(out / "lancedb"))
    from jobs import query

    qargs = ["text", args.query, "--db", str(out / "lancedb"), "--k", "5", *model]
    if args.tokenizer:
        qargs += ["--tokenizer", args.tokenizer]
    note = {
        TINY_RANDOM: "  (random model: scores are meaningless)",
        DEMO_SHAPES: f"  ({DEMO_SHAPES}: a toy model of the synthetic shapes only)",
    }.get(None if args.checkpoint else args.model, "")
    print(f"\nquery: {args.query!r}{note}")
    code = query.main(qargs)
    print(f"\nsearch page: make serve   (or: vidcat serve --db {out / 'lancedb'})")
    return code


def index_text(db: str) -> None:
    """The full-text indices of the caption and category columns (hybrid search on the
    page) and the thumbnails' key index; the demo table is too small for a vector index."""
    from pipeline.db import catalog_tables
    from pipeline.index import build_fts_indices, build_key_index, text_columns

    tables = catalog_tables(db, "videos")
    build_fts_indices(tables["videos"], text_columns(tables["videos"]))
    if "videos_thumbnails" in tables:
        build_key_index(tables["videos_thumbnails"])


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
