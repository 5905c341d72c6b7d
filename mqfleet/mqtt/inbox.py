"""What an MQTT connection hands its callers, free of paho types: `Message`, the dispatcher's `Inbox`,
and the small helpers `mqfleet.mqtt.connection` and its request side share.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mqfleet import defaults
from mqfleet.wire import topics
from mqfleet.wire.codec import Wire

logger = logging.getLogger("mqfleet.mqtt.connection")

Handler = Callable[["Message"], None]


@dataclass(frozen=True)
class Message:
    """One received PUBLISH, free of paho types."""

    topic: str
    payload: bytes
    retain: bool
    dup: bool
    qos: int
    response_topic: str | None
    correlation_data: bytes | None

    def json(self, max_bytes: int = defaults.MAX_REQUEST_BYTES) -> Wire:
        """The payload as a JSON object (DecodeError when it is not one or is over max_bytes)."""
        return topics.decode(self.payload, max_bytes=max_bytes)


def subscription_id(topic_filter: str) -> int:
    # Stable across processes, so a message queued in a persistent session still
    # names a filter the next Connection with the same client id knows.
    return zlib.crc32(topic_filter.encode()) % 0x0FFFFFFE + 1


class Pending:
    __slots__ = ("event", "message")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.message: Message | None = None


class Inbox:
    """The dispatcher's queue: first in, first out, except that urgent items go ahead of the others."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._urgent: deque[Any] = deque()
        self._normal: deque[Any] = deque()

    def put(self, item: Any, *, urgent: bool = False) -> None:
        with self._cond:
            (self._urgent if urgent else self._normal).append(item)
            self._cond.notify()

    def get(self) -> Any:
        with self._cond:
            while not self._urgent and not self._normal:
                self._cond.wait()
            return self._urgent.popleft() if self._urgent else self._normal.popleft()

    def waiting(self) -> bool:
        return bool(self._urgent or self._normal)


def call_safely(func: Callable[..., None], *args: Any, what: str, log: logging.Logger = logger) -> None:
    """`func(*args)`, a raise logged on `log` and swallowed: one failing callback must not stop the thread that
    calls it (the connection's dispatcher, the agent's reader of a trainer's output)."""
    try:
        func(*args)
    except Exception:
        log.exception("%s raised", what)
