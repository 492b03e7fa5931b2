"""`vidcat check` finds every broken invariant; maintenance and `--repair` remove duplicate
keys, keeping the newest row."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import check_table
from pipeline import schema
from pipeline.check import check_catalog
from pipeline.decode import DecodeConfig
from pipeline.embed import EmbedConfig
from pipeline.lifecycle import MaintenanceConfig, maintain
from pipeline.models import ModelSpec
from pipeline.runner import RunConfig, run
from pipeline.sample_catalog import make_sample_catalog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded(ray_cluster, tmp_path_factory):
    """4 sample videos embedded by a real run (with maintenance: tagged, reported)."""
    root = tmp_path_factory.mktemp("check")
    manifest = make_sample_catalog(
        str(root / "cat"), num_videos=4, seconds=1.0, width=64, height=48, workers=1
    )
    cfg = RunConfig(
        manifest=manifest,
        db=str(root / "db"),
        decode=DecodeConfig(),
        embed=EmbedConfig(model=ModelSpec(model="tiny-random"), device="cpu"),
    )
    assert run(cfg).exit_code == 0
    return manifest, str(root / "db")


def _planted(db: str) -> str:
    """Break each invariant once, the way a writer that bypassed the lease could."""
    conn = lancedb.connect(db)
    clips = conn.open_table("videos")
    rows = clips.to_arrow().sort_by(schema.CLIP_ID)
    later = pa.scalar(datetime.now(UTC) + timedelta(hours=1), pa.timestamp("us", tz="UTC"))
    dup_id = rows[schema.CLIP_ID][0].as_py()
    dup = rows.slice(0, 1)
    dup = dup.set_column(
        dup.schema.get_field_index(schema.EMBEDDED_AT),
        schema.EMBEDDED_AT,
        pa.array([later.as_py()], dup.schema.field(schema.EMBEDDED_AT).type),
    )
    clips.add(dup)  # a second row for an existing clip_id, written later
    bad = rows.slice(1, 1)
    bad = bad.set_column(
        bad.schema.get_field_index(schema.CLIP_ID), schema.CLIP_ID, pa.array(["extra#00000"])
    )
    bad = bad.set_column(
        bad.schema.get_field_index(schema.VIDEO_ID), schema.VIDEO_ID, pa.array(["extra"])
    )
    nan = np.full((1, schema.EMBED_DIM), 2.0, np.float32)  # LanceDB refuses NaN; not unit
    bad = bad.set_column(
        bad.schema.get_field_index(schema.EMBEDDING), schema.EMBEDDING, schema.fixed_size_list(nan)
    )
    clips.add(bad)
    errors = conn.open_table("videos_errors")
    stale = {
        schema.VIDEO_ID: [rows[schema.VIDEO_ID][2].as_py()],
        schema.URI: ["x.mp4"],
        schema.STATUS: ["timeout"],
        schema.MESSAGE: ["old"],
        schema.ATTEMPTS: pa.array([1], pa.int32()),
        schema.CONTENT_VERSION: [None],
        schema.SIGNATURE: [None],
        schema.DECODER: [None],
        schema.FAILED_AT: pa.array(
            [datetime(2020, 1, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC")
        ),
    }
    errors.add(pa.table(stale, schema=errors.schema))
    errors.tags.create("refresh-19990101T000000Z", errors.version)
    return dup_id


def test_a_clean_run_passes_and_a_broken_table_is_reported(embedded, capsys, tmp_path):
    manifest, db = embedded
    assert check_table.main(["--db", db, "--manifest", manifest]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["info"]["clips"] == 4 and report["info"]["tags"] == 1

    dup_id = _planted(db)
    ghost = tmp_path / "more.parquet"
    extra = pq.read_table(manifest).select([schema.VIDEO_ID, schema.URI])
    pq.write_table(
        pa.concat_tables([extra, pa.table({schema.VIDEO_ID: ["ghost"], schema.URI: ["g.mp4"]})]),
        ghost,
    )
    assert check_table.main(["--db", db, "--manifest", str(ghost)]) == 5
    found = json.loads(capsys.readouterr().out)["violations"]
    assert found["duplicate clip_id in videos"]["count"] == 1
    assert found["embedding not finite or not unit-norm"]["examples"] == ["extra#00000"]
    assert found["embedded and failed, with the error older than the clips"]["count"] == 1
    assert found["refresh tags of videos_errors missing on videos"]["examples"] == [
        "refresh-19990101T000000Z"
    ]
    assert found["manifest videos with neither clips nor an error row"]["examples"] == ["ghost"]

    # --repair removes the duplicate (the newest row stays); the rest is still reported.
    assert check_table.main(["--db", db, "--repair"]) == 5
    out = json.loads(capsys.readouterr().out)
    assert out["repaired"] == {"videos": 1}
    assert "duplicate clip_id in videos" not in out["violations"]
    rows = lancedb.connect(db).open_table("videos").to_arrow()
    kept = rows.filter(pc.equal(rows[schema.CLIP_ID], dup_id))
    assert len(kept) == 1 and kept[schema.EMBEDDED_AT][0].as_py() > datetime.now(UTC)


def test_maintenance_repairs_duplicate_keys_of_every_table(tmp_path, embedded):
    _, source = embedded
    db = str(tmp_path / "db")
    conn = lancedb.connect(db)
    original = lancedb.connect(source).open_table("videos").to_arrow()
    clips = conn.create_table("videos", original.slice(0, 3))
    errors_rows = pa.table(
        {
            schema.VIDEO_ID: ["f", "f", "g"],
            schema.URI: ["f.mp4"] * 3,
            schema.STATUS: ["timeout"] * 3,
            schema.MESSAGE: ["first", "second", "g"],
            schema.ATTEMPTS: pa.array([1, 2, 1], pa.int32()),
            schema.CONTENT_VERSION: [None] * 3,
            schema.SIGNATURE: [None] * 3,
            schema.DECODER: [None] * 3,
            schema.FAILED_AT: pa.array(
                [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)] * 1
                + [datetime(2026, 1, 1, tzinfo=UTC)],
                pa.timestamp("us", tz="UTC"),
            ),
        },
        schema=schema.errors_schema(),
    )
    conn.create_table("videos_errors", errors_rows)
    clips.add(clips.to_arrow().slice(0, 2))  # two clips written twice
    report = maintain(db, "videos", config=MaintenanceConfig())
    assert report["duplicates_removed"] == {"videos": 2, "videos_errors": 1}
    assert check_catalog(db).violations.keys() <= {"refresh tags no run report names"}
    errors = conn.open_table("videos_errors").to_arrow().sort_by(schema.VIDEO_ID).to_pylist()
    assert [(e["video_id"], e["message"]) for e in errors] == [("f", "second"), ("g", "g")]
