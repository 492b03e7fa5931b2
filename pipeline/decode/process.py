"""Decoder processes: each video is parsed in a long-lived child under a memory cap.

The parent fetches S3 objects into private temp files (:mod:`.fetch`), sends one job at a
time over a pipe (:mod:`.protocol`) and waits with a wall-clock deadline. A hang, segfault
or allocation bomb in FFmpeg costs one error row and a respawn, never the calling process.
:class:`DecoderPool` runs several such processes from one Python process.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import io
import itertools
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

import numpy as np

import pipeline

from ..schema import RETRYABLE, Status
from ..uris import UriRejected, redact_text, redact_uri, resolve_uri
from .config import DecodeConfig
from .fetch import Fetcher
from .protocol import (
    ALLOCATION_FAILURES,
    DECODERS,
    MAX_THUMBNAIL_BYTES,
    read_message,
    write_message,
)
from .result import Clip, DecodeResult, Failure

logger = logging.getLogger(__name__)

#: The module the child process runs (`python -m ...`).
CHILD_MODULE = "pipeline.decode.child"
_STDERR_TAIL_BYTES = 4096
_STARTUP_TIMEOUT_S = 120.0
_PIPE_BYTES = 1 << 20


class IsolatedDecoder:
    """Probe + decode of one video at a time in a long-lived child process.

    The child (`python -m pipeline.decode.child`) starts lazily on the first job, and again
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
        self._fetcher = Fetcher(config)

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
                except Failure as failure:
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
    ) -> tuple[tuple[Clip, ...], str, str | None]:
        try:
            resolved = resolve_uri(uri, self.config.allowed_roots, self.config.base_dir)
        except UriRejected as exc:
            raise Failure(Status.URI_REJECTED, str(exc), retryable=False) from None
        fault = self._faults.get(video_id if video_id is not None else uri)
        with self._fetcher.fetch(resolved, version) as (path, content_version):
            try:
                clips, decoder = self._run_job(path, shown, start_s, end_s, fault)
            except Failure as failure:
                failure.content_version = content_version
                raise
        return clips, decoder, content_version

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
            raise Failure(
                Status.TIMEOUT, f"decode exceeded {self.config.timeout_s:g} s; decoder killed"
            ) from None
        except (EOFError, OSError):
            raise self._child_died() from None
        except ValueError as exc:
            self._stop_child()
            raise Failure(Status.DECODER_CRASH, f"malformed reply from decoder: {exc}") from None
        status = Status(header["status"])
        if status is Status.OOM:
            self._stop_child()  # the next job gets a fresh heap
        if status is not Status.OK:
            message = str(header.get("message", "")).replace(path, shown)
            raise Failure(status, message, decoder=str(header.get("decoder") or "") or None)
        frames_len = int(np.prod(header["shape"]))
        frames = np.frombuffer(payload, np.uint8, count=frames_len).reshape(header["shape"])
        # The clips' JPEG thumbnails follow the frames, in clip order.
        ends = np.cumsum([frames_len, *header["thumbnails"]])
        thumbs = [bytes(payload[a:b]) or None for a, b in itertools.pairwise(ends)]
        clips = tuple(
            Clip(
                int(c["index"]),
                float(c["start_s"]),
                float(c["end_s"]),
                frames[i],
                np.asarray(c["frame_indices"], np.int32),
                thumbs[i],
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
        thumbs = header.get("thumbnails")
        if (
            not isinstance(thumbs, list)
            or len(thumbs) != len(clips)
            or not all(isinstance(n, int) and 0 <= n <= MAX_THUMBNAIL_BYTES for n in thumbs)
        ):
            raise ValueError("thumbnail lengths missing or out of range")
        if payload_len != len(clips) * t * size * size * 3 + sum(thumbs):
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
        cmd = [sys.executable, "-m", CHILD_MODULE]
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
            raise Failure(
                Status.DECODER_CRASH, f"decoder process failed to start ({type(exc).__name__})"
            ) from None
        if not header.get("ready"):
            self._stop_child()
            raise Failure(
                Status.DECODER_CRASH, f"decoder process failed to start: {header.get('error')}"
            )
        logger.debug("decoder process %d started", proc.pid)
        return proc

    def _child_died(self) -> Failure:
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
            return Failure(Status.OOM, f"{died}, likely by the OOM killer")
        if any(mark in tail for mark in ALLOCATION_FAILURES):
            cap = self.config.memory_limit_mb
            return Failure(Status.OOM, f"{died} after an allocation failure (cap {cap} MB)")
        return Failure(Status.DECODER_CRASH, died)

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
    root = os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update(
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",  # numpy's resize: small products, threads only contend
        MKL_NUM_THREADS="1",
        MALLOC_ARENA_MAX="2",
        CUDA_VISIBLE_DEVICES="",
    )
    return env


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
