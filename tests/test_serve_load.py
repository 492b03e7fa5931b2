"""A bounded load test on loopback: 16 clients against a real uvicorn.

Phase 1 (20 s): searches, similar clips and thumbnails, as a page full of analysts makes
them. Phase 2 (10 s): everyone uploads videos at once to a server whose model queue holds
2: overload must be answered with 429 at once, never with client timeouts or a dead
server. Each phase stops by itself (a deadline and a cap on requests per client); the
p50/p95 latencies and status counts are printed (`pytest -s` shows them), and only
behaviour is asserted: timings are benchmarks/serve_latency.py's business.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from urllib.parse import quote

import httpx
import lancedb
import pytest
from test_serve import serving

pytestmark = pytest.mark.slow
CLIENTS = 16
MAX_REQUESTS = 2000  # per client and phase: the test ends even on a very fast machine


def hammer(base: str, seconds: float, pick) -> tuple[collections.Counter, list[float], list[str]]:
    """`CLIENTS` threads sending `pick(rng)` requests until the deadline."""
    statuses: collections.Counter = collections.Counter()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=15) as http:
            for _ in range(MAX_REQUESTS):
                if time.monotonic() > deadline:
                    return
                method, url, body = pick(rng)
                start = time.perf_counter()
                try:
                    r = http.request(method, url, content=body)
                    code = r.status_code
                except httpx.HTTPError as exc:  # a timeout or a dropped connection
                    with lock:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    statuses[code] += 1
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    assert not any(t.is_alive() for t in threads)
    return statuses, latencies, failures


def report(name: str, statuses, latencies) -> str:
    ordered = sorted(latencies)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    line = (
        f"{name}: {sum(statuses.values())} requests, statuses {dict(statuses)}, "
        f"p50 {p(0.5):.1f} ms, p95 {p(0.95):.1f} ms"
    )
    print(line)
    return line


def test_sixteen_clients_then_overload(served_catalog):
    clips = lancedb.connect(served_catalog.db).open_table("videos").to_arrow().to_pylist()
    words = ["red", "green", "blue", "circle", "square", "triangle", "moving", "left", "up"]
    video = (served_catalog.root / clips[0]["uri"]).read_bytes()

    def browse(rng: random.Random):
        kind = rng.random()
        if kind < 0.5:
            q = " ".join(rng.sample(words, 2))
            return "GET", f"/api/search?q={quote(q)}&k=24", None
        clip = quote(rng.choice(clips)["clip_id"], safe="")
        if kind < 0.75:
            return "GET", f"/api/similar?clip_id={clip}&k=24", None
        return "GET", f"/api/clips/{clip}/thumbnail", None

    with serving(served_catalog) as http:
        base = str(http.base_url)
        statuses, latencies, failures = hammer(base, 20, browse)
        report("browse", statuses, latencies)
        assert failures == []
        assert sum(statuses.values()) >= CLIENTS * 10
        assert set(statuses) <= {200, 429}, statuses  # no 5xx, no 404
        assert http.get("/api/health").status_code == 200

    with serving(served_catalog, model_queue=2) as http:
        base = str(http.base_url)
        statuses, latencies, failures = hammer(
            base, 10, lambda rng: ("POST", "/api/search/video?k=5", video)
        )
        report("overload", statuses, latencies)
        assert failures == []  # refused at once, not left to time out
        assert statuses[429] > 0 and statuses[200] > 0
        assert set(statuses) <= {200, 429}, statuses
        assert http.get("/api/health").status_code == 200
        r = http.get("/api/search", params={"q": "still serving", "k": 3})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
