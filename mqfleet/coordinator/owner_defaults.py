"""The manifest's owner policy defaults, sent to each host's agent as a retained message it alone reads.

A `[[hosts]]` entry's owner keys (hours, when_busy, on_yield, ...) are defaults for what the host's own
agent config leaves unset (docs/OPERATIONS.md, "Owner policies"). The coordinator keeps one retained message
per host on `control/{host}/policy` (the ACL lets only the coordinator write it and only that host read it):
the policy's JSON, or an empty payload (no defaults, which also deletes a retained one). It publishes after
each manifest apply, for the hosts whose defaults changed, and at each (re)connect for every host it knows,
since a broker without persistence forgets retained messages and a restarted coordinator does not know what
it published before.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping

from mqfleet.errors import MqfleetError
from mqfleet.manifest.types import HostPolicy
from mqfleet.mqtt.connection import Connection
from mqfleet.wire.topics import Topics

logger = logging.getLogger(__name__)


class OwnerDefaults:
    """What was last published to each host's `control/{host}/policy`, and the publishing."""

    def __init__(self, conn: Connection, topics: Topics, known_hosts: Callable[[], Iterable[str]]) -> None:
        self._conn = conn
        self._topics = topics
        self._known_hosts = known_hosts
        self._sent: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def publish(self, policies: Mapping[str, HostPolicy], *, everyone: bool = False) -> int:
        """Publish the defaults of `policies` (the manifest's hosts) where they changed, or to every host the
        manifest or the hosts table names (`everyone`); the number of messages sent."""
        payloads = {host: _payload(policy) for host, policy in policies.items()}
        with self._lock:
            targets = set(payloads) | set(self._sent)
            if everyone:
                targets |= set(self._known_hosts())
            sent = 0
            for host in sorted(targets):
                payload = payloads.get(host, b"")
                if not everyone and self._sent.get(host, b"") == payload:
                    continue
                try:
                    self._conn.publish(self._topics.owner_defaults(host), payload, qos=1, retain=True)
                except MqfleetError as e:  # not connected yet (a load at start): the connect sends them all
                    logger.debug("owner policy defaults of %s not sent yet: %s", host, e)
                    continue
                self._sent[host] = payload
                sent += 1
        if sent:
            logger.info("owner policy defaults: %d host(s) sent", sent)
        return sent


def _payload(policy: HostPolicy) -> bytes:
    if policy.owner is None:
        return b""
    return json.dumps(policy.owner.to_wire(), sort_keys=True).encode()
