"""The conversion of typed wire messages to and from JSON: `WireMessage`, its `to_wire()` and `from_wire()`,
and the one way the wire's fields are checked.

A message is a frozen dataclass whose fields' annotations say what the JSON must hold; `from_wire`
checks each known field by its annotation (table-driven, a plan cached per class) and raises
BadRequestError naming the first field that is missing, mistyped or out of bounds, and ignores fields it
does not know, so a newer sender (more fields) still talks to an older reader. The messages themselves
live in wire/requests.py, wire/replies.py, wire/published.py and wire/advert.py.

Bounds beyond the type ride on the annotation, at any depth: `Annotated[int, Bounds(min=1)]`,
`Annotated[list[Text], Bounds(max_items=64)]` (docs/SECURITY.md lists them). Sizes are checked before
contents are read. A `lenient` bound makes a value that fails its check drop out instead of failing the
message: a list item (or the items past `max_items`) is left out, a field takes its default; it is for what
is only a report (usage, progress reports), never for what a request is about.

Free-form JSON (hyperparameters, progress, a trainer's metrics, a job's spec) is annotated
`protocol.JsonObject` or `protocol.JsonValue`: `from_wire` checks only that such a field is an object
(or any JSON value), as json.loads built it; its readers narrow each value with isinstance. An Enum
field goes out as its value and reads back as its member; a tuple is a JSON list; a field marked OMIT_DEFAULT
is left out of the JSON while it holds its default (for fields that were only ever sent when set), one marked with
`wire_name` goes under that name, and a field marked with `ExtraFields` keeps the JSON's unknown fields.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from enum import Enum
from typing import Annotated, Any, ClassVar, NamedTuple, TypeVar, Union

from mqfleet.errors import BadRequestError

M = TypeVar("M", bound="WireMessage")
#: Longest string field, but for those marked `long_text` (output tails, error texts).
MAX_FIELD_CHARS = 4096
#: Field metadata of a string that may be long: a trainer's output tail or an error text.
LONG_TEXT = {"long_text": True}
#: Field metadata of a field left out of the JSON while it holds its default (it was only ever sent when set).
OMIT_DEFAULT = {"omit_default": True}

#: A JSON object as decoded from the bus or about to be encoded; the one place it is untyped.
Wire = dict[str, Any]  # boundary: json.loads output and json.dumps input; from_wire checks it field by field
#: An unknown field kept for a newer sender (ExtraFields): a scalar only.
Extra = str | int | float | bool | None


def wire_name(name: str) -> dict[str, str]:
    """Field metadata of a field whose JSON name is not its Python name (`from`, a keyword)."""
    return {"wire_name": name}


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What a value must keep beyond its type, attached to its annotation: `Annotated[int, Bounds(min=1)]`."""

    #: a number's least and greatest value
    min: float | None = None
    max: float | None = None
    #: a string's, a list's and an object's greatest length
    max_chars: int | None = None
    max_items: int | None = None
    max_keys: int | None = None
    #: the only members an Enum value may take
    one_of: frozenset[Enum] | None = None
    #: a value that fails its check drops out (a list item, the items past max_items, a field's value), never fails
    lenient: bool = False

    def cut(self, value: object, place: str) -> object:
        """The value as sent, its size checked before its contents are read (a lenient list cut to max_items)."""
        if self.max_items is not None and isinstance(value, list) and len(value) > self.max_items:
            if self.lenient:
                return value[: self.max_items]
            raise BadRequestError(f"field '{place}' has {len(value)} items, at most {self.max_items}")
        if self.max_keys is not None and isinstance(value, dict) and len(value) > self.max_keys:
            raise BadRequestError(f"field '{place}' has too many keys ({len(value)}, at most {self.max_keys})")
        if self.max_chars is not None and isinstance(value, str) and len(value) > self.max_chars:
            raise BadRequestError(f"field '{place}' is too long ({len(value)} characters, at most {self.max_chars})")
        if self.one_of is not None and (not isinstance(value, str) or value not in {m.value for m in self.one_of}):
            allowed = ", ".join(sorted(str(m.value) for m in self.one_of))
            raise BadRequestError(f"field '{place}' must be one of {allowed}, not {value!r}"[:300])
        return value

    def keep(self, value: object, place: str) -> object:
        """The checked value, within min and max."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.min is not None and value < self.min:
                raise BadRequestError(f"field '{place}' must be at least {self.min:g}, not {value}")
            if self.max is not None and value > self.max:
                raise BadRequestError(f"field '{place}' must be at most {self.max:g}, not {value}")
        return value


#: The bound of a report that is history, not the request's business: a bad one drops out.
LENIENT = Bounds(lenient=True)
_NO_BOUNDS = Bounds()


@dataclasses.dataclass(frozen=True)
class ExtraFields:
    """Field metadata (`{"extra": ExtraFields(...)}`) of a `dict[str, Extra]` field that keeps the JSON's
    unknown fields, so a newer sender can add some: at most `max_fields`, their names at most
    `max_name_chars`, scalars or strings of at most `max_chars`; the others are dropped, never refused.
    to_wire puts them back beside the known fields."""

    max_fields: int
    max_name_chars: int
    max_chars: int

    def kept(self, data: Wire, known: frozenset[str]) -> dict[str, Extra]:
        extra: dict[str, Extra] = {}
        for name, value in data.items():
            if name in known:
                continue
            if len(extra) >= self.max_fields or len(name) > self.max_name_chars:
                continue  # a newer sender's extras are a courtesy, not a right
            scalar = value is None or isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value))
            if scalar or (isinstance(value, str) and len(value) <= self.max_chars):
                extra[name] = value
        return extra


class FreeJson:
    """What `JsonValue` means in a message's annotation: any JSON value, taken as it is (never instantiated)."""


#: How a message's annotations are read: the free-form JSON aliases become markers `_check` knows, since
#: the recursive alias itself cannot be told apart from other unions once typing has evaluated it.
_FREE_FORM_NAMES: dict[str, object] = {"JsonValue": FreeJson, "JsonObject": dict[str, FreeJson]}


class WireMessage:
    """Base of the wire dataclasses: conversion by the fields' annotations."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_wire(self) -> Wire:
        """The JSON object for the bus; nested messages become objects, tuples lists, enums their values, None
        stays null (but OMIT_DEFAULT fields are left out while they hold their default).

        Only the fields whose annotation may hold a message, an enum or a tuple are walked; the others (scalars,
        free-form JSON, lists of those) are the object's own values, not copies: the JSON is for encoding, not to
        be changed.
        """
        wire: Wire = {}
        extra: dict[str, Extra] = {}
        for f in _plan(type(self)).fields:
            value = getattr(self, f.name)
            if f.extra is not None:
                extra = value
            elif not f.omit_default or value != f.default:
                wire[f.key] = _to_wire(value) if f.walk else value
        return {**extra, **wire} if extra else wire

    @classmethod
    def from_wire(cls: type[M], data: object, where: str = "") -> M:
        """A message from decoded JSON; BadRequestError names the first field that is missing, mistyped or out
        of bounds."""
        if not isinstance(data, dict):
            raise BadRequestError(f"{_place(where, '') or cls.__name__} must be a JSON object, not {_kind(data)}")
        plan = _plan(cls)
        values: dict[str, object] = {}  # the checked values by field name (typed Python values now, not JSON)
        for f in plan.fields:
            if f.extra is not None:
                values[f.name] = f.extra.kept(data, plan.keys)
                continue
            place = _place(where, f.key)
            raw = data.get(f.key)
            if raw is None and (f.key not in data or not f.required):
                # null where a default exists means "not given", as the hand-written checks always read it
                if f.required:
                    raise BadRequestError(f"field '{place}' is missing")
                continue
            try:
                value = _check(f.hint, raw, place)
            except _Dropped:
                continue  # a lenient value that failed its check: the field keeps its default
            if isinstance(value, str) and len(value) > MAX_FIELD_CHARS and not f.long_text:
                raise BadRequestError(f"field '{place}' is too long ({len(value)} characters)")
            values[f.name] = value
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class NoFields(WireMessage):
    """The request of a verb that takes no fields besides the envelope's (`claim`, `workers`, `health`,
    `artifacts`, `manifest`)."""



class _Dropped(Exception):  # noqa: N818 -- a signal, not an error: a lenient value drops out
    """A value under a lenient bound failed its check: its list leaves it out, its field keeps its default."""


def _place(where: str, name: str) -> str:
    return f"{where}.{name}" if where and name else where or name


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


#: The evaluated annotation of each field, per message class: a class, a union or a generic alias.
_HINTS: dict[type, dict[str, object]] = {}


class _Field(NamedTuple):
    """How one field is read and written."""

    name: str  # the attribute
    key: str  # its name in the JSON
    hint: object  # its evaluated annotation
    required: bool
    long_text: bool
    omit_default: bool
    default: object  # the field's default (MISSING when it has none or a factory)
    #: whether to_wire converts its value: its annotation may hold a message, an enum or a tuple. A 2,000-row
    #: jobs page (free-form JSON rows) is passed on, not copied.
    walk: bool
    extra: ExtraFields | None


class _Plan(NamedTuple):
    fields: tuple[_Field, ...]
    keys: frozenset[str]  # the JSON names of the fields: the others are unknown


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type[WireMessage]) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        hints = _hints(cls)
        fields = tuple(
            _Field(f.name, f.metadata.get("wire_name", f.name), hints[f.name],
                   f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                   bool(f.metadata.get("long_text")), bool(f.metadata.get("omit_default")), f.default, _needs_walk(hints[f.name]),
                   f.metadata.get("extra"))
            for f in dataclasses.fields(cls)
        )
        plan = _PLANS[cls] = _Plan(fields, frozenset(f.key for f in fields))
    return plan


def _needs_walk(tp: object) -> bool:
    """Whether a value of annotation `tp` may hold a message, an enum or a tuple (Any and object may hold anything)."""
    if tp is Any or tp is object or typing.get_origin(tp) is tuple:
        return True
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return issubclass(tp, (WireMessage, Enum))
    return any(_needs_walk(arg) for arg in typing.get_args(tp))


def _hints(cls: type) -> dict[str, object]:
    hints = _HINTS.get(cls)
    if hints is None:
        # The message's module globals, but the free-form aliases read as their markers.
        hints = _HINTS[cls] = typing.get_type_hints(cls, localns=_FREE_FORM_NAMES, include_extras=True)
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


def _items(item: object, value: list[Any], place: str) -> list[Any]:
    """A list's items checked as `item`; those a lenient bound drops are left out."""
    out = []
    for i, v in enumerate(value):
        try:
            out.append(_check(item, v, f"{place}[{i}]"))
        except _Dropped:
            continue
    return out


def _check(tp: object, value: object, place: str) -> Any:
    """`value` as type `tp`, or BadRequestError naming `place` (_Dropped under a lenient bound)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is FreeJson:
        return value  # free-form JSON: json.loads made it, its reader narrows it
    if origin is Annotated:
        inner, *extras = typing.get_args(tp)
        bounds = next((e for e in extras if isinstance(e, Bounds)), _NO_BOUNDS)
        try:
            return bounds.keep(_check(inner, bounds.cut(value, place), place), place)
        except BadRequestError:
            if bounds.lenient:
                raise _Dropped from None
            raise
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
        return _items(item, value, place)
    if origin is tuple:
        if not isinstance(value, list):
            raise BadRequestError(f"field '{place}' must be a list, not {_kind(value)}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_items(args[0], value, place))
        if len(value) != len(args):
            raise BadRequestError(f"field '{place}' must be a list of {len(args)} items, not {len(value)}")
        return tuple(_check(arg, v, f"{place}[{i}]") for i, (arg, v) in enumerate(zip(args, value, strict=True)))
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
