"""pipeline/compat.py: the versions its workarounds are for, and the behaviour they rely on."""

from __future__ import annotations

from importlib.metadata import version

import lancedb
import pyarrow as pa
from lancedb.expr import col

from pipeline import compat


def test_the_installed_versions_are_the_ones_the_workarounds_were_written_for():
    """Moving a pin (pyproject.toml) fails here first: re-read pipeline/compat.py, check
    each workaround still applies, then update VERIFIED."""
    for package, verified in compat.VERIFIED.items():
        installed = ".".join(version(package).split(".")[:2])
        assert installed == verified, f"{package} {installed}: re-check pipeline/compat.py"


def test_ids_with_quotes_and_backslashes_filter_exactly(tmp_path):
    """Entry 1: `sql_string` quotes what `Expr.to_sql()` mis-escapes; entry 2: the
    expression-based delete counts and removes exactly the matching rows, and a delete that
    matches nothing commits no version."""
    odd = ["x\\'y", "it's", "back\\slash", "plain"]
    table = lancedb.connect(str(tmp_path)).create_table("t", pa.table({"video_id": odd}))
    for value in odd:
        rows = table.search().where(f"video_id = {compat.sql_string(value)}").to_arrow()
        assert rows["video_id"].to_pylist() == [value]
    version = table.version
    assert compat.delete_matching(table, col("video_id").isin(["nope"]), "video_id") == 0
    assert table.version == version  # no empty commit
    assert compat.delete_matching(table, col("video_id").isin(odd[:2]), "video_id") == 2
    assert sorted(table.to_arrow()["video_id"].to_pylist()) == sorted(odd[2:])


def test_compact_keeps_every_version(tmp_path):
    """Entry 3: compaction deletes no version (a tagged old one would make it fail)."""
    table = lancedb.connect(str(tmp_path)).create_table("t", pa.table({"a": [0]}))
    for i in range(1, 4):
        table.add(pa.table({"a": [i]}))
    table.tags.create("keep", 1)
    before = {v["version"] for v in table.list_versions()}
    compat.compact(table)
    assert before <= {v["version"] for v in table.list_versions()}
    assert table.count_rows() == 4


def test_scan_batches_streams_the_filtered_rows_of_the_query(tmp_path, monkeypatch):
    """Entry 9: the scanner returns exactly the rows the query would, quoted filter and
    all, in batches; without pylance the query itself is used."""
    odd = ["it's", "plain", "it's", "other"]
    table = lancedb.connect(str(tmp_path)).create_table(
        "t", pa.table({"s": odd, "n": list(range(4))})
    )
    where = f"s = {compat.sql_string(odd[0])}"
    batches = list(compat.scan_batches(table, ["n"], where, 1))
    assert [b.num_rows for b in batches] == [1, 1]
    assert [b["n"][0].as_py() for b in batches] == [0, 2]
    assert len(table.search().where(where).to_arrow()) == 2

    def no_pylance():
        raise ImportError("pylance")

    monkeypatch.setattr(table, "to_lance", no_pylance)
    rows = pa.Table.from_batches(list(compat.scan_batches(table, ["n"], where, 1)))
    assert sorted(rows["n"].to_pylist()) == [0, 2]
