"""What an agent reports of an attempt besides its outcome: the resources it used (`Usage`, sent with
`complete` and `fail`) and its progress reports (`[seq, ts, report]`, sent with `renew`, `complete` and `fail`).

Both are history, not the request's business: a usage or a report that fails its check drops out (a
`lenient` bound, mqfleet/wire/codec.py), and the renewal or the completion it came with goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from mqfleet.wire.codec import LENIENT, Bounds, WireMessage
from mqfleet.wire.topics import JsonObject

#: Keys a free-form object an agent sends (progress, metrics, a report) may have.
MAX_OBJECT_KEYS = 200
#: Progress reports read from one request; the agent sends at most a few hundred.
REPORTS_PER_REQUEST = 1000

#: A free-form object an agent sends: bounded in keys.
SmallObject = Annotated[JsonObject, Bounds(max_keys=MAX_OBJECT_KEYS)]
Amount = Annotated[float, Bounds(min=0)]
Bytes = Annotated[int, Bounds(min=0)]
#: One progress report as requests carry it: `[seq, ts, report]`, `seq` counting from 1 in each attempt.
ProgressReport = tuple[Annotated[int, Bounds(min=1)], float, SmallObject]
#: A request's `progress_reports`: a malformed report is left out, and those past REPORTS_PER_REQUEST.
ProgressReports = Annotated[list[Annotated[ProgressReport, LENIENT]], Bounds(max_items=REPORTS_PER_REQUEST, lenient=True)]


@dataclass(frozen=True)
class Usage(WireMessage):
    """What one attempt used, as its agent measured it (agent/usage.py); a request's usage with any field out
    of bounds is left out whole (it is only a report)."""

    wall_s: Amount
    cpu_s: Amount
    max_rss_bytes: Bytes
    gpu_mem_max_bytes: Bytes | None = None
