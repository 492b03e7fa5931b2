"""Object-store faults during a run on S3 (a loopback server behind a fault-injecting proxy).

Retries are the libraries' own (botocore's standard mode for s3fs and boto3, pyarrow's
standard strategy, LanceDB's object-store client), all configured by `S3Config`: under a
5 % rate of transient faults a run must leave the same table as a clean run; under a hard
outage it must stop with an error, leave the table at its last committed version, and a
rerun must finish the work.
"""

from __future__ import annotations

import threading

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from faults import FaultProxy

from pipeline import schema
from pipeline.decode import DecodeConfig
from pipeline.embed import EmbedConfig
from pipeline.lease import LeaseConfig
from pipeline.models import ModelSpec
from pipeline.runner import RunConfig, run
from pipeline.sample_catalog import make_sample_catalog
from pipeline.storage import S3Config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NUM_VIDEOS = 16
REGION = "us-east-1"


@pytest.fixture(scope="module")
def bucket(s3_server):
    import uuid

    import boto3

    name = f"faults-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name=REGION).create_bucket(Bucket=name)
    return s3_server, name


@pytest.fixture(scope="module")
def catalog(bucket):
    endpoint, name = bucket
    s3 = S3Config(endpoint_url=endpoint, region=REGION)
    return make_sample_catalog(
        f"s3://{name}/catalog", num_videos=NUM_VIDEOS, seconds=1.0, width=64, height=48, s3=s3
    )


def _config(manifest: str, db: str, endpoint: str, **lease) -> RunConfig:
    # Short retry budgets and lease TTL: an outage must end the run in seconds, not minutes.
    s3 = S3Config(endpoint_url=endpoint, region=REGION, max_attempts=6, retry_timeout_s=20)
    return RunConfig(
        manifest=manifest,
        db=db,
        s3=s3,
        decode=DecodeConfig(),
        embed=EmbedConfig(model=ModelSpec(model="tiny-random"), device="cpu"),
        chunk_rows=4,
        max_error_rate=0.0,
        lease=LeaseConfig(ttl_s=10, **lease),
    )


def _content(db: str, endpoint: str) -> tuple[list, pa.Table]:
    conn = lancedb.connect(db, storage_options=S3Config(endpoint, REGION).storage_options())
    clips = conn.open_table("videos").to_arrow().sort_by(schema.CLIP_ID)
    errors = conn.open_table("videos_errors").count_rows()
    return clips, errors


@pytest.fixture(scope="module")
def clean(ray_cluster, bucket, catalog):
    endpoint, name = bucket
    db = f"s3://{name}/clean"
    assert run(_config(catalog, db, endpoint)).exit_code == 0
    return _content(db, endpoint)


def _same(got: pa.Table, want: pa.Table) -> None:
    assert got[schema.CLIP_ID].to_pylist() == want[schema.CLIP_ID].to_pylist()
    a = np.stack(got[schema.EMBEDDING].to_numpy(zero_copy_only=False))
    b = np.stack(want[schema.EMBEDDING].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_transient_faults_leave_the_same_table_as_a_clean_run(bucket, catalog, clean):
    endpoint, name = bucket
    db = f"s3://{name}/flaky"
    with FaultProxy(endpoint, rate=0.05, seed=1) as proxy:
        proxy.first_of_each = True  # and the first request of every kind fails too
        report = run(_config(catalog, db, proxy.url))
    faults = proxy.summary()
    print("faults injected (5 %):", faults, "requests:", dict(proxy.requests))
    assert report.exit_code == 0 and report.counts.failed == 0
    clips, errors = _content(db, endpoint)
    _same(clips, clean[0])
    assert errors == 0
    assert len(clips) == len(set(clips[schema.CLIP_ID].to_pylist())) == NUM_VIDEOS
    # Every path met faults: the manifest read, the video fetches, LanceDB, the run files.
    for what in ("manifest", "video fetch", "lancedb write", "lancedb read", "run files"):
        assert sum(faults.get(what, {}).values()) >= 1, (what, faults)


def test_a_hard_outage_stops_the_run_and_the_rerun_finishes(bucket, catalog, clean):
    endpoint, name = bucket
    db = f"s3://{name}/outage"
    with FaultProxy(endpoint) as proxy:
        # The outage starts with the first commit of clips: the run is mid-way.
        def commits(method: str, path: str) -> bool:
            if method in ("PUT", "POST") and "/outage/videos.lance/_versions/" in path:
                committed.append(path)
                if len(committed) >= 2:  # version 1 is the empty table; 2 is a chunk
                    proxy.outage = True
            return False

        committed: list[str] = []
        proxy.only = commits
        with pytest.raises(Exception) as failed:
            run(_config(catalog, db, proxy.url))
        assert proxy.outage
    print("outage error:", type(failed.value).__name__, str(failed.value)[:300])
    # The table is at a committed version: readable, no partial rows, not all there.
    clips, _ = _content(db, endpoint)
    assert 0 < len(clips) < NUM_VIDEOS
    assert len(clips) == len(set(clips[schema.CLIP_ID].to_pylist()))
    # The failed run's lease could not be released in the outage: the rerun waits for it
    # to expire, then finishes the work.
    report = run(_config(catalog, db, endpoint, wait_s=60, poll_s=0.5))
    assert report.exit_code == 0 and report.counts.skipped >= len(clips)
    again, errors = _content(db, endpoint)
    _same(again, clean[0])
    assert errors == 0


def test_the_proxy_injects_what_it_is_told():
    """The harness itself: faults at the chosen rate, counted by purpose and kind."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Ok(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    import http.client

    try:
        with FaultProxy(f"http://127.0.0.1:{server.server_address[1]}", rate=0.5,
                        kinds=("503",)) as proxy:  # fmt: skip
            statuses = []
            for i in range(200):
                conn = http.client.HTTPConnection(*proxy.server.server_address, timeout=5)
                conn.request("GET", f"/b/v{i}.mp4")
                statuses.append(conn.getresponse().status)
                conn.close()
        assert 60 < statuses.count(503) < 140 and statuses.count(200) == 200 - statuses.count(503)
        assert proxy.summary() == {"video fetch": {"503": statuses.count(503)}}
    finally:
        server.shutdown()
