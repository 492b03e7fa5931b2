"""Structured filters: parsed, checked against the schema, written as SQL that LanceDB runs
the way the filter says (values are literals, never SQL)."""

from __future__ import annotations

import datetime as dt

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from pipeline import schema
from pipeline.filters import (
    MAX_FILTERS,
    MAX_IN_VALUES,
    Filter,
    FilterError,
    filterable_columns,
    to_sql,
)

META = (
    pa.field("caption", pa.string()),
    pa.field("views", pa.int64()),
    pa.field("rating", pa.float32()),
    pa.field("public", pa.bool_()),
    pa.field("shot_at", pa.timestamp("us", tz="UTC")),
    pa.field("day", pa.date32()),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("Odd name", pa.string()),
    pa.field("bad`name", pa.string()),
)
SCHEMA = schema.embeddings_schema(META)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rows = []
    captions = ["50% off_sale", "it's red", None, "plain", "back\\slash"]
    for i, caption in enumerate(captions):
        rows.append(
            {
                schema.CLIP_ID: f"v{i}#0",
                schema.VIDEO_ID: f"v{i}",
                schema.CLIP_INDEX: 0,
                schema.CLIP_START_S: 0.0,
                schema.CLIP_END_S: float(i),
                schema.URI: f"v{i}.mp4",
                schema.EMBEDDING: np.ones(schema.EMBED_DIM, np.float32).tolist(),
                schema.MODEL: "m",
                schema.SIGNATURE: "s",
                schema.NUM_FRAMES: 4,
                schema.FRAME_INDICES: [0],
                schema.DECODER: "pyav",
                schema.CONTENT_VERSION: None,
                schema.EMBEDDED_AT: dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                "caption": caption,
                "views": i * 10,
                "rating": i / 2,
                "public": i % 2 == 0,
                "shot_at": dt.datetime(2025, 1, 1 + i, tzinfo=dt.UTC),
                "day": dt.date(2025, 1, 1 + i),
                "tags": ["a"],
                "Odd name": f"odd{i}",
                "bad`name": "x",
            }
        )
    db = lancedb.connect(str(tmp_path_factory.mktemp("filters")))
    return db.create_table("videos", pa.Table.from_pylist(rows, schema=SCHEMA))


def matching(table, *filters: str) -> list[str]:
    sql = to_sql(list(filters), table.schema)
    rows = table.search().where(sql).select([schema.VIDEO_ID]).to_arrow()
    return sorted(rows[schema.VIDEO_ID].to_pylist())


def test_filterable_columns():
    columns = filterable_columns(SCHEMA)
    assert columns["caption"] == "string" and columns["views"] == "int"
    assert columns["rating"] == "float" and columns["public"] == "bool"
    assert columns["shot_at"] == "timestamp" and columns["day"] == "date"
    assert columns["Odd name"] == "string"
    for hidden in ("embedding", "signature", "model", "frame_indices", "tags", "bad`name"):
        assert hidden not in columns
    assert {"video_id", "clip_start_s", "uri"} <= set(columns)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["caption:eq:it's red"], ["v1"]),
        (["caption:contains:%"], ["v0"]),  # a literal %, not a wildcard
        (["caption:contains:_"], ["v0"]),
        (["caption:contains:\\"], ["v4"]),
        (["caption:prefix:50%"], ["v0"]),
        (["caption:null"], ["v2"]),
        (["caption:notnull", "views:ge:30"], ["v3", "v4"]),
        (["views:in:0,20,40"], ["v0", "v2", "v4"]),
        (["rating:gt:0.75"], ["v2", "v3", "v4"]),
        (["public:eq:TRUE"], ["v0", "v2", "v4"]),
        (["shot_at:lt:2025-01-03T00:00:00+00:00"], ["v0", "v1"]),
        (["shot_at:ge:2025-01-03T01:00:00+01:00"], ["v2", "v3", "v4"]),
        (["day:eq:2025-01-04"], ["v3"]),
        (["Odd name:eq:odd1"], ["v1"]),
        (["caption:eq:x' OR '1'='1"], []),  # quotes stay inside the literal
        (["clip_end_s:le:1"], ["v0", "v1"]),
        ([], ["v0", "v1", "v2", "v3", "v4"]),
    ],
)
def test_filters_select_what_they_say(table, filters, expected):
    if not filters:
        assert to_sql([], table.schema) is None
        return
    assert matching(table, *filters) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("views", "is 'column:op:value'"),
        ("views:eq", "needs a value"),
        ("caption:null:x", "takes no value"),
        ("nope:eq:1", "no filterable column 'nope'"),
        ("embedding:eq:1", "no filterable column 'embedding'"),
        ("bad`name:eq:x", "no filterable column"),
        ("views:contains:1", "a int column takes"),
        ("public:gt:true", "a bool column takes"),
        ("views:eq:1.5", "is not a int"),
        ("views:eq:true", "is not a int"),
        ("rating:lt:nan", "is not a float"),
        ("public:eq:yes", "is not a bool"),
        ("shot_at:gt:yesterday", "is not a timestamp"),
        ("day:eq:2025-13-01", "is not a date"),
        ("caption:contains:", "needs a non-empty text"),
        ("views:like:1", "takes eq"),
    ],
)
def test_bad_filters_say_why(text, message):
    with pytest.raises(FilterError, match=message.replace("(", r"\(")):
        to_sql([text], SCHEMA)


def test_limits_and_round_trip():
    with pytest.raises(FilterError, match=f"at most {MAX_FILTERS}"):
        to_sql(["views:ge:1"] * (MAX_FILTERS + 1), SCHEMA)
    with pytest.raises(FilterError, match=f"1 to {MAX_IN_VALUES}"):
        to_sql([f"views:in:{','.join(['1'] * (MAX_IN_VALUES + 1))}"], SCHEMA)
    for text in ("caption:eq:a:b:c", "views:in:1,2", "caption:null"):
        assert Filter.parse(text).to_text() == text
    assert Filter.parse("caption:eq:a:b").value == "a:b"
