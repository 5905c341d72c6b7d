"""The selftest's table prints each check's detail and fix as text: brackets in them are not terminal markup."""

from __future__ import annotations

import pytest

from mqfleet.agent.selftest import Check, Outcome
from mqfleet.cli.selftest import _print_table


def test_a_fix_with_brackets_prints_whole_so_it_can_be_copied(capsys: pytest.CaptureFixture[str]) -> None:
    checks = [
        Check("training packages", Outcome.FAIL, "python: none found; missing: xgboost [bold]x[/bold]",
              "python -m pip install 'mqfleet[train]'"),
        Check("broker", Outcome.PASS, "connected to [red]mqtt://b:1883"),
    ]

    _print_table("st", checks, passed=False)

    out = capsys.readouterr().out
    assert "pip install 'mqfleet[train]'" in out
    assert "missing: xgboost [bold]x[/bold]" in out and "connected to [red]mqtt://b:1883" in out
    assert "FAILED: training packages" in out
