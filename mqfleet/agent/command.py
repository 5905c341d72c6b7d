"""How a trainer is started: its argv from the claim grant, and its environment (DESIGN.md, "Trainers")."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mqfleet import defaults
from mqfleet.errors import ConfigurationError
from mqfleet.trainers import BUILTIN_MODULE


def build_trainer_argv(
    trainer: Mapping[str, Any], spec: Mapping[str, Any], python: str = sys.executable, *, out_dir: Path | None = None
) -> list[str]:
    """The trainer's argv from a claim grant's trainer dict and job spec; hyperparameters as `--name value`.

    In a `command`, `{python}`, `{job_id}` and `{out_dir}` are replaced wherever they appear.
    """
    builtin = trainer.get("builtin")
    command = trainer.get("command")
    if builtin:
        if builtin not in BUILTIN_MODULE:
            raise ConfigurationError(f"trainer {trainer.get('name')!r}: unknown built-in {builtin!r}")
        argv = [python, "-m", BUILTIN_MODULE[builtin]]
    elif command:
        values = {"{python}": python, "{job_id}": str(spec.get("id", "")), "{out_dir}": str(out_dir or "")}
        argv = [_substitute(str(part), values) for part in command]
    else:
        raise ConfigurationError(f"trainer {trainer.get('name')!r} has neither a builtin nor a command")
    hyper: Mapping[str, Any] = spec.get("hyper") or {}
    for name in sorted(hyper):
        value = hyper[name]
        # A declared hyperparameter without a value is left to the trainer's own default.
        if value is None:
            continue
        argv += [f"--{name}", _flag_value(value)]
    return argv


def _substitute(part: str, values: Mapping[str, str]) -> str:
    for placeholder, value in values.items():
        part = part.replace(placeholder, value)
    return part


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, sort_keys=True)


def trainer_env(
    spec_path: Path, out_dir: Path, gpus: list[int], base_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The trainer's environment: `base_env` (default: this process's) plus what DESIGN.md promises trainers."""
    env = dict(os.environ if base_env is None else base_env)
    env[defaults.ENV_SPEC] = str(spec_path)
    env[defaults.ENV_OUT_DIR] = str(out_dir)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    # Advert GPU indices come from NVML, which numbers by PCI bus; CUDA's default order is fastest-first.
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["PYTHONUNBUFFERED"] = "1"
    # Output is decoded as UTF-8; a Windows console code page would otherwise garble it.
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env
