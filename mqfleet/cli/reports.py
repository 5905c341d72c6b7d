"""`mqfleet compare` (jobs' final metrics side by side) and `mqfleet gc` (store objects no job needs)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from mqfleet.cli import cli
from mqfleet.cli.options import ClientContext, pass_client, wire_of

if TYPE_CHECKING:
    from mqfleet.wire.replies import CompareRow


def _sort_key(metric: str, descending: bool) -> Callable[[CompareRow], tuple[int, float, str]]:
    def key(row: CompareRow) -> tuple[int, float, str]:
        value = row.metrics.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return (1, 0.0, row.name)  # jobs without the metric go last, by name
        return (0, -float(value) if descending else float(value), row.name)
    return key


@cli.command("compare")
@click.argument("jobs", nargs=-1)
@click.option("--sweep", default=None, help="Compare every job of this [[sweeps]] entry (its name, or MODEL-MODE).")
@click.option("--sort", "sort_by", default=None,
              help="Metric to sort by (default: loss if any job has it, else the first metric).")
@click.option("--desc", is_flag=True, help="Largest first (for metrics where more is better, like accuracy).")
@pass_client
def compare_cmd(ctx: ClientContext, jobs: tuple[str, ...], sweep: str | None, sort_by: str | None, desc: bool) -> None:
    """Final metrics of JOBS (ids, id prefixes or names), or of a sweep's jobs, side by side."""
    if bool(jobs) == bool(sweep):
        raise click.UsageError("name some JOBS or give --sweep NAME (not both)")
    reply = ctx.client.compare(list(jobs), sweep=sweep)
    rows = list(reply.jobs)
    names = reply.metric_names
    if sort_by is None:
        sort_by = "loss" if "loss" in names else (names[0] if names else None)
    elif sort_by not in names:
        known = ", ".join(names) or "none: no job has reported a numeric metric yet"
        raise click.UsageError(f"no job has a numeric metric {sort_by!r}; sort by one of: {known}")
    if sort_by is not None:
        rows.sort(key=_sort_key(sort_by, desc))
    if ctx.as_json:
        ctx.emit_json({"sweep": reply.sweep, "sort": sort_by, "descending": desc, "metric_names": names,
                       "jobs": [wire_of(r) for r in rows]})
        return
    from mqfleet.cli.render import fleet as render_fleet
    from mqfleet.cli.render import jobs as render_jobs

    title = f"sweep {sweep}" if sweep else "jobs"
    render_fleet.make_console().print(render_jobs.compare_table(rows, names, sort_by=sort_by, title=title))


@cli.command("gc")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@pass_client
def gc_cmd(ctx: ClientContext, dry_run: bool) -> None:
    """Delete the store objects (artifacts) no job references, and say what that freed. Needs MQFLEET_OPERATOR_TOKEN."""
    result = ctx.client.gc(dry_run=dry_run)
    if ctx.as_json:
        ctx.emit_json(wire_of(result))
        return
    from mqfleet.cli.render.fleet import human_size

    for obj in result.objects:
        click.echo(f"{'would delete' if dry_run else 'deleted'} {obj.key} ({human_size(obj.size)})")
    if result.count > len(result.objects):
        click.echo(f"... and {result.count - len(result.objects)} more")
    for failure in result.failed:
        click.echo(f"error: could not delete {failure.key}: {failure.error}", err=True)
    verb = "would free" if dry_run else "freed"
    click.echo(f"{verb} {human_size(result.bytes)} in {result.count - len(result.failed)} "
               f"object(s); {result.kept} referenced object(s) kept")
    if result.failed:
        raise click.exceptions.Exit(1)
