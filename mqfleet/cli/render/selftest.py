"""Rendering of `mqfleet agent selftest`: its checks as a table, each failure with its fix, and the verdict."""

from __future__ import annotations

from rich.table import Table

from mqfleet.agent.selftest import Check, Outcome
from mqfleet.cli.render.fleet import escape

_STYLE = {Outcome.PASS: "green", Outcome.FAIL: "bold red", Outcome.INFO: "cyan", Outcome.SKIP: "yellow"}


def checks_table(host_id: str, checks: list[Check]) -> Table:
    table = Table(title=f"mqfleet agent selftest: {host_id}", show_lines=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail / fix")
    for check in checks:
        # escaped: a fix such as `pip install 'mqfleet[train]'` is not markup, and a detail may quote the bus
        text = escape(check.detail) if not check.fix else f"{escape(check.detail)}\n[bold]fix:[/bold] {escape(check.fix)}"
        style = _STYLE[check.outcome]
        table.add_row(escape(check.name), f"[{style}]{check.outcome.value.upper()}[/{style}]", text)
    return table


def verdict_line(checks: list[Check], passed: bool) -> str:
    failed = [c.name for c in checks if c.outcome is Outcome.FAIL]
    return "[green]all checks passed[/green]" if passed else f"[bold red]FAILED:[/bold red] {escape(', '.join(failed))}"
