"""Bounded work queues: model work and searches never pile up behind a slow request.

A request that finds its queue full is refused at once (429, `Overloaded`); one that waits
longer than its deadline gets 503 (`Timeout`) while its job, which cannot be interrupted
inside torch or LanceDB, finishes in the background and frees its slot. Either way the
server keeps answering: the worker threads are never more than the queue's size, and a
waiting request holds a slot, not a model.

The model and LanceDB calls block (torch releases the GIL in its kernels; LanceDB runs its
own runtime), so they run on a few dedicated threads, and a request awaits its job without
holding one of the web server's threads: the queue's size, not a thread pool, decides how
much waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The queue is full; the client should retry after a moment."""


class Timeout(RuntimeError):
    """The job did not finish within the request's deadline."""


class WorkQueue:
    """`workers` threads and at most `capacity` jobs waiting for them.

    Args:
        name: thread name prefix, and the name in errors.
        workers: jobs that run at once.
        capacity: jobs that may wait besides those running; the next one is refused.
        on_depth: called with the number of jobs queued or running whenever it changes.
    """

    def __init__(
        self,
        name: str,
        workers: int,
        capacity: int,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        if workers < 1 or capacity < 0:
            raise ValueError("a work queue needs workers >= 1 and capacity >= 0")
        self.name = name
        self._executor = cf.ThreadPoolExecutor(workers, thread_name_prefix=f"vidcat-{name}")
        self._slots = threading.BoundedSemaphore(workers + capacity)
        self._lock = threading.Lock()
        self._depth = 0
        self._on_depth = on_depth

    @property
    def depth(self) -> int:
        return self._depth

    def _count(self, delta: int) -> None:
        with self._lock:
            self._depth += delta
            depth = self._depth
        if self._on_depth is not None:
            self._on_depth(depth)

    def _done(self, _future: cf.Future) -> None:
        self._count(-1)
        self._slots.release()

    def _submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> cf.Future:
        if not self._slots.acquire(blocking=False):
            raise Overloaded(f"the {self.name} queue is full")
        self._count(+1)
        try:
            future = self._executor.submit(fn, *args, **kwargs)
        except RuntimeError:  # shut down
            self._done(None)
            raise Overloaded(f"the {self.name} queue is closed") from None
        future.add_done_callback(self._done)
        return future

    def _timeout(self, future: cf.Future, timeout_s: float) -> Timeout:
        future.cancel()  # drops it if it has not started; a running job goes on
        return Timeout(f"{self.name} work took longer than {timeout_s:g} s")

    def run(self, timeout_s: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on a worker thread, its result or its exception.

        Raises:
            Overloaded: no free slot (nothing was started).
            Timeout: it did not finish within `timeout_s` (it still finishes, unobserved).
        """
        future = self._submit(fn, *args, **kwargs)
        try:
            return future.result(timeout=timeout_s)
        except cf.TimeoutError:
            raise self._timeout(future, timeout_s) from None

    async def arun(self, timeout_s: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`run` for a coroutine: the caller waits without holding a thread, so the
        queue's size alone bounds what waits."""
        future = self._submit(fn, *args, **kwargs)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            raise self._timeout(future, timeout_s) from None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class LruCache:
    """A small thread-safe LRU map (query text → embedding)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class Stopwatch:
    """`with Stopwatch() as t: ...; t.seconds`."""

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
