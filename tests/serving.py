"""A small embedded catalog for the server tests (API, browser, load), made once per
session: sample videos with captions, embedded by the pipeline, with thumbnails and the
full-text index hybrid search uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

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


def client(base: str, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=60, **kwargs)
