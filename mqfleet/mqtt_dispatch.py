"""Which handlers a connection calls (`subscribe`) and where they run: on a dispatcher thread of their own, or in short steps on the
network thread itself, between two turns of its loop (a busy responder such as the coordinator: every
publish a handler makes is then written by the thread that made it, with no hand-off to another).

`HandlerDispatch` is a base of `mqfleet.mqtt.Connection`, which supplies the state declared here and
the paho calls (`_topic_matches`, `_flush`); nothing here imports paho.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from mqfleet.mqtt_message import Handler, Inbox, Message, call_safely, subscription_id

logger = logging.getLogger("mqfleet.mqtt")

#: A step of handlers on the network thread ends after this long while messages still wait: the
#: connection reads again (renewals that arrived meanwhile go first) and keeps its keepalive.
NETWORK_STEP_S = 0.02


class HandlerDispatch:
    """Runs the handlers of what a connection received, in `Inbox` order (urgent first)."""

    client_id: str
    _lock: threading.Lock
    _filters: dict[str, list[Handler]]
    _filter_qos: dict[str, int]
    _no_local: set[str]
    _retain_as_published: set[str]
    _id_to_filter: dict[int, str]
    _connected: threading.Event
    _inbox: Inbox
    _user_on_connect: Callable[[bool], None] | None
    _user_on_disconnect: Callable[[], None] | None
    #: Called once the handlers of what waited have run (the end of a step on the network thread; on the
    #: dispatcher thread, whenever its inbox is empty), before their publishes are written: a responder
    #: that queued requests runs them there as one group.
    _after_step: Callable[[], None] | None
    #: The network thread's id once handlers ran on it (handlers_on_network_thread), else None.
    _network_thread_id: int | None = None

    def _topic_matches(self, topic_filter: str, topic: str) -> bool:
        raise NotImplementedError  # Connection: paho's matching

    def _flush(self) -> None:
        raise NotImplementedError  # Connection: write what the handlers published, now

    def _send_subscribe(self, topic_filter: str, qos: int) -> None:
        raise NotImplementedError  # Connection: paho's SUBSCRIBE

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1, *, no_local: bool = False,
                  retain_as_published: bool = False) -> None:
        """Call `handler` for every message on `topic_filter`, on this and every later connect.

        `no_local` asks the broker never to send back this client's own publishes on the filter;
        `retain_as_published` keeps the retain flag on live messages too (normally only messages
        sent because of the subscription carry it), so a handler can refuse retained publishes.
        """
        with self._lock:
            if no_local:
                self._no_local.add(topic_filter)
            if retain_as_published:
                self._retain_as_published.add(topic_filter)
            self._filters.setdefault(topic_filter, []).append(handler)
            previous_qos = self._filter_qos.get(topic_filter)
            qos = max(qos, previous_qos or 0)
            self._filter_qos[topic_filter] = qos
            sub_id = subscription_id(topic_filter)
            self._id_to_filter.setdefault(sub_id, topic_filter)
            # Checked under the lock that _on_connect holds while taking its snapshot, so
            # either that snapshot has this filter or we subscribe it here ourselves.
            now = self._connected.is_set()
        if now and qos != previous_qos:
            self._send_subscribe(topic_filter, qos)

    def _dispatch_forever(self) -> None:
        """The dispatcher thread: until the None that stop() queues."""
        while (item := self._inbox.get()) is not None:
            self._dispatch_item(item)
            if self._after_step is not None and not self._inbox.waiting():
                call_safely(self._after_step, what=f"{self.client_id} after_step")

    def _dispatch_waiting(self) -> bool:
        """One step on the network thread: the handlers of what waits, for at most NETWORK_STEP_S; then
        their publishes are written at once. True when messages still wait. Never raises (paho would
        end its loop)."""
        try:
            self._network_thread_id = threading.get_ident()
            deadline = time.monotonic() + NETWORK_STEP_S
            ran = False
            while (item := self._inbox.get_nowait()) is not None:
                self._dispatch_item(item)
                ran = True
                if time.monotonic() >= deadline:
                    break
            if ran:
                if self._after_step is not None:
                    call_safely(self._after_step, what=f"{self.client_id} after_step")
                self._flush()
            return self._inbox.waiting()
        except Exception:
            logger.exception("mqtt %s: dispatching on the network thread failed", self.client_id)
            return False

    def _check_may_wait(self, what: str) -> None:
        """Waiting for the broker inside a handler on the network thread would wait for itself."""
        if self._network_thread_id == threading.get_ident():
            raise RuntimeError(f"mqtt {self.client_id}: {what} from a handler on the network thread would never "
                               "see its answer (that thread reads it)")

    def _dispatch_item(self, item: tuple[str, Any]) -> None:
        kind, value = item
        if kind == "message":
            self._dispatch_message(*value)
        elif kind == "connect" and self._user_on_connect is not None:
            call_safely(self._user_on_connect, value, what=f"{self.client_id} on_connect")
        elif kind == "disconnect" and self._user_on_disconnect is not None:
            call_safely(self._user_on_disconnect, what=f"{self.client_id} on_disconnect")

    def _dispatch_message(self, message: Message, sub_ids: list[int]) -> None:
        with self._lock:
            named = [self._id_to_filter[i] for i in sub_ids if i in self._id_to_filter]
            # The broker sends one copy per matching subscription, each naming its own
            # identifier; only without identifiers do we match filters ourselves.
            filters = named or [f for f in self._filters if self._topic_matches(f, message.topic)]
            handlers = [h for f in filters for h in self._filters.get(f, ())]
        if not handlers:
            logger.debug("mqtt %s: no handler for %s", self.client_id, message.topic)
        for handler in handlers:
            call_safely(handler, message, what=f"{self.client_id} handler for {message.topic}")
