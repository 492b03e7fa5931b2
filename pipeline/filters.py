"""Structured filters: (column, operator, value) checked against a table's schema, then
written as one LanceDB SQL expression.

Clients that must not send SQL (the HTTP API, shared URLs) describe a filter as data; this
module checks each column exists and may be filtered, that the operator suits the column's
type and that the value parses as that type, and only then writes the SQL, quoting every
literal itself (:func:`pipeline.compat.sql_string`). The text form, used in URLs and on the
command line, is `column:op:value` (the value is everything after the second colon; `in`
takes a comma-separated list; `null` / `notnull` take no value).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from . import schema
from .compat import sql_string

#: Pipeline columns a filter may use besides the manifest's metadata columns.
PIPELINE_FILTER_COLUMNS = (
    schema.VIDEO_ID,
    schema.CLIP_INDEX,
    schema.CLIP_START_S,
    schema.CLIP_END_S,
    schema.URI,
    schema.DECODER,
    schema.EMBEDDED_AT,
)
#: Pipeline columns that are never filterable (vectors, bookkeeping).
_HIDDEN = frozenset(schema.embeddings_schema().names) - set(PIPELINE_FILTER_COLUMNS)
#: Column names usable in SQL without ambiguity (others are not offered).
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .\-]{0,127}$")
#: Most values an `in` filter may list, and most filters one query may combine.
MAX_IN_VALUES = 100
MAX_FILTERS = 16

_COMPARE = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_STRING_OPS = ("contains", "prefix")
_NULL_OPS = ("null", "notnull")
OPERATORS = (*_COMPARE, "in", *_STRING_OPS, *_NULL_OPS)


class FilterError(ValueError):
    """A filter that does not fit the table; the message says why."""


@dataclass(frozen=True)
class Filter:
    column: str
    op: str
    value: Any = None

    @classmethod
    def parse(cls, text: str) -> Filter:
        """`column:op:value` (the value may contain colons; `null`/`notnull` take none)."""
        if not isinstance(text, str):
            raise FilterError(f"a filter is text 'column:op:value', got {text!r}")
        column, sep, rest = text.partition(":")
        op, sep2, value = rest.partition(":")
        if not sep or not column or not op:
            raise FilterError(f"a filter is 'column:op:value', got {text!r}")
        if op in _NULL_OPS:
            if value:
                raise FilterError(f"filter {text!r}: {op!r} takes no value")
            return cls(column, op)
        if not sep2:
            raise FilterError(f"filter {text!r}: {op!r} needs a value ('column:op:value')")
        return cls(column, op, value.split(",") if op == "in" else value)

    def to_text(self) -> str:
        if self.op in _NULL_OPS:
            return f"{self.column}:{self.op}"
        value = ",".join(map(str, self.value)) if self.op == "in" else self.value
        return f"{self.column}:{self.op}:{value}"


def _kind(dtype: pa.DataType) -> str | None:
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_floating(dtype):
        return "float"
    if pa.types.is_timestamp(dtype):
        return "timestamp"
    if pa.types.is_date(dtype):
        return "date"
    return None  # lists, structs, binary: not filterable


def operators_for(kind: str) -> tuple[str, ...]:
    """The operators a column of this kind takes."""
    if kind == "string":
        return OPERATORS
    if kind == "bool":
        return ("eq", "ne", *_NULL_OPS)
    return (*_COMPARE, "in", *_NULL_OPS)


def filterable_columns(table_schema: pa.Schema) -> dict[str, str]:
    """Columns a filter may use, with their kind (`string`, `int`, `float`, `bool`,
    `timestamp`, `date`): the metadata columns and a few of the pipeline's, in table order."""
    out = {}
    for field in table_schema:
        kind = _kind(field.type)
        if kind and field.name not in _HIDDEN and _NAME.match(field.name) and "`" not in field.name:
            out[field.name] = kind
    return out


def _literal(kind: str, value: Any, what: str) -> str:
    """The SQL literal of `value` as a `kind`, or FilterError."""
    text = value if isinstance(value, str) else str(value)
    try:
        if kind == "string":
            if not isinstance(value, str):
                raise ValueError
            return sql_string(value)
        if kind == "bool":
            lowered = text.strip().lower()
            if lowered not in ("true", "false"):
                raise ValueError
            return lowered
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return str(int(text.strip()))
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            number = float(text.strip())
            if not math.isfinite(number):
                raise ValueError
            return repr(number)
        if kind == "timestamp":
            stamp = dt.datetime.fromisoformat(text.strip())
            if stamp.tzinfo is not None:
                stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
            return f"TIMESTAMP '{stamp.isoformat(sep=' ')}'"
        if kind == "date":
            return f"DATE '{dt.date.fromisoformat(text.strip()).isoformat()}'"
    except (ValueError, OverflowError):
        pass
    raise FilterError(f"{what}: {value!r} is not a {kind}")


def _quote(column: str) -> str:
    return column if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", column) else f"`{column}`"


def _like_pattern(value: str, prefix_only: bool) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%" if prefix_only else f"%{escaped}%"


def to_sql(filters: Iterable[Filter | str], table_schema: pa.Schema) -> str | None:
    """One SQL expression (the filters joined by AND), or None for no filters.

    Raises:
        FilterError: an unknown or unfilterable column, an operator its type does not take,
            a value that is not of its type, or too many filters or `in` values.
    """
    filters = [f if isinstance(f, Filter) else Filter.parse(f) for f in filters]
    if len(filters) > MAX_FILTERS:
        raise FilterError(f"at most {MAX_FILTERS} filters, got {len(filters)}")
    columns = filterable_columns(table_schema)
    parts = []
    for f in filters:
        what = f"filter {f.to_text()!r}" if isinstance(f.column, str) else f"filter {f!r}"
        kind = columns.get(f.column) if isinstance(f.column, str) else None
        if kind is None:
            raise FilterError(
                f"{what}: no filterable column {f.column!r} (filterable: "
                f"{', '.join(columns) or 'none'})"
            )
        if f.op not in operators_for(kind):
            raise FilterError(
                f"{what}: a {kind} column takes {', '.join(operators_for(kind))}, not {f.op!r}"
            )
        name = _quote(f.column)
        if f.op in _NULL_OPS:
            parts.append(f"{name} IS {'NOT ' if f.op == 'notnull' else ''}NULL")
        elif f.op == "in":
            listed = isinstance(f.value, Sequence) and not isinstance(f.value, str)
            values = f.value if listed else None
            if not values or len(values) > MAX_IN_VALUES:
                raise FilterError(f"{what}: 'in' takes 1 to {MAX_IN_VALUES} values")
            parts.append(f"{name} IN ({', '.join(_literal(kind, v, what) for v in values)})")
        elif f.op in _STRING_OPS:
            if not isinstance(f.value, str) or not f.value:
                raise FilterError(f"{what}: {f.op!r} needs a non-empty text")
            pattern = sql_string(_like_pattern(f.value, f.op == "prefix"))
            parts.append(f"{name} LIKE {pattern} ESCAPE '\\'")
        else:
            parts.append(f"{name} {_COMPARE[f.op]} {_literal(kind, f.value, what)}")
    return " AND ".join(f"({p})" for p in parts) or None
