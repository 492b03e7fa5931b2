"""Embed a video catalog into LanceDB (the nightly job).

    # local, embedded default: starts a local Ray, reads local files
    python jobs/embed_catalog.py --manifest data/manifest.parquet --db data/lancedb

    # on a cluster
    ray job submit --working-dir . -- python jobs/embed_catalog.py \\
        --manifest s3://bucket/manifests/ --db s3://bucket/lancedb --checkpoint s3://...

Exit codes: 0 ok; 1 unexpected failure (traceback in the log; also a run whose table
lease was broken or taken over, which stops committing); 2 invalid input (arguments,
manifest, table schema) found before any work, nothing embedded; 3 finished but the
failure rate exceeded --max-error-rate; 4 another writer holds the table's lease (named in
the error) and --lease-wait ran out: nothing was done.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import timedelta

from jobs.common import add_lease_arguments, add_s3_arguments, fail, lease_held, setup_logging
from pipeline.build import ResourceConfig
from pipeline.compat import is_transient
from pipeline.db import TableSchemaError, short_error
from pipeline.decode import DecodeConfig
from pipeline.dedup import DedupConfig
from pipeline.embed import EmbedConfig
from pipeline.lease import LeaseConfig, LeaseHeld
from pipeline.lifecycle import MaintenanceConfig
from pipeline.manifest import ManifestError
from pipeline.models import INTERNVIDEO2_1B, MODEL_NAMES, TINY_RANDOM, ModelSpec
from pipeline.runner import RunConfig, run
from pipeline.runs import EXIT_FAILED
from pipeline.sink import SinkConfig
from pipeline.storage import S3Config, check_db_uri
from pipeline.uris import redact_values

log = logging.getLogger("vidcat.embed_catalog")


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Embed the videos of a Parquet manifest with InternVideo2 into LanceDB.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = p.add_argument_group("input and output")
    io.add_argument(
        "--manifest",
        required=True,
        help="Parquet file or directory/prefix of files (local, file:// or s3://)",
    )
    io.add_argument("--db", required=True, help="LanceDB directory or s3:// prefix")
    io.add_argument("--table", default="videos", help="table name; failures go to <table>_errors")
    io.add_argument(
        "--metadata",
        default="all",
        help="manifest columns carried into the table: all, none, or a comma list",
    )
    io.add_argument(
        "--allowed-root",
        action="append",
        default=None,
        dest="allowed_roots",
        help="directory local video paths may be under (repeatable; default: the "
        "manifest's own directory)",
    )

    run_g = p.add_argument_group("run")
    run_g.add_argument(
        "--mode",
        choices=["incremental", "full"],
        default="incremental",
        help="incremental embeds only new/changed/retryable videos",
    )
    run_g.add_argument(
        "--prune", action="store_true", help="delete videos that are gone from the manifest"
    )
    run_g.add_argument(
        "--max-prune-fraction",
        type=float,
        default=0.5,
        help="refuse (exit 2, nothing changed) a --prune that would delete more than this "
        "share of the videos in the table (an empty or truncated manifest); 1 allows any",
    )
    run_g.add_argument(
        "--max-error-rate",
        type=float,
        default=0.05,
        help="exit 3 when more than this fraction of processed videos failed",
    )
    run_g.add_argument(
        "--no-maintenance",
        action="store_true",
        help="skip compaction, index maintenance, cleanup and tagging",
    )
    run_g.add_argument(
        "--retention-days",
        type=float,
        default=7.0,
        help="table versions and refresh tags older than this are deleted after the run",
    )
    run_g.add_argument(
        "--dedup",
        action="store_true",
        help="after the run, before its maintenance tags the tables, find near-duplicate "
        "clips (incremental; vidcat dedup's pass, under this run's lease; its report is the "
        "run report's `dedup`)",
    )
    run_g.add_argument(
        "--dedup-eps",
        type=float,
        default=DedupConfig.eps,
        help="with --dedup: clips with cosine similarity >= 1 - eps are near-duplicates",
    )
    run_g.add_argument(
        "--dedup-keep",
        default=DedupConfig.keep,
        help="with --dedup: representative rule, earliest|longest|COLUMN[:max|:min]",
    )
    run_g.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)",
    )
    run_g.add_argument("--chunk-rows", type=int, default=4096, help="rows per table commit")

    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        choices=MODEL_NAMES,
        default=INTERNVIDEO2_1B,
        help=f"{TINY_RANDOM} is a random test model, never a fallback",
    )
    m.add_argument(
        "--checkpoint",
        default=os.environ.get("VIDCAT_CHECKPOINT"),
        help="InternVideo2 stage-2 1B weights: path, s3:// URI or hub repo@revision",
    )
    m.add_argument("--num-frames", type=int, default=4, help="frames per clip (1-16)")
    m.add_argument("--compile", action="store_true", help="torch.compile the vision blocks")
    m.add_argument(
        "--store-vision-tokens",
        action="store_true",
        help="also store bf16 vision tokens (2.75 MB/clip) for fast re-ranking",
    )

    d = p.add_argument_group("decode")
    d.add_argument(
        "--clip-seconds",
        type=float,
        default=30.0,
        help="videos longer than this are cut into windows of this length",
    )
    d.add_argument("--clip-overlap", type=float, default=0.0, help="window overlap in seconds")
    d.add_argument("--decode-timeout", type=float, default=60.0, help="seconds per video")
    d.add_argument("--decode-memory-mb", type=int, default=4096, help="memory cap per decoder")
    d.add_argument(
        "--decoder",
        choices=["pyav", "decord"],
        default="pyav",
        help="decoder tried first, the other is the fallback; both give the same frames, "
        "pyav for 0.53-0.72 of the CPU at 720p-1080p (it decodes only what the sampled "
        "frames need)",
    )
    d.add_argument(
        "--sampling",
        choices=["exact", "keyframe"],
        default="exact",
        help="keyframe: each sampled frame moves to the nearest keyframe of its segment "
        "(approximate, cheaper; changes the embedding signature)",
    )

    r = p.add_argument_group("resources")
    r.add_argument("--decode-actors", type=int, default=None, help="default: free CPUs")
    r.add_argument(
        "--decoders-per-actor",
        type=int,
        default=None,
        help="decoder processes per decode actor, one CPU each (default: 1 with "
        "--decode-actors, else up to 4 per actor, sized to the free CPUs)",
    )
    r.add_argument(
        "--max-decode-actors",
        type=int,
        default=None,
        help="the decode pool grows to this many actors as nodes join (an autoscaling "
        "cluster); default: its starting size",
    )
    r.add_argument("--embed-actors", type=int, default=1, help="usually the number of GPUs")
    r.add_argument(
        "--max-embed-actors",
        type=int,
        default=None,
        help="the embed pool grows to this many actors as GPU nodes join; default: --embed-actors",
    )
    r.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        help="default: 1 when the cluster has GPUs, else 0 (CPU)",
    )
    r.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="clips per encoder call (default 128 on GPU, 16 on CPU)",
    )
    add_s3_arguments(p)
    add_lease_arguments(p)
    return p.parse_args(argv)


def _absolute_local(root: str) -> str:
    """A local `--allowed-root` (plain or `file://`) as an absolute path; others unchanged."""
    if "://" in root and not root.startswith("file://"):
        return root
    return os.path.abspath(root.removeprefix("file://"))


def build_config(args: argparse.Namespace, has_gpu: bool) -> RunConfig:
    s3 = S3Config(endpoint_url=args.s3_endpoint_url, region=args.s3_region)
    model = ModelSpec(
        model=args.model, checkpoint=args.checkpoint, num_frames=args.num_frames, s3=s3
    )
    gpus = args.gpus_per_actor if args.gpus_per_actor is not None else (1.0 if has_gpu else 0.0)
    # The sink's own checks (table name, chunk size) and the table's location, before
    # anything runs (a gs:// table would otherwise fail only when its report is written).
    SinkConfig(db_uri=args.db, table=args.table, chunk_rows=args.chunk_rows)
    check_db_uri(args.db)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    # Absolute here: decode actors on other nodes have another working directory, and
    # queries re-decode with the roots recorded in the run config.
    roots = tuple(_absolute_local(r) for r in args.allowed_roots or ())
    metadata = args.metadata
    if metadata not in ("all", "none"):
        metadata = tuple(c.strip() for c in metadata.split(",") if c.strip())
    return RunConfig(
        manifest=args.manifest,
        db=args.db,
        table=args.table,
        mode=args.mode,
        prune=args.prune,
        max_prune_fraction=args.max_prune_fraction,
        metadata_columns=None if metadata == "none" else metadata,
        allowed_roots=roots or None,
        max_error_rate=args.max_error_rate,
        s3=s3,
        decode=DecodeConfig(
            num_frames=args.num_frames,
            clip_seconds=args.clip_seconds,
            clip_overlap_s=args.clip_overlap,
            timeout_s=args.decode_timeout,
            memory_limit_mb=args.decode_memory_mb,
            decoder=args.decoder,
            sampling=args.sampling,
        ),
        embed=EmbedConfig(
            model=model,
            device="cuda" if gpus else "cpu",
            compile=args.compile,
            store_vision_tokens=args.store_vision_tokens,
        ),
        resources=ResourceConfig(
            decode_actors=args.decode_actors,
            max_decode_actors=args.max_decode_actors,
            decoders_per_actor=args.decoders_per_actor,
            embed_actors=args.embed_actors,
            max_embed_actors=args.max_embed_actors,
            embed_gpus=gpus,
            # On CPU the encoder takes its share of the cores from the OS scheduler: a
            # reservation (even 0.5) would leave one decode actor fewer on a small node.
            embed_cpus=1.0 if gpus else 0.0,
            # 16 videos per decode task on CPU: a quarter of the per-task overhead of 4
            # (benchmarks/pipeline_throughput.py); GPU nodes keep 4 for evenness.
            decode_batch_videos=4 if gpus else 16,
            embed_batch_clips=args.batch_size or (128 if gpus else 16),
        ),
        chunk_rows=args.chunk_rows,
        lease=LeaseConfig(ttl_s=args.lease_ttl, wait_s=args.lease_wait),
        maintenance=None
        if args.no_maintenance
        else MaintenanceConfig(retention=timedelta(days=args.retention_days)),
        dedup=DedupConfig(eps=args.dedup_eps, keep=args.dedup_keep) if args.dedup else None,
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    setup_logging()
    args = parse_args(argv, prog)
    import ray

    # "local", not None: ray.init(None) attaches to whatever /tmp/ray/ray_current_cluster
    # names (another user's cluster, or a dead one it then waits on forever).
    address = args.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        ray.init(address=address, log_to_driver=True, include_dashboard=False)
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    except Exception:
        log.exception("cannot start or reach Ray")
        return EXIT_FAILED
    try:
        cfg = build_config(args, has_gpu)
    except ValueError as exc:  # a config dataclass refused an argument
        return fail(f"invalid arguments: {exc}")
    # Credentials or signatures in --manifest, --db or any other URI stay out of the log.
    # Each value is redacted whole, before dumping: a secret holding a quote or a space
    # would be cut short by redact_text's scan of the JSON text.
    log.info("resolved config: %s", json.dumps(redact_values(cfg.to_dict()), sort_keys=True))
    try:
        report = run(cfg)
    except (ManifestError, TableSchemaError) as exc:
        # Raised while validating the manifest and opening the tables, before any work.
        # Any other error, a ValueError from Arrow or LanceDB included, may come after
        # commits: it is a failure, not invalid input.
        return fail(f"invalid input: {exc}")
    except LeaseHeld as exc:  # another run writes the table: nothing was done
        return lease_held(exc)
    except Exception as exc:
        log.exception("run failed")
        # The last line says what happened and what to do, after the traceback.
        what = "the object store kept failing" if is_transient(exc) else "the run failed"
        print(
            f"error: {what}: {short_error(exc)}; every commit before it is kept, and a "
            "rerun (after the cause is fixed) finishes the work",
            file=sys.stderr,
        )
        return EXIT_FAILED
    # Machine output alone on stdout (`| jq` works); the human summary goes to the log.
    print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    print(report.summary(), file=sys.stderr)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
