"""`mqfleet jobs`, `show`, `cancel`, `requeue` and `logs [-f]`: the commands about single jobs."""

from __future__ import annotations

import json
import queue
import sys
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import click

from mqfleet.cli import cli
from mqfleet.cli.options import ClientContext, pass_client, wire_of
from mqfleet.cli.render.terminal import clean
from mqfleet.lifecycle import JobStatus

if TYPE_CHECKING:
    # The renderers (rich) are imported when a table is printed; the wire types come with the client
    # (docs/BENCHMARKS.md, "CLI start-up").
    from mqfleet.mqtt.inbox import Message
    from mqfleet.wire.requests import JobRow
    from mqfleet.wire.topics import JsonObject

TERMINAL = frozenset({JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value})
#: After the job ends, lines still in flight from the agent get this long to arrive.
LOG_TRAILER_S = 1.0
#: How many of the coordinator's last lines are compared to a live batch to drop duplicates at the seam.
SEAM_WINDOW = 2000
#: Rows the jobs table shows without --limit (newest first; a line counts the rest).
TABLE_LIMIT = 100
#: Rows per printed table when a long listing streams to the terminal.
TABLE_CHUNK = 1000


@cli.command("jobs")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]), default=None, help="Only jobs in this status.")
@click.option("--name", "name_glob", metavar="GLOB", default=None,
              help="Only jobs whose name matches this shell glob (* ? [abc] [!abc]), e.g. 'lr-*'.")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help=f"Show the N newest jobs (0: all). Default: the table shows {TABLE_LIMIT}, --json every job.")
@pass_client
def jobs_cmd(ctx: ClientContext, status: str | None, name_glob: str | None, limit: int | None) -> None:
    """Jobs, newest first, with a count of the rest (all, or those of one status or name glob).

    Pages stream from the coordinator, so a listing of any size holds one page in memory.
    """
    if ctx.as_json:
        _jobs_json(ctx, status, name_glob, limit or None)
        return
    from mqfleet.cli.render import fleet as render_fleet
    from mqfleet.cli.render import jobs as render_jobs

    listing = ctx.client.job_listing(status=status, name=name_glob, newest_first=True,
                                     limit=TABLE_LIMIT if limit is None else (limit or None))
    console = render_fleet.make_console()
    shown = 0
    chunk: list[JsonObject] = []
    for job in listing:
        chunk.append(job)
        if len(chunk) == TABLE_CHUNK:
            console.print(render_jobs.jobs_table(chunk, first=shown == 0))
            shown += len(chunk)
            chunk = []
    if chunk or not shown:
        console.print(render_jobs.jobs_table(chunk, first=shown == 0))
        shown += len(chunk)
    console.print(render_jobs.jobs_rest_line(shown, listing.total or 0, limited=limit != 0))


def _jobs_json(ctx: ClientContext, status: str | None, name_glob: str | None, limit: int | None) -> None:
    """A JSON array in creation order, written a row at a time as the pages arrive."""
    if limit is not None:
        # the N newest, in the creation order of the unlimited listing; N rows are held, not all
        newest = list(ctx.client.job_listing(status=status, name=name_glob, newest_first=True, limit=limit))
        rows: Iterable[JsonObject] = reversed(newest)
    else:
        rows = ctx.client.job_listing(status=status, name=name_glob)
    out = sys.stdout
    opened = False
    for row in rows:
        # one compact row per line, as the coordinator sent it: json's C encoder (indent= falls back to pure
        # Python, 5x slower over 100,000 rows); still one JSON array, and grep/jq-friendly
        out.write(("[\n" if not opened else ",\n") + json.dumps(row, default=str, separators=(",", ":")))
        opened = True
    out.write("\n]\n" if opened else "[]\n")
    out.flush()


@cli.command("show")
@click.argument("job")
@pass_client
def show_cmd(ctx: ClientContext, job: str) -> None:
    """One job: spec, lease, every attempt with its output tail, artifact, and why it waits. JOB: id, id prefix or name."""
    row = ctx.client.job(job)
    if ctx.as_json:
        ctx.emit_json(wire_of(row))
        return
    from mqfleet.cli.render import fleet as render_fleet
    from mqfleet.cli.render import jobs as render_jobs

    console = render_fleet.make_console()
    console.print(render_jobs.job_view(row, time.time(), width=console.width))


def _print_job(ctx: ClientContext, row: JobRow) -> None:
    if ctx.as_json:
        ctx.emit_json(wire_of(row))
        return
    from mqfleet.cli.render import fleet as render_fleet

    render_fleet.make_console().print(render_fleet.job_line(row))


@cli.command("cancel")
@click.argument("job")
@pass_client
def cancel_cmd(ctx: ClientContext, job: str) -> None:
    """Cancel JOB; a running trainer is stopped within seconds. Needs MQFLEET_OPERATOR_TOKEN."""
    _print_job(ctx, ctx.client.cancel(job))


@cli.command("requeue")
@click.argument("job")
@click.option("--fresh", is_flag=True, help="Also delete the job's checkpoint, so it starts from zero.")
@pass_client
def requeue_cmd(ctx: ClientContext, job: str, fresh: bool) -> None:
    """Put JOB back to pending with a fresh attempt budget; it resumes from its checkpoint unless --fresh.
    Needs MQFLEET_OPERATOR_TOKEN."""
    _print_job(ctx, ctx.client.requeue(job, fresh=fresh))


@cli.command("logs")
@click.argument("job")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends (or Ctrl-C).")
@click.option("--attempt", type=click.IntRange(min=1), default=None,
              help="Which attempt's output (default: the latest that has any).")
@click.option("--raw", is_flag=True,
              help="Print lines byte for byte, terminal escape sequences included (only for output you trust).")
@pass_client
def logs_cmd(ctx: ClientContext, job: str, follow: bool, attempt: int | None, raw: bool) -> None:
    """The trainer output the coordinator stored for JOB (one attempt); with -f, then the live lines."""
    if follow and attempt is not None:
        raise click.UsageError("-f follows the running attempt; leave out --attempt, or -f to read a past one")
    client = ctx.client
    if not follow:
        reply = client.logs(job, attempt)
        if ctx.as_json:
            ctx.emit_json(reply.lines)
            return
        for line in reply.lines:
            _echo_line(ctx, line, raw=raw)
        return
    row = client.job(job)
    job_id = row.id
    inbox: queue.SimpleQueue[tuple[str, Message]] = queue.SimpleQueue()
    # Subscribe before asking for the held lines, so nothing falls between the two.
    client.subscribe(client.topics.log("+", job_id), lambda m: inbox.put(("lines", m)), qos=0)
    client.subscribe(client.topics.job_state(job_id), lambda m: inbox.put(("state", m)))
    held = client.logs(job_id).lines
    for line in held:
        _echo_line(ctx, line, raw=raw)
    try:
        _follow(ctx, inbox, deque(held, maxlen=SEAM_WINDOW), host=row.host, raw=raw)
    except KeyboardInterrupt:
        pass


def _follow(ctx: ClientContext, inbox: queue.SimpleQueue[tuple[str, Message]], recent: deque[str], *,
            host: str | None, raw: bool) -> None:
    at_seam = True
    ended_at: float | None = None
    topics = ctx.client.topics
    while ended_at is None or time.monotonic() - ended_at < LOG_TRAILER_S:
        try:
            kind, msg = inbox.get(timeout=0.2)
        except queue.Empty:
            continue
        payload = _payload(msg)
        if kind == "state":
            # The job's output is what the host holding its lease prints; follow it across attempts.
            state_host = payload.get("host")
            host = state_host if isinstance(state_host, str) else host
            if payload.get("status") in TERMINAL and ended_at is None:
                ended_at = time.monotonic()
            continue
        parsed = topics.parse_log(msg.topic)
        if parsed is None or parsed[0] != host:
            continue  # another host writing under this job's id: not the job's output (docs/SECURITY.md)
        batch = payload.get("lines")
        lines = [str(line) for line in batch] if isinstance(batch, list) else []
        # Batches that arrived while the held lines were fetched may already be among them.
        if at_seam and lines and _contains_run(recent, lines):
            continue
        at_seam = False
        for line in lines:
            _echo_line(ctx, line, raw=raw)


def _contains_run(recent: deque[str], lines: list[str]) -> bool:
    held = list(recent)
    n = len(lines)
    return any(held[i : i + n] == lines for i in range(len(held) - n, -1, -1))


def _payload(msg: Message) -> JsonObject:
    """A log batch or job state from the bus: an object, else nothing (a malformed message is skipped)."""
    try:
        payload = msg.json()
    except Exception:
        return {}
    return payload if isinstance(payload, dict) else {}


def _echo_line(ctx: ClientContext, line: str, *, raw: bool) -> None:
    if ctx.as_json:
        ctx.emit_json(line)  # JSON escapes control characters itself
    elif raw:
        click.echo(line)
    else:
        # Trainer output is the host's text: kept, but no escape sequence reaches the operator's terminal.
        click.echo(clean(line))
