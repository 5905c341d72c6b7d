"""The job state machine: statuses, allowed transitions and what ends an attempt. Pure, no I/O."""

from __future__ import annotations

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
    SHUTDOWN = "shutdown"  # the agent stopped gracefully and handed the job back
    TIMEOUT = "timeout"  # the attempt ran past the job's timeout_s and the agent stopped it
    STALLED = "stalled"  # the trainer printed nothing and reported no progress for stall_s


#: Causes an agent may report in a `fail` request; `lost` and `cancelled` are decided by the coordinator.
AGENT_CAUSES: frozenset[Cause] = frozenset({Cause.APP, Cause.SHUTDOWN, Cause.TIMEOUT, Cause.STALLED})
#: Causes that are the host's or the trainer's fault: they count towards a host's quarantine.
FAULT_CAUSES: frozenset[Cause] = frozenset({Cause.APP, Cause.LOST, Cause.TIMEOUT, Cause.STALLED})


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
    """A graceful shutdown hands the job back for free; every other end uses up an attempt."""
    return cause is not Cause.SHUTDOWN


def after_attempt_ended(cause: Cause, attempts: int, max_attempts: int) -> JobStatus:
    """Status of a job whose attempt ended with `cause`; `attempts` already counts this one."""
    if cause is Cause.CANCELLED:
        return CA
    if counts_against_budget(cause) and attempts >= max_attempts:
        return F
    return P
