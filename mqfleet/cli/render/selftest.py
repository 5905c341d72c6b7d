"""Rendering of `mqfleet agent selftest`: its checks as a table, each failure with its fix, and the verdict."""

from __future__ import annotations

from rich.table import Table

from mqfleet.agent.selftest import Check, Outcome

_STYLE = {Outcome.PASS: "green", Outcome.FAIL: "bold red", Outcome.INFO: "cyan", Outcome.SKIP: "yellow"}


def checks_table(host_id: str, checks: list[Check]) -> Table:
    table = Table(title=f"mqfleet agent selftest: {host_id}", show_lines=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail / fix")
    for check in checks:
        text = check.detail if not check.fix else f"{check.detail}\n[bold]fix:[/bold] {check.fix}"
        style = _STYLE[check.outcome]
        table.add_row(check.name, f"[{style}]{check.outcome.value.upper()}[/{style}]", text)
    return table


def verdict_line(checks: list[Check], passed: bool) -> str:
    failed = [c.name for c in checks if c.outcome is Outcome.FAIL]
    return "[green]all checks passed[/green]" if passed else f"[bold red]FAILED:[/bold red] {', '.join(failed)}"
