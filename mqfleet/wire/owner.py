"""The owner policy of one host: its keys, their checks, how the agent's own settings and the manifest's
defaults combine, and the availability a host advertises.

Where a policy comes from (docs/OPERATIONS.md, "Owner policies"): the agent's flags, then its `agent.toml`,
then the manifest's `[[hosts]]` entry for the host (sent to the agent by the coordinator), then the built-in
defaults; for each key the first that sets it wins, so the machine's owner has the last word. The agent
advertises the policy it ends with (`resolved()`) and its current `Availability`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, TypeVar

from mqfleet.errors import BadRequestError, Problem
from mqfleet.owner.hours import Hours, HoursError, cached_hours, describe_time, parse_hours, zone_named
from mqfleet.wire.codec import OMIT_DEFAULT, Bounds, WireMessage

#: What an agent does with its running jobs when it yields (owner busy, hours over, a pause without --now).
ON_YIELD = ("checkpoint", "finish", "kill")
DEFAULT_ON_YIELD = "checkpoint"
#: Trainers' CPU niceness and I/O priority unless the policy says otherwise: gentle by default.
DEFAULT_NICE = 10
DEFAULT_IONICE = "best-effort:7"
#: `when_busy`: how long the owner's use must last before the agent yields, and the calm before it takes work again.
DEFAULT_BUSY_S = 30.0
DEFAULT_CALM_S = 300.0
#: The keys a policy table may hold (manifest `[[hosts]]` entries, `agent.toml`), and those of `when_busy`.
OWNER_KEYS = ("hours", "timezone", "when_busy", "on_yield", "nice", "ionice", "max_memory_gib")
WHEN_BUSY_KEYS = ("cpu_percent", "gpu_percent", "busy_s", "calm_s", "users")
#: Bounds of the numbers a policy may hold; an advert's are checked against them too.
MAX_MEMORY_GIB = 1_000_000.0
MAX_WAIT_S = 86_400.0
MAX_USERS = 32
_IONICE_CLASSES = ("best-effort", "idle", "none")

_P = TypeVar("_P", "OwnerPolicy", "WhenBusy")
#: The bounds of a policy's values on the wire (an advert, the coordinator's defaults); their meaning is
#: checked by `problems()`.
Name = Annotated[str, Bounds(max_chars=64)]
Windows = Annotated[list[Name], Bounds(max_items=32)]
Users = Annotated[list[Name], Bounds(max_items=MAX_USERS)]
Share = Annotated[float, Bounds(min=0, max=100)]
Seconds = Annotated[float, Bounds(min=0, max=MAX_WAIT_S)]


@dataclasses.dataclass(frozen=True)
class WhenBusy(WireMessage):
    """Yield while processes outside the fleet use more than `cpu_percent` of the machine's CPU (or
    `gpu_percent` of a GPU) for `busy_s`; take work again after `calm_s` below it."""

    cpu_percent: Share | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    gpu_percent: Share | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    busy_s: Seconds | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    calm_s: Seconds | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    #: count only these users' processes (the owner's); None: every process outside the fleet
    users: Users | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)

    def over(self, defaults: WhenBusy | None) -> WhenBusy:
        return _over(self, defaults)


@dataclasses.dataclass(frozen=True)
class OwnerPolicy(WireMessage):
    """A host's owner policy; a key left None is unset (a lower source, or the built-in default, decides)."""

    #: windows in the host's local time when the fleet may use it (mqfleet.owner.hours); None: always
    hours: Windows | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    #: the IANA zone `hours` are read in; None: the host's own
    timezone: Name | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    when_busy: WhenBusy | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    on_yield: Name | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    nice: int | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    #: `best-effort:N` (0-7), `idle` or `none` (leave the I/O priority as it is)
    ionice: Name | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)
    #: the most memory one trainer (its whole process tree) may use on this host
    max_memory_gib: float | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)

    def over(self, defaults: OwnerPolicy | None) -> OwnerPolicy:
        """This policy with each key it leaves unset taken from `defaults` (`when_busy` key by key)."""
        return _over(self, defaults)

    @classmethod
    def from_wire(cls, data: object, where: str = "") -> OwnerPolicy:
        """A policy from the bus (an advert's, the coordinator's defaults): its fields' types and bounds checked by
        the codec, then what they mean (`problems()`: window syntax, ranges; a zone is the sender's business:
        its hours were judged there); BadRequestError naming the first field that is wrong."""
        policy = super().from_wire(data, where)
        problems = policy.problems(where, check_zone=False)
        if problems:
            raise BadRequestError(f"field '{problems[0].place}': {problems[0].message}"[:300])
        return policy

    @property
    def is_empty(self) -> bool:
        return self == OwnerPolicy()

    def resolved(self, local_zone: str) -> OwnerPolicy:
        """The policy in force: the built-in defaults where it sets nothing, `local_zone` as the time zone."""
        busy = self.when_busy
        if busy is not None and (busy.cpu_percent is not None or busy.gpu_percent is not None):
            busy = WhenBusy(cpu_percent=busy.cpu_percent, gpu_percent=busy.gpu_percent,
                            busy_s=_or(busy.busy_s, DEFAULT_BUSY_S), calm_s=_or(busy.calm_s, DEFAULT_CALM_S),
                            users=busy.users)
        else:
            busy = None
        return dataclasses.replace(
            self, timezone=self.timezone or local_zone, when_busy=busy, on_yield=self.on_yield or DEFAULT_ON_YIELD,
            nice=DEFAULT_NICE if self.nice is None else self.nice, ionice=self.ionice or DEFAULT_IONICE)

    @cached_property
    def parsed_hours(self) -> Hours | None:
        """The windows parsed (checked by `problems()` first); None for no `hours` (always)."""
        return cached_hours(tuple(self.hours)) if self.hours is not None else None

    def problems(self, place: str = "", *, check_zone: bool = True) -> list[Problem]:
        """What is wrong with the values, each at its place (`hosts[2].hours[1]`) with the fix. `check_zone`:
        whether `timezone` must be a zone this machine knows (not for a policy another machine resolved)."""
        at = (lambda key: f"{place}.{key}") if place else (lambda key: key)
        out: list[Problem] = []
        if self.hours is not None:
            try:
                parse_hours(self.hours, at("hours"))
            except HoursError as e:
                out.append(Problem(e.place, e.message))
        if self.timezone is not None:
            try:
                if len(self.timezone) > 64:
                    raise ValueError("a time zone name has at most 64 characters")
                if check_zone:
                    zone_named(self.timezone)
            except ValueError as e:
                out.append(Problem(at("timezone"), str(e)))
        if self.on_yield is not None and self.on_yield not in ON_YIELD:
            out.append(Problem(at("on_yield"), f"{self.on_yield!r} is not one of {', '.join(ON_YIELD)}"))
        if self.nice is not None and not 0 <= self.nice <= 19:
            out.append(Problem(at("nice"), f"{self.nice} is out of range; use 0 (normal) to 19 (lowest): a trainer "
                                           "never gets more CPU priority than the owner's programs"))
        if self.ionice is not None:
            try:
                ionice_of(self.ionice)
            except ValueError as e:
                out.append(Problem(at("ionice"), str(e)))
        if self.max_memory_gib is not None and not 0 < self.max_memory_gib <= MAX_MEMORY_GIB:
            out.append(Problem(at("max_memory_gib"), f"must be a number of GiB above 0, not {self.max_memory_gib:g}"))
        if self.when_busy is not None:
            out += _when_busy_problems(self.when_busy, at("when_busy"))
        return out

    def never_allows_work(self) -> str | None:
        """Why a host with this policy would never take work, or None: warned at the agent's start."""
        if self.hours is not None and not self.hours:
            return "hours = [] lists no window, so this host never takes work"
        busy = self.when_busy
        if busy is not None and busy.cpu_percent is not None and busy.cpu_percent <= 0:
            return "when_busy.cpu_percent = 0: any process outside the fleet makes this host yield, so it hardly ever works"
        return None


def _when_busy_problems(busy: WhenBusy, place: str) -> list[Problem]:
    out: list[Problem] = []
    for key in ("cpu_percent", "gpu_percent"):
        value = getattr(busy, key)
        if value is not None and not 0 <= value <= 100:
            out.append(Problem(f"{place}.{key}", f"must be a share in percent, 0 to 100, not {value:g}"))
    for key in ("busy_s", "calm_s"):
        value = getattr(busy, key)
        if value is not None and not 0 <= value <= MAX_WAIT_S:
            out.append(Problem(f"{place}.{key}", f"must be seconds from 0 to {MAX_WAIT_S:g}, not {value:g}"))
    if busy.users is not None and (len(busy.users) > MAX_USERS or any(not u or len(u) > 64 for u in busy.users)):
        out.append(Problem(f"{place}.users", f"at most {MAX_USERS} user names of 1-64 characters"))
    if busy.cpu_percent is None and busy.gpu_percent is None:
        out.append(Problem(place, "sets neither cpu_percent nor gpu_percent; set one (e.g. cpu_percent = 50)"))
    return out


def ionice_of(text: str) -> tuple[str, int | None]:
    """(`best-effort`, level) / (`idle`, None) / (`none`, None) of an `ionice` value; ValueError with the fix."""
    cls, _, level = text.partition(":")
    if cls == "best-effort" and level.isdigit() and 0 <= int(level) <= 7:
        return cls, int(level)
    if cls in ("idle", "none") and not level:
        return cls, None
    raise ValueError(f"{text!r} is not an I/O priority; write \"best-effort:7\" (0 highest - 7 lowest), \"idle\" or \"none\"")


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _over(mine: _P, defaults: _P | None) -> _P:
    if defaults is None:
        return mine
    values: dict[str, Any] = {}
    for f in dataclasses.fields(mine):
        ours, theirs = getattr(mine, f.name), getattr(defaults, f.name)
        values[f.name] = ours.over(theirs) if isinstance(ours, WhenBusy) else (theirs if ours is None else ours)
    return type(mine)(**values)


# --- reading a policy from TOML (manifest [[hosts]], agent.toml) --------------------------------------------


def policy_from_table(table: Mapping[str, object], place: str = "") -> tuple[OwnerPolicy, list[Problem]]:
    """The policy keys of a TOML table (others are the caller's to check), and every problem with them."""
    at = (lambda key: f"{place}.{key}") if place else (lambda key: key)
    problems: list[Problem] = []
    values: dict[str, object] = {}
    kinds = {"hours": "strs", "timezone": "str", "on_yield": "str", "nice": "int", "ionice": "str",
             "max_memory_gib": "number"}
    for key, kind in kinds.items():
        if key in table:
            value, wrong = _typed(kind, table[key])
            if wrong:
                problems.append(Problem(at(key), wrong))
            else:
                values[key] = value
    busy = table.get("when_busy")
    if busy is not None:
        if not isinstance(busy, Mapping):
            problems.append(Problem(at("when_busy"), "must be a table, e.g. when_busy = { cpu_percent = 50 }"))
        else:
            busy_values: dict[str, object] = {}
            for key in busy:
                if key not in WHEN_BUSY_KEYS:
                    problems.append(Problem(f"{at('when_busy')}.{key}", f"unknown key (allowed: {', '.join(WHEN_BUSY_KEYS)})"))
            for key in WHEN_BUSY_KEYS:
                if key in busy:
                    value, wrong = _typed("strs" if key == "users" else "number", busy[key])
                    if wrong:
                        problems.append(Problem(f"{at('when_busy')}.{key}", wrong))
                    else:
                        busy_values[key] = value
            values["when_busy"] = WhenBusy(**busy_values)  # type: ignore[arg-type]
    policy = OwnerPolicy(**values)  # type: ignore[arg-type]
    return policy, problems + policy.problems(place)


def _typed(kind: str, value: object) -> tuple[object, str]:
    """(value, '') in its kind's type, or (None, what is wrong)."""
    if kind == "str" and isinstance(value, str):
        return value, ""
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value, ""
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value), ""
    if kind == "strs" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value), ""
    words = {"str": "a string", "int": "an integer", "number": "a number", "strs": 'a list of strings (["a", "b"])'}
    return None, f"must be {words[kind]}, not {type(value).__name__}"


# --- what a host advertises ----------------------------------------------------------------------------------

AVAILABLE = "available"
OUTSIDE_HOURS = "outside_hours"
YIELDING = "yielding"
PAUSED = "paused"
#: The states an agent advertises; a newer agent's other state reads as not available.
STATES = (AVAILABLE, OUTSIDE_HOURS, YIELDING, PAUSED)


@dataclasses.dataclass(frozen=True)
class Availability(WireMessage):
    """Whether a host takes work now (`state`), why not in words (`outside hours until 22:00 (Europe/Berlin)`),
    and until when if that is known."""

    state: Annotated[str, Bounds(max_chars=32)] = AVAILABLE
    reason: Annotated[str, Bounds(max_chars=200)] = ""
    until_ts: Annotated[float, Bounds(min=0)] | None = dataclasses.field(default=None, metadata=OMIT_DEFAULT)

    @property
    def is_available(self) -> bool:
        return self.state == AVAILABLE

    def shown(self) -> str:
        """`available`, or the reason it takes no work."""
        return self.reason or self.state


def hours_availability(policy: OwnerPolicy, now: float) -> Availability:
    """Availability by `hours` alone, on the wall clock of the policy's time zone (UTC when it names none)."""
    hours = policy.parsed_hours
    if hours is None:
        return Availability()
    zone_name = policy.timezone or "UTC"
    zone = zone_named(zone_name)
    if hours.is_open(now, zone):
        return Availability()
    if hours.never:
        return Availability(OUTSIDE_HOURS, "outside hours: its hours list no window")
    opens = hours.next_change(now, zone)
    until = f" until {describe_time(opens, zone, now)}" if opens is not None else ""
    return Availability(OUTSIDE_HOURS, f"outside hours{until} ({zone_name})", opens)
