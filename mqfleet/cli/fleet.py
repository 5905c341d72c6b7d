"""`mqfleet status`, `workers`, `drain`, `undrain`, `reload`, `health` and `watch`: the commands about the fleet.

`watch` renders the fleet as the bus shows it (`mqfleet/fleet_picture.py`).
"""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mqfleet import defaults
from mqfleet.cli import cli
from mqfleet.cli.exit_codes import EXIT_FAILED, EXIT_USAGE, fail
from mqfleet.cli.options import ClientContext, pass_client, wire_of
from mqfleet.errors import ManifestError, RemoteError

if TYPE_CHECKING:
    # The renderers (rich) are imported by the commands that print a table, when they print it; the wire types
    # come with the client: `--help` and `--json` load neither (docs/BENCHMARKS.md, "CLI start-up").
    from mqfleet.wire.replies import DrainReply
    from mqfleet.wire.topics import JsonValue

#: Frames per second at most, however busy the bus is.
MAX_FPS = 4.0


@cli.command("status")
@pass_client
def status_cmd(ctx: ClientContext) -> None:
    """Fleet summary: hosts online/offline/draining, jobs by status, coordinator health."""
    health = ctx.client.health()
    workers = ctx.client.workers()
    if ctx.as_json:
        ctx.emit_json({
            "coordinator": wire_of(health),
            "hosts": {
                "online": sorted(w.id for w in workers if w.online),
                "offline": sorted(w.id for w in workers if not w.online),
                "draining": sorted(w.id for w in workers if w.draining),
                "quarantined": sorted(w.id for w in workers if w.quarantined),
            },
            "quarantined": [
                {"host": w.id, **(wire_of(w.quarantine) if w.quarantine else {})} for w in workers if w.quarantined
            ],
            "jobs_by_status": dict(sorted(health.jobs_by_status.items())),
            # the online hosts their owners have taken back, and why (docs/OPERATIONS.md, "Owner policies")
            "owner_wait": [{"host": w.id, "reason": w.owner_wait} for w in workers if w.online and w.owner_wait],
        })
        return
    from mqfleet.cli.render import fleet as render_fleet

    render_fleet.make_console().print(render_fleet.status_view(health, workers))


@cli.command("workers")
@pass_client
def workers_cmd(ctx: ClientContext) -> None:
    """Each host: capability, online, draining, slots used/total, running jobs, heartbeat age."""
    workers = ctx.client.workers()
    if ctx.as_json:
        ctx.emit_json([wire_of(w) for w in workers])
        return
    names: dict[str, str] = {}
    if any(w.jobs for w in workers):
        # only leased jobs run on hosts: two status listings, not every job the fleet ever had
        for status in ("claimed", "running"):
            names.update((str(j.get("id")), str(j.get("name"))) for j in ctx.client.job_listing(status=status))
    from mqfleet.cli.render import fleet as render_fleet

    render_fleet.make_console().print(render_fleet.workers_table(workers, names, time.time()))


def _print_drain(ctx: ClientContext, reply: DrainReply) -> None:
    from mqfleet.wire.replies import UndrainReply

    released = isinstance(reply, UndrainReply) and reply.quarantine_released
    if ctx.as_json:
        ctx.emit_json({"host": reply.host, "draining": reply.draining, "quarantine_released": released})
        return
    what = "draining (finishes its jobs, takes no new ones)" if reply.draining else "takes work"
    click.echo(f"{reply.host}: {what}{' (quarantine released)' if released else ''}")


@cli.command("drain")
@click.argument("host")
@pass_client
def drain_cmd(ctx: ClientContext, host: str) -> None:
    """Let HOST finish what it runs and take no new work. Needs MQFLEET_OPERATOR_TOKEN."""
    _print_drain(ctx, ctx.client.drain(host))


@cli.command("undrain")
@click.argument("host")
@pass_client
def undrain_cmd(ctx: ClientContext, host: str) -> None:
    """Let HOST take work again. Needs MQFLEET_OPERATOR_TOKEN."""
    _print_drain(ctx, ctx.client.undrain(host))


@cli.command("reload")
@click.option("--file", "manifest_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Send this manifest instead of having the coordinator re-read its own.")
@pass_client
def reload_cmd(ctx: ClientContext, manifest_file: Path | None) -> None:
    """Load the manifest again: new jobs become claimable, existing ones keep their status. Exit 2 if invalid."""
    text: str | None = None
    if manifest_file is not None:
        data = manifest_file.read_bytes()
        if len(data) > defaults.MAX_MANIFEST_BYTES:
            fail(f"{manifest_file}: {len(data)} bytes is over the {defaults.MAX_MANIFEST_BYTES}-byte limit", EXIT_USAGE)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            fail(f"{manifest_file}: not UTF-8 text ({e.reason})", EXIT_USAGE)
    try:
        reply = ctx.client.reload(text, source=str(manifest_file) if manifest_file is not None else None)
    except RemoteError as e:
        # the one refusal that carries more than a message: the manifest's problems, each with its place
        problems = e.reply.get("problems")
        if not e.is_a(ManifestError) or not isinstance(problems, list):
            raise
        _print_problems(ctx, str(manifest_file or "the coordinator's manifest"), problems)
        raise click.exceptions.Exit(EXIT_USAGE) from None
    summary = {"source": reply.source, "added": len(reply.added), "kept": reply.kept,
               "orphaned": len(reply.orphaned), "jobs": reply.jobs}
    if ctx.as_json:
        ctx.emit_json({**summary, "added_ids": reply.added, "orphaned_ids": reply.orphaned})
        return
    click.echo(f"reloaded {summary['source']}: {summary['added']} added, {summary['kept']} kept, "
               f"{summary['orphaned']} orphaned ({summary['jobs']} jobs in the manifest)")


def _print_problems(ctx: ClientContext, source: str, problems: list[JsonValue]) -> None:
    if ctx.as_json:
        ctx.emit_json({"ok": False, "problems": problems})
    for p in problems:
        place = (p.get("place") if isinstance(p, dict) else None) or ""
        message = p.get("message") if isinstance(p, dict) else p
        click.echo(f"{source}: {f'{place}: ' if place else ''}{message}", err=True)
    click.echo(f"{source}: refused, {len(problems)} problem(s); the manifest in force stays", err=True)


@cli.command("health")
@pass_client
def health_cmd(ctx: ClientContext) -> None:
    """The coordinator's health; exit 0 when all is well, 1 when it answers but a check failed, 3 when it does not."""
    health = ctx.client.health()
    if ctx.as_json:
        ctx.emit_json(wire_of(health))
    else:
        from mqfleet.cli.render import fleet as render_fleet

        render_fleet.make_console().print(render_fleet.health_view(health))
    failed = health.failed_checks
    if failed:
        details = "; ".join(f"{name}: {check.detail if (check := health.checks.get(name)) else 'failed'}" for name in failed)
        fail(f"the coordinator answers, but {len(failed)} check(s) failed: {details}", EXIT_FAILED)


# --- watch -------------------------------------------------------------------------------------


@cli.command("watch")
@click.option("--once", is_flag=True, help="Render one frame after the retained messages arrived, then exit.")
@pass_client
def watch_cmd(ctx: ClientContext, once: bool) -> None:
    """Live dashboard from the bus: hosts, running jobs with progress, counts by status, recent events."""
    from rich.live import Live

    from mqfleet.cli.render import fleet as render_fleet
    from mqfleet.fleet_picture import settle_picture

    picture, inbox = settle_picture(ctx.client, timeout_s=ctx.timeout_s)
    console = render_fleet.make_console()
    if once:
        console.print(render_fleet.watch_frame(picture, time.time()))
        return
    try:
        with Live(render_fleet.watch_frame(picture, time.time()), console=console, auto_refresh=False, screen=False) as live:
            last = 0.0
            while True:
                try:
                    picture.apply(inbox.get(timeout=1.0))
                    while True:
                        picture.apply(inbox.get_nowait())
                except queue.Empty:
                    pass
                if time.monotonic() - last >= 1 / MAX_FPS:
                    live.update(render_fleet.watch_frame(picture, time.time()), refresh=True)
                    last = time.monotonic()
    except KeyboardInterrupt:
        pass
