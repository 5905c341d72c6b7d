"""Rendering of jobs: the jobs listing, `compare`, the artifacts listing and the `show` view of one job.

The same rules as `mqfleet.cli.render.fleet`, whose helpers these build on: typed replies in (the listing's
rows are the JSON objects the coordinator sent), a rich renderable out; every cell a host wrote goes through `escape` (docs/SECURITY.md,
"What the CLI shows").
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mqfleet.cli.render.fleet import (
    TAIL_LINES,
    escape,
    excerpt,
    human_duration,
    human_size,
    human_time,
    kv_table,
    listing_table,
    metrics_text,
    number_cell,
    progress_pct,
    safe_text,
    seconds_text,
    short_id,
    status_text,
)
from mqfleet.cli.render.terminal import clean

if TYPE_CHECKING:
    # annotations only: a renderer loads no wire module the command has not loaded (docs/BENCHMARKS.md, "CLI start-up")
    from mqfleet.wire.replies import ArtifactRecord, AttemptDetail, CheckpointDetail, CompareRow, JobDetail
    from mqfleet.wire.reports import Usage
    from mqfleet.wire.topics import JsonObject

# --- listings ------------------------------------------------------------------------------


def jobs_table(jobs: Iterable[JsonObject], *, first: bool = True) -> Table:
    """The jobs table; `first=False` for the later chunks of a streamed listing (no title, no header)."""
    table = listing_table("jobs" if first else "", ("name", "id", "model/mode", "status", "host", "started", "charged",
                                              "pri", "prog", "artifact", "error"),
                          right=("started", "charged", "pri", "prog"), wrap=("error",), whole=("started", "charged"))
    table.show_header = first
    for job in jobs:
        table.add_row(
            escape(job["name"]), escape(short_id(job["id"], 10)), escape(f"{job['model']}/{job['mode']}"),
            status_text(job["status"]), escape(job.get("host") or "-"),
            # attempts started, and those charged to the budget of max_attempts (docs/CLI.md)
            escape(job.get("attempts_started", "-")),
            escape(f"{job.get('attempts_charged', job.get('attempts', 0))}/{job.get('max_attempts', '?')}"),
            escape(job.get("priority", 0)),
            progress_pct(job.get("progress")), escape(short_id(job.get("artifact"), 8)),
            # the unsatisfied dependency is shown whole: it is the one thing to act on
            escape(job.get("unsatisfied") or excerpt(clean(job.get("error") or ""), 30)),
        )
    return table


def jobs_rest_line(shown: int, total: int, *, limited: bool) -> Text:
    """The line under a jobs table: how many matched and how to see the rest (squeue-style, newest first)."""
    rest = max(0, total - shown)
    if not rest:
        return Text(f"{total:,} job{'s' if total != 1 else ''}", style="dim")
    hint = "--limit N for more (0 for all), --status or --name GLOB to narrow" if limited else ""
    return Text(f"newest {shown:,} of {total:,} jobs; {rest:,} older not shown" + (f" ({hint})" if hint else ""),
                style="dim")


def compare_table(rows: Sequence[CompareRow], metric_names: Sequence[str], *, sort_by: str | None,
                  title: str) -> Table:
    """Jobs side by side: status, the hyperparameters that differ, every numeric metric, CPU and peak memory."""
    varying = sorted({k for r in rows for k in r.hyper if len({repr(x.hyper.get(k)) for x in rows}) > 1})
    metric_cols = [f"{m} ▲" if m == sort_by else m for m in metric_names]
    table = listing_table(title, ("job", "status", *varying, *metric_cols, "cpu", "peak RSS"),
                   right=(*metric_cols, "cpu", "peak RSS"))
    for r in rows:
        usage = r.usage
        table.add_row(
            escape(r.name), status_text(r.status), *(escape(str(r.hyper.get(k, "-"))) for k in varying),
            *(number_cell(r.metrics.get(m)) for m in metric_names),
            seconds_text(usage.cpu_s) if usage else "-", human_size(usage.max_rss_bytes) if usage else "-",
        )
    return table


def artifacts_table(artifacts: Iterable[ArtifactRecord]) -> Table:
    table = listing_table("artifacts", ("job", "model", "mode", "sha256", "size", "metrics", "host", "created"),
                   right=("size",), wrap=("metrics",))
    for a in artifacts:
        table.add_row(
            escape(a.name or short_id(a.job_id)), escape(a.model or "-"), escape(a.mode or "-"),
            escape(short_id(a.sha256, 10)), human_size(a.size), escape(metrics_text(a.metrics)),
            escape(a.host or "-"), time.strftime("%m-%d %H:%M", time.localtime(a.created_ts)) if a.created_ts else "-",
        )
    return table


# --- one job -------------------------------------------------------------------------------


def usage_text(usage: Usage | None) -> str:
    """An attempt's usage in human units: wall, CPU, peak memory, peak GPU memory."""
    if usage is None:
        return "-"
    gpu = usage.gpu_mem_max_bytes
    parts = [
        f"wall {seconds_text(usage.wall_s)}",
        f"cpu {seconds_text(usage.cpu_s)}",
        f"peak RSS {human_size(usage.max_rss_bytes)}",
        f"peak GPU {human_size(gpu)}" if gpu is not None else "GPU not measured",
    ]
    return "  ".join(parts)


def attempts_text(job: JobDetail) -> str:
    """"2 started, 1 charged of 3": how many attempts ran, and how many of them used up the budget."""
    # a coordinator older than attempts_started lists every attempt it started in attempts_detail
    started = job.attempts_started or len(job.attempts_detail)
    return f"{started} started, {job.attempts_charged or job.attempts} charged of {job.max_attempts}"


def job_view(job: JobDetail, now: float, *, width: int = 100) -> RenderableType:
    from mqfleet.cli.render.chart import progress_charts

    parts: list[RenderableType] = []
    head = kv_table()
    head.add_row("job", Text.assemble((clean(job.name), "bold"), f"  {clean(job.id)}"))
    head.add_row("status", status_text(job.status))
    head.add_row("model / mode", escape(f"{job.model} / {job.mode}"))
    head.add_row("attempts", escape(attempts_text(job)))
    head.add_row("priority", escape(job.priority))
    if job.progress:
        head.add_row("progress", escape(metrics_text(job.progress)))
    if job.error:
        head.add_row(Text("error", style="red"), escape(job.error))
    if job.unsatisfied:
        head.add_row(Text("waits", style="red"), escape(job.unsatisfied))
    limits = [f"{key} = {value:g}" for key, value in (("timeout_s", job.timeout_s), ("stall_s", job.stall_s))
              if value is not None]
    if limits:
        head.add_row("limits", ", ".join(limits))
    if job.outputs:
        head.add_row("outputs", escape(", ".join(job.outputs)))
    head.add_row("artifact", escape(job.artifact or "-"))
    detail = job.artifact_detail
    if detail:
        head.add_row("size", human_size(detail.size))
        head.add_row("metrics", escape(metrics_text(detail.metrics)))
    if not job.in_manifest:
        head.add_row("manifest", Text("no longer in the manifest", style="yellow"))
    parts.append(Panel(head, title="job", title_align="left"))
    if job.spec:
        grid = kv_table()
        for key, value in job.spec.items():
            if value not in (None, "", [], {}, 0, False) or key in ("hyper", "seed"):
                grid.add_row(escape(key), escape(str(value)))
        parts.append(Panel(grid, title="spec", title_align="left"))
    checkpoint = checkpoint_view(job.checkpoint, now)
    if checkpoint is not None:
        parts.append(checkpoint)
    lease = job.lease
    if lease:
        grid = kv_table()
        grid.add_row("host", escape(lease.host))
        grid.add_row("attempt", escape(lease.attempt))
        grid.add_row("expires", f"in {human_duration(lease.expires_ts - now)}")
        grid.add_row("gpus", escape(str(lease.gpus or "none")))
        parts.append(Panel(grid, title="current lease", title_align="left"))
    chart = progress_charts(job.progress_history, width=width - 4)
    if chart is not None:
        parts.append(chart)
    if job.attempts_detail:
        parts.append(attempts_view(job.attempts_detail, now))
    if job.why_waiting:
        table = Table(title="why it waits", title_justify="left")
        table.add_column("host", no_wrap=True)
        table.add_column("reason")
        for item in job.why_waiting:
            table.add_row(escape(item.host or "(job)"), escape(item.reason))
        parts.append(table)
    return Group(*parts)


def checkpoint_view(checkpoint: CheckpointDetail | None, now: float) -> RenderableType | None:
    """The job's latest checkpoint (size, last sync, step) and how its last attempt started; None if neither."""
    if checkpoint is None or not (checkpoint.latest or checkpoint.last_start):
        return None
    grid = kv_table()
    latest = checkpoint.latest
    if latest:
        grid.add_row("size", human_size(latest.size))
        ago = f" ({human_duration(now - latest.saved_ts)} ago)"
        grid.add_row("last sync", f"{human_time(latest.saved_ts)}{ago}, attempt {latest.attempt} on "
                                  f"{escape(str(latest.host))}")
        if latest.progress:
            grid.add_row("saved at", escape(metrics_text(latest.progress)))
        grid.add_row("sha256", escape(latest.sha256))
    else:
        grid.add_row("latest", "none kept")
    start = checkpoint.last_start
    if start:
        style = "green" if start.resumed else "yellow"
        grid.add_row(escape(f"attempt {start.attempt}"), safe_text(start.note, style))
    return Panel(grid, title="checkpoint", title_align="left")


def attempts_view(attempts: Sequence[AttemptDetail], now: float) -> RenderableType:
    rows: list[RenderableType] = []
    for a in attempts:
        ended = a.ended_ts
        duration = (ended or now) - a.started_ts if a.started_ts else None
        cause = a.cause or ("running" if not ended else a.outcome or "-")
        title = Text.assemble(
            (f"attempt {a.number}", "bold"), f" on {clean(a.host)}  ",
            (clean(cause), "red" if cause in ("app", "lost", "timeout", "stalled") else ""),
            f"  exit {a.exit_code if a.exit_code is not None else '-'}",
            f"  {human_duration(duration)}" + ("" if ended else " so far"),
        )
        body: list[RenderableType] = [title]
        if a.usage:
            body.append(Text(f"used: {usage_text(a.usage)}"))
        if a.error:
            body.append(safe_text(f"error: {a.error}", "red"))
        tail = (a.output_tail or "").splitlines()[-TAIL_LINES:]
        if tail:
            body.append(Text("\n".join(f"  │ {clean(line)}" for line in tail), style="dim"))
        rows.append(Group(*body))
    return Panel(Group(*rows), title="attempts", title_align="left")
