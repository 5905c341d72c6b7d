"""The job state machine: statuses, allowed transitions and what ends an attempt. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    """A job's status; the values are the wire strings (and what str() and f-strings show)."""

    PENDING = "pending"
    CLAIMED = "claimed"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Cause(StrEnum):
    """Why an attempt ended without a completion; the values are the wire strings."""

    APP = "app"  # the trainer exited non-zero or its output could not be stored
    LOST = "lost"  # the host vanished and the lease expired
    CANCELLED = "cancelled"  # an operator cancelled the job
    SHUTDOWN = "shutdown"  # an agent before `preempted` stopped gracefully and handed the job back
    TIMEOUT = "timeout"  # the attempt ran past the job's timeout_s and the agent stopped it
    STALLED = "stalled"  # the trainer printed nothing and reported no progress for stall_s
    PREEMPTED = "preempted"  # handed back by the host's owner policy, the owner's pause or a clean agent shutdown
    OOM = "oom"  # the trainer's process tree went past its memory limit and was killed


@dataclass(frozen=True)
class CauseRules:
    """What an attempt's end with a cause means for the job and the host."""

    #: an agent may report it in `fail` (the coordinator decides `lost` and `cancelled` itself)
    reported_by_agent: bool
    #: it uses up one of the job's `max_attempts`
    charged: bool
    #: the job's retry waits its back-off and prefers a host that has not failed it (docs/RELIABILITY.md)
    fault: bool
    #: it extends the host's failure streak towards `quarantine_after`
    quarantines: bool


#: The one table of causes (docs/RELIABILITY.md, "Jobs that misbehave"). `lost` is a fault but does not
#: quarantine: a broker outage loses every host at once. `oom` is the job's size against the host's memory:
#: its retry prefers a host with more, and it says nothing against the host. `preempted` (and the older
#: agents' `shutdown`) is a hand-back, never a failure.
CAUSES: dict[Cause, CauseRules] = {
    Cause.APP: CauseRules(reported_by_agent=True, charged=True, fault=True, quarantines=True),
    Cause.LOST: CauseRules(reported_by_agent=False, charged=True, fault=True, quarantines=False),
    Cause.CANCELLED: CauseRules(reported_by_agent=False, charged=True, fault=False, quarantines=False),
    Cause.SHUTDOWN: CauseRules(reported_by_agent=True, charged=False, fault=False, quarantines=False),
    Cause.TIMEOUT: CauseRules(reported_by_agent=True, charged=True, fault=True, quarantines=True),
    Cause.STALLED: CauseRules(reported_by_agent=True, charged=True, fault=True, quarantines=True),
    Cause.PREEMPTED: CauseRules(reported_by_agent=True, charged=False, fault=False, quarantines=False),
    Cause.OOM: CauseRules(reported_by_agent=True, charged=True, fault=True, quarantines=False),
}

#: Causes an agent may report in a `fail` request; `lost` and `cancelled` are decided by the coordinator.
AGENT_CAUSES: frozenset[Cause] = frozenset(c for c, r in CAUSES.items() if r.reported_by_agent)
#: Causes that are the host's or the trainer's fault: back-off, the retry avoids the host, the job keeps the error.
FAULT_CAUSES: frozenset[Cause] = frozenset(c for c, r in CAUSES.items() if r.fault)
#: Causes that count towards a host's quarantine.
QUARANTINE_CAUSES: frozenset[Cause] = frozenset(c for c, r in CAUSES.items() if r.quarantines)


P, CL, R, CO, F, CA = (
    JobStatus.PENDING,
    JobStatus.CLAIMED,
    JobStatus.RUNNING,
    JobStatus.COMPLETED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)

#: Every move a job may make. Terminal statuses leave only through requeue (to pending).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    P: frozenset({CL, CA}),
    CL: frozenset({R, P, CO, F, CA}),
    R: frozenset({P, CO, F, CA}),
    CO: frozenset({P}),
    F: frozenset({P}),
    CA: frozenset({P}),
}

TERMINAL: frozenset[JobStatus] = frozenset({CO, F, CA})
#: Statuses in which a job holds a lease.
LEASED: frozenset[JobStatus] = frozenset({CL, R})


def is_allowed(current: JobStatus, to: JobStatus) -> bool:
    """True when a job in `current` may move to `to`."""
    return to in TRANSITIONS[current]


def counts_against_budget(cause: Cause) -> bool:
    """A hand-back (`preempted`, `shutdown`) is free; every other end uses up an attempt."""
    return CAUSES[cause].charged


def after_attempt_ended(cause: Cause, attempts: int, max_attempts: int) -> JobStatus:
    """Status of a job whose attempt ended with `cause`; `attempts` already counts this one."""
    if cause is Cause.CANCELLED:
        return CA
    if counts_against_budget(cause) and attempts >= max_attempts:
        return F
    return P
