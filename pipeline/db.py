"""The LanceDB connection: the one place that connects, lists and opens vidcat's tables.

Readers (queries, reports, checks) go through :func:`open_table`, which never creates
anything: a local database directory that does not exist is an error, not an empty
database (`lancedb.connect` would create it). The writer (:class:`pipeline.sink.LanceSink`)
connects with :func:`connect` and creates its tables itself.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from datetime import timedelta

import lancedb
import pyarrow as pa

from . import schema
from .storage import is_local, local_path
from .uris import redact_text, redact_uri

logger = logging.getLogger(__name__)

#: Letters, digits, `_`, `-` and `.`, not first: `..` or `.hidden` would name a directory
#: outside the database or a hidden one (run files go to `<db>/_vidcat/<table>/`).
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


class TableSchemaError(RuntimeError):
    """An existing table does not have the columns this run writes."""


class SchemaVersionError(TableSchemaError):
    """An existing table was written under another `schema.SCHEMA_VERSION`."""


class DatabaseNotFound(FileNotFoundError):
    """No database (or no such table) at the location given; nothing was created."""


class StoreError(OSError):
    """The database's storage cannot be reached or read (region, credentials, network);
    the message is one short, redacted line, not the object store's nested error text."""


def short_error(exc: BaseException, limit: int = 300) -> str:
    """One redacted line of an error, at most `limit` characters.

    The object store's errors are Rust debug dumps (`Generic { store: .., source: .. }`,
    source file paths) running to kilobytes: keep the leading message and the innermost
    quoted explanation.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r",?\s*/\S+\.rs:\d+:\d+", "", text)  # where in the Rust source it failed
    head, brace, rest = text.partition(" { ")
    if brace:
        quoted = [q for q in re.findall(r'"([^"]*)"', rest) if len(q) >= 8]
        text = head + (": " + quoted[0].split("(")[0].rstrip(": ") if quoted else "")
    text = redact_text(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_table_name(table: str) -> str:
    """`table`, or ValueError when it is not a safe table name."""
    if not isinstance(table, str) or not _TABLE_NAME.match(table):
        raise ValueError(f"invalid table name {table!r}")
    return table


def connect(
    db_uri: str,
    storage_options: Mapping[str, str] | None = None,
    read_consistency_interval: timedelta | None = None,
) -> lancedb.DBConnection:
    """A LanceDB connection (a local database directory is created if missing)."""
    return lancedb.connect(
        db_uri,
        storage_options=dict(storage_options or {}) or None,
        read_consistency_interval=read_consistency_interval,
    )


def table_names(db: lancedb.DBConnection) -> set[str]:
    names, token = set(), None
    while True:
        page = db.list_tables(page_token=token)
        names.update(page.tables)
        if not (token := page.page_token):
            return names


def check_schema(table, expected: pa.Schema | None, shown: str) -> None:
    """Raise unless `table` has this code's schema version (and, given, exactly `expected`'s
    columns and types)."""
    found = (table.schema.metadata or {}).get(schema.SCHEMA_VERSION_KEY)
    if found != schema.SCHEMA_VERSION.encode():
        raise SchemaVersionError(
            f"table {shown} has vidcat schema version {found and found.decode()!r}, this code "
            f"writes version {schema.SCHEMA_VERSION!r}; migrate it or write to a new table"
        )
    if expected is None:
        return
    have = {f.name: f.type for f in table.schema}
    want = {f.name: f.type for f in expected}
    missing, extra = sorted(want.keys() - have), sorted(have.keys() - want)
    changed = sorted(n for n in want.keys() & have if want[n] != have[n])
    if missing or extra or changed:
        raise TableSchemaError(
            f"table {shown} does not match this run (metadata columns differ?): "
            f"missing {missing}, unexpected {extra}, different types {changed}"
        )


def check_database_exists(db_uri: str) -> None:
    """Raise :class:`DatabaseNotFound` when a local database directory is missing (or is a
    file); remote databases are prefixes, which exist as soon as a table does."""
    if not is_local(db_uri):
        return
    path = local_path(db_uri)
    if not os.path.exists(path):
        raise DatabaseNotFound(f"no database at {redact_uri(db_uri)}: the directory does not exist")
    if not os.path.isdir(path):
        raise DatabaseNotFound(
            f"no database at {redact_uri(db_uri)}: it is a file, not a LanceDB directory"
        )


def open_table(
    db_uri: str,
    table: str,
    storage_options: Mapping[str, str] | None = None,
    read_consistency_interval: timedelta | None = None,
) -> lancedb.table.Table:
    """Open an existing vidcat table after checking its schema version; creates nothing.

    Args:
        read_consistency_interval: how stale reads may be; `timedelta(0)` makes every read
            see the latest committed version (a long-lived searcher sees nightly refreshes).

    Raises:
        DatabaseNotFound: no database there, or no such table in it.
        SchemaVersionError: the table was written by another schema version.
        StoreError: the storage cannot be reached or read.
    """
    check_database_exists(db_uri)
    shown = f"{table!r} in {redact_uri(db_uri)}"
    try:
        db = connect(db_uri, storage_options, read_consistency_interval)
        names = table_names(db)
        handle = db.open_table(table) if table in names else None
    except Exception as exc:  # LanceDB raises RuntimeError/ValueError/OSError for storage
        logger.debug("opening %s failed", shown, exc_info=True)
        raise StoreError(f"cannot open table {shown}: {short_error(exc)}") from exc
    if handle is None:
        raise DatabaseNotFound(f"no table {shown}")
    check_schema(handle, None, shown)
    return handle


def catalog_tables(
    db_uri: str, table: str, storage_options: Mapping[str, str] | None = None
) -> dict[str, lancedb.table.Table]:
    """The catalog's tables that exist, by name: the embeddings table (required), then its
    errors, vision-token, thumbnail and near-duplicates tables (maintenance tags and cleans
    every one of them; a rollback restores every one).

    Raises:
        DatabaseNotFound: no database, or no embeddings table; see :func:`open_table`.
    """
    out = {table: open_table(db_uri, table, storage_options)}
    for name in (
        schema.errors_table_name(table),
        schema.vision_tokens_table_name(table),
        schema.thumbnails_table_name(table),
        schema.duplicates_table_name(table),
    ):
        try:
            out[name] = open_table(db_uri, name, storage_options)
        except DatabaseNotFound:
            continue
    return out
