"""The coordinator's /metrics endpoint against clients that never finish a request (issue 25 item 7, X4).

prometheus_client's server gave each connection a thread and waited for it forever: 300 half-sent requests
held 308 threads and 300 descriptors of the coordinator. Now a few connections are served at a time, the
rest are closed at once, and a request head must arrive within the read timeout.
"""

from __future__ import annotations

import socket
import time

import psutil

from mqfleet.coordinator.scrape_endpoint import MAX_CONNECTIONS, READ_TIMEOUT_S
from mqfleet.local.ports import free_port
from tests.fixtures.common import scrape_metrics, wait_until
from tests.fixtures.fleet import manifest_text
from tests.fixtures.tls import TlsFleet

HALF_SENT = 300
#: Threads and descriptors a busy coordinator may add on its own while the test watches (renewals, verify pool).
SLACK = 6


def _closed_by_the_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_300_half_sent_requests_hold_a_few_threads_and_descriptors_for_a_few_seconds_and_scrapes_go_on(
    tls_fleet: TlsFleet,
) -> None:
    port = free_port()
    tls_fleet.write_manifest(manifest_text())
    coordinator = tls_fleet.start_coordinator(extra=("--metrics-port", str(port)))
    scrape_metrics(port)
    process = psutil.Process(coordinator.pid)
    threads, fds = process.num_threads(), process.num_fds()
    most_threads, most_fds = threads, fds
    socks: list[socket.socket] = []
    try:
        for _ in range(HALF_SENT):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # the blank line that ends the head never comes
            sock.setblocking(False)
            socks.append(sock)

        def turned_away() -> bool:
            nonlocal most_threads, most_fds
            most_threads, most_fds = max(most_threads, process.num_threads()), max(most_fds, process.num_fds())
            return sum(_closed_by_the_server(s) for s in socks) >= HALF_SENT - MAX_CONNECTIONS

        wait_until(turned_away, timeout_s=READ_TIMEOUT_S, what="every connection past the cap to be closed")
        started = time.monotonic()
        wait_until(lambda: all(_closed_by_the_server(s) for s in socks), timeout_s=READ_TIMEOUT_S + 5,
                   what="the read timeout to close the connections that were served")
        assert time.monotonic() - started <= READ_TIMEOUT_S + 5
    finally:
        for sock in socks:
            sock.close()
    assert most_threads <= threads + MAX_CONNECTIONS + SLACK, (threads, most_threads)
    assert most_fds <= fds + MAX_CONNECTIONS + SLACK, (fds, most_fds)
    assert scrape_metrics(port)["mqfleet_jobs"]  # a scrape is answered as before
    wait_until(lambda: process.num_threads() <= threads + SLACK, timeout_s=10, what="the serving threads to end")
