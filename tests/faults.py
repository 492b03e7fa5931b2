"""A fault-injecting HTTP proxy on loopback, in front of the S3 test server.

Clients point their S3 endpoint at the proxy; it forwards every request to the real server
and, at a chosen rate or on chosen requests, answers in its place the way object stores
misbehave: HTTP 500 (InternalError), 503 (ServiceUnavailable), 503 SlowDown, a connection
reset, or a response held back for a while. `outage` answers 503 to everything. Each fault
is counted by kind and by what the request was for (manifest read, video fetch, LanceDB
write, run file, lease...), so a test can say which paths saw faults.
"""

from __future__ import annotations

import collections
import http.client
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

KINDS = ("500", "503", "slowdown", "reset", "stall")
_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Please reduce your request rate."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


def purpose(method: str, path: str) -> str:
    """What a request is for, from its path (for the fault counts)."""
    full, path = unquote(path), unquote(path.split("?", 1)[0])  # listings name a prefix
    if "lease.json" in full:
        return "lease"
    if "_vidcat/" in full:
        return "run files"
    if ".lance" in full:
        return "lancedb write" if method in ("PUT", "POST", "DELETE") else "lancedb read"
    if path.endswith(".parquet"):
        return "manifest"
    if re.search(r"\.(mp4|mov|mkv|webm)$", path):
        return "video fetch"
    return "other"


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # resets are the point
        pass


class FaultProxy:
    """A reverse proxy to `upstream` (`http://host:port`) injecting faults.

    Attributes:
        rate: probability that a request (matching `only`, if set) gets a fault.
        kinds: the faults drawn from, uniformly.
        only: a predicate on `(method, path)` choosing which requests may fail.
        outage: answer 503 to every request (a hard outage).
        stall_s: how long a `stall` holds the response back.
        first_of_each: the first request of each purpose (manifest read, video fetch, ...)
            gets a fault too, kinds taken in turn, so every path is known to meet one.
    """

    def __init__(self, upstream: str, rate: float = 0.0, kinds=KINDS, seed: int = 0) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.rate, self.kinds = rate, tuple(kinds)
        self.only: Callable[[str, str], bool] | None = None
        self.outage = False
        self.stall_s = 1.5
        self.first_of_each = False
        self._turn = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.faults: collections.Counter = collections.Counter()
        self.requests: collections.Counter = collections.Counter()
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def summary(self) -> dict[str, dict[str, int]]:
        """`{purpose: {kind: count}}` of the faults injected so far."""
        out: dict[str, dict[str, int]] = {}
        for (what, kind), n in sorted(self.faults.items()):
            out.setdefault(what, {})[kind] = n
        return out

    def _draw(self, method: str, path: str) -> str | None:
        with self._lock:
            what = purpose(method, path)
            self.requests[what] += 1
            if self.outage:
                kind = "503"
            elif self.only is not None and not self.only(method, path):
                return None
            elif self.first_of_each and self.requests[what] == 1:
                kind, self._turn = self.kinds[self._turn % len(self.kinds)], self._turn + 1
            elif self._random.random() < self.rate:
                kind = self._random.choice(self.kinds)
            else:
                return None
            self.faults[(purpose(method, path), kind)] += 1
            return kind

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                kind = proxy._draw(self.command, self.path)
                if kind == "reset":
                    # An abortive close (RST), as a dropped connection looks to the client.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    self.connection.close()
                    return
                if kind in _ERRORS:
                    status, code, message = _ERRORS[kind]
                    xml = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        f"<Message>{message}</Message></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                if kind == "stall":
                    time.sleep(proxy.stall_s)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                finally:
                    conn.close()
                self.send_response(response.status, response.reason)
                head = self.command == "HEAD"  # its Content-Length is the object's size
                for key, value in response.getheaders():
                    if key.lower() not in _HOP and (head or key.lower() != "content-length"):
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
