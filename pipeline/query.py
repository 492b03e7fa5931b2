"""Search the embeddings table by text, by a catalog video or by a query video.

:class:`CatalogSearch` embeds the query with the pipeline's own model and decode path
(`ModelSpec.build` through :class:`~pipeline.embed.EmbedStage`, :class:`IsolatedDecoder`),
then runs one cosine k-NN query through :func:`pipeline.index.vector_search`, so an ANN
index is used when one exists and a small table is scanned exactly. `where` is LanceDB SQL
applied before the search (prefilter). Text queries can be re-ranked with the matching head
(:mod:`pipeline.rerank`).

The connection checks for new table versions on every read (`read_consistency_interval`
0), so a searcher opened before a refresh sees the refreshed rows. The model, the tokenizer
and the decoder process start on first use: `similar()` needs none of them.

CLI: `python -m pipeline.query {text,similar,video} ARG --db URI [...]` (`--help`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch
from lancedb.expr import col

from models.internvideo2 import CheckpointError, InternVideo2
from models.internvideo2.tokenizer import BERT_REPO, TokenizerError, load_tokenizer, tokenize
from models.internvideo2.tokenizer import write_vocab as _write_vocab

from . import schema
from .decode import DecodeConfig, IsolatedDecoder, S3Config
from .embed import INTERNVIDEO2_1B, TINY_RANDOM, EmbedConfig, EmbedStage, ModelSpec, encode_frames
from .index import SCORE, IndexConfig, config_for_table, vector_search
from .rerank import CANDIDATE_COLUMNS, RERANK_SCORE, TOKEN_SOURCES, RerankConfig, Reranker
from .schema import Status
from .sink import TableSchemaError, open_table
from .uris import UriRejected, redact_uri, resolve_uri

logger = logging.getLogger(__name__)

#: Identifying columns of every result row, before `score` and the metadata columns.
RESULT_COLUMNS = (
    schema.CLIP_ID,
    schema.VIDEO_ID,
    schema.CLIP_INDEX,
    schema.CLIP_START_S,
    schema.CLIP_END_S,
    schema.URI,
)
_PIPELINE_COLUMNS = frozenset(schema.embeddings_schema().names)
#: Words of the tiny-random model's fixed vocabulary (the sample catalog's captions); any
#: other word is spelled with single-letter pieces. Fixed, not taken from a table, so a
#: query's token ids never depend on what the catalog holds.
TINY_VOCAB_WORDS = (
    *["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "pink"],
    *["square", "circle", "triangle", "left", "right", "up", "down"],
    *["moving", "on", "the", "background", "video", "of", "and", "with"],
)
#: `DecodeConfig` fields of a run that decide which frames a clip gets or whether its decode
#: succeeds: a re-decode must use the run's values, not the defaults.
RUN_DECODE_FIELDS = (
    *("num_frames", "size", "clip_seconds", "clip_overlap_s", "decoder", "timeout_s"),
    *("memory_limit_mb", "max_width", "max_height", "max_duration_s", "max_bytes"),
    "max_attempts",
)


class QueryError(ValueError):
    """A query that cannot run as asked; the message says why (CLI exit code 2)."""


def tiny_tokenizer():
    """WordPiece tokenizer for `tiny-random`: :data:`TINY_VOCAB_WORDS` plus letters."""
    with tempfile.TemporaryDirectory(prefix="vidcat-vocab-") as tmp:
        return load_tokenizer(_write_vocab(os.path.join(tmp, "vocab.txt"), TINY_VOCAB_WORDS))


def s3_config(storage_options: dict[str, str] | None) -> S3Config:
    """The :class:`S3Config` matching LanceDB `storage_options` (endpoint, region, anon)."""
    opts = storage_options or {}
    return S3Config(
        endpoint_url=opts.get("endpoint") or opts.get("aws_endpoint"),
        region=opts.get("region") or opts.get("aws_region"),
        anon=str(opts.get("skip_signature", "")).lower() == "true",
    )


def decode_config_of_runs(db_uri: str, table: str, s3: S3Config) -> DecodeConfig | None:
    """Decode settings of the latest pipeline run on `table`, from its resolved config.

    The run writes `<db>/_vidcat/<table>/runs/<run_id>.config.json` with the resolved decode
    settings: frame count, frame size and clip windows reproduce the clips; the decoder, the
    timeout, memory cap, size limits and attempts (:data:`RUN_DECODE_FIELDS`) decide whether
    a decode succeeds as it did in the run; `base_dir` and `allowed_roots` locate and admit
    their URIs.
    Returns None when no readable run config exists.
    """
    from .storage import filesystem_for, read_json

    runs = f"{db_uri.rstrip('/')}/_vidcat/{table}/runs"
    try:
        fs, path = filesystem_for(runs, s3)
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        names = sorted(i.base_name for i in infos if i.base_name.endswith(".config.json"))
        if not names:
            return None
        cfg = read_json(f"{runs}/{names[-1]}", s3)
        decode = cfg["decode"]
        return DecodeConfig(
            **{k: decode[k] for k in RUN_DECODE_FIELDS if k in decode},
            allowed_roots=tuple(decode.get("allowed_roots") or ()),
            base_dir=decode.get("base_dir"),
            s3=S3Config(**cfg["s3"]),
        )
    except (OSError, KeyError, TypeError, ValueError) as exc:
        logger.warning("cannot read the run config under %s: %s", redact_uri(runs), exc)
        return None


class _PrebuiltEncoder:
    """The embed stage's frame path around a model built by the caller (identity unknown)."""

    identity = signature = None

    def __init__(self, model: InternVideo2) -> None:
        self.model, self.device, self.dtype = model, model.device, model.dtype

    def embed_frames(self, frames: np.ndarray):
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


def _check_k(name: str, k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise QueryError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


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
            hub id; None: :func:`tiny_tokenizer` for `tiny-random`, else
            `bert-large-uncased`.
        storage_options: object-store options for a remote database.
        decode: the table's decode settings (frames, size, clip windows, allowed roots, base
            dir); None: those of the latest pipeline run (:func:`decode_config_of_runs`),
            else the defaults.
        device: `auto`, `cpu` or `cuda` for a :class:`ModelSpec`.
        index: ANN search parameters; None: the tuned preset of the index type the table
            has (`IndexConfig.preset`), looked up again when the table's version changes.
        index_recheck: how often, at most, to read the table's version to notice an index
            rebuilt as another type (each check is a metadata read: ~0.3 ms on local disk,
            a request on S3); until then searches keep the previous type's parameters.
        rerank_tokens: vision-token source for re-ranking: `auto`, `stored`, `recompute`.
        rerank_decoders: decoder processes re-decoding candidates in parallel when tokens
            are recomputed (default: `RerankConfig`'s, up to 4).
        read_consistency_interval: how stale a read may be; 0 sees every refresh at once.
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
        rerank_tokens: str = "auto",
        rerank_decoders: int | None = None,
        read_consistency_interval: timedelta = timedelta(0),
        index_recheck: timedelta = timedelta(seconds=5),
    ) -> None:
        if rerank_tokens not in TOKEN_SOURCES:
            raise QueryError(f"rerank_tokens must be one of {TOKEN_SOURCES}")
        self.db_uri, self.table_name = db_uri, table
        self.model, self.device = model, device
        self._index_arg, self._index_for = index, None
        self._index_recheck_s, self._index_checked = index_recheck.total_seconds(), -math.inf
        self.rerank_tokens = rerank_tokens
        self._rerank_config = RerankConfig(tokens=rerank_tokens)
        if rerank_decoders is not None:
            self._rerank_config = dataclasses.replace(self._rerank_config, decoders=rerank_decoders)
        self._storage_options = dict(storage_options or {}) or None
        self._tokenizer_arg, self._tokenizer = tokenizer, None
        self._decode = decode
        self._encoder: EmbedStage | _PrebuiltEncoder | None = None
        self._reranker: Reranker | None = None
        self._query_decoders: dict[DecodeConfig, IsolatedDecoder] = {}
        self._tokens_table = None
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
    ) -> pa.Table:
        """Clips matching a text, best first.

        Args:
            query: the text (non-empty).
            k: rows to return.
            where: SQL filter over the table's columns, applied before the search.
            rerank: re-order the top `max(k, rerank_k)` cosine candidates by the match
                logit (needs the model); adds `rerank_score`.
            rerank_k: candidates to re-rank.
            vector: precomputed unit-norm `[512]` query embedding (skips the text encoder).
        """
        if not isinstance(query, str) or not query.strip():
            raise QueryError("the query text is empty")
        k, rerank_k = _check_k("k", k), _check_k("rerank_k", rerank_k)
        if rerank and self.model is None:
            raise QueryError("rerank needs a model: pass model=ModelSpec(...) (CLI: --model)")
        hidden = mask = None
        if vector is None or rerank:
            model = self._get_encoder().model  # before the tokenizer: model errors first
            ids, mask = tokenize(self._get_tokenizer(), [query])
            with torch.inference_mode():
                emb, hidden = model.encode_text(ids, mask)
            mask = mask.to(hidden.device)
            if vector is None:
                vector = emb[0].float().cpu().numpy()
        rows = self._search(vector, max(k, rerank_k) if rerank else k, where)
        if not rerank:
            return self._present(rows)
        reranked = self.reranker.rerank(
            rows, hidden, mask, k, self._get_tokens_table(), self.rerank_tokens
        )
        return self._present(reranked)

    def similar(self, video_id: str, k: int = 10, where: str | None = None) -> pa.Table:
        """Clips of other videos like a catalog video, best first.

        The query is the mean of the video's clip embeddings, renormalized (one clip: its
        embedding), so a long video is matched as a whole. Every clip of the video itself is
        excluded before the search, so k rows come back whenever k other clips pass `where`.
        """
        if not isinstance(video_id, str) or not video_id:
            raise QueryError("video_id is empty")
        k = _check_k("k", k)
        clips = (
            self.table.search()
            .where(col(schema.VIDEO_ID) == video_id)
            .select([schema.CLIP_INDEX, schema.EMBEDDING])
            .limit(None)
            .to_arrow()
            .sort_by(schema.CLIP_INDEX)
        )
        if not len(clips):
            raise QueryError(f"unknown video_id {video_id!r} in table {self._shown}")
        emb = clips[schema.EMBEDDING].combine_chunks().flatten().to_numpy()
        emb = emb.reshape(len(clips), schema.EMBED_DIM)
        vector = _unit(emb.mean(axis=0))
        if vector is None:  # clips pointing in opposite directions: fall back to the first
            vector = emb[0]
        rows = self._search(vector, k, where, exclude=video_id, checked=False)
        return self._present(rows)

    def video(self, path_or_uri: str, k: int = 10, where: str | None = None) -> pa.Table:
        """Clips like a query video (local path, `file://` or `s3://` URI), best first.

        The video goes through the pipeline's decode (isolated decoder, same frames, size
        and clip windows) and model; a multi-clip video is the mean of its clip embeddings.
        """
        if not isinstance(path_or_uri, str) or not path_or_uri.strip():
            raise QueryError("the query video path is empty")
        k = _check_k("k", k)
        encoder = self._get_encoder()
        uri = _local_query_path(path_or_uri)
        decoded = self._query_decoder(uri).decode(uri)
        if decoded.status is not Status.OK:
            raise QueryError(
                f"cannot decode query video {decoded.uri}: {decoded.status.value}: "
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
        return self._present(self._search(emb[0] if vector is None else vector, k, where))

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
        """Search parameters in use: `index=` if given, else those of the table's index."""
        if self._index_arg is not None:
            return self._index_arg
        now = time.monotonic()
        if self._index_for is None or now - self._index_checked >= self._index_recheck_s:
            self._index_checked = now
            version = self.table.version
            if self._index_for is None or self._index_for[0] != version:
                self._index_for = (version, config_for_table(self.table))
        return self._index_for[1]

    @property
    def decode(self) -> DecodeConfig:
        """Decode settings for re-decoding catalog clips (resolved on first use)."""
        if self._decode is None:
            s3 = s3_config(self._storage_options)
            self._decode = decode_config_of_runs(self.db_uri, self.table_name, s3)
            if self._decode is None:
                logger.info("no pipeline run config for %s: default decode settings", self._shown)
                self._decode = DecodeConfig(s3=s3)
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
        except (FileNotFoundError, TableSchemaError) as exc:
            raise QueryError(str(exc)) from exc

    def _metadata_columns(self) -> list[str]:
        return [n for n in self.table.schema.names if n not in _PIPELINE_COLUMNS]

    def _search(
        self,
        vector: np.ndarray,
        n: int,
        where: str | None,
        exclude: str | None = None,
        checked: bool = True,
    ) -> pa.Table:
        if where is not None and (not isinstance(where, str) or not where.strip()):
            raise QueryError(f"where must be a non-empty SQL string, got {where!r}")
        vector = np.asarray(vector, np.float32).reshape(-1)
        if vector.shape != (schema.EMBED_DIM,) or not np.isfinite(vector).all():
            raise QueryError(f"the query vector must be {schema.EMBED_DIM} finite floats")
        sql = where
        if exclude is not None:
            # Spelled out: LanceDB 0.40's `Expr.to_sql()` leaves a quote after a backslash
            # unescaped, and its parser takes standard SQL strings ('' is a quote).
            other = f"{schema.VIDEO_ID} != '{exclude.replace(chr(39), chr(39) * 2)}'"
            sql = f"({where}) AND {other}" if where else other
        extra = (schema.MODEL, *CANDIDATE_COLUMNS)
        columns = list(dict.fromkeys([*RESULT_COLUMNS, *extra, *self._metadata_columns()]))
        try:
            rows = vector_search(self.table, vector, n, sql, self.index, columns=columns)
        except ValueError as exc:
            if where is None:
                raise
            raise QueryError(f"invalid where clause {where!r}: {exc}") from None
        if exclude is not None:  # a `where` that closes the parentheses cannot undo it
            keep = np.asarray(rows[schema.VIDEO_ID].to_pylist(), dtype=object) != exclude
            rows = rows.filter(pa.array(keep))
        if checked and self._encoder is not None and self._encoder.identity is not None:
            self._check_model(rows)
        return rows

    def _check_model(self, rows: pa.Table) -> None:
        """Refuse to mix embedding spaces: rows must come from this searcher's model."""
        other = set(rows[schema.MODEL].to_pylist()) - {self._encoder.identity}
        if other:
            raise QueryError(
                f"table {self._shown} holds rows embedded with {sorted(other)}, but this "
                f"searcher's model is {self._encoder.identity}: pass the same model"
            )

    def _present(self, rows: pa.Table) -> pa.Table:
        names = [*RESULT_COLUMNS, SCORE, *self._metadata_columns()]
        if RERANK_SCORE in rows.column_names:
            names.append(RERANK_SCORE)
        return rows.select([n for n in names if n in rows.column_names])

    def _get_encoder(self) -> EmbedStage | _PrebuiltEncoder:
        if self._encoder is not None:
            return self._encoder
        if self.model is None:
            raise QueryError("this query needs a model: pass model=ModelSpec(...) (CLI: --model)")
        if isinstance(self.model, InternVideo2):
            self._encoder = _PrebuiltEncoder(self.model)
            return self._encoder
        from .runner import signature_inputs  # deferred: it imports Ray

        config = EmbedConfig(
            model=self.model, device=self.device, signature_extra=signature_inputs(self.decode)
        )
        try:
            self._encoder = EmbedStage(config)
        except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
            raise QueryError(f"cannot load the model {self.model.model}: {exc}") from exc
        return self._encoder

    def _get_tokenizer(self):
        if self._tokenizer is None:
            arg = self._tokenizer_arg
            try:
                if arg is None:
                    tiny = (
                        self.model.model == TINY_RANDOM
                        if isinstance(self.model, ModelSpec)
                        else getattr(getattr(self.model, "config", None), "name", "") == TINY_RANDOM
                    )
                    self._tokenizer = tiny_tokenizer() if tiny else load_tokenizer(BERT_REPO)
                elif isinstance(arg, str | os.PathLike):
                    self._tokenizer = load_tokenizer(arg)
                else:
                    self._tokenizer = arg
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

    def _query_decoder(self, uri: str) -> IsolatedDecoder:
        """A decoder with the table's settings that may read this query video."""
        config = dataclasses.replace(self.decode, base_dir=None)
        if os.path.isabs(uri):  # a local file, resolved by `_local_query_path`
            config = dataclasses.replace(config, allowed_roots=(os.path.dirname(uri),))
        if config not in self._query_decoders:
            self._query_decoders[config] = IsolatedDecoder(config)
        return self._query_decoders[config]


# ---- CLI ------------------------------------------------------------------------------
_MAX_CELL = 40


def _cell(value: Any) -> Any:
    """A JSON/CSV-safe value: NaN → None, lists stay lists, timestamps → ISO strings."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_cell(v) for v in value]
    if value is not None and not isinstance(value, str | int | float | bool):
        return str(value)
    return value


def format_results(rows: pa.Table, fmt: str = "table") -> str:
    """Render results as an aligned text table (cells cut at 40 characters), JSON (a list
    of row objects) or CSV (lists as JSON)."""
    records = [{k: _cell(v) for k, v in r.items()} for r in rows.to_pylist()]
    if fmt == "json":
        return json.dumps(records, indent=2)
    names = rows.column_names
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        for r in records:
            writer.writerow(
                [
                    "" if r[n] is None else json.dumps(r[n]) if isinstance(r[n], list) else r[n]
                    for n in names
                ]
            )
        return out.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")

    def text(value: Any) -> str:
        s = "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
        s = " ".join(s.split())  # newlines and tabs would break the alignment
        return s if len(s) <= _MAX_CELL else s[: _MAX_CELL - 1] + "…"

    cells = [[text(r[n]) for n in names] for r in records]
    widths = [max([len(n), *(len(c[i]) for c in cells)]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in rows.schema.types]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(names)), sep, *(line(c) for c in cells)])


def _model_spec(args: argparse.Namespace, embedded: tuple[str, int] | None) -> ModelSpec | None:
    """The CLI's model: `--model`/`--checkpoint`, else what the table was embedded with."""
    identity, frames = embedded or ("", 4)
    name = args.model or (INTERNVIDEO2_1B if args.checkpoint else None)
    if name is None:
        if not identity.startswith(TINY_RANDOM):
            raise QueryError("this query needs the model: pass --checkpoint (internvideo2-1b)")
        name = TINY_RANDOM
    seed = re.search(r":seed(\d+):", identity)
    return ModelSpec(
        model=name,
        checkpoint=args.checkpoint,
        num_frames=frames,
        s3_endpoint_url=args.s3_endpoint_url,
        seed=int(seed.group(1)) if seed and name == TINY_RANDOM else 0,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.query",
        description="Search a vidcat embeddings table by text, by catalog video or by video file.",
    )
    p.add_argument("mode", choices=("text", "similar", "video"))
    p.add_argument("arg", help="query text, video_id, or video path/URI")
    p.add_argument("--db", required=True, help="LanceDB directory or s3:// URI")
    p.add_argument("--table", default="videos")
    p.add_argument("--k", type=int, default=10, help="results to return")
    p.add_argument("--where", default=None, help="SQL filter, e.g. \"category = 'sports'\"")
    p.add_argument("--rerank", action="store_true", help="re-rank text results (match head)")
    p.add_argument("--rerank-k", type=int, default=32, help="cosine candidates to re-rank")
    p.add_argument("--rerank-tokens", choices=TOKEN_SOURCES, default="auto")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument(
        "--model",
        choices=(TINY_RANDOM, INTERNVIDEO2_1B),
        default=None,
        help="default: the table's own (tiny-random), or internvideo2-1b with --checkpoint",
    )
    p.add_argument("--checkpoint", default=None, help="1B weights: path, s3:// URI or hub id")
    p.add_argument("--tokenizer", default=None, help="vocab.txt or its directory, or hub id")
    p.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3 endpoint (credentials always come from the AWS chain)",
    )
    p.add_argument("--s3-region", default=os.environ.get("AWS_REGION"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one query and print the results on stdout; errors go to stderr with exit 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    s3 = S3Config(endpoint_url=args.s3_endpoint_url, region=args.s3_region)
    options = s3.storage_options() or None
    search = None
    try:
        probe = CatalogSearch(args.db, args.table, storage_options=options)
        model = None
        if args.mode != "similar":
            model = _model_spec(args, probe.embedded_with())
        search = CatalogSearch(
            args.db,
            args.table,
            model=model,
            tokenizer=args.tokenizer,
            storage_options=options,
            device=args.device,
            rerank_tokens=args.rerank_tokens,
        )
        if args.mode == "text":
            rows = search.text(args.arg, args.k, args.where, args.rerank, args.rerank_k)
        elif args.mode == "similar":
            rows = search.similar(args.arg, args.k, args.where)
        else:
            rows = search.video(args.arg, args.k, args.where)
    except (QueryError, TokenizerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if search is not None:
            search.close()
    print(format_results(rows, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
