"""`vidcat`: one command line for every job (`vidcat <command> --help` for each).

Each subcommand runs the same code as `python jobs/<module>.py`, which stays the entry
point for `ray job submit`. A command's module is imported only when it runs, so
`vidcat query` never loads Ray.
"""

from __future__ import annotations

import importlib
import sys

#: command → (module in `jobs`, one line of help).
COMMANDS = {
    "embed": ("embed_catalog", "embed a catalog's videos into LanceDB (the nightly job)"),
    "query": ("query", "search a table by text, by catalog video or by video file"),
    "index": ("build_index", "(re)build the ANN and scalar indices of a table"),
    "rollback": ("rollback", "list refresh tags, or restore every catalog table to one"),
    "lease": ("lease", "show who holds a table's write lease, or break it"),
    "check": ("check_table", "verify a catalog's tables against their contract (and repair)"),
    "serve": ("serve", "serve a table's search API and page over HTTP (read only)"),
    "thumbnails": ("thumbnails", "make thumbnails for clips that have none (a backfill)"),
    "dedup": ("find_duplicates", "find near-duplicate clips and videos (<table>_duplicates)"),
    "sample-catalog": ("make_sample_catalog", "write a synthetic catalog and its manifest"),
    "demo": ("demo", "make the sample catalog, embed it and search it"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: vidcat <command> [options]   (vidcat <command> --help for its options)",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(usage(), file=sys.stderr)
        print(f"\nerror: unknown command {command!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"jobs.{COMMANDS[command][0]}")
    result = module.main(rest, prog=f"vidcat {command}")
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
