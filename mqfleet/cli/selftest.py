"""`mqfleet agent selftest`: the readiness checks of `mqfleet.agent.selftest` as a table or JSON."""

from __future__ import annotations

import json

import click

from mqfleet import defaults
from mqfleet.agent.selftest import Check, SelftestConfig, is_passing, run_selftest
from mqfleet.cli.exit_codes import EXIT_FAILED, EXIT_OK
from mqfleet.cli.options import broker_config_from
from mqfleet.cli.roles import agent_cmd
from mqfleet.logs import setup_logging


@agent_cmd.command("selftest")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as a JSON object.")
@click.option("--no-train", is_flag=True, help="Skip the tiny training run.")
@click.option("--wait", "wait_s", type=float, default=5.0, show_default=True, help="Seconds to wait for the broker.")
@click.option("--timeout", "timeout_s", type=float, default=5.0, show_default=True,
              help="Seconds to wait for the coordinator's answer.")
@click.pass_context
def selftest_cmd(ctx: click.Context, as_json: bool, no_train: bool, wait_s: float, timeout_s: float) -> None:
    """Check this host before it joins: capability, broker, coordinator, packages, a tiny training run.

    Takes the agent's options: `mqfleet agent --host-id H --broker URL --ca F --cert F --key F selftest`.
    Exits 0 when every check passes, 1 when any fails; each failure says how to fix it.
    """
    setup_logging(-1)  # the table is the report; trainer start/exit INFO lines would only clutter it
    obj = ctx.obj or {}
    config = SelftestConfig(
        host_id=obj["host_id"],
        broker=broker_config_from(obj.get("broker") or {}, validate=False),
        prefix=obj.get("prefix") or defaults.TOPIC_PREFIX,
        repo=obj.get("repo"),
        slots=int(obj.get("slots") or 1),
        connect_wait_s=wait_s,
        request_timeout_s=timeout_s,
        run_trainer=not no_train,
        trainer_user=obj.get("trainer_user") or "",
    )
    checks = run_selftest(config)
    passed = is_passing(checks)
    if as_json:
        click.echo(json.dumps({"ok": passed, "host": config.host_id, "checks": [c.to_wire() for c in checks]}, indent=2))
    else:
        _print_table(config.host_id, checks, passed)
    raise click.exceptions.Exit(EXIT_OK if passed else EXIT_FAILED)


def _print_table(host_id: str, checks: list[Check], passed: bool) -> None:
    from rich.console import Console

    from mqfleet.cli.render.selftest import checks_table, verdict_line

    # A wide console: the fixes are commands an operator copies, so they must not be cut.
    console = Console(width=max(120, Console().width), soft_wrap=False)
    console.print(checks_table(host_id, checks))
    console.print(verdict_line(checks, passed))
