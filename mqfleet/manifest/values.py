"""The `Checker` every manifest check reports to, and the checks of single TOML values by kind.

tomllib's output is typed `TomlValue` here, so every reader narrows a value with isinstance before
using it; a value that passes `coerce` comes back in its kind's type through `Checked`.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import TypeAlias, TypeGuard, TypeVar

from mqfleet.errors import Problem
from mqfleet.manifest.types import HyperValue

#: A value as tomllib returns it: every check narrows it with isinstance before using it.
TomlValue: TypeAlias = (
    bool | int | float | str | datetime.datetime | datetime.date | datetime.time | list["TomlValue"] | dict[str, "TomlValue"]
)
#: A TOML table: the whole file, [fleet], one [[jobs]] entry.
TomlTable: TypeAlias = dict[str, TomlValue]
#: A value that passed `coerce`, in its kind's type: numbers as float, lists of strings as tuples.
FieldValue: TypeAlias = bool | int | float | str | tuple[str, ...]
D = TypeVar("D")
#: What to write instead, for keys whose fix is not obvious from "must be ..." alone.
FIX_HINTS = {
    "timeout_s": " (seconds; leave it out for no time limit)",
    "stall_s": " (seconds without an output line or progress report; leave it out for no limit)",
    "retry_backoff_s": " (seconds; 0 retries at once)",
    "quarantine_after": " (failed attempts in a row; leave it out to never quarantine)",
    "max_memory_gib": " (GiB the trainer and its children may use; leave it out for no limit)",
}
_KIND_WORDS = {
    "str": "a string",
    "int": "an integer",
    "number": "a number",
    "bool": "true or false",
    "strs": 'a list of strings (["a", "b"])',
}
# a kind with an optional lower bound: `int`, `int>=1`, `number>0`
_KIND = re.compile(r"(\w+)(?:(>=?)(\d+))?")


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

    def keys(self, table: Mapping[str, TomlValue], allowed: Iterable[str], place: str) -> None:
        allowed = list(allowed)
        for key in table:
            if key not in allowed:
                hint = did_you_mean(key, allowed) or f" (allowed here: {', '.join(allowed)})"
                self.add(_join(place, key), f"unknown key{hint}")

    def fields(self, table: Mapping[str, TomlValue], kinds: Mapping[str, str], place: str) -> Checked:
        """The checked values of `kinds` present in `table`."""
        out = Checked()
        for key, kind in kinds.items():
            if key in table:
                value, err = coerce(kind, table[key])
                if err or value is None:
                    self.add(_join(place, key), f"{err}{FIX_HINTS.get(key, '')}")
                else:
                    out.values[key] = value
        return out

    def table(self, data: Mapping[str, TomlValue], key: str) -> TomlTable:
        value = data.get(key, {})
        if isinstance(value, dict):
            return value
        self.add(key, f"must be a table, written [{key}], not {show(value)}")
        return {}

    def array(self, data: Mapping[str, TomlValue], key: str) -> list[tuple[int, TomlTable]]:
        """(index, entry) of an array of tables; indices are those of the file, entries that are not tables dropped."""
        value = data.get(key, [])
        if not isinstance(value, list):
            self.add(key, f"must be an array of tables, each entry written [[{key}]], not {show(value)}")
            return []
        out: list[tuple[int, TomlTable]] = []
        for i, entry in enumerate(value):
            if isinstance(entry, dict):
                out.append((i, entry))
            else:
                self.add(f"{key}[{i}]", f"must be a table, written [[{key}]], not {show(entry)}")
        return out


class Checked:
    """The values of a table that passed their kind's check, read back in their types. A key that is
    absent, or whose value was refused (its problem already reported), reads as the caller's default."""

    def __init__(self) -> None:
        self.values: dict[str, FieldValue] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def text(self, key: str, default: D) -> str | D:
        value = self.values.get(key)
        return value if isinstance(value, str) else self._absent(key, default)

    def integer(self, key: str, default: D) -> int | D:
        value = self.values.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else self._absent(key, default)

    def number(self, key: str, default: D) -> float | D:
        value = self.values.get(key)
        return value if isinstance(value, float) else self._absent(key, default)

    def flag(self, key: str, default: D) -> bool | D:
        value = self.values.get(key)
        return value if isinstance(value, bool) else self._absent(key, default)

    def texts(self, key: str, default: D) -> tuple[str, ...] | D:
        value = self.values.get(key)
        return value if isinstance(value, tuple) else self._absent(key, default)

    def _absent(self, key: str, default: D) -> D:
        if key in self.values:  # read as another kind than its table checks it as: a bug here, not in the file
            raise TypeError(f"manifest key {key!r} holds {self.values[key]!r}, not the type it is read as")
        return default


def _join(place: str, key: str) -> str:
    return f"{place}.{key}" if place else key


def did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def show(value: TomlValue | None) -> str:
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


def fmt(value: HyperValue) -> str:
    """A value for a generated job name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def is_number(value: TomlValue | None) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def coerce(kind: str, value: TomlValue) -> tuple[FieldValue | None, str | None]:
    """(value in its kind, None), or (None, what is wrong). Kinds: str, int, number, bool, strs,
    with an optional lower bound (on int and number) such as `int>=1` or `number>0`."""
    match = _KIND.fullmatch(kind)
    assert match is not None, kind
    base, op, bound = match.groups()
    checked = _as_kind(base, value)
    if checked is None:
        return None, f"must be {_KIND_WORDS[base]}, not {show(value)}"
    if isinstance(checked, (int, float)):
        if op == ">=" and checked < int(bound):
            return None, f"must be at least {bound}, not {show(checked)}"
        if op == ">" and checked <= int(bound):
            return None, f"must be greater than {bound}, not {show(checked)}"
    return checked, None


def _as_kind(base: str, value: TomlValue) -> FieldValue | None:
    """`value` in the type of kind `base`, or None when it is not of that kind."""
    if base == "str":
        return value if isinstance(value, str) else None
    if base == "bool":
        return value if isinstance(value, bool) else None
    if base == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if base == "number":
        return float(value) if is_number(value) else None
    if base == "strs":
        if not isinstance(value, list):
            return None
        texts = tuple(v for v in value if isinstance(v, str))
        return texts if len(texts) == len(value) else None
    raise ValueError(f"no manifest kind {base!r}")
