"""The HTTP API and the page, as an ASGI app (FastAPI on Starlette).

FastAPI because the API is its own documentation: each route's parameters and response
model make the OpenAPI schema (`/api/openapi.json`) that integrators read and generate
clients from, and its query-parameter validation turns a bad `k` into a 400 before any
work. Starlette underneath serves the page's static files and answers Range requests on
local videos. Nothing here writes to the catalog.

Routes (the contract; see `docs/serve.md`):

    GET  /                                 the page (static files under /static)
    GET  /api/health                       liveness; 200 once ready, else 503
    GET  /api/search?q=&k=&offset=&rerank=&mode=&filter=&where=&dedup=&recall=
    GET  /api/similar?clip_id=|video_id=&k=&offset=&filter=&where=&dedup=&recall=
    POST /api/search/video, /api/search/image   (the file as the request body; same
                                           k, offset, filter, where, dedup, recall)

Every search answers with `search`: the kind, the parameters it used, their expected
recall@10 on this table (null: not measured) and where they came from (`pipeline.recall`).
    GET  /api/clips/{clip_id}/thumbnail    image/jpeg
    GET  /api/clips/{clip_id}/media        the clip's video (Range requests)
    GET  /api/table                        schema, counts, filters, indices, last run
    GET  /metrics                          Prometheus
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations, some of
# them local to `create_app`, at run time.
import hmac
import logging
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import StreamingResponse

from ..filters import FilterError
from ..query import QueryError, check_recall
from .media import UploadRejected, content_type, parse_range, s3_body, stage_upload
from .service import ModelUnavailable, NotFound, SearchService, is_loopback
from .work import Overloaded, Timeout

logger = logging.getLogger(__name__)

TOKEN_COOKIE = "vidcat_token"
WEB = resources.files(__package__) / "web"
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
_PUBLIC = ("/", "/api/health", "/favicon.ico")
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "script-src 'self'; style-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


# ---- response models (the OpenAPI schema) -----------------------------------------------
class Result(BaseModel):
    clip_id: str
    video_id: str
    clip_index: int
    clip_start_s: float | None
    clip_end_s: float | None
    score: float = Field(description="cosine similarity; in hybrid mode the fused rank score")
    cosine: float | None = Field(None, description="hybrid mode: the cosine similarity")
    rerank_score: float | None = Field(None, description="match-head logit (rerank=true)")
    group_size: int | None = Field(
        None,
        description="dedup=true: clips in this result's near-duplicate group (1: none)",
    )
    uri: str | None = Field(description="the video's URI; null for paths the server hides")
    metadata: dict[str, Any]
    thumbnail_url: str
    media_url: str


class SearchUsed(BaseModel):
    kind: str = Field(description="text, video or similar: whose calibration was used")
    nprobes: int | None = None
    ef: int | None = None
    refine_factor: int | None = None
    exact: bool | None = Field(None, description="an exact scan (no index)")
    expected_recall: float | None = Field(
        description="recall@10 measured for these parameters on this table; null: unknown"
    )
    source: str = Field(
        description="calibrated, override (the request's recall), preset (no calibration), "
        "no index, or filter leaves N rows (scanned exactly)"
    )


class Results(BaseModel):
    results: list[Result]
    took_ms: float
    next_offset: int | None = Field(description="offset of the next page; null at the end")
    search: SearchUsed | None = Field(None, description="what the search used")


class Health(BaseModel):
    status: str
    ready: bool
    model: str
    table: str


def create_app(service: SearchService) -> FastAPI:
    """The app over a started :class:`SearchService` (closed when the app shuts down)."""
    config = service.config

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="vidcat",
        summary="Search a video catalog embedded with InternVideo2: text, image, video, "
        "similar clips; thumbnails and clip playback.",
        version="1",
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    metrics = service.metrics

    # ---- middleware (the last added runs first) ---------------------------------------
    @app.middleware("http")
    async def guard(request: Request, call_next):
        start = time.perf_counter()
        path = request.url.path
        if config.token and not _public(path) and not _authorized(request, config.token):
            response = _error(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        status = response.status_code
        metrics.requests.labels(template, request.method, str(status)).observe(
            time.perf_counter() - start
        )
        if status >= 400:
            metrics.errors.labels(template, str(status)).inc()
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if not path.startswith("/api/docs"):
            response.headers.setdefault("Content-Security-Policy", _CSP)
        if path.startswith("/api/") and "cache-control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        return response

    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Range"],
        )
    hosts = list(config.allowed_hosts)
    if "*" not in hosts and (is_loopback(config.host) or hosts):
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*_LOOPBACK_NAMES, *hosts])

    # ---- errors --------------------------------------------------------------------------
    def handler(status: int, retry: bool = False):
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            headers = {"Retry-After": "1"} if retry else None
            return _error(status, service.scrub(str(exc)), headers)

        return handle

    app.add_exception_handler(QueryError, handler(400))
    app.add_exception_handler(FilterError, handler(400))
    app.add_exception_handler(NotFound, handler(404))
    app.add_exception_handler(Overloaded, handler(429, retry=True))
    app.add_exception_handler(Timeout, handler(503, retry=True))
    app.add_exception_handler(ModelUnavailable, handler(503))

    @app.exception_handler(UploadRejected)
    async def upload_rejected(_request: Request, exc: UploadRejected) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return _error(400, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error: %s", exc)
        return _error(500, "internal error (logged by the server)")

    # ---- the page ----------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page(token: str | None = None) -> Response:
        if token is not None:  # a link with ?token=: set the cookie, drop it from the URL
            if not config.token or not hmac.compare_digest(token, config.token):
                return _error(401, "wrong token")
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(
                TOKEN_COOKIE, token, httponly=True, samesite="strict", secure=False, path="/"
            )
            return response
        return FileResponse(str(WEB / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(WEB)), name="static")

    # ---- API ---------------------------------------------------------------------------
    K = Annotated[int, Query(ge=1, le=config.max_k, description="results per page")]
    Offset = Annotated[int, Query(ge=0, le=10_000, description="results to skip")]
    Filters = Annotated[
        list[str],
        Query(description="structured filter `column:op:value` (repeatable; all must hold)"),
    ]
    Where = Annotated[
        str | None, Query(description="raw SQL, only on a server started with --allow-sql")
    ]
    Dedup = Annotated[
        bool,
        Query(
            description="one result per near-duplicate group (its best-scoring clip, with "
            "group_size); 400 when the catalog has no near-duplicates table (vidcat dedup)"
        ),
    ]
    Recall = Annotated[
        str | None,
        Query(
            max_length=16,
            description="recall@10 to aim for: a number in (0, 1], fast (0.8), balanced (the "
            "table's calibrated target, the default) or exact (a full scan); the fastest "
            "calibrated parameters expected to reach it",
        ),
    ]

    @app.get("/api/health", response_model=Health)
    async def health() -> JSONResponse:
        body = {
            "status": "ok",
            "ready": service.ready,
            "model": service.model_state,
            "table": config.table,
        }
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get("/api/search", response_model=Results)
    async def search(
        q: Annotated[str, Query(min_length=1, max_length=1000, description="query text")],
        k: K = 24,
        offset: Offset = 0,
        rerank: bool = False,
        mode: Literal["vector", "hybrid"] = "vector",
        filter: Filters = [],  # noqa: B006 (FastAPI copies defaults)
        where: Where = None,
        dedup: Dedup = False,
        recall: Recall = None,
    ) -> dict[str, Any]:
        start = time.perf_counter()
        sql = service.where(filter, where)
        rows, used = await service.text(q, k, offset, sql, rerank, mode, dedup, _recall(recall))
        return _page(rows, k, offset, start, used)

    @app.get("/api/similar", response_model=Results)
    async def similar(
        clip_id: str | None = None,
        video_id: str | None = None,
        k: K = 24,
        offset: Offset = 0,
        filter: Filters = [],  # noqa: B006
        where: Where = None,
        dedup: Dedup = False,
        recall: Recall = None,
    ) -> dict[str, Any]:
        start = time.perf_counter()
        sql = service.where(filter, where)
        rows, used = await service.similar(
            clip_id, video_id, k, offset, sql, dedup, _recall(recall)
        )
        return _page(rows, k, offset, start, used)

    async def upload(
        request: Request, kind: str, k: int, offset: int, filters, where, dedup, recall
    ):
        start = time.perf_counter()
        sql = service.where(filters, where)  # a bad filter is refused before the upload
        recall = check_recall(_recall(recall))  # and so is a bad recall
        if dedup:  # and a dedup the catalog cannot do
            await service.check_dedup()
        length = request.headers.get("content-length")
        staged = await stage_upload(
            request.stream(),
            kind,
            config.max_upload_bytes,
            int(length) if length and length.isdigit() else None,
            service.upload_dir,
        )
        try:
            rows, used = await service.media_query(
                staged.path, kind == "image", k, offset, sql, dedup, recall
            )
        finally:
            staged.close()
        return _page(rows, k, offset, start, used)

    upload_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    }

    @app.post("/api/search/video", response_model=Results, openapi_extra=upload_body)
    async def search_video(
        request: Request,
        k: K = 24,
        offset: Offset = 0,
        filter: Filters = [],  # noqa: B006
        where: Where = None,
        dedup: Dedup = False,
        recall: Recall = None,
    ) -> dict[str, Any]:
        """Clips like an uploaded video clip (MP4/MOV, WebM/MKV, AVI, MPEG; the body is the
        file; its content decides its type, and the isolated decoder decodes it)."""
        return await upload(request, "video", k, offset, filter, where, dedup, recall)

    @app.post("/api/search/image", response_model=Results, openapi_extra=upload_body)
    async def search_image(
        request: Request,
        k: K = 24,
        offset: Offset = 0,
        filter: Filters = [],  # noqa: B006
        where: Where = None,
        dedup: Dedup = False,
        recall: Recall = None,
    ) -> dict[str, Any]:
        """Clips like an uploaded still (PNG, JPEG, WebP, BMP; the body is the file),
        embedded through the model's one-frame image path."""
        return await upload(request, "image", k, offset, filter, where, dedup, recall)

    @app.get("/api/clips/{clip_id:path}/thumbnail", response_class=Response)
    async def thumbnail(clip_id: str) -> Response:
        data = await service.thumbnail(clip_id)
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
        )

    @app.get("/api/clips/{clip_id:path}/media", response_class=Response)
    async def media(clip_id: str, request: Request) -> Response:
        source = await service.media(clip_id)
        kind = content_type(source.name)
        if source.path:
            return FileResponse(
                source.path, media_type=kind, headers={"Cache-Control": "private, max-age=600"}
            )
        wanted = parse_range(request.headers.get("range"), source.size)
        if wanted == "unsatisfiable":
            return Response(status_code=416, headers={"Content-Range": f"bytes */{source.size}"})
        start, end = wanted or (0, source.size - 1)
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Length": str(end - start + 1),
            "Cache-Control": "private, max-age=600",
        }
        if wanted:
            headers["Content-Range"] = f"bytes {start}-{end}/{source.size}"
        body = s3_body(service._s3(), source.bucket, source.key, start, end)
        return StreamingResponse(body, 206 if wanted else 200, headers, media_type=kind)

    @app.get("/api/table")
    async def table() -> dict[str, Any]:
        return await service.table_info()

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _public(path: str) -> bool:
    return path in _PUBLIC or path.startswith("/static/")


def _authorized(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(TOKEN_COOKIE)
    return cookie is not None and hmac.compare_digest(cookie.encode(), token.encode())


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _page(
    rows: list[dict[str, Any]], k: int, offset: int, start: float, used: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "results": rows,
        "took_ms": round((time.perf_counter() - start) * 1000, 2),
        "next_offset": offset + k if len(rows) == k and offset + 2 * k <= 10_000 else None,
        "search": used,
    }


def _recall(value: str | None) -> float | str | None:
    """The `recall` parameter as a number when it is one; names (and mistakes, which the
    searcher refuses with a 400) as given."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` on uvicorn in a background thread (a notebook, a test, a benchmark);
    yields its base URL (`port` 0: a free one) and stops it on exit."""
    import threading

    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="vidcat-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{host}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
