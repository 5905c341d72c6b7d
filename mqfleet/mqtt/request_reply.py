"""The waiting side of an MQTT connection: MQTT v5 request/reply and publishes confirmed by the broker.

`RequestReply` is a base of `mqfleet.mqtt.connection.Connection`, which supplies the state declared here and the
paho calls (`_publish`, `_send_request`, `_forget_unacked`); nothing here imports paho.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from mqfleet import defaults
from mqfleet.errors import BrokerUnavailableError, NotAuthorizedError, RequestTimeoutError
from mqfleet.mqtt.config import PLAIN_REFUSED_HINT, BrokerConfig
from mqfleet.mqtt.inbox import Message, Pending
from mqfleet.wire import topics
from mqfleet.wire.codec import Wire

logger = logging.getLogger("mqfleet.mqtt.connection")

#: First wait before a request that reached no subscriber is sent again; doubled up to the cap.
RESEND_FIRST_S = 0.1
RESEND_MAX_S = 1.0


class RequestReply:
    """Requests and confirmed publishes over a connection that `mqfleet.mqtt.connection.Connection` keeps."""

    config: BrokerConfig
    client_id: str
    _lock: threading.Lock
    _pending: dict[bytes, Pending]
    _refused_mids: OrderedDict[int, str]
    _unmatched_mids: OrderedDict[int, float]
    _connects: int
    _connected: threading.Event
    _first_connack: threading.Event
    _failure: str | None
    _fatal: bool
    _started: bool
    _started_ok: bool
    _stopping: bool

    def _publish(self, topic: str, payload: bytes | str | Wire, *, qos: int, retain: bool,
                 expiry_s: int | None, properties: Any = None) -> Any:
        raise NotImplementedError  # Connection: paho's publish

    def _send_request(self, topic: str, payload: bytes, correlation: bytes, deadline: float) -> tuple[int, int] | None:
        raise NotImplementedError  # Connection: one copy of a request, with its MQTT v5 properties

    def _forget_unacked(self, mids: list[int]) -> None:
        raise NotImplementedError  # Connection: touches paho's queue

    def _shutdown(self, timeout_s: float) -> None:
        raise NotImplementedError  # Connection: DISCONNECT, stop paho's loop and the dispatcher

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish_wait(self, topic: str, payload: bytes | str | Wire, *, qos: int = 1, retain: bool = False,
                     timeout_s: float = 5.0) -> None:
        """Send and wait for the broker's PUBACK (QoS 1) or for the write (QoS 0).

        Safe from any thread, handlers included. Raises RequestTimeoutError when not
        confirmed in time and BrokerUnavailableError when the broker refuses it.
        """
        self._check_running()
        deadline = time.monotonic() + timeout_s
        if not self._connected.wait(timeout_s):
            raise RequestTimeoutError(f"publish to {topic} via {self.config.url}: not connected within {timeout_s:g}s")
        info = self._publish(topic, payload, qos=qos, retain=retain, expiry_s=None)
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            published = info.is_published()
        except (RuntimeError, ValueError):
            published = False
        with self._lock:
            refused = self._refused_mids.pop(info.mid, None)
        if refused is not None:
            raise BrokerUnavailableError(f"broker {self.config.url} refused publish to {topic}: {refused}")
        if not published:
            raise RequestTimeoutError(f"publish to {topic} via {self.config.url} not confirmed within {timeout_s:g}s")

    def stop(self, *, final: Sequence[tuple[str, bytes, bool]] = (), timeout_s: float = 5.0) -> None:
        """Publish `final` (QoS 1, waiting for PUBACK within timeout_s), DISCONNECT cleanly, stop both threads.

        A clean DISCONNECT discards the will, so callers pass their retained
        `offline` status in `final`.
        """
        if not self._started or self._stopping:
            return
        deadline = time.monotonic() + timeout_s
        for topic, payload, retain in final:
            try:
                self.publish_wait(topic, payload, retain=retain, timeout_s=max(0.1, deadline - time.monotonic()))
            except (BrokerUnavailableError, RequestTimeoutError) as e:
                logger.warning("mqtt %s: final message to %s not confirmed: %s", self.client_id, topic, e)
        self._shutdown(timeout_s=max(0.5, deadline - time.monotonic()))

    def _await_first_connack(self, wait_s: float) -> None:
        """Block until the first CONNACK, or shut down and raise BrokerUnavailableError when none came within
        `wait_s` or the broker refused (a refused CONNACK or a TLS failure ends the wait at once)."""
        deadline = time.monotonic() + wait_s
        while not self._first_connack.wait(0.05):
            if self._fatal or time.monotonic() >= deadline:
                break
        with self._lock:
            ok = self._connected.is_set()
            self._started_ok = ok
        if not ok:
            cause = self._failure or "no CONNACK"
            if not self._fatal:
                cause = f"{cause}; gave up after {wait_s:g}s"
            self._shutdown(timeout_s=2.0)
            raise BrokerUnavailableError(f"broker {self.config.url} not reached: {cause}")

    def _check_running(self) -> None:
        if not self._started or self._stopping:
            raise BrokerUnavailableError(f"connection {self.client_id} to {self.config.url} is not running")

    # -- request / reply ----------------------------------------------------------------------------------------

    def request(self, topic: str, payload: Wire, *, timeout_s: float = defaults.REQUEST_TIMEOUT_S) -> Wire:
        """Send an MQTT v5 request and return the decoded reply; RequestTimeoutError when none arrives in time."""
        return self.request_raw(topic, topics.encode(payload), timeout_s=timeout_s)

    def request_raw(self, topic: str, payload: bytes, *, timeout_s: float = defaults.REQUEST_TIMEOUT_S) -> Wire:
        """Like request(), with the payload sent byte for byte (tests send malformed ones).

        Within timeout_s the same bytes (same request id, same correlation data) are sent
        again when the broker says nobody was subscribed (the coordinator was reconnecting)
        and after our own reconnect (the reply may have been lost with our session), so a
        request is not lost to a broker restart; the coordinator answers a redelivered
        request from memory (docs/RELIABILITY.md, "Requests across a reconnect"). Each copy
        expires at the broker when our timeout does, so a late copy is never executed.
        """
        correlation = os.urandom(16)
        pending = Pending()
        with self._lock:
            self._pending[correlation] = pending
        deadline = time.monotonic() + timeout_s
        answered = False
        resend_delay_s = RESEND_FIRST_S
        resend_at: float | None = 0.0
        mid = -1
        connects = -1
        sent_at = 0.0
        mids: list[int] = []
        try:
            while True:
                now = time.monotonic()
                if resend_at is not None and now >= resend_at:
                    sent_at = time.monotonic()  # before the publish: its PUBACK may beat publish()'s return
                    sent = self._send_request(topic, payload, correlation, deadline)
                    if sent is None:
                        break  # never connected in time: nothing was sent
                    mid, connects = sent
                    mids.append(mid)
                    resend_at = None
                answered = pending.event.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                if answered or time.monotonic() >= deadline:
                    break
                with self._lock:
                    refused = self._refused_mids.pop(mid, None)
                    # a PUBACK before this copy was sent belongs to an older publish that had the same mid
                    unmatched = self._unmatched_mids.pop(mid, -1.0) >= sent_at
                    reconnected = self._connects != connects and self._connected.is_set()
                # A request the broker refuses (ACL) is never delivered: say so instead of timing out.
                if refused is not None:
                    hint = PLAIN_REFUSED_HINT if not self.config.tls else ""
                    raise NotAuthorizedError(f"broker {self.config.url} refused the request on {topic}: {refused}{hint}")
                if resend_at is None and (unmatched or reconnected):
                    why = "reached no subscriber" if unmatched else "may have been lost in our reconnect"
                    logger.debug("mqtt %s: request on %s %s; sending it again", self.client_id, topic, why)
                    resend_at = time.monotonic() + (resend_delay_s if unmatched else 0.0)
                    resend_delay_s = min(RESEND_MAX_S, resend_delay_s * 2)
        finally:
            with self._lock:
                self._pending.pop(correlation, None)
            if not answered:
                self._forget_unacked(mids)
        reply = pending.message
        if not answered or reply is None:
            state = "" if self.connected else " (not connected to the broker)"
            raise RequestTimeoutError(f"no reply on {topic} via {self.config.url} within {timeout_s:g}s{state}")
        return reply.json(max_bytes=defaults.MAX_REPLY_BYTES)

    def _resolve(self, message: Message) -> None:
        with self._lock:
            pending = self._pending.get(message.correlation_data or b"")
        if pending is None:
            logger.debug("mqtt %s: reply with unknown or late correlation id dropped", self.client_id)
            return
        pending.message = message
        pending.event.set()
