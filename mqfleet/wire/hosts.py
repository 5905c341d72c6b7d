"""The `workers` reply: each host as the coordinator knows it (a module of its own, as wire/health.py says why)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mqfleet.wire.codec import OMIT_DEFAULT, WireMessage
from mqfleet.wire.topics import JsonObject


@dataclass(frozen=True)
class HostUsage(WireMessage):
    """A host's usage summed over every attempt it ran (peaks are the largest, not a sum)."""

    attempts: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_rss_bytes: int = 0
    gpu_mem_max_bytes: int | None = None



@dataclass(frozen=True)
class Quarantine(WireMessage):
    """Why a host takes no work until an operator undrains it."""

    since_ts: float
    reason: str = ""
    jobs: list[str] = field(default_factory=list)



@dataclass(frozen=True)
class Worker(WireMessage):
    """A host as `workers` lists it."""

    id: str
    online: bool
    draining: bool
    advert: JsonObject = field(default_factory=dict)
    last_seen_ts: float | None = None
    slots: int = 0
    slots_used: int = 0
    jobs: list[str] = field(default_factory=list)
    quarantined: bool = False
    quarantine: Quarantine | None = None
    usage: HostUsage | None = None
    #: why the host's latest advert was refused (`advert` still shows its last good one)
    advert_error: str | None = None
    #: why its owner's policy keeps it from taking work now (`outside hours until 22:00 (Europe/Berlin)`,
    #: `yielding: owner busy`, `paused by owner until 14:00`); left out when it may (docs/OPERATIONS.md, "Owner policies")
    owner_wait: str | None = field(default=None, metadata=OMIT_DEFAULT)



@dataclass(frozen=True)
class WorkersReply(WireMessage):
    workers: list[Worker]

