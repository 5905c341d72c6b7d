"""`mqfleet agent pause` and `mqfleet agent resume`: the machine owner's switch, on the host itself.

They talk to the local agent through its owner switch (mqfleet/owner/switch.py), never the bus, so they
need no operator token: the socket's mode and the caller's uid decide. Only the standard library and
mqfleet.owner are imported, so the command answers at once on a busy machine.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from mqfleet import defaults
from mqfleet.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from mqfleet.cli.roles import agent_cmd
from mqfleet.owner.switch import KEY_NAME, SwitchError, ask_agent, parse_duration, socket_candidates


def _ask(ctx: click.Context, request: dict[str, Any], socket_path: Path | None, as_json: bool) -> None:
    obj = ctx.obj or {}
    from_env = os.environ.get(defaults.ENV_WORK_DIR)
    work_dir: Path | None = obj.get("work_dir") or (Path(from_env) if from_env else None)
    try:
        if sys.platform == "win32":
            folder = work_dir or Path.home() / ".mqfleet" / "work" / obj.get("host_id", "")
            reply = ask_agent(request, key_file=folder / KEY_NAME)
        else:
            chosen = socket_path or obj.get("owner_socket") or next(
                (p for p in socket_candidates(work_dir, obj.get("host_id", "")) if p.exists()), None)
            if chosen is None:
                raise SwitchError("no running agent found on this host (looked in --work-dir, /run/mqfleet-agent and "
                                  "~/.mqfleet/work); pass --socket PATH")
            reply = ask_agent(request, socket_path=Path(chosen))
    except SwitchError as e:
        click.echo(f"error: {e}", err=True)
        raise click.exceptions.Exit(EXIT_FAILED) from None
    if as_json:
        click.echo(json.dumps(reply, sort_keys=True))
    else:
        running = reply.get("running") or []
        click.echo(f"agent {reply.get('host')}: {reply.get('message')}")
        if running and reply.get("state") != "available":
            what = {"finish": "finish first", "kill": "are stopped now",
                    "checkpoint": "are handed back after a final checkpoint"}.get(str(reply.get("on_yield")), "")
            click.echo(f"running: {', '.join(map(str, running))} ({what})")
    raise click.exceptions.Exit(EXIT_OK)


@agent_cmd.command("pause")
@click.option("--now", "mode", flag_value="now", default=None,
              help="Hand running jobs back at once (after a final checkpoint; at once with on_yield = kill).")
@click.option("--after-current", "mode", flag_value="after_current", help="Let running jobs finish; take no new ones.")
@click.option("--for", "duration", default=None, metavar="DURATION",
              help="Take work again after this long: 2h, 90m, 1h30m, 45s (default: until `mqfleet agent resume`).")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path, readable=False), default=None,
              help="The agent's owner socket (default: found in its work dir or /run/mqfleet-agent).")
@click.option("--json", "as_json", is_flag=True, help="Print the agent's answer as JSON.")
@click.pass_context
def pause_cmd(ctx: click.Context, mode: str | None, duration: str | None, socket_path: Path | None, as_json: bool) -> None:
    """Stop this host taking fleet work: the owner's switch, no operator token needed.

    Without --now or --after-current, running jobs do what the host's on_yield says (by default: a final
    checkpoint, then handed back to run elsewhere, never counted as a failure).
    """
    for_s = None
    if duration is not None:
        try:
            for_s = parse_duration(duration)
        except ValueError as e:
            click.echo(f"error: --for {duration}: {e}", err=True)
            raise click.exceptions.Exit(EXIT_USAGE) from None
    _ask(ctx, {"action": "pause", "mode": mode, "for_s": for_s}, socket_path, as_json)


@agent_cmd.command("resume")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path, readable=False), default=None,
              help="The agent's owner socket (default: found in its work dir or /run/mqfleet-agent).")
@click.option("--json", "as_json", is_flag=True, help="Print the agent's answer as JSON.")
@click.pass_context
def resume_cmd(ctx: click.Context, socket_path: Path | None, as_json: bool) -> None:
    """End the owner's pause: the host takes work again (its hours and when_busy still apply)."""
    _ask(ctx, {"action": "resume"}, socket_path, as_json)
