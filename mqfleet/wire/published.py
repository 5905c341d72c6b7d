"""What is published outside requests and replies: by agents (their retained status, their trainers' log
batches) and by the coordinator (job and host events, nudges, control messages); and the stored records
the coordinator's verbs read but no reply carries whole (a verified store object).

The publishers build these frozen dataclasses; `to_wire()` makes the JSON at the last moment (the
publish), and a reader checks one back with `from_wire()`. The records the replies
carry are in mqfleet/wire/replies.py, the job row and the agent verbs' messages in mqfleet/wire/requests.py.
Fields are only ever added, with a default (docs/INTERNALS.md).
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Annotated

from mqfleet.lifecycle import JobStatus
from mqfleet.wire.codec import OMIT_DEFAULT, Bounds, Wire, WireMessage, wire_name
from mqfleet.wire.health import Presence
from mqfleet.wire.topics import MAX_LOG_LINES_PER_BATCH

# --- what agents publish (docs/INTERNALS.md, "Topics") ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostStatus(WireMessage):
    """An agent's retained `hosts/{host}/status`; its will is the bare `{"state": "offline"}`."""

    state: Presence
    ts: float | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    jobs: list[str] | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    slots: int | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)


@dataclasses.dataclass(frozen=True)
class LogBatch(WireMessage):
    """Trainer output lines on `hosts/{host}/log/{job_id}`; `attempt` files late lines under the right one. Lines
    past MAX_LOG_LINES_PER_BATCH are dropped (agents split bigger flushes), a batch whose lines are not strings
    holds none."""

    job_id: str
    lines: Annotated[list[str], Bounds(max_items=MAX_LOG_LINES_PER_BATCH, lenient=True)] = dataclasses.field(
        default_factory=list)
    ts: float | None = None
    attempt: int | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)


@dataclasses.dataclass(frozen=True)
class StoredObject(WireMessage):
    """An object verified in the store: its size and sha256 were checked when it was recorded."""

    sha256: str
    size: int
    key: str
    verified_ts: float


@dataclasses.dataclass(frozen=True)
class JobEvent(WireMessage):
    """A job's status change as published on `events` (the wire names the old status `from`)."""

    seq: int
    ts: float
    job_id: str
    from_status: JobStatus | None = dataclasses.field(metadata=wire_name("from"))
    to: JobStatus
    reason: str
    host: str | None = None


@dataclasses.dataclass(frozen=True)
class HostEvent(WireMessage):
    """A host quarantined or released, published on `events` beside the job events; `to` and `reason`
    read like a job event's, so a plain event reader shows something sensible."""

    seq: int
    ts: float
    host: str
    #: `quarantined` or `released`
    to: str
    reason: str
    jobs: list[str] = dataclasses.field(default_factory=list)

    @property
    def kind(self) -> str:
        """`host_quarantined` or `host_released`: what sets it apart from a job event on the same topic."""
        return f"host_{self.to}"

    def to_wire(self) -> Wire:
        return {"seq": self.seq, "ts": self.ts, "kind": self.kind, "host": self.host, "job_id": None,
                "from": None, "to": self.to, "reason": self.reason, "jobs": list(self.jobs)}


@dataclasses.dataclass(frozen=True)
class Nudge(WireMessage):
    """The QoS 0 `work` message: there may be work. Only the `hosts` named act on it (absent: every agent);
    `jobs` names at most a few of the newly claimable jobs."""

    reason: str
    ts: float
    hosts: list[str] | None = None
    jobs: list[str] | None = None

    def to_wire(self) -> Wire:
        # absent, not null, when not given: agents before the typed wire read a present `hosts` as a list
        wire: Wire = {"reason": self.reason, "ts": self.ts}
        if self.hosts is not None:
            wire["hosts"] = self.hosts
        if self.jobs is not None:
            wire["jobs"] = self.jobs
        return wire


class ControlAction(StrEnum):
    """What a control message asks of an agent."""

    CANCEL = "cancel"  # end this lease's attempt: the job was cancelled


@dataclasses.dataclass(frozen=True)
class ControlMessage(WireMessage):
    """What the coordinator sends to one agent's `control` topic: cancel this lease's job (an action this
    agent does not know is refused by from_wire, naming the field)."""

    action: ControlAction
    job_id: str
    lease_id: str
