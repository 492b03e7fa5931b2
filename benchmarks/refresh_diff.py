"""Refresh-plan cost at catalog scale: wall time and driver memory of the streamed diff.

Generates (once, into --out) a Parquet manifest of `--rows` videos (video_id, uri, version)
and a LanceDB table of about as many one-clip videos in the real embeddings schema, then
times `pipeline.refresh.plan_refresh(..., mode="incremental", prune=True)` against them and
samples the driver's resident memory. The input layout, by video index `i < rows`:

* `i % 1000 == 7`: in the errors table only (`fetch_error`) → **retried** (0.1 %);
* `i % 200 == 3`: in the table, gone from the manifest → **pruned** (0.5 %);
* `i % 100 == 5`: in the table, new version in the manifest → **changed** (1 %);
* `rows ... rows + rows/200`: only in the manifest → **new** (0.5 %);
* everything else unchanged → **skipped**.

The plan's counts are checked against these; a mismatch exits 1.

    python benchmarks/refresh_diff.py                    # 10M rows: ~21 GB of table
    python benchmarks/refresh_diff.py --rows 200000      # test scale, seconds

Embeddings are small random vectors (one 64k-row block reused); the plan never reads
them, but they give the table its real size on disk. Generation runs in a child process
so that the measured process's peak RSS (`ru_maxrss`) covers only the measured work.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import schema
from pipeline.manifest import validate_manifest
from pipeline.refresh import BUCKET_ROWS, plan_refresh
from pipeline.sink import LanceSink, SinkConfig

SIGNATURE = "0123456789abcdef"
TABLE = "videos"
_BATCH = 100_000
_EMBED_BLOCK = 65_536
_TABLE_BYTES_PER_ROW = 2_250  # measured: 2 KB of embedding plus the other columns


def video_id(i: np.ndarray) -> list[str]:
    return [f"vid-{j:010d}" for j in i.tolist()]


def uri_of(ids: list[str]) -> list[str]:
    return [f"s3://media-bucket/catalog/{v}.mp4" for v in ids]


def expected_counts(rows: int) -> dict[str, int]:
    i = np.arange(rows)
    errors, removed, changed = i % 1000 == 7, i % 200 == 3, i % 100 == 5
    new = rows // 200
    return {
        "new": new,
        "changed": int(changed.sum()),
        "retried": int(errors.sum()),
        "skipped": int(rows - errors.sum() - removed.sum() - changed.sum()),
        "to_prune": int(removed.sum()),
        "manifest_rows": int(rows - removed.sum() + new),
        "table_rows": int(rows - errors.sum()),
        "error_rows": int(errors.sum()),
    }


# ---- generation (child process) -----------------------------------------------------------


def _clip_batch(i: np.ndarray, embeddings: np.ndarray, now: datetime) -> pa.Table:
    n, ids = len(i), video_id(i)
    flat = pa.array(embeddings[:n].reshape(-1))
    columns = {
        schema.CLIP_ID: [schema.clip_id(v, 0) for v in ids],
        schema.VIDEO_ID: ids,
        schema.CLIP_INDEX: np.zeros(n, np.int32),
        schema.CLIP_START_S: np.zeros(n),
        schema.CLIP_END_S: np.full(n, 30.0),
        schema.URI: uri_of(ids),
        schema.EMBEDDING: pa.FixedSizeListArray.from_arrays(flat, schema.EMBED_DIM),
        schema.MODEL: pa.repeat("internvideo2-1b@bench", n),
        schema.SIGNATURE: pa.repeat(SIGNATURE, n),
        schema.NUM_FRAMES: np.full(n, 4, np.int32),
        schema.FRAME_INDICES: pa.array([[12, 37, 62, 87]] * n, pa.list_(pa.int32())),
        schema.DECODER: pa.repeat("decord", n),
        schema.CONTENT_VERSION: pa.repeat("v1", n),
        schema.EMBEDDED_AT: pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), n),
    }
    return pa.table(columns, schema=schema.embeddings_schema())


def _error_batch(i: np.ndarray, now: datetime) -> pa.Table:
    n, ids = len(i), video_id(i)
    columns = {
        schema.VIDEO_ID: ids,
        schema.URI: uri_of(ids),
        schema.STATUS: pa.repeat(schema.Status.FETCH_ERROR.value, n),
        schema.MESSAGE: pa.repeat("NoSuchKey", n),
        schema.ATTEMPTS: np.ones(n, np.int32),
        schema.CONTENT_VERSION: pa.repeat("v1", n),
        schema.SIGNATURE: pa.repeat(SIGNATURE, n),
        schema.DECODER: pa.nulls(n, pa.string()),
        schema.FAILED_AT: pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), n),
    }
    return pa.table(columns, schema=schema.errors_schema())


def generate(out: Path, rows: int, files: int) -> dict:
    """Write the manifest files and the tables; returns sizes for the report."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    rng = np.random.default_rng(0)
    embeddings = (rng.standard_normal((_BATCH, schema.EMBED_DIM), np.float32) * 0.05).astype(
        np.float32
    )
    manifest_dir = out / "manifest"
    manifest_dir.mkdir(parents=True)
    m_schema = pa.schema(
        [(schema.VIDEO_ID, pa.string()), (schema.URI, pa.string()), (schema.VERSION, pa.string())]
    )
    total = rows + rows // 200
    files = max(1, min(files, -(-total // _BATCH)))
    writers = [
        pq.ParquetWriter(manifest_dir / f"part-{f:03d}.parquet", m_schema) for f in range(files)
    ]
    manifest_arrow = state_arrow = 0
    db = lancedb.connect(str(out / "db"))
    # Created the way the sink creates them (schema with the version key), then filled.
    clips = db.create_table(TABLE, schema=schema.embeddings_schema())
    errors = db.create_table(schema.errors_table_name(TABLE), schema=schema.errors_schema())
    pending: list[pa.Table] = []
    t_table = 0.0
    for lo in range(0, total, _BATCH):
        i = np.arange(lo, min(lo + _BATCH, total))
        old = i[i < rows]
        in_manifest = i[(i >= rows) | (i % 200 != 3)]
        ids = video_id(in_manifest)
        version = np.where((in_manifest < rows) & (in_manifest % 100 == 5), "v2", "v1")
        m = pa.table([ids, uri_of(ids), pa.array(version.tolist())], schema=m_schema)
        writers[lo // _BATCH % files].write_table(m)
        manifest_arrow += m.nbytes
        if len(old):
            t0 = time.perf_counter()
            table = _clip_batch(old[old % 1000 != 7], embeddings, now)
            state_arrow += table.select(
                [schema.VIDEO_ID, schema.CONTENT_VERSION, schema.SIGNATURE, schema.URI]
            ).nbytes
            pending.append(table)
            if sum(map(len, pending)) >= 2 * _BATCH:  # fewer, larger fragments
                clips.add(pa.concat_tables(pending))
                pending = []
            failed = old[old % 1000 == 7]
            if len(failed):
                errors.add(_error_batch(failed, now))
            t_table += time.perf_counter() - t0
        if lo // _BATCH % 10 == 0:
            print(f"  generated {min(lo + _BATCH, total):,}/{total:,} rows", flush=True)
    if pending:
        clips.add(pa.concat_tables(pending))
    for w in writers:
        w.close()
    return {
        "generate_s": time.perf_counter() - started,
        "table_write_s": t_table,
        "manifest_parquet_bytes": _du(manifest_dir),
        "table_disk_bytes": _du(out / "db"),
        "manifest_arrow_bytes": manifest_arrow,
        "table_state_arrow_bytes": state_arrow,
    }


def _generate_child(out: str, rows: int, files: int, meta: str) -> None:
    Path(meta).write_text(json.dumps(generate(Path(out), rows, files)))


# ---- measurement ----------------------------------------------------------------------------


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class MemorySampler:
    """Samples this process's VmRSS and RssAnon (kB, /proc/self/status) every `every` s.

    With `trim`, glibc's `malloc_trim(0)` runs before every sample: freed heap goes back
    to the system, so the samples approach live memory rather than what the allocator
    retains (C++ code, e.g. Arrow's string group-by states, allocates through glibc).
    """

    def __init__(self, spill_dir: Path | None = None, every: float = 0.02, trim=False) -> None:
        self.every, self.spill_dir = (max(every, 0.1) if trim else every), spill_dir
        self._trim = ctypes.CDLL("libc.so.6").malloc_trim if trim else None
        self.peak_rss = self.peak_anon = self.peak_spill = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> tuple[int, int]:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0]) * 1024
        return fields["VmRSS"], fields["RssAnon"]

    def _run(self) -> None:
        last_spill = 0.0
        while not self._stop.is_set():
            if self._trim is not None:
                self._trim(0)
            rss, anon = self.read()
            self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)
            now = time.monotonic()
            if self.spill_dir is not None and now - last_spill > 0.5:
                last_spill = now
                self.peak_spill = max(self.peak_spill, _du(self.spill_dir))
            self._stop.wait(self.every)

    def __enter__(self) -> MemorySampler:
        self.start_rss, self.start_anon = self.read()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(out: Path, trim: bool = False) -> dict:
    import ray

    # A private local Ray (the plan puts its rows to embed in the object store).
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=1 << 30,
    )
    result = {}
    with MemorySampler(trim=trim) as mem:
        t0 = time.perf_counter()
        info = validate_manifest(str(out / "manifest"), metadata_columns="none")
        result["validate_s"] = time.perf_counter() - t0
    result["validate_peak_rss"], result["validate_peak_anon"] = mem.peak_rss, mem.peak_anon
    result["validate_start_rss"] = mem.start_rss

    spill = Path(tempfile.mkdtemp(prefix="spill-", dir=out))
    sink = LanceSink(SinkConfig(db_uri=str(out / "db"), table=TABLE))
    with MemorySampler(spill, trim=trim) as mem:
        t0 = time.perf_counter()
        plan = plan_refresh(
            info,
            sink,
            signature=SIGNATURE,
            mode="incremental",
            prune=True,
            spill_dir=str(spill),
        )
        result["plan_s"] = time.perf_counter() - t0
    result.update(
        plan_start_rss=mem.start_rss,
        plan_start_anon=mem.start_anon,
        plan_peak_rss=mem.peak_rss,
        plan_peak_anon=mem.peak_anon,
        plan_peak_spill=mem.peak_spill,
        ru_maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        counts={
            "new": plan.new,
            "changed": plan.changed,
            "retried": plan.retried,
            "skipped": plan.skipped,
            "to_prune": plan.to_prune,
        },
        buckets=max(1, -(-max(info.num_rows, sink.clips_table.count_rows()) // BUCKET_ROWS)),
        manifest_rows=info.num_rows,
        table_rows=sink.clips_table.count_rows(),
    )
    shutil.rmtree(spill, ignore_errors=True)
    ray.shutdown()
    return result


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000, help="videos in the table")
    p.add_argument("--files", type=int, default=8, help="manifest Parquet files")
    p.add_argument("--out", type=Path, default=None, help="default: /tmp/vidcat-refresh-<rows>")
    p.add_argument("--keep", action="store_true", help="keep the generated inputs")
    p.add_argument(
        "--trim", action="store_true", help="malloc_trim while sampling (live memory, slower)"
    )
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.gettempdir()) / f"vidcat-refresh-{args.rows}"
    meta_path = out / "inputs.json"
    expected = expected_counts(args.rows)
    if not meta_path.exists():
        need = expected["table_rows"] * _TABLE_BYTES_PER_ROW * 1.1
        free = shutil.disk_usage(out.parent).free
        if need > free * 0.8:
            print(f"needs ~{_mb(need)} on disk, {_mb(free)} free: lower --rows", file=sys.stderr)
            return 2
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        print(f"generating {args.rows:,} rows into {out} (~{_mb(need)})", flush=True)
        child = multiprocessing.get_context("spawn").Process(
            target=_generate_child, args=(str(out), args.rows, args.files, str(out / "tmp.json"))
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            return 1
        os.replace(out / "tmp.json", meta_path)
    inputs = json.loads(meta_path.read_text())
    result = measure(out, trim=args.trim)
    want = {k: expected[k] for k in result["counts"]}
    ok = result["counts"] == want and result["manifest_rows"] == expected["manifest_rows"]
    report = {
        "rows": args.rows,
        "trim": args.trim,
        "inputs": inputs,
        "result": result,
        "expected": want,
        "ok": ok,
    }
    print(json.dumps(report, indent=2))
    r, i = result, inputs
    print(
        f"\n| rows | manifest | table | plan | validate | driver peak RSS (plan) "
        f"| Δ RSS | Δ anon | spill | naive in-memory inputs |\n"
        f"| {args.rows:,} | {r['manifest_rows']:,} rows, {_mb(i['manifest_parquet_bytes'])} "
        f"| {r['table_rows']:,} rows, {_mb(i['table_disk_bytes'])} | {r['plan_s']:.1f} s "
        f"| {r['validate_s']:.1f} s | {_mb(r['plan_peak_rss'])} "
        f"| {_mb(r['plan_peak_rss'] - r['plan_start_rss'])} "
        f"| {_mb(r['plan_peak_anon'] - r['plan_start_anon'])} | {_mb(r['plan_peak_spill'])} "
        f"| {_mb(i['manifest_arrow_bytes'] + i['table_state_arrow_bytes'])} |"
    )
    print("counts", "match" if ok else f"MISMATCH: got {result['counts']}, want {want}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
