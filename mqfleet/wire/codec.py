"""The conversion of typed wire messages to and from JSON: `WireMessage`, its `to_wire()` and `from_wire()`.

A message is a frozen dataclass whose fields' annotations say what the JSON must hold; `from_wire`
checks each known field by its annotation (table-driven, the hints cached per class) and raises
BadRequestError naming the first field that is missing or mistyped, and ignores fields it does not
know, so a newer sender (more fields) still talks to an older reader. The messages themselves live
in wire/requests.py (agent, checkpoint, query and operator verbs) and beside the code that owns them.

Free-form JSON (hyperparameters, progress, a trainer's metrics, a job's spec) is annotated
`protocol.JsonObject` or `protocol.JsonValue`: `from_wire` checks only that such a field is an object
(or any JSON value), as json.loads built it; its readers narrow each value with isinstance. An Enum
field goes out as its value and reads back as its member; a field marked OMIT_NULL is left out of the
JSON while it is None (for fields that were only ever sent when set).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from enum import Enum
from typing import Any, ClassVar, TypeVar, Union

from mqfleet.errors import BadRequestError

M = TypeVar("M", bound="WireMessage")
#: Longest string field, but for those marked `long_text` (output tails, error texts).
MAX_FIELD_CHARS = 4096
#: Field metadata of a string that may be long: a trainer's output tail or an error text.
LONG_TEXT = {"long_text": True}
#: Field metadata of an optional field left out of the JSON while it is None (it was only ever sent when set).
OMIT_NULL = {"omit_null": True}

#: A JSON object as decoded from the bus or about to be encoded; the one place it is untyped.
Wire = dict[str, Any]  # boundary: json.loads output and json.dumps input; from_wire checks it field by field


class FreeJson:
    """What `JsonValue` means in a message's annotation: any JSON value, taken as it is (never instantiated)."""


#: How a message's annotations are read: the free-form JSON aliases become markers `_check` knows, since
#: the recursive alias itself cannot be told apart from other unions once typing has evaluated it.
_FREE_FORM_NAMES: dict[str, object] = {"JsonValue": FreeJson, "JsonObject": dict[str, FreeJson]}


class WireMessage:
    """Base of the wire dataclasses: conversion by the fields' annotations."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_wire(self) -> Wire:
        """The JSON object for the bus; nested messages become objects, None stays null (but in OMIT_NULL fields).

        Only the fields whose annotation may hold a message or an enum are walked; the others (scalars, free-form
        JSON, lists of those) are the object's own values, not copies: the JSON is for encoding, not to be changed.
        """
        plan, omit_null = _wire_plan(type(self))
        if not omit_null:
            return {name: _to_wire(getattr(self, name)) if walk else getattr(self, name) for name, walk in plan}
        values = ((name, walk, getattr(self, name)) for name, walk in plan)
        return {name: _to_wire(value) if walk else value for name, walk, value in values
                if value is not None or name not in omit_null}

    @classmethod
    def from_wire(cls: type[M], data: object, where: str = "") -> M:
        """A message from decoded JSON; BadRequestError names the first field that is missing or mistyped."""
        if not isinstance(data, dict):
            raise BadRequestError(f"{_place(where, '') or cls.__name__} must be a JSON object, not {_kind(data)}")
        hints = _hints(cls)
        values: dict[str, object] = {}  # the checked values by field name (typed Python values now, not JSON)
        for f in dataclasses.fields(cls):
            place = _place(where, f.name)
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if f.name not in data or (data[f.name] is None and has_default):
                # null where a default exists means "not given", as the hand-written checks always read it
                if not has_default:
                    raise BadRequestError(f"field '{place}' is missing")
                continue
            value = _check(hints[f.name], data[f.name], place)
            if isinstance(value, str) and len(value) > MAX_FIELD_CHARS and not f.metadata.get("long_text"):
                raise BadRequestError(f"field '{place}' is too long ({len(value)} characters)")
            values[f.name] = value
        return cls(**values)


def _place(where: str, name: str) -> str:
    return f"{where}.{name}" if where and name else where or name


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


#: The evaluated annotation of each field, per message class: a class, a union or a generic alias.
_HINTS: dict[type, dict[str, object]] = {}


#: Each message class's field names in order, and those left out while None (OMIT_NULL).
_FIELDS: dict[type, tuple[tuple[str, ...], frozenset[str]]] = {}


def _fields_of(cls: type[WireMessage]) -> tuple[tuple[str, ...], frozenset[str]]:
    fields = _FIELDS.get(cls)
    if fields is None:
        every = dataclasses.fields(cls)
        fields = _FIELDS[cls] = (tuple(f.name for f in every),
                                 frozenset(f.name for f in every if f.metadata.get("omit_null")))
    return fields


#: Per message class, each field's name and whether to_wire must walk its value (its annotation may hold a
#: message or an enum), and its OMIT_NULL fields: a 2,000-row jobs page (free-form JSON rows) is passed on, not copied.
_WIRE_PLANS: dict[type, tuple[tuple[tuple[str, bool], ...], frozenset[str]]] = {}


def _wire_plan(cls: type[WireMessage]) -> tuple[tuple[tuple[str, bool], ...], frozenset[str]]:
    plan = _WIRE_PLANS.get(cls)
    if plan is None:
        names, omit_null = _fields_of(cls)
        hints = _hints(cls)
        plan = _WIRE_PLANS[cls] = (tuple((name, _needs_walk(hints[name])) for name in names), omit_null)
    return plan


def _needs_walk(tp: object) -> bool:
    """Whether a value of annotation `tp` may hold a message or an enum (Any and object may hold anything)."""
    if tp is Any or tp is object:
        return True
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return issubclass(tp, (WireMessage, Enum))
    return any(_needs_walk(arg) for arg in typing.get_args(tp))


def _hints(cls: type) -> dict[str, object]:
    hints = _HINTS.get(cls)
    if hints is None:
        # The message's module globals, but the free-form aliases read as their markers.
        hints = _HINTS[cls] = typing.get_type_hints(cls, localns=_FREE_FORM_NAMES)
    return hints


#: Values that are JSON as they are: most of a message, so they are told apart first.
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _to_wire(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, WireMessage):
        return value.to_wire()
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return value.value
    return value


def _is_free_object(tp: object) -> bool:
    """Whether `tp` is a JSON object with free-form values (JsonObject, dict[str, Any], dict)."""
    if tp is dict:
        return True
    if typing.get_origin(tp) is not dict:
        return False
    _, item = typing.get_args(tp) or (str, Any)
    return item is Any or item is FreeJson


def _check(tp: object, value: object, place: str) -> Any:
    """`value` as type `tp`, or BadRequestError naming `place`."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is FreeJson:
        return value  # free-form JSON: json.loads made it, its reader narrows it
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        present = [o for o in options if o is not type(None)]
        if len(present) == 1:  # `X | None` with a value: X's own error names the field that is wrong inside it
            return _check(present[0], value, place)
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(option, value, place)
            except BadRequestError:
                continue
        names = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
        raise BadRequestError(f"field '{place}' must be {names}, not {_kind(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise BadRequestError(f"field '{place}' must be a list, not {_kind(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        if _is_free_object(item):
            # a page of thousands of rows (`jobs`): one pass, not a checked call per row
            for i, v in enumerate(value):
                if not isinstance(v, dict):
                    raise BadRequestError(f"field '{place}[{i}]' must be an object, not {_kind(v)}")
            return value
        return [_check(item, v, f"{place}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise BadRequestError(f"field '{place}' must be an object, not {_kind(value)}")
        if _is_free_object(tp):
            return value  # a JSON object's keys are strings; its free-form values are its reader's to narrow
        _, item = typing.get_args(tp)
        return {k: _check(item, v, f"{place}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, WireMessage):
        return tp.from_wire(value, place)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            names = "/".join(str(m.value) for m in tp)
            raise BadRequestError(f"field '{place}' must be one of {names}, not {value!r}"[:300]) from None
    if tp is bool:
        if not isinstance(value, bool):
            raise BadRequestError(f"field '{place}' must be true or false, not {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequestError(f"field '{place}' must be an integer, not {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadRequestError(f"field '{place}' must be a finite number, not {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise BadRequestError(f"field '{place}' must be a string, not {_kind(value)}")
        return value
    raise TypeError(f"no wire check for {tp!r} ({place})")  # a programming error, not bad input
