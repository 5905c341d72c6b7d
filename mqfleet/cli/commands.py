"""Imports every command module so each registers its commands on the `cli` group."""

from __future__ import annotations

import importlib

# Modules are imported by name so a missing optional area never breaks the rest of the CLI.
_MODULES = ["service", "manifest_cmd", "capability_cmd", "selftest_cmd", "jobs", "fleet", "artifacts", "broker_cmd"]

for _name in _MODULES:
    try:
        importlib.import_module(f"mqfleet.cli.{_name}")
    except ModuleNotFoundError as e:
        if e.name != f"mqfleet.cli.{_name}":
            raise
