"""The repository is self-contained: its tests, benchmarks and scripts read nothing beside it."""

from __future__ import annotations

import re

import fixtures

#: What reaching out of the checkout looked like before the fixtures moved in.
_OUTSIDE = re.compile(r"\.\./shared|parents\[[2-9]\]|/work/shared")


def test_fixtures_live_in_the_repository():
    for path in fixtures.ALL:
        assert path.is_file(), path
        assert path.resolve().is_relative_to(fixtures.REPO), path


def test_no_code_reads_beside_the_checkout():
    roots = ("tests", "benchmarks", "jobs", "pipeline", "models", "infra", ".ci")
    offenders = []
    for root in roots:
        for path in (fixtures.REPO / root).rglob("*"):
            if path.suffix not in (".py", ".sh", ".yaml", "") or not path.is_file():
                continue
            if path == fixtures.REPO / "tests" / "test_repository.py":
                continue
            text = path.read_text(errors="replace")
            offenders += [f"{path}: {m.group(0)}" for m in _OUTSIDE.finditer(text)]
    makefile = (fixtures.REPO / "Makefile").read_text()
    offenders += [f"Makefile: {m.group(0)}" for m in _OUTSIDE.finditer(makefile)]
    assert offenders == []
