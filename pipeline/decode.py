"""Fetch + decode stage: manifest rows → uint8 `[T, 224, 224, 3]` frames per clip.

Untrusted media is parsed only in a long-lived child process (:mod:`pipeline._decode_worker`)
that runs under a memory cap; the parent fetches S3 objects into private temp files, sends
one job at a time over a pipe and waits with a wall-clock deadline. A hang, segfault or
allocation bomb in FFmpeg costs one error row and a respawn, never the Ray worker.

The pipe carries a small JSON header plus raw frame bytes in both directions, never
pickles: the child parses hostile input, so the parent must not execute what it sends back.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import io
import itertools
import json
import logging
import math
import os
import queue
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa

from pipeline import schema
from pipeline.schema import RETRYABLE, Status
from pipeline.uris import ResolvedUri, UriRejected, redact_text, redact_uri, resolve_uri

logger = logging.getLogger(__name__)

#: Test hooks executed inside the child; reachable only through DecodeConfig, never a manifest.
FAULT_MODES = frozenset(
    {"hang", "segfault", "oom", "bad_alloc", "decord_error", "pyav_error", "decoders_error"}
)
DECODERS = ("decord", "pyav")
#: Text of allocation failures that do not surface as MemoryError: torch's allocator, FFmpeg's
#: ENOMEM, an uncaught C++ std::bad_alloc (which aborts the child; found in its stderr).
ALLOCATION_FAILURES = ("bad_alloc", "allocate memory")
_STDERR_TAIL_BYTES = 4096
_HEADER = struct.Struct(">IQ")  # header length, payload length
_MAX_HEADER_BYTES = 64 << 20
_STARTUP_TIMEOUT_S = 120.0
_COPY_BLOCK = 8 << 20
_PIPE_BYTES = 1 << 20
#: Smallest step between consecutive clip windows: a 1 ms step gave thousands of windows per
#: video. Equal to the worker's MIN_TAIL_CLIP_S (not imported: that module pulls in torch).
MIN_CLIP_STRIDE_S = 1.0
#: `DecodeStage` cuts its output after this many bytes of frames (whole videos).
OUTPUT_BATCH_BYTES = 256 << 20
_MANIFEST_COLUMNS = (schema.VIDEO_ID, schema.URI, schema.VERSION, schema.START_S, schema.END_S)
#: Per-row output columns and their dtypes (frames and frame_indices are built apart).
_ROW_COLUMNS = {
    schema.VIDEO_ID: object,
    schema.URI: object,
    schema.CLIP_INDEX: np.int32,
    schema.CLIP_START_S: np.float64,
    schema.CLIP_END_S: np.float64,
    schema.DECODER: object,
    schema.STATUS: object,
    schema.MESSAGE: object,
    schema.ATTEMPTS: np.int32,
    schema.CONTENT_VERSION: object,
    schema.NUM_CLIPS: np.int32,
    schema.DECODE_SECONDS: np.float64,
}


@dataclass(frozen=True)
class S3Config:
    """Where S3 objects live. Credentials come only from the standard AWS chain (env vars,
    shared profile, IRSA web identity); they are never stored here and never logged.

    Attributes:
        endpoint_url: `http://host[:port]` or `https://host[:port]` (MinIO, a test server);
            None for AWS.
        region: S3 region; None leaves it to each client's own lookup (AWS_DEFAULT_REGION /
            AWS_REGION, the profile, then us-east-1).
        anon: access S3 without credentials.
    """

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False

    def __post_init__(self) -> None:
        # pyarrow, s3fs and LanceDB each parse the endpoint their own way. Without a scheme,
        # "127.0.0.1:9000" has no host for pyarrow, which then sent requests (and the AWS
        # credentials) to AWS itself; only a URL that all of them read alike is accepted.
        if not self.endpoint_url:
            return
        try:
            url = urlsplit(self.endpoint_url)
            url.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            url = None
        if (
            url is None
            or not self.endpoint_url.startswith(("http://", "https://"))
            or not url.hostname
            or "@" in url.netloc
            or url.path not in ("", "/")
            or url.query
            or url.fragment
        ):
            raise ValueError(
                "invalid S3Config: endpoint_url must be http://host[:port] or "
                f"https://host[:port], got {redact_uri(self.endpoint_url)!r}"
            )

    def storage_options(self) -> dict[str, str]:
        """LanceDB / object_store `storage_options` (no secrets)."""
        opts: dict[str, str] = {}
        if self.endpoint_url:
            opts["endpoint"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                opts["allow_http"] = "true"
        if self.region:
            opts["region"] = self.region
        if self.anon:
            opts["skip_signature"] = "true"
        return opts

    def filesystem(self) -> Any:
        """An `s3fs.S3FileSystem` for this endpoint.

        s3fs rather than `pyarrow.fs.S3FileSystem`: the fetch must record the object's ETag
        and read exactly that version, and s3fs exposes the ETag of its HEAD and sends
        `If-Match` on every ranged GET, while pyarrow's `FileInfo` has no ETag. s3fs also
        resolves credentials through botocore, the same chain as boto3.
        """
        import s3fs  # deferred: the decode child and CPU-only callers never need it

        client_kwargs = {"region_name": self.region} if self.region else {}
        return s3fs.S3FileSystem(
            anon=self.anon,
            endpoint_url=self.endpoint_url,
            client_kwargs=client_kwargs,
            use_listings_cache=False,
        )


@dataclass(frozen=True)
class DecodeConfig:
    """Decode stage settings.

    Attributes:
        num_frames: frames T sampled per clip (middle rule), 1..16.
        size: output side in pixels (frames are `[T, size, size, 3]`).
        clip_seconds: videos up to this long give one clip; longer ones windows of it.
        clip_overlap_s: overlap between consecutive windows, at least 0 and at most
            `clip_seconds - MIN_CLIP_STRIDE_S`, so windows start at least 1 s apart.
        timeout_s: wall clock per video in the child, transfer of frames included.
        memory_limit_mb: `RLIMIT_DATA` of the child (heap and anonymous mappings; shared
            library code is not counted, so a CUDA torch build does not eat the budget).
        max_width, max_height, max_duration_s: larger videos are `resolution_exceeded`.
        max_bytes: larger files are `resolution_exceeded` too, told from the file's size
            (a stat, or the HEAD an S3 open makes) before any byte is read.
        decoder: tried first; the other one is the fallback. "decord" reads frames the way
            the official evaluation does; "pyav" gave identical frames on the sample
            catalog and costs about half the CPU on a 20-minute video, 10 % less on short
            ones (benchmarks/decode_throughput.py).
        allowed_roots: local directories videos may be read from (empty: no local files).
        base_dir: directory (local or `s3://bucket/prefix`) relative URIs resolve against.
        s3: S3 endpoint settings.
        temp_dir: where fetched S3 objects are staged (default: the system temp dir).
        max_attempts: tries for a retryable failure (timeout, crash, transient fetch error).
        fault_injection: test hook, `(video_id, mode)` pairs run inside the child; modes in
            :data:`FAULT_MODES`.
    """

    num_frames: int = 4
    size: int = 224
    clip_seconds: float = 30.0
    clip_overlap_s: float = 0.0
    timeout_s: float = 60.0
    memory_limit_mb: int = 4096
    max_width: int = 7680
    max_height: int = 4320
    max_duration_s: float = 24 * 3600
    max_bytes: int = 20 << 30
    decoder: str = "decord"
    allowed_roots: tuple[str, ...] = ()
    base_dir: str | None = None
    s3: S3Config = field(default_factory=S3Config)
    temp_dir: str | None = None
    max_attempts: int = 1
    fault_injection: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        checks = {
            "num_frames must be in 1..16": 1 <= self.num_frames <= 16,
            "size must be >= 8": self.size >= 8,
            "clip_seconds must be > 0": self.clip_seconds > 0,
            "clip_overlap_s must be >= 0": self.clip_overlap_s >= 0,
            f"clip_seconds - clip_overlap_s (the window stride) must be >= {MIN_CLIP_STRIDE_S} s": (
                self.clip_seconds - self.clip_overlap_s >= MIN_CLIP_STRIDE_S
            ),
            "timeout_s must be > 0": self.timeout_s > 0,
            "memory_limit_mb must be >= 512": self.memory_limit_mb >= 512,
            "max_width/max_height must be > 0": self.max_width > 0 and self.max_height > 0,
            "max_duration_s must be > 0": self.max_duration_s > 0,
            "max_bytes must be > 0": self.max_bytes > 0,
            "max_attempts must be >= 1": self.max_attempts >= 1,
            f"decoder must be one of {DECODERS}": self.decoder in DECODERS,
            "allowed_roots must be a tuple of str": isinstance(self.allowed_roots, tuple),
            f"fault_injection modes must be in {sorted(FAULT_MODES)}": all(
                mode in FAULT_MODES for _, mode in self.fault_injection
            ),
        }
        failed = [msg for msg, ok in checks.items() if not ok]
        if failed:
            raise ValueError("invalid DecodeConfig: " + "; ".join(failed))

    def worker_params(self) -> dict[str, Any]:
        """The settings the child needs for every job (plain JSON values)."""
        keys = ("num_frames", "size", "clip_seconds", "clip_overlap_s", "decoder")
        limits = ("max_width", "max_height", "max_duration_s")
        return {k: getattr(self, k) for k in keys + limits}


class Clip(NamedTuple):
    """One decoded clip: frames uint8 `[T, size, size, 3]`, frame_indices int32 `[T]`."""

    index: int
    start_s: float
    end_s: float
    frames: np.ndarray
    frame_indices: np.ndarray


@dataclass(frozen=True)
class DecodeResult:
    """Outcome of one video: clips when `status` is OK, else a redacted message."""

    status: Status
    uri: str
    message: str = ""
    clips: tuple[Clip, ...] = ()
    decoder: str = ""
    content_version: str = ""
    attempts: int = 1


class _Failure(Exception):
    def __init__(
        self, status: Status, message: str, retryable: bool = True, decoder: str = ""
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.retryable = status, message, retryable
        self.decoder, self.content_version = decoder, ""


# ---- pipe protocol (shared with pipeline._decode_worker) ----------------------------------


def write_message(out: BinaryIO, header: dict, payload: Any = b"") -> None:
    """Send a JSON header and a raw payload (bytes or a C-contiguous array)."""
    data = json.dumps(header).encode()
    view = memoryview(payload).cast("B")
    out.write(_HEADER.pack(len(data), view.nbytes))
    out.write(data)
    out.write(view)
    out.flush()


def _read_exact(stream: BinaryIO, size: int, deadline: float) -> bytearray:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        remaining = None if deadline == math.inf else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError
        if not select.select([stream], [], [], remaining)[0]:
            raise TimeoutError
        n = stream.readinto(view[got:])
        if not n:
            raise EOFError
        got += n
    return buf


def read_message(
    stream: BinaryIO,
    deadline: float = math.inf,
    validate: Callable[[dict, int], None] | None = None,
) -> tuple[dict, bytearray]:
    """Receive one message from a raw (unbuffered) pipe.

    Args:
        stream: raw binary stream, so `select` sees every byte not yet read.
        deadline: `time.monotonic()` value; past it `TimeoutError` is raised.
        validate: called with the header and the announced payload size before the payload
            is allocated; raises `ValueError` to refuse it.

    Raises:
        TimeoutError, EOFError (the peer died), ValueError (malformed message).
    """
    header_len, payload_len = _HEADER.unpack(_read_exact(stream, _HEADER.size, deadline))
    if header_len > _MAX_HEADER_BYTES:
        raise ValueError(f"header of {header_len} bytes")
    header = json.loads(_read_exact(stream, header_len, deadline))
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    if validate is not None:
        validate(header, payload_len)
    return header, _read_exact(stream, payload_len, deadline)


# ---- parent side ------------------------------------------------------------------------


def local_version(st: os.stat_result) -> str:
    """Content version of a local file without a manifest version: size and mtime."""
    return f"{st.st_size}-{st.st_mtime_ns}"


def content_version_of(uri: str, config: DecodeConfig, fs: Any = None) -> str | None:
    """The content version decode would record for `uri`, from metadata alone.

    A stat for local files, a HEAD (the ETag) for S3 objects: never the bytes. None when
    the URI is rejected or the object cannot be stat'ed (decode will record why).
    """
    try:
        resolved = resolve_uri(uri, config.allowed_roots, config.base_dir)
    except UriRejected:
        return None
    try:
        if resolved.kind == "local":
            return local_version(os.stat(resolved.path))
        fs = fs or config.s3.filesystem()
        return str(fs.info(f"{resolved.bucket}/{resolved.key}").get("ETag", "")).strip('"') or None
    except Exception:  # missing, denied, network: not a version
        return None


class IsolatedDecoder:
    """Probe + decode of one video at a time in a long-lived child process.

    The child (`python -m pipeline._decode_worker`) starts lazily on the first job, and again
    on the job after it died, timed out or ran out of memory; a healthy child serves every
    job, since a fork per video would cost about half of a short video's decode. Jobs are
    serialized by a lock, so one instance may be shared by threads.

    Use as a context manager, or call :meth:`close`, to stop the child.
    """

    def __init__(self, config: DecodeConfig) -> None:
        self.config = config
        self._faults = dict(config.fault_injection)
        self._proc: subprocess.Popen | None = None
        self._stdin: BinaryIO | None = None
        self._stderr: BinaryIO | None = None
        self._lock = threading.Lock()
        self._fs: Any = None

    def __enter__(self) -> IsolatedDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._stop_child(graceful=True)

    @property
    def child_pid(self) -> int | None:
        """PID of the running child, None before the first job or after it died."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def close(self) -> None:
        with self._lock:
            self._stop_child(graceful=True)

    def decode(
        self,
        uri: str,
        start_s: float | None = None,
        end_s: float | None = None,
        version: str | None = None,
        *,
        video_id: str | None = None,
    ) -> DecodeResult:
        """Fetch, probe and decode one video into clips; never raises for a bad video.

        Args:
            uri: manifest URI (see :func:`pipeline.uris.resolve_uri`).
            start_s, end_s: restrict decoding to `[start_s, end_s)`; None means the bound
                of the video. Passing a clip's own bounds re-decodes exactly that clip.
            version: content version from the manifest; defaults to the S3 ETag, or
                `"{size}-{mtime_ns}"` for local files.
            video_id: selects a `fault_injection` entry (tests only).
        """
        shown = redact_uri(uri)
        with self._lock:
            for attempt in range(1, self.config.max_attempts + 1):
                try:
                    clips, decoder, content_version = self._decode_once(
                        uri, shown, start_s, end_s, version, video_id
                    )
                    return DecodeResult(
                        Status.OK, shown, "", clips, decoder, content_version, attempt
                    )
                except _Failure as failure:
                    last = failure
                    if not (failure.retryable and failure.status in RETRYABLE):
                        break
        message = last.message
        if isinstance(uri, str) and uri and uri != shown:  # never echo the secret back
            message = message.replace(uri, shown)
        # ...nor a path derived from it (a relative uri joined to the base directory).
        message = redact_text(message)
        return DecodeResult(
            last.status,
            shown,
            message[:2000],
            decoder=last.decoder,
            content_version=last.content_version,
            attempts=attempt,
        )

    def _decode_once(
        self,
        uri: str,
        shown: str,
        start_s: float | None,
        end_s: float | None,
        version: str | None,
        video_id: str | None,
    ) -> tuple[tuple[Clip, ...], str, str]:
        try:
            resolved = resolve_uri(uri, self.config.allowed_roots, self.config.base_dir)
        except UriRejected as exc:
            raise _Failure(Status.URI_REJECTED, str(exc), retryable=False) from None
        fault = self._faults.get(video_id if video_id is not None else uri)
        with self._fetch(resolved, version) as (path, content_version):
            try:
                clips, decoder = self._run_job(path, shown, start_s, end_s, fault)
            except _Failure as failure:
                failure.content_version = content_version
                raise
        return clips, decoder, content_version

    @contextlib.contextmanager
    def _fetch(self, resolved: ResolvedUri, version: str | None) -> Iterator[tuple[str, str]]:
        """Yield a local path and the content version; S3 objects go to a 0600 temp file
        that is deleted on the way out, whatever happened to the child."""
        if resolved.kind == "local":
            try:
                st = os.stat(resolved.path)
            except OSError as exc:
                retry = not isinstance(exc, FileNotFoundError | PermissionError)
                raise _Failure(Status.FETCH_ERROR, _describe(exc), retryable=retry) from None
            if not stat.S_ISREG(st.st_mode):
                raise _Failure(Status.FETCH_ERROR, "not a regular file", retryable=False)
            self._check_size(st.st_size, version or local_version(st))
            yield resolved.path, version or local_version(st)
            return
        ext = os.path.splitext(resolved.key)[1]
        suffix = ext if len(ext) <= 8 and ext[1:].isalnum() else ""
        fd, tmp = tempfile.mkstemp(prefix="vidcat-", suffix=suffix, dir=self.config.temp_dir)
        try:
            # Owned by a file object at once, so every way out below closes the descriptor.
            with os.fdopen(fd, "wb") as dst:
                try:
                    etag = self._download(resolved, dst, version)
                except _Failure:
                    raise
                except Exception as exc:  # s3fs/botocore raise many types; all fetch errors
                    retry = not isinstance(exc, FileNotFoundError | PermissionError)
                    raise _Failure(Status.FETCH_ERROR, _describe(exc), retryable=retry) from None
            yield tmp, version or etag
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _download(self, resolved: ResolvedUri, dst: BinaryIO, version: str | None) -> str:
        if self._fs is None:
            self._fs = self.config.s3.filesystem()
        path = f"{resolved.bucket}/{resolved.key}"
        with self._fs.open(path, "rb", block_size=_COPY_BLOCK) as src:
            # Opening reads the object's metadata (a HEAD), no bytes: the size is checked
            # before any GET.
            etag = str(src.details.get("ETag", "")).strip('"')
            self._check_size(src.size, version or etag)
            # s3fs pins every ranged GET to this ETag (If-Match), so the bytes match it.
            shutil.copyfileobj(src, dst, _COPY_BLOCK)
            return etag

    def _check_size(self, size: int, content_version: str) -> None:
        if size > self.config.max_bytes:
            failure = _Failure(
                Status.RESOLUTION_EXCEEDED,
                f"file of {size} bytes exceeds max_bytes {self.config.max_bytes}",
                retryable=False,
            )
            failure.content_version = content_version  # a new version is worth a new try
            raise failure

    def _run_job(
        self,
        path: str,
        shown: str,
        start_s: float | None,
        end_s: float | None,
        fault: str | None,
    ) -> tuple[tuple[Clip, ...], str]:
        proc = self._ensure_child()
        job = {"path": path, "start_s": start_s, "end_s": end_s, "fault": fault}
        job.update(self.config.worker_params())
        os.ftruncate(self._stderr.fileno(), 0)  # keep only this job's output
        deadline = time.monotonic() + self.config.timeout_s
        try:
            write_message(self._stdin, job)
            header, payload = read_message(proc.stdout, deadline, self._validate)
        except TimeoutError:
            self._stop_child()
            raise _Failure(
                Status.TIMEOUT, f"decode exceeded {self.config.timeout_s:g} s; decoder killed"
            ) from None
        except (EOFError, OSError):
            raise self._child_died() from None
        except ValueError as exc:
            self._stop_child()
            raise _Failure(Status.DECODER_CRASH, f"malformed reply from decoder: {exc}") from None
        status = Status(header["status"])
        if status is Status.OOM:
            self._stop_child()  # the next job gets a fresh heap
        if status is not Status.OK:
            message = str(header.get("message", "")).replace(path, shown)
            raise _Failure(status, message, decoder=str(header.get("decoder", "")))
        frames = np.frombuffer(payload, np.uint8).reshape(header["shape"])
        clips = tuple(
            Clip(
                int(c["index"]),
                float(c["start_s"]),
                float(c["end_s"]),
                frames[i],
                np.asarray(c["frame_indices"], np.int32),
            )
            for i, c in enumerate(header["clips"])
        )
        return clips, str(header["decoder"])

    def _validate(self, header: dict, payload_len: int) -> None:
        """Refuse a reply whose shape or size is not what this job can produce."""
        if header.get("status") not in {s.value for s in Status}:
            raise ValueError(f"unknown status {header.get('status')!r}")
        if header["status"] != Status.OK:
            if payload_len:
                raise ValueError("payload on an error reply")
            return
        clips = header.get("clips")
        t, size = self.config.num_frames, self.config.size
        if not isinstance(clips, list) or not clips:
            raise ValueError("no clips on an ok reply")
        if header.get("shape") != [len(clips), t, size, size, 3]:
            raise ValueError(f"unexpected frames shape {header.get('shape')}")
        if payload_len != len(clips) * t * size * size * 3:
            raise ValueError(f"payload of {payload_len} bytes")
        if header.get("decoder") not in DECODERS:
            raise ValueError(f"unknown decoder {header.get('decoder')!r}")
        for clip in clips:
            if not isinstance(clip, dict):
                raise ValueError("clip is not an object")
            if not all(isinstance(clip.get(k), int | float) for k in ("index", "start_s", "end_s")):
                raise ValueError("clip without index and bounds")
            indices = clip.get("frame_indices")
            if not isinstance(indices, list) or len(indices) != t:
                raise ValueError("frame_indices of the wrong length")
            if not all(isinstance(i, int) for i in indices):
                raise ValueError("non-integer frame index")

    def _ensure_child(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop_child()
        cmd = [sys.executable, "-m", "pipeline._decode_worker"]
        cmd += ["--memory-limit-mb", str(self.config.memory_limit_mb)]
        # The child's stderr goes to a file, read back when it dies: an abort after an
        # allocation failure under the cap is an oom, not a crash.
        self._stderr = tempfile.TemporaryFile(  # noqa: SIM115 (closed by _stop_child)
            prefix="vidcat-decoder-", dir=self.config.temp_dir
        )
        fd = self._stderr.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            bufsize=0,
            env=_child_env(),
        )
        self._proc, self._stdin = proc, io.BufferedWriter(proc.stdin)
        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: keep 64 KiB
            # A clip's frames (600 KB) then cross in one write instead of ten 64 KiB
            # handoffs, each of which waits for the other process to be scheduled.
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        try:
            header, _ = read_message(proc.stdout, time.monotonic() + _STARTUP_TIMEOUT_S)
        except (TimeoutError, EOFError, OSError, ValueError) as exc:
            self._stop_child()
            raise _Failure(
                Status.DECODER_CRASH, f"decoder process failed to start ({type(exc).__name__})"
            ) from None
        if not header.get("ready"):
            self._stop_child()
            raise _Failure(
                Status.DECODER_CRASH, f"decoder process failed to start: {header.get('error')}"
            )
        logger.debug("decoder process %d started", proc.pid)
        return proc

    def _child_died(self) -> _Failure:
        proc = self._proc
        try:
            code = proc.wait(timeout=5) if proc is not None else None
        except subprocess.TimeoutExpired:
            code = None
        tail = self._stderr_tail()
        self._stop_child()
        if tail:
            logger.info("decoder process %d stderr (tail):\n%s", proc.pid, tail)
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
            died = f"decoder process died of signal {name}"
        else:
            died = f"decoder process exited (code {code})"
        if code == -signal.SIGKILL:
            # Nobody here sent it: the kernel's or the container's OOM killer did.
            return _Failure(Status.OOM, f"{died}, likely by the OOM killer")
        if any(mark in tail for mark in ALLOCATION_FAILURES):
            cap = self.config.memory_limit_mb
            return _Failure(Status.OOM, f"{died} after an allocation failure (cap {cap} MB)")
        return _Failure(Status.DECODER_CRASH, died)

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        fd = self._stderr.fileno()
        size = os.fstat(fd).st_size
        data = os.pread(fd, _STDERR_TAIL_BYTES, max(0, size - _STDERR_TAIL_BYTES))
        return data.decode(errors="replace").strip()

    def _stop_child(self, graceful: bool = False) -> None:
        """Stop and reap the child: EOF on its stdin when graceful, else SIGKILL."""
        proc, stdin, stderr = self._proc, self._stdin, self._stderr
        self._proc = self._stdin = self._stderr = None
        if proc is None:
            return
        if graceful:
            with contextlib.suppress(OSError):
                stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (stdin, proc.stdout, stderr):
            with contextlib.suppress(OSError, AttributeError):
                stream.close()


def _child_env() -> dict[str, str]:
    """The child's environment: no AWS credentials (it reads only local files), one thread
    per library, and this checkout on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update(
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2", CUDA_VISIBLE_DEVICES=""
    )
    return env


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


class DecoderPool:
    """`size` :class:`IsolatedDecoder` processes shared by as many threads.

    `map(fn, items)` calls `fn(decoder, item)` for every item, each call holding a decoder
    of its own, and returns the results in input order. The threads only wait on pipes (the
    decoding happens in the processes), so one Python process keeps `size` cores busy.
    Decoder processes start on first use and again after `close()`.
    """

    def __init__(self, config: DecodeConfig, size: int = 1) -> None:
        if size < 1:
            raise ValueError("decoders must be >= 1")
        self.decoders = [IsolatedDecoder(config) for _ in range(size)]
        self._free: queue.SimpleQueue[IsolatedDecoder] = queue.SimpleQueue()
        for decoder in self.decoders:
            self._free.put(decoder)
        self._threads: ThreadPoolExecutor | None = None

    def map(self, fn: Callable[[IsolatedDecoder, Any], Any], items: Iterable[Any]) -> list:
        return list(self.imap(fn, items))

    def imap(
        self, fn: Callable[[IsolatedDecoder, Any], Any], items: Iterable[Any]
    ) -> Iterator[Any]:
        """`map`, lazily: results in input order, each as soon as it and those before it
        are done. At most twice as many items as there are decoders are in flight or done
        but not yet taken, so a slow consumer bounds the results held (long videos)."""

        def call(item: Any) -> Any:
            decoder = self._free.get()
            try:
                return fn(decoder, item)
            finally:
                self._free.put(decoder)

        if len(self.decoders) == 1:
            return (call(item) for item in items)
        if self._threads is None:
            self._threads = ThreadPoolExecutor(len(self.decoders), thread_name_prefix="decode")
        return _windowed(self._threads, call, iter(items), 2 * len(self.decoders))

    @property
    def child_pids(self) -> list[int | None]:
        """PIDs of the decoder processes (None: not started yet, or stopped)."""
        return [decoder.child_pid for decoder in self.decoders]

    def close(self) -> None:
        """Stop the decoder processes (they also exit on their own when this process dies)."""
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
        for decoder in self.decoders:
            decoder.close()


def _windowed(
    threads: ThreadPoolExecutor, call: Callable[[Any], Any], items: Iterator[Any], window: int
) -> Iterator[Any]:
    """`call` over `items` on `threads`, results in input order, at most `window` submitted
    and not yet taken; a consumer that stops early cancels what has not started."""
    pending: collections.deque = collections.deque()
    try:
        pending.extend(threads.submit(call, i) for i in itertools.islice(items, window))
        while pending:
            yield pending.popleft().result()
            pending.extend(threads.submit(call, i) for i in itertools.islice(items, 1))
    finally:
        for future in pending:
            future.cancel()


# ---- Ray Data stage ---------------------------------------------------------------------


class DecodeStage:
    """Ray Data callable class: manifest batch → one row per clip, one row per failure.

    Used as `ds.map_batches(DecodeStage, fn_constructor_kwargs={"config": cfg},
    batch_format="numpy" or "pyarrow", ...)`. Each actor spreads a batch's videos over a
    :class:`DecoderPool` of `decoders` processes, so one Ray actor can keep several cores
    busy: fewer actors per node means less of Ray's per-worker start-up and memory.

    Output columns: video_id, uri (redacted), clip_index (int32, -1 on error rows),
    clip_start_s, clip_end_s (float64, NaN on error rows), frames (uint8
    `[N, T, size, size, 3]`, zeros on error rows), frame_indices (int32 `[N, T]`, -1 on
    error rows), decoder, status, message, attempts (int32), content_version, num_clips
    (int32: rows of the video in all) and decode_seconds (the video's wall time split over
    its rows). Columns other than the manifest's own are copied onto every row of their
    video; a passthrough column named like an output column is dropped.
    """

    def __init__(
        self, config: DecodeConfig, decoders: int = 1, output_bytes: int = OUTPUT_BATCH_BYTES
    ) -> None:
        self.config = config
        self.output_bytes = output_bytes
        self._decoders = DecoderPool(config, decoders)

    def __call__(self, batch: dict[str, np.ndarray] | pa.Table) -> Iterator[dict[str, np.ndarray]]:
        """Decode a batch of videos; yield their rows in input order, whole videos per output
        batch, a batch as soon as its frames reach `output_bytes` (a video larger than that
        alone), so the frames of a batch of long videos are never all held, and copied, at
        once. Ray Data takes the generator as is; :meth:`decode_batch` joins the batches."""
        columns = _numpy_columns(batch)
        num_rows = len(columns[schema.VIDEO_ID])
        started = time.perf_counter()
        clip_bytes = self.config.num_frames * self.config.size**2 * 3
        results = self._decoders.imap(
            lambda decoder, i: self._decode_row(decoder, columns, i), range(num_rows)
        )
        group, group_rows, first, rows = [], 0, 0, 0
        for result in results:
            group.append(result)
            group_rows += max(1, len(result[1].clips))  # a failed video is one row
            if group_rows * clip_bytes >= self.output_bytes:
                yield self._assemble(columns, group, first)
                rows, first = rows + group_rows, first + len(group)
                group, group_rows = [], 0
        if group or not num_rows:
            yield self._assemble(columns, group, first)
            rows += group_rows
        logger.debug(
            "decoded %d videos into %d rows in %.2f s",
            num_rows,
            rows,
            time.perf_counter() - started,
        )

    def decode_batch(self, batch: dict[str, np.ndarray] | pa.Table) -> dict[str, np.ndarray]:
        """All rows of a batch as one output batch (callers outside Ray Data)."""
        parts = list(self(batch))
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    @property
    def child_pids(self) -> list[int | None]:
        """PIDs of the decoder processes (None: not started yet, or stopped)."""
        return self._decoders.child_pids

    def close(self) -> None:
        """Stop the decoder processes (they also exit on their own when this process dies);
        the stage stays usable and starts them again on its next batch."""
        self._decoders.close()

    def _decode_row(
        self, decoder: IsolatedDecoder, columns: dict[str, np.ndarray], i: int
    ) -> tuple[str, DecodeResult, float]:
        video_id = str(columns[schema.VIDEO_ID][i])
        uri = _cell(columns, schema.URI, i)
        video_started = time.perf_counter()
        start_s = _float_or_none(_cell(columns, schema.START_S, i))
        end_s = _float_or_none(_cell(columns, schema.END_S, i))
        try:
            result = decoder.decode(
                uri,
                start_s,
                end_s,
                _str_or_none(_cell(columns, schema.VERSION, i)),
                video_id=video_id,
            )
            version = schema.range_version(result.content_version, start_s, end_s)
            result = dataclasses.replace(result, content_version=version)
        except Exception as exc:  # a bug here must cost one row, not the batch
            logger.exception("decode of %s raised", video_id)
            result = DecodeResult(
                Status.DECODE_ERROR, redact_uri(uri), f"internal error: {type(exc).__name__}"
            )
        if result.status is not Status.OK:
            logger.warning(
                "decode failed: video_id=%s uri=%s status=%s: %s",
                video_id,
                result.uri,
                result.status.value,
                result.message,
            )
        return video_id, result, time.perf_counter() - video_started

    def _assemble(
        self,
        columns: dict[str, np.ndarray],
        results: list[tuple[str, DecodeResult, float]],
        first: int = 0,
    ) -> dict[str, np.ndarray]:
        """Rows of `results`, the videos of input rows `first, first + 1, ...`."""
        t, size = self.config.num_frames, self.config.size
        num_out = sum(max(1, len(r.clips)) for _, r, _ in results)
        frames = np.zeros((num_out, t, size, size, 3), np.uint8)
        indices = np.full((num_out, t), -1, np.int32)
        rows: dict[str, list] = {name: [] for name in _ROW_COLUMNS}
        source = []
        for src, (video_id, result, seconds) in enumerate(results):
            num_clips = max(1, len(result.clips))
            for clip in result.clips or (None,):
                if clip is not None:
                    frames[len(source)], indices[len(source)] = clip.frames, clip.frame_indices
                source.append(src)
                values = {
                    schema.VIDEO_ID: video_id,
                    schema.URI: result.uri,
                    schema.CLIP_INDEX: clip.index if clip else -1,
                    schema.CLIP_START_S: clip.start_s if clip else math.nan,
                    schema.CLIP_END_S: clip.end_s if clip else math.nan,
                    schema.DECODER: result.decoder,
                    schema.STATUS: result.status.value,
                    schema.MESSAGE: result.message,
                    schema.ATTEMPTS: result.attempts,
                    schema.CONTENT_VERSION: result.content_version,
                    schema.NUM_CLIPS: num_clips,
                    # Split evenly so that summing any set of rows counts each video once.
                    schema.DECODE_SECONDS: seconds / num_clips,
                }
                for name, value in values.items():
                    rows[name].append(value)
        out = {name: np.array(rows[name], _ROW_COLUMNS[name]) for name in _ROW_COLUMNS}
        out[schema.FRAMES], out[schema.FRAME_INDICES] = frames, indices
        take = np.asarray(source, np.int64) + first
        for name, values in columns.items():
            if name not in _MANIFEST_COLUMNS and name not in out:
                out[name] = values[take]
        return out


def _numpy_columns(batch: dict[str, np.ndarray] | pa.Table) -> dict[str, np.ndarray]:
    if isinstance(batch, pa.Table):
        return {n: _to_numpy(batch.column(n)) for n in batch.column_names}
    return {n: np.asarray(v) for n, v in batch.items()}


def _to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A column as numpy, nulls as None: NumPy would make an integer column with nulls
    float64 with NaN (which the sink cannot cast back) and a float null a NaN."""
    numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
    if column.null_count and numeric:
        return np.array(column.to_pylist(), dtype=object)
    return column.to_numpy(zero_copy_only=False)


def _cell(columns: dict[str, np.ndarray], name: str, i: int) -> Any:
    values = columns.get(name)
    return None if values is None else values[i]


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan  # the worker turns a non-number bound into an error row
    return value if not math.isnan(value) else None


def _str_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value) or None
