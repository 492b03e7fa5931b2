"""jobs/build_index.py and jobs/rollback.py on a table they cannot open: a clear error."""

from __future__ import annotations

import lancedb
import pytest

from jobs import build_index as build_index_job
from jobs import rollback as rollback_job
from pipeline import schema


@pytest.fixture
def old_table(tmp_path):
    """A table written under another vidcat schema version."""
    db = str(tmp_path / "db")
    old = schema.embeddings_schema().with_metadata({schema.SCHEMA_VERSION_KEY: b"0"})
    lancedb.connect(db).create_table("videos", schema=old)
    return db


@pytest.mark.parametrize(
    "job, args",
    [
        (build_index_job, []),
        (rollback_job, ["--list"]),
        (rollback_job, ["--to", "refresh-20260101T000000Z"]),
    ],
)
def test_jobs_exit_2_on_a_table_of_another_schema_version(old_table, capsys, job, args):
    assert job.main(["--db", old_table, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: table 'videos' in ") and "schema version '0'" in err
    assert len(err.splitlines()) == 1
