"""The hosts table: adverts, presence, draining, and the views the scheduler ranks hosts by.

A host's policy (`[[hosts]]` in the manifest) is the service's, passed in as `policies`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Container, Mapping
from typing import Any, NamedTuple

from mqfleet.coordinator import scheduler
from mqfleet.coordinator.sql.connection import SqlRow
from mqfleet.coordinator.sql.sqlite import StateFile
from mqfleet.coordinator.tables import faults
from mqfleet.manifest.types import HostPolicy
from mqfleet.wire.advert import Advert
from mqfleet.wire.published import HostEvent
from mqfleet.wire.replies import Worker
from mqfleet.wire.topics import JsonObject

logger = logging.getLogger(__name__)

Policies = Mapping[str, HostPolicy]


class HostCounts(NamedTuple):
    total: int
    online: int
    draining: int
    quarantined: int


class Hosts:
    """What the coordinator knows of each host, in one state file."""

    def __init__(self, state: StateFile) -> None:
        self.state = state
        # host events made before this process opened the file were published by whoever made them
        self._host_event_seq = faults.last_host_event(state.conn)

    def record_advert(self, host: str, advert: Advert, now: float) -> None:
        """Store a host's checked capability advert; presence comes from its status topic, not from this."""
        with self.state.transaction() as c:
            c.execute(
                "INSERT INTO hosts (id, advert, last_seen_ts) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET advert = excluded.advert, last_seen_ts = excluded.last_seen_ts",
                (host, json.dumps(advert.to_wire(), sort_keys=True), now),
            )

    def is_known_host(self, host: str, listed: Container[str]) -> bool:
        """True when `listed` (the manifest's hosts) names the host or it has published an advert
        (docs/SECURITY.md)."""
        if host in listed:
            return True
        return self.state.read_one("SELECT 1 FROM hosts WHERE id = ? AND advert != '{}'", (host,)) is not None

    def record_presence(self, host: str, online: bool, now: float, *, grace_s: float) -> list[str]:
        """Mark a host online or offline. Offline shortens its leases to `grace_s`; returns their job ids."""
        with self.state.transaction() as c:
            c.execute(
                "INSERT INTO hosts (id, online, last_seen_ts) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET online = excluded.online, last_seen_ts = excluded.last_seen_ts",
                (host, int(online), now),
            )
            if online:
                return []
            job_ids = [r[0] for r in c.execute("SELECT job_id FROM leases WHERE host = ?", (host,))]
            c.execute("UPDATE leases SET expires_ts = ? WHERE host = ? AND expires_ts > ?", (now + grace_s, host, now + grace_s))
        if job_ids:
            logger.warning("host %s: offline; %d lease(s) now expire within %gs", host, len(job_ids), grace_s)
        return job_ids

    def set_draining(self, host: str, draining: bool, now: float) -> bool:
        """Drain or undrain a host; undraining also ends its quarantine. True when a quarantine ended."""
        with self.state.transaction() as c:
            c.execute(
                "INSERT INTO hosts (id, draining) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET draining = excluded.draining",
                (host, int(draining)),
            )
            released = not draining and faults.release_host(c, host, now)
        logger.info("host %s: %s", host, "draining" if draining else "undrained")
        return released

    def take_events(self) -> list[HostEvent]:
        """Quarantine events committed since the last call, oldest first; publish them after commit."""
        with self.state.lock:
            if self.state.conn.in_transaction:
                raise RuntimeError("take_events() inside a transaction would hand out uncommitted events")
            events = faults.take_host_events(self.state.conn, self._host_event_seq)
            if events:
                self._host_event_seq = events[-1].seq
        return events

    def hosts(self, policies: Policies, *, now: float | None = None) -> list[Worker]:
        """Every host as the `workers` reply lists it, with the jobs it holds (its usage and advert problem are
        the history's and the listener's: left None here)."""
        with self.state.lock:
            views = self.views(policies, now=now)
            leases = self.state.conn.execute("SELECT host, job_id FROM leases ORDER BY granted_ts").fetchall()
            seen = {r["id"]: r["last_seen_ts"] for r in self.state.conn.execute("SELECT id, last_seen_ts FROM hosts")}
            quarantined = faults.quarantines(self.state.conn)
        held: dict[str, list[str]] = {}
        for r in leases:
            held.setdefault(r["host"], []).append(r["job_id"])
        return [
            Worker(id=v.id, advert=v.advert, online=v.online, draining=v.draining, last_seen_ts=seen[v.id],
                   slots=v.slots, slots_used=v.slots_used, jobs=held.get(v.id, []),
                   quarantined=v.id in quarantined, quarantine=quarantined.get(v.id), owner_wait=v.owner_wait or None)
            for v in views
        ]

    def counts(self) -> HostCounts:
        """How many hosts are known, online, draining and quarantined: the coordinator status counts them
        every few seconds, so by SQL rather than by building every host's record."""
        row = self.state.read_one(
            "SELECT COUNT(*), COALESCE(SUM(online), 0), COALESCE(SUM(draining), 0), "
            "(SELECT COUNT(*) FROM host_faults f JOIN hosts q ON q.id = f.host WHERE f.quarantined_ts IS NOT NULL) "
            "FROM hosts"
        )
        assert row is not None, "an aggregate always has a row"
        return HostCounts(total=int(row[0]), online=int(row[1]), draining=int(row[2]), quarantined=int(row[3]))

    def views(self, policies: Policies, where: str = "", params: tuple[Any, ...] = (), *,
              now: float | None = None) -> list[scheduler.HostView]:
        """Hosts (those matching `where` on `hosts h`) as the scheduler sees them at `now` (default: the clock), by id."""
        rows = self.state.read(
            f"SELECT h.id, h.advert, h.online, h.draining, {QUARANTINE_COLUMN}, "
            "(SELECT COUNT(*) FROM leases l WHERE l.host = h.id) AS used "
            f"FROM hosts h {where} ORDER BY h.id",
            params,
        )
        at = time.time() if now is None else now
        return [host_view(r, r["used"], policies, now=at) for r in rows]


#: The reason a host is quarantined, or '': a column of the host rows `host_view` reads (`hosts h`).
QUARANTINE_COLUMN = (
    "COALESCE((SELECT f.reason FROM host_faults f WHERE f.host = h.id AND f.quarantined_ts IS NOT NULL), '') "
    "AS quarantine"
)


def host_view(row: SqlRow, used: int, policies: Policies, *, now: float) -> scheduler.HostView:
    """A hosts row (id, advert, online, draining, quarantine) with `used` slots taken, as the scheduler sees it at `now`."""
    advert = _parsed_advert(row["advert"])
    policy = policies.get(row["id"])
    return scheduler.HostView(
        id=row["id"], advert=advert, online=bool(row["online"]), draining=bool(row["draining"]),
        slots=scheduler.host_slots(advert, policy), slots_used=used, policy=policy, quarantine=row["quarantine"] or "",
        owner_wait=scheduler.owner_wait(advert, policy, now),
    )


@functools.lru_cache(maxsize=4096)
def _parsed_advert(text: str) -> JsonObject:
    # Every claim reads its host's advert and every nudge all of them; an advert changes only when its
    # agent restarts, so each text is parsed once. The dict is shared by every view: nothing mutates it.
    advert: JsonObject = json.loads(text)
    return advert
