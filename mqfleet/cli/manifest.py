"""`mqfleet validate`, the offline manifest check with a summary of what a valid manifest holds, and
`mqfleet manifest`, which fetches the manifest in force from the coordinator."""

from __future__ import annotations

import json
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

    from mqfleet.cli.render import manifest as render_manifest

    console = Console()
    # soft_wrap: the summary line stays one line that scripts and tests can grep
    console.print(render_manifest.valid_line(path, manifest), highlight=False, soft_wrap=True)
    console.print(render_manifest.jobs_table(manifest))
    if manifest.hosts:
        console.print(render_manifest.hosts_table(manifest))


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
