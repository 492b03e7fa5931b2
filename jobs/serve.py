"""Serve a catalog's search API and page over HTTP (read only).

    vidcat serve --db demo_out/lancedb                       # http://127.0.0.1:8080/
    vidcat serve --db s3://bucket/lancedb --checkpoint s3://models/iv2-1b.pt \\
        --host 0.0.0.0 --port 8080 --token "$VIDCAT_SERVE_TOKEN"

Loopback by default; any other address requires a bearer token (`--token` or the
VIDCAT_SERVE_TOKEN environment variable): API clients send `Authorization: Bearer …`, and
a browser opens `http://host:port/?token=…` once (the token becomes a cookie). The API is
described at `/api/openapi.json`; `docs/serve.md` has the contract. Exit 2 when the table
cannot be opened or an option is invalid.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import uvicorn

from jobs.common import UsageError, add_s3_arguments, fail, s3_config, setup_logging
from jobs.query import model_spec, recall_arg
from pipeline.models import MODEL_NAMES
from pipeline.query import CatalogSearch, QueryError
from pipeline.serve import SearchService, ServeConfig
from pipeline.serve.app import create_app

TOKEN_ENV = "VIDCAT_SERVE_TOKEN"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="LanceDB directory or s3:// prefix")
    p.add_argument("--table", default="videos")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    p.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"bearer token every API call must carry (default: ${TOKEN_ENV}); required "
        "when --host is not loopback",
    )
    model = p.add_argument_group("query model (as for vidcat query)")
    model.add_argument("--model", choices=MODEL_NAMES, default=None)
    model.add_argument("--checkpoint", default=None, help="1B weights: path, s3:// URI, hub id")
    model.add_argument("--tokenizer", default=None, help="vocab.txt or its directory, or hub id")
    model.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    model.add_argument(
        "--no-model",
        action="store_true",
        help="serve without a model: similar-clip searches, thumbnails and media only",
    )
    model.add_argument(
        "--lazy-model", action="store_true", help="load the model on the first query"
    )
    p.add_argument(
        "--recall",
        default=None,
        help="recall@10 searches aim for when a request names none: a number in (0, 1] or "
        "fast, balanced (the table's calibrated target, default), exact",
    )
    safety = p.add_argument_group("limits and access")
    safety.add_argument(
        "--allow-sql", action="store_true", help="accept raw SQL filters (where=) from clients"
    )
    safety.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        help="origin allowed to call the API from a browser (repeatable; default: none)",
    )
    safety.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help="Host header name accepted besides localhost (repeatable; '*' for any)",
    )
    safety.add_argument(
        "--media-root",
        action="append",
        default=None,
        help="local directory clip videos may be served from (repeatable; default: the "
        "allowed roots of the table's latest run)",
    )
    safety.add_argument("--max-upload-mb", type=float, default=64.0)
    safety.add_argument("--max-query-seconds", type=float, default=120.0)
    safety.add_argument("--model-queue", type=int, default=8, help="model jobs that may wait")
    safety.add_argument("--search-workers", type=int, default=4)
    safety.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    add_s3_arguments(p)
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    setup_logging()
    try:
        s3 = s3_config(args)
        probe = CatalogSearch(args.db, args.table, storage_options=s3.storage_options())
        spec = None if args.no_model else model_spec(args, probe.embedded_with(), s3)
        config = ServeConfig(
            db=args.db,
            table=args.table,
            model=spec,
            tokenizer=args.tokenizer,
            device=args.device,
            s3=s3,
            host=args.host,
            port=args.port,
            token=args.token or None,
            allow_sql=args.allow_sql,
            cors_origins=tuple(args.cors_origin),
            allowed_hosts=tuple(args.allowed_host),
            media_roots=tuple(os.path.abspath(r) for r in args.media_root)
            if args.media_root
            else None,
            max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
            max_query_seconds=args.max_query_seconds,
            model_queue=args.model_queue,
            search_workers=args.search_workers,
            request_timeout_s=args.timeout,
            preload_model=not args.lazy_model,
            recall=recall_arg(args.recall),
        )
        service = SearchService(config)
    except (QueryError, UsageError, ValueError) as exc:
        return fail(exc)
    server = _Server(
        uvicorn.Config(
            create_app(service),
            host=args.host,
            port=args.port,
            log_level="info",
            access_log=False,  # /metrics has the counts; access lines would bury the log
            timeout_graceful_shutdown=5,
        )
    )
    with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind (and logs why)
        server.run()
    if not server.started:
        return fail(f"could not serve on {args.host}:{args.port} (uvicorn logged why above)")
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, printing the URL it listens on once it does (port 0 included)."""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"vidcat serve: http://{shown}:{port}/", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
