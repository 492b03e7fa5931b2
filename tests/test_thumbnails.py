"""Thumbnails (the middle sampled frame of each clip, as a JPEG) and still-image decoding."""

from __future__ import annotations

import dataclasses
import io
import json

import av
import lancedb
import media
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import thumbnails as thumbnails_job
from pipeline import schema
from pipeline.build import ResourceConfig
from pipeline.db import catalog_tables
from pipeline.decode import DecodeConfig, IsolatedDecoder
from pipeline.embed import EmbedConfig
from pipeline.models import ModelSpec
from pipeline.runner import RunConfig, run
from pipeline.schema import Status
from pipeline.thumbnails import backfill_thumbnails, missing_thumbnails

JPEG_MAGIC = b"\xff\xd8\xff"


def jpeg_pixels(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data), format="jpeg_pipe") as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


# ---- decode -------------------------------------------------------------------------------
def test_each_clip_carries_a_jpeg_of_its_middle_sampled_frame(tmp_path):
    path = media.write_video(tmp_path / "v.mp4", 100, width=160, height=96)
    config = DecodeConfig(allowed_roots=(str(tmp_path),), clip_seconds=2.0, thumbnail_size=64)
    with IsolatedDecoder(config) as dec:
        result = dec.decode(str(path))
    assert result.status is Status.OK and len(result.clips) == 2
    for clip in result.clips:
        assert clip.thumbnail.startswith(JPEG_MAGIC)
        pixels = jpeg_pixels(clip.thumbnail)
        assert pixels.shape == (38, 64, 3)  # the long side is thumbnail_size, aspect kept
        middle = int(clip.frame_indices[len(clip.frame_indices) // 2])
        assert media.frame_index_of(pixels) == middle


def test_thumbnails_can_be_turned_off(tmp_path):
    path = media.write_video(tmp_path / "v.mp4", 30)
    config = DecodeConfig(allowed_roots=(str(tmp_path),), thumbnail_size=0)
    with IsolatedDecoder(config) as dec:
        result = dec.decode(str(path))
    assert result.status is Status.OK and all(c.thumbnail is None for c in result.clips)


def test_a_still_image_decodes_as_a_one_frame_clip(tmp_path):
    png = media.write_png(tmp_path / "still.png", width=80, height=40)
    video = media.write_video(tmp_path / "v.mp4", 30)
    config = DecodeConfig(allowed_roots=(str(tmp_path),), num_frames=1, still_image=True, size=32)
    with IsolatedDecoder(config) as dec:
        still = dec.decode(str(png))
        not_an_image = dec.decode(str(video))
    assert still.status is Status.OK and len(still.clips) == 1
    frames = still.clips[0].frames
    assert frames.shape == (1, 32, 32, 3) and abs(float(frames.mean()) - 200) < 2
    # Only image demuxers are allowed: a video is refused, not read as a still.
    assert not_an_image.status is Status.PROBE_FAILED
    with pytest.raises(ValueError, match="still_image needs num_frames 1"):
        DecodeConfig(still_image=True)


# ---- the pipeline and the backfill ---------------------------------------------------------
def _run(manifest, db, *, prune=False, **decode):
    return run(
        RunConfig(
            manifest=str(manifest),
            db=str(db),
            decode=DecodeConfig(clip_seconds=1.0, timeout_s=20.0, **decode),
            embed=EmbedConfig(model=ModelSpec(model="tiny-random"), device="cpu"),
            resources=ResourceConfig(decode_actors=1, embed_actors=1, embed_cpus=0.0),
            chunk_rows=16,
            prune=prune,
            max_prune_fraction=1.0,
        )
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("thumbs")
    for i in range(3):
        media.write_video(root / f"v{i}.mp4", 50 + 10 * i)
    rows = {
        "video_id": ["a", "b", "c"],
        "uri": [str(root / f"v{i}.mp4") for i in range(3)],
    }
    pq.write_table(pa.table(rows), root / "manifest.parquet")
    pq.write_table(pa.table({k: v[:2] for k, v in rows.items()}), root / "pruned.parquet")
    return root


@pytest.mark.slow
def test_the_pipeline_stores_one_thumbnail_per_clip_and_prunes_them(ray_cluster, videos, tmp_path):
    db = tmp_path / "db"
    assert _run(videos / "manifest.parquet", db).exit_code == 0
    conn = lancedb.connect(str(db))
    clips = conn.open_table("videos").to_arrow()
    thumbs = conn.open_table("videos_thumbnails").to_arrow()
    assert sorted(thumbs[schema.CLIP_ID].to_pylist()) == sorted(clips[schema.CLIP_ID].to_pylist())
    by_clip = {r[schema.CLIP_ID]: r for r in clips.to_pylist()}
    for row in thumbs.to_pylist():
        clip = by_clip[row[schema.CLIP_ID]]
        assert row[schema.VIDEO_ID] == clip[schema.VIDEO_ID]
        middle = clip[schema.FRAME_INDICES][len(clip[schema.FRAME_INDICES]) // 2]
        assert media.frame_index_of(jpeg_pixels(row[schema.THUMBNAIL])) == middle % 256

    # A rerun adds nothing; a prune removes the pruned video's thumbnails too.
    assert _run(videos / "manifest.parquet", db).exit_code == 0
    assert conn.open_table("videos_thumbnails").count_rows() == len(thumbs)
    assert _run(videos / "pruned.parquet", db, prune=True).exit_code == 0
    left = conn.open_table("videos_thumbnails").to_arrow()
    assert set(left[schema.VIDEO_ID].to_pylist()) == {"a", "b"}
    assert left.num_rows == conn.open_table("videos").count_rows()


@pytest.mark.slow
def test_backfill_makes_the_thumbnails_a_table_embedded_without_them_lacks(
    ray_cluster, videos, tmp_path, capsys
):
    db = tmp_path / "db"
    assert _run(videos / "manifest.parquet", db, thumbnail_size=0).exit_code == 0
    tables = catalog_tables(str(db), "videos")
    assert "videos_thumbnails" not in tables
    todo = missing_thumbnails(tables, "videos")
    assert todo.num_rows == tables["videos"].count_rows() > 3

    # One clip's video changes on disk: its frames would differ, so it is skipped, not
    # given a thumbnail of other pixels.
    changed = tables["videos"].search().where("video_id = 'c'").limit(None).to_arrow()
    media.write_video(tmp_path / "short.mp4", 10)
    (videos / "v2.mp4").rename(tmp_path / "v2.keep")
    (tmp_path / "short.mp4").rename(videos / "v2.mp4")
    try:
        result = backfill_thumbnails(str(db), "videos", decoders=2)
    finally:
        (tmp_path / "v2.keep").rename(videos / "v2.mp4")
    assert result["clips"] == todo.num_rows
    assert result["failed"] == changed.num_rows
    assert result["written"] == todo.num_rows - changed.num_rows
    thumbs = lancedb.connect(str(db)).open_table("videos_thumbnails").to_arrow()
    assert all(t.startswith(JPEG_MAGIC) for t in thumbs[schema.THUMBNAIL].to_pylist())
    assert pc.all(pc.not_equal(thumbs[schema.VIDEO_ID], "c")).as_py()

    # The job finishes the rest and then has nothing left to do.
    assert thumbnails_job.main(["--db", str(db), "--decoders", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["clips"] == changed.num_rows and out["written"] == changed.num_rows
    assert missing_thumbnails(catalog_tables(str(db), "videos"), "videos").num_rows == 0
    assert thumbnails_job.main(["--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["clips"] == 0


def test_the_backfill_job_refuses_a_missing_table(tmp_path, capsys):
    assert thumbnails_job.main(["--db", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "nothing").exists()


def test_decode_settings_reproduce_thumbnail_size():
    assert "thumbnail_size" in DecodeConfig().worker_params()
    assert (
        dataclasses.replace(DecodeConfig(), thumbnail_size=0).worker_params()["thumbnail_size"] == 0
    )
