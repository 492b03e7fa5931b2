"""What the server does, without HTTP: searches through bounded queues, result rows as
JSON-ready dicts, thumbnails, where a clip's video bytes are, and the table's description.

Every query goes through :class:`~pipeline.query.CatalogSearch`, the same code the CLI and
notebooks use; this layer adds the queues (model work on one thread by default, searches on
a few), a cache of text embeddings, the filter and SQL policy, and what a response may show.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .. import schema
from ..db import catalog_tables
from ..filters import OPERATORS, Filter, operators_for
from ..index import VECTOR_INDEX_NAME, has_vector_index, vector_index_type
from ..models import ModelSpec
from ..query import COSINE, SEARCH_METADATA_KEY, CatalogSearch, QueryError, check_recall
from ..recall import KINDS
from ..rerank import RERANK_SCORE
from ..runs import RunFiles
from ..storage import S3Config
from ..uris import UriRejected, redact_uri, resolve_uri
from .metrics import Metrics
from .work import LruCache, Stopwatch, WorkQueue

logger = logging.getLogger(__name__)

_FIXED = (
    schema.CLIP_ID,
    schema.VIDEO_ID,
    schema.CLIP_INDEX,
    schema.CLIP_START_S,
    schema.CLIP_END_S,
    "score",
    COSINE,
    RERANK_SCORE,
    schema.GROUP_SIZE,
)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """Settings of `vidcat serve`.

    Attributes:
        db, table: the catalog (read only).
        model, tokenizer, device: the query model (None: only similar-clip searches).
        s3: object-store settings.
        host, port: where to listen. Any host but loopback requires `token`.
        token: bearer token required on every API call (and set as a cookie by `/?token=`).
        allow_sql: accept raw SQL in `where=`; otherwise only structured filters.
        cors_origins: origins allowed to call the API from a browser (none: CORS off).
        allowed_hosts: Host header names accepted besides the loopback names (DNS-rebinding
            guard: a page on another site cannot talk to a loopback server by a name it
            controls); `*` accepts any.
        media_roots: local directories clip videos may be served from; None: the allowed
            roots recorded in the table's latest run config.
        max_upload_bytes, max_query_seconds: upload size and query video duration caps.
        model_workers, model_queue: model threads and jobs that may wait for them.
        search_workers, search_queue: the same for table searches and lookups.
        request_timeout_s: a request's deadline in a queue (503 past it).
        max_k: most results per page.
        text_cache: text embeddings kept (LRU).
        preload_model: load the model at start (readiness waits for it).
        recall: the recall searches aim for when a request names none (`CatalogSearch`'s
            `recall`): None the table's calibrated target; a number in (0, 1], `fast`,
            `balanced` or `exact`.
    """

    db: str
    table: str = "videos"
    model: ModelSpec | None = None
    tokenizer: str | None = None
    device: str = "auto"
    s3: S3Config = field(default_factory=S3Config)
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = field(default=None, repr=False)
    allow_sql: bool = False
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    media_roots: tuple[str, ...] | None = None
    max_upload_bytes: int = 64 << 20
    max_query_seconds: float = 120.0
    model_workers: int = 1
    model_queue: int = 8
    search_workers: int = 4
    search_queue: int = 64
    request_timeout_s: float = 30.0
    max_k: int = 200
    text_cache: int = 1024
    preload_model: bool = True
    recall: float | str | None = None

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"serving on {self.host} (not loopback) needs a token: --token or "
                "VIDCAT_SERVE_TOKEN"
            )
        if self.token is not None and len(self.token) < 16:
            raise ValueError("the token must be at least 16 characters")
        checks = {
            "port must be 0..65535": 0 <= self.port <= 65535,
            "max_upload_bytes must be >= 1024": self.max_upload_bytes >= 1024,
            "max_query_seconds must be > 0": self.max_query_seconds > 0,
            "model_workers and search_workers must be >= 1": min(
                self.model_workers, self.search_workers
            )
            >= 1,
            "model_queue and search_queue must be >= 0": min(self.model_queue, self.search_queue)
            >= 0,
            "request_timeout_s must be > 0": self.request_timeout_s > 0,
            "max_k must be 1..1000": 1 <= self.max_k <= 1000,
        }
        failed = [msg for msg, ok in checks.items() if not ok]
        try:
            check_recall(self.recall)
        except QueryError as exc:
            failed.append(str(exc))
        if failed:
            raise ValueError("; ".join(failed))


class NotFound(LookupError):
    """No such clip (or nothing to show for it). Messages never echo the id: a client
    cannot tell an unknown clip from one whose video the server will not serve."""


_NO_MEDIA = "no such clip, or no video the server may serve for it"


class ModelUnavailable(RuntimeError):
    """The server has no model, or it failed to load."""


@dataclass(frozen=True)
class MediaSource:
    """Where a clip's video bytes are: a local file or an S3 object."""

    name: str
    size: int
    path: str = ""
    bucket: str = ""
    key: str = ""


class SearchService:
    """The server's work, shared by every request."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.searcher = CatalogSearch(
            config.db,
            config.table,
            model=config.model,
            tokenizer=config.tokenizer,
            storage_options=config.s3.storage_options(),
            device=config.device,
            query_max_duration_s=config.max_query_seconds,
            recall=config.recall,
        )
        self.model_queue = WorkQueue(
            "model", config.model_workers, config.model_queue, self.metrics.queue_depth.set
        )
        self.search_queue = WorkQueue("search", config.search_workers, config.search_queue)
        self._text_vectors = LruCache(config.text_cache)
        self.upload_dir = tempfile.mkdtemp(prefix="vidcat-serve-uploads-")  # mode 0700
        self.model_state = "none" if config.model is None else "not loaded"
        self._s3_client = None
        self._s3_lock = threading.Lock()

    # ---- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Load the model in the background when asked to (readiness waits for it)."""
        if self.config.model is None or not self.config.preload_model:
            return
        self.model_state = "loading"
        threading.Thread(target=self._load_model, name="vidcat-model-load", daemon=True).start()

    def _load_model(self) -> None:
        try:
            # Through the model queue: a request arriving meanwhile waits behind the load.
            self.model_queue.run(24 * 3600, self.searcher.embed_text, "warm up")
            self.model_state = "ready"
        except Exception as exc:  # reported by /api/health, not raised
            self.model_state = f"failed: {exc}"
            logger.error("the model did not load: %s", exc)

    @property
    def ready(self) -> bool:
        return self.model_state != "loading"

    def close(self) -> None:
        self.model_queue.close()
        self.search_queue.close()
        self.searcher.close()
        shutil.rmtree(self.upload_dir, ignore_errors=True)

    # ---- searches -----------------------------------------------------------------------
    def where(self, filters: list[str], sql: str | None) -> str | None:
        """The SQL of a request's structured filters, and of its raw `where` when the
        server allows SQL (QueryError otherwise)."""
        if sql is not None and not self.config.allow_sql:
            raise QueryError("raw SQL filters are off on this server: use filter=column:op:value")
        parts = [p for p in (self.searcher.filter_sql([Filter.parse(f) for f in filters]),) if p]
        if sql:
            parts.append(f"({sql})")
        return " AND ".join(parts) or None

    async def text(
        self,
        query: str,
        k: int,
        offset: int = 0,
        where: str | None = None,
        rerank: bool = False,
        mode: str = "vector",
        dedup: bool = False,
        recall: float | str | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """(result rows, what the search used: :meth:`used`)."""
        self._check_page(k, offset)
        recall = check_recall(recall)
        timeout = self.config.request_timeout_s
        if dedup:
            await self.check_dedup()
        if rerank:
            with Stopwatch() as t:
                rows = await self.model_queue.arun(
                    timeout, self._model_call, self.searcher.text, query, k, where, True,
                    offset=offset, mode=mode, dedup=dedup, recall=recall,
                )  # fmt: skip
            self.metrics.model_seconds.labels("rerank").observe(t.seconds)
            return self.rows(rows), self.used(rows)
        vector = await self.text_vector(query)
        with Stopwatch() as t:
            rows = await self.search_queue.arun(
                timeout, self.searcher.text, query, k, where, vector=vector, offset=offset,
                mode=mode, dedup=dedup, recall=recall,
            )  # fmt: skip
        self.metrics.search_seconds.labels(mode).observe(t.seconds)
        return self.rows(rows), self.used(rows)

    async def text_vector(self, query: str) -> np.ndarray:
        """The text's embedding, from the cache or the model queue."""
        if not isinstance(query, str) or not query.strip():
            raise QueryError("the query text is empty")
        key = query.strip()
        vector = self._text_vectors.get(key)
        if vector is not None:
            self.metrics.text_cache_hits.inc()
            return vector
        with Stopwatch() as t:
            vector = await self.model_queue.arun(
                self.config.request_timeout_s, self._model_call, self.searcher.embed_text, key
            )
        self.metrics.model_seconds.labels("text").observe(t.seconds)
        self._text_vectors.put(key, vector)
        return vector

    async def similar(
        self,
        clip_id: str | None,
        video_id: str | None,
        k: int,
        offset: int = 0,
        where: str | None = None,
        dedup: bool = False,
        recall: float | str | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        self._check_page(k, offset)
        recall = check_recall(recall)
        if (clip_id is None) == (video_id is None):
            raise QueryError("give exactly one of clip_id and video_id")
        timeout = self.config.request_timeout_s
        page = {"offset": offset, "dedup": dedup, "recall": recall}
        with Stopwatch() as t:
            if clip_id is not None:
                call = self.searcher.similar_clip
                rows = await self.search_queue.arun(timeout, call, clip_id, k, where, **page)
            else:
                call = self.searcher.similar
                rows = await self.search_queue.arun(timeout, call, video_id, k, where, **page)
        self.metrics.search_seconds.labels("similar").observe(t.seconds)
        return self.rows(rows), self.used(rows)

    async def media_query(
        self,
        path: str,
        still: bool,
        k: int,
        offset: int = 0,
        where: str | None = None,
        dedup: bool = False,
        recall: float | str | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Clips like an uploaded image or video (staged by the caller, who checked that
        a dedup query can run: :meth:`check_dedup`), searched with the `video` kind's
        parameters."""
        self._check_page(k, offset)
        recall = check_recall(recall)
        with Stopwatch() as t:
            vector = await self.model_queue.arun(
                self.config.request_timeout_s,
                self._model_call,
                self.searcher.embed_media,
                path,
                still,
            )
        self.metrics.model_seconds.labels("image" if still else "video").observe(t.seconds)
        with Stopwatch() as t:
            rows = await self.search_queue.arun(
                self.config.request_timeout_s,
                self.searcher.search_vector,
                vector,
                k,
                where,
                offset=offset,
                dedup=dedup,
                kind="video",
                recall=recall,
            )
        self.metrics.search_seconds.labels("vector").observe(t.seconds)
        return self.rows(rows), self.used(rows)

    async def check_dedup(self) -> None:
        """QueryError (a 400) when the catalog has no near-duplicates table, before any
        model work is spent on a query that cannot run."""
        await self.search_queue.arun(self.config.request_timeout_s, self.searcher.dedup_groups)

    def _model_call(self, fn, *args, **kwargs):
        if self.config.model is None:
            raise ModelUnavailable("this server has no model: only similar-clip searches")
        if self.model_state.startswith("failed"):
            raise ModelUnavailable(f"the model is unavailable ({self.model_state})")
        return fn(*args, **kwargs)

    def _check_page(self, k: int, offset: int) -> None:
        if not 1 <= k <= self.config.max_k:
            raise QueryError(f"k must be 1..{self.config.max_k}, got {k}")
        if offset < 0 or offset + k > 10_000:
            raise QueryError(f"offset must be 0..{10_000 - k}, got {offset}")

    # ---- what a response shows ----------------------------------------------------------
    def scrub(self, message: str) -> str:
        """An error message as a client may read it: the database's location and the upload
        directory replaced by names (they are the server's own paths)."""
        db = self.config.db
        for secret, shown in (
            (self.upload_dir, "<upload>"),
            (redact_uri(db), "<db>"),
            (db, "<db>"),
            (os.path.realpath(db) if "://" not in db else db, "<db>"),
        ):
            if secret:
                message = message.replace(secret, shown)
        return message

    def rows(self, table: pa.Table) -> list[dict[str, Any]]:
        """Result rows as JSON-ready dicts: the fixed fields, `metadata`, a safe `uri`,
        and the thumbnail and media URLs."""
        metadata = [n for n in table.column_names if n not in _FIXED and n != schema.URI]
        out = []
        for row in table.to_pylist():
            item = {k: _json(row[k]) for k in _FIXED if k in row}
            item["uri"] = self.shown_uri(row.get(schema.URI))
            item["metadata"] = {k: _json(row[k]) for k in metadata}
            item["thumbnail_url"] = _clip_url(row[schema.CLIP_ID], "thumbnail")
            item["media_url"] = _clip_url(row[schema.CLIP_ID], "media")
            out.append(item)
        return out

    @staticmethod
    def used(table: pa.Table) -> dict[str, Any] | None:
        """What a search used, from its result (`CatalogSearch`'s `vidcat:search`
        metadata): kind, parameters, `expected_recall` (null: unknown) and `source`."""
        raw = (table.schema.metadata or {}).get(SEARCH_METADATA_KEY)
        return json.loads(raw) if raw else None

    def shown_uri(self, uri: str | None) -> str | None:
        """A row's URI as a response may show it: S3 URIs without credentials, local paths
        only inside the media roots (else None)."""
        if not uri:
            return None
        if "://" in uri and not uri.startswith("file://"):
            return redact_uri(uri)
        try:
            self._resolve_local(uri)
        except (UriRejected, NotFound):
            return None
        return uri

    # ---- thumbnails and media -----------------------------------------------------------
    async def thumbnail(self, clip_id: str) -> bytes:
        data = await self.search_queue.arun(
            self.config.request_timeout_s, self.searcher.thumbnail, clip_id
        )
        if not data:
            raise NotFound("no such clip, or no thumbnail for it")
        return data

    async def media(self, clip_id: str) -> MediaSource:
        """Where a clip's video is, if the server may serve it (NotFound otherwise: an
        unknown clip, or a video outside the roots, look the same to a client)."""
        return await self.search_queue.arun(self.config.request_timeout_s, self._media, clip_id)

    def _media(self, clip_id: str) -> MediaSource:
        row = self.searcher.clip(clip_id, [schema.URI])
        if row is None:
            raise NotFound(_NO_MEDIA)
        uri = self.searcher.openable_uri(row[schema.URI])
        try:
            if uri.lower().startswith("s3://"):
                resolved = resolve_uri(uri)
                head = self._s3().head_object(Bucket=resolved.bucket, Key=resolved.key)
                return MediaSource(
                    name=os.path.basename(resolved.key),
                    size=int(head["ContentLength"]),
                    bucket=resolved.bucket,
                    key=resolved.key,
                )
            path = self._resolve_local(row[schema.URI])
        except UriRejected:
            logger.warning("clip %r: its video is outside the media roots", clip_id)
            raise NotFound(_NO_MEDIA) from None
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")  # botocore
            if code in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(_NO_MEDIA) from None
            raise
        if not os.path.isfile(path):
            raise NotFound(_NO_MEDIA)
        return MediaSource(name=os.path.basename(path), size=os.path.getsize(path), path=path)

    def _resolve_local(self, uri: str) -> str:
        roots = self.config.media_roots
        if roots is None:
            roots = self.searcher.decode.allowed_roots
        resolved = resolve_uri(uri, tuple(roots), self.searcher.decode.base_dir)
        if resolved.kind != "local":
            raise NotFound("not a local file")
        return resolved.path

    def _s3(self):
        with self._s3_lock:
            if self._s3_client is None:
                self._s3_client = self.config.s3.client()
            return self._s3_client

    # ---- the table ----------------------------------------------------------------------
    async def table_info(self) -> dict[str, Any]:
        """Schema, row counts, filterable columns, indices, the last run (no paths)."""
        return await self.search_queue.arun(self.config.request_timeout_s, self._table_info)

    def _search_info(self) -> dict[str, Any]:
        """What each kind of search uses by default, with the recall to expect, and the
        table's calibration target (null: none stored)."""
        searcher = self.searcher
        calibration = searcher.calibration
        return {
            "target_recall": calibration.target if calibration else None,
            "k": calibration.k if calibration else None,
            "default_recall": self.config.recall,
            "kinds": {kind: searcher.search_choice(kind).as_dict() for kind in KINDS},
        }

    def _table_info(self) -> dict[str, Any]:
        searcher = self.searcher
        tables = catalog_tables(self.config.db, self.config.table, self.config.s3.storage_options())
        counts = {name: t.count_rows() for name, t in tables.items()}
        table = searcher.table
        vector = None
        if has_vector_index(table):
            stats = table.index_stats(VECTOR_INDEX_NAME)
            vector = {
                "type": vector_index_type(table),
                "indexed_rows": stats.num_indexed_rows if stats else None,
                "unindexed_rows": stats.num_unindexed_rows if stats else None,
            }
        filterable = searcher.filterable_columns()
        metadata = set(searcher._metadata_columns())
        report = RunFiles(self.config.db, self.config.table, self.config.s3).latest("report")
        last_run = None
        if report:
            keep = ("run_id", "mode", "started_at", "finished_at", "model", "counts")
            last_run = {k: report.get(k) for k in keep}
            last_run |= {k: report.get(k) for k in ("error_rate", "exit_code", "tag")}
        return {
            "table": self.config.table,
            "schema": [
                {"name": f.name, "type": str(f.type)}
                for f in table.schema
                if f.name != schema.EMBEDDING
            ],
            "rows": counts,
            "metadata_columns": [
                {"name": n, "kind": kind, "operators": list(operators_for(kind))}
                for n, kind in filterable.items()
                if n in metadata
            ],
            "filterable_columns": [
                {"name": n, "kind": kind, "operators": list(operators_for(kind))}
                for n, kind in filterable.items()
            ],
            "operators": list(OPERATORS),
            "fts_columns": searcher.fts_columns(),
            "search": self._search_info(),
            "vector_index": vector,
            "model": self.model_state,
            "embedded_with": (searcher.embedded_with() or (None,))[0],
            "thumbnails": schema.thumbnails_table_name(self.config.table) in tables,
            "dedup": schema.duplicates_table_name(self.config.table) in tables,
            "last_run": last_run,
            "allow_sql": self.config.allow_sql,
            "max_k": self.config.max_k,
            "max_upload_bytes": self.config.max_upload_bytes,
        }


def _clip_url(clip_id: str, what: str) -> str:
    from urllib.parse import quote

    return f"/api/clips/{quote(clip_id, safe='')}/{what}"


def _json(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json(v) for v in value]
    if value is not None and not isinstance(value, str | int | float | bool | dict):
        return str(value)
    return value


__all__ = [
    "MediaSource",
    "ModelUnavailable",
    "NotFound",
    "SearchService",
    "ServeConfig",
    "is_loopback",
]
