"""Table lifecycle after each run: compaction, index upkeep, version cleanup, tags, rollback.

Every refresh ends with :func:`maintain` (under the run's table lease):

0. duplicate keys left by any writer are removed, each key's newest row kept
   (:func:`pipeline.check.repair_duplicates`);
1. the embeddings table's vector index is created once the table is large enough, new rows
   are folded into it by `optimize()` (so they are not searched by brute force forever),
   and it is retrained when the table outgrew it (`pipeline.index.update_index`);
2. the new version of every table is tagged `refresh-<UTC timestamp>`; refresh tags older
   than the retention period are dropped (the newest is always kept), so a rollback can
   reach any refresh of the retention window;
3. every table of the catalog (embeddings, errors, vision tokens, thumbnails,
   near-duplicates) is compacted and versions older than the retention period are deleted,
   never a tagged one (:func:`compact_and_clean`).

:func:`rollback` restores every table of the catalog to a tag. The near-duplicates table
comes back as it was at the tag; `vidcat embed --dedup` writes it before maintenance, so
a refresh's tag holds the groups of that refresh's clips. Groups that are stale anyway (a
tag of a run without `--dedup`) are tolerated by searches, which trust a clip's group only
while its `embedded_at` is the one the dedup run saw (:func:`pipeline.dedup.collapse_groups`),
and the next dedup run recomputes them from its saved state, which compares clips by
`clip_id` and `embedded_at`, so clips a rollback changed are compared again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .check import repair_duplicates
from .compat import compact, retry_transient
from .db import catalog_tables, open_table
from .index import IndexConfig, update_index

logger = logging.getLogger(__name__)

TAG_PREFIX = "refresh-"
#: Versions this close to the oldest tagged one are kept by a cleanup (clock skew).
_CLEANUP_MARGIN = timedelta(minutes=1)


@dataclass(frozen=True)
class MaintenanceConfig:
    """Attributes:
    retention: versions and refresh tags older than this are deleted (readers still on an
        older version fail; rollback reaches back this far).
    index: vector/scalar index settings.
    """

    retention: timedelta = timedelta(days=7)
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        if self.retention < timedelta(0):
            raise ValueError("retention must be >= 0")


def tag_name(at: datetime) -> str:
    """`refresh-20261126T021500Z`: sortable, unique per second."""
    return TAG_PREFIX + at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def maintain(
    db_uri: str,
    table: str,
    *,
    storage_options: Mapping[str, str] | None = None,
    config: MaintenanceConfig | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Run the post-refresh upkeep; returns what was done (for the run report)."""
    config = config or MaintenanceConfig()
    start = time.perf_counter()
    tables = catalog_tables(db_uri, table, storage_options)
    report: dict[str, Any] = {"duplicates_removed": repair_duplicates(tables, table)}
    # Index builds and compactions are repeatable: transient storage errors are retried.
    report["index"] = retry_transient(
        lambda: update_index(tables[table], config.index), "index upkeep"
    )
    now = now or datetime.now(UTC)
    # Every table is tagged before any is cleaned, so a failure in the cleanup below never
    # leaves a tag that only some of the catalog's tables have (a partial rollback).
    tag, tagged = _tag_all(tables, now)
    versions = {}
    for name, t in tables.items():
        _drop_expired_tags(t, now - config.retention)
        compact_and_clean(t, config.retention)
        versions[name] = t.version
    report.update(tag=tag, tagged=tagged, versions=versions, seconds=time.perf_counter() - start)
    logger.info("maintenance of %s: tagged %s at %s", table, tag, versions)
    return report


def _tag_all(tables: Mapping[str, Any], now: datetime, attempts: int = 10):
    """Tag every table's current version `refresh-<now>`; `(tag, {table: version})`.

    A tag name is unique per second: when another run took this one (two runs finishing
    in the same second), the next second is tried."""
    for attempt in range(attempts):
        tag = tag_name(now + timedelta(seconds=attempt))
        if any(tag in t.tags.list() for t in tables.values()):
            continue
        tagged = {}
        try:
            for name, t in tables.items():
                t.tags.create(tag, t.version)
                tagged[name] = t.version
        except Exception:  # lost a race for this name: undo ours, try the next second
            for name in tagged:
                with contextlib.suppress(Exception):
                    tables[name].tags.delete(tag)
            if attempt == attempts - 1:
                raise
            continue
        return tag, tagged
    raise RuntimeError(f"no free refresh tag in the {attempts} s after {tag_name(now)}")


def _tag_time(name: str) -> datetime | None:
    try:
        return datetime.strptime(name.removeprefix(TAG_PREFIX), "%Y%m%dT%H%M%SZ").replace(
            tzinfo=UTC
        )
    except ValueError:
        return None


def _drop_expired_tags(t, cutoff: datetime) -> None:
    refresh = sorted(n for n in t.tags.list() if n.startswith(TAG_PREFIX) and _tag_time(n))
    for name in refresh[:-1]:  # the newest refresh tag always stays
        if _tag_time(name) < cutoff:
            t.tags.delete(name)


def compact_and_clean(t, retention: timedelta) -> None:
    """Compact, then delete versions older than `retention` but never a tagged one.

    Lance refuses a cleanup that would reach a tagged version, so the cutoff stops short
    of the oldest tagged version when that one is older than the retention period. It is
    computed after compacting (which can take minutes), just before the cleanup, with a
    margin for the clock of the process that applies it.
    """
    compact(t)
    tagged = {t.tags.get_version(n) for n in t.tags.list()}
    stamps = {v["version"]: v["timestamp"] for v in t.list_versions()}
    older_than = retention
    if tagged & stamps.keys():
        oldest = min(stamps[v] for v in tagged if v in stamps)
        oldest = oldest.astimezone(UTC) if oldest.tzinfo is None else oldest
        age = datetime.now(UTC) - oldest
        older_than = max(retention, age + _CLEANUP_MARGIN)
    # Nothing left to compact: the cleanup.
    retry_transient(lambda: t.optimize(cleanup_older_than=older_than), "version cleanup")


def list_tags(
    db_uri: str, table: str, storage_options: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Tag → version of the embeddings table, oldest first."""
    t = open_table(db_uri, table, storage_options)
    return {name: t.tags.get_version(name) for name in sorted(t.tags.list())}


def rollback(
    db_uri: str, table: str, tag: str, storage_options: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Restore every catalog table to its version tagged `tag`.

    A restore writes a new version equal to the tagged one (history is kept, so a
    rollback can itself be undone). A side table (errors, vision tokens, thumbnails,
    near-duplicates) without the tag did not exist at `tag` and is emptied (a new version
    too): an empty near-duplicates table groups nothing until the next dedup run.

    Raises:
        KeyError: the embeddings table has no such tag.
    """
    tables = catalog_tables(db_uri, table, storage_options)
    if tag not in tables[table].tags.list():
        known = ", ".join(sorted(tables[table].tags.list())) or "none"
        raise KeyError(f"no tag {tag!r} on table {table!r} (tags: {known})")
    restored = {}
    for name, t in tables.items():
        if tag in t.tags.list():
            t.restore(tag)
        else:
            # Every run tags all its tables at once, so a table without the tag did not
            # exist then: emptied, it is as it was (no error rows or vision tokens of
            # later runs, which would describe content the table no longer holds).
            logger.warning("table %s has no tag %s: it did not exist then; emptied", name, tag)
            t.delete("true")
        restored[name] = t.version
    logger.info("rolled back %s to %s: %s", table, tag, restored)
    return restored
