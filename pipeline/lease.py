"""One writer per table: a renewable lease kept beside the table's run directory.

Two `merge_insert` commits that insert the same new key both land in Lance (measured: two
overlapping runs of the sample catalog left 4 duplicate `clip_id`s), so nothing in the
table format stops two writers from duplicating rows. Every job that writes a table (an
embedding run with its maintenance, a rollback, an index build, a repair) first takes the
table's lease, `<db>/_vidcat/<table>/lease.json`, renews it while it works and releases it
at the end. A second writer waits up to `LeaseConfig.wait_s` and then stops with
:class:`LeaseHeld`, which names the holder.

The lease is a small JSON document changed only by compare-and-swap:

* on S3 with conditional requests: create with `If-None-Match: *`, renew and take over with
  `If-Match: <etag>`, release with a conditional delete (S3 and the loopback test server
  both implement them);
* on a local disk under an exclusive `flock` of a sibling lock file, comparing the
  document's random `nonce` before writing (then an atomic rename).

A holder that dies (SIGKILL, a lost node) stops renewing; once `expires_at` (the holder's
clock, `ttl_s` after its last renewal) has passed, the next writer takes the lease over,
so a crashed run never blocks the next night. `break_lease` removes a lease by hand. A
holder whose renewal finds the lease changed (broken, or taken over after it stalled past
its TTL) has lost it: :meth:`Lease.check` raises :class:`LeaseLost`, and the sink calls it
before every commit, so a writer that lost its lease stops writing.

Why our own lease rather than a library lock: LanceDB's commits are atomic per table but
say nothing about who else is writing, and the object stores' own primitive for this is
exactly the conditional write used here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .runs import RunFiles
from .storage import S3Config, is_local, local_path
from .uris import redact_uri

logger = logging.getLogger(__name__)

LEASE_FILE = "lease.json"


class LeaseHeld(RuntimeError):
    """Another writer holds the table's lease (the message names it); nothing was done."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLost(RuntimeError):
    """This writer's lease was broken or taken over: it must not write any more."""


@dataclass(frozen=True)
class LeaseConfig:
    """How a writer holds a table's lease.

    Attributes:
        ttl_s: a lease not renewed for this long may be taken over.
        renew_s: renewal period (a quarter of the TTL by default).
        wait_s: how long `acquire` waits for a held lease before raising `LeaseHeld`.
        poll_s: how often a waiting writer looks again.
    """

    ttl_s: float = 120.0
    renew_s: float | None = None
    wait_s: float = 0.0
    poll_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.ttl_s > 0 or self.wait_s < 0 or not self.poll_s > 0:
            raise ValueError("lease ttl_s and poll_s must be > 0, wait_s >= 0")
        if self.renew_s is not None and not 0 < self.renew_s < self.ttl_s:
            raise ValueError("lease renew_s must be in (0, ttl_s)")

    @property
    def renew_every_s(self) -> float:
        return self.renew_s if self.renew_s is not None else self.ttl_s / 4


class _Conflict(Exception):
    """A conditional write found the document changed (or present, or gone)."""


class _LocalStore:
    """The lease document on a local disk; every change under an exclusive `flock`."""

    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def read(self) -> tuple[dict[str, Any], str] | None:
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            return None
        return doc, str(doc.get("nonce"))

    def write(self, doc: dict[str, Any], expected: str | None) -> str:
        """Write `doc` if the current version is `expected` (None: if there is none)."""
        with self._locked():
            current = self.read()
            if (current[1] if current else None) != expected:
                raise _Conflict
            tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps(doc))
            os.replace(tmp, self.path)
        return str(doc["nonce"])

    def delete(self, expected: str | None) -> None:
        with self._locked():
            current = self.read()
            if current is None or (expected is not None and current[1] != expected):
                raise _Conflict
            os.unlink(self.path)


class _S3Store:
    """The lease document on S3, changed only by conditional requests."""

    def __init__(self, uri: str, s3: S3Config) -> None:
        self.bucket, _, self.key = uri.removeprefix("s3://").partition("/")
        self.client = s3.client()

    @staticmethod
    def _precondition(exc: Exception) -> bool:
        """The object changed under a condition; a conditional write on a deleted object
        (a broken lease) answers 404."""
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in (
            "PreconditionFailed",
            "ConditionalRequestConflict",
            "NoSuchKey",
            "412",
            "409",
            "404",
        )

    def read(self) -> tuple[dict[str, Any], str] | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(got["Body"].read()), got["ETag"]

    def write(self, doc: dict[str, Any], expected: str | None) -> str:
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            put = self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=json.dumps(doc).encode(), **condition
            )
        except Exception as exc:
            if self._precondition(exc):
                raise _Conflict from None
            raise
        return put["ETag"]

    def delete(self, expected: str | None) -> None:
        condition = {} if expected is None else {"IfMatch": expected}
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, **condition)
        except Exception as exc:
            if self._precondition(exc):
                raise _Conflict from None
            raise


def _store(db_uri: str, table: str, s3: S3Config) -> _LocalStore | _S3Store:
    uri = f"{RunFiles(db_uri, table, s3).table_dir}/{LEASE_FILE}"
    return _LocalStore(local_path(uri)) if is_local(uri) else _S3Store(uri, s3)


def _now() -> datetime:
    return datetime.now(UTC)


def _expired(doc: dict[str, Any]) -> bool:
    try:
        return datetime.fromisoformat(doc["expires_at"]) <= _now()
    except (KeyError, TypeError, ValueError):
        return True  # unreadable: nobody can be renewing it


def describe_holder(doc: dict[str, Any]) -> str:
    return (
        f"{doc.get('job', 'a job')} {doc.get('owner', '?')} on {doc.get('host', '?')} "
        f"(pid {doc.get('pid', '?')}) since {doc.get('since', '?')}, "
        f"lease expires {doc.get('expires_at', '?')} unless renewed"
    )


class Lease:
    """The write lease of one table, held by one job (a context manager).

    Args:
        db_uri, table: the table.
        owner: who holds it (a run id), shown to whoever has to wait.
        job: what holds it (`embed`, `rollback`, `index`, ...).
        s3: endpoint settings for a database on S3.
        config: TTL, renewal and waiting.
    """

    def __init__(
        self,
        db_uri: str,
        table: str,
        owner: str,
        job: str = "embed",
        s3: S3Config | None = None,
        config: LeaseConfig | None = None,
    ) -> None:
        self.config = config or LeaseConfig()
        self.owner, self.job = owner, job
        self._shown = f"table {table!r} in {redact_uri(db_uri)}"
        self._store = _store(db_uri, table, s3 or S3Config())
        self._version: str | None = None
        self._valid_until = 0.0  # monotonic: the lease is ours until then, renewed or not
        self._since = _now().isoformat()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- the holder's side ------------------------------------------------------------
    def acquire(self) -> Lease:
        """Take the lease, waiting up to `config.wait_s`; start renewing it.

        Raises:
            LeaseHeld: another live writer holds it.
        """
        deadline = time.monotonic() + self.config.wait_s
        while True:
            current = self._store.read()
            try:
                if current is None:
                    self._write(None)
                elif _expired(current[0]):
                    logger.warning(
                        "taking over the expired lease of %s: %s",
                        self._shown,
                        describe_holder(current[0]),
                    )
                    self._write(current[1])
                else:
                    raise _Conflict
                break
            except _Conflict:
                holder = (self._store.read() or ({}, ""))[0]
                if time.monotonic() >= deadline:
                    raise LeaseHeld(
                        f"{self._shown} is being written by {describe_holder(holder)}; "
                        f"try again later, wait for it (--lease-wait SECONDS), or break a "
                        f"lease whose holder is gone (vidcat lease --break)",
                        holder,
                    ) from None
                logger.info("waiting for the lease of %s: %s", self._shown, describe_holder(holder))
                time.sleep(min(self.config.poll_s, max(0.0, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._renew_loop, name="lease", daemon=True)
        self._thread.start()
        logger.info("took the lease of %s (ttl %.0f s)", self._shown, self.config.ttl_s)
        return self

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this writer still holds the lease."""
        if self._lost is None and time.monotonic() > self._valid_until:
            self._lost = "not renewed within its TTL (storage unreachable?)"
        if self._lost is not None:
            raise LeaseLost(f"lost the lease of {self._shown}: {self._lost}; stopped writing")

    def release(self) -> None:
        """Stop renewing and remove the lease (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._version is not None and self._lost is None:
                with contextlib.suppress(_Conflict):
                    self._store.delete(self._version)
                logger.info("released the lease of %s", self._shown)
            self._version = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.release()
        except Exception:  # a lease left behind expires; the job's own outcome matters
            logger.exception("could not release the lease of %s", self._shown)

    def _document(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "job": self.job,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": self._since,
            "renewed_at": _now().isoformat(),
            "expires_at": (_now() + timedelta(seconds=self.config.ttl_s)).isoformat(),
            "nonce": uuid.uuid4().hex,
        }

    def _write(self, expected: str | None) -> None:
        started = time.monotonic()
        self._version = self._store.write(self._document(), expected)
        self._valid_until = started + self.config.ttl_s

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.config.renew_every_s):
            with self._lock:
                if self._lost is not None or self._version is None:
                    return
                try:
                    self._write(self._version)
                except _Conflict:
                    self._lost = "another writer broke or took it over"
                    logger.error("lost the lease of %s: %s", self._shown, self._lost)
                    return
                except Exception as exc:  # storage trouble: retry until the TTL runs out
                    logger.warning("cannot renew the lease of %s: %s", self._shown, exc)


def lease_holder(db_uri: str, table: str, s3: S3Config | None = None) -> dict[str, Any] | None:
    """The current lease document (with `expired`), None when the table has no lease."""
    current = _store(db_uri, table, s3 or S3Config()).read()
    if current is None:
        return None
    return {**current[0], "expired": _expired(current[0])}


def break_lease(db_uri: str, table: str, s3: S3Config | None = None) -> dict[str, Any] | None:
    """Remove the table's lease, whoever holds it (an operator's decision); returns what
    was removed. The holder, if alive, finds out at its next renewal and stops writing."""
    store = _store(db_uri, table, s3 or S3Config())
    current = store.read()
    if current is None:
        return None
    with contextlib.suppress(_Conflict):
        store.delete(current[1])
    logger.warning("broke the lease of table %r: %s", table, describe_holder(current[0]))
    return current[0]
