"""The only module that imports paho: connections, subscriptions, publish, wills and persistent sessions.

The broker's URL and TLS files are `mqfleet.mqtt.config.BrokerConfig` and received messages
`mqfleet.mqtt.inbox.Message`; MQTT v5 request/reply and confirmed
publishes are the paho-free base class `mqfleet.mqtt.request_reply.RequestReply`.

paho's return codes, reason codes and callback threads stop here: callers get
`BrokerUnavailableError` / `RequestTimeoutError`, plain `Message` objects, and
handlers that run on one dispatcher thread per connection (`mqfleet.mqtt.subscriptions`),
never on paho's network thread (a slow or raising handler there would stall keepalives
or kill the loop).
"""

from __future__ import annotations

import logging
import math
import ssl
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqfleet import defaults
from mqfleet.errors import BrokerUnavailableError, ConfigurationError
from mqfleet.mqtt.config import PLAIN_REFUSED_HINT, BrokerConfig, describe_socket_error, set_nodelay
from mqfleet.mqtt.inbox import Handler, Inbox, Message, Pending, call_safely, subscription_id
from mqfleet.mqtt.request_reply import RequestReply
from mqfleet.mqtt.subscriptions import HandlerDispatch
from mqfleet.wire import topics
from mqfleet.wire.codec import Wire

logger = logging.getLogger(__name__)
_paho_logger = logging.getLogger("mqfleet.mqtt.connection.paho")
# paho logs every packet at DEBUG; only its warnings and errors are worth a line.
_paho_logger.setLevel(logging.WARNING)


def _drop_not_connected_noise(record: logging.LogRecord) -> bool:
    # paho 2.2 logs this at ERROR after every failed first connect attempt, although it
    # then retries as intended; the real cause is reported by start() or our warning.
    return not str(record.msg).startswith("Client is not connected.")


_paho_logger.addFilter(_drop_not_connected_noise)

#: PUBACK reason "No matching subscribers": the broker took the publish but nobody was subscribed.
_NO_MATCHING_SUBSCRIBERS = 0x10
#: DISCONNECT reason "Session taken over": another client connected with our client id.
_SESSION_TAKEN_OVER = 0x8E
#: Longest wait between two tries to reconnect (paho doubles it from the first, 1 s or less).
_RECONNECT_MAX_DELAY_S = 10


class Connection(HandlerDispatch, RequestReply):
    """One MQTT v5 client: remembered subscriptions, publish, request/reply, will, persistent session.

    Thread safety: publish, publish_wait, request, reply and subscribe may be called
    from any thread, handlers included (handlers run on this connection's single
    dispatcher thread; request replies are matched on paho's network thread, so a
    handler may call request() without deadlock).
    """

    def __init__(self, config: BrokerConfig, *, client_id: str, will: tuple[str, bytes, bool] | None = None,
                 persistent: bool = False, session_expiry_s: int = defaults.SESSION_EXPIRY_S,
                 keepalive_s: int = defaults.KEEPALIVE_S, on_connect: Callable[[bool], None] | None = None,
                 on_disconnect: Callable[[], None] | None = None, reply_prefix: str = defaults.TOPIC_PREFIX,
                 reply_topic: str | None = None, is_urgent: Callable[[str], bool] | None = None,
                 after_step: Callable[[], None] | None = None, on_socket: Callable[[Any], None] | None = None,
                 on_publish: Callable[[str, bytes | str], None] | None = None) -> None:
        config.validate()
        if not client_id or any(c in client_id for c in "/+#"):
            raise ConfigurationError(f"client id {client_id!r} must be non-empty and free of '/', '+' and '#'")
        self.config = config
        self.client_id = client_id
        # The coordinator answers only inside the requester's own reply namespace (docs/SECURITY.md);
        # a tool that speaks for another identity (the soak's stale-request injector) names a topic there.
        self.reply_topic = reply_topic or topics.Topics(reply_prefix).reply(client_id)
        self._reply_sub_id = subscription_id(self.reply_topic)
        self.persistent = persistent
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._user_on_connect = on_connect
        self._user_on_disconnect = on_disconnect
        self._after_step = after_step
        #: Called (on paho's thread) with each new socket before CONNECT goes out on it.
        self._on_socket = on_socket
        #: told of every message handed to paho (topic, payload), on the publishing thread: it must return at once
        self._on_publish_hook = on_publish

        self._lock = threading.Lock()
        self._filters: dict[str, list[Handler]] = {}
        self._filter_qos: dict[str, int] = {}
        self._no_local: set[str] = set()
        self._retain_as_published: set[str] = set()
        self._id_to_filter: dict[int, str] = {}
        self._pending: dict[bytes, Pending] = {}
        self._refused_mids: OrderedDict[int, str] = OrderedDict()
        #: mid -> when its PUBACK said "no matching subscribers" (monotonic), for request_raw's resends.
        self._unmatched_mids: OrderedDict[int, float] = OrderedDict()
        self._connects = 0
        self._connected = threading.Event()
        self._first_connack = threading.Event()
        self._failure: str | None = None
        self._fatal = False
        self._started = False
        self._started_ok = False
        self._stopping = False
        self._inbox = Inbox()
        #: Messages on topics this says are urgent are dispatched before others already waiting
        #: (the coordinator's renewals, so a burst of slower requests never holds one back).
        self._is_urgent = is_urgent
        self._dispatcher = threading.Thread(target=self._dispatch_forever, name=f"mqfleet-dispatch-{client_id}",
                                            daemon=True)
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        client.enable_logger(_paho_logger)
        client.reconnect_delay_set(min_delay=1, max_delay=_RECONNECT_MAX_DELAY_S)
        if config.tls:
            client.tls_set_context(config.ssl_context())
        if will is not None:
            topic, payload, retain = will
            client.will_set(topic, payload, qos=1, retain=retain)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client = client

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self, wait_s: float | None = 10.0) -> None:
        """Connect in the background; with wait_s, block until the first CONNACK or raise BrokerUnavailableError.

        A refused TCP connection is retried until wait_s; a refused CONNACK or a TLS
        failure ends the wait at once, since retrying cannot fix it.
        """
        if self._started:
            raise RuntimeError(f"connection {self.client_id} was already started")
        self._started = True
        properties = _properties(PacketTypes.CONNECT)
        if self.persistent:
            properties.SessionExpiryInterval = self._session_expiry_s
        if wait_s is not None:
            # paho's bound on each TCP connect and TLS handshake, and its first pause before trying again:
            # never past the wait, so giving up never waits out a paho sleep (stop joins its thread). paho
            # types the delay as int and sleeps on a float all the same.
            self._client.connect_timeout = max(0.05, min(5.0, wait_s))
            self._client.reconnect_delay_set(min(1, max(0.05, wait_s)), _RECONNECT_MAX_DELAY_S)  # type: ignore[arg-type]
        self._client.connect_async(self.config.host, self.config.port, keepalive=self._keepalive_s,
                                   clean_start=not self.persistent, properties=properties)
        self._dispatcher.start()
        self._client.loop_start()
        if wait_s is None:
            self._started_ok = True
            return
        self._await_first_connack(wait_s)

    def _shutdown(self, timeout_s: float) -> None:
        self._stopping = True
        was_connected = self._connected.is_set()
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._inbox.put(None)
        if threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(timeout_s)
            if self._dispatcher.is_alive():
                logger.warning("mqtt %s: a handler was still running after %.1fs at stop", self.client_id, timeout_s)
        if was_connected:
            logger.info("mqtt %s: disconnected from %s", self.client_id, self.config.url)

    # -- subscribe and publish ----------------------------------------------------------------------------------

    def _send_subscribe(self, topic_filter: str, qos: int) -> None:
        properties = _properties(PacketTypes.SUBSCRIBE)
        properties.SubscriptionIdentifier = subscription_id(topic_filter)
        options = SubscribeOptions(qos=qos, noLocal=topic_filter in self._no_local,
                                   retainAsPublished=topic_filter in self._retain_as_published)
        rc, _ = self._client.subscribe(topic_filter, options=options, properties=properties)
        if rc != paho.MQTT_ERR_SUCCESS:
            logger.debug("mqtt %s: subscribe %s deferred to next connect (%s)", self.client_id, topic_filter,
                         paho.error_string(rc))

    def publish(self, topic: str, payload: bytes | str | Wire, *, qos: int = 1, retain: bool = False,
                expiry_s: int | None = None, response_topic: str | None = None) -> None:
        """Send without waiting; while disconnected paho keeps QoS>0 messages in memory and sends them on reconnect.

        `response_topic` sets the MQTT v5 Response Topic as given (tests and probes; request() sets its own).
        """
        properties = None
        if response_topic is not None:
            properties = _properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = response_topic
        self._publish(topic, payload, qos=qos, retain=retain, expiry_s=expiry_s, properties=properties)

    def unacked_publishes(self) -> int:
        """QoS 1 messages handed to paho and not yet acknowledged by the broker: what is queued ahead
        of the next publish (a reply waits behind them)."""
        # paho 2.x keeps every QoS>0 message in _out_messages from publish() until its PUBACK, those past
        # the in-flight window included; reading a dict's length is atomic. No public API says this.
        return len(getattr(self._client, "_out_messages", ()))

    def _publish(self, topic: str, payload: bytes | str | Wire, *, qos: int, retain: bool,
                 expiry_s: int | None, properties: Properties | None = None) -> paho.MQTTMessageInfo:
        self._check_running()
        data = topics.encode(payload) if isinstance(payload, dict) else payload
        if expiry_s is not None:
            properties = properties or _properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = expiry_s
        info = self._client.publish(topic, data, qos=qos, retain=retain, properties=properties)
        if self._on_publish_hook is not None and info.rc != paho.MQTT_ERR_QUEUE_SIZE:
            self._on_publish_hook(topic, data)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            raise BrokerUnavailableError(f"publish to {topic}: outgoing queue for {self.config.url} is full")
        if info.rc == paho.MQTT_ERR_NO_CONN:
            logger.debug("mqtt %s: > %s queued while disconnected (qos %d)", self.client_id, topic, qos)
        else:
            logger.debug("mqtt %s: > %s %d bytes", self.client_id, topic, len(data))
        return info

    # -- request / reply ----------------------------------------------------------------------------------------

    def _forget_unacked(self, mids: list[int]) -> None:
        """Drop a given-up request that paho still holds unacknowledged, so its next connect does not send it.

        A request published just as the connection died (before paho noticed) stays in paho's
        queue and would go out at the reconnect, perhaps long after its sender gave up, with a
        fresh expiry at the broker. Only while disconnected: paho then recounts its in-flight
        window at the reconnect, so removing a message cannot leak a slot of it. paho has no
        public call for this; its private queue is touched here, at the one paho boundary.
        """
        client = self._client
        try:
            with client._out_message_mutex:
                if self._connected.is_set():
                    return
                dropped = [m for m in mids if client._out_messages.pop(m, None) is not None]
        except AttributeError:  # a paho without these internals: the broker's expiry still bounds it
            return
        if dropped:
            logger.debug("mqtt %s: request copies %s given up while disconnected; not sent at reconnect",
                         self.client_id, dropped)

    def _send_request(self, topic: str, payload: bytes, correlation: bytes, deadline: float) -> tuple[int, int] | None:
        """Publish one copy of a request once connected; (mid, connect count), or None if not connected in time.

        Never handed to paho while disconnected: paho would keep it and send it at its
        next connect, perhaps long after we gave up, with a full expiry interval.
        """
        if not self._connected.wait(max(0.0, deadline - time.monotonic())):
            return None
        with self._lock:
            connects = self._connects
        properties = _properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self.reply_topic
        properties.CorrelationData = correlation
        properties.MessageExpiryInterval = max(1, math.ceil(deadline - time.monotonic()))
        info = self._publish(topic, payload, qos=1, retain=False, expiry_s=None, properties=properties)
        return info.mid, connects

    def reply(self, request: Message, payload: bytes | Wire) -> None:
        """Answer `request` on its Response Topic with its Correlation Data (QoS 1, never retained)."""
        if not request.response_topic:
            logger.debug("mqtt %s: request on %s has no response topic; reply dropped", self.client_id, request.topic)
            return
        properties = _properties(PacketTypes.PUBLISH)
        if request.correlation_data is not None:
            properties.CorrelationData = request.correlation_data
        self._publish(request.response_topic, payload, qos=1, retain=False, expiry_s=None, properties=properties)

    # -- paho callbacks: network thread; they must never raise or block ------------------------------------------

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        set_nodelay(sock)
        if self._on_socket is not None:
            call_safely(self._on_socket, sock, what=f"{self.client_id} on_socket")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        try:
            if reason.is_failure:
                hint = PLAIN_REFUSED_HINT if reason.getName() == "Not authorized" and not self.config.tls else ""
                self._failure = f"connection refused by the broker: {reason.getName()}{hint}"
                if not self._started_ok:
                    # paho would retry a refused CONNACK forever; start() reports it instead.
                    self._fatal = True
                    client.disconnect()
                else:
                    logger.warning("mqtt %s: %s; retrying", self.client_id, self._failure)
                self._first_connack.set()
                return
            with self._lock:
                self._connected.set()
                self._connects += 1
                subscriptions = list(self._filter_qos.items())
            session_present = bool(flags.session_present)
            for topic_filter, qos in [(self.reply_topic, 1), *subscriptions]:
                self._send_subscribe(topic_filter, qos)
            logger.info("mqtt %s: connected to %s (session present: %s)", self.client_id, self.config.url,
                        session_present)
            self._first_connack.set()
            self._inbox.put(("connect", session_present))
        except Exception:
            logger.exception("mqtt %s: on_connect failed", self.client_id)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        try:
            # paho calls this inside its `except OSError` block, so the cause is still current.
            error = sys.exc_info()[1]
            self._failure = describe_socket_error(error)
            if isinstance(error, ssl.SSLError) and not self._started_ok:
                self._fatal = True
            if self._started_ok:
                logger.warning("mqtt %s: reconnect to %s failed: %s", self.client_id, self.config.url, self._failure)
        except Exception:
            logger.exception("mqtt %s: on_connect_fail failed", self.client_id)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        try:
            was_connected = self._connected.is_set()
            self._connected.clear()
            if not was_connected and not self._started_ok and not self._stopping and self.config.tls:
                # TLS 1.3 brokers check the client certificate after the handshake and just close:
                # retrying cannot help, so start() reports it at once.
                self._failure = ("the broker closed the TLS connection before CONNACK: client certificate "
                                 "missing, expired, revoked or from another CA")
                self._fatal = True
                return
            if self._stopping or not was_connected:
                return
            # Mosquitto 2.0.15+ says when another client took our client id (2.0.11 just closes the socket;
            # docs/SECURITY.md, "Trade-offs and residual risks").
            why = ("another client connected with our client id (session taken over)"
                   if getattr(reason, "value", None) == _SESSION_TAKEN_OVER
                   else reason.getName() if hasattr(reason, "getName") else reason)
            logger.warning("mqtt %s: lost connection to %s (%s); reconnecting", self.client_id, self.config.url, why)
            self._inbox.put(("disconnect", None))
        except Exception:
            logger.exception("mqtt %s: on_disconnect failed", self.client_id)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            props = msg.properties
            message = Message(
                topic=msg.topic, payload=bytes(msg.payload), retain=bool(msg.retain), dup=bool(msg.dup),
                qos=int(msg.qos), response_topic=getattr(props, "ResponseTopic", None) or None,
                correlation_data=getattr(props, "CorrelationData", None),
            )
            sub_ids = list(getattr(props, "SubscriptionIdentifier", None) or [])
            logger.debug("mqtt %s: < %s %d bytes", self.client_id, message.topic, len(message.payload))
            reply_id = self._reply_sub_id
            if reply_id in sub_ids or (not sub_ids and message.topic == self.reply_topic):
                self._resolve(message)
                sub_ids = [i for i in sub_ids if i != reply_id]
                if not sub_ids:
                    return
            urgent = self._is_urgent is not None and self._is_urgent(message.topic)
            self._inbox.put(("message", (message, sub_ids)), urgent=urgent)
        except Exception:
            logger.exception("mqtt %s: on_message failed", self.client_id)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        try:
            if reason.is_failure:
                with self._lock:
                    self._refused_mids[mid] = reason.getName()
                    while len(self._refused_mids) > 1000:
                        self._refused_mids.popitem(last=False)
                logger.warning("mqtt %s: broker refused publish mid %d: %s", self.client_id, mid, reason.getName())
            elif reason == _NO_MATCHING_SUBSCRIBERS:
                with self._lock:
                    self._unmatched_mids[mid] = time.monotonic()
                    while len(self._unmatched_mids) > 1000:
                        self._unmatched_mids.popitem(last=False)
        except Exception:
            logger.exception("mqtt %s: on_publish failed", self.client_id)

    # -- what HandlerDispatch asks of paho ----------------------------------------------------------------------

    def _topic_matches(self, topic_filter: str, topic: str) -> bool:
        return bool(paho.topic_matches_sub(topic_filter, topic))



def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]
