"""The HTTP side of `/metrics`: a small server whose cost per client is bounded.

`prometheus_client.start_http_server` gives every connection a thread and waits on it forever,
so 300 connections that never finish their request held 300 threads and 300 descriptors. Here
a connection gets at most `MAX_CONNECTIONS` threads between them (one more is accepted and
closed at once), has `READ_TIMEOUT_S` in all to send its request head (`MAX_REQUEST_BYTES` at
most; a byte at a time does not stretch it) and `WRITE_TIMEOUT_S` to take the reply, and is
closed after one reply. It is meant for Prometheus on a trusted network; what to put in front
before binding it off loopback is in docs/OPERATIONS.md, "Metrics".
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

logger = logging.getLogger(__name__)

#: Connections served at once; Prometheus needs one per scrape.
MAX_CONNECTIONS = 8
#: Seconds a client has, in all, to send its request line and headers.
READ_TIMEOUT_S = 5.0
#: Seconds a client has to take the whole reply.
WRITE_TIMEOUT_S = 10.0
#: A scrape's request head is a few hundred bytes.
MAX_REQUEST_BYTES = 8192
_PATHS = ("/metrics", "/")


class MetricsServer(socketserver.ThreadingTCPServer):
    """Serves one registry at /metrics, a thread per connection up to MAX_CONNECTIONS."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    # Connections past the cap are accepted and closed at once, so the kernel's queue stays short.
    request_queue_size = 64

    def __init__(self, host: str, port: int, registry: CollectorRegistry, *,
                 max_connections: int = MAX_CONNECTIONS, read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.registry = registry
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        #: Connections closed unserved because MAX_CONNECTIONS were open (read by tests and logs).
        self.turned_away = 0
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _ScrapeHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.turned_away += 1
            if self.turned_away <= 10 or self.turned_away % 1000 == 0:
                logger.warning("metrics: %d connections open; closing one from %s unserved (%d so far)",
                               self.max_connections, client_address[0], self.turned_away)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _ScrapeHandler(socketserver.BaseRequestHandler):
    """One request, one reply, then the connection closes (HTTP/1.0)."""

    server: MetricsServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        head = _read_head(sock, time.monotonic() + self.server.read_timeout_s)
        if head is None:
            return  # too slow, too long or gone: nothing worth an answer
        method, path, accept = head
        if method not in ("GET", "HEAD"):
            self._send(sock, "405 Method Not Allowed", b"GET /metrics\n", "text/plain; charset=utf-8")
            return
        if path.split("?", 1)[0] not in _PATHS:
            self._send(sock, "404 Not Found", b"see /metrics\n", "text/plain; charset=utf-8")
            return
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.server.registry)
        self._send(sock, "200 OK", b"" if method == "HEAD" else body, content_type, length=len(body))

    @staticmethod
    def _send(sock: socket.socket, status: str, body: bytes, content_type: str, *, length: int | None = None) -> None:
        head = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n")
        sock.settimeout(WRITE_TIMEOUT_S)  # since Python 3.5 a bound on the whole sendall
        try:
            sock.sendall(head.encode("ascii") + body)
        except OSError:
            pass  # the scraper went away; nothing to tell it


def _read_head(sock: socket.socket, deadline: float) -> tuple[str, str, str] | None:
    """(method, path, Accept) of a request head received before `deadline`, or None."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or len(data) > MAX_REQUEST_BYTES:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(MAX_REQUEST_BYTES + 1 - len(data))
        except OSError:  # the timeout included
            return None
        if not chunk:
            return None
        data += chunk
    lines = data.decode("latin-1").splitlines()
    words = lines[0].split() if lines else []
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        return None
    accept = next((line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("accept:")), "")
    return words[0], words[1], accept

