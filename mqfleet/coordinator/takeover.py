"""Noticing that another client took the coordinator's client id: `TakeoverWatch`.

MQTT lets any client that may connect pick any client id, and the broker disconnects whoever held
it. Mosquitto 2.0.11 (Debian 12) closes the old connection without a word (the DISCONNECT with
reason 0x8E "session taken over" came in 2.0.15), so the coordinator would see only a lost
connection. The project's mosquitto.conf publishes the broker's own log lines on
`$SYS/broker/log/N` (`log_dest topic`; the ACL lets only the coordinator read them), and every
connect there says `New client connected from ADDRESS as CLIENT_ID (...)`. A second connection of
the coordinator's own reads them: a connect under the coordinator's client id from an address
none of its sockets had is someone else's, and is logged with that address and user and counted
(`session_takeovers` in `health`, `mqfleet_session_takeovers_total`). The count assumes the
coordinator reaches the broker without address translation, as on the broker's host.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from typing import Any

from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Message
from mqfleet.wire.topics import BROKER_LOG_NOTICES

logger = logging.getLogger("mqfleet.coordinator.service")
#: `New client connected from 10.0.0.7:50123 as coordinator (p5, c1, k60, u'host-b').`
_CONNECTED = re.compile(r"New client connected from (\S+) as (\S+) \((p\d[^)]*)\)")
_USER = re.compile(r"u'([^']*)'")
#: A log line is short; a longer payload on that topic is not one.
_MAX_LINE = 2048
#: Local addresses of the coordinator's latest sockets kept, for its own reconnects seen late in the log.
_OWN_ADDRESSES_KEPT = 16


class TakeoverWatch:
    """Counts connects under `client_id` that came from none of the sockets `saw_socket` was shown, read off the
    broker's log. The coordinator's connection shows it each socket it opens (`Connection(on_socket=...)`)."""

    def __init__(self, broker: BrokerConfig, *, client_id: str, reply_prefix: str) -> None:
        self.client_id = client_id
        self._lock = threading.Lock()
        self._own_addresses: deque[str] = deque(maxlen=_OWN_ADDRESSES_KEPT)
        self._count = 0
        self.conn = Connection(broker, client_id=f"{client_id}-watch", reply_prefix=reply_prefix)
        self.conn.subscribe(BROKER_LOG_NOTICES, self._on_line, qos=0)

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def start(self, wait_s: float | None) -> None:
        self.conn.start(wait_s=wait_s)

    def stop(self) -> None:
        self.conn.stop(timeout_s=2.0)

    def saw_socket(self, sock: Any) -> None:
        """Remember our end of a socket of the coordinator's connection: paho shows it before CONNECT goes out on
        it, so before the broker can log the connect. "HOST:PORT", as Mosquitto writes a client's address."""
        try:
            host, port = sock.getsockname()[:2]
        except (OSError, AttributeError, TypeError, ValueError):  # a socket type without an address
            return
        with self._lock:
            self._own_addresses.append(f"{host}:{port}")

    def _on_line(self, msg: Message) -> None:
        if len(msg.payload) > _MAX_LINE:
            return
        line = msg.payload.decode("utf-8", "replace")
        found = _CONNECTED.search(line)
        if found is None or found.group(2) != self.client_id:
            return
        address, details = found.group(1), found.group(3)
        with self._lock:
            if address in self._own_addresses:
                return  # our own (re)connect
            self._count += 1
            count = self._count
        user = _USER.search(details)
        logger.warning("client id %s taken by a client from %s%s (%d time(s) so far); the broker disconnected "
                       "this coordinator, which reconnects and takes it back (docs/SECURITY.md)", self.client_id,
                       address, f" as user {user.group(1)!r}" if user else " without a user name", count)
