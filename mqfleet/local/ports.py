"""Free loopback ports for the local services (broker, S3, PostgreSQL) and the tests around them.

A port is found free by binding it, then handed to a process that binds it again a moment later. Two
callers probing at once could be handed the same port in between, so a process given a range in
`MQFLEET_LOCAL_PORTS` (`LOW-HIGH`; the test run gives each parallel worker a range of its own) takes ports
only from it, starting at a random place and going round; without one the kernel picks. Ranges below
32768 stay clear of the ports the kernel hands out to outgoing connections.
"""

from __future__ import annotations

import os
import random
import socket
import threading

from mqfleet.defaults import ENV_LOCAL_PORTS
from mqfleet.errors import ConfigurationError

#: Probes per port wanted before giving up; a range is mostly free, so a few suffice.
_TRIES = 200


class PortRange:
    """The ports `LOW-HIGH` (both included), handed out round from a random start, each one bound first to
    prove it free."""

    def __init__(self, low: int, high: int) -> None:
        if not 1024 <= low <= high <= 65535:
            raise ConfigurationError(f"{ENV_LOCAL_PORTS}={low}-{high}: give LOW-HIGH with 1024 <= LOW <= HIGH <= 65535")
        self.low, self.high = low, high
        self._next = random.randint(low, high)
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, text: str) -> PortRange:
        low, sep, high = text.partition("-")
        if not (sep and low.strip().isdigit() and high.strip().isdigit()):
            raise ConfigurationError(f"{ENV_LOCAL_PORTS}={text!r}: give LOW-HIGH, for example 20000-20999")
        return cls(int(low), int(high))

    def candidate(self) -> int:
        with self._lock:
            port = self._next
            self._next = self.low if port >= self.high else port + 1
            return port


#: One range object per setting seen, so its round goes on from call to call.
_ranges: dict[str, PortRange] = {}


def _range() -> PortRange | None:
    text = os.environ.get(ENV_LOCAL_PORTS, "")
    if text and text not in _ranges:
        _ranges[text] = PortRange.parse(text)
    return _ranges.get(text)


def _bind(port: int) -> socket.socket | None:
    """A socket bound to 127.0.0.1:port (0: any), or None when that port is taken."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s


def reserve_ports(count: int, *, also_free_at: int = 0) -> tuple[list[int], list[socket.socket]]:
    """`count` free loopback ports, each held bound until the caller closes the returned sockets (just before
    the process that needs them starts). `also_free_at`: port + this must be free too, and is held as well."""
    span = _range()
    held: list[socket.socket] = []
    ports: list[int] = []
    for _ in range(_TRIES * count):
        if len(ports) == count:
            return ports, held
        s = _bind(span.candidate() if span else 0)
        if s is None:
            continue
        port = int(s.getsockname()[1])
        pair = _bind(port + also_free_at) if also_free_at and port + also_free_at <= 65535 else None
        if also_free_at and pair is None:
            s.close()
            continue
        held += [s] if pair is None else [s, pair]
        ports.append(port)
    for s in held:
        s.close()
    where = f" in {ENV_LOCAL_PORTS}={span.low}-{span.high}" if span else ""
    raise ConfigurationError(f"found only {len(ports)} of {count} free loopback ports{where}")


def free_port() -> int:
    """One free loopback port, released for the caller to bind."""
    ports, held = reserve_ports(1)
    for s in held:
        s.close()
    return ports[0]
