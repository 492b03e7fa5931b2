"""The nightly job as production runs it: `ray job submit` to a real head node.

A private head (`ray start --head --block`) runs in its own process group with its own
temp dir, ports and auth token, so it never meets another Ray on this machine. `ray stop`
is not used to end it: it stops every Ray process on the machine, by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import lancedb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from procs import descendants, wait_gone

from pipeline import schema
from pipeline.runs import EXIT_INVALID_INPUT, EXIT_OK
from pipeline.sample_catalog import make_sample_catalog

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NUM_VIDEOS = 4
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 150
#: Reaches the driver only through the runtime env; the resolved config records it.
REGION = "eu-west-3"


def _free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports: all held open until each is known, since a port
    closed at once can be handed out again by the next bind (two Ray components once got
    the same one)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _kill_tree(proc: subprocess.Popen, timeout: float = 20.0) -> list[int]:
    """SIGKILL `proc`'s process group and every descendant; returns survivors (none)."""
    pids = [proc.pid, *descendants(proc.pid)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: its pgid is its pid
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout)
    return wait_gone(pids, timeout)


class Head:
    """Handle on the private head: its dashboard (job API) address and auth header."""

    def __init__(self, address: str, env: dict[str, str], log: Path) -> None:
        self.address = address
        self.env = env
        self.log = log

    def get(self, path: str) -> dict:
        request = urllib.request.Request(
            self.address + path, headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def logs(self, job: str) -> str:
        return self.get(f"/api/jobs/{job}/logs")["logs"]

    def submit(self, *job_args: str, env_vars: dict[str, str]) -> tuple[dict, str]:
        """`ray job submit` (blocks until the job ends); returns the job's info and logs."""
        job = f"vidcat-test-{uuid.uuid4().hex[:8]}"
        runtime_env = {"env_vars": env_vars}  # the upload skips .git and .gitignore'd paths
        cmd = [
            *("ray", "job", "submit", "--address", self.address, "--submission-id", job),
            *("--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env)),
            *("--", "python", "jobs/embed_catalog.py", *job_args),
        ]
        try:
            done = subprocess.run(
                cmd, env=self.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"job still running after {JOB_TIMEOUT_S}s:\n{self.logs(job)[-4000:]}")
        info = self.get(f"/api/jobs/{job}")
        # The CLI exits 1 exactly when the job failed.
        assert done.returncode == (1 if info["status"] == "FAILED" else 0), done.stderr[-3000:]
        return info, self.logs(job)


@pytest.fixture(scope="module")
def head():
    """A private Ray head with the dashboard (job server) on free loopback ports."""
    # Short: Ray's unix sockets live under the temp dir (108-byte path limit).
    temp = tempfile.mkdtemp(prefix="vj", dir="/tmp")
    flags = (
        "--port",
        "--dashboard-port",
        "--ray-client-server-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
        "--node-manager-port",
        "--object-manager-port",
    )
    ports = dict(zip(flags, _free_ports(len(flags)), strict=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "PYTHONPATH"))}
    env.update(
        # The job's `python` must be this interpreter (the venv's, with ray and torch).
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        RAY_TMPDIR=temp,  # `ray_current_cluster` goes here, not into the shared /tmp/ray
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),  # not the shared ~/.ray/auth_token
        RAY_USAGE_STATS_ENABLED="0",
        # The dashboard still posts a "usage stats disabled" report (usage_stats_head.py)
        # to this URL; the default is https://usage-stats.ray.io. Port 9 on loopback is
        # closed, so the post fails at once and nothing leaves the machine. The job
        # submit CLI runs with this same env.
        RAY_USAGE_STATS_REPORT_URL="http://127.0.0.1:9/",
        OMP_NUM_THREADS="1",
    )
    cmd = [
        *("ray", "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0"),
        *("--include-dashboard", "true", "--dashboard-host", "127.0.0.1"),
        *("--temp-dir", temp, "--disable-usage-stats"),
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    log = Path(temp) / "head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    handle = Head(f"http://127.0.0.1:{ports['--dashboard-port']}", env, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                handle.get("/api/version")
                break
            except (OSError, urllib.error.URLError) as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"head did not start ({exc}):\n{log.read_text()[-4000:]}")
                time.sleep(0.5)
        yield handle
    finally:
        left = _kill_tree(proc)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes of the head outlived it: {left}"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jobcat")
    return Path(
        make_sample_catalog(
            str(root), num_videos=NUM_VIDEOS, seconds=1.0, width=96, height=64, workers=1
        )
    )


def _report(logs: str) -> dict:
    """The JSON report the job prints (indented: it opens with a line holding only `{`)."""
    decoder, at = json.JSONDecoder(), 0
    while (at := logs.find("\n{\n", at) + 1) > 0:
        try:
            found = decoder.raw_decode(logs[at:])[0]
        except json.JSONDecodeError:
            continue
        if "run_id" in found:
            return found
    raise AssertionError(f"no JSON report in the job logs:\n{logs[-4000:]}")


def _args(manifest: Path, db: Path) -> list[str]:
    return [
        *("--manifest", str(manifest), "--db", str(db), "--model", "tiny-random"),
        *("--allowed-root", str(manifest.parent), "--batch-size", "8", "--no-maintenance"),
    ]


ENV_VARS = {"AWS_REGION": REGION, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}


def test_submitted_job_embeds_the_catalog(head, catalog, tmp_path):
    db = tmp_path / "db"
    info, logs = head.submit(*_args(catalog, db), env_vars=ENV_VARS)
    assert info["status"] == "SUCCEEDED", logs[-4000:]
    assert info["driver_exit_code"] == EXIT_OK

    report = _report(logs)
    assert report["exit_code"] == EXIT_OK
    assert report["counts"]["new"] == report["counts"]["videos_embedded"] == NUM_VIDEOS
    clips = lancedb.connect(str(db)).open_table("videos").to_arrow()
    ids = pq.read_table(catalog)[schema.VIDEO_ID].to_pylist()
    assert sorted(clips[schema.VIDEO_ID].to_pylist()) == sorted(ids)  # 1-second videos
    assert len(set(clips[schema.CLIP_ID].to_pylist())) == NUM_VIDEOS
    assert lancedb.connect(str(db)).open_table("videos_errors").count_rows() == 0
    # The runtime env's variables reached the driver: its resolved config says so.
    config = json.loads(Path(report["report_uri"].replace(".report.", ".config.")).read_text())
    assert config["s3"]["region"] == REGION


def test_invalid_manifest_fails_the_job_with_exit_code_2(head, tmp_path):
    bad = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"video_id": ["a", "a"], "uri": ["x.mp4", "y.mp4"]}), bad)
    info, logs = head.submit(*_args(bad, tmp_path / "db"), env_vars=ENV_VARS)
    assert info["status"] == "FAILED"
    assert info["driver_exit_code"] == EXIT_INVALID_INPUT
    assert "exit code 2" in info["message"]
    assert "invalid input" in logs and "duplicate" in logs, logs[-4000:]
    assert not (tmp_path / "db").exists() or not any((tmp_path / "db").iterdir())
