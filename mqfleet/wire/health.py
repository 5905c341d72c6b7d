"""The `health` reply, which is also the coordinator's retained `coordinator/status`, and `Presence`, the
retained online/offline state of agents and coordinators.

A module of its own, like each query verb's messages (wire/hosts.py, wire/job_listing.py, wire/job_detail.py):
`mqfleet health` loads these and not the other verbs' (docs/BENCHMARKS.md, "CLI start-up"). wire/requests.py
names them too, for the modules that import every message from there.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from mqfleet.wire.codec import LONG_TEXT, WireMessage


class Presence(StrEnum):
    """An agent's or a coordinator's retained `state`: its will says offline."""

    ONLINE = "online"
    OFFLINE = "offline"



@dataclasses.dataclass(frozen=True)
class CheckResult(WireMessage):
    """One health check (coordinator/health.py): whether it passed, what it found, and when it ran."""

    ok: bool
    detail: str
    checked_ts: float



@dataclasses.dataclass(frozen=True)
class CoordinatorPeer(WireMessage):
    """One coordinator sharing the state (coordinator/tables/peers.py); `role` is `gone` for a stale heartbeat."""

    id: str
    host: str
    version: str
    role: str
    started_ts: float
    heartbeat_ts: float
    alive: bool



@dataclasses.dataclass(frozen=True)
class Health(WireMessage):
    """The `health` reply and the retained `coordinator/status`: what the checks found (their content is
    coordinator/health.py's), the manifest in force, counts, and the coordinators sharing the state."""

    state: Presence
    ts: float
    version: str = ""
    started_ts: float | None = None
    uptime_s: float | None = None
    manifest: str | None = None
    manifest_jobs: int = 0
    manifest_sha256: str | None = None
    manifest_applied_ts: float | None = None
    manifest_origin: str | None = None
    last_refused_manifest: str | None = dataclasses.field(default=None, metadata=LONG_TEXT)
    jobs_by_status: dict[str, int] = dataclasses.field(default_factory=dict)
    hosts_online: int = 0
    hosts_total: int = 0
    hosts_draining: int = 0
    hosts_quarantined: int = 0
    #: true only when the check of the database passed (coordinator/health.py)
    db_ok: bool = False
    store_ok: bool = False
    checks: dict[str, CheckResult] = dataclasses.field(default_factory=dict)
    failed_checks: list[str] = dataclasses.field(default_factory=list)
    requests_dropped: int = 0
    republishing: bool = False
    log_batches_refused: int = 0
    store: str = ""
    #: times another client connected with this coordinator's client id and the broker disconnected it
    session_takeovers: int = 0
    #: retained messages deleted from request and log topics (docs/SECURITY.md, "Replies")
    retained_cleared: int = 0
    coordinator: str = ""
    role: str = ""
    state_store: str = ""
    coordinators: list[CoordinatorPeer] = dataclasses.field(default_factory=list)

