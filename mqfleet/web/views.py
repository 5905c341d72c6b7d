"""What the dashboard's pages show, made from the typed replies: the checked query parameters, what an anonymous
viewer may see (public state only, docs/SECURITY.md, "The web dashboard"), and the small formatters the templates use.

Everything a host or trainer wrote stays text: the templates escape it (autoescape), and chart labels, which the
chart library draws itself, are cut to a plain character set here.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, fields
from urllib.parse import urlencode

from mqfleet.lifecycle import JobStatus
from mqfleet.wire.replies import CompareRow, JobDetail, ProgressPoint, Worker
from mqfleet.wire.requests import JobRow
from mqfleet.wire.topics import JsonObject, JsonValue

#: Rows a jobs page shows by default, and at most.
PAGE_ROWS = 50
PAGE_ROWS_MAX = 500
#: Lines of output the job page shows; the whole attempt is one link away.
OUTPUT_TAIL_LINES = 300
#: A name glob longer than this is no one's job name pattern.
GLOB_MAX_CHARS = 200
_LABEL = re.compile(r"[^A-Za-z0-9_.:/ +=,()\[\]-]")


class BadInputError(Exception):
    """Raised when a query parameter is not what the page takes (a 400 naming the parameter)."""


def parse_int(raw: str | None, name: str, *, low: int, high: int) -> int | None:
    if raw is None or raw == "":
        return None
    if not re.fullmatch(r"[0-9]{1,12}", raw):
        raise BadInputError(f"{name} must be a whole number from {low} to {high}, not {raw[:40]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise BadInputError(f"{name} must be from {low} to {high}, not {value}")
    return value


@dataclass(frozen=True)
class JobsQuery:
    """The jobs page's filter and position, checked."""

    status: str | None = None
    name: str | None = None
    after: int | None = None
    newest_first: bool = True
    limit: int = PAGE_ROWS

    @classmethod
    def parse(cls, status: str | None, name: str | None, after: str | None, order: str | None,
              limit: str | None) -> JobsQuery:
        statuses = [s.value for s in JobStatus]
        if status and status not in statuses:
            raise BadInputError(f"status must be one of {', '.join(statuses)}, not {status[:40]!r}")
        if name and len(name) > GLOB_MAX_CHARS:
            raise BadInputError(f"name is a glob of at most {GLOB_MAX_CHARS} characters, not {len(name)}")
        if order not in (None, "", "newest", "oldest"):
            raise BadInputError(f"order must be newest or oldest, not {order[:40]!r}")
        return cls(status=status or None, name=name or None, after=parse_int(after, "after", low=0, high=2**62),
                   newest_first=order != "oldest",
                   limit=parse_int(limit, "limit", low=1, high=PAGE_ROWS_MAX) or PAGE_ROWS)

    def link(self, **change: object) -> str:
        """This query as a URL's query string, with some fields changed."""

        fields: dict[str, object] = {"status": self.status, "name": self.name, "after": self.after,
                  "order": None if self.newest_first else "oldest",
                  "limit": None if self.limit == PAGE_ROWS else self.limit}
        fields.update(change)
        return "?" + urlencode({k: v for k, v in fields.items() if v is not None})


# --- what an anonymous viewer may see --------------------------------------------------------------------------


def public_worker(worker: Worker) -> Worker:
    """A host as anonymous broker readers know it: its advert, its status (online, slots, jobs), its quarantine
    (published on `events`). Draining, usage and a refused advert's reason are the coordinator's, not public."""
    return Worker(id=worker.id, online=worker.online, draining=False, advert=worker.advert,
                  last_seen_ts=worker.last_seen_ts, slots=worker.slots, slots_used=worker.slots_used,
                  jobs=worker.jobs, quarantined=worker.quarantined, quarantine=worker.quarantine)


def public_job(job: JobDetail) -> JobDetail:
    """A job as anonymous broker readers know it: its retained state (the job row) and the progress reports those
    states carried. The spec, attempts, output, why it waits, lease, artifact and checkpoint are not public."""
    row = {f.name: getattr(job, f.name) for f in fields(JobRow)}
    return JobDetail(**row, progress_history=job.progress_history)


# --- charts -----------------------------------------------------------------------------------------------------


def label(text: object) -> str:
    """A chart label: the chart library reads some markup in labels, so anything else than plain characters goes."""
    return _LABEL.sub("?", str(text))[:64]


def _number(value: JsonValue) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def report_metrics(report: JsonObject) -> dict[str, float]:
    """The numbers of one progress report: `loss`, `progress`, and each of its `metrics`, by chart label."""
    out: dict[str, float] = {}
    for key in ("loss", "progress"):
        number = _number(report.get(key))
        if number is not None:
            out[key] = number
    metrics = report.get("metrics")
    if isinstance(metrics, dict):
        for key, value in list(metrics.items())[:40]:
            number = _number(value)
            if number is not None:
                out[label(key)] = number
    return out


def progress_series(points: list[ProgressPoint]) -> dict[str, list[list[float]]]:
    """Each metric's curve: [x, y] pairs, x the report's epoch (its step when it has none)."""
    series: dict[str, list[list[float]]] = {}
    for n, point in enumerate(points[-5000:]):
        x = _number(point.report.get("epoch"))
        for name, y in report_metrics(point.report).items():
            series.setdefault(name, []).append([x if x is not None else float(n), y])
    return series


def compare_series(rows: list[CompareRow], metric_names: list[str]) -> dict[str, list[list[float | str]]]:
    """Each metric's final value per job, for the sweep's bar chart: [job name, value] pairs."""
    series: dict[str, list[list[float | str]]] = {}
    for name in metric_names[:12]:
        for row in rows:
            value = _number(row.metrics.get(name))
            if value is not None:
                series.setdefault(label(name), []).append([label(row.name), value])
    return series


# --- formatters the templates use ------------------------------------------------------------------------------


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    return duration(max(0.0, (now if now is not None else time.time()) - ts)) + " ago"


def until(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    return duration(max(0.0, ts - (now if now is not None else time.time())))


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d{seconds % 86400 // 3600:02.0f}h"


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def percent(progress: JsonObject | None) -> str:
    value = _number((progress or {}).get("progress"))
    return "-" if value is None else f"{max(0.0, min(1.0, value)) * 100:.0f}%"


def gpus(advert: JsonObject) -> list[str]:
    """One line per GPU of an advert: index, name, free and total memory."""
    listed = advert.get("gpus")
    if not isinstance(listed, list):
        return []
    out = []
    for gpu in listed[:16]:
        if not isinstance(gpu, dict):
            continue
        total, free = _number(gpu.get("vram_gib")), _number(gpu.get("vram_free_gib"))
        memory = f"{free:.1f} of {total:.1f} GiB free" if free is not None and total is not None else (
            f"{total:.1f} GiB" if total is not None else "")
        out.append(f"{text(gpu.get('index'), 4)}: {text(gpu.get('name'), 60)} {memory}".strip())
    return out


def text(value: object, limit: int = 200) -> str:
    """A value a host wrote, as bounded text (the template escapes it)."""
    shown = value if isinstance(value, str) else ("-" if value is None else str(value))
    return shown if len(shown) <= limit else shown[:limit] + "..."
