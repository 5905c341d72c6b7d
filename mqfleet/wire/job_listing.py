"""The `jobs` listing; `JobRow`, a job as the listing, `job`, the retained job state and the grant show it; and
`JobRefRequest`, one job named (`job`, `cancel`, `download_url`). A module of its own, as wire/health.py says why."""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from mqfleet.lifecycle import JobStatus
from mqfleet.wire.codec import LONG_TEXT, OMIT_DEFAULT, WireMessage
from mqfleet.wire.topics import JsonObject


class JobOrder(StrEnum):
    """The order of a `jobs` listing: by when the jobs were added."""

    OLDEST = "oldest"
    NEWEST = "newest"



@dataclasses.dataclass(frozen=True)
class JobRow(WireMessage):
    """A job as `jobs`, `job`, the retained `jobs/{id}/state` and the grant show it."""

    id: str
    name: str
    status: JobStatus
    model: str = ""
    mode: str = ""
    host: str | None = None
    #: attempts charged to the budget (`max_attempts`): the same as `attempts_charged`, kept for older readers
    attempts: int = 0
    max_attempts: int = 0
    priority: int = 0
    artifact: str | None = None
    error: str | None = None
    in_manifest: bool = True
    progress: JsonObject | None = None
    created_ts: float | None = None
    updated_ts: float | None = None
    lease_expires_ts: float | None = None
    #: the spec's limits (null: none), when a pending job's retry back-off ends, and a dependency that failed
    timeout_s: float | None = None
    stall_s: float | None = None
    retry_after_ts: float | None = None
    unsatisfied: str | None = dataclasses.field(default=None, metadata=LONG_TEXT)
    #: every attempt ever granted (the entries of `show`'s `attempts_detail`), and those charged to the budget
    #: since the last requeue: neither the attempt that completes nor a hand-back at shutdown is charged
    attempts_started: int = 0
    attempts_charged: int = 0



@dataclasses.dataclass(frozen=True)
class JobsRequest(WireMessage):
    """One page of the jobs listing (docs/CLI.md, `jobs`): by keyset (`after`) or by position (`offset`, 0 if
    neither is given)."""

    status: JobStatus | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    name: str | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    order: JobOrder = JobOrder.OLDEST
    limit: int | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    after: int | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    offset: int | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    #: false once the client knows the total: counting walks every matching row
    count: bool = True



@dataclasses.dataclass(frozen=True)
class JobsReply(WireMessage):
    """One page of `jobs`. Its rows are the database's JSON objects passed through untouched: a listing
    of 100,000 jobs must stay under 3 s (docs/BENCHMARKS.md), and a typed row costs about 20 us to build
    and again to read back, twice the whole page's encoding; `show` gives the typed row (JobDetail)."""

    jobs: list[JsonObject]
    next_after: int | None = None
    next_offset: int | None = None
    #: null when the request asked for no count (`count: false`)
    total: int | None = None


@dataclasses.dataclass(frozen=True)
class JobRefRequest(WireMessage):
    """`cancel` (and the query verbs that name one job): a job by id, unique id prefix or name."""

    job: str

