"""Post-run maintenance (index upkeep, cleanup, tags) and rollback, on real LanceDB."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from unittest import mock

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from jobs import build_index as build_index_job
from jobs import rollback as rollback_job
from pipeline import lifecycle, schema
from pipeline.index import IndexConfig, has_vector_index
from pipeline.lifecycle import MaintenanceConfig, list_tags, maintain, rollback, tag_name
from pipeline.runs import Counts, RunReport
from pipeline.schema import Status
from pipeline.sink import LanceSink, SinkConfig

SMALL_INDEX = IndexConfig(
    index_type="IVF_FLAT", min_rows_for_index=200, rows_per_partition=100, refine_factor=None
)
T0 = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)


def rows(videos: range, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    vec = rng.standard_normal((len(videos), schema.EMBED_DIM)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    n = len(videos)
    return pa.table(
        {
            schema.VIDEO_ID: [f"v{i:05d}" for i in videos],
            schema.CLIP_INDEX: pa.array([0] * n, pa.int32()),
            schema.CLIP_START_S: [0.0] * n,
            schema.CLIP_END_S: [2.0] * n,
            schema.URI: [f"s3://b/v{i}.mp4" for i in videos],
            schema.EMBEDDING: list(vec),
            schema.MODEL: ["m"] * n,
            schema.SIGNATURE: ["sig"] * n,
            schema.NUM_FRAMES: pa.array([4] * n, pa.int32()),
            schema.FRAME_INDICES: [[0, 1, 2, 3]] * n,
            schema.DECODER: ["decord"] * n,
            schema.CONTENT_VERSION: ["v1"] * n,
            schema.STATUS: [Status.OK.value] * n,
            schema.MESSAGE: [None] * n,
        }
    )


def failure(video: str) -> pa.Table:
    return pa.table(
        {
            schema.VIDEO_ID: [video],
            schema.URI: [f"s3://b/{video}.mp4"],
            schema.STATUS: [Status.TIMEOUT.value],
            schema.MESSAGE: ["slow"],
            schema.EMBEDDING: pa.nulls(1, pa.list_(pa.float32())),
        }
    )


def write(db, *batches):
    with LanceSink(SinkConfig(db_uri=db, chunk_rows=1000)) as sink:
        for b in batches:
            sink.write(b)


def count(db, name):
    return lancedb.connect(db).open_table(name).count_rows()


def test_maintain_builds_then_maintains_the_index_and_tags(tmp_path):
    db = str(tmp_path / "db")
    config = MaintenanceConfig(index=SMALL_INDEX)
    write(db, rows(range(100)), failure("bad"))
    first = maintain(db, "videos", config=config, now=T0)
    assert first["index"]["action"] == "optimize"  # 100 rows: exact search, no index yet
    assert first["tag"] == "refresh-20261126T020000Z" == tag_name(T0)
    assert set(first["versions"]) == {"videos", "videos_errors"}

    write(db, rows(range(100, 300), seed=1))
    second = maintain(db, "videos", config=config, now=T0 + timedelta(days=1))
    assert second["index"]["action"] == "build"
    table = lancedb.connect(db).open_table("videos")
    assert has_vector_index(table)
    # The build measured recall on the table and calibrated each query kind's search.
    recall = second["index"]["recall"]
    for kind in ("text", "video", "similar"):
        assert recall[kind]["recall@10"] >= recall["target"]

    write(db, rows(range(300, 340), seed=2))
    third = maintain(db, "videos", config=config, now=T0 + timedelta(days=2))
    assert third["index"]["action"] == "optimize"
    stats = lancedb.connect(db).open_table("videos").index_stats("embedding_idx")
    assert stats.num_unindexed_rows == 0 and stats.num_indexed_rows == 340
    # Folding rows in keeps the calibration, and maintenance reports the recall it promises.
    kept = third["index"]["recall"]
    assert kept["stored"] is True and kept["rows"] == 300
    for kind in ("text", "video", "similar"):
        assert kept[kind]["recall@10"] == recall[kind]["recall@10"]
        assert kept[kind]["params"] == recall[kind]["params"]
    # The run report carries it (top-level `recall`) and its summary prints it.
    report = RunReport(
        run_id="r", mode="refresh", started_at=T0, finished_at=T0, manifest={}, table="videos",
        model="m", signature="s", counts=Counts(), seconds={"wall": 1.0}, sink={},
        table_version=1, maintenance=third, max_error_rate=0.1,
    )  # fmt: skip
    assert report.to_dict()["recall"] == kept
    assert "search recall@10: text " in report.summary()
    assert first["index"].get("recall") is None  # no index yet: exact scans, nothing to report
    no_maintenance = dataclasses.replace(report, maintenance=None)
    assert no_maintenance.to_dict()["recall"] is None
    assert list(list_tags(db, "videos")) == [tag_name(T0 + timedelta(days=d)) for d in range(3)]


def test_rollback_restores_every_table(tmp_path):
    db = str(tmp_path / "db")
    config = MaintenanceConfig(index=SMALL_INDEX)
    write(db, rows(range(10)))
    tag = maintain(db, "videos", config=config, now=T0)["tag"]
    write(db, rows(range(10, 25), seed=3), failure("late"))
    maintain(db, "videos", config=config, now=T0 + timedelta(hours=1))
    assert count(db, "videos") == 25 and count(db, "videos_errors") == 1

    restored = rollback(db, "videos", tag)
    assert set(restored) == {"videos", "videos_errors"}
    assert count(db, "videos") == 10 and count(db, "videos_errors") == 0
    with pytest.raises(KeyError, match="no tag"):
        rollback(db, "videos", "refresh-19990101T000000Z")


#: Cleanup margin in the age-out test: 1 s flaked on a loaded machine (see the test).
MARGIN_S = 3


def test_old_tags_and_versions_age_out(tmp_path, monkeypatch):
    monkeypatch.setattr(lifecycle, "_CLEANUP_MARGIN", timedelta(seconds=MARGIN_S))
    db = str(tmp_path / "db")
    config = MaintenanceConfig(index=SMALL_INDEX, retention=timedelta(days=2))
    for day in range(4):
        write(db, rows(range(day * 5, day * 5 + 5), seed=day))
        maintain(db, "videos", config=config, now=T0 + timedelta(days=day))
    # Tags of the last two days survive (day 1 is exactly at the cutoff), older ones go.
    assert list(list_tags(db, "videos")) == [tag_name(T0 + timedelta(days=d)) for d in (1, 2, 3)]
    table = lancedb.connect(db).open_table("videos")
    before = len(table.list_versions())
    # Cleanup keeps a margin before the oldest tagged version (clock skew with Lance); the
    # versions so far become older than it. A stall longer than the margin between the
    # cutoff's computation and Lance's own clock would make Lance refuse the cleanup.
    time.sleep(MARGIN_S + 0.5)
    write(db, rows(range(100, 105), seed=9))
    maintain(
        db,
        "videos",
        config=MaintenanceConfig(index=SMALL_INDEX, retention=timedelta(0)),
        now=T0 + timedelta(days=30),
    )
    kept = {v["version"] for v in lancedb.connect(db).open_table("videos").list_versions()}
    # Retention 0: every refresh tag but the newest expired, and every untagged older
    # version was deleted; the tagged ones never are.
    assert list(list_tags(db, "videos")) == [tag_name(T0 + timedelta(days=30))]
    assert set(list_tags(db, "videos").values()) <= kept
    assert len(kept) < before


def test_rollback_and_build_index_jobs(tmp_path, capsys):
    db = str(tmp_path / "db")
    write(db, rows(range(250)))
    maintain(db, "videos", config=MaintenanceConfig(index=SMALL_INDEX), now=T0)
    assert rollback_job.main(["--db", db, "--list"]) == 0
    assert tag_name(T0) in capsys.readouterr().out
    assert rollback_job.main(["--db", db, "--to", "refresh-nope"]) == 2
    assert build_index_job.main(["--db", db, "--index-type", "IVF_FLAT", "--min-rows", "100"]) == 0
    assert '"vector_index"' in capsys.readouterr().out
    assert has_vector_index(lancedb.connect(db).open_table("videos"))
    assert build_index_job.main(["--db", str(tmp_path / "nope")]) == 2


def test_no_optimize_deletes_versions_behind_the_cleanup(tmp_path, monkeypatch):
    """LanceDB's `optimize()` without `cleanup_older_than` deletes versions older than 7 days
    and fails when one is tagged: after a week of nightly runs every run failed. Only the
    cleanup step may delete versions, with a cutoff short of the oldest tag."""
    db = str(tmp_path / "db")
    calls = []
    original = lancedb.table.LanceTable.optimize

    def spy(self, **kwargs):
        calls.append(kwargs.get("cleanup_older_than"))
        return original(self, **kwargs)

    monkeypatch.setattr(lancedb.table.LanceTable, "optimize", spy)
    config = MaintenanceConfig(index=SMALL_INDEX, retention=timedelta(days=3))
    for day, videos in enumerate((range(100), range(100, 300), range(300, 340))):
        write(db, rows(videos, seed=day))
        maintain(db, "videos", config=config, now=T0 + timedelta(days=day))
    assert calls and None not in calls
    cleanups = [c for c in calls if c < timedelta(days=365)]
    assert cleanups and all(c >= config.retention for c in cleanups)


def test_every_table_is_tagged_before_any_cleanup_can_fail(tmp_path, monkeypatch):
    db = str(tmp_path / "db")
    write(db, rows(range(10)), failure("bad"))

    def broken(t, retention):
        raise RuntimeError("cleanup failed")

    monkeypatch.setattr(lifecycle, "compact_and_clean", broken)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        maintain(db, "videos", config=MaintenanceConfig(index=SMALL_INDEX), now=T0)
    for name in ("videos", "videos_errors"):
        assert lancedb.connect(db).open_table(name).tags.list() == {tag_name(T0): mock.ANY}


def test_two_runs_in_the_same_second_get_two_tags(tmp_path):
    db = str(tmp_path / "db")
    config = MaintenanceConfig(index=SMALL_INDEX)
    write(db, rows(range(10)))
    first = maintain(db, "videos", config=config, now=T0)
    write(db, rows(range(10, 20), seed=1))
    second = maintain(db, "videos", config=config, now=T0)
    assert (first["tag"], second["tag"]) == (tag_name(T0), tag_name(T0 + timedelta(seconds=1)))
    assert set(second["tagged"]) == {"videos", "videos_errors"}
    assert rollback(db, "videos", first["tag"])["videos"] and count(db, "videos") == 10


def test_rollback_empties_a_side_table_created_after_the_tag(tmp_path):
    """Error rows (or vision tokens) of later runs must not survive a rollback: they would
    describe content the restored table does not hold."""
    db = str(tmp_path / "db")
    config = MaintenanceConfig(index=SMALL_INDEX)
    write(db, rows(range(10)))
    lancedb.connect(db).drop_table("videos_errors")  # as if it came with a later run
    tag = maintain(db, "videos", config=config, now=T0)["tag"]
    write(db, rows(range(10, 15), seed=2), failure("late"))
    maintain(db, "videos", config=config, now=T0 + timedelta(hours=1))
    assert count(db, "videos_errors") == 1

    restored = rollback(db, "videos", tag)
    assert set(restored) == {"videos", "videos_errors"}
    assert count(db, "videos") == 10 and count(db, "videos_errors") == 0
