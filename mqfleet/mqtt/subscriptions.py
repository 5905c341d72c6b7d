"""Which handlers a connection calls (`subscribe`) and how: on its one dispatcher thread, in `Inbox`
order (urgent first), with `after_step` called whenever the inbox runs empty (the coordinator then
runs the requests it queued meanwhile as one group).

`HandlerDispatch` is a base of `mqfleet.mqtt.connection.Connection`, which supplies the state declared here and
the paho calls (`_topic_matches`, `_send_subscribe`); nothing here imports paho.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from mqfleet.mqtt.inbox import Handler, Inbox, Message, call_safely, subscription_id

logger = logging.getLogger("mqfleet.mqtt.connection")


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
    #: Called on the dispatcher thread whenever its inbox is empty after a message: a responder that
    #: queued requests runs them there as one group.
    _after_step: Callable[[], None] | None

    def _topic_matches(self, topic_filter: str, topic: str) -> bool:
        raise NotImplementedError  # Connection: paho's matching

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
