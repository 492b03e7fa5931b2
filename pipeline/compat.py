"""Workarounds for the pinned LanceDB and Ray versions, each named with the version it is for.

Every piece of code that exists only because of how a library version behaves lives here,
so moving a pin (`pyproject.toml`) means reading this one module: each entry says what the
version does, what we do instead, and when it can go. `tests/test_compat.py` checks that
the installed versions are the ones named in :data:`VERIFIED`, and that each behaviour a
workaround relies on still holds.

LanceDB 0.40:

1. :func:`sql_string` — `Expr.to_sql()` leaves a quote after a backslash unescaped
   (`x\\'y`), so SQL built from expressions breaks on such ids; filters we spell as text
   use standard SQL quoting (`''`), which LanceDB's parser takes.
2. :func:`delete_matching` — `count_rows` takes only SQL text (see 1), and a `delete` that
   matches nothing still commits a new version: count with a filtered read first.
3. :func:`compact` — `Table.optimize()` without `cleanup_older_than` also deletes every
   version older than 7 days, and fails outright when one of them is tagged.
4. :func:`tune_vector_query` — under a prefilter every partition up to `maximum_nprobes`
   is probed (a filtered 1M-row query 7x slower): pin both to `nprobes`; HNSW refuses a
   beam narrower than the candidates it returns (`ef >= k * refine_factor`); quantized
   indices report their internal distance unless a refine step re-ranks with full vectors.
5. :func:`retry_transient` — a commit whose request fails in transport (a connection reset,
   a 503 on the manifest write) is not retried by Lance's object-store client, which
   retries only requests it can repeat safely; the writes vidcat makes are idempotent
   (upsert on the key, delete by key, create-or-open), so it repeats them itself, a
   bounded number of times, on transient storage errors only.
6. (design note, `pipeline.sink.LanceSink._replace_videos`) — `merge_insert(...)
   .when_not_matched_by_source_delete(filter)` scans the whole target table (1-6 s per
   chunk at 1M rows against 0.1-0.2 s for the upsert), so a video's clips are replaced by
   an upsert and a keyed delete, two commits.

9. :func:`scan_batches` — a query's `to_batches()` materializes the whole result before
   the first batch: reading 1M embeddings (2 GiB) peaked at 4.8 GiB RSS, against 2.9 GiB
   through pylance's scanner, which streams (measured on `benchmarks/dedup.py`'s table).
   The scanner is used when pylance is installed (it is a dev dependency and in the
   image through lancedb); the query is the fallback.

Ray 2.60:

7. :func:`actor_retry_args` — actor restarts and call retries are set only through
   `ray_remote_args` of `map_batches`, deprecated for removal in 2.64 with no replacement
   named yet.
8. :func:`dataset_from_refs` — `ray.data.from_arrow_refs` runs a remote task per block to
   read metadata the driver already has; the logical plan is built from internals instead.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: The versions these workarounds were written and tested against (major.minor).
VERIFIED = {"lancedb": "0.40", "ray": "2.60"}


# ---- LanceDB 0.40 -----------------------------------------------------------------------


def sql_string(value: str) -> str:
    """`value` as a standard SQL string literal (`'` doubled), for filters spelled as text."""
    return "'" + value.replace("'", "''") + "'"


def select_rows(table: Any, where: Any, columns: list[str]) -> Any:
    """All rows matching `where` (an expression), `columns` only, as an Arrow table."""
    return table.search().where(where).select(columns).limit(None).to_arrow()


def delete_matching(table: Any, where: Any, count_column: str) -> int:
    """Delete rows matching `where` (a `lancedb.expr.Expr`); returns how many there were.

    Counting first avoids a new table version when nothing matches (the common case). The
    count is a filtered read of `count_column`, not `count_rows`, so every filter stays an
    expression object whatever the ids hold (entries 1 and 2 above).
    """
    count = len(select_rows(table, where, [count_column]))
    if count:
        retry_transient(lambda: table.delete(where), "delete")
    return count


#: Errors of the object store that a repeat may cure (Lance wraps them as text).
_TRANSIENT = re.compile(
    r"error sending request|HTTP error|connection (reset|closed|refused)|timed? ?out|"
    r"Service ?Unavailable|SlowDown|InternalError|Internal Server Error|\b50[0234]\b",
    re.IGNORECASE,
)


def is_transient(exc: BaseException) -> bool:
    """Whether a storage error may go away on its own (a 5xx, a reset, a timeout)."""
    return isinstance(exc, RuntimeError | OSError | ValueError) and bool(
        _TRANSIENT.search(str(exc))
    )


def retry_transient(fn: Callable[[], T], what: str, attempts: int = 5) -> T:
    """`fn()`, repeated on transient storage errors with exponential backoff (entry 5).

    Only for idempotent writes: repeating one whose first try did land must not change the
    outcome (an upsert on the key, a delete by key).
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = min(5.0, 0.2 * 2 ** (attempt - 1))
            first = str(exc).splitlines()[0][:200]
            logger.warning(
                "%s failed (%s), try %d of %d in %.1f s", what, first, attempt + 1, attempts, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def upsert(table: Any, rows: Any, key: str) -> None:
    """Insert or replace `rows` by `key` (idempotent: repeated on transient errors)."""
    retry_transient(
        lambda: (
            table.merge_insert(key)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(rows)
        ),
        f"upsert on {key}",
    )


def scan_batches(table: Any, columns: list[str], where: str | None, batch_size: int):
    """Stream `columns` of the rows matching the SQL filter `where` (entry 9)."""
    try:
        dataset = table.to_lance()
    except ImportError:  # no pylance: the query, which materializes first
        query = table.search().select(columns).limit(None)
        return (query.where(where) if where else query).to_batches(batch_size)
    return dataset.to_batches(columns=columns, filter=where, batch_size=batch_size)


#: "Delete no version" for `optimize` (entry 3 above).
KEEP_ALL_VERSIONS = timedelta(days=365 * 100)


def compact(table: Any) -> None:
    """Compact the table's files and fold new rows into its indices; delete no version."""
    retry_transient(lambda: table.optimize(cleanup_older_than=KEEP_ALL_VERSIONS), "compaction")


def tune_vector_query(
    builder: Any, k: int, nprobes: int, ef: int | None, refine_factor: int | None
) -> Any:
    """Apply the ANN search parameters so that LanceDB 0.40 does what they say (entry 4)."""
    builder = builder.nprobes(nprobes)
    if ef is not None:
        builder = builder.ef(max(ef, k * (refine_factor or 1)))
    if refine_factor is not None:
        builder = builder.refine_factor(refine_factor)
    return builder


# ---- Ray 2.60 ---------------------------------------------------------------------------


def actor_retry_args(retries: int) -> dict[str, int]:
    """`map_batches` keyword arguments for actor restarts and call retries (-1: unbounded;
    entry 7)."""
    return {"max_restarts": retries, "max_task_retries": retries}


def dataset_from_refs(refs: list, metadata: list) -> Any:
    """A dataset of blocks already in the object store, with metadata known in the driver.

    `ray.data.from_arrow_refs` runs one remote task per block just to read row counts and
    the schema back, and on a quiet cluster the first such task starts a worker process
    (~1.2 CPU s measured on the 2-core dev VM). This builds the logical plan that
    `ray.data.from_blocks` builds, from refs (entry 8). If the internals move, the public
    call is the fallback.
    """
    import ray

    try:
        from ray.data._internal.logical.interfaces import LogicalPlan
        from ray.data._internal.logical.operators import FromBlocks
        from ray.data._internal.stats import DatasetStats
        from ray.data.context import DataContext
        from ray.data.dataset import MaterializedDataset
    except ImportError:  # a Ray outside the pinned range
        logger.warning("Ray Data internals moved: metadata of %d blocks read remotely", len(refs))
        return ray.data.from_arrow_refs(refs)
    context = DataContext.get_current().copy()
    stats = DatasetStats(metadata={"FromBlocks": metadata}, parent=None)
    return MaterializedDataset(LogicalPlan(FromBlocks(refs, metadata), context), context, stats)
