"""How a trainer is started: its argv from the claim grant, and its environment (docs/INTERNALS.md, "Trainers")."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mqfleet import defaults
from mqfleet.errors import ConfigurationError
from mqfleet.wire.requests import TrainerRef
from mqfleet.wire.topics import JsonObject, JsonValue


def build_trainer_argv(
    trainer: TrainerRef, spec: JsonObject, python: str = sys.executable, *, out_dir: Path | None = None
) -> list[str]:
    """The trainer's argv from a claim grant's trainer and job spec; hyperparameters as `--name value`.

    The grant's `argv` is the template the coordinator resolved (a built-in's is
    `{python} -m <module>`), so the agent needs no registry of trainers. `{python}`,
    `{job_id}` and `{out_dir}` are replaced wherever they appear.
    """
    template = trainer.argv or trainer.command
    if not template:
        if trainer.builtin:
            raise ConfigurationError(
                f"trainer {trainer.name!r}: the grant names built-in {trainer.builtin!r} but carries no "
                "argv; the coordinator resolves it, so run a coordinator of this agent's version"
            )
        raise ConfigurationError(f"trainer {trainer.name!r} has neither an argv nor a command")
    values = {"{python}": python, "{job_id}": str(spec.get("id", "")), "{out_dir}": str(out_dir or "")}
    argv = [_substitute(part, values) for part in template]
    hyper = spec.get("hyper")
    if not isinstance(hyper, dict):
        hyper = {}
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


def _flag_value(value: JsonValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, sort_keys=True)


#: Variables a trainer inherits from the agent's environment. Nothing else passes: the agent's own
#: environment may hold the operator token, store credentials or its TLS key paths, and a trainer is
#: code from the manifest (docs/SECURITY.md, "Trainers"). `--trainer-env NAME=VALUE` on the agent adds more.
INHERITED_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "PYTHONPATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    # what Python and CUDA need to start at all on Windows
    "SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "USERPROFILE", "APPDATA", "LOCALAPPDATA", "PROGRAMDATA",
    "PROGRAMFILES", "NUMBER_OF_PROCESSORS", "PROCESSOR_ARCHITECTURE",
})
INHERITED_PREFIXES = ("LC_", "CUDA_", "NVIDIA_")


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the agent's environment a trainer may see (INHERITED_NAMES and INHERITED_PREFIXES)."""
    return {name: value for name, value in environ.items()
            if name.upper() in INHERITED_NAMES or name.upper().startswith(INHERITED_PREFIXES)}


def trainer_env(
    spec_path: Path, out_dir: Path, gpus: list[int], base_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The trainer's environment: `base_env` (default: the allowed part of this process's) plus the trainer contract
    (docs/INTERNALS.md, "Trainers")."""
    env = dict(inherited_env(os.environ) if base_env is None else base_env)
    env[defaults.ENV_SPEC] = str(spec_path)
    env[defaults.ENV_OUT_DIR] = str(out_dir)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    # Advert GPU indices come from NVML, which numbers by PCI bus; CUDA's default order is fastest-first.
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["PYTHONUNBUFFERED"] = "1"
    # Output is decoded as UTF-8; a Windows console code page would otherwise garble it.
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env
