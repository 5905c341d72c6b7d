"""Rich rendering of the operator CLI: shared helpers, the workers table, the status summary and the watch dashboard.

The jobs listing, `compare`, artifacts and the `show` view of one job are in `cli/render/jobs.py`.

Every function takes the typed replies of mqfleet/wire/replies.py (or, for the dashboard, the JSON
the bus carries) and returns a rich renderable; nothing here talks to the broker, so the screen
captures can render the same views in-process. Much of what is shown was written by
hosts (adverts, progress, trainer output, errors), so every such cell goes through
`escape`: control characters and terminal escape sequences removed, rich markup escaped
(docs/SECURITY.md, "What the CLI shows").
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape as _escape_markup
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mqfleet.cli.render.terminal import clean

if TYPE_CHECKING:
    # annotations only: a renderer loads no wire module the command has not loaded (docs/BENCHMARKS.md, "CLI start-up")
    from mqfleet.fleet_picture import FleetPicture, HostPicture
    from mqfleet.wire.health import Health
    from mqfleet.wire.hosts import HostUsage, Worker
    from mqfleet.wire.job_listing import JobRow
    from mqfleet.wire.topics import JsonObject, JsonValue

STATUS_STYLE = {
    "pending": "yellow",
    "claimed": "cyan",
    "running": "blue",
    "completed": "green",
    "failed": "red",
    "cancelled": "dim",
}
STATUS_ORDER = ("pending", "claimed", "running", "completed", "failed", "cancelled")
#: Lines of an attempt's output shown by `show`.
TAIL_LINES = 10


def escape(value: object) -> str:
    """A value for a rich cell or markup string: `clean`ed, then rich markup escaped."""
    return _escape_markup(clean(value))


def safe_text(value: object, style: str = "", *, newlines: bool = False) -> Text:
    """A rich Text (never parsed as markup) of a `clean`ed value."""
    return Text(clean(value, newlines=newlines), style=style)


#: Width used when stdout is a pipe or file and COLUMNS is unset: no screen edge to respect, so cells stay whole.
PIPE_WIDTH = 160


def make_console(*, record: bool = False, width: int | None = None) -> Console:
    """The console every command prints through: the terminal's width, or PIPE_WIDTH when piped."""
    console = Console(record=record, width=width, highlight=False)
    if width is None and not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    return console


# --- small formatters ----------------------------------------------------------------------


def human_size(size: int | float | None) -> str:
    if size is None:
        return "-"
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        return escape(size)[:40]  # reported by a host: shown, never trusted to be a number
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def human_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def short_id(job_id: JsonValue, n: int = 12) -> str:
    return (job_id if isinstance(job_id, str) else "")[:n] or "-"


def status_text(status: JsonValue) -> Text:
    return safe_text(status or "-", STATUS_STYLE.get(str(status or ""), ""))


def job_line(job: JobRow) -> Text:
    """`name (short id): status`, what the operator verbs print."""
    return Text.assemble(f"{clean(job.name)} ({clean(short_id(job.id))}): ", status_text(job.status))


def progress_pct(progress: JsonValue) -> str:
    value = progress.get("progress") if isinstance(progress, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return "-"
    return f"{float(value) * 100:.0f}%"


def number_text(value: JsonValue, unit: str = "") -> str:
    """A number a host reported, or its escaped text when it is not one (a hostile advert must not crash a table)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else escape(value)
    return f"{value:g}{unit}"


def metrics_text(metrics: JsonValue) -> str:
    if not metrics or not isinstance(metrics, dict):
        return "-"
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items())]
    return " ".join(parts)


def excerpt(text: str | None, width: int = 40) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= width else line[: width - 1] + "…"


def seconds_text(value: JsonValue) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.1f}s" if value < 60 else human_duration(value)


def number_cell(value: JsonValue) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else escape(value))


def listing_table(title: str, columns: Iterable[str], *, right: Iterable[str] = (), wrap: Iterable[str] = (),
                  whole: Iterable[str] = ()) -> Table:
    """A listing that fits an 80-column terminal: no vertical rules; only the `wrap` columns may wrap, and the
    `whole` columns keep at least their header's width (short values whose header says what they are)."""
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
    right, wrap, whole = set(right), set(wrap), set(whole)
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", no_wrap=name not in wrap,
                         overflow="fold" if name in wrap else "ellipsis", min_width=len(name) if name in whole else None)
    return table


def kv_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    # fold, never ellipsise: ids and hashes must stay whole for copy and paste
    table.add_column(overflow="fold")
    return table


# --- hosts and the coordinator -------------------------------------------------------------


def workers_table(workers: Iterable[Worker], names: Mapping[str, str], now: float) -> Table:
    table = listing_table("workers", ("host", "state", "os/arch", "cores", "RAM", "CUDA / GPUs", "torch", "slots", "running", "seen",
                               "used (all attempts)"),
                   right=("cores", "RAM", "slots"), wrap=("os/arch", "CUDA / GPUs", "running", "used (all attempts)"),
                   whole=("os/arch",))
    for w in workers:
        advert = w.advert  # written by the host: every value narrowed or escaped before it is shown
        state = Text("online", style="green") if w.online else Text("offline", style="red")
        if w.draining:
            state.append(" draining", style="yellow")
        if w.advert_error:
            state.append(" advert refused", style="red")
        if w.quarantined:
            reason = (w.quarantine.reason if w.quarantine else None) or "?"
            state.append(f" quarantined ({clean(reason)}; undrain releases it)", style="red")
        if w.online and w.owner_wait:
            state.append(f" {clean(w.owner_wait)}", style="yellow")
        listed = advert.get("gpus")
        gpus = [g for g in listed if isinstance(g, dict)] if isinstance(listed, list) else []
        cuda = ", ".join(f"{escape(g.get('name', '?'))} {number_text(g.get('vram_gib'), 'G')}" for g in gpus) if gpus else (
            "yes" if advert.get("cuda") is True else "no")
        running = ", ".join(escape(names.get(j, short_id(j))) for j in w.jobs) or "-"
        seen = w.last_seen_ts
        table.add_row(
            escape(w.id), state, escape(" ".join(str(advert.get(k) or "-") for k in ("os", "arch"))),
            number_text(advert.get("cpu_cores")),
            number_text(advert.get("ram_gib"), "G"), cuda, escape(advert.get("torch") or "-"),
            escape(f"{w.slots_used}/{w.slots}"), running,
            human_duration(now - seen) + " ago" if seen else "-",
            _host_usage_text(w.usage),
        )
    return table


def _host_usage_text(usage: HostUsage | None) -> str:
    if usage is None:
        return "-"
    gpu = usage.gpu_mem_max_bytes
    text = (f"{usage.attempts} runs, cpu {seconds_text(usage.cpu_s)}, "
            f"wall {seconds_text(usage.wall_s)}, peak {human_size(usage.max_rss_bytes)}")
    return text + (f", GPU {human_size(gpu)}" if gpu is not None else "")


def counts_line(counts: Mapping[str, int]) -> Text:
    text = Text()
    for status in STATUS_ORDER:
        if text:
            text.append("  ")
        text.append(f"{status} {counts.get(status, 0)}", style=STATUS_STYLE[status])
    return text


def status_view(health: Health, workers: Sequence[Worker]) -> RenderableType:
    online = sum(1 for w in workers if w.online)
    draining = [w.id for w in workers if w.draining]
    grid = kv_table()
    grid.add_row("coordinator", f"mqfleet {escape(health.version)}, up {human_duration(health.uptime_s)}")
    if health.coordinators:
        grid.add_row("coordinators", coordinators_text(health))
    grid.add_row("manifest", escape(f"{health.manifest} ({health.manifest_jobs} jobs)"))
    if health.manifest_applied_ts:
        how = "sent with reload --file" if health.manifest_origin == "sent" else "read from its file"
        age_s = (health.ts or time.time()) - health.manifest_applied_ts
        grid.add_row("", escape(f"{how} {human_duration(age_s)} ago, sha256 {str(health.manifest_sha256)[:12]}"))
    if health.last_refused_manifest:
        grid.add_row(Text("refused manifest", style="red"), safe_text(health.last_refused_manifest, "red"))
    grid.add_row("store", escape(health.store or "-"))
    for name in health.failed_checks:
        check = health.checks.get(name)
        grid.add_row(safe_text(f"{name} check", "red"), safe_text(check.detail if check else "failed", "red"))
    hosts = Text(f"{online} online", style="green")
    hosts.append(f", {len(workers) - online} offline", style="red" if len(workers) > online else "")
    hosts.append(f", {len(draining)} draining" + (f" ({clean(', '.join(map(str, draining)))})" if draining else ""),
                 style="yellow" if draining else "")
    grid.add_row("hosts", hosts)
    for w in workers:
        if w.quarantined:
            reason = w.quarantine.reason if w.quarantine else "?"
            grid.add_row(Text("quarantined", style="red"),
                         safe_text(f"{w.id}: {reason}; `mqfleet undrain {w.id}` releases it", "red"))
        if w.online and w.owner_wait:
            grid.add_row(Text("owner policy", style="yellow"), safe_text(f"{w.id}: {w.owner_wait}", "yellow"))
    grid.add_row("jobs", counts_line(health.jobs_by_status))
    return Panel(grid, title="mqfleet status", title_align="left", expand=False)


def coordinators_text(health: Health) -> Text:
    """One line per coordinator sharing the state: id, role, version, host and heartbeat age."""
    now = health.ts or time.time()
    text = Text()
    for i, c in enumerate(health.coordinators):
        if i:
            text.append("\n")
        style = {"leader": "bold green", "follower": "green"}.get(c.role, "red")
        text.append(f"{clean(c.id)} ", style="bold" if c.id == health.coordinator else "")
        text.append(clean(c.role), style=style)
        age = human_duration(max(0.0, now - (c.heartbeat_ts or now)))
        text.append(clean(f"  mqfleet {c.version} on {c.host}, heartbeat {age} ago"))
    text.append(clean(f"\n(state on {health.state_store or 'sqlite'}; this answer from {health.coordinator})", newlines=True),
                style="dim")
    return text


def health_view(health: Health) -> RenderableType:
    grid = kv_table()
    shown: dict[str, JsonValue] = {
        "state": health.state, "version": health.version, "uptime_s": human_duration(health.uptime_s),
        "manifest": health.manifest, "manifest_origin": health.manifest_origin, "manifest_sha256": health.manifest_sha256,
        "manifest_jobs": health.manifest_jobs, "hosts_online": health.hosts_online, "hosts_total": health.hosts_total,
        "hosts_draining": health.hosts_draining, "db_ok": health.db_ok, "store": health.store, "store_ok": health.store_ok,
        "last_refused_manifest": health.last_refused_manifest,
    }
    for key, value in shown.items():
        grid.add_row(key, escape(str(value)))
    if health.coordinators:
        grid.add_row("coordinators", coordinators_text(health))
    if health.session_takeovers:
        grid.add_row("session_takeovers", Text(f"{health.session_takeovers}: another client connected with the "
                                               "coordinator's client id (its log names who)", style="yellow"))
    for name, check in health.checks.items():
        grid.add_row(f"check {name}", Text(f"{'ok' if check.ok else 'FAILED'}: {check.detail}",
                                           style="green" if check.ok else "red"))
    grid.add_row("jobs", counts_line(health.jobs_by_status))
    return grid


# --- the watch dashboard ---------------------------------------------------------------------


def watch_frame(picture: FleetPicture, now: float) -> RenderableType:
    """One frame of `watch`: the dashboard of what the bus showed."""
    return dashboard(hosts=picture.hosts, jobs=picture.jobs, events=list(picture.events), now=now)


def dashboard(*, hosts: Mapping[str, HostPicture], jobs: Mapping[str, JsonObject], events: list[JsonObject],
              now: float) -> RenderableType:
    """One frame: hosts, running jobs with progress bars, counts by status, recent events."""
    names = {job_id: job.get("name", short_id(job_id)) for job_id, job in jobs.items()}
    host_table = Table(title="hosts", title_justify="left", expand=True)
    for name in ("host", "state", "slots", "running"):
        host_table.add_column(name, no_wrap=name != "running")
    active = [j for j in jobs.values() if j.get("status") in ("claimed", "running")]
    for host_id in sorted(hosts):
        h = hosts[host_id]
        state = safe_text(h.state, "green" if h.state == "online" else "red")
        if h.draining:
            state.append(" draining", style="yellow")
        mine = [j for j in active if j.get("host") == host_id]
        host_table.add_row(escape(host_id), state, escape(f"{len(mine)}/{'?' if h.slots is None else h.slots}"),
                           escape(", ".join(str(j.get("name")) for j in mine)) or "-")
    run_table = Table(title="running", title_justify="left", expand=True)
    for name in ("job", "host", "progress", "", "epoch", "loss"):
        run_table.add_column(name, no_wrap=True)
    for job in sorted(active, key=lambda j: str(j.get("name"))):
        progress = job.get("progress") or {}
        if not isinstance(progress, Mapping):
            progress = {}
        value = progress.get("progress")
        fraction = min(1.0, max(0.0, float(value))) if isinstance(value, (int, float)) and value == value else 0.0
        run_table.add_row(escape(str(job.get("name"))), escape(str(job.get("host") or "-")),
                          ProgressBar(total=1.0, completed=fraction, width=30), progress_pct(progress),
                          escape(progress.get("epoch", "-")), number_cell(progress.get("loss")))
    counts: dict[str, int] = {}
    for job in jobs.values():
        counts[str(job.get("status"))] = counts.get(str(job.get("status")), 0) + 1
    event_lines = Text()
    for ev in events[-8:]:
        if event_lines:
            event_lines.append("\n")
        ts = ev.get("ts")
        ts = ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) and 0 < ts < 1e11 else now
        event_lines.append(time.strftime("%H:%M:%S ", time.localtime(ts)), style="dim")
        # a host's quarantine event names no job: the host is its subject
        job_id = ev.get("job_id")
        job_key = job_id if isinstance(job_id, str) else ""
        subject = f"host {ev.get('host')}" if not job_key and ev.get("host") else names.get(job_key, short_id(job_key))
        event_lines.append(f"{clean(subject)} ")
        event_lines.append(f"{clean(ev.get('from') or '-')} → ")
        event_lines.append(clean(ev.get("to")), style=STATUS_STYLE.get(str(ev.get("to")), ""))
        event_lines.append(clean(f"  {ev.get('reason', '')}" + (f" ({ev['host']})" if ev.get("host") else "")),
                           style="dim")
    return Group(
        Text.assemble(("mqfleet watch", "bold"), f"  {time.strftime('%H:%M:%S', time.localtime(now))}  ",
                      counts_line(counts)),
        host_table,
        run_table,
        Panel(event_lines or Text("no events yet", style="dim"), title="recent events", title_align="left"),
    )
