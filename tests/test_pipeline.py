"""End to end on real parts: local Ray (2 CPUs), LanceDB in tmp_path, S3 on loopback."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import lancedb
import media
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema
from pipeline.build import ResourceConfig, build_dataset
from pipeline.decode import DecodeConfig
from pipeline.embed import EmbedConfig
from pipeline.manifest import ManifestError
from pipeline.models import ModelSpec
from pipeline.runner import PruneRefused, RunConfig, run
from pipeline.runs import EXIT_OK, EXIT_TOO_MANY_ERRORS
from pipeline.sample_catalog import make_sample_catalog
from pipeline.storage import S3Config

pytestmark = pytest.mark.slow

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"
TINY = ModelSpec(model="tiny-random")
CPU = ResourceConfig(decode_actors=2, embed_actors=1, embed_cpus=0.0, embed_batch_clips=8)


def config(manifest, db, **kw) -> RunConfig:
    decode = kw.pop("decode", DecodeConfig(clip_seconds=30.0, timeout_s=20.0))
    return RunConfig(
        manifest=str(manifest),
        db=str(db),
        decode=decode,
        embed=EmbedConfig(model=TINY, device="cpu"),
        resources=kw.pop("resources", CPU),
        chunk_rows=kw.pop("chunk_rows", 64),
        **kw,
    )


def table_rows(db, name="videos") -> pa.Table:
    conn = lancedb.connect(str(db))
    key = schema.VIDEO_ID if name.endswith("_errors") else schema.CLIP_ID
    return conn.open_table(name).to_arrow().sort_by(key)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Six good sample videos plus one of every kind of bad input, in one manifest."""
    root = tmp_path_factory.mktemp("catalog")
    good = pq.read_table(
        make_sample_catalog(str(root), num_videos=6, seconds=2.0, width=96, height=64, workers=1)
    )
    bad_dir = root / "bad"
    bad_dir.mkdir()
    media.write_zero_bytes(bad_dir / "zero.mp4")
    media.write_truncated(bad_dir / "truncated.mp4")
    media.write_random_bytes(bad_dir / "random.mp4")
    media.write_audio_only(bad_dir / "audio.mp4")
    media.write_png(bad_dir / "image.mp4")
    media.write_huge_resolution(bad_dir / "huge.mp4")
    media.write_video(bad_dir / "one_frame.mp4", 1)
    (tmp_path_factory.getbasetemp() / "outside.mp4").write_bytes(b"x")
    bad = {
        "zero": ("bad/zero.mp4", "probe_failed"),
        "truncated": ("bad/truncated.mp4", "probe_failed"),
        "random": ("bad/random.mp4", "probe_failed"),
        "audio": ("bad/audio.mp4", "no_video_stream"),
        "image": ("bad/image.mp4", "probe_failed"),
        "huge": ("bad/huge.mp4", "resolution_exceeded"),
        "hang": ("bad/one_frame.mp4", "timeout"),
        "segfault": ("bad/one_frame.mp4", "decoder_crash"),
        "http": ("http://example.com/v.mp4", "uri_rejected"),
        "passwd": ("file:///etc/passwd", "uri_rejected"),
        "dotdot": ("../outside.mp4", "uri_rejected"),
        "creds": (f"s3://AKIAFAKE:{SECRET}@bucket/x.mp4", "uri_rejected"),
        "missing": ("bad/missing.mp4", "fetch_error"),
    }
    extra = pa.table(
        {
            "video_id": [*bad, "one-frame"],
            "uri": [u for u, _ in bad.values()] + ["bad/one_frame.mp4"],
            "caption": ["bad"] * (len(bad) + 1),
            "category": ["bad"] * (len(bad) + 1),
            "duration_s": [0.0] * (len(bad) + 1),
        }
    )
    manifest = root / "manifest.parquet"
    pq.write_table(pa.concat_tables([good, extra.cast(good.schema)]), manifest)
    expected = {vid: status for vid, (_, status) in bad.items()}
    return manifest, good, expected


FAULTS = (("hang", "hang"), ("segfault", "segfault"))


def test_every_bad_input_gives_exactly_one_error_row_and_good_rows_land(
    ray_cluster, catalog, tmp_path
):
    manifest, good, expected = catalog
    decode = DecodeConfig(clip_seconds=30.0, timeout_s=3.0, fault_injection=FAULTS)
    cfg = config(manifest, tmp_path / "db", decode=decode, max_error_rate=1.0)
    report = run(cfg)

    clips = table_rows(tmp_path / "db")
    embedded = set(clips[schema.VIDEO_ID].to_pylist())
    assert embedded == set(good["video_id"].to_pylist()) | {"one-frame"}
    assert len(clips) == len(embedded)  # 2-second videos: one clip each
    emb = np.stack(clips[schema.EMBEDDING].to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert set(clips[schema.MODEL].to_pylist()) == {TINY.identity()}
    assert clips.filter(pa.compute.equal(clips[schema.VIDEO_ID], "one-frame"))[
        schema.FRAME_INDICES
    ].to_pylist() == [[0, 0, 0, 0]]
    # Metadata travels into the table.
    assert "caption" in clips.column_names and "category" in clips.column_names

    errors = table_rows(tmp_path / "db", "videos_errors").to_pylist()
    assert sorted(e["video_id"] for e in errors) == sorted(expected)
    for e in errors:
        assert e["status"] == expected[e["video_id"]], e
        assert SECRET not in e["uri"] and SECRET not in (e["message"] or "")
        # Unknown is null, never "": no decoder ran on a rejected URI, nor was it fetched.
        assert e["decoder"] in (None, "decord", "pyav") and e["content_version"] != "", e
        if e["status"] == "uri_rejected":
            assert e["decoder"] is None and e["content_version"] is None, e
    assert SECRET not in str(report)
    assert report.counts.failed_by_status["uri_rejected"] == 4
    assert report.counts.videos_processed == len(expected) + len(embedded)
    assert report.exit_code == EXIT_OK  # max_error_rate=1.0

    # A rerun in incremental mode skips what is done and retries only retryable failures.
    again = run(cfg)
    retryable = {v for v, s in expected.items() if s in {"fetch_error", "timeout", "decoder_crash"}}
    assert again.counts.retried == len(retryable)
    assert again.counts.new == again.counts.changed == 0
    assert again.counts.skipped == len(embedded) + len(expected) - len(retryable)
    assert table_rows(tmp_path / "db").equals(clips)
    attempts = {
        e["video_id"]: e["attempts"]
        for e in table_rows(tmp_path / "db", "videos_errors").to_pylist()
    }
    assert all(attempts[v] == 2 for v in retryable)
    assert all(attempts[v] == 1 for v in set(expected) - retryable)


def test_full_rerun_is_idempotent_and_max_error_rate_sets_the_exit_code(
    ray_cluster, catalog, tmp_path
):
    manifest, _, _ = catalog
    decode = DecodeConfig(clip_seconds=30.0, timeout_s=3.0, fault_injection=FAULTS)
    cfg = config(manifest, tmp_path / "db", decode=decode, mode="full", max_error_rate=0.1)
    first = run(cfg)
    assert first.exit_code == EXIT_TOO_MANY_ERRORS
    before = table_rows(tmp_path / "db")
    second = run(cfg)
    after = table_rows(tmp_path / "db")
    assert after.column("clip_id").to_pylist() == before.column("clip_id").to_pylist()
    # Same rows and values; embeddings may differ in the last float bits because batch
    # composition changes which matmul kernel runs.
    drop = [schema.EMBEDDED_AT, schema.EMBEDDING]
    assert after.drop(drop).equals(before.drop(drop))
    emb = [np.stack(t[schema.EMBEDDING].to_numpy(zero_copy_only=False)) for t in (before, after)]
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-5)
    assert second.counts.skipped == 0


def test_long_videos_become_clips_and_a_changed_setting_re_embeds(ray_cluster, tmp_path):
    root = tmp_path / "long"
    manifest = make_sample_catalog(
        str(root), num_videos=2, seconds=5.0, width=64, height=48, workers=1
    )
    db = tmp_path / "db"
    # One decode actor running two decoder processes (the big-node layout).
    shared = dataclasses.replace(CPU, decode_actors=1, decoders_per_actor=2)
    report = run(config(manifest, db, decode=DecodeConfig(clip_seconds=2.0), resources=shared))
    clips = table_rows(db)
    assert report.counts.clips_embedded == len(clips) == 6  # 5 s → [0,2) [2,4) [4,5)
    first = clips.filter(pa.compute.equal(clips[schema.CLIP_INDEX], 1)).to_pylist()[0]
    assert (first[schema.CLIP_START_S], first[schema.CLIP_END_S]) == (2.0, 4.0)
    # New clip settings change the signature: everything is re-embedded, stale clips go.
    again = run(config(manifest, db, decode=DecodeConfig(clip_seconds=30.0)))
    assert again.counts.changed == 2 and again.counts.skipped == 0
    after = table_rows(db)
    assert len(after) == 2 and set(after[schema.CLIP_INDEX].to_pylist()) == {0}


def test_incremental_refresh_new_changed_skipped_pruned(ray_cluster, tmp_path):
    root = tmp_path / "cat"
    manifest = Path(
        make_sample_catalog(str(root), num_videos=4, seconds=1.0, width=64, height=48, workers=1)
    )
    db = tmp_path / "db"
    base = pq.read_table(manifest).append_column("version", pa.array(["v1"] * 4))
    pq.write_table(base, manifest)
    run(config(manifest, db))
    ids = base["video_id"].to_pylist()
    # Change video 0's version, drop video 3, add a copy of video 1 under a new id.
    rows = base.to_pylist()
    rows[0]["version"] = "v2"
    new_row = {**rows[1], "video_id": "added"}
    pq.write_table(pa.Table.from_pylist([*rows[:3], new_row], schema=base.schema), manifest)
    report = run(config(manifest, db, prune=True))
    c = report.counts
    assert (c.new, c.changed, c.skipped, c.deleted) == (1, 1, 2, 1)
    clips = table_rows(db)
    assert set(clips[schema.VIDEO_ID].to_pylist()) == {*ids[:3], "added"}
    versions = dict(
        zip(
            clips[schema.VIDEO_ID].to_pylist(),
            clips[schema.CONTENT_VERSION].to_pylist(),
            strict=True,
        )
    )
    assert versions[ids[0]] == "v2" and versions[ids[1]] == "v1"

    # An empty (or truncated) manifest must not empty the table: a prune of more than
    # max_prune_fraction (0.5) of the known videos is refused before any change.
    pq.write_table(base.schema.empty_table(), manifest)
    before = table_rows(db)
    with pytest.raises(PruneRefused, match=r"delete 4 of the 4 videos"):
        run(config(manifest, db, prune=True))
    assert table_rows(db).equals(before)
    everything = run(config(manifest, db, prune=True, max_prune_fraction=1.0))
    assert everything.counts.deleted == 4 and table_rows(db).num_rows == 0


def test_invalid_manifest_fails_before_any_work(ray_cluster, tmp_path):
    bad = tmp_path / "m.parquet"
    pq.write_table(pa.table({"video_id": ["a", "a"], "uri": ["x.mp4", "y.mp4"]}), bad)
    with pytest.raises(ManifestError, match="duplicate"):
        run(config(bad, tmp_path / "db"))
    assert not (tmp_path / "db").exists() or not list((tmp_path / "db").iterdir())


def test_manifest_videos_and_table_on_s3(ray_cluster, s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    s3 = S3Config(endpoint_url=endpoint, region="us-east-1")
    manifest = make_sample_catalog(
        f"s3://{bucket}/catalog", num_videos=3, seconds=1.0, width=64, height=48, workers=1, s3=s3
    )
    cfg = dataclasses.replace(config(manifest, f"s3://{bucket}/db"), s3=s3)
    report = run(cfg)
    assert report.counts.clips_embedded == 3 and report.counts.failed == 0
    conn = lancedb.connect(f"s3://{bucket}/db", storage_options=s3.storage_options())
    t = conn.open_table("videos").to_arrow()
    assert len(t) == 3
    assert all(u.startswith(f"s3://{bucket}/catalog/videos/") for u in t[schema.URI].to_pylist())
    assert report.report_uri.startswith(f"s3://{bucket}/db/_vidcat/videos/runs/")
    # Thumbnails go to S3 with the table, and the server shows them and streams the
    # videos from S3 without decoding anything.
    thumbs = conn.open_table("videos_thumbnails").to_arrow()
    assert sorted(thumbs[schema.CLIP_ID].to_pylist()) == sorted(t[schema.CLIP_ID].to_pylist())
    from urllib.parse import quote

    import httpx

    from pipeline.serve import SearchService, ServeConfig
    from pipeline.serve.app import create_app, serve_in_thread

    service = SearchService(ServeConfig(db=f"s3://{bucket}/db", s3=s3, preload_model=False))
    clip = quote(t[schema.CLIP_ID][0].as_py(), safe="")
    with serve_in_thread(create_app(service)) as base, httpx.Client(base_url=base) as http:
        thumb = http.get(f"/api/clips/{clip}/thumbnail")
        assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"
        part = http.get(f"/api/clips/{clip}/media", headers={"Range": "bytes=0-15"})
        assert part.status_code == 206 and part.content[4:8] == b"ftyp"


@pytest.mark.timeout(240)
def test_a_request_the_cluster_cannot_place_fails_instead_of_hanging(ray_cluster, tmp_path, caplog):
    """An embed actor asking for a GPU this (CPU-only) cluster lacks: Ray Data would wait
    forever; the run fails after `actor_start_s`, and says why up front."""
    manifest = pa.table({"video_id": ["a"], "uri": [str(tmp_path / "a.mp4")]})
    resources = dataclasses.replace(CPU, embed_gpus=1.0, actor_start_s=3.0)
    with caplog.at_level(logging.WARNING, logger="pipeline.build"):
        ds = build_dataset(
            manifest,
            DecodeConfig(allowed_roots=(str(tmp_path),)),
            EmbedConfig(model=TINY, device="cpu"),
            resources,
            model_identity=TINY.identity(),
        )
        with pytest.raises(Exception, match=r"(?i)timed out|timeout"):
            ds.take_all()
    assert any("1 GPU" in r.getMessage() for r in caplog.records)
