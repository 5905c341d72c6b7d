"""`mqfleet artifacts`: list stored artifacts (`fetch`, which downloads one, is cli/fetch.py)."""

from __future__ import annotations

from mqfleet.cli import cli
from mqfleet.cli.options import ClientContext, pass_client, wire_of


@cli.command("artifacts")
@pass_client
def artifacts_cmd(ctx: ClientContext) -> None:
    """Stored artifacts: job, model, mode, sha256, size, metrics, host, created."""
    artifacts = ctx.client.artifacts()
    if ctx.as_json:
        ctx.emit_json([wire_of(a) for a in artifacts])
        return
    from mqfleet.cli.render import fleet as render_fleet
    from mqfleet.cli.render import jobs as render_jobs

    render_fleet.make_console().print(render_jobs.artifacts_table(artifacts))
