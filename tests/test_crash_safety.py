"""Crash safety: a killed driver or a killed Ray worker loses no work and corrupts nothing.

Both tests compare against a clean single run of the same job arguments: the same clips
(no duplicates), the same embeddings and the same error rows. The runs commit every four
rows (`--chunk-rows 4`), so a kill lands between commits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from procs import alive, descendants, wait_gone

from jobs.embed_catalog import build_config, parse_args
from pipeline import schema
from pipeline.runner import run
from pipeline.runs import EXIT_OK
from pipeline.sample_catalog import make_sample_catalog

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NUM_VIDEOS = 24
#: Bad rows of the catalog and the status each must end with.
BAD = {"zero-bytes": "probe_failed", "missing": "fetch_error"}
TIMEOUT_S = 60


def _job_args(manifest: Path, db: Path) -> list[str]:
    return [
        *("--manifest", str(manifest), "--db", str(db), "--model", "tiny-random"),
        # Two clips per encoder call and four rows per commit: many small commits.
        *("--chunk-rows", "4", "--batch-size", "2", "--decode-timeout", "20"),
        *("--max-error-rate", "0.5"),  # the two bad rows are expected
        "--no-maintenance",
        # A killed driver cannot release its table lease: the rerun waits for it to expire.
        *("--lease-ttl", "5", "--lease-wait", "60"),
    ]


def _run_in_process(manifest: Path, db: Path) -> dict:
    """The job's own config (same signature, same settings), run on the test's Ray."""
    return run(build_config(parse_args(_job_args(manifest, db)), has_gpu=False))


def _count(db: Path) -> int:
    try:
        return lancedb.connect(str(db)).open_table("videos").count_rows()
    except (FileNotFoundError, ValueError):  # not created yet
        return 0


def _commits(db: Path) -> int:
    """Commits to the embeddings table so far (its first version is the empty table)."""
    try:
        names = os.listdir(db / "videos.lance" / "_versions")
        return sum(name.endswith(".manifest") for name in names) - 1
    except FileNotFoundError:
        return 0


def _snapshot(db: Path) -> tuple[pa.Table, pa.Table]:
    conn = lancedb.connect(str(db))
    clips = conn.open_table("videos").to_arrow().sort_by(schema.CLIP_ID)
    errors = conn.open_table("videos_errors").to_arrow().sort_by(schema.VIDEO_ID)
    return clips, errors


def _assert_same_content(db: Path, reference: Path) -> None:
    (clips, errors), (want, want_errors) = _snapshot(db), _snapshot(reference)
    ids = clips[schema.CLIP_ID].to_pylist()
    assert len(ids) == len(set(ids)), "duplicate clip_id rows"
    assert ids == want[schema.CLIP_ID].to_pylist()
    for column in (schema.VIDEO_ID, schema.CONTENT_VERSION, schema.SIGNATURE, schema.URI):
        assert clips[column].equals(want[column]), column
    for column in (schema.FRAME_INDICES, schema.CLIP_START_S, schema.CLIP_END_S):
        assert clips[column].equals(want[column]), column
    np.testing.assert_allclose(
        np.stack(clips[schema.EMBEDDING].to_numpy(zero_copy_only=False)),
        np.stack(want[schema.EMBEDDING].to_numpy(zero_copy_only=False)),
        atol=1e-5,
    )
    # Attempts may differ (a retryable failure is retried by the rerun), the outcome not.
    pairs = (schema.VIDEO_ID, schema.STATUS)
    assert errors.select(pairs).equals(want_errors.select(pairs))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """24 one-second videos with a zero-byte file and a missing one among them."""
    root = tmp_path_factory.mktemp("crashcat")
    good = pq.read_table(
        make_sample_catalog(
            str(root), num_videos=NUM_VIDEOS, seconds=1.0, width=96, height=64, workers=2
        )
    )
    (root / "zero.mp4").write_bytes(b"")
    bad = pa.table(
        {
            "video_id": list(BAD),
            "uri": ["zero.mp4", "missing.mp4"],
            "caption": ["bad"] * 2,
            "category": ["bad"] * 2,
            "duration_s": [0.0] * 2,
        }
    ).cast(good.schema)
    # Bad rows in the middle: their error rows commit beside clips, not in a chunk alone.
    half = NUM_VIDEOS // 2
    manifest = root / "manifest.parquet"
    pq.write_table(pa.concat_tables([good.slice(0, half), bad, good.slice(half)]), manifest)
    return manifest


@pytest.fixture(scope="module")
def clean(ray_cluster, catalog, tmp_path_factory) -> Path:
    """The reference: one uninterrupted run."""
    db = tmp_path_factory.mktemp("clean") / "db"
    report = _run_in_process(catalog, db)
    assert report.exit_code == EXIT_OK
    assert report.counts.videos_embedded == NUM_VIDEOS
    assert report.counts.failed_by_status == {s: 1 for s in BAD.values()}
    return db


# ---- processes ----------------------------------------------------------------------------


def test_driver_sigkill_then_rerun_equals_a_clean_run(clean, catalog, tmp_path):
    db = tmp_path / "db"
    # Private temp dir (short: Ray's unix sockets live in it): the driver's local Ray
    # neither finds another session's Ray through /tmp/ray nor leaves anything there.
    ray_tmp = tempfile.mkdtemp(prefix="vcrash-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, str(REPO / "jobs" / "embed_catalog.py"), *_job_args(catalog, db)]
    log = tmp_path / "driver.log"
    driver, tree = None, []
    try:
        with open(log, "wb") as out:
            # Its own session: its pgid is its pid, and Ray's processes inherit it.
            driver = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + TIMEOUT_S
        # Watched on disk, not through LanceDB: a commit is a new manifest file, seen within
        # milliseconds, so the kill lands right after the first commit even when the rest
        # follow in a burst (an embed actor that started late works off a queue).
        while _commits(db) < 1:
            if driver.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no commit to interrupt:\n{log.read_text()[-3000:]}")
            time.sleep(0.005)
        tree = descendants(driver.pid)
        os.killpg(driver.pid, signal.SIGKILL)
        committed = _count(db)
        driver.wait(10)
        # Everything the driver started dies with its group (decoder children follow
        # their parent within a second).
        left = wait_gone(tree, 15)
        assert not left, f"processes of the killed driver survive: {left}"
        assert committed < NUM_VIDEOS, "the run finished before the kill"
    finally:
        if driver is not None:
            for pid in {*tree, *descendants(driver.pid)}:
                if alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(10)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    at_kill = _count(db)
    assert 1 <= at_kill < NUM_VIDEOS  # killed after the first commit, before the last
    report = _run_in_process(catalog, db)
    c = report.counts
    assert report.exit_code == EXIT_OK
    # Committed videos are skipped (one clip each); the rest is embedded exactly once.
    assert c.skipped >= at_kill and c.new >= 1
    assert c.new + c.changed + c.retried + c.skipped == NUM_VIDEOS + len(BAD)
    _assert_same_content(db, clean)


def _actor_pid(class_name: str) -> tuple[str, int] | None:
    """(actor id, pid) of a live actor of `class_name`. The GCS actor table, because
    `ray.util.state.list_actors` needs the dashboard, which the test cluster runs without."""
    for actor_id, info in ray._private.state.actors().items():
        if info["ActorClassName"] == class_name and info["State"] == "ALIVE" and info["Pid"]:
            return actor_id, info["Pid"]
    return None


@pytest.mark.parametrize("stage", ["DecodeStage", "EmbedStage"])
def test_killed_worker_actor_is_restarted_and_the_table_is_complete(
    clean, catalog, tmp_path, stage
):
    db = tmp_path / "db"
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["report"] = _run_in_process(catalog, db)
        except BaseException as exc:  # re-raised in the test thread
            outcome["error"] = exc

    runner = threading.Thread(target=target, daemon=True)
    runner.start()
    # Ray Data names its pool actors after the stage.
    deadline = time.monotonic() + TIMEOUT_S
    victim = orphans = None
    while victim is None and runner.is_alive() and time.monotonic() < deadline:
        found = _actor_pid(f"MapWorker(MapBatches({stage}))")
        # A decode actor starts its decoder process for its first video: from then on it
        # is mid-batch. The embed actor is killed as soon as it is up: it comes up once its
        # model is built, which on a cold machine can be after the decode pool has finished
        # and shut down, and it then has every clip still to embed.
        if found and (stage != "DecodeStage" or descendants(found[1])):
            victim = found
            orphans = descendants(victim[1])
            os.kill(victim[1], signal.SIGKILL)
            committed = _count(db)
        time.sleep(0.05)
    runner.join(TIMEOUT_S)
    assert not runner.is_alive(), "the run did not finish after the kill"
    if "error" in outcome:
        raise outcome["error"]
    assert victim is not None, "the run finished before an actor could be killed"
    assert committed < NUM_VIDEOS, "the kill landed after the last commit"
    # The killed actor's own children (a decoder process) do not outlive it.
    assert not wait_gone(orphans, 10), "children of the killed actor survive"

    report = outcome["report"]
    assert report.exit_code == EXIT_OK
    assert report.counts.videos_embedded == NUM_VIDEOS
    assert ray._private.state.actors(victim[0])["NumRestarts"] >= 1
    _assert_same_content(db, clean)
