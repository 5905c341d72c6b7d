"""Checks the tables of a parsed manifest that declare things: [fleet], [trainers.*] and [[hosts]].

Every check adds to a `Checker` instead of raising, so one run reports every problem, each at its
dotted place with what to write instead. The jobs and sweeps are checked in `manifest_jobs`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from mqfleet.errors import Problem
from mqfleet.spec import FleetSettings, HostPolicy, HyperParam, TrainerSpec
from mqfleet.trainers import BUILTIN_HYPER, BUILTIN_OUTPUTS

HYPER_TYPES = ("int", "float", "str", "bool")
TOP_KEYS = ("fleet", "trainers", "hosts", "jobs", "sweeps")
_FLEET_KINDS = {
    "max_attempts": "int>=1",
    "lease_s": "number>0",
    "grace_s": "number>0",
    "commit": "str",
    "timeout_s": "number>0",
    "stall_s": "number>0",
    "retry_backoff_s": "number>=0",
    "quarantine_after": "int>=1",
    "cancel_unsatisfiable": "bool",
    "log_max_lines": "int>=1",
    "keep_days": "number>0",
    "checkpoint_interval_s": "number>0",
    "checkpoint_max_mib": "number>0",
}
_TRAINER_KEYS = ("builtin", "command", "hyper", "outputs", "resumable")
_DECL_KEYS = ("type", "default", "min", "max", "choices")
_HOST_KINDS = {"id": "str", "allow_jobs": "strs", "deny_jobs": "strs", "slots": "int>=1", "labels": "strs"}
#: What to write instead, for keys whose fix is not obvious from "must be ..." alone.
FIX_HINTS = {
    "timeout_s": " (seconds; leave it out for no time limit)",
    "stall_s": " (seconds without an output line or progress report; leave it out for no limit)",
    "retry_backoff_s": " (seconds; 0 retries at once)",
    "quarantine_after": " (failed attempts in a row; leave it out to never quarantine)",
}
_KIND_WORDS = {
    "str": "a string",
    "int": "an integer",
    "number": "a number",
    "bool": "true or false",
    "strs": 'a list of strings (["a", "b"])',
    "table": "a table",
}
# a kind with an optional lower bound: `int`, `int>=1`, `number>0`
_KIND = re.compile(r"(\w+)(?:(>=?)(\d+))?")
# Host ids are MQTT topic levels and certificate CNs: no separators, wildcards or blanks.
_HOST_ID = re.compile(r"[^/+#\s]{1,128}")


class Checker:
    """Collects problems instead of raising, so one run reports all of them."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self._seen: set[Problem] = set()

    def add(self, place: str, message: str) -> None:
        # the jobs of one sweep share their entry, so they would report its problems once each
        problem = Problem(place, message)
        if problem not in self._seen:
            self._seen.add(problem)
            self.problems.append(problem)

    def keys(self, table: Mapping[str, Any], allowed: Iterable[str], place: str) -> None:
        allowed = list(allowed)
        for key in table:
            if key not in allowed:
                hint = did_you_mean(key, allowed) or f" (allowed here: {', '.join(allowed)})"
                self.add(_join(place, key), f"unknown key{hint}")

    def fields(self, table: Mapping[str, Any], kinds: Mapping[str, str], place: str) -> dict[str, Any]:
        """The checked values of `kinds` present in `table`."""
        out: dict[str, Any] = {}
        for key, kind in kinds.items():
            if key in table:
                value, err = coerce(kind, table[key])
                if err:
                    self.add(_join(place, key), err + FIX_HINTS.get(key, ""))
                else:
                    out[key] = value
        return out

    def table(self, data: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if isinstance(value, dict):
            return value
        self.add(key, f"must be a table, written [{key}], not {show(value)}")
        return {}

    def array(self, data: Mapping[str, Any], key: str) -> list[tuple[int, dict[str, Any]]]:
        """(index, entry) of an array of tables; indices are those of the file, entries that are not tables dropped."""
        value = data.get(key, [])
        if not isinstance(value, list):
            self.add(key, f"must be an array of tables, each entry written [[{key}]], not {show(value)}")
            return []
        out = []
        for i, entry in enumerate(value):
            if isinstance(entry, dict):
                out.append((i, entry))
            else:
                self.add(f"{key}[{i}]", f"must be a table, written [[{key}]], not {show(entry)}")
        return out


def _join(place: str, key: str) -> str:
    return f"{place}.{key}" if place else key


def did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def show(value: Any) -> str:
    """A value as the operator wrote it in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"a list {value!r}" if len(repr(value)) < 40 else "a list"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"{type(value).__name__} {value}"


def fmt(value: Any) -> str:
    """A value for a generated job name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def coerce(kind: str, value: Any) -> tuple[Any, str | None]:
    """(value in its kind, None), or (None, what is wrong). Kinds: str, int, number, bool, strs, table,
    with an optional lower bound such as `int>=1` or `number>0`."""
    match = _KIND.fullmatch(kind)
    assert match is not None, kind
    base, op, bound = match.groups()
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "table": isinstance(value, dict),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": is_number(value),
        "strs": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[base]
    if not ok:
        return None, f"must be {_KIND_WORDS[base]}, not {show(value)}"
    if base == "number":
        value = float(value)
    elif base == "strs":
        value = tuple(value)
    if op == ">=" and value < int(bound):
        return None, f"must be at least {bound}, not {show(value)}"
    if op == ">" and value <= int(bound):
        return None, f"must be greater than {bound}, not {show(value)}"
    return value, None


def check_value(param: HyperParam, value: Any) -> tuple[Any, str | None]:
    """(value converted to the declared type, None), or (None, what is wrong and what would do)."""
    kind = param.type
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        return None, f"must be an integer (declared int), not {show(value)}"
    if kind == "float":
        if not is_number(value):
            return None, f"must be a finite number (declared float), not {show(value)}"
        value = float(value)
    if kind == "str" and not isinstance(value, str):
        return None, f"must be a string (declared str), not {show(value)}"
    if kind == "bool" and not isinstance(value, bool):
        return None, f"must be true or false (declared bool), not {show(value)}"
    low, high = param.min, param.max
    if (low is not None and value < low) or (high is not None and value > high):
        lo = fmt(low) if low is not None else "-inf"
        hi = fmt(high) if high is not None else "inf"
        return None, f"{show(value)} is out of bounds; use a value in [{lo}, {hi}]"
    if param.choices and value not in param.choices:
        return None, f"{show(value)} is not allowed; use one of: {', '.join(show(c) for c in param.choices)}"
    return value, None


def read_fleet(ck: Checker, data: Mapping[str, Any]) -> FleetSettings:
    """The [fleet] table, defaults filled in."""
    table = ck.table(data, "fleet")
    ck.keys(table, _FLEET_KINDS, "fleet")
    return FleetSettings(**ck.fields(table, _FLEET_KINDS, "fleet"))


def read_trainers(ck: Checker, table: dict[str, Any]) -> dict[str, TrainerSpec | None]:
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
        elif not (isinstance(command, list) and command and all(isinstance(a, str) and a for a in command)):
            ck.add(
                f"{place}.command",
                'must be a non-empty list of non-empty strings, like ["{python}", "-m", "my.trainer"]',
            )
        hyper_table = entry.get("hyper", {})
        if not isinstance(hyper_table, dict):
            ck.add(f"{place}.hyper", f"must be a table, written [{place}.hyper], not {show(hyper_table)}")
        elif not (builtin is not None and not base):  # an unknown built-in has nothing to narrow
            hyper = _read_declarations(ck, hyper_table, f"{place}.hyper", base, builtin)
            outputs = _read_outputs(ck, entry, place, builtin)
            resumable = entry.get("resumable", True)
            if not isinstance(resumable, bool):
                ck.add(f"{place}.resumable", f"must be true or false, not {show(resumable)}")
            if len(ck.problems) == before:
                out[name] = TrainerSpec(name, builtin, tuple(command or ()), hyper, outputs, resumable=resumable)
    return out


def _read_outputs(ck: Checker, entry: Mapping[str, Any], place: str, builtin: str | None) -> tuple[str, ...]:
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
        elif glob not in declared:
            declared.append(glob)
    return tuple(declared)


def output_glob_problem(glob: Any) -> str | None:
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
    ck: Checker, table: dict[str, Any], place: str, base: dict[str, HyperParam], builtin: str | None
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


def _declare(ck: Checker, decl: dict[str, Any], place: str, name: str, old: HyperParam | None) -> HyperParam | None:
    """One declaration; `old` is the built-in's, which it may only narrow (bounds, choices, default)."""
    before = len(ck.problems)
    kind = decl.get("type", old.type if old else None)
    if kind not in HYPER_TYPES:
        what = f"is {show(kind)}" if "type" in decl else "is missing"
        ck.add(f"{place}.type", f"{what}; set type = one of {', '.join(map(repr, HYPER_TYPES))}")
        return None
    if old is not None and kind != old.type:
        ck.add(f"{place}.type", f"a built-in hyperparameter keeps its type; drop it or write {old.type!r}")
        return None
    bounds: dict[str, Any] = {"min": old.min if old else None, "max": old.max if old else None}
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
    choices: list[Any] = list(outer.choices)
    if "choices" in decl:
        listed = decl["choices"]
        if not isinstance(listed, list) or not listed:
            ck.add(f"{place}.choices", f"must be a non-empty list of allowed values, not {show(listed)}")
        else:
            choices = []
            for i, value in enumerate(listed):
                value, err = check_value(outer, value)
                if err:
                    ck.add(f"{place}.choices[{i}]", err)
                else:
                    choices.append(value)
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


def read_hosts(ck: Checker, entries: list[tuple[int, dict[str, Any]]]) -> dict[str, HostPolicy]:
    """The [[hosts]] policies by host id; ids must be unique and usable as topic levels."""
    out: dict[str, HostPolicy] = {}
    seen: dict[str, str] = {}
    for i, entry in entries:
        place = f"hosts[{i}]"
        ck.keys(entry, _HOST_KINDS, place)
        got = ck.fields(entry, _HOST_KINDS, place)
        host_id = got.get("id")
        if "id" not in entry:
            ck.add(place, "missing key 'id'; write the id its agent runs with, e.g. id = \"gpu-box\"")
        elif host_id is None:
            pass  # its type is already reported
        elif not _HOST_ID.fullmatch(host_id):
            ck.add(
                f"{place}.id",
                f"{show(host_id)} cannot be a host id: it names MQTT topic levels, so no '/', '+', '#' or spaces",
            )
        elif host_id in seen:
            ck.add(f"{place}.id", f"host {host_id!r} is also declared at {seen[host_id]}; merge the two entries")
        else:
            seen[host_id] = place
            out[host_id] = HostPolicy(**got)
    return out
