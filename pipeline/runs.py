"""A table's runs: the run directory `<db>/_vidcat/<table>/runs/` and the typed run report.

:class:`RunFiles` is the only code that knows where run files live: it writes each run's
resolved config and report (redacted) and reads the latest run's decode settings back, so
queries re-decode clips exactly as the pipeline did. :class:`RunReport` is what one run
did, and knows the job's exit code.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow.fs as pafs

from . import schema
from .storage import S3Config, filesystem_for, read_json, write_json
from .uris import redact_uri, redact_values

logger = logging.getLogger(__name__)

#: Exit codes of the jobs (part of the documented contract, docs/table-schema.md).
EXIT_OK = 0
EXIT_FAILED = 1  # unexpected error (crash, cluster unavailable)
EXIT_INVALID_INPUT = 2  # invalid manifest, arguments or table schema: nothing was embedded
EXIT_TOO_MANY_ERRORS = 3  # finished, but the failure rate exceeded --max-error-rate
EXIT_LEASE_HELD = 4  # another writer holds the table's lease: nothing was done
EXIT_CHECK_FAILED = 5  # `vidcat check` found a broken invariant

#: `DecodeConfig` fields of a run that decide which frames a clip gets or whether its decode
#: succeeds: a re-decode must use the run's values, not the defaults. The other fields are
#: local to the process that decodes (roots and base dir are read apart, the S3 endpoint,
#: temp dir and test hooks are the reader's own).
RUN_DECODE_FIELDS = (
    *("num_frames", "size", "clip_seconds", "clip_overlap_s", "decoder", "timeout_s"),
    *("memory_limit_mb", "max_width", "max_height", "max_duration_s", "max_bytes"),
    "max_attempts",
    "thumbnail_size",
    "sampling",
)


@dataclass
class Counts:
    """What happened to the manifest's videos (docs/table-schema.md, `counts`)."""

    videos_in_manifest: int = 0
    new: int = 0
    changed: int = 0
    retried: int = 0
    skipped: int = 0
    deleted: int = 0
    videos_processed: int = 0
    clips_embedded: int = 0
    failed_by_status: dict[str, int] = field(default_factory=dict)
    failed: int = 0

    @property
    def videos_embedded(self) -> int:
        return self.videos_processed - self.failed

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "videos_embedded": self.videos_embedded}


@dataclass
class RunReport:
    """One run's outcome; :meth:`to_dict` is the JSON contract of docs/table-schema.md."""

    run_id: str
    mode: str
    started_at: datetime
    finished_at: datetime
    manifest: dict[str, Any]
    table: str
    model: str
    signature: str
    counts: Counts
    #: `wall`, `decode`, `embed`, `commit`.
    seconds: dict[str, float]
    sink: dict[str, Any]
    table_version: int
    #: What post-run maintenance did, `{"error": ...}` when it failed, None when skipped.
    maintenance: dict[str, Any] | None
    max_error_rate: float
    #: The near-duplicate pass (`--dedup`): its report, `{"error": ...}` when it failed,
    #: None when not asked for.
    dedup: dict[str, Any] | None = None
    schema_version: str = schema.SCHEMA_VERSION
    #: Where the report was written (set by :meth:`RunFiles.write`; not in the file).
    report_uri: str | None = None

    @property
    def error_rate(self) -> float:
        processed = self.counts.videos_processed
        return self.counts.failed / processed if processed else 0.0

    @property
    def tag(self) -> str | None:
        return (self.maintenance or {}).get("tag")

    @property
    def recall(self) -> dict[str, Any] | None:
        """Recall@k per query kind of the table's searches after maintenance: measured by
        the index build or retrain it made, or the stored calibration it kept (`stored`)."""
        index = (self.maintenance or {}).get("index") or {}
        recall = index.get("recall")
        return recall if recall and "error" not in recall else None

    @property
    def exit_code(self) -> int:
        if any(part and "error" in part for part in (self.maintenance, self.dedup)):
            return EXIT_FAILED  # the data is committed; the upkeep after it failed
        if self.error_rate > self.max_error_rate:
            return EXIT_TOO_MANY_ERRORS
        return EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        wall = self.seconds.get("wall", 0.0)
        report = {
            "run_id": self.run_id,
            "schema_version": self.schema_version,
            "mode": self.mode,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "manifest": self.manifest,
            "table": self.table,
            "model": self.model,
            "signature": self.signature,
            "counts": self.counts.to_dict(),
            "error_rate": self.error_rate,
            "seconds": self.seconds,
            "throughput": {
                "videos_per_s": self.counts.videos_processed / wall if wall else 0.0,
                "clips_per_s": self.counts.clips_embedded / wall if wall else 0.0,
            },
            "sink": self.sink,
            "table_version": self.table_version,
            "maintenance": self.maintenance,
            "dedup": self.dedup,
            "tag": self.tag,
            "recall": self.recall,
            "exit_code": self.exit_code,
        }
        if self.report_uri is not None:
            report["report_uri"] = self.report_uri
        return report

    def summary(self) -> str:
        """A few human lines for the end of a job's log."""
        c = self.counts
        wall = self.seconds.get("wall", 0.0)
        lines = [
            f"run {self.run_id} ({self.mode}): {c.videos_processed} videos processed, "
            f"{c.clips_embedded} clips embedded, {c.failed} failed, {c.skipped} skipped, "
            f"{c.deleted} deleted in {wall:.1f}s "
            f"({c.videos_processed / wall if wall else 0.0:.1f} videos/s)",
        ]
        if c.failed_by_status:
            failures = ", ".join(f"{k}={v}" for k, v in c.failed_by_status.items())
            lines.append(f"failures: {failures}")
        if self.recall:
            k = self.recall.get("k", 10)
            kinds = ("text", "video", "similar")
            shown = ", ".join(
                f"{kind} {self.recall[kind][f'recall@{k}']:.3f}"
                for kind in kinds
                if kind in self.recall
            )
            lines.append(f"search recall@{k}: {shown}")
        lines.append(f"report: {self.report_uri or '-'}")
        return "\n".join(lines)


def new_run_id(kind: str = "") -> str:
    """`YYYYMMDDTHHMMSSZ-xxxxxx` (UTC now, random suffix), with `-kind` for other jobs."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    return f"{stamp}-{kind}" if kind else stamp


class RunFiles:
    """The files of one table's runs: `<db>/_vidcat/<table>/runs/<run_id>.{config,report}.json`.

    Args:
        db_uri: the table's database (local directory, `file://` or `s3://`).
        table: the embeddings table.
        s3: endpoint settings for a database on S3.
    """

    def __init__(self, db_uri: str, table: str, s3: S3Config | None = None) -> None:
        self.db_uri, self.table, self.s3 = db_uri, table, s3 or S3Config()
        #: `<db>/_vidcat/<table>`: everything vidcat keeps beside the table's data.
        self.table_dir = f"{db_uri.rstrip('/')}/_vidcat/{table}"
        self.runs_dir = f"{self.table_dir}/runs"

    def config_uri(self, run_id: str) -> str:
        return f"{self.runs_dir}/{run_id}.config.json"

    def report_uri(self, run_id: str) -> str:
        return f"{self.runs_dir}/{run_id}.report.json"

    def write(self, report: RunReport, config: dict[str, Any]) -> None:
        """Write the run's resolved config and its report, both redacted (a credential in
        a URI never lands in the run files), and set `report.report_uri`."""
        self.write_config(report.run_id, config)
        write_json(self.report_uri(report.run_id), redact_values(report.to_dict()), self.s3)
        report.report_uri = self.report_uri(report.run_id)

    def write_config(self, run_id: str, config: dict[str, Any]) -> None:
        """Write a run's resolved config (`RunConfig.to_dict()`), redacted."""
        write_json(self.config_uri(run_id), redact_values(config), self.s3)

    def run_ids(self, kind: str = "config") -> list[str]:
        """Ids of the runs that wrote a `kind` (`config` or `report`) file, oldest first."""
        fs, path = filesystem_for(self.runs_dir, self.s3)
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        suffix = f".{kind}.json"
        return sorted(i.base_name[: -len(suffix)] for i in infos if i.base_name.endswith(suffix))

    def reports(self) -> list[dict[str, Any]]:
        """Every run report, oldest first."""
        return [read_json(self.report_uri(i), self.s3) for i in self.run_ids("report")]

    def latest(self, kind: str = "config") -> dict[str, Any] | None:
        """The newest run's `kind` file (`config` or `report`), None when there is none."""
        ids = self.run_ids(kind)
        if not ids:
            return None
        uri = self.config_uri(ids[-1]) if kind == "config" else self.report_uri(ids[-1])
        return read_json(uri, self.s3)

    def latest_decode_settings(self) -> dict[str, Any] | None:
        """Decode settings of the latest run, as keyword arguments of `DecodeConfig`.

        The frame count, frame size and clip windows reproduce the clips; the decoder, the
        timeout, memory cap, size limits and attempts (:data:`RUN_DECODE_FIELDS`) decide
        whether a decode succeeds as it did in the run; `base_dir` and `allowed_roots`
        locate and admit its URIs; `s3` is the run's endpoint. None when no readable run
        config exists (logged).
        """
        try:
            config = self.latest("config")
            if config is None:
                return None
            decode = config["decode"]
            return {
                **{k: decode[k] for k in RUN_DECODE_FIELDS if k in decode},
                "allowed_roots": tuple(decode.get("allowed_roots") or ()),
                "base_dir": decode.get("base_dir"),
                "s3": S3Config(**config["s3"]),
            }
        except (OSError, KeyError, TypeError, ValueError) as exc:
            logger.warning(
                "cannot read the run config under %s: %s", redact_uri(self.runs_dir), exc
            )
            return None
