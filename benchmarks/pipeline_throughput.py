"""Whole-job throughput on CPUs: `pipeline.runner.run` vs a plain process pool decoding.

The baseline is the least a job could cost: a `multiprocessing` pool with one process per
core running the decode child's own function (:func:`pipeline.decode.child.decode_path`,
same probe, sampling and resize, one BLAS thread, no torch) on every video, frames dropped;
timed on a fresh pool ("cold", process start and imports included) and again on the same
pool ("warm", the ratio's denominator). The job is everything else too: validation and
refresh plan, Ray Data decode actors (each with its isolated decoder process), frames
through the object store, the embed actor (tiny random model on CPU), the driver's
reassembly and LanceDB commits. Ray is started before the job is timed (production submits
to a running cluster); its start is reported apart. The job's resources are
`jobs/embed_catalog.py`'s CPU defaults.

The baseline only decodes while the job also embeds on the same cores, so the run also
times an upper bound for any pipeline on this machine: the same pool where each process
also embeds its videos in-process (the job's model, `encode_frames`, encoder batch size),
with no isolation, no transfer between processes and nothing written. "decode+embed pool /
baseline" is the best ratio any design could reach here; "job / decode+embed pool" is what
the job's orchestration (Ray, isolation, sink, start-up) costs on top.

Besides wall time, the CPU seconds of every process of each side are summed from /proc
(job: driver, Ray daemons, actors, decode children) and printed per kind of process: on a
machine shared with other work, CPU per video is the steadier number, and when the job
keeps every core busy the wall ratio cannot exceed the CPU ratio.

    python benchmarks/pipeline_throughput.py --workdir ~/.cache/vidcat-bench   # 600 + 80 clips
    python benchmarks/pipeline_throughput.py --clips 80 --repeats 1

Baseline and job alternate, so a change in load hits both alike; Ray workers run at the
baseline's niceness (0 unless --niceness; Ray's own default is 15).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.embed_catalog import build_config, parse_args
from pipeline.sample_catalog import make_sample_catalog

#: Ray's per-node setting, read from the environment when `ray.init` starts the raylet.
NICENESS_ENV = "RAY_worker_niceness"
_PARAMS: dict = {}


def _init_worker(params: dict, niceness: int) -> None:
    """A baseline process: what the decode child imports (not torch), niced like Ray's
    workers; one BLAS thread, as the child (`_spawn_pool` sets it before the start)."""
    os.nice(niceness)
    _PARAMS.update(params)


def _spawn_pool(processes: int, initializer, initargs: tuple):
    """A `spawn` pool (no fork of a threaded parent) whose processes start with
    OPENBLAS_NUM_THREADS=1, as the decoder child's environment sets it (numpy's resize)."""
    before = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        context = multiprocessing.get_context("spawn")
        return context.Pool(processes, initializer=initializer, initargs=initargs)
    finally:
        if before is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = before


def _decode_local(uri: str, roots: tuple[str, ...], base_dir: str, params: dict):
    """What the isolated decoder does for a local file, in-process: resolve + stat, then
    probe, decode, sample and resize. Returns the frames `[clips, T, H, W, 3]`."""
    from pipeline.decode.child import decode_path
    from pipeline.uris import resolve_uri

    path = resolve_uri(uri, roots, base_dir).path
    os.stat(path)
    header, frames = decode_path(path, params)
    assert header["status"] == "ok", header
    return frames


def _fetch_and_decode(job: tuple[str, tuple[str, ...], str]) -> int:
    """The baseline pool's task: one video, frames dropped; returns its clip count."""
    uri, roots, base_dir = job
    return int(_decode_local(uri, roots, base_dir, _PARAMS).shape[0])


_MODEL: list = []


def _init_embedder(params: dict, niceness: int, spec) -> None:
    import torch

    _init_worker(params, niceness)
    torch.set_num_threads(1)
    _MODEL.append(spec.build(torch.device("cpu"), torch.float32))


def _decode_and_embed(jobs: list[tuple[str, tuple[str, ...], str]]) -> int:
    """The upper-bound pool's task: decode a batch of videos in-process, then embed their
    clips with the job's model and frame path; returns the number of embeddings."""
    import numpy as np

    from pipeline.embed import encode_frames

    frames = np.concatenate([_decode_local(*job, _PARAMS) for job in jobs])
    return len(encode_frames(_MODEL[0], frames)[0])


def _process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if pid == os.getpid():
        return "driver"
    if words and words[0].startswith("ray::"):
        return words[0]
    for word in words:
        if word.startswith("pipeline.") or word.endswith((".py", "raylet", "gcs_server")):
            return os.path.basename(word)
    return os.path.basename(words[0]) if words else "?"


_PROVISIONAL = ("ray::IDLE", "default_worker.py", "setup_worker.py", "?")


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds of the process itself: utime + stime)."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        table[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


class TreeCpu:
    """CPU seconds used by `roots` and their descendants (by default this process: the
    driver, Ray's daemons, workers and their decode children) while the context is open.

    Sampled every `interval` s by a thread, per process, so CPU of processes that exit
    before the end (actors, decode children) still counts up to their last sample; the
    sampler's own CPU is subtracted.
    """

    def __init__(self, roots: tuple[int, ...] = (), interval: float = 0.25) -> None:
        self.roots, self.interval = roots or (os.getpid(),), interval
        self.seconds = 0.0
        self._stop = threading.Event()
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._names: dict[int, str] = {}
        self._own = 0.0

    def _sample(self) -> None:
        table = _proc_table()
        keep, stack = set(), [p for p in self.roots if p in table]
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        while stack:
            pid = stack.pop()
            keep.add(pid)
            stack.extend(children.get(pid, ()))
        for pid in keep:
            cpu = table[pid][1]
            if pid not in self._first:  # started within the window
                self._first[pid] = 0.0
            if self._names.get(pid, "ray::IDLE") in _PROVISIONAL:  # a worker not yet named
                self._names[pid] = _process_name(pid)
            self._last[pid] = cpu

    def _run(self) -> None:
        started = time.thread_time()
        while not self._stop.wait(self.interval):
            self._sample()
        self._own = time.thread_time() - started

    def __enter__(self) -> TreeCpu:
        self._sample()
        self._first = dict(self._last)  # processes alive at the start count from here
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        used = sum(self._last[p] - self._first.get(p, 0.0) for p in self._last)
        self.seconds = used - self._own

    def by_process(self) -> dict[str, float]:
        """CPU seconds per kind of process (Ray worker class, daemon, decode child)."""
        out: dict[str, float] = {}
        for pid, last in self._last.items():
            name = self._names.get(pid, "?")
            out[name] = out.get(name, 0.0) + last - self._first.get(pid, 0.0)
        out[self._names.get(os.getpid(), "?")] = (
            out.get(self._names.get(os.getpid(), "?"), 0) - self._own
        )
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def catalog(workdir: str, clips: int, width: int, height: int, seconds: float) -> str:
    """The sample catalog's manifest, generated once per setting into `workdir`."""
    root = os.path.join(workdir, f"catalog-{clips}-{width}x{height}-{seconds:g}s")
    manifest = os.path.join(root, "manifest.parquet")
    if not os.path.exists(manifest):
        print(f"generating {clips} clips into {root} ...", flush=True)
        started = time.perf_counter()
        make_sample_catalog(root, clips, seconds=seconds, width=width, height=height)
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return manifest


def head_manifest(manifest: str, rows: int) -> str:
    """A manifest of the first `rows` videos, beside the full one (same video files)."""
    path = os.path.join(os.path.dirname(manifest), f"manifest-head{rows}.parquet")
    pq.write_table(pq.read_table(manifest).slice(0, rows), path)
    return path


#: Extra `jobs/embed_catalog.py` arguments for the timed job (`--job-args`).
_JOB_ARGS: list[str] = []


def job_config(manifest: str, db: str):
    argv = ["--manifest", manifest, "--db", db, "--model", "tiny-random", "--no-maintenance"]
    return build_config(parse_args([*argv, *_JOB_ARGS]), has_gpu=False)


def baseline(manifest: str, params: dict, processes: int, niceness: int) -> dict:
    """Fetch+decode every video of `manifest` on a fresh pool (`cold`: from its creation,
    imports included), then again on the same pool (`warm`, with its CPU seconds)."""
    uris = pq.read_table(manifest, columns=["uri"])["uri"].to_pylist()
    base = os.path.dirname(manifest)
    jobs = [(uri, (base,), base) for uri in uris]
    started = time.perf_counter()
    with _spawn_pool(processes, _init_worker, (params, niceness)) as pool:
        clips = sum(pool.imap_unordered(_fetch_and_decode, jobs, chunksize=4))
        cold = time.perf_counter() - started
        with TreeCpu(roots=tuple(p.pid for p in pool._pool)) as cpu:
            started = time.perf_counter()
            sum(pool.imap_unordered(_fetch_and_decode, jobs, chunksize=4))
            warm = time.perf_counter() - started
    return {"cold": cold, "wall": warm, "cpu": cpu.seconds, "videos": len(uris), "clips": clips}


def upper_bound(manifest: str, params: dict, processes: int, niceness: int) -> dict:
    """The fastest any pipeline embedding on these cores could be: the baseline's pool, but
    each process also embeds its videos (the job's model, `encode_frames` and encoder batch
    size), in-process, with no isolation, no transfer between processes and nothing
    written. Timed like the baseline: `cold` from the pool's creation (model build
    included), then `wall` on the same pool."""
    uris = pq.read_table(manifest, columns=["uri"])["uri"].to_pylist()
    base = os.path.dirname(manifest)
    cfg = job_config(manifest, base)
    size = cfg.resources.embed_batch_clips
    batches = [[(u, (base,), base) for u in uris[i : i + size]] for i in range(0, len(uris), size)]
    started = time.perf_counter()
    initargs = (params, niceness, cfg.embed.model)
    with _spawn_pool(processes, _init_embedder, initargs) as pool:
        clips = sum(pool.imap_unordered(_decode_and_embed, batches))
        cold = time.perf_counter() - started
        with TreeCpu(roots=tuple(p.pid for p in pool._pool)) as cpu:
            started = time.perf_counter()
            sum(pool.imap_unordered(_decode_and_embed, batches))
            warm = time.perf_counter() - started
    return {"cold": cold, "wall": warm, "cpu": cpu.seconds, "videos": len(uris), "clips": clips}


def time_job(manifest: str, workdir: str, tag: str) -> dict:
    """`run()` into a fresh LanceDB directory: its report, wall and CPU seconds (all
    processes: driver, Ray's daemons, actors and decode children) and CPU per process."""
    from pipeline.runner import run

    db = tempfile.mkdtemp(prefix=f"db-{tag}-", dir=workdir)
    cfg = job_config(manifest, db)
    with TreeCpu() as cpu:
        started = time.perf_counter()
        report = run(cfg)
        wall = time.perf_counter() - started
    assert report.counts.failed == 0, report.counts
    return {
        "wall": wall,
        "cpu": cpu.seconds,
        "report": report,
        "by_process": cpu.by_process(),
        "db": db,
    }


def _naive_decode(batch, params: dict, root: str):
    """The naive graph's decode task: in-process decode of each row, frames out."""
    import numpy as np
    import pyarrow as pa

    from pipeline import schema

    frames = [_decode_local(uri, (root,), root, params)[0] for uri in batch["uri"].to_pylist()]
    n = len(frames)
    return pa.table(
        {
            schema.FRAMES: schema.frames_array(np.stack(frames)),
            schema.STATUS: ["ok"] * n,
            schema.MESSAGE: pa.nulls(n, pa.string()),
        }
    )


def time_naive(manifest: str, params: dict, cpus: int) -> dict:
    """The issue's reference point: a plain Ray Data graph, decode *tasks* running the same
    decode in-process (no isolation, first clip only) → one embed actor (the job's
    EmbedStage and batch size) → rows counted in the driver, nothing written."""
    import ray

    from pipeline.embed import EmbedStage

    cfg = job_config(manifest, os.path.dirname(manifest))
    root = os.path.dirname(os.path.abspath(manifest))
    with TreeCpu() as cpu:
        started = time.perf_counter()
        ds = ray.data.read_parquet(manifest, columns=["uri"]).map_batches(
            _naive_decode,
            fn_kwargs={"params": params, "root": root},
            batch_size=cfg.resources.decode_batch_videos,
            batch_format="pyarrow",
            num_cpus=1,
            concurrency=cpus,
        )
        ds = ds.map_batches(
            EmbedStage,
            fn_constructor_kwargs={"config": cfg.embed},
            batch_size=cfg.resources.embed_batch_clips,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=0,
            zero_copy_batch=False,
        )
        rows = sum(len(b) for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        wall = time.perf_counter() - started
    return {"wall": wall, "cpu": cpu.seconds, "rows": rows}


def thumbnail_cost(manifest: str, params: dict, db: str, rounds: int = 5) -> str:
    """What the thumbnails cost: CPU of the decode child's `thumbnail` (area resize and JPEG
    of one full-size frame) against the CPU of decoding the same clips with thumbnails off
    (`decode_path`), in this process, the two interleaved over `rounds` so load from other
    processes hits both alike; and the bytes per clip the job stored in `<table>_thumbnails`.
    Timing the JPEG step itself, not decode-with minus decode-without, keeps a ~1 ms cost
    out of the noise of an ~20 ms decode on a shared machine."""
    import av
    import lancedb
    import pyarrow.compute as pc

    from pipeline.decode.child import decode_path, thumbnail
    from pipeline.uris import resolve_uri

    base = os.path.dirname(manifest)
    uris = pq.read_table(manifest, columns=["uri"])["uri"].to_pylist()
    paths = [resolve_uri(u, (base,), base).path for u in uris]
    frames = []  # one full-size frame per video: what the child hands to `thumbnail`
    for path in paths:
        with av.open(path) as container:
            frames.append(next(container.decode(video=0)).to_ndarray(format="rgb24"))
    off = {**params, "thumbnail_size": 0}
    decode_ms, thumb_ms = [], []
    clips = 0
    for _ in range(rounds):
        started = time.process_time()
        clips = sum(len(decode_path(p, off)[0]["clips"]) for p in paths)
        decode_ms.append((time.process_time() - started) / clips * 1e3)
        started = time.process_time()
        for frame in frames:
            thumbnail(frame, params)
        thumb_ms.append((time.process_time() - started) / len(frames) * 1e3)
    ratios = [t / d for t, d in zip(thumb_ms, decode_ms, strict=True)]
    thumbs = lancedb.connect(db).open_table("videos_thumbnails").to_arrow()
    sizes = pc.binary_length(thumbs["thumbnail"])
    height, width = frames[0].shape[:2]
    return (
        f"Thumbnails ({params['thumbnail_size']} px long side from {width}x{height}, the middle "
        f"sampled frame as JPEG): {statistics.median(thumb_ms):.2f} CPU ms per thumbnail "
        f"against {statistics.median(decode_ms):.2f} CPU ms per clip to decode without "
        f"(+{statistics.median(ratios):.1%} [{min(ratios):.1%}-{max(ratios):.1%}]; median "
        f"[min-max] of {rounds} interleaved rounds over {clips} clips); stored "
        f"{pc.mean(sizes).as_py() / 1024:.1f} KiB/clip on average "
        f"[{pc.min(sizes).as_py() / 1024:.1f}-{pc.max(sizes).as_py() / 1024:.1f}] "
        f"over {len(thumbs)} clips."
    )


def med(values: list[float], fmt: str = ".1f") -> str:
    """Median [min-max]."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def cpu_groups(by_process: dict[str, float]) -> dict[str, float]:
    """CPU seconds by kind of process."""
    groups = {
        "decode children": ("pipeline.decode.child",),
        "decode actors": ("MapBatches(DecodeStage)",),
        "embed actor": ("MapBatches(EmbedStage)",),
        "driver": ("driver",),
    }
    out = dict.fromkeys([*groups, "Ray daemons and other"], 0.0)
    for name, seconds in by_process.items():
        group = next((g for g, keys in groups.items() if any(k in name for k in keys)), None)
        out[group or "Ray daemons and other"] += seconds
    return out


def cpu_profile(by_process: dict[str, float], videos: int) -> str:
    """CPU ms per video by kind of process."""
    return ", ".join(f"{g} {s / videos * 1e3:.1f}" for g, s in cpu_groups(by_process).items())


def start_up_split(results: dict) -> list[str]:
    """The job's CPU split into start-up (CPU s) and per video (CPU ms) by kind of process,
    from the two cases' medians: per video = the difference over the difference in videos,
    start-up = the small case's CPU less its videos' share."""
    full, small = results["full"], results["small"]
    n_full, n_small = full[0][0]["videos"], small[0][0]["videos"]
    if n_full == n_small:
        return []
    groups = {}
    for case, runs in (("full", full), ("small", small)):
        by_group = [cpu_groups(j["by_process"]) for _, j in runs]
        groups[case] = {g: statistics.median(b[g] for b in by_group) for g in by_group[0]}
    lines = [
        f"Job CPU split by differencing the {n_full}- and {n_small}-clip cases (medians):",
        "",
        "| process | start-up CPU s | CPU ms per video |",
        "|---|---:|---:|",
    ]
    total_start = total_per = 0.0
    for group in groups["full"]:
        per = (groups["full"][group] - groups["small"][group]) / (n_full - n_small)
        start = groups["small"][group] - n_small * per
        total_start, total_per = total_start + start, total_per + per
        lines.append(f"| {group} | {start:.2f} | {per * 1e3:.1f} |")
    lines.append(f"| **job** | **{total_start:.2f}** | **{total_per * 1e3:.1f}** |")
    return lines


def naive_ratio(runs: list[tuple[dict, dict]]) -> str:
    pairs = [(b["wall"], j["naive"]["wall"]) for b, j in runs if "naive" in j]
    return med([b / n for b, n in pairs], ".2f") if pairs else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=600)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the clips")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each clip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=80, help="start-up case: this many clips")
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs and baseline processes")
    parser.add_argument(
        "--niceness",
        type=int,
        default=0,
        help="of Ray workers (RAY_worker_niceness; Ray's default is 15) and of the baseline "
        "pool alike, so that other load on the machine slows both the same way",
    )
    parser.add_argument("--workdir", default=None, help="keeps the clips between runs")
    parser.add_argument(
        "--no-naive", action="store_true", help="skip the naive Ray Data graph reference"
    )
    parser.add_argument(
        "--job-args",
        default="",
        help="extra jobs/embed_catalog.py arguments (e.g. '--decoders-per-actor 2')",
    )
    args = parser.parse_args()
    _JOB_ARGS.extend(shlex.split(args.job_args))
    width, height = (int(v) for v in args.size.lower().split("x"))
    workdir = args.workdir or tempfile.mkdtemp(prefix="vidcat-pipeline-bench-")
    os.makedirs(workdir, exist_ok=True)
    manifest = catalog(workdir, args.clips, width, height, args.seconds)
    small = head_manifest(manifest, min(args.small, args.clips))
    params = job_config(manifest, workdir).decode.worker_params()
    niceness = int(os.environ.setdefault(NICENESS_ENV, str(args.niceness)))

    import ray

    started = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - started
    results: dict[str, list[tuple[dict, dict]]] = {"full": [], "small": []}
    try:
        for i in range(args.repeats):
            for case, path in (("full", manifest), ("small", small)):
                base = baseline(path, params, args.cpus, niceness)
                base["bound"] = upper_bound(path, params, args.cpus, niceness)
                job = time_job(path, workdir, f"{case}{i}")
                assert job["report"].counts.clips_embedded == base["clips"]
                assert base["bound"]["clips"] == base["clips"]
                if not args.no_naive:
                    job["naive"] = time_naive(path, params, args.cpus)
                    assert job["naive"]["rows"] == base["videos"]
                results[case].append((base, job))
                n, sec = base["videos"], job["report"].seconds
                print(
                    f"{case} #{i}: {n} videos: baseline {base['wall']:.2f} s warm, "
                    f"{base['cold']:.2f} s cold; decode+embed pool {base['bound']['wall']:.2f} s "
                    f"warm, {base['bound']['cold']:.2f} s cold; job {job['wall']:.2f} s; "
                    f"ratio {base['wall'] / job['wall']:.2f}; in stages: decode "
                    f"{sec['decode']:.1f} s, embed {sec['embed']:.1f} s, commit "
                    f"{sec['commit']:.2f} s; job CPU ms/video: "
                    f"{cpu_profile(job['by_process'], n)}"
                    + (
                        f"; naive graph {job['naive']['wall']:.2f} s, "
                        f"{job['naive']['cpu'] / n * 1e3:.1f} CPU ms/video"
                        if "naive" in job
                        else ""
                    ),
                    flush=True,
                )
    finally:
        ray.shutdown()

    resources = dataclasses.asdict(job_config(manifest, workdir).resources)
    print()
    print(f"## Pipeline throughput ({os.cpu_count()} cores, Ray num_cpus={args.cpus})")
    print()
    print(f"clips {args.size}, {args.seconds:g} s, h264 (sample catalog); job {resources};")
    print(f"Ray worker and baseline niceness {niceness}; ray.init {init_s:.2f} s.")
    print()
    print(
        "| clips | baseline videos/s (warm / cold pool) | job videos/s | job/baseline "
        "| job/cold baseline | job incl. ray.init/baseline | CPU ms/video baseline / job "
        "| CPU ratio | naive graph / baseline | decode+embed pool / baseline (upper bound) "
        "| job / decode+embed pool |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for runs in results.values():
        n = runs[0][0]["videos"]
        bw, bc = [b["wall"] for b, _ in runs], [b["cold"] for b, _ in runs]
        jw = [j["wall"] for _, j in runs]
        print(
            f"| {n} | {med([n / w for w in bw])} / {med([n / w for w in bc])} "
            f"| {med([n / w for w in jw])} "
            f"| {med([b / j for b, j in zip(bw, jw, strict=True)], '.2f')} "
            f"| {med([b / j for b, j in zip(bc, jw, strict=True)], '.2f')} "
            f"| {med([b / (j + init_s) for b, j in zip(bw, jw, strict=True)], '.2f')} "
            f"| {med([b['cpu'] / n * 1e3 for b, _ in runs])} / "
            f"{med([j['cpu'] / n * 1e3 for _, j in runs])} "
            f"| {med([b['cpu'] / j['cpu'] for b, j in runs], '.2f')} "
            f"| {naive_ratio(runs)} "
            f"| {med([b['wall'] / b['bound']['wall'] for b, _ in runs], '.2f')} "
            f"| {med([b['bound']['wall'] / j['wall'] for b, j in runs], '.2f')} |"
        )
    print()
    print(
        "median [min-max] over repeats; a ratio pairs a baseline with the job run right after "
        "it. CPU: every process of each side, sampled from /proc (job: driver, Ray daemons, "
        "actors, decode children)."
    )
    print(f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    split = start_up_split(results)
    if split:
        print()
        print("\n".join(split))
    if params.get("thumbnail_size"):
        print()
        print(thumbnail_cost(small, params, results["small"][-1][1]["db"]))


if __name__ == "__main__":
    main()
