"""The table lease: one writer at a time, on a local disk and on S3 (loopback server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest

from jobs import build_index as build_index_job
from jobs import lease as lease_job
from jobs import rollback as rollback_job
from pipeline import schema
from pipeline.lease import (
    Lease,
    LeaseConfig,
    LeaseHeld,
    LeaseLost,
    break_lease,
    lease_holder,
)
from pipeline.sink import LanceSink, SinkConfig
from pipeline.storage import S3Config

FAST = LeaseConfig(ttl_s=1.5, renew_s=0.3, poll_s=0.1)


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """`(db_uri, S3Config)` of an empty database, on a local disk or on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "db"), S3Config()
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/db", S3Config(endpoint_url=endpoint, region="us-east-1")


def lease(where, owner: str, config: LeaseConfig = FAST, job: str = "test") -> Lease:
    db, s3 = where
    return Lease(db, "videos", owner, job, s3, config)


def test_one_holder_at_a_time_and_the_second_is_told_who(where):
    first = lease(where, "run-1").acquire()
    try:
        with pytest.raises(LeaseHeld) as held:
            lease(where, "run-2").acquire()
        message = str(held.value)
        assert "run-1" in message and "since" in message and os.uname().nodename in message
        assert held.value.holder["owner"] == "run-1"
        assert lease_holder(*where[:1], "videos", where[1])["owner"] == "run-1"
    finally:
        first.release()
    assert lease_holder(where[0], "videos", where[1]) is None
    with lease(where, "run-2"):  # free again
        assert lease_holder(where[0], "videos", where[1])["owner"] == "run-2"


def test_concurrent_takers_get_exactly_one_lease(where):
    """Eight writers at once: the conditional create lets exactly one through."""
    results: list[str] = []
    start = threading.Barrier(8)
    leases = [lease(where, f"run-{i}", LeaseConfig(ttl_s=30)) for i in range(8)]

    def take(i: int) -> None:
        start.wait()
        try:
            leases[i].acquire()
            results.append(f"won {i}")
        except LeaseHeld:
            results.append("held")

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("won")]
    assert len(winners) == 1 and results.count("held") == 7
    leases[int(winners[0].split()[1])].release()


def test_a_waiting_writer_gets_the_lease_when_it_is_released(where):
    first = lease(where, "run-1").acquire()
    threading.Timer(0.5, first.release).start()
    waited = lease(where, "run-2", LeaseConfig(ttl_s=5, wait_s=10, poll_s=0.1))
    started = time.monotonic()
    with waited:
        assert 0.4 < time.monotonic() - started < 5
    with pytest.raises(LeaseHeld), lease(where, "run-3"):  # a wait that runs out
        lease(where, "run-4", LeaseConfig(ttl_s=5, wait_s=0.3, poll_s=0.1)).acquire()


def test_a_holder_that_stops_renewing_expires_and_is_taken_over(where):
    stalled = lease(where, "stalled").acquire()
    stalled._stop.set()  # as if its process hung: no more renewals
    stalled._thread.join()
    with pytest.raises(LeaseHeld):
        lease(where, "early").acquire()
    time.sleep(FAST.ttl_s + 0.2)
    with lease(where, "next"):
        assert lease_holder(where[0], "videos", where[1])["owner"] == "next"
        with pytest.raises(LeaseLost, match="within its TTL"):
            stalled.check()  # the stalled writer may no longer commit


def test_a_broken_lease_stops_its_holder(where):
    holder = lease(where, "run-1").acquire()
    try:
        holder.check()
        removed = break_lease(where[0], "videos", where[1])
        assert removed["owner"] == "run-1"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                holder.check()
            except LeaseLost as lost:
                assert "broke or took it over" in str(lost)
                break
            time.sleep(0.05)
        else:
            pytest.fail("the holder never noticed its lease was broken")
    finally:
        holder.release()  # not ours any more: leaves the lease alone
    assert break_lease(where[0], "videos", where[1]) is None


def test_a_sigkilled_holder_blocks_only_until_its_ttl(tmp_path):
    """A run killed with SIGKILL cannot release: its lease expires after the TTL."""
    db = str(tmp_path / "db")
    code = (
        "import sys, time\n"
        "from pipeline.lease import Lease, LeaseConfig\n"
        f"Lease({db!r}, 'videos', 'doomed', config=LeaseConfig(ttl_s=2, renew_s=0.5)).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        time.sleep(1.2)  # renewed meanwhile: still held
        with pytest.raises(LeaseHeld, match="doomed"):
            Lease(db, "videos", "next", config=FAST).acquire()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    waited = Lease(db, "videos", "next", config=LeaseConfig(ttl_s=5, wait_s=10, poll_s=0.1))
    with waited:
        assert lease_holder(db, "videos")["owner"] == "next"


def _rows(video: str) -> pa.Table:
    return pa.table(
        {
            schema.VIDEO_ID: [video],
            schema.CLIP_INDEX: pa.array([0], pa.int32()),
            schema.URI: [f"/m/{video}.mp4"],
            schema.STATUS: ["ok"],
            schema.EMBEDDING: schema.fixed_size_list(
                pa.array([1.0] + [0.0] * (schema.EMBED_DIM - 1), pa.float32())
                .to_numpy()
                .reshape(1, -1)
            ),
            schema.MODEL: ["m"],
            schema.SIGNATURE: ["s"],
            schema.NUM_FRAMES: pa.array([4], pa.int32()),
        }
    )


def test_the_sink_stops_committing_once_the_lease_is_lost(tmp_path):
    db = str(tmp_path / "db")
    holder = Lease(db, "videos", "run-1", config=FAST).acquire()
    sink = LanceSink(SinkConfig(db_uri=db, chunk_rows=1), guard=holder.check)
    sink.write(_rows("a"))
    sink.flush()
    break_lease(db, "videos")
    time.sleep(1.0)  # the next renewal finds out
    sink.write(_rows("b"))
    with pytest.raises(LeaseLost):
        sink.flush()
    holder.release()
    assert sink.clips_table.to_arrow()[schema.VIDEO_ID].to_pylist() == ["a"]


def test_writing_jobs_take_the_lease_and_exit_4_while_another_holds_it(tmp_path, capsys):
    db = str(tmp_path / "db")
    with LanceSink(SinkConfig(db_uri=db)) as sink:
        sink.write(_rows("a"))
    with Lease(db, "videos", "nightly-run", config=LeaseConfig(ttl_s=30)):
        capsys.readouterr()
        assert build_index_job.main(["--db", db]) == 4
        assert rollback_job.main(["--db", db, "--to", "refresh-x"]) == 4
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and all(e.startswith("error: ") and "nightly-run" in e for e in err)
        assert rollback_job.main(["--db", db, "--list"]) == 0  # reading needs no lease
        assert lease_job.main(["--db", db]) == 0
        shown = json.loads(capsys.readouterr().out.split("\n", 1)[1])
        assert shown["held"] and shown["lease"]["owner"] == "nightly-run"
    assert build_index_job.main(["--db", db]) == 0
    assert lease_holder(db, "videos") is None  # released after the build
