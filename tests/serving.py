"""A small embedded catalog for the server tests (API, browser, load), made once per
session: sample videos with captions, embedded by the pipeline, with thumbnails and the
full-text index hybrid search uses; and a copy of it with a near-duplicates table."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import lancedb
import pyarrow as pa

from pipeline import schema
from pipeline.build import ResourceConfig
from pipeline.db import open_table
from pipeline.decode import DecodeConfig
from pipeline.embed import EmbedConfig
from pipeline.index import build_fts_indices, text_columns
from pipeline.models import ModelSpec
from pipeline.runner import RunConfig, run
from pipeline.sample_catalog import make_sample_catalog

#: The model the catalog is embedded with (and the server queries with).
MODEL = ModelSpec(model="tiny-random")


@dataclass(frozen=True)
class Catalog:
    root: Path  # the catalog's directory (videos/, manifest.parquet)
    db: str  # the LanceDB directory
    model: ModelSpec


def make_catalog(root: Path, num_videos: int = 8) -> Catalog:
    manifest = make_sample_catalog(
        str(root / "catalog"), num_videos=num_videos, seconds=2.0, width=128, height=96, workers=1
    )
    db = str(root / "lancedb")
    report = run(
        RunConfig(
            manifest=manifest,
            db=db,
            decode=DecodeConfig(clip_seconds=30.0, timeout_s=30.0, thumbnail_size=128),
            embed=EmbedConfig(model=MODEL, device="cpu"),
            resources=ResourceConfig(decode_actors=1, embed_actors=1, embed_cpus=0.0),
            chunk_rows=64,
        )
    )
    assert report.exit_code == 0, report.summary()
    table = open_table(db, "videos")
    build_fts_indices(table, text_columns(table))
    return Catalog(root / "catalog", db, MODEL)


#: Near-duplicate groups planted in the copy, as ranks of the text query below (without dedup).
QUERY = "a red circle"
GROUPS = ((0, 2, 3), (5, 6))
#: More than the sample catalog's clips (every clip of a search).
MAX_CLIPS = 100


def with_duplicates(catalog: Catalog, root: Path) -> tuple[Catalog, list[str]]:
    """A copy of `catalog` (under `root`) whose `videos_duplicates` table groups the clips
    ranked :data:`GROUPS` by a text search for :data:`QUERY` (the tiny random model cannot
    make real near-duplicates on purpose; the table is what `vidcat dedup` would write for
    them). Returns the copy and that search's clip ids, best first."""
    from pipeline.query import CatalogSearch

    db = str(root / "lancedb")
    shutil.copytree(catalog.db, db)
    copy = dataclasses.replace(catalog, db=db)
    with CatalogSearch(db, model=catalog.model, device="cpu") as search:
        order = search.text(QUERY, k=MAX_CLIPS)[schema.CLIP_ID].to_pylist()
    table = lancedb.connect(db).open_table("videos")
    clips = {r[schema.CLIP_ID]: r for r in table.search().limit(None).to_arrow().to_pylist()}
    rows = []
    for group in GROUPS:
        members = sorted(order[i] for i in group)
        for member in members:
            rows.append(
                {
                    schema.CLIP_ID: member,
                    schema.VIDEO_ID: clips[member][schema.VIDEO_ID],
                    schema.EMBEDDED_AT: clips[member][schema.EMBEDDED_AT],
                    schema.GROUP_ID: members[0],
                    schema.GROUP_SIZE: len(members),
                    schema.REPRESENTATIVE_CLIP_ID: members[0],
                    schema.SIMILARITY: 1.0,
                    schema.VIDEO_CLIPS: 1,
                    schema.RUN_ID: "planted",
                }
            )
    dup = pa.Table.from_pylist(rows, schema=schema.duplicates_schema())
    lancedb.connect(db).create_table(schema.duplicates_table_name("videos"), dup)
    return copy, order


def client(base: str, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=60, **kwargs)
