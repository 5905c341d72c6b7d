"""Checks the tables of a parsed manifest that declare things: [fleet], [trainers.*] and [[hosts]].

Every check adds to a `Checker` (`values.py`) instead of raising, so one run reports every
problem, each at its dotted place with what to write instead. The jobs and sweeps are checked in
`jobs.py`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from mqfleet.hostid import host_id_problem
from mqfleet.manifest.builtins import BUILTIN_HYPER, BUILTIN_OUTPUTS
from mqfleet.manifest.types import KIND, FleetSettings, HostPolicy, HyperParam, HyperValue, TrainerSpec
from mqfleet.manifest.values import Checker, TomlTable, TomlValue, did_you_mean, fmt, is_number, show
from mqfleet.wire.owner import OWNER_KEYS, policy_from_table

HYPER_TYPES = ("int", "float", "str", "bool")
TOP_KEYS = ("fleet", "trainers", "hosts", "jobs", "sweeps")
#: The [fleet] keys and the kind each is checked as, from FleetSettings' fields.
_FLEET_KINDS = {f.name: f.metadata[KIND] for f in dataclasses.fields(FleetSettings)}
_TRAINER_KEYS = ("builtin", "command", "hyper", "outputs", "resumable")
_DECL_KEYS = ("type", "default", "min", "max", "choices")
_HOST_KINDS = {"id": "str", "allow_jobs": "strs", "deny_jobs": "strs", "slots": "int>=1", "labels": "strs"}


def check_value(param: HyperParam, value: TomlValue | None) -> tuple[HyperValue | None, str | None]:
    """(value converted to the declared type, None), or (None, what is wrong and what would do)."""
    checked: HyperValue
    kind = param.type
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"must be an integer (declared int), not {show(value)}"
        checked = value
    elif kind == "float":
        if not is_number(value):
            return None, f"must be a finite number (declared float), not {show(value)}"
        checked = float(value)
    elif kind == "str":
        if not isinstance(value, str):
            return None, f"must be a string (declared str), not {show(value)}"
        checked = value
    elif kind == "bool":
        if not isinstance(value, bool):
            return None, f"must be true or false (declared bool), not {show(value)}"
        checked = value
    else:
        raise ValueError(f"undeclarable type {kind!r}")  # `_declare` lets only HYPER_TYPES through
    low, high = param.min, param.max
    if isinstance(checked, (int, float)) and ((low is not None and checked < low) or (high is not None and checked > high)):
        lo = fmt(low) if low is not None else "-inf"
        hi = fmt(high) if high is not None else "inf"
        return None, f"{show(checked)} is out of bounds; use a value in [{lo}, {hi}]"
    if param.choices and checked not in param.choices:
        return None, f"{show(checked)} is not allowed; use one of: {', '.join(show(c) for c in param.choices)}"
    return checked, None


def read_fleet(ck: Checker, data: Mapping[str, TomlValue]) -> FleetSettings:
    """The [fleet] table, defaults filled in. Each value passed the check of its field's kind, so it is of the
    field's type (`coerce` gives an int for `int`, a float for `number`, a str, a bool)."""
    table = ck.table(data, "fleet")
    ck.keys(table, _FLEET_KINDS, "fleet")
    checked: dict[str, Any] = ck.fields(table, _FLEET_KINDS, "fleet").values  # typed by the kind checks
    return dataclasses.replace(FleetSettings(), **checked)


def read_trainers(ck: Checker, table: TomlTable) -> dict[str, TrainerSpec | None]:
    """Every declared trainer; None for one whose declaration has problems (already reported)."""
    out: dict[str, TrainerSpec | None] = {}
    for name, entry in table.items():
        place = f"trainers.{name}"
        out[name] = None
        if not isinstance(entry, dict):
            ck.add(place, 'must be a table: [trainers.NAME] with builtin = "xgboost" or command = [...]')
            continue
        before = len(ck.problems)
        ck.keys(entry, _TRAINER_KEYS, place)
        builtin, command = entry.get("builtin"), entry.get("command")
        # narrowed: a builtin that is not a string is reported below, and then nothing reads this
        builtin_name = builtin if isinstance(builtin, str) else None
        argv: tuple[str, ...] = ()
        base: dict[str, HyperParam] = {}
        if (builtin is None) == (command is None):
            ck.add(
                place,
                f"needs exactly one of builtin = ({' or '.join(map(repr, BUILTIN_HYPER))}) "
                'or command = ["{python}", "-m", "my.trainer"]',
            )
        elif builtin is not None:
            if not isinstance(builtin, str) or builtin not in BUILTIN_HYPER:
                hint = did_you_mean(str(builtin), BUILTIN_HYPER)
                ck.add(
                    f"{place}.builtin",
                    f"unknown built-in trainer {show(builtin)}{hint}; built-ins: {', '.join(BUILTIN_HYPER)}",
                )
            else:
                base = BUILTIN_HYPER[builtin]
        elif isinstance(command, list) and command and all(isinstance(a, str) and a for a in command):
            argv = tuple(a for a in command if isinstance(a, str))
        else:
            ck.add(
                f"{place}.command",
                'must be a non-empty list of non-empty strings, like ["{python}", "-m", "my.trainer"]',
            )
        hyper_table = entry.get("hyper", {})
        if not isinstance(hyper_table, dict):
            ck.add(f"{place}.hyper", f"must be a table, written [{place}.hyper], not {show(hyper_table)}")
        elif not (builtin is not None and not base):  # an unknown built-in has nothing to narrow
            hyper = _read_declarations(ck, hyper_table, f"{place}.hyper", base, builtin_name)
            outputs = _read_outputs(ck, entry, place, builtin_name)
            resumable = entry.get("resumable", True)
            if not isinstance(resumable, bool):
                ck.add(f"{place}.resumable", f"must be true or false, not {show(resumable)}")
            elif len(ck.problems) == before:
                out[name] = TrainerSpec(name, builtin_name, argv, hyper, outputs, resumable=resumable)
    return out


def _read_outputs(ck: Checker, entry: Mapping[str, TomlValue], place: str, builtin: str | None) -> tuple[str, ...]:
    """A trainer's required outputs: a built-in's own globs, then the manifest's, each checked."""
    declared = list(BUILTIN_OUTPUTS.get(builtin or "", ()))
    if "outputs" not in entry:
        return tuple(declared)
    raw = entry["outputs"]
    where = f"{place}.outputs"
    if not isinstance(raw, list):
        ck.add(where, f'must be a list of globs relative to the output folder, like ["model.pt", "*.json"], not {show(raw)}')
        return tuple(declared)
    for i, glob in enumerate(raw):
        problem = output_glob_problem(glob)
        if problem:
            ck.add(f"{where}[{i}]", problem)
        elif isinstance(glob, str) and glob not in declared:
            declared.append(glob)
    return tuple(declared)


def output_glob_problem(glob: TomlValue) -> str | None:
    """What is wrong with one `outputs` glob, or None: it must name files inside the output folder."""
    if not isinstance(glob, str):
        return f"must be a glob string like \"model.pt\" or \"*.json\", not {show(glob)}"
    if not glob.strip():
        return 'an empty glob matches nothing; name a file, like "model.pt", or remove the entry'
    if glob.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", glob):
        return f"{show(glob)} is absolute; write it relative to the output folder"
    if ".." in re.split(r"[/\\]", glob):
        return f"{show(glob)} leaves the output folder; outputs are checked inside it only"
    return None


def _read_declarations(
    ck: Checker, table: TomlTable, place: str, base: dict[str, HyperParam], builtin: str | None
) -> dict[str, HyperParam]:
    """A trainer's hyperparameters: the built-in's, narrowed by the manifest, or the manifest's own."""
    out = dict(base)
    for name, decl in table.items():
        where = f"{place}.{name}"
        if not isinstance(decl, dict):
            ck.add(where, 'must be a table like { type = "int", default = 1, min = 0 }')
            continue
        if builtin is not None and name not in base:
            ck.add(
                where,
                f"not a hyperparameter of built-in trainer {builtin!r}{did_you_mean(name, base)}; "
                f"a built-in's declaration can only be narrowed (it takes: {', '.join(sorted(base))})",
            )
            continue
        ck.keys(decl, _DECL_KEYS, where)
        param = _declare(ck, decl, where, name, base.get(name))
        if param is not None:
            out[name] = param
    return out


def _declare(ck: Checker, decl: TomlTable, place: str, name: str, old: HyperParam | None) -> HyperParam | None:
    """One declaration; `old` is the built-in's, which it may only narrow (bounds, choices, default)."""
    before = len(ck.problems)
    kind = decl.get("type", old.type if old else None)
    if not isinstance(kind, str) or kind not in HYPER_TYPES:
        what = f"is {show(kind)}" if "type" in decl else "is missing"
        ck.add(f"{place}.type", f"{what}; set type = one of {', '.join(map(repr, HYPER_TYPES))}")
        return None
    if old is not None and kind != old.type:
        ck.add(f"{place}.type", f"a built-in hyperparameter keeps its type; drop it or write {old.type!r}")
        return None
    bounds: dict[str, float | None] = {"min": old.min if old else None, "max": old.max if old else None}
    for key in ("min", "max"):
        if key not in decl:
            continue
        value, inherited = decl[key], bounds[key]
        if kind not in ("int", "float"):
            ck.add(f"{place}.{key}", f"only int and float hyperparameters take {key}; drop it")
        elif not is_number(value):
            ck.add(f"{place}.{key}", f"must be a number, not {show(value)}")
        elif inherited is not None and (value < inherited if key == "min" else value > inherited):
            side = "at least" if key == "min" else "at most"
            ck.add(f"{place}.{key}", f"can only narrow the built-in's bounds; use a {key} {side} {fmt(inherited)}")
        else:
            bounds[key] = value
    if bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
        ck.add(place, f"min {fmt(bounds['min'])} is above max {fmt(bounds['max'])}; swap them")
        return None
    # choices must themselves fit the type, the bounds and any choices of the built-in
    outer = HyperParam(name, kind, None, bounds["min"], bounds["max"], old.choices if old else ())
    choices: list[HyperValue] = list(outer.choices)
    if "choices" in decl:
        listed = decl["choices"]
        if not isinstance(listed, list) or not listed:
            ck.add(f"{place}.choices", f"must be a non-empty list of allowed values, not {show(listed)}")
        else:
            choices = []
            for i, value in enumerate(listed):
                choice, err = check_value(outer, value)
                if err or choice is None:
                    ck.add(f"{place}.choices[{i}]", f"{err}")
                else:
                    choices.append(choice)
    param = dataclasses.replace(outer, choices=tuple(choices))
    if "default" in decl:
        default, err = check_value(param, decl["default"])
        if err:
            ck.add(f"{place}.default", err)
        param = dataclasses.replace(param, default=default)
    elif old is not None:
        default, err = check_value(param, old.default)
        if err:
            ck.add(place, f"the built-in default {show(old.default)} no longer fits ({err}); set a default here too")
        param = dataclasses.replace(param, default=default)
    return param if len(ck.problems) == before else None


def read_hosts(ck: Checker, entries: list[tuple[int, TomlTable]]) -> dict[str, HostPolicy]:
    """The [[hosts]] policies by host id; ids must be unique and usable as topic levels."""
    out: dict[str, HostPolicy] = {}
    seen: dict[str, str] = {}
    for i, entry in entries:
        place = f"hosts[{i}]"
        ck.keys(entry, [*_HOST_KINDS, *OWNER_KEYS], place)
        got = ck.fields(entry, _HOST_KINDS, place)
        owner, owner_problems = policy_from_table(entry, place)
        for wrong in owner_problems:
            ck.add(wrong.place, wrong.message)
        host_id = got.text("id", None)
        if "id" not in entry:
            ck.add(place, "missing key 'id'; write the id its agent runs with, e.g. id = \"gpu-box\"")
        elif host_id is None:
            pass  # its type is already reported
        elif (problem := host_id_problem(host_id)) is not None:
            # the id is its agent's certificate CN and a topic level: one no certificate can carry never connects
            ck.add(f"{place}.id", f"{show(host_id)} cannot be a host id: it {problem}")
        elif host_id in seen:
            ck.add(f"{place}.id", f"host {host_id!r} is also declared at {seen[host_id]}; merge the two entries")
        else:
            seen[host_id] = place
            d = HostPolicy(host_id)
            out[host_id] = HostPolicy(
                id=host_id,
                allow_jobs=got.texts("allow_jobs", d.allow_jobs),
                deny_jobs=got.texts("deny_jobs", d.deny_jobs),
                slots=got.integer("slots", d.slots),
                labels=got.texts("labels", d.labels),
                owner=None if owner.is_empty else owner,
            )
    return out
