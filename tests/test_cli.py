"""The `vidcat` command line as an analyst uses it: one entry point, machine output alone on
stdout, `error: …` and exit 2 for anything that cannot run, and reading never creates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import cli

pytestmark = pytest.mark.slow

VIDCAT = os.path.join(os.path.dirname(sys.executable), "vidcat")
REPO = Path(__file__).resolve().parents[1]


def vidcat(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    return subprocess.run(
        [VIDCAT, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def test_help_lists_every_command(tmp_path):
    done = vidcat("--help", cwd=tmp_path)
    assert done.returncode == 0
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert listed == set(cli.COMMANDS)
    for command in cli.COMMANDS:
        sub = vidcat(command, "--help", cwd=tmp_path)
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: vidcat {command}"), command
    assert vidcat("nope", cwd=tmp_path).returncode == 2


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A 3-video sample catalog (relative URIs) embedded by `vidcat embed`."""
    root = tmp_path_factory.mktemp("cli")
    made = vidcat(
        "sample-catalog",
        *("--out", "catalog", "--num-videos", "3", "--seconds", "1", "--size", "64x48"),
        cwd=root,
    )
    assert made.returncode == 0, made.stderr
    manifest = made.stdout.strip()  # the manifest alone on stdout
    assert manifest == str(root / "catalog" / "manifest.parquet")
    done = vidcat(
        *("embed", "--manifest", manifest, "--db", "db", "--model", "tiny-random"),
        "--no-maintenance",
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


def test_embed_prints_only_its_json_report_on_stdout(embedded):
    """`vidcat embed ... | jq` works: the report is the whole of stdout; the human summary
    and the log are on stderr."""
    _, done = embedded
    report = json.loads(done.stdout)
    assert report["counts"]["videos_embedded"] == 3 and report["exit_code"] == 0
    assert f"report: {report['report_uri']}" in done.stderr
    assert "progress" in done.stderr or "plan:" in done.stderr


def test_query_results_carry_uris_that_open_as_given(embedded):
    """The manifest's URIs are relative to its directory; results give the file itself."""
    root, _ = embedded
    done = vidcat(
        *("query", "similar", "sample-000000", "--db", "db", "--format", "json"), cwd=root
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 2
    for row in rows:
        assert os.path.isabs(row["uri"]) and os.path.isfile(row["uri"]), row["uri"]
        assert row["uri"] == str(root / "catalog" / "videos" / f"{row['video_id']}.mp4")


def test_a_query_imports_only_what_it_uses(embedded):
    """A query needs neither Ray nor transformers; `similar` not even torch."""
    root, _ = embedded
    probe = (
        "import json, sys\n"
        "from jobs import query\n"
        "code = query.main(sys.argv[1:])\n"
        "heavy = [m for m in ('ray', 'transformers', 'torch') if m in sys.modules]\n"
        "print(json.dumps(heavy), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )

    def imported(*args: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", probe, *args, "--db", "db", "--format", "json"],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stderr.strip().splitlines()[-1])

    assert imported("similar", "sample-000000") == []
    assert imported("text", "a red circle") == ["torch"]


def _fails_cleanly(done: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, one `error: …` line on stderr, nothing on stdout, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    assert len(lines[-1]) < 400, lines[-1]
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def test_errors_are_one_line_exit_2_and_reading_creates_nothing(embedded, tmp_path):
    root, _ = embedded
    db = str(root / "db")
    manifest = str(root / "catalog" / "manifest.parquet")
    closed = "http://127.0.0.1:9"  # discard port: nothing listens
    missing = tmp_path / "mistyped-db"
    cases = [
        (("query", "text", "red", "--db", str(missing)), ("no database at",)),
        (("query", "similar", "x", "--db", manifest), ("it is a file",)),
        (("index", "--db", str(missing)), ("no database at",)),
        (("rollback", "--list", "--db", str(missing)), ("no database at",)),
        (("rollback", "--to", "refresh-x", "--db", manifest), ("it is a file",)),
        (("query", "text", "red", "--db", db, "--k", "2147483648"), ("k must be",)),
        (
            ("query", "text", "red", "--db", "s3://b/db", "--s3-endpoint-url", "minio:9000"),
            ("invalid S3 endpoint",),
        ),
        (("index", "--db", "s3://b/db", "--s3-endpoint-url", "minio:9000"), ("S3 endpoint",)),
        (
            ("query", "similar", "x", "--db", "s3://b/db", "--s3-endpoint-url", closed),
            ("cannot open table",),
        ),
        (
            (
                "query",
                "similar",
                "x",
                "--db",
                "s3://b/db",
                "--s3-endpoint-url",
                closed,
                "--s3-region",
                "eu-west-1",
            ),
            ("cannot open table",),
        ),
        (
            ("rollback", "--list", "--db", "s3://b/db", "--s3-endpoint-url", closed),
            ("cannot open table",),
        ),
        (
            (
                "query",
                "similar",
                "sample-000000",
                "--db",
                db,
                "--where",
                "category = 'circle'; category = 'square'",
            ),
            ("one SQL expression",),
        ),
        (("query", "similar", "sample-000000", "--db", db, "--rerank"), ("text queries only",)),
        (("query", "video", "x.mp4", "--db", db, "--rerank"), ("text queries only",)),
    ]
    for args, needles in cases:
        _fails_cleanly(vidcat(*args, cwd=tmp_path, timeout=120), *needles)
    assert not missing.exists()  # a mistyped --db was not created by any of them
    assert sorted(os.listdir(tmp_path)) == []


def test_a_semicolon_inside_a_string_literal_is_not_a_second_statement(embedded):
    root, _ = embedded
    done = vidcat(
        *("query", "similar", "sample-000000", "--db", "db", "--format", "json"),
        *("--where", "caption != 'a; b'"),
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 2
