"""Search the embeddings table by text, by a catalog video or by a query video.

:class:`CatalogSearch` embeds the query with the pipeline's own model and decode path
(`ModelSpec.build` through :class:`~pipeline.embed.EmbedStage`, :class:`IsolatedDecoder`),
then runs one cosine k-NN query through :func:`pipeline.index.vector_search`, so an ANN
index is used when one exists and a small table is scanned exactly. Each kind of query
(`text`, `video`, `similar`) searches with the parameters the index build calibrated for
it on this table (:mod:`pipeline.recall`), or the presets of a table without calibration;
`recall=` trades recall for speed, and `last_search` tells what a search used and the
recall to expect from it. `where` is LanceDB SQL
applied before the search (prefilter). Text queries can be re-ranked with the matching head
(:mod:`pipeline.rerank`).

With `dedup=True` every query returns one row per near-duplicate group (`vidcat dedup`,
:mod:`pipeline.dedup`): the best-scoring member, with `group_size` (1 for a clip in no
group). It asks for `DEDUP_CANDIDATES` x (k + offset) candidates and collapses them, asking
for more while fewer than k + offset distinct groups came back and more rows exist; `offset`
then counts groups, so pages do not repeat a group. Without a duplicates table, `dedup=True`
is a QueryError. Groups are those of the last dedup run: a clip embedded since is in no
group, a deleted clip is never a result, and a clip whose `embedded_at` differs from the
run's (re-embedded since, or restored by a rollback) stands alone until the next run
(:func:`pipeline.dedup.collapse_groups`).

The connection checks for new table versions on every read (`read_consistency_interval`
0), so a searcher opened before a refresh sees the refreshed rows. The model, the tokenizer
and the decoder process start on first use, and torch is imported only then: `similar()`
needs none of them. Opening a searcher never creates anything.

The command line is `vidcat query` (`jobs/query.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import col

from . import schema
from .compat import sql_string, tune_vector_query
from .db import DatabaseNotFound, StoreError, TableSchemaError, open_table
from .decode import DecodeConfig, IsolatedDecoder
from .dedup import collapse_groups
from .filters import Filter, FilterError, filterable_columns, to_sql
from .index import (
    SCORE,
    IndexConfig,
    config_for_table,
    fts_columns,
    has_vector_index,
    vector_search,
)
from .models import ModelSpec, tokenizer_for
from .recall import (
    EXACT,
    KINDS,
    Calibration,
    Choice,
    Params,
    choose,
    read_calibration,
    resolve_recall,
)
from .rerank import CANDIDATE_COLUMNS, RERANK_SCORE, RerankConfig, Reranker
from .runs import RunFiles
from .schema import RESULT_COLUMNS, Status
from .storage import S3Config
from .uris import UriRejected, redact_uri, resolve_uri

if TYPE_CHECKING:
    from models.internvideo2 import InternVideo2

    from .embed import EmbedStage

logger = logging.getLogger(__name__)

_PIPELINE_COLUMNS = frozenset(schema.embeddings_schema().names)
#: Most rows one query may ask for (LanceDB takes a 32-bit limit; no page needs more).
MAX_K = 10_000
#: Search modes of text queries: embeddings only, or fused with full-text search.
MODES = ("vector", "hybrid")
#: Score column of hybrid results besides `score` (their fused rank score).
COSINE = "cosine"
#: With `dedup=True`, candidates fetched per result wanted (then more while too few groups).
DEDUP_CANDIDATES = 4
#: Filtered searches leaving at most this many rows, on scalar-indexed columns only, scan
#: them exactly (`exact_below`).
EXACT_BELOW_ROWS = 5_000
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Filters whose matching row counts a searcher remembers.
_FILTER_COUNTS = 256
#: LanceDB index types that answer a filter without reading the column.
_SCALAR_INDEX_TYPES = frozenset({"BTree", "Bitmap", "LabelList"})
#: Result schema metadata key: what the search used (`Choice.as_dict()`, JSON).
SEARCH_METADATA_KEY = b"vidcat:search"


class QueryError(ValueError):
    """A query that cannot run as asked; the message says why (CLI exit code 2)."""


class _PrebuiltEncoder:
    """The embed stage's frame path around a model built by the caller (identity unknown)."""

    identity = signature = None

    def __init__(self, model: InternVideo2) -> None:
        self.model, self.device, self.dtype = model, model.device, model.dtype

    def embed_frames(self, frames: np.ndarray):
        from .embed import encode_frames

        return encode_frames(self.model, frames)


def _local_query_path(path_or_uri: str) -> str:
    """A local query video (a path, relative to the working directory, or a `file://` URI)
    as its absolute, symlink-free path; any other URI unchanged, for the decoder to judge."""
    try:
        # "/" admits every local path: this call only parses and resolves it; the decode's
        # allowed root is the file's own directory (`_query_decoder`).
        resolved = resolve_uri(path_or_uri, allowed_roots=("/",), base_dir=os.getcwd())
    except UriRejected:
        return path_or_uri  # the decoder rejects it again, with the same message
    return resolved.path if resolved.kind == "local" else path_or_uri


def _check_k(name: str, k: Any, low: int = 1) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not low <= k <= MAX_K:
        raise QueryError(f"{name} must be an integer from {low} to {MAX_K}, got {k!r}")
    return int(k)


def _check_page(k: Any, offset: Any) -> tuple[int, int]:
    k, offset = _check_k("k", k), _check_k("offset", offset, low=0)
    if k + offset > MAX_K:
        raise QueryError(f"k + offset must be at most {MAX_K}, got {k + offset}")
    return k, offset


def check_where(where: str | None) -> str | None:
    """`where`, or QueryError when it is not one SQL expression: empty, or holding a `;`
    outside a string literal (LanceDB would silently drop everything after it)."""
    if where is None:
        return None
    if not isinstance(where, str) or not where.strip():
        raise QueryError(f"where must be a non-empty SQL expression, got {where!r}")
    quoted = False
    for char in where:
        if char == "'":
            quoted = not quoted  # '' inside a literal toggles twice
        elif char == ";" and not quoted:
            raise QueryError(
                f"where must be one SQL expression; ';' would end it: {where!r} "
                "(combine conditions with AND / OR)"
            )
    return where


def check_recall(recall: Any) -> float | str | None:
    """`recall` unchanged when valid (None, a number in (0, 1], a preset name); else
    QueryError."""
    try:
        resolve_recall(recall, 0.95)
    except ValueError as exc:
        raise QueryError(f"{exc}, got {recall!r}") from None
    return recall


def _unit(vector: np.ndarray) -> np.ndarray | None:
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 1e-6 else None


class CatalogSearch:
    """Query one embeddings table.

    Args:
        db_uri: LanceDB location (directory or `s3://bucket/prefix`).
        table: embeddings table name.
        model: the model the table was embedded with (a :class:`ModelSpec`, or a built
            :class:`InternVideo2`); None allows only `similar()` and `text(vector=...)`.
        tokenizer: a tokenizer, a path to a WordPiece `vocab.txt` (or its directory) or a
            hub id; None: the model's own (`ModelSpec.tokenizer`).
        storage_options: object-store options for a remote database.
        decode: the table's decode settings (frames, size, clip windows, allowed roots, base
            dir); None: those of the latest pipeline run (`RunFiles.latest_decode_settings`),
            else the defaults.
        device: `auto`, `cpu` or `cuda` for a :class:`ModelSpec`.
        index: ANN search parameters pinned for every query kind (no calibration is read);
            None: the parameters the table's index build calibrated for each kind of query
            (`pipeline.recall`), or, without a calibration, the tuned preset of the index
            type the table has (`IndexConfig.preset`); looked up again when the table's
            version changes.
        recall: default recall for every search: None the calibrated target; a number in
            (0, 1] or `fast` (0.8), `balanced` (the target), `exact` (an exact scan): the
            fastest calibrated parameters expected to reach it. Each query method takes
            `recall=` too.
        exact_below: a filtered search whose `where` names only columns with a scalar
            index (BTREE, BITMAP: `video_id`, `clip_id` and the configured bitmap columns)
            and leaves at most this many rows scans them exactly (recall 1) instead of
            probing the vector index. Measured at 1M rows (benchmarks/README.md): such a
            scan costs 4-5 ms up to ~3k rows and ~20 ms at 8k, about what the index
            costs, while the index found 0.75 of the true top 10 under an 805-row filter;
            a filter on a column without a scalar index makes the exact scan read the
            whole table (0.2-7 s), so it keeps the index. 0 turns it off. Counting is one
            `count_rows(where)` per new filter and table version (~1 ms with the index).
        index_recheck: how often, at most, to read the table's version to notice a rebuilt
            or recalibrated index (each check is a metadata read: ~0.3 ms on local disk, a
            request on S3); until then searches keep the previous parameters.
        rerank_tokens: vision-token source for re-ranking: `auto`, `stored`, `recompute`.
        rerank_decoders: decoder processes re-decoding candidates in parallel when tokens
            are recomputed (default: `RerankConfig`'s, up to 4).
        read_consistency_interval: how stale a read may be; 0 sees every refresh at once.
        query_max_duration_s: longest query video decoded (None: the table's decode limit);
            a server taking uploads sets it.
    """

    def __init__(
        self,
        db_uri: str,
        table: str = "videos",
        model: ModelSpec | InternVideo2 | None = None,
        tokenizer: Any = None,
        storage_options: dict[str, str] | None = None,
        decode: DecodeConfig | None = None,
        device: str = "auto",
        *,
        index: IndexConfig | None = None,
        recall: float | str | None = None,
        exact_below: int = EXACT_BELOW_ROWS,
        rerank_tokens: str = "auto",
        rerank_decoders: int | None = None,
        read_consistency_interval: timedelta = timedelta(0),
        index_recheck: timedelta = timedelta(seconds=5),
        query_max_duration_s: float | None = None,
    ) -> None:
        self.db_uri, self.table_name = db_uri, table
        self.query_max_duration_s = query_max_duration_s
        self.model, self.device = model, device
        self._index_arg, self._index_for = index, None
        self.recall = check_recall(recall)
        self.exact_below = _check_k("exact_below", exact_below, low=0)
        self._filter_rows: dict[tuple[int, str], int] = {}
        self._scalar_columns: tuple[set[str], set[str]] = (set(), set())
        #: What the latest search used (`pipeline.recall.Choice`): kind, parameters,
        #: expected recall and where they came from; None before the first search.
        self.last_search: Choice | None = None
        self._index_recheck_s, self._index_checked = index_recheck.total_seconds(), -math.inf
        try:
            self._rerank_config = RerankConfig(tokens=rerank_tokens)
            if rerank_decoders is not None:
                self._rerank_config = dataclasses.replace(
                    self._rerank_config, decoders=rerank_decoders
                )
        except ValueError as exc:
            raise QueryError(str(exc)) from None
        self.rerank_tokens = rerank_tokens
        self._storage_options = dict(storage_options or {}) or None
        self._tokenizer_arg, self._tokenizer = tokenizer, None
        self._decode = decode
        self._encoder: EmbedStage | _PrebuiltEncoder | None = None
        self._s3 = S3Config.from_storage_options(self._storage_options)
        self._reranker: Reranker | None = None
        self._query_decoders: dict[DecodeConfig, IsolatedDecoder] = {}
        self._tokens_table = self._thumbnails_table = None
        self._dup_table = None
        self._dup_groups: tuple[int, pa.Table] | None = None
        self._shown = f"{table!r} in {redact_uri(db_uri)}"
        self._consistency = read_consistency_interval
        self.table = self._open(table)

    # ---- queries ------------------------------------------------------------------------
    def text(
        self,
        query: str,
        k: int = 10,
        where: str | None = None,
        rerank: bool = False,
        rerank_k: int = 32,
        vector: np.ndarray | None = None,
        *,
        offset: int = 0,
        mode: str = "vector",
        dedup: bool = False,
        recall: float | str | None = None,
    ) -> pa.Table:
        """Clips matching a text, best first.

        Args:
            query: the text (non-empty).
            k: rows to return.
            where: SQL filter over the table's columns, applied before the search
                (:meth:`filter_sql` writes one from structured filters).
            rerank: re-order the top `max(k + offset, rerank_k)` candidates by the match
                logit (needs the model); adds `rerank_score`.
            rerank_k: candidates to re-rank.
            vector: precomputed unit-norm `[512]` query embedding (skips the text encoder;
                :meth:`embed_text` makes one).
            offset: rows to skip (the next page starts at `offset + k`).
            mode: `vector` (cosine similarity of the embeddings) or `hybrid` (fused with a
                full-text search of the text columns `vidcat index` indexed; `score` is
                then the fused reciprocal-rank score and `cosine` the similarity); the
                vector half searches with the text kind's calibrated parameters too.
            dedup: one row per near-duplicate group, with `group_size` (module docstring);
                with `rerank`, `max(DEDUP_CANDIDATES * (k + offset), rerank_k)` candidates
                are re-ranked, then collapsed.
            recall: this search's recall (see the class); default the searcher's.
        """
        if not isinstance(query, str) or not query.strip():
            raise QueryError("the query text is empty")
        k, offset = _check_page(k, offset)
        rerank_k = _check_k("rerank_k", rerank_k)
        recall = check_recall(recall)
        if mode not in MODES:
            raise QueryError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if rerank and self.model is None:
            raise QueryError("rerank needs a model: pass model=ModelSpec(...) (CLI: --model)")
        groups = self.dedup_groups() if dedup else None  # no duplicates table: fail first
        hidden = mask = None
        if vector is None or rerank:
            vector, hidden, mask = self._encode_text(query)

        def fetch(n: int) -> pa.Table:
            if mode == "hybrid":
                return self._hybrid(query, vector, n, where, recall)
            return self._search(vector, n, where, "text", recall)

        if not rerank:
            return self._present(self._page(fetch, k, offset, groups))
        wanted = k + offset
        if groups is not None:
            wanted = min(DEDUP_CANDIDATES * wanted, MAX_K)
        rows = fetch(max(wanted, rerank_k))
        used = rows.schema.metadata
        rows = self.reranker.rerank(
            rows, hidden, mask, max(len(rows), 1) if groups is not None else k + offset,
            self._get_tokens_table(), self.rerank_tokens,
        )  # fmt: skip
        rows = rows.replace_schema_metadata(used)
        if groups is not None:
            rows = collapse_groups(rows, groups, k + offset)
        return self._present(rows.slice(offset, k))

    def embed_text(self, query: str) -> np.ndarray:
        """The unit-norm `[512]` embedding of a text (for `text(vector=...)`)."""
        if not isinstance(query, str) or not query.strip():
            raise QueryError("the query text is empty")
        return self._encode_text(query)[0]

    def similar(
        self,
        video_id: str,
        k: int = 10,
        where: str | None = None,
        *,
        offset: int = 0,
        dedup: bool = False,
        recall: float | str | None = None,
    ) -> pa.Table:
        """Clips of other videos like a catalog video, best first.

        The query is the mean of the video's clip embeddings, renormalized (one clip: its
        embedding), so a long video is matched as a whole. Every clip of the video itself is
        excluded before the search, so k rows come back whenever k other clips pass `where`.
        With `dedup`, one row per near-duplicate group (module docstring).
        """
        if not isinstance(video_id, str) or not video_id:
            raise QueryError("video_id is empty")
        k, offset = _check_page(k, offset)
        recall = check_recall(recall)
        emb = self._embeddings(col(schema.VIDEO_ID) == video_id)
        if emb is None:
            raise QueryError(f"unknown video_id {video_id!r} in table {self._shown}")
        vector = _unit(emb.mean(axis=0))
        if vector is None:  # clips pointing in opposite directions: fall back to the first
            vector = emb[0]
        groups = self.dedup_groups() if dedup else None
        return self._nearest(
            vector, k, offset, groups, where, "similar", recall, video_id, checked=False
        )

    def similar_clip(
        self,
        clip_id: str,
        k: int = 10,
        where: str | None = None,
        *,
        offset: int = 0,
        dedup: bool = False,
        recall: float | str | None = None,
    ) -> pa.Table:
        """Clips of other videos like one catalog clip ("more like this"), best first.

        The query is the clip's own embedding; the clips of its video are excluded, as in
        :meth:`similar`, and it searches with the `similar` kind's parameters (a catalog
        vector, like the mean of a video's clips). With `dedup`, one row per near-duplicate
        group.
        """
        if not isinstance(clip_id, str) or not clip_id:
            raise QueryError("clip_id is empty")
        k, offset = _check_page(k, offset)
        recall = check_recall(recall)
        row = self.clip(clip_id, columns=[schema.VIDEO_ID, schema.EMBEDDING])
        if row is None:
            raise QueryError(f"unknown clip_id {clip_id!r} in table {self._shown}")
        vector = np.asarray(row[schema.EMBEDDING], np.float32)
        groups = self.dedup_groups() if dedup else None
        video = row[schema.VIDEO_ID]
        return self._nearest(vector, k, offset, groups, where, "similar", recall, video, False)

    def video(
        self,
        path_or_uri: str,
        k: int = 10,
        where: str | None = None,
        *,
        offset: int = 0,
        dedup: bool = False,
        recall: float | str | None = None,
    ) -> pa.Table:
        """Clips like a query video (local path, `file://` or `s3://` URI), best first.

        The video goes through the pipeline's decode (isolated decoder, same frames, size
        and clip windows) and model; a multi-clip video is the mean of its clip embeddings.
        With `dedup`, one row per near-duplicate group (module docstring).
        """
        return self._search_media(path_or_uri, k, where, offset, recall, still=False, dedup=dedup)

    def image(
        self,
        path_or_uri: str,
        k: int = 10,
        where: str | None = None,
        *,
        offset: int = 0,
        dedup: bool = False,
        recall: float | str | None = None,
    ) -> pa.Table:
        """Clips like a still image (PNG, JPEG, WebP or BMP; path or URI), best first.

        The image is decoded by the isolated decoder at the table's frame size and embedded
        through the model's image path (one frame, the image position embedding). It
        searches with the `video` kind's parameters (a visual query, like a clip's). With
        `dedup`, one row per near-duplicate group.
        """
        return self._search_media(path_or_uri, k, where, offset, recall, still=True, dedup=dedup)

    def embed_media(self, path_or_uri: str, still: bool = False) -> np.ndarray:
        """The unit-norm `[512]` query embedding of a video (mean of its clips) or of a
        still image, decoded by the isolated decoder with the table's settings."""
        if not isinstance(path_or_uri, str) or not path_or_uri.strip():
            raise QueryError(f"the query {'image' if still else 'video'} path is empty")
        encoder = self._get_encoder()
        uri = _local_query_path(path_or_uri)
        decoded = self._query_decoder(uri, still).decode(uri)
        if decoded.status is not Status.OK:
            what = "image" if still else "video"
            raise QueryError(
                f"cannot decode query {what} {decoded.uri}: {decoded.status.value}: "
                f"{decoded.message}"
            )
        frames = [c.frames for c in decoded.clips]
        step = RerankConfig().clips_per_call  # a long video is many clips: bound the batch
        emb = np.concatenate(
            [
                encoder.embed_frames(np.stack(frames[i : i + step]))[0]
                for i in range(0, len(frames), step)
            ]
        )
        vector = _unit(emb.mean(axis=0))
        return emb[0] if vector is None else vector

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        where: str | None = None,
        *,
        offset: int = 0,
        dedup: bool = False,
        kind: str = "video",
        recall: float | str | None = None,
    ) -> pa.Table:
        """Clips nearest a query embedding (from :meth:`embed_text` or :meth:`embed_media`),
        searched with the parameters calibrated for `kind` (`text` for a text embedding,
        `video` for a video's or an image's, `similar` for a catalog row's); with `dedup`,
        one row per near-duplicate group."""
        k, offset = _check_page(k, offset)
        recall = check_recall(recall)
        groups = self.dedup_groups() if dedup else None
        return self._nearest(vector, k, offset, groups, where, kind, recall)

    # ---- the catalog --------------------------------------------------------------------
    def clip(self, clip_id: str, columns: list[str] | None = None) -> dict[str, Any] | None:
        """One clip's row (`columns`, default the result columns and metadata), or None."""
        if not isinstance(clip_id, str) or not clip_id:
            return None
        names = columns or [*RESULT_COLUMNS, *self._metadata_columns()]
        rows = (
            self.table.search()
            .where(col(schema.CLIP_ID) == clip_id)
            .select(names)
            .limit(1)
            .to_arrow()
        )
        return rows.to_pylist()[0] if len(rows) else None

    def thumbnail(self, clip_id: str) -> bytes | None:
        """A clip's JPEG thumbnail, or None (no such clip, or none was made)."""
        table = self._get_thumbnails_table()
        if table is None or not isinstance(clip_id, str) or not clip_id:
            return None
        rows = (
            table.search()
            .where(col(schema.CLIP_ID) == clip_id)
            .select([schema.THUMBNAIL])
            .limit(1)
            .to_arrow()
        )
        return rows[schema.THUMBNAIL][0].as_py() if len(rows) else None

    def filterable_columns(self) -> dict[str, str]:
        """Columns structured filters may use, with their kind (:mod:`pipeline.filters`)."""
        return filterable_columns(self.table.schema)

    def filter_sql(self, filters: list[Filter | str]) -> str | None:
        """One SQL `where` from structured filters checked against this table, or None."""
        try:
            return to_sql(filters, self.table.schema)
        except FilterError as exc:
            raise QueryError(str(exc)) from None

    def fts_columns(self) -> list[str]:
        """Columns with a full-text index (what `mode="hybrid"` searches)."""
        return fts_columns(self.table)

    # ---- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Stop the decoder processes (the searcher stays usable; they restart on demand)."""
        if self._reranker is not None:
            self._reranker.close()
        for decoder in self._query_decoders.values():
            decoder.close()
        self._query_decoders.clear()

    def __enter__(self) -> CatalogSearch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def embedded_with(self) -> tuple[str, int] | None:
        """`(model identity, frames per clip)` of a row of the table; None when empty."""
        rows = self.table.search().select([schema.MODEL, schema.NUM_FRAMES]).limit(1).to_arrow()
        return (
            (rows[schema.MODEL][0].as_py(), rows[schema.NUM_FRAMES][0].as_py())
            if len(rows)
            else None
        )

    @property
    def index(self) -> IndexConfig:
        """Index settings in use: `index=` if given, else the presets of the table's index
        (the search parameters of a kind come from `search_choice`)."""
        return self._table_index()[0]

    @property
    def calibration(self) -> Calibration | None:
        """The table's search calibration (None: none, or `index=` pinned)."""
        return self._table_index()[1]

    def search_choice(
        self, kind: str, recall: float | str | None = None, where: str | None = None
    ) -> Choice:
        """The parameters a search of `kind` (`text`, `video`, `similar`) would use with
        `recall` (default the searcher's) and the filter `where`, and the recall to expect.

        Besides the calibration (`pipeline.recall.choose`): a table without a vector index
        is scanned exactly (LanceDB does so whatever it is asked), and so is a filter on
        scalar-indexed columns that leaves at most `exact_below` rows."""
        if kind not in KINDS:
            raise QueryError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        recall = check_recall(recall)
        recall = self.recall if recall is None else recall
        config, calibration, indexed = self._table_index()
        if not indexed:
            resolve_recall(recall, None)  # still refuse a bad value
            return Choice(kind, EXACT, 1.0, "no index")
        if where and self.exact_below and self._scalar_indexed(where):
            rows = self._rows_matching(where)
            if rows <= self.exact_below:
                return Choice(kind, EXACT, 1.0, f"filter leaves {rows} rows")
        if self._index_arg is None:
            try:
                return choose(calibration, config, kind, recall)
            except ValueError as exc:
                raise QueryError(str(exc)) from None
        pinned = self._index_arg
        wanted = resolve_recall(recall, None)
        if wanted is not None and wanted >= 1.0:
            return Choice(kind, EXACT, 1.0, "override")
        if wanted is not None:
            raise QueryError(
                "recall= needs the table's calibration, and index= pins the parameters: "
                "pass one of them (or recall='exact')"
            )
        return Choice(kind, Params(pinned.nprobes, pinned.ef, pinned.refine_factor), None, "pinned")

    def _scalar_indexed(self, where: str) -> bool:
        """Whether every table column `where` names has a scalar index (names inside
        string literals do not count; a filter naming no column is not indexed)."""
        self._table_index()
        columns, indexed = self._scalar_columns
        named = {n for n in _NAME.findall(_QUOTED.sub(" ", where)) if n in columns}
        return bool(named) and named <= indexed

    def _rows_matching(self, where: str) -> int:
        """Rows of the table passing `where` (remembered per table version)."""
        self._table_index()
        key = (self._index_for[0], where)
        if key not in self._filter_rows:
            try:
                count = self.table.count_rows(where)
            except ValueError as exc:
                raise QueryError(f"invalid where clause {where!r}: {exc}") from None
            if len(self._filter_rows) >= _FILTER_COUNTS:
                self._filter_rows.clear()
            self._filter_rows[key] = count
        return self._filter_rows[key]

    def _table_index(self) -> tuple[IndexConfig, Calibration | None, bool]:
        """(index settings, calibration, has a vector index) of the table, re-read when its
        version changes (at most every `index_recheck`)."""
        now = time.monotonic()
        if self._index_for is None or now - self._index_checked >= self._index_recheck_s:
            self._index_checked = now
            version = self.table.version
            if self._index_for is None or self._index_for[0] != version:
                found = (
                    config_for_table(self.table),
                    read_calibration(self.table),
                    has_vector_index(self.table),
                )
                scalar = {
                    i.columns[0]
                    for i in self.table.list_indices()
                    if len(i.columns) == 1 and i.index_type in _SCALAR_INDEX_TYPES
                }
                self._scalar_columns = (set(self.table.schema.names), scalar)
                self._index_for = (version, found)
        config, calibration, indexed = self._index_for[1]
        if self._index_arg is not None:
            return self._index_arg, None, indexed
        return config, calibration, indexed

    @property
    def decode(self) -> DecodeConfig:
        """Decode settings for re-decoding catalog clips (resolved on first use)."""
        if self._decode is None:
            settings = RunFiles(self.db_uri, self.table_name, self._s3).latest_decode_settings()
            if settings is None:
                logger.info("no pipeline run config for %s: default decode settings", self._shown)
                settings = {"s3": self._s3}
            self._decode = DecodeConfig(**settings)
        return self._decode

    @property
    def reranker(self) -> Reranker:
        """The re-ranker (built on first use; `last_stats` tells what its last call did)."""
        if self._reranker is None:
            encoder = self._get_encoder()
            self._reranker = Reranker(
                encoder.model,
                encoder.embed_frames,
                self.decode,
                encoder.signature,
                self._rerank_config,
            )
        return self._reranker

    # ---- internals ----------------------------------------------------------------------
    def _open(self, name: str):
        try:
            return open_table(self.db_uri, name, self._storage_options, self._consistency)
        except (DatabaseNotFound, StoreError, TableSchemaError) as exc:
            raise QueryError(str(exc)) from exc

    def _metadata_columns(self) -> list[str]:
        return [n for n in self.table.schema.names if n not in _PIPELINE_COLUMNS]

    def _search(
        self,
        vector: np.ndarray,
        n: int,
        where: str | None,
        kind: str,
        recall: float | str | None,
        exclude: str | None = None,
        checked: bool = True,
    ) -> pa.Table:
        check_where(where)
        vector = np.asarray(vector, np.float32).reshape(-1)
        if vector.shape != (schema.EMBED_DIM,) or not np.isfinite(vector).all():
            raise QueryError(f"the query vector must be {schema.EMBED_DIM} finite floats")
        sql = where
        if exclude is not None:
            other = f"{schema.VIDEO_ID} != {sql_string(exclude)}"  # pipeline.compat, entry 1
            sql = f"({where}) AND {other}" if where else other
        extra = (schema.MODEL, schema.EMBEDDED_AT, *CANDIDATE_COLUMNS)
        columns = list(dict.fromkeys([*RESULT_COLUMNS, *extra, *self._metadata_columns()]))
        choice = self.search_choice(kind, recall, where=where)  # not the exclusion
        config = choice.params.apply(self.index)
        try:
            rows = vector_search(
                self.table, vector, n, sql, config, exact=choice.params.exact, columns=columns
            )
        except ValueError as exc:
            if where is None:
                raise
            raise QueryError(f"invalid where clause {where!r}: {exc}") from None
        if exclude is not None:  # a `where` that closes the parentheses cannot undo it
            keep = np.asarray(rows[schema.VIDEO_ID].to_pylist(), dtype=object) != exclude
            rows = rows.filter(pa.array(keep))
        if checked and self._encoder is not None and self._encoder.identity is not None:
            self._check_model(rows)
        return self._used(rows, choice)

    def _used(self, rows: pa.Table, choice: Choice) -> pa.Table:
        """`rows` with `choice` in their schema metadata (what `_present` publishes: a
        server shares one searcher between threads, so the result carries its own), and
        `last_search` set."""
        self.last_search = choice
        search = json.dumps(choice.as_dict()).encode()
        return rows.replace_schema_metadata({SEARCH_METADATA_KEY: search})

    def _nearest(
        self,
        vector: np.ndarray,
        k: int,
        offset: int,
        groups: pa.Table | None,
        where: str | None,
        kind: str,
        recall: float | str | None,
        exclude: str | None = None,
        checked: bool = True,
    ) -> pa.Table:
        """The presented page `offset .. offset + k` of a vector search of `kind` (one row
        per near-duplicate group with `groups`): the one path of every non-text search."""

        def fetch(n: int) -> pa.Table:
            return self._search(vector, n, where, kind, recall, exclude, checked)

        return self._present(self._page(fetch, k, offset, groups))

    def _page(self, fetch, k: int, offset: int, groups: pa.Table | None) -> pa.Table:
        """Rows `offset .. offset + k` of a search, `fetch(n)` giving its best n rows; with
        `groups`, rows of distinct groups: `DEDUP_CANDIDATES` times as many candidates,
        four times more while fewer than `offset + k` groups came back and more rows exist."""
        if groups is None:
            return fetch(k + offset).slice(offset, k)
        wanted = k + offset
        n = min(DEDUP_CANDIDATES * wanted, MAX_K)
        while True:
            rows = fetch(n)
            out = collapse_groups(rows, groups, wanted)
            if len(out) >= wanted or len(rows) < n or n >= MAX_K:
                return out.slice(offset, k)
            n = min(n * DEDUP_CANDIDATES, MAX_K)

    def dedup_groups(self) -> pa.Table:
        """`clip_id`, `embedded_at`, `group_id`, `group_size` of the near-duplicates table,
        read again when its version changes; QueryError when there is none (`vidcat dedup`
        never ran)."""
        if self._dup_table is None:
            try:
                self._dup_table = self._open(schema.duplicates_table_name(self.table_name))
            except QueryError as exc:
                raise QueryError(
                    f"dedup needs the near-duplicates table of {self._shown}: run "
                    f"`vidcat dedup` first ({exc})"
                ) from None
        version = self._dup_table.version
        if self._dup_groups is None or self._dup_groups[0] != version:
            columns = [schema.CLIP_ID, schema.EMBEDDED_AT, schema.GROUP_ID, schema.GROUP_SIZE]
            rows = self._dup_table.search().select(columns).limit(None).to_arrow()
            self._dup_groups = (version, rows)
        return self._dup_groups[1]

    def _check_model(self, rows: pa.Table) -> None:
        """Refuse to mix embedding spaces: rows must come from this searcher's model."""
        other = set(rows[schema.MODEL].to_pylist()) - {self._encoder.identity}
        if other:
            raise QueryError(
                f"table {self._shown} holds rows embedded with {sorted(other)}, but this "
                f"searcher's model is {self._encoder.identity}: pass the same model"
            )

    def _present(self, rows: pa.Table) -> pa.Table:
        """The result columns in order, openable URIs, and what the search used in the
        schema metadata (`vidcat:search`: kind, parameters, expected recall, source)."""
        names = [*RESULT_COLUMNS, SCORE, *self._metadata_columns()]
        names += [c for c in (COSINE, RERANK_SCORE, schema.GROUP_SIZE) if c in rows.column_names]
        rows = rows.select([n for n in names if n in rows.column_names])
        if schema.URI in rows.column_names and len(rows):
            uris = [self.openable_uri(u) for u in rows[schema.URI].to_pylist()]
            rows = rows.set_column(
                rows.column_names.index(schema.URI), schema.URI, pa.array(uris, pa.string())
            )
        search = (rows.schema.metadata or {}).get(SEARCH_METADATA_KEY)
        return rows.replace_schema_metadata({SEARCH_METADATA_KEY: search} if search else None)

    def openable_uri(self, uri: str) -> str:
        """A table row's `uri` as one that opens as given: a path relative to the manifest
        (the manifest's own spelling) joined to the directory the run resolved it against
        (an absolute path or an `s3://` URI); other URIs unchanged."""
        base = self.decode.base_dir
        if not uri or not base or "://" in uri or os.path.isabs(uri):
            return uri
        return f"{base.rstrip('/')}/{uri}"

    def _get_encoder(self) -> EmbedStage | _PrebuiltEncoder:
        if self._encoder is not None:
            return self._encoder
        if self.model is None:
            raise QueryError("this query needs a model: pass model=ModelSpec(...) (CLI: --model)")
        if not isinstance(self.model, ModelSpec):  # a model built by the caller
            self._encoder = _PrebuiltEncoder(self.model)
            return self._encoder
        from .embed import EmbedConfig, EmbedStage  # torch: only when a model is needed

        config = EmbedConfig(
            model=self.model, device=self.device, signature_extra=self.decode.signature_inputs()
        )
        try:
            self._encoder = EmbedStage(config)
        except (OSError, RuntimeError, ValueError) as exc:  # CheckpointError is a ValueError
            raise QueryError(f"cannot load the model {self.model.model}: {exc}") from exc
        return self._encoder

    def _get_tokenizer(self):
        if self._tokenizer is None:
            from models.internvideo2.tokenizer import TokenizerError

            try:
                name = (
                    self.model.model
                    if isinstance(self.model, ModelSpec)
                    else getattr(self.model.config, "name", "")
                )
                self._tokenizer = tokenizer_for(name, self._tokenizer_arg)
            except TokenizerError as exc:
                raise QueryError(str(exc)) from None
        return self._tokenizer

    def _get_tokens_table(self):
        """The vision-token side table, when the pipeline wrote one."""
        if self._tokens_table is None:
            try:
                self._tokens_table = self._open(schema.vision_tokens_table_name(self.table_name))
            except QueryError:
                return None
        return self._tokens_table

    def _get_thumbnails_table(self):
        """The thumbnails side table, when the pipeline (or a backfill) wrote one."""
        if self._thumbnails_table is None:
            try:
                self._thumbnails_table = self._open(schema.thumbnails_table_name(self.table_name))
            except QueryError:
                return None
        return self._thumbnails_table

    def _query_decoder(self, uri: str, still: bool = False) -> IsolatedDecoder:
        """A decoder with the table's settings that may read this query video (or image:
        one frame at the table's frame size)."""
        config = dataclasses.replace(self.decode, base_dir=None)
        if still:
            config = dataclasses.replace(config, num_frames=1, still_image=True)
        config = dataclasses.replace(config, thumbnail_size=0)
        if self.query_max_duration_s is not None:
            config = dataclasses.replace(config, max_duration_s=self.query_max_duration_s)
        if os.path.isabs(uri):  # a local file, resolved by `_local_query_path`
            config = dataclasses.replace(config, allowed_roots=(os.path.dirname(uri),))
        if config not in self._query_decoders:
            self._query_decoders[config] = IsolatedDecoder(config)
        return self._query_decoders[config]

    def _encode_text(self, query: str):
        """(unit `[512]` embedding, text hidden states, mask) of one query text."""
        import torch

        from models.internvideo2.tokenizer import tokenize

        model = self._get_encoder().model  # before the tokenizer: model errors first
        ids, mask = tokenize(self._get_tokenizer(), [query])
        with torch.inference_mode():
            emb, hidden = model.encode_text(ids, mask)
        return emb[0].float().cpu().numpy(), hidden, mask.to(hidden.device)

    def _embeddings(self, predicate) -> np.ndarray | None:
        """`[n, 512]` embeddings of the clips matching `predicate` (clip order), or None."""
        clips = (
            self.table.search()
            .where(predicate)
            .select([schema.CLIP_INDEX, schema.EMBEDDING])
            .limit(None)
            .to_arrow()
            .sort_by(schema.CLIP_INDEX)
        )
        if not len(clips):
            return None
        emb = clips[schema.EMBEDDING].combine_chunks().flatten().to_numpy()
        return emb.reshape(len(clips), schema.EMBED_DIM)

    def _search_media(
        self,
        path_or_uri: str,
        k: int,
        where: str | None,
        offset: int,
        recall: float | str | None,
        still: bool,
        dedup: bool = False,
    ) -> pa.Table:
        k, offset = _check_page(k, offset)
        recall = check_recall(recall)
        groups = self.dedup_groups() if dedup else None  # before decoding the upload
        vector = self.embed_media(path_or_uri, still=still)
        return self._nearest(vector, k, offset, groups, where, "video", recall)

    def _hybrid(
        self,
        query: str,
        vector: np.ndarray,
        n: int,
        where: str | None,
        recall: float | str | None,
    ) -> pa.Table:
        """Vector search fused with full-text search (reciprocal rank fusion, LanceDB's);
        the vector half searches with the text kind's parameters, as `text` does."""
        from lancedb.rerankers import RRFReranker

        check_where(where)
        fts = self.fts_columns()
        if not fts:
            raise QueryError(
                f"table {self._shown} has no full-text index for mode=hybrid: build one with "
                "`vidcat index --fts COLUMN`"
            )
        extra = (schema.MODEL, schema.EMBEDDED_AT, *CANDIDATE_COLUMNS)
        columns = list(dict.fromkeys([*RESULT_COLUMNS, *extra, *self._metadata_columns()]))
        builder = (
            self.table.search(
                query_type="hybrid", vector_column_name=schema.EMBEDDING, fts_columns=fts
            )
            .vector(np.asarray(vector, np.float32))
            .text(query)
            .distance_type("cosine")
            .select(columns)
            .rerank(RRFReranker(return_score="all"))
            .limit(n)
        )
        if where:
            builder = builder.where(where, prefilter=True)
        choice = self.search_choice("text", recall, where=where)
        if choice.params.exact:
            builder = builder.bypass_vector_index()
        else:
            config = choice.params.apply(self.index)
            builder = tune_vector_query(builder, n, config.nprobes, config.ef, config.refine_factor)
        try:
            rows = builder.to_arrow()
        except ValueError as exc:
            if where is None:
                raise
            raise QueryError(f"invalid where clause {where!r}: {exc}") from None
        cosine = pc.subtract(pa.scalar(1.0, pa.float32()), rows["_distance"].cast(pa.float32()))
        rows = rows.append_column(SCORE, rows["_relevance_score"].cast(pa.float32()))
        rows = rows.append_column(COSINE, cosine)
        if self._encoder is not None and self._encoder.identity is not None:
            self._check_model(rows)
        return self._used(rows, choice)
