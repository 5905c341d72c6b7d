"""Several coordinators on one state database: taking and keeping the lead, the heartbeat, adopting
the manifest another coordinator applied, and the leader's status after a follower's will
(the coordinators table and the election are coordinator/tables/peers.py's)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from mqfleet.coordinator.core import CoordinatorCore
from mqfleet.coordinator.tables import peers
from mqfleet.errors import ManifestError, MqfleetError
from mqfleet.manifest.load import parse_manifest
from mqfleet.mqtt.inbox import Message
from mqfleet.wire.requests import Presence
from mqfleet.wire.topics import decode

#: The service's logger: the coordinator's log lines keep one name whichever part writes them.
logger = logging.getLogger("mqfleet.coordinator.service")


class Leadership(CoordinatorCore):
    """The lead among coordinators (a part of `Coordinator`)."""

    def _lead(self, now: float) -> None:
        """Take or keep the lead (peers.Election), and beat the coordinators table's heart."""
        leading = self.election.hold()
        changed = leading != self.is_leader
        if leading and changed:
            self._take_lead(now)
        elif changed:
            logger.warning("coordinator %s: no longer the leader", self.config.client_id)
        self.is_leader = leading
        if changed or now - self.peers.last_heartbeat_ts >= peers.HEARTBEAT_S:
            self.peers.heartbeat("leader" if leading else "follower", now)

    def _take_lead(self, now: float) -> None:
        """The leader's first duties: fresh leases if nobody served meanwhile, every retained state republished."""
        if not self.peers.others_alive(now):
            # No agent could renew while no coordinator ran: give live leases a fresh term, so an outage
            # of the coordinators is not taken for the death of every host. A host that really died
            # meanwhile has a retained `offline` status, which shortens its leases to the grace.
            resumed = self.leases.resume_leases(now, lease_s=self.lease_s)
            if resumed:
                logger.info("resumed %d live lease(s): no coordinator served while we were away", len(resumed))
        # A coordinator killed between commit and publish left retained states behind the database:
        # the republisher publishes those that differ from what was last published (start() asks it
        # for the first lead, before it runs).
        if self.republisher.is_started:
            self.republisher.request_sweep()
        self._log_lead_taken(now)
        if self.conn.connected:
            with self.lock:
                self._publish_status(now)
                self._publish_changes()

    def _log_lead_taken(self, now: float) -> None:
        """INFO for the usual start (the only coordinator, or the same one back); WARNING when the lead
        changed hands: another coordinator died leading, or this one followed until now."""
        previous = self.peers.last_leader()
        if previous is None and self.peers.role != "follower":
            logger.info("coordinator %s: took the lead at %s", self.config.client_id, iso_time(now))
            return
        before = (f"{previous.id} on {previous.host} (its last heartbeat at {iso_time(previous.heartbeat_ts)})"
                  if previous is not None else "another coordinator")
        logger.warning("coordinator %s: took the lead from %s at %s", self.config.client_id, before, iso_time(now))

    def _follow_manifest(self) -> None:
        """Adopt the manifest in force when another coordinator applied a new one (reload)."""
        stored = self.manifests.in_force()
        mine = self.stored_manifest
        if stored is None or (mine is not None and stored.sha256 == mine.sha256 and stored.applied_ts == mine.applied_ts):
            return
        try:
            manifest = parse_manifest(stored.text, stored.source)
        except ManifestError as e:
            logger.error("the manifest in force (applied by another coordinator) does not validate here: %s", e)
            self.stored_manifest = stored
            return
        with self.lock:
            self.manifest, self.stored_manifest = manifest, stored
        logger.info("manifest %s adopted: applied by another coordinator", stored.source)

    def _on_peer_status(self, msg: Message) -> None:
        try:
            body = decode(msg.payload) if msg.payload else {}
        except MqfleetError:
            return
        if self.is_leader and body.get("state") != Presence.ONLINE and body.get("coordinator") != self.config.client_id:
            logger.info("coordinator %s went offline; the leader's status is republished", body.get("coordinator"))
            with self.lock:
                self._publish_status(self.clock())


def iso_time(ts: float) -> str:
    """A Unix time as an operator reads it in a log: ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")
