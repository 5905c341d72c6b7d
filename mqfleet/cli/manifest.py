"""`mqfleet validate`, the offline manifest check with a summary of what a valid manifest holds, and
`mqfleet manifest`, which fetches the manifest in force from the coordinator."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mqfleet.cli import cli
from mqfleet.cli.exit_codes import EXIT_FAILED, EXIT_USAGE, fail
from mqfleet.cli.options import ClientContext, pass_client
from mqfleet.errors import ManifestError

if TYPE_CHECKING:
    from mqfleet.manifest.types import Manifest


@cli.command("validate")
@click.argument("manifest_path", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="Print {ok, problems, jobs} as JSON.")
def validate_cmd(manifest_path: str, as_json: bool) -> None:
    """Check manifest FILE offline; every problem is listed with its place. Exit 2 when invalid."""
    from mqfleet.manifest.load import load_manifest

    try:
        manifest = load_manifest(manifest_path)
    except ManifestError as e:
        if as_json:
            problems = [{"place": p.place, "message": p.message} for p in e.problems]
            click.echo(json.dumps({"ok": False, "problems": problems, "jobs": []}, indent=2))
        else:
            for problem in e.problems:
                click.echo(f"{manifest_path}: {problem}", err=True)
            click.echo(f"{manifest_path}: invalid, {len(e.problems)} problem(s)", err=True)
        # SystemExit, not click's Exit: in non-standalone mode click turns Exit into a return value
        raise SystemExit(EXIT_USAGE) from None
    if as_json:
        click.echo(json.dumps({"ok": True, "problems": [], "jobs": [j.to_dict() for j in manifest.jobs]}, indent=2))
    else:
        _print_summary(manifest_path, manifest)


def _print_summary(path: str, manifest: Manifest) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    sweep_places = [place for place in manifest.places.values() if place.startswith("sweeps[")]
    counts = (
        f"{_count(len(manifest.jobs), 'job')} ({len(sweep_places)} from {_count(len(set(sweep_places)), 'sweep')}), "
        f"{_count(len(manifest.trainers), 'trainer')}, {_count(len(manifest.hosts), 'host')}"
    )
    # soft_wrap: the summary line stays one line that scripts and tests can grep
    console.print(f"[green]{escape(path)}: valid[/green]: {counts}", highlight=False, soft_wrap=True)
    per_kind = Counter((job.model, job.mode) for job in manifest.jobs)
    jobs = Table("model", "trainer", "mode", "jobs", title="jobs", title_justify="left")
    for (model, mode), count in sorted(per_kind.items()):
        trainer = manifest.trainers[model]
        jobs.add_row(*map(escape, (model, trainer.builtin or " ".join(trainer.command), mode)), str(count))
    console.print(jobs)
    if manifest.hosts:
        hosts = Table("host", "slots", "allow", "deny", "labels", title="hosts", title_justify="left")
        for host in manifest.hosts.values():
            lists = (", ".join(host.allow_jobs), ", ".join(host.deny_jobs), ", ".join(host.labels))
            hosts.add_row(escape(host.id), str(host.slots), *map(escape, lists))
        console.print(hosts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@cli.command("manifest")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the manifest to FILE instead of printing it.")
@pass_client
def manifest_cmd(ctx: ClientContext, output: Path | None) -> None:
    """The manifest in force, exactly as applied: edit it and send it back with `reload --file`."""
    reply = ctx.client.manifest()
    text = reply.text
    about = {"source": reply.source, "sha256": reply.sha256, "applied_ts": reply.applied_ts, "origin": reply.origin}
    if output is not None:
        try:
            # bytes, so the file is the applied text byte for byte (no newline translation)
            output.write_bytes(text.encode("utf-8"))
        except OSError as e:
            fail(f"{output}: cannot write the manifest ({e.strerror or e}); choose another -o FILE", EXIT_FAILED)
        if ctx.as_json:
            ctx.emit_json({**about, "written": str(output)})
        else:
            click.echo(f"wrote {output}: the manifest in force from {about['source']} "
                       f"(sha256 {str(about['sha256'])[:12]})", err=True)
        return
    if ctx.as_json:
        ctx.emit_json({**about, "text": text})
        return
    click.echo(text, nl=False)
