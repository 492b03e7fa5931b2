"""One embedding run: validate → plan → stream the Ray graph into the sink → report.

The job (`jobs/embed_catalog.py`) parses arguments into a :class:`RunConfig` and calls
:func:`run`; everything a test needs to reach lives here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from . import schema
from .build import ResourceConfig, build_dataset
from .decode import DecodeConfig, content_version_of
from .dedup import DedupConfig, run_dedup
from .embed import EmbedConfig, signature
from .lease import Lease, LeaseConfig
from .lifecycle import MaintenanceConfig, maintain
from .manifest import ManifestError, ManifestInfo, default_allowed_root, validate_manifest
from .refresh import RefreshPlan, plan_refresh, stat_versions
from .runs import Counts, RunFiles, RunReport, new_run_id
from .sink import LanceSink, SinkConfig
from .storage import S3Config
from .uris import redact_uri

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs, composed by the job and sliced per component."""

    manifest: str
    db: str
    table: str = "videos"
    mode: Literal["incremental", "full"] = "incremental"
    prune: bool = False
    #: Pruning more than this share of the known videos is refused (a truncated or empty
    #: manifest would otherwise empty the table); 1 allows any.
    max_prune_fraction: float = 0.5
    metadata_columns: str | tuple[str, ...] | None = "all"
    allowed_roots: tuple[str, ...] | None = None  # None: the manifest's own directory
    max_error_rate: float = 0.05
    s3: S3Config = field(default_factory=S3Config)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    chunk_rows: int = 4096
    progress_seconds: float = 10.0
    #: Compaction, index upkeep, old-version cleanup and tagging after the run; None skips.
    maintenance: MaintenanceConfig | None = field(default_factory=MaintenanceConfig)
    #: The table's write lease: held from before the plan to the report.
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    #: Near-duplicate pass before maintenance, under the same lease (`--dedup`); None skips.
    dedup: DedupConfig | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError("max_error_rate must be in [0, 1]")
        if not 0 <= self.max_prune_fraction <= 1:
            raise ValueError("max_prune_fraction must be in [0, 1]")
        if self.decode.num_frames != self.embed.model.num_frames:
            raise ValueError("decode and model frame counts differ")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


@dataclass
class _Progress:
    total: int
    every: float
    started: float = field(default_factory=time.perf_counter)
    last: float = field(default_factory=time.perf_counter)
    videos: int = 0
    clips: int = 0
    failed: dict[str, set[str]] = field(default_factory=dict)
    decode_s: float = 0.0
    embed_s: float = 0.0

    def update(self, batch: pa.Table, status: pa.Array) -> None:
        """Count one batch of whole videos (see _Reassembler) with the statuses the sink
        commits them with (`LanceSink.write`'s, which may turn rows into `embed_error`)."""
        ok = pc.equal(status, schema.Status.OK.value)
        bad = batch.filter(pc.invert(ok)).set_column(
            batch.schema.get_field_index(schema.STATUS), schema.STATUS, status.filter(pc.invert(ok))
        )
        # The sink commits no clip of a video with a failed row: neither is it counted here.
        whole = pc.invert(pc.is_in(batch[schema.VIDEO_ID], value_set=bad[schema.VIDEO_ID]))
        self.clips += pc.sum(pc.and_(ok, whole)).as_py() or 0
        self.videos += pc.count_distinct(batch[schema.VIDEO_ID]).as_py() or 0
        for vid, st in zip(
            bad[schema.VIDEO_ID].to_pylist(), bad[schema.STATUS].to_pylist(), strict=True
        ):
            self.failed.setdefault(st, set()).add(vid)
        for col, attr in ((schema.DECODE_SECONDS, "decode_s"), (schema.EMBED_SECONDS, "embed_s")):
            if col in batch.column_names:
                setattr(self, attr, getattr(self, attr) + (pc.sum(batch[col]).as_py() or 0.0))
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            rate = self.videos / max(now - self.started, 1e-9)
            eta = (self.total - self.videos) / rate if rate else float("nan")
            logger.info(
                "progress: %d/%d videos (%.1f%%), %d clips, %d failed, %.1f videos/s, eta %.0fs",
                self.videos,
                self.total,
                100 * self.videos / max(self.total, 1),
                self.clips,
                self.failed_videos,
                rate,
                eta,
            )

    @property
    def failed_videos(self) -> int:
        return len(set().union(*self.failed.values())) if self.failed else 0


class _Reassembler:
    """Regroups a video's rows before the sink sees them.

    The decode stage emits all rows of a video together, but the embed stage re-batches
    by clip count, so a long video's clips can reach the driver in two batches (in any
    order). The sink must see each video whole (it replaces a video's clips atomically),
    so rows wait here until `num_clips` of them have arrived.
    """

    def __init__(self) -> None:
        self._pending: list[pa.Table] = []

    def push(self, batch: pa.Table) -> pa.Table | None:
        if schema.NUM_CLIPS not in batch.column_names:
            return batch
        table = pa.concat_tables([*self._pending, batch], promote_options="permissive")
        counts = table.group_by(schema.VIDEO_ID).aggregate(
            [(schema.NUM_CLIPS, "max"), (schema.VIDEO_ID, "count")]
        )
        done = counts.filter(
            pc.greater_equal(counts[f"{schema.VIDEO_ID}_count"], counts[f"{schema.NUM_CLIPS}_max"])
        )[schema.VIDEO_ID]
        complete = pc.is_in(table[schema.VIDEO_ID], value_set=done)
        rest = table.filter(pc.invert(complete))
        self._pending = [rest] if len(rest) else []
        ready = table.filter(complete)
        if not len(ready):
            return None
        return ready.sort_by([(schema.VIDEO_ID, "ascending"), (schema.CLIP_INDEX, "ascending")])

    def leftovers(self) -> pa.Table | None:
        """Rows of videos that never completed: marked failed so none is silently lost."""
        if not self._pending:
            return None
        rest = pa.concat_tables(self._pending)
        self._pending = []
        n = len(rest)
        logger.error("%d rows of incomplete videos at the end of the stream", n)
        rest = rest.set_column(
            rest.schema.get_field_index(schema.STATUS),
            schema.STATUS,
            pa.array([schema.Status.EMBED_ERROR.value] * n),
        )
        return rest.set_column(
            rest.schema.get_field_index(schema.MESSAGE),
            schema.MESSAGE,
            pa.array(["incomplete: some clips of this video were lost in the pipeline"] * n),
        )


def _version_resolver(decode: DecodeConfig):
    """`uris -> versions` by stat/HEAD, for manifests without a `version` column."""
    fs = []

    def one(uri: str) -> str | None:
        if uri.startswith("s3://") and not fs:
            fs.append(decode.s3.s3fs())
        return content_version_of(uri, decode, fs[0] if fs else None)

    return lambda uris: stat_versions(one, uris)


class PruneRefused(ManifestError):
    """`--prune` would delete more of the catalog than `max_prune_fraction` allows."""


def _check_prune(plan: RefreshPlan, cfg: RunConfig) -> None:
    """Refuse, before any work, a prune of more than `max_prune_fraction` of the known
    videos: an empty or half-uploaded manifest must not empty the table."""
    if plan.to_prune and plan.to_prune > cfg.max_prune_fraction * plan.known:
        raise PruneRefused(
            f"--prune would delete {plan.to_prune} of the {plan.known} videos in the table and "
            f"its errors table ({plan.to_prune / plan.known:.0%}), more than "
            f"--max-prune-fraction {cfg.max_prune_fraction:g} allows: is the manifest "
            f"{redact_uri(cfg.manifest)} complete? Nothing was changed; rerun with a higher "
            "--max-prune-fraction (1 allows any) if this is intended."
        )


def _resolved(cfg: RunConfig, info: ManifestInfo) -> RunConfig:
    """`cfg` with what the manifest decides: allowed roots (default: the manifest's own
    directory), the base directory of relative URIs, the S3 endpoint, signature inputs."""
    roots = cfg.allowed_roots
    if roots is None:
        root = default_allowed_root(cfg.manifest)
        roots = (root,) if root else ()
    decode = dataclasses.replace(
        cfg.decode, allowed_roots=tuple(roots), base_dir=info.base_dir, s3=cfg.s3
    )
    embed = dataclasses.replace(cfg.embed, signature_extra=decode.signature_inputs())
    return dataclasses.replace(cfg, allowed_roots=tuple(roots), decode=decode, embed=embed)


def _stream(plan: RefreshPlan, sink: LanceSink, cfg: RunConfig, identity: str) -> _Progress:
    """Run the Ray graph over the plan's rows and hand every whole video to the sink."""
    progress = _Progress(total=plan.to_embed, every=cfg.progress_seconds)
    if plan.to_embed:
        ds = build_dataset(
            plan.dataset(), cfg.decode, cfg.embed, cfg.resources, model_identity=identity
        )
        regroup = _Reassembler()
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            ready = regroup.push(batch)
            if ready is not None:
                progress.update(ready, sink.write(ready))
        rest = regroup.leftovers()
        if rest is not None:
            progress.update(rest, sink.write(rest))
    sink.flush()
    return progress


def _maintain(cfg: RunConfig, storage_options: dict[str, str] | None) -> dict[str, Any] | None:
    """Post-run upkeep; a failure is reported (the data is committed), not raised."""
    if cfg.maintenance is None:
        return None
    try:
        return maintain(cfg.db, cfg.table, storage_options=storage_options, config=cfg.maintenance)
    except Exception as exc:
        logger.exception("post-run maintenance failed")
        return {"error": f"{type(exc).__name__}: {exc}"}


def _dedup(cfg: RunConfig, lease: Lease, run_id: str) -> dict[str, Any] | None:
    """The incremental near-duplicate pass; a failure is reported (the data is committed)."""
    if cfg.dedup is None:
        return None
    try:
        return run_dedup(
            cfg.db, cfg.table, cfg.dedup, s3=cfg.s3, guard=lease.check, run_id=f"{run_id}-dedup"
        )
    except Exception as exc:
        logger.exception("near-duplicate pass failed")
        return {"error": f"{type(exc).__name__}: {exc}"}


def run(cfg: RunConfig) -> RunReport:
    """Execute one run and return its report (also written beside the table).

    A failed post-run maintenance is not raised: the data is committed, so the report
    records the error and its `exit_code` is `EXIT_FAILED`; more failed videos than
    `max_error_rate` make it `EXIT_TOO_MANY_ERRORS`.

    The table's lease (:mod:`pipeline.lease`) is held from before the tables are opened
    until the report is written; every commit checks it first.

    Raises:
        ManifestError: the manifest is missing, unreadable or invalid; raised by
            `validate_manifest` before any table is opened (or `PruneRefused`, after the
            plan and before any work: the prune would delete too much of the catalog).
        LeaseHeld: another writer holds the table's lease (after `cfg.lease.wait_s`);
            nothing was done. `LeaseLost`: this run's lease was broken or taken over
            while it ran; it stopped committing.
        TableSchemaError: an existing table (embeddings, errors or vision tokens) was
            written under another schema version or has other columns; raised while the
            tables are opened, before any row is written.
        Exception: any other error propagates as is. Some come before any work (a
            `ValueError` from `SinkConfig` when metadata columns clash, a checkpoint that
            cannot be identified), others after rows were committed (Arrow's and LanceDB's
            `ValueError`s, `OSError`, Ray errors), so a `ValueError` is not invalid input.

    `jobs/embed_catalog.py` exits `EXIT_INVALID_INPUT` (2) on a `ManifestError` or
    `TableSchemaError` and `EXIT_FAILED` (1) on any other error, else the report's
    `exit_code`.
    """
    started_at = datetime.now(UTC)
    run_id = new_run_id()
    t0 = time.perf_counter()
    info = validate_manifest(
        cfg.manifest,
        endpoint_url=cfg.s3.endpoint_url,
        region=cfg.s3.region,
        anon=cfg.s3.anon,
        metadata_columns=cfg.metadata_columns,
    )
    cfg = _resolved(cfg, info)
    identity = cfg.embed.model.identity()
    sig = signature(identity, cfg.embed.signature_extra)
    logger.info("run %s: %d videos in %s, model %s, signature %s",
                run_id, info.num_rows, info.uri, identity, sig)  # fmt: skip
    sink_cfg = SinkConfig(
        db_uri=cfg.db,
        table=cfg.table,
        chunk_rows=cfg.chunk_rows,
        storage_options=cfg.s3.storage_options(),
        metadata_fields=info.metadata_fields,
        store_vision_tokens=cfg.embed.store_vision_tokens,
    )
    with (
        Lease(cfg.db, cfg.table, run_id, "embed run", cfg.s3, cfg.lease) as lease,
        LanceSink(sink_cfg, guard=lease.check) as sink,
    ):
        plan = plan_refresh(
            info,
            sink,
            signature=sig,
            mode=cfg.mode,
            prune=cfg.prune,
            version_of=_version_resolver(cfg.decode),
            block_rows=cfg.resources.decode_batch_videos,
        )
        logger.info("plan: %s", plan.summary())
        _check_prune(plan, cfg)
        progress = _stream(plan, sink, cfg, identity)
        deleted = plan.apply_prune(sink)
        sink.close()
        table_version = sink.table_version()
        lease.check()
        # The near-duplicates before maintenance, so this refresh's tag holds the groups of
        # this refresh's clips (a rollback to it restores both together).
        dedup = _dedup(cfg, lease, run_id)
        maintenance = _maintain(cfg, sink_cfg.storage_options)
        if maintenance and "versions" in maintenance:
            table_version = maintenance["versions"][cfg.table]
        counts = Counts(
            videos_in_manifest=info.num_rows,
            **plan.counts(),
            deleted=deleted,
            videos_processed=progress.videos,
            clips_embedded=progress.clips,
            failed_by_status={st: len(ids) for st, ids in sorted(progress.failed.items())},
            failed=progress.failed_videos,
        )
        report = RunReport(
            run_id=run_id,
            mode=cfg.mode,
            started_at=started_at,
            finished_at=datetime.now(UTC),
            manifest={"uri": info.uri, "files": len(info.paths), "videos": info.num_rows},
            table=cfg.table,
            model=identity,
            signature=sig,
            counts=counts,
            seconds={
                "wall": time.perf_counter() - t0,
                "decode": progress.decode_s,
                "embed": progress.embed_s,
                "commit": sink.stats.commit_seconds,
            },
            sink=sink.stats.as_dict(),
            table_version=table_version,
            maintenance=maintenance,
            max_error_rate=cfg.max_error_rate,
            dedup=dedup,
        )
        # The resolved config (roots, base dir, signature inputs): what queries read to
        # re-decode clips exactly as this run did.
        RunFiles(cfg.db, cfg.table, cfg.s3).write(report, cfg.to_dict())
    return report
