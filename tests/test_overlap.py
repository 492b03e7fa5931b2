"""Two embedding jobs on one table at once (a backfill beside the nightly run, a resubmitted
RayJob): nothing is duplicated and nothing is lost.

Before the table lease, two runs of the 24-video sample catalog started 2 s apart both
exited 0 and left 28 rows for 24 `clip_id`s (two `merge_insert` commits inserting the same
new key both land in Lance)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lancedb
import pyarrow.compute as pc
import pytest

from pipeline import schema
from pipeline.lease import lease_holder
from pipeline.sample_catalog import make_sample_catalog

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: Large enough that a run writes for several seconds after the ~9 s its process needs to
#: start: the second run, started 2 s after the first, meets it while it writes.
NUM_VIDEOS = 60


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("overlap")
    return Path(make_sample_catalog(str(root), num_videos=NUM_VIDEOS, seconds=2.0))


def _start(manifest: Path, db: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    ray_tmp = tempfile.mkdtemp(prefix="vlap-", dir="/tmp")  # short: Ray's sockets live here
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "embed_catalog.py"),
        *("--manifest", str(manifest), "--db", str(db), "--model", "tiny-random"),
        *("--chunk-rows", "4", "--batch-size", "2", "--no-maintenance"),
        *extra,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, ray_tmp


def _finish(started: list[tuple[subprocess.Popen, str]]) -> list[tuple[int, str, str]]:
    out = []
    for proc, ray_tmp in started:
        try:
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
            shutil.rmtree(ray_tmp, ignore_errors=True)
        out.append((proc.returncode, stdout, stderr))
    return out


def _keys(db: Path) -> list[str]:
    return lancedb.connect(str(db)).open_table("videos").to_arrow()[schema.CLIP_ID].to_pylist()


def test_a_second_run_is_refused_while_the_first_writes(catalog, tmp_path):
    db = tmp_path / "db"
    first = _start(catalog, db)
    time.sleep(2.0)
    second = _start(catalog, db)
    (code_a, out_a, err_a), (code_b, out_b, err_b) = _finish([first, second])

    keys = _keys(db)
    assert len(keys) == len(set(keys)) == NUM_VIDEOS  # no duplicate, none lost
    # Exactly one of them ran (normally the first; startup jitter may reverse them); the
    # other exited 4 before doing anything and named the run that held the table.
    assert sorted((code_a, code_b)) == [0, 4], (err_a[-2000:], err_b[-2000:])
    (ran_out, refused_err) = (out_a, err_b) if code_a == 0 else (out_b, err_a)
    holder = json.loads(ran_out)["run_id"]
    assert f"error: table 'videos' in {db} is being written by embed run {holder}" in (refused_err)
    assert lease_holder(str(db), "videos") is None  # released at the end


def test_a_second_run_that_waits_finds_the_work_done(catalog, tmp_path):
    db = tmp_path / "db"
    first = _start(catalog, db, "--lease-wait", "300")
    time.sleep(2.0)
    second = _start(catalog, db, "--lease-wait", "300")
    results = _finish([first, second])
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    counts = sorted(
        (json.loads(out)["counts"] for _, out, _ in results), key=lambda c: c["skipped"]
    )
    # One embedded everything; the other waited for the lease, then found every video
    # embedded and skipped it.
    assert (counts[0]["new"], counts[0]["skipped"]) == (NUM_VIDEOS, 0)
    assert (counts[1]["new"], counts[1]["skipped"]) == (0, NUM_VIDEOS)
    keys = _keys(db)
    assert len(keys) == len(set(keys)) == NUM_VIDEOS
    table = lancedb.connect(str(db)).open_table("videos").to_arrow()
    assert pc.count_distinct(table[schema.VIDEO_ID]).as_py() == NUM_VIDEOS
