"""The progress reports of one attempt held until a renewal (or the end) carries them to the coordinator.

A trainer's `@mqfleet {json}` lines become reports numbered in order, so a renewal resent after a lost
reply cannot store one twice (the coordinator keeps the highest `seq` it stored). What waits is bounded in
count and in JSON size: past either bound every other report goes, the newest stays, as the coordinator
thins its own history.
"""

from __future__ import annotations

import json
import threading
import time

from mqfleet import defaults
from mqfleet.wire.reports import ProgressReport
from mqfleet.wire.topics import JsonObject

#: Progress reports held for the next renewal; past this every other one goes (the coordinator keeps
#: a thinned history anyway), which keeps a renewal far under the request size limit.
PENDING_REPORTS_MAX = 400
#: ... and past this many characters of JSON: a renewal, and a completion with its 100 KB tail, must stay
#: far under the coordinator's request limit (defaults.MAX_REQUEST_BYTES, 256 KiB).
PENDING_REPORTS_CHARS = 64 * 1024
#: A report longer than this (as JSON) is kept as the latest progress but not sent for the history.
REPORT_MAX_CHARS = 2000


class PendingReports:
    """An attempt's progress reports not yet acknowledged by the coordinator. Thread-safe."""

    def __init__(self) -> None:
        self._reports: list[tuple[int, float, JsonObject, int]] = []  # seq, ts, report, JSON size
        self._seq = 0
        self._lock = threading.Lock()

    def add(self, report: JsonObject) -> None:
        with self._lock:
            self._seq += 1
            size = len(json.dumps(report, default=str))
            if size > REPORT_MAX_CHARS:
                return
            self._reports.append((self._seq, round(time.time(), 3), report, size))
            while len(self._reports) > 2 and (
                len(self._reports) > PENDING_REPORTS_MAX or sum(r[3] for r in self._reports) > PENDING_REPORTS_CHARS
            ):
                # every other one goes, the newest stays: the coordinator's history is thinned the same way
                self._reports = self._reports[::2] + ([self._reports[-1]] if len(self._reports) % 2 == 0 else [])

    def to_send(self) -> list[ProgressReport]:
        """The held reports as the wire's `progress_reports`: `(seq, ts, report)`, oldest first."""
        with self._lock:
            return [(seq, ts, report) for seq, ts, report, _ in self._reports]

    def sent(self, sent: list[ProgressReport]) -> None:
        """Forget the reports the coordinator acknowledged: those up to the last `seq` sent."""
        if not sent:
            return
        last_seq = sent[-1][0]
        with self._lock:
            self._reports = [r for r in self._reports if r[0] > last_seq]


def parse_progress(line: str) -> JsonObject | None:
    """The JSON object of an `@mqfleet {json}` line, or None for any other line (bad JSON included)."""
    if not line.startswith(defaults.PROGRESS_PREFIX):
        return None
    rest = line[len(defaults.PROGRESS_PREFIX) :]
    if not rest[:1].isspace():
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
