"""The HTTP server's overhead: `vidcat serve` against `CatalogSearch` in the same process.

Text queries (`GET /api/search?q=…&k=24`) and similar-clip queries (`GET
/api/similar?clip_id=…&k=24`) over HTTP, against the same queries through
`CatalogSearch.text(q, k=24)` and `CatalogSearch.similar_clip(clip_id, k=24)`, in the same
process and the same run, with one client and with 16 concurrent clients. The ratio
HTTP / library is what the server costs on top of the library.

Table: `--rows` (1M) synthetic rows in the real `embeddings_schema` with `caption` and
`category` metadata, one clip per video (`v0000000#00000`, …), and the `model` column of
`ModelSpec(model="tiny-random")`, so the searcher's model check passes. Embeddings are unit
512-d float32 vectors around `--clusters` random unit centres (log-normal cluster sizes):
`x = normalize(c + 1.2 * g / sqrt(512))` with `g ~ N(0, I)`, cosine ~0.64 to the own
centre. The default index is built (`build_index(table, IndexConfig())`: the recorded
run's was IVF_HNSW_SQ, the default then, plus BTREE on video_id and clip_id). `--db DIR`
keeps the table there: a rerun with the same rows, clusters and seed reopens it instead of
building it (`serve_bench.json` records them).
`benchmarks/query_latency.py` builds a table of its own kind (other ids, metadata and
model, all vectors in memory at once); this one writes its rows in batches of 50k.

Library side: one `CatalogSearch(db, "videos", model=ModelSpec(model="tiny-random"),
device="cpu")`, shared by every client thread. HTTP side: `SearchService` with
`text_cache=0` (the library has no cache either), `model_queue=64`, `search_queue=256`
(16 clients are never refused; any non-200 is counted and printed), served by uvicorn in
a thread of this process (`serve_in_thread`); each client is a thread with its own
keep-alive `httpx.Client`. Text queries: 200 distinct texts in the tiny model's vocabulary
("red circle moving left on the blue background"); similar: random clip ids. The tiny
model's text embeddings are random directions: the vector search does the same work as
for a real query, only the results mean nothing.

Timing: each query is timed end to end by its client: the library call returning its
Arrow table, or the HTTP request until the whole body has arrived (JSON is not decoded
while timing). Before measuring, both sides are warmed up (model loaded, index in cache,
threads and connections up) and checked to return the same clip ids for the same queries.
Then each of `--repeats` (5) repeats measures every query kind with fresh queries:

* 1 client: `--single` (100) queries, the two sides taking turns query by query (the
  order flips every query), so load from other processes on this shared 2-core machine
  hits both alike; throughput is 1 / mean latency.
* 16 clients (threads): `--per-client` (20) queries each, released together by a barrier
  after connecting; throughput is all queries over the wall time from the barrier to the
  last answer. The library's run and the HTTP run (same queries) follow each other, in
  an order that flips every repeat.

The table shows medians over the repeats; a ratio is the median of the repeats' paired
ratios (HTTP / library of the same repeat), so it may differ slightly from the ratio of
the shown medians.

Also printed: CPU per query of the whole process (`time.process_time`) on each side, the
HTTP client threads' own share (`time.thread_time`), and from the server's Prometheus
histograms where an HTTP query's time goes: the model job (text encoding, queue wait
included), the search job (LanceDB, queue wait included), the rest of the app (FastAPI,
building the response), and what is outside the app (uvicorn's HTTP, the client, the
GIL: clients and server share one interpreter here, as the issue asks).

Usage:
    python benchmarks/serve_latency.py --rows 20000 --clusters 40      # smoke test, ~1 min
    python benchmarks/serve_latency.py --db /tmp/serve-bench-db        # 1M rows; the build
        # takes ~5 min on 2 idle cores (25 under load), the measurement ~5-10 min; a rerun
        # with the same --db skips the build
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import lancedb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import schema
from pipeline.index import IndexConfig, build_index, has_vector_index
from pipeline.models import ModelSpec
from pipeline.query import CatalogSearch
from pipeline.serve.app import create_app, serve_in_thread
from pipeline.serve.service import SearchService, ServeConfig

TABLE = "videos"
K = 24
MODEL = ModelSpec(model="tiny-random")
SIDECAR = "serve_bench.json"
NOISE = 1.2
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "pink")
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
CATEGORIES = (
    "sports", "news", "music", "gaming", "cooking", "travel",
    "education", "comedy", "science", "animals", "fashion", "vlog",
)  # fmt: skip
KINDS = ("text", "similar")
STRING = pa.string()
SIDES = ("lib", "http")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- the table --------------------------------------------------------------------------
def table_schema() -> pa.Schema:
    return schema.embeddings_schema(
        (pa.field("caption", pa.string()), pa.field("category", pa.string()))
    )


def caption(colour: int, shape: int, direction: int, background: int) -> str:
    """A text in the tiny model's vocabulary, from word ordinals."""
    return (
        f"{COLOURS[colour]} {SHAPES[shape]} moving {DIRECTIONS[direction]} "
        f"on the {COLOURS[background]} background"
    )


def _normalize(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic_batches(
    rows: int, clusters: int, seed: int, batch: int = 50_000
) -> Iterator[pa.RecordBatch]:
    """`rows` rows in `table_schema()` order, one clip per video (module docstring)."""
    rng = np.random.default_rng(seed)
    d = schema.EMBED_DIM
    centres = _normalize(rng.standard_normal((clusters, d), dtype=np.float32))
    weights = rng.lognormal(0.0, 0.5, clusters)
    weights /= weights.sum()
    # Each cluster has its own caption words: colour, shape, direction, background.
    words = [rng.integers(0, len(w), clusters) for w in (COLOURS, SHAPES, DIRECTIONS, COLOURS)]
    cluster_caption = np.array([caption(*w) for w in zip(*words, strict=True)], dtype=object)
    identity = MODEL.identity()
    now = datetime.now(UTC)
    target = table_schema()
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        cluster = rng.choice(clusters, n, p=weights)
        noise = rng.standard_normal((n, d), dtype=np.float32)
        vectors = _normalize(centres[cluster] + (NOISE / np.sqrt(d)) * noise)
        video_ids = np.char.add("v", np.char.zfill(np.arange(start, start + n).astype(str), 7))

        def const(value, type_: pa.DataType = STRING, n: int = n) -> pa.Array:
            return pa.array([value] * n, type_)

        columns = {
            schema.CLIP_ID: pa.array(np.char.add(video_ids, "#00000"), pa.string()),
            schema.VIDEO_ID: pa.array(video_ids, pa.string()),
            schema.CLIP_INDEX: pa.array(np.zeros(n, np.int32)),
            schema.CLIP_START_S: pa.array(np.zeros(n)),
            schema.CLIP_END_S: pa.array(np.full(n, 4.0)),
            schema.URI: pa.array(np.char.add(np.char.add("s3://bench/", video_ids), ".mp4")),
            schema.EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), d),
            schema.MODEL: const(identity),
            schema.SIGNATURE: const("bench"),
            schema.NUM_FRAMES: pa.array(np.full(n, MODEL.num_frames, np.int32)),
            schema.FRAME_INDICES: pa.nulls(n, pa.list_(pa.int32())),
            schema.DECODER: const("decord"),
            schema.CONTENT_VERSION: const("1"),
            schema.EMBEDDED_AT: const(now, pa.timestamp("us", tz="UTC")),
            "caption": pa.array(cluster_caption[cluster], pa.string()),
            "category": pa.array(np.asarray(CATEGORIES)[rng.integers(0, len(CATEGORIES), n)]),
        }
        yield pa.RecordBatch.from_pydict(columns, schema=target)


def open_or_build(db_dir: Path, rows: int, clusters: int, seed: int) -> dict[str, float]:
    """Build the table and its indices in `db_dir`, unless an earlier run left the same one
    there; returns the build's timings (empty when reused)."""
    spec = {
        "rows": rows,
        "clusters": clusters,
        "seed": seed,
        "noise": NOISE,
        "model": MODEL.identity(),
        "index": json.loads(json.dumps(dataclasses.asdict(IndexConfig()))),
    }
    sidecar = db_dir / SIDECAR
    db = lancedb.connect(db_dir)
    if (
        sidecar.exists()
        and json.loads(sidecar.read_text()) == spec
        and TABLE in db.list_tables().tables
    ):
        table = db.open_table(TABLE)
        if table.count_rows() == rows and has_vector_index(table):
            log(f"reusing {rows} rows and their index in {db_dir}")
            return {}
    sidecar.unlink(missing_ok=True)
    timings = {}
    log(f"writing {rows} rows to {db_dir}")
    start = time.perf_counter()
    reader = pa.RecordBatchReader.from_batches(
        table_schema(), synthetic_batches(rows, clusters, seed)
    )
    table = db.create_table(TABLE, data=reader, mode="overwrite")
    timings["write_s"] = time.perf_counter() - start
    log(f"wrote {table.count_rows()} rows in {timings['write_s']:.0f} s; building the index")
    start = time.perf_counter()
    report = build_index(table, IndexConfig())
    timings["index_s"] = time.perf_counter() - start
    print("build_index:", json.dumps(report, default=str))
    log(f"indexed in {timings['index_s']:.0f} s")
    sidecar.write_text(json.dumps(spec))
    return timings


def query_texts(n: int, seed: int) -> list[str]:
    """`n` distinct texts made of the tiny model's vocabulary."""
    rng = np.random.default_rng(seed)
    texts: dict[str, None] = {}
    while len(texts) < n:
        a, b, c, e = (rng.integers(0, len(w)) for w in (COLOURS, SHAPES, DIRECTIONS, COLOURS))
        texts[caption(a, b, c, e)] = None
    return list(texts)


def clip_ids(rng: np.random.Generator, rows: int, n: int) -> list[str]:
    return [schema.clip_id(f"v{i:07d}", 0) for i in rng.integers(0, rows, n)]


# ---- clients ----------------------------------------------------------------------------
#: Opens one client's session: returns (call(item) -> None or an error label, close).
Opener = Callable[[], tuple[Callable[[str], str | None], Callable[[], None]]]


@dataclass
class Run:
    """One side × kind × client count."""

    side: str
    kind: str
    clients: int
    latencies: list[float]
    wall_s: float
    cpu_s: float  # the whole process
    client_cpu_s: float  # the client threads only
    errors: collections.Counter = field(default_factory=collections.Counter)
    server: dict[str, float] = field(default_factory=dict)  # mean ms per query (HTTP)

    @property
    def queries(self) -> int:
        return len(self.latencies)

    def p(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies) * 1000, q))

    @property
    def qps(self) -> float:
        return self.queries / self.wall_s


def drive(open_session: Opener, items: Sequence[Sequence[str]]) -> tuple:
    """One thread per item list, released together; (latencies, wall, cpu, client cpu,
    errors)."""
    latencies: list[float] = []
    errors: collections.Counter = collections.Counter()
    client_cpu = [0.0]
    lock = threading.Lock()
    barrier = threading.Barrier(len(items) + 1)

    def client(mine: Sequence[str]) -> None:
        call, close = open_session()
        try:
            barrier.wait()
            cpu = time.thread_time()
            own, failed = [], collections.Counter()
            for item in mine:
                start = time.perf_counter()
                error = call(item)
                own.append(time.perf_counter() - start)
                if error:
                    failed[error] += 1
            cpu = time.thread_time() - cpu
            with lock:
                latencies.extend(own)
                errors.update(failed)
                client_cpu[0] += cpu
        finally:
            close()

    threads = [threading.Thread(target=client, args=(mine,)) for mine in items]
    for t in threads:
        t.start()
    barrier.wait()
    cpu, start = time.process_time(), time.perf_counter()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return latencies, wall, cpu, client_cpu[0], errors


def library_opener(search: CatalogSearch, kind: str) -> Opener:
    query = search.text if kind == "text" else search.similar_clip

    def open_session():
        def call(item: str) -> str | None:
            try:
                rows = query(item, k=K)
            except Exception as exc:
                return type(exc).__name__
            return None if rows.num_rows == K else f"{rows.num_rows} rows"

        return call, lambda: None

    return open_session


def http_opener(base: str, kind: str) -> Opener:
    path, param = ("/api/search", "q") if kind == "text" else ("/api/similar", "clip_id")

    def open_session():
        http = httpx.Client(base_url=base, timeout=120)
        http.get("/api/health")  # connect before the clock starts

        def call(item: str) -> str | None:
            try:
                response = http.get(path, params={param: item, "k": K})
            except httpx.HTTPError as exc:
                return type(exc).__name__
            return None if response.status_code == 200 else str(response.status_code)

        return call, http.close

    return open_session


# ---- the server's own view --------------------------------------------------------------
def server_sums(service: SearchService, kind: str) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) of the server's histograms that one kind of query feeds."""
    registry = service.metrics.registry
    route = "/api/search" if kind == "text" else "/api/similar"
    series = {
        "app": ("vidcat_http_request_seconds", {"route": route, "method": "GET", "status": "200"}),
        "search": ("vidcat_search_seconds", {"kind": "vector" if kind == "text" else "similar"}),
    }
    if kind == "text":
        series["model"] = ("vidcat_model_seconds", {"kind": "text"})
    out = {}
    for name, (metric, labels) in series.items():
        total = registry.get_sample_value(f"{metric}_sum", labels) or 0.0
        count = registry.get_sample_value(f"{metric}_count", labels) or 0.0
        out[name] = (total, count)
    return out


def server_means(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per observation between two `server_sums`."""
    means = {}
    for name, (total, count) in after.items():
        n = count - before[name][1]
        means[name] = (total - before[name][0]) / n * 1000 if n else float("nan")
    return means


# ---- the measurement --------------------------------------------------------------------
def measure(
    side: str,
    kind: str,
    items: Sequence[Sequence[str]],
    search: CatalogSearch,
    base: str,
    service: SearchService,
) -> Run:
    opener = library_opener(search, kind) if side == "lib" else http_opener(base, kind)
    before = server_sums(service, kind)
    latencies, wall, cpu, client_cpu, errors = drive(opener, items)
    run = Run(side, kind, len(items), latencies, wall, cpu, client_cpu, errors)
    if side == "http":
        run.server = server_means(before, server_sums(service, kind))
    return run


def measure_paired(
    kind: str, items: Sequence[str], search: CatalogSearch, base: str, service: SearchService
) -> list[Run]:
    """One client, the two sides taking turns query by query (the order flips every
    query): the library's run and the HTTP run, each query's CPU (`process_time` around
    the call, the only query in flight) counted to its side."""
    sessions = {"lib": library_opener(search, kind)(), "http": http_opener(base, kind)()}
    runs = {side: Run(side, kind, 1, [], 0.0, 0.0, 0.0) for side in SIDES}
    before = server_sums(service, kind)
    try:
        for i, item in enumerate(items):
            for side in SIDES if i % 2 == 0 else SIDES[::-1]:
                run, call = runs[side], sessions[side][0]
                cpu, own, start = time.process_time(), time.thread_time(), time.perf_counter()
                error = call(item)
                run.latencies.append(time.perf_counter() - start)
                run.cpu_s += time.process_time() - cpu
                if side == "http":
                    run.client_cpu_s += time.thread_time() - own
                if error:
                    run.errors[error] += 1
    finally:
        for _call, close in sessions.values():
            close()
    runs["http"].server = server_means(before, server_sums(service, kind))
    for run in runs.values():
        run.wall_s = sum(run.latencies)  # one client: throughput is 1 / mean latency
    return [runs[side] for side in SIDES]


def check_same_results(search: CatalogSearch, base: str, texts, clips) -> int:
    """Queries whose HTTP results differ from the library's (clip ids in order)."""
    differ = 0
    with httpx.Client(base_url=base, timeout=120) as http:
        for kind, item in [("text", t) for t in texts] + [("similar", c) for c in clips]:
            if kind == "text":
                lib = search.text(item, k=K)
                response = http.get("/api/search", params={"q": item, "k": K})
            else:
                lib = search.similar_clip(item, k=K)
                response = http.get("/api/similar", params={"clip_id": item, "k": K})
            response.raise_for_status()
            got = [r["clip_id"] for r in response.json()["results"]]
            differ += got != lib[schema.CLIP_ID].to_pylist()
    return differ


def warm_up(search, base, service, texts, clips, args) -> None:
    """Both sides: the model, the index pages, threads and connections."""
    n = args.warmup
    for kind, pool in (("text", texts), ("similar", clips)):
        measure_paired(kind, pool[:n], search, base, service)
        per = max(2, n // args.clients)
        burst = [pool[i * per : (i + 1) * per] for i in range(args.clients)]
        for side in SIDES:
            measure(side, kind, burst, search, base, service)


def median(values) -> float:
    return statistics.median(values)


def print_tables(runs: list[Run], clients: Sequence[int]) -> None:
    cases = [(kind, c) for kind in KINDS for c in clients]

    def select(side, kind, c):
        return [r for r in runs if (r.side, r.kind, r.clients) == (side, kind, c)]

    print()
    print(
        "| query | clients | lib p50 ms | HTTP p50 ms | lib p95 ms | HTTP p95 ms "
        "| lib q/s | HTTP q/s | p50 HTTP/lib | q/s HTTP/lib | HTTP non-200 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, c in cases:
        lib, http = select("lib", kind, c), select("http", kind, c)
        errors = sum((r.errors for r in http), collections.Counter())
        lib_errors = sum((r.errors for r in lib), collections.Counter())
        if lib_errors:
            print(f"library errors in {kind} × {c}: {dict(lib_errors)}", file=sys.stderr)
        print(
            f"| {kind} | {c} "
            f"| {median(r.p(50) for r in lib):.1f} | {median(r.p(50) for r in http):.1f} "
            f"| {median(r.p(95) for r in lib):.1f} | {median(r.p(95) for r in http):.1f} "
            f"| {median(r.qps for r in lib):.1f} | {median(r.qps for r in http):.1f} "
            f"| {median(h.p(50) / b.p(50) for b, h in zip(lib, http, strict=True)):.2f} "
            f"| {median(h.qps / b.qps for b, h in zip(lib, http, strict=True)):.2f} "
            f"| {sum(errors.values())}{' ' + str(dict(errors)) if errors else ''} |"
        )

    print()
    print("CPU per query (ms, whole process; medians over repeats):")
    print()
    print(
        "| query | clients | lib | HTTP | of which HTTP clients | HTTP without clients "
        "| (HTTP without clients)/lib |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, c in cases:
        lib, http = select("lib", kind, c), select("http", kind, c)
        lib_cpu = [r.cpu_s / r.queries * 1000 for r in lib]
        http_cpu = [r.cpu_s / r.queries * 1000 for r in http]
        client = [r.client_cpu_s / r.queries * 1000 for r in http]
        server = [h - cl for h, cl in zip(http_cpu, client, strict=True)]
        print(
            f"| {kind} | {c} | {median(lib_cpu):.1f} | {median(http_cpu):.1f} "
            f"| {median(client):.1f} | {median(server):.1f} "
            f"| {median(s / b for s, b in zip(server, lib_cpu, strict=True)):.2f} |"
        )

    print()
    print("Where an HTTP query's time goes (mean ms per query from the server's histograms;")
    print("model and search jobs include their queue wait; medians over repeats):")
    print()
    print(
        "| query | clients | client-observed mean | in the app | model job | search job "
        "| rest of the app | outside the app |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, c in cases:
        http = select("http", kind, c)
        observed = median(float(np.mean(r.latencies)) * 1000 for r in http)
        app = median(r.server["app"] for r in http)
        model = median(r.server.get("model", 0.0) for r in http)
        search = median(r.server["search"] for r in http)
        print(
            f"| {kind} | {c} | {observed:.1f} | {app:.1f} "
            f"| {model:.1f} | {search:.1f} | {app - model - search:.1f} | {observed - app:.1f} |"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--db", help="database directory, kept and reused (default: a temp dir)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--single", type=int, default=100, help="queries of the 1-client runs")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--per-client", type=int, default=20, help="queries per concurrent client")
    p.add_argument("--warmup", type=int, default=60, help="warm-up queries per side and kind")
    p.add_argument("--texts", type=int, default=200, help="distinct query texts")
    p.add_argument(
        "--search-workers",
        type=int,
        default=ServeConfig.search_workers,
        help="the server's search threads (ServeConfig's default)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    total = time.perf_counter()
    print(f"serve_latency: {vars(args)}")
    print(f"load average at start: {os.getloadavg()}")
    db_dir = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="vidcat-serve-bench-"))
    db_dir.mkdir(parents=True, exist_ok=True)
    try:
        timings = open_or_build(db_dir, args.rows, args.clusters, args.seed)
        rng = np.random.default_rng([args.seed, 1])
        texts = query_texts(args.texts, args.seed)
        warm_clips = clip_ids(rng, args.rows, args.warmup)

        search = CatalogSearch(str(db_dir), TABLE, model=MODEL, device="cpu")
        config = ServeConfig(
            db=str(db_dir), table=TABLE, model=MODEL, device="cpu",
            text_cache=0, model_queue=64, search_queue=256, search_workers=args.search_workers,
        )  # fmt: skip
        service = SearchService(config)
        with serve_in_thread(create_app(service)) as base:
            deadline = time.monotonic() + 300
            while httpx.get(f"{base}/api/health").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server never became ready")
                time.sleep(0.1)
            table = search.table
            print(
                f"rows={table.count_rows()} vector_index={has_vector_index(table)} "
                f"index={search.index.index_type} nprobes={search.index.nprobes} "
                f"ef={search.index.ef} refine={search.index.refine_factor} k={K}"
            )
            log("warming up")
            start = time.perf_counter()
            warm_up(search, base, service, texts, warm_clips, args)
            timings["warmup_s"] = time.perf_counter() - start
            differ = check_same_results(search, base, texts[:10], warm_clips[:10])
            print(f"same results over HTTP and from the library: {20 - differ}/20 queries")

            counts = (1, args.clients)
            runs: list[Run] = []
            start = time.perf_counter()
            for repeat in range(args.repeats):
                for case, (kind, c) in enumerate((k, c) for k in KINDS for c in counts):
                    n = args.single if c == 1 else args.per_client
                    if kind == "text":
                        chosen = rng.choice(len(texts), c * n, replace=c * n > len(texts))
                        pool = [texts[i] for i in chosen]
                    else:
                        pool = clip_ids(rng, args.rows, c * n)
                    items = [pool[i * n : (i + 1) * n] for i in range(c)]
                    if c == 1:
                        measured = measure_paired(kind, items[0], search, base, service)
                    else:
                        sides = SIDES if (repeat + case) % 2 == 0 else SIDES[::-1]
                        measured = [measure(s, kind, items, search, base, service) for s in sides]
                    for run in measured:
                        runs.append(run)
                        extra = f" errors={dict(run.errors)}" if run.errors else ""
                        line = (
                            f"repeat {repeat + 1} {run.side:>4} {kind:>7} clients={c:>2}: "
                            f"{run.queries} queries p50 {run.p(50):.1f} ms p95 "
                            f"{run.p(95):.1f} ms {run.qps:.1f} q/s CPU "
                            f"{run.cpu_s / run.queries * 1000:.1f} ms/q{extra}"
                        )
                        print(line)
                        log(line)
            timings["measure_s"] = time.perf_counter() - start
            print_tables(runs, counts)
        search.close()
        timings["total_s"] = time.perf_counter() - total
        print()
        print("timings:", {k: round(v, 1) for k, v in timings.items()})
        print(f"load average at end: {os.getloadavg()}")
    finally:
        if not args.db:
            shutil.rmtree(db_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
