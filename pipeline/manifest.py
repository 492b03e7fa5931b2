"""The manifest contract: where a catalog's Parquet files are, and whether they are valid.

A manifest is one Parquet file or a directory (local or `s3://bucket/prefix/`) of
`*.parquet` files with one row per video: `video_id` (unique string key) and `uri` are
required, `version`, `start_s` and `end_s` optional, anything else is metadata.
:func:`validate_manifest` reads every file once, in bounded memory, and raises one
:class:`ManifestError` listing every problem before any decode or GPU work starts.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import schema
from pipeline.storage import S3Config
from pipeline.uris import redact_uri

logger = logging.getLogger(__name__)

_READ_ROWS = 65_536
_EXAMPLES = 10
_STRING_COLUMNS = (schema.VIDEO_ID, schema.URI, schema.VERSION)
_TIME_COLUMNS = (schema.START_S, schema.END_S)
#: Names the pipeline writes itself; a metadata column with one of them would clash.
RESERVED = frozenset(
    schema.embeddings_schema().names
    + schema.errors_schema().names
    + schema.vision_tokens_schema().names
    + schema.thumbnails_schema().names
    + [
        schema.FRAMES,
        schema.NUM_CLIPS,
        schema.DECODE_SECONDS,
        schema.EMBED_SECONDS,
        *schema.MANIFEST_OPTIONAL,
    ]
)


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the files and rows at fault."""


@dataclass(frozen=True)
class ManifestInfo:
    """A validated manifest, ready for `ray.data.read_parquet(paths, filesystem=...)`.

    Attributes:
        uri: the manifest as given (redacted).
        paths: Parquet files, as paths within `filesystem` (no scheme), sorted.
        filesystem: pyarrow filesystem that reads `paths`.
        num_rows: number of videos.
        schema: unified schema of the selected columns: string ids, float64 times and
            dictionary-encoded metadata decoded to its values.
        metadata_columns: manifest columns carried into the embeddings table.
        base_dir: directory that relative video URIs resolve against.
    """

    uri: str
    paths: tuple[str, ...]
    filesystem: pafs.FileSystem = field(repr=False, compare=False)
    num_rows: int
    schema: pa.Schema
    metadata_columns: tuple[str, ...]
    base_dir: str

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)

    @property
    def metadata_fields(self) -> tuple[pa.Field, ...]:
        """Fields for `SinkConfig.metadata_fields` / `schema.embeddings_schema`."""
        return tuple(self.schema.field(name).with_nullable(True) for name in self.metadata_columns)

    def dataset(self) -> ds.Dataset:
        return ds.dataset(
            list(self.paths), schema=self.schema, format="parquet", filesystem=self.filesystem
        )

    def iter_batches(self, batch_size: int = _READ_ROWS) -> Iterator[pa.RecordBatch]:
        """Stream the selected columns, cast to :attr:`schema` (absent columns are null)."""
        return self.dataset().to_batches(batch_size=batch_size)


def manifest_filesystem(
    uri: str, *, endpoint_url: str | None = None, region: str | None = None, anon: bool = False
) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path of a manifest URI or local path.

    S3 uses `endpoint_url` when given (`http://` or `https://` with a host, as
    :class:`~pipeline.storage.S3Config` checks), `region` when given (else pyarrow's own
    lookup) and the standard AWS credential chain unless `anon`; no credential is ever
    passed through here.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ManifestError(f"manifest uri has no bucket: {redact_uri(uri)}")
        if parsed.query or parsed.fragment or "@" in parsed.netloc:
            raise ManifestError(f"manifest uri must be s3://bucket/key: {redact_uri(uri)}")
        try:
            s3 = S3Config(endpoint_url=endpoint_url, region=region, anon=anon)
        except ValueError as exc:
            raise ManifestError(str(exc)) from exc
        path = f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/")
        return s3.arrow_filesystem(), path
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ManifestError(f"file uri with a host is not supported: {redact_uri(uri)}")
        return pafs.LocalFileSystem(), os.path.abspath(unquote(parsed.path))
    if parsed.scheme:
        raise ManifestError(f"unsupported manifest scheme {parsed.scheme!r}: {redact_uri(uri)}")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def default_allowed_root(uri: str) -> str | None:
    """What `--allowed-root` defaults to: a local manifest's directory, else None.

    None means no local video file is allowed unless a root is given explicitly, so an
    S3 manifest cannot point the workers at the local disk by default.
    """
    fs, path = manifest_filesystem(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    return path if os.path.isdir(path) else os.path.dirname(path)


def _base_dir(fs: pafs.FileSystem, path: str, is_dir: bool) -> str:
    directory = path if is_dir else posixpath.dirname(path)
    return f"s3://{directory}" if isinstance(fs, pafs.S3FileSystem) else directory


def _list_files(uri: str, fs: pafs.FileSystem, path: str) -> tuple[tuple[str, ...], bool]:
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise ManifestError(f"manifest not found: {redact_uri(uri)}")
        if info.type == pafs.FileType.File:
            return (path,), False
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {redact_uri(uri)}: {exc}") from exc
    files = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.path.endswith(".parquet")
        # Spark/Hive bookkeeping files and hidden files are not part of the data.
        and not any(part.startswith((".", "_")) for part in i.path[len(path) :].split("/"))
    )
    if not files:
        raise ManifestError(f"no *.parquet files under manifest directory {redact_uri(uri)}")
    return tuple(files), True


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _normalize_schema(file_schema: pa.Schema, shown: str, problems: list[str]) -> pa.Schema:
    """The file's schema with ids as `string` and times as `float64`, or problems noted."""
    missing = [c for c in schema.MANIFEST_REQUIRED if c not in file_schema.names]
    if missing:
        problems.append(f"{shown}: missing required column(s) {missing}")
    if len(set(file_schema.names)) != len(file_schema.names):
        problems.append(f"{shown}: duplicate column names {file_schema.names}")
        return file_schema
    fields = []
    for f in file_schema:
        # pandas writes an all-None column with Arrow's null type; it holds no value that
        # could be misread, so it takes the column's type.
        untyped = pa.types.is_null(f.type)
        if f.name in _STRING_COLUMNS:
            if not (_is_string(f.type) or untyped):
                problems.append(
                    f"{shown}: column {f.name!r} has type {f.type}, expected a string type "
                    "(write ids and versions as strings)"
                )
            f = f.with_type(pa.string())
        elif f.name in _TIME_COLUMNS:
            if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or untyped):
                problems.append(f"{shown}: column {f.name!r} has type {f.type}, expected seconds")
            f = f.with_type(pa.float64())
        elif pa.types.is_dictionary(f.type):
            # A categorical column in one file and plain values in another is one column;
            # decoded, its type no longer depends on how each file was written.
            f = f.with_type(f.type.value_type)
        fields.append(f)
    return pa.schema(fields)


def _select_metadata(available: list[str], selection: str | Sequence[str] | None) -> list[str]:
    if selection is None or selection == "none":
        return []
    if selection == "all":
        chosen = available
    else:
        if isinstance(selection, str):
            raise ManifestError(f"metadata_columns must be 'all', 'none' or a list: {selection!r}")
        chosen = list(dict.fromkeys(selection))
        unknown = [c for c in chosen if c not in available]
        if unknown:
            raise ManifestError(
                f"unknown metadata column(s) {unknown}; the manifest has {available}"
            )
    clashing = [c for c in chosen if c in RESERVED]
    if clashing:
        raise ManifestError(
            f"metadata column(s) {clashing} clash with columns vidcat writes; rename them in "
            "the manifest or leave them out of the metadata column selection"
        )
    return chosen


class _Problems:
    """Counts and first examples of each row-level problem."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, kind: str, mask: np.ndarray, ids: pa.Array, shown: str, first_row: int) -> None:
        rows = np.flatnonzero(mask)
        if not len(rows):
            return
        self.counts[kind] = self.counts.get(kind, 0) + len(rows)
        examples = self.examples.setdefault(kind, [])
        for r in rows[: _EXAMPLES - len(examples)]:
            examples.append(f"{shown} row {first_row + r} (video_id={ids[r].as_py()!r})")

    def message(self, uri: str) -> str:
        lines = [f"manifest {redact_uri(uri)} has invalid rows (row numbers are 0-based per file):"]
        for kind, count in self.counts.items():
            lines.append(f"  {kind}: {count} row(s); first: " + "; ".join(self.examples[kind]))
        return "\n".join(lines)


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def fnv1a64(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit FNV-1a of every string's UTF-8 bytes, vectorized over the Arrow buffers.

    One numpy pass per byte position, over only the strings that long, so the work is the
    column's byte count and no Python object is made per row (a per-row `hash()` held
    ~280 MiB of allocator memory after 10M ids). Deterministic across processes and runs.
    Nulls hash like the empty string.
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    ids = ids.cast(pa.large_string())
    n = len(ids)
    if n == 0:
        return np.zeros(0, np.uint64)
    _, offsets_buf, data_buf = ids.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64, count=n + 1, offset=ids.offset * 8)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    if ids.null_count:
        lengths = np.where(ids.is_valid().to_numpy(zero_copy_only=False), lengths, 0)
    h = np.full(n, _FNV_OFFSET, np.uint64)
    live = np.flatnonzero(lengths)
    i = 0
    with np.errstate(over="ignore"):
        while len(live):
            h[live] = (h[live] ^ data[starts[live] + i].astype(np.uint64)) * _FNV_PRIME
            i += 1
            live = live[lengths[live] > i]
    return h


def _bad_rows(batch: pa.RecordBatch, problems: _Problems, shown: str, first_row: int) -> None:
    def mask(expr) -> np.ndarray:
        return pc.fill_null(expr, False).to_numpy(zero_copy_only=False)

    ids, uris = batch.column(schema.VIDEO_ID), batch.column(schema.URI)
    problems.add("null video_id", mask(ids.is_null()), ids, shown, first_row)
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ids)), 0)
    problems.add("empty video_id", mask(blank), ids, shown, first_row)
    empty_uri = pc.or_kleene(uris.is_null(), pc.equal(pc.utf8_length(uris), 0))
    problems.add("null or empty uri", mask(empty_uri), ids, shown, first_row)
    times = {c: batch.column(c) for c in _TIME_COLUMNS if c in batch.schema.names}
    for name, col in times.items():
        if name == schema.START_S:
            problems.add("negative start_s", mask(pc.less(col, 0.0)), ids, shown, first_row)
        else:
            # The window starts at start_s or 0, so an end_s <= 0 selects no frame even
            # without a start_s to compare it with.
            non_positive = mask(pc.less_equal(col, 0.0))
            problems.add("end_s <= 0", non_positive, ids, shown, first_row)
        problems.add(
            f"non-finite {name}", mask(pc.invert(pc.is_finite(col))), ids, shown, first_row
        )
    if len(times) == 2:
        inverted = pc.greater_equal(times[schema.START_S], times[schema.END_S])
        problems.add("start_s >= end_s", mask(inverted), ids, shown, first_row)


def _suspect_rows(hashes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Sorted positions of valid rows whose hash occurs more than once among valid rows."""
    ordered = hashes[valid]
    ordered.sort()
    if not (ordered[1:] == ordered[:-1]).any():  # the common case: 8 bytes a row, one sort
        return np.empty(0, dtype=np.int64)
    del ordered
    positions = np.flatnonzero(valid)
    order = np.argsort(hashes[positions], kind="stable")
    ordered = hashes[positions[order]]
    same = ordered[1:] == ordered[:-1]
    in_run = np.zeros(len(ordered), dtype=bool)
    in_run[1:] |= same
    in_run[:-1] |= same
    return np.sort(positions[order[in_run]])


def _duplicates(
    fs: pafs.FileSystem,
    paths: tuple[str, ...],
    shown: list[str],
    hashes: np.ndarray,
    valid: np.ndarray,
    rows: list[int],
) -> tuple[int, int, list[str]]:
    """Exact duplicates among valid rows whose hash occurs twice: (ids, rows, examples)."""
    suspects = _suspect_rows(hashes, valid)
    if not len(suspects):
        return 0, 0, []
    starts = np.cumsum([0, *rows])
    # Suspect rows are kept as Arrow columns, ~30 bytes each, so even a manifest that is
    # two copies of itself is confirmed without Python objects per row.
    found: list[pa.Table] = []
    for i, path in enumerate(paths):
        lo, hi = np.searchsorted(suspects, [starts[i], starts[i + 1]])
        local = suspects[lo:hi] - starts[i]
        if not len(local):
            continue
        with fs.open_input_file(path) as f:
            first = 0
            for batch in pq.ParquetFile(f).iter_batches(_READ_ROWS, columns=[schema.VIDEO_ID]):
                # `local` is sorted, so this batch's rows are one slice of it.
                start, stop = np.searchsorted(local, [first, first + batch.num_rows])
                mine = local[start:stop]
                ids = batch.column(0).cast(pa.string()).take(pa.array(mine - first))
                file = pa.array(np.full(len(mine), i, dtype=np.int32))
                found.append(pa.table({"id": ids, "file": file, "row": pa.array(mine)}))
                first += batch.num_rows
    suspect = pa.concat_tables(found)
    counts = suspect.group_by("id", use_threads=False).aggregate([("row", "count")])
    dups = counts.filter(pc.greater(counts["row_count"], 1))
    examples = []
    for vid in dups["id"].to_pylist()[:_EXAMPLES]:
        at = suspect.filter(pc.equal(suspect["id"], vid)).slice(0, 3).to_pylist()
        examples.append(
            f"{vid!r} at " + ", ".join(f"{shown[r['file']]} row {r['row']}" for r in at)
        )
    return len(dups), pc.sum(dups["row_count"]).as_py() or 0, examples


def validate_manifest(
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    anon: bool = False,
    metadata_columns: str | Sequence[str] | None = "all",
) -> ManifestInfo:
    """Check a manifest end to end and describe it: read the footers, unify the files'
    schemas, scan the rows.

    Reads the `video_id`, `uri` and time columns of every file in record batches; memory
    is bounded by one batch plus 8 bytes per row for duplicate detection (80 MB at 10M).

    Args:
        uri: local path, `file://` URI, `s3://bucket/key.parquet` or `s3://bucket/prefix/`.
        endpoint_url: S3 endpoint (e.g. MinIO or a test server); None for AWS.
        region: S3 region; None leaves it to pyarrow (AWS_DEFAULT_REGION / AWS_REGION, the
            profile, then us-east-1).
        anon: read S3 without credentials.
        metadata_columns: "all", "none"/None, or names of extra columns to carry.

    Raises:
        ManifestError: the manifest is missing or unreadable, a file is not Parquet, a
            required column is missing, a type is wrong, a metadata selection is invalid,
            the S3 endpoint is not an http(s) URL, or rows hold null/empty ids, null uris,
            duplicate ids or invalid times.
    """
    fs, root = manifest_filesystem(uri, endpoint_url=endpoint_url, region=region, anon=anon)
    paths, is_dir = _list_files(uri, fs, root)
    prefix = "s3://" if isinstance(fs, pafs.S3FileSystem) else ""
    shown = [prefix + p for p in paths]
    file_schemas, rows = _read_footers(fs, paths, shown)
    unified, carried = _unify(file_schemas, metadata_columns)
    problems = _scan_rows(fs, paths, shown, file_schemas, rows)
    if problems.counts:
        raise ManifestError(problems.message(uri))
    logger.info(
        "manifest %s: %d files, %d rows, metadata columns %s",
        redact_uri(uri),
        len(paths),
        sum(rows),
        carried,
    )
    return ManifestInfo(
        uri=redact_uri(uri),
        paths=paths,
        filesystem=fs,
        num_rows=sum(rows),
        schema=unified,
        metadata_columns=tuple(carried),
        base_dir=_base_dir(fs, root, is_dir),
    )


def _read_footers(
    fs: pafs.FileSystem, paths: tuple[str, ...], shown: list[str]
) -> tuple[list[pa.Schema], list[int]]:
    """Every file's normalized schema and row count, from its Parquet footer."""
    structural: list[str] = []
    file_schemas, rows = [], []
    for path, name in zip(paths, shown, strict=True):
        try:
            with fs.open_input_file(path) as f:
                meta = pq.ParquetFile(f).metadata
                file_schemas.append(
                    _normalize_schema(meta.schema.to_arrow_schema(), name, structural)
                )
                rows.append(meta.num_rows)
        except (OSError, pa.ArrowException) as exc:
            structural.append(f"{name}: not a readable Parquet file ({exc})")
    if structural:
        raise ManifestError("manifest is unusable:\n  " + "\n  ".join(structural))
    return file_schemas, rows


def _unify(
    file_schemas: list[pa.Schema], metadata_columns: str | Sequence[str] | None
) -> tuple[pa.Schema, list[str]]:
    """The manifest's schema over all files (the known columns, then the metadata carried),
    and the names of the metadata columns carried."""
    known = (*schema.MANIFEST_REQUIRED, *schema.MANIFEST_OPTIONAL)
    names = list(dict.fromkeys(n for s in file_schemas for n in s.names))
    carried = _select_metadata([n for n in names if n not in known], metadata_columns)
    wanted = [n for n in known if n in names] + carried
    try:
        unified = pa.unify_schemas(
            [pa.schema([s.field(n) for n in wanted if n in s.names]) for s in file_schemas],
            promote_options="permissive",
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        types = {n: {str(s.field(n).type) for s in file_schemas if n in s.names} for n in wanted}
        conflicts = {n: sorted(t) for n, t in types.items() if len(t) > 1}
        raise ManifestError(f"column types differ between files: {conflicts} ({exc})") from exc
    null_typed = [f.name for f in unified if f.name in carried and pa.types.is_null(f.type)]
    if null_typed:
        raise ManifestError(f"metadata column(s) {null_typed} are entirely null; leave them out")
    return pa.schema([unified.field(n) for n in wanted]), carried


def _scan_rows(
    fs: pafs.FileSystem,
    paths: tuple[str, ...],
    shown: list[str],
    file_schemas: list[pa.Schema],
    rows: list[int],
) -> _Problems:
    """Row-level problems of every file: null or empty ids and uris, invalid times, and
    ids that repeat across the whole manifest."""
    problems = _Problems()
    hashes = np.zeros(sum(rows), dtype=np.uint64)
    valid = np.zeros(sum(rows), dtype=bool)
    offset = 0
    for path, name, fschema in zip(paths, shown, file_schemas, strict=True):
        cols = [c for c in (*schema.MANIFEST_REQUIRED, *_TIME_COLUMNS) if c in fschema.names]
        with fs.open_input_file(path) as f:
            first_row = 0
            for raw in pq.ParquetFile(f).iter_batches(batch_size=_READ_ROWS, columns=cols):
                batch = raw.cast(pa.schema([fschema.field(c) for c in cols]))
                _bad_rows(batch, problems, name, first_row)
                ids = batch.column(schema.VIDEO_ID)
                n = len(ids)
                keep = pc.fill_null(pc.greater(pc.utf8_length(ids), 0), False).to_numpy(
                    zero_copy_only=False
                )
                hashes[offset : offset + n][keep] = fnv1a64(ids.filter(pa.array(keep)))
                valid[offset : offset + n] = keep
                first_row += n
                offset += n
    n_ids, n_rows, examples = _duplicates(fs, paths, shown, hashes, valid, rows)
    if n_ids:
        kind = f"duplicate video_id ({n_ids} distinct ids)"
        problems.counts[kind], problems.examples[kind] = n_rows, examples
    return problems
