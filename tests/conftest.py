"""Shared fixtures: a real S3 API (moto server) on loopback, Ray on 2 CPUs."""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
import uuid

# Offline from the start: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported,
# so setting it later (monkeypatch in a test) changes nothing. pytest imports this file
# before any test module, hence before anything imports huggingface_hub or transformers.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
# vidcat's cache (checkpoint digests, downloads) in a private directory, never the user's.
os.environ["VIDCAT_CACHE"] = tempfile.mkdtemp(prefix="vidcat-test-cache-")

import pytest


def pytest_collection_modifyitems(config, items):
    """Deselect (not skip) `gpu` tests where no CUDA device exists, so a CPU run neither
    fails on them nor counts them as passed."""
    import torch

    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


#: Dummy credentials and no instance-metadata lookups: nothing may leave loopback.
_AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/vidcat-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/vidcat-test-aws-credentials",
}


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (free port) with dummy credentials in the environment
    for the rest of the session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AWS_PROFILE", raising=False)
        for name, value in _AWS_TEST_ENV.items():
            patch.setenv(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the moto server; yields `(endpoint_url, bucket)`."""
    import boto3

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return s3_server, bucket


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A private local Ray instance with 2 CPUs for the session (never a cluster that some
    other process on this machine happens to run). It starts after the S3 server so its
    workers inherit the test credentials through the standard AWS environment chain."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every connection that would leave loopback; yields the hosts that were tried.

    Code under test often wraps errors (a refused connection becomes a "cannot fetch"
    error), so tests assert the list is empty rather than rely on the exception."""
    tried: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def _loopback(host) -> bool:
        host = host.decode() if isinstance(host, bytes) else str(host)
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return False

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _loopback(host):
            tried.append(str(host))
            raise OSError(f"test network guard: no lookups of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            tried.append(str(address[0]))
            raise OSError(f"test network guard: no connections to {address[0]!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return tried


@pytest.fixture(scope="session")
def served_catalog(ray_cluster, tmp_path_factory):
    """An embedded sample catalog with thumbnails and full-text indices (tests/serving.py)."""
    from serving import make_catalog

    return make_catalog(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def dedup_catalog(served_catalog, tmp_path_factory):
    """`served_catalog` copied, with a near-duplicates table; `(catalog, ranked clip ids)`
    (tests/serving.py, `with_duplicates`)."""
    from serving import with_duplicates

    return with_duplicates(served_catalog, tmp_path_factory.mktemp("served-dedup"))
