"""The table contract, verified: what `vidcat check` reports and what maintenance repairs.

The lease (:mod:`pipeline.lease`) keeps a second vidcat writer out; this module is the
defence behind it, for anything else that writes a table (an older vidcat, a hand-made
backfill, a bug). :func:`check_catalog` reads every catalog table once and lists each
broken invariant with counts and examples; :func:`repair_duplicates` removes duplicate
keys, keeping each key's newest row, in one commit per table.

Invariants (docs/table-schema.md):

* keys are unique: `clip_id` in the embeddings, vision-token and near-duplicates tables,
  `video_id` in the errors table; and `clip_id == "{video_id}#{clip_index:05d}"`;
* no video is both embedded and failed with an error row *older* than its clips (the writer
  clears a video's error row when it embeds; a *newer* error beside older clips is the
  documented failure after an earlier success, counted but not a violation);
* every embedding is finite and unit-norm;
* given a manifest, every one of its videos has clips or an error row;
* every `refresh-*` tag of a side table is on the embeddings table too (runs tag all their
  tables at once), and every `refresh-*` tag was set by a run whose report names it.

Not violations, reported under `info`: near-duplicates rows whose clip is gone or was
re-embedded since the dedup run that wrote them (`duplicates_rows_stale`; searches ignore
them and the next dedup run replaces them, see docs/table-schema.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import schema
from .compat import retry_transient
from .db import catalog_tables
from .runs import RunFiles
from .storage import S3Config

logger = logging.getLogger(__name__)

_ROW_ID = "_rowid"
_BATCH = 65_536
#: Row ids per delete (a SQL `IN` list): duplicates of one table in one commit, unless more.
_DELETE_IDS = 50_000
_EXAMPLES = 10
#: How far an embedding's L2 norm may be from 1 (float32 rounding of a normalized vector,
#: computed in bfloat16 on GPUs, stays within 1e-2).
NORM_TOLERANCE = 1e-2


@dataclass
class CheckReport:
    """Violations by invariant (`count` and `examples` each), and facts that are not."""

    violations: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, name: str, count: int, examples: list[Any]) -> None:
        if count:
            self.violations[name] = {"count": int(count), "examples": examples[:_EXAMPLES]}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": self.violations, "info": self.info}


def _query(table, columns: list[str], row_id: bool = False):
    query = table.search().select(columns).limit(None)
    return query.with_row_id(True) if row_id else query


def _read(table, columns: list[str], row_id: bool = False) -> pa.Table:
    """Whole key-sized columns (tens of MB at 1M rows)."""
    return _query(table, columns, row_id).to_arrow()


def _duplicates(keys: pa.ChunkedArray | pa.Array) -> tuple[int, list[str]]:
    """Keys that occur more than once: how many, and the first few."""
    counts = pa.table({"k": keys}).group_by("k").aggregate([("k", "count")])
    dup = counts.filter(pc.greater(counts["k_count"], 1))
    return len(dup), sorted(dup["k"].to_pylist())[:_EXAMPLES]


def check_catalog(
    db_uri: str,
    table: str = "videos",
    s3: S3Config | None = None,
    manifest_ids: pa.Array | None = None,
) -> CheckReport:
    """Verify every invariant of a catalog's tables (module docstring); reads only.

    Args:
        manifest_ids: the `video_id`s of a manifest whose every row must be accounted for.

    Raises:
        DatabaseNotFound, StoreError, SchemaVersionError: the tables cannot be read.
    """
    s3 = s3 or S3Config()
    report = CheckReport()
    tables = catalog_tables(db_uri, table, s3.storage_options())
    clips = _read(tables[table], [schema.CLIP_ID, schema.VIDEO_ID, schema.CLIP_INDEX,
                                  schema.EMBEDDED_AT])  # fmt: skip
    report.info["clips"] = len(clips)
    report.add("duplicate clip_id in " + table, *_duplicates(clips[schema.CLIP_ID]))
    expected = [
        schema.clip_id(v, i)
        for v, i in zip(
            clips[schema.VIDEO_ID].to_pylist(), clips[schema.CLIP_INDEX].to_pylist(), strict=True
        )
    ]
    wrong = [c for c, e in zip(clips[schema.CLIP_ID].to_pylist(), expected, strict=True) if c != e]
    report.add("clip_id is not {video_id}#{clip_index:05d}", len(wrong), wrong)
    _check_embeddings(tables[table], report)

    errors_name = schema.errors_table_name(table)
    errors = (
        _read(tables[errors_name], [schema.VIDEO_ID, schema.FAILED_AT])
        if errors_name in tables
        else pa.table({schema.VIDEO_ID: pa.array([], pa.string())})
    )
    report.info["failed_videos"] = len(errors)
    report.add("duplicate video_id in " + errors_name, *_duplicates(errors[schema.VIDEO_ID]))
    if len(errors):
        newest = clips.group_by(schema.VIDEO_ID).aggregate([(schema.EMBEDDED_AT, "max")])
        both = newest.join(errors, schema.VIDEO_ID, join_type="inner")
        stale = both.filter(pc.greater(both[f"{schema.EMBEDDED_AT}_max"], both[schema.FAILED_AT]))
        report.info["failed_after_an_earlier_success"] = len(both) - len(stale)
        report.add(
            "embedded and failed, with the error older than the clips",
            len(stale),
            sorted(stale[schema.VIDEO_ID].to_pylist()),
        )
    tokens_name = schema.vision_tokens_table_name(table)
    if tokens_name in tables:
        tokens = _read(tables[tokens_name], [schema.CLIP_ID])
        report.add("duplicate clip_id in " + tokens_name, *_duplicates(tokens[schema.CLIP_ID]))
    dup_name = schema.duplicates_table_name(table)
    if dup_name in tables:
        dup = _read(tables[dup_name], [schema.CLIP_ID, schema.EMBEDDED_AT])
        report.add("duplicate clip_id in " + dup_name, *_duplicates(dup[schema.CLIP_ID]))
        now = pc.index_in(dup[schema.CLIP_ID], clips[schema.CLIP_ID])
        same = pc.equal(pc.take(clips[schema.EMBEDDED_AT], now), dup[schema.EMBEDDED_AT])
        report.info["duplicates_rows"] = len(dup)
        fresh = int(pc.fill_null(same, False).to_numpy(zero_copy_only=False).sum())
        report.info["duplicates_rows_stale"] = len(dup) - fresh
    if manifest_ids is not None:
        known = pa.concat_arrays(
            [clips[schema.VIDEO_ID].combine_chunks(), errors[schema.VIDEO_ID].combine_chunks()]
        )
        ids = pc.unique(manifest_ids)
        missing = ids.filter(pc.invert(pc.is_in(ids, value_set=known)))
        report.info["manifest_videos"] = len(ids)
        report.add(
            "manifest videos with neither clips nor an error row",
            len(missing),
            sorted(missing.to_pylist()),
        )
    _check_tags(tables, table, RunFiles(db_uri, table, s3), report)
    return report


def _check_embeddings(table, report: CheckReport) -> None:
    bad_ids: list[str] = []
    bad = 0
    for batch in _query(table, [schema.CLIP_ID, schema.EMBEDDING]).to_batches(_BATCH):
        column = batch.column(schema.EMBEDDING)
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(batch), -1)
        finite = np.isfinite(values).all(axis=1)
        norms = np.linalg.norm(np.where(np.isfinite(values), values, 0), axis=1)
        wrong = (
            ~finite
            | (np.abs(norms - 1) > NORM_TOLERANCE)
            | column.is_null().to_numpy(zero_copy_only=False)
        )
        if wrong.any():
            bad += int(wrong.sum())
            ids = batch.column(schema.CLIP_ID).to_pylist()
            bad_ids += [ids[i] for i in np.flatnonzero(wrong)[:_EXAMPLES]]
    report.add("embedding not finite or not unit-norm", bad, bad_ids)


def _check_tags(tables: Mapping[str, Any], table: str, runs: RunFiles, report: CheckReport):
    from .lifecycle import TAG_PREFIX

    main_tags = set(tables[table].tags.list())
    report.info["tags"] = len(main_tags)
    for name, t in tables.items():
        if name == table:
            continue
        orphans = sorted(
            n for n in t.tags.list() if n.startswith(TAG_PREFIX) and n not in main_tags
        )
        report.add(f"refresh tags of {name} missing on {table}", len(orphans), orphans)
    try:
        tagged = {r.get("tag") for r in runs.reports()}
    except OSError as exc:
        report.info["run_reports"] = f"unreadable: {exc}"
        return
    unknown = sorted(n for n in main_tags if n.startswith(TAG_PREFIX) and n not in tagged)
    report.add("refresh tags no run report names", len(unknown), unknown)


def repair_duplicates(tables: Mapping[str, Any], table: str) -> dict[str, int]:
    """Delete duplicate keys of every catalog table, keeping each key's newest row (latest
    `embedded_at` / `failed_at`, then the last written), one commit per table that needs
    it; returns rows removed per table. The caller holds the table's lease."""
    keys = {
        table: (schema.CLIP_ID, schema.EMBEDDED_AT),
        schema.errors_table_name(table): (schema.VIDEO_ID, schema.FAILED_AT),
        schema.vision_tokens_table_name(table): (schema.CLIP_ID, None),
        schema.thumbnails_table_name(table): (schema.CLIP_ID, None),
        schema.duplicates_table_name(table): (schema.CLIP_ID, None),
    }
    removed = {}
    for name, handle in tables.items():
        if name not in keys:
            continue
        key, stamp = keys[name]
        rows = _read(handle, [key] + ([stamp] if stamp else []), row_id=True)
        if len(rows) == len(pc.unique(rows[key])):
            continue
        order = [(key, "ascending")] + ([(stamp, "descending")] if stamp else [])
        ranked = rows.sort_by([*order, (_ROW_ID, "descending")])
        keys_sorted = ranked[key].combine_chunks()
        first = np.ones(len(ranked), bool)
        first[1:] = pc.not_equal(keys_sorted[1:], keys_sorted[:-1]).to_numpy(zero_copy_only=False)
        drop = ranked[_ROW_ID].filter(pa.array(~first)).to_pylist()
        for lo in range(0, len(drop), _DELETE_IDS):
            where = f"{_ROW_ID} IN ({', '.join(map(str, drop[lo : lo + _DELETE_IDS]))})"
            retry_transient(lambda h=handle, w=where: h.delete(w), f"remove duplicates of {name}")
        removed[name] = len(drop)
        logger.warning("removed %d duplicate %s rows of %s (kept the newest)", len(drop), key, name)
    return removed
