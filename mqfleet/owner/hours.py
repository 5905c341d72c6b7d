"""A host owner's working hours: when the fleet may use the machine, in the host's local time. Pure, no I/O.

A window is one of (days are `mon` .. `sun`, or their full names; times are `HH:MM`, an end may be `24:00`):

- `22:00-07:00`: every day, from 22:00 to 07:00 the next morning (a window may cross midnight);
- `sat 00:00-sun 23:59`: one span of the week, from a day and time to a day and time (it may cross the
  week's end: `sun 22:00-mon 06:00`);
- `mon-fri 18:00-08:00` or `sat,sun 09:00-17:00`: a daily window on the days named, starting on each.

Windows are judged on the local wall clock of a named time zone (`zoneinfo`): a window from 22:00 opens
at 22:00 local time on either side of a daylight-saving change; a time the spring change skips opens the
window at the first local minute after it, and the hour the autumn change repeats is in the window both
times. Two daily windows (the first and third forms) may not overlap, nor may two spans, and no window may
lie wholly inside the others: each adds time of its own, so a mistake shows. A span may cover part of the
daily windows (`["22:00-07:00", "sat 00:00-sun 23:59"]`: nights, and the whole weekend).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DAY_MIN = 24 * 60
WEEK_MIN = 7 * DAY_MIN
#: Most windows one policy may list (an advert carries them).
MAX_WINDOWS = 32
#: Longest text of one window.
MAX_WINDOW_CHARS = 64
#: How far ahead `next_change` looks: a week and a day covers every window and a daylight-saving change.
_LOOKAHEAD_DAYS = 8

_TIME = r"(\d{1,2}):(\d{2})"
_DAILY = re.compile(rf"{_TIME}\s*-\s*{_TIME}")
_SPAN = re.compile(rf"([a-z]+)\s+{_TIME}\s*-\s*([a-z]+)\s+{_TIME}")
_ON_DAYS = re.compile(rf"([a-z]+(?:\s*[-,]\s*[a-z]+)*)\s+{_TIME}\s*-\s*{_TIME}")


class HoursError(ValueError):
    """Raised when a window cannot be read or overlaps another; `place` names it (`hours[1]`)."""

    def __init__(self, place: str, message: str) -> None:
        self.place = place
        self.message = message
        super().__init__(f"{place}: {message}")


@dataclass(frozen=True)
class Hours:
    """Parsed windows: minute-of-week segments [start, end) with 0 = Monday 00:00, none wrapping."""

    windows: tuple[str, ...]
    segments: tuple[tuple[int, int], ...]

    @property
    def never(self) -> bool:
        """True when no window is open at any time (an empty list)."""
        return not self.segments

    @property
    def always(self) -> bool:
        return self.segments == ((0, WEEK_MIN),)

    def is_open(self, ts: float, zone: dt.tzinfo) -> bool:
        """Whether the epoch time `ts` falls in a window, on the wall clock of `zone`."""
        return self._open_at(dt.datetime.fromtimestamp(ts, zone))

    def _open_at(self, local: dt.datetime) -> bool:
        minute = local.weekday() * DAY_MIN + local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.segments)

    def next_change(self, ts: float, zone: dt.tzinfo) -> float | None:
        """The first epoch time after `ts` at which `is_open` turns; None when it never does (always or never open)."""
        if self.never or self.always:
            return None
        now_open = self.is_open(ts, zone)
        today = dt.datetime.fromtimestamp(ts, zone).date()
        candidates: set[float] = set(_offset_changes(ts, zone))
        for day in range(-1, _LOOKAHEAD_DAYS):
            date = today + dt.timedelta(days=day)
            base = date.weekday() * DAY_MIN
            for start, end in self.segments:
                for edge in (start, end):
                    if base <= edge < base + DAY_MIN or (edge == base + DAY_MIN and edge == WEEK_MIN):
                        minute = edge - base
                        naive = dt.datetime.combine(date, dt.time()) + dt.timedelta(minutes=minute)
                        for fold in (0, 1):
                            candidates.add(naive.replace(tzinfo=zone, fold=fold).timestamp())
        for candidate in sorted(c for c in candidates if c > ts):
            if self.is_open(candidate, zone) != now_open:
                return candidate
        return None


def parse_hours(windows: list[str] | tuple[str, ...], place: str = "hours") -> Hours:
    """Hours from window texts; HoursError naming the window (`hours[1]`) that is malformed or overlaps another."""
    if len(windows) > MAX_WINDOWS:
        raise HoursError(place, f"at most {MAX_WINDOWS} windows, not {len(windows)}")
    owned: list[tuple[int, int, int, bool]] = []  # (start, end, index of its window, whether a span)
    for i, text in enumerate(windows):
        where = f"{place}[{i}]"
        if not isinstance(text, str):
            raise HoursError(where, f"must be a string such as \"22:00-07:00\", not {type(text).__name__}")
        if len(text) > MAX_WINDOW_CHARS:
            raise HoursError(where, f"is too long ({len(text)} characters, at most {MAX_WINDOW_CHARS})")
        is_span, segments = _segments(text.strip().lower(), where)
        for start, end in segments:
            for other_start, other_end, j, other_span in owned:
                if start < other_end and other_start < end and is_span == other_span:
                    raise HoursError(where, f"{text!r} overlaps {place}[{j}] {windows[j]!r}; merge them into one window")
        owned.extend((s, e, i, is_span) for s, e in segments)
    for i, text in enumerate(windows):
        others = _merge(sorted((s, e) for s, e, j, _ in owned if j != i))
        if all(any(a <= s and e <= b for a, b in others) for s, e, j, _ in owned if j == i):
            raise HoursError(f"{place}[{i}]", f"{text!r} lies wholly inside the other windows and adds no time; remove it")
    merged = _merge(sorted((s, e) for s, e, _, _ in owned))
    return Hours(windows=tuple(windows), segments=tuple(merged))


@functools.lru_cache(maxsize=256)
def cached_hours(windows: tuple[str, ...]) -> Hours:
    """`parse_hours` of windows already checked, parsed once: a coordinator judges a host's hours at each claim."""
    return parse_hours(windows)


def _segments(text: str, where: str) -> tuple[bool, list[tuple[int, int]]]:
    """Whether the window is a span of the week, and its minute-of-week segments, split at the week's end."""
    if m := _DAILY.fullmatch(text):
        start, end = _minute(m[1], m[2], where), _minute(m[3], m[4], where, end=True)
        length = _after(start, end, where)
        return False, _merge(sorted(s for day in range(7) for s in _span(day * DAY_MIN + start, length)))
    if m := _SPAN.fullmatch(text):
        start = _day(m[1], where) * DAY_MIN + _minute(m[2], m[3], where)
        end = _day(m[4], where) * DAY_MIN + _minute(m[5], m[6], where, end=True)
        if end == start:
            raise HoursError(where, f"{text!r} is empty: it starts where it ends")
        return True, _span(start, (end - start) % WEEK_MIN)
    if m := _ON_DAYS.fullmatch(text):
        start, end = _minute(m[2], m[3], where), _minute(m[4], m[5], where, end=True)
        length = _after(start, end, where)
        return False, _merge(sorted(s for day in _days(m[1], where) for s in _span(day * DAY_MIN + start, length)))
    raise HoursError(where, f"{text!r} is not a window; write \"22:00-07:00\", \"sat 00:00-sun 23:59\" "
                            "or \"mon-fri 18:00-08:00\" (local times, HH:MM)")


def _after(start: int, end: int, where: str) -> int:
    """A daily window's length in minutes (it crosses midnight when it ends before it starts)."""
    if end == start:
        raise HoursError(where, "a window that ends where it starts is empty; for the whole day write 00:00-24:00")
    return end - start if end > start else end + DAY_MIN - start


def _span(start: int, length: int) -> list[tuple[int, int]]:
    """`length` minutes from `start` on the week's circle, as segments within [0, WEEK_MIN)."""
    start %= WEEK_MIN
    end = start + length
    if end <= WEEK_MIN:
        return [(start, end)]
    return [(start, WEEK_MIN), (0, end - WEEK_MIN)]


def _merge(segments: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted segments with those that touch or overlap joined (`mon 00:00-24:00` and `tue 00:00-24:00` make one)."""
    out: list[tuple[int, int]] = []
    for start, end in segments:
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out


def _minute(hour: str, minute: str, where: str, *, end: bool = False) -> int:
    h, m = int(hour), int(minute)
    if (end and (h, m) == (24, 0)) or (h < 24 and m < 60):
        return h * 60 + m
    raise HoursError(where, f"'{hour}:{minute}' is not a time; use HH:MM from 00:00 to 23:59 (24:00 as an end)")


def _day(name: str, where: str) -> int:
    if name in DAYS:
        return DAYS.index(name)
    if name in _FULL_DAYS:
        return _FULL_DAYS.index(name)
    raise HoursError(where, f"{name!r} is not a day; use {', '.join(DAYS)}")


def _days(text: str, where: str) -> list[int]:
    """`mon-fri`, `sat,sun` or `mon`: the days named, a range running forward through the week."""
    days: list[int] = []
    for part in re.split(r"\s*,\s*", text):
        first, _, last = (p.strip() for p in part.partition("-"))
        a = _day(first, where)
        b = _day(last, where) if last else a
        days.extend((a + k) % 7 for k in range((b - a) % 7 + 1))
    if len(set(days)) != len(days):
        raise HoursError(where, f"{text!r} names a day twice")
    return days


def _offset_changes(ts: float, zone: dt.tzinfo) -> list[float]:
    """The instants in the look-ahead at which `zone`'s UTC offset changes (daylight saving), to the second:
    a window edge the spring change skips opens at that instant."""
    out: list[float] = []
    step = 3600.0
    t, offset = ts - DAY_MIN * 60, _offset(ts - DAY_MIN * 60, zone)
    end = ts + _LOOKAHEAD_DAYS * DAY_MIN * 60
    while t < end:
        nxt = t + step
        offset_next = _offset(nxt, zone)
        if offset_next != offset:
            lo, hi = t, nxt
            while hi - lo > 1.0:  # bounded: 12 halvings of an hour
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if _offset(mid, zone) == offset else (lo, mid)
            out.append(float(int(hi)))
        t, offset = nxt, offset_next
    return out


def _offset(ts: float, zone: dt.tzinfo) -> dt.timedelta | None:
    return dt.datetime.fromtimestamp(ts, zone).utcoffset()


def zone_named(name: str) -> ZoneInfo:
    """The IANA time zone `name` (`Europe/Berlin`, `UTC`); ValueError with the fix when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{name!r} is not a time zone; name one such as \"Europe/Berlin\" or \"UTC\" "
                         "(on Windows: pip install tzdata)") from None


def describe_time(ts: float, zone: dt.tzinfo, now: float) -> str:
    """`22:00` for a time within a day of `now`, else `sat 00:00`, on `zone`'s wall clock."""
    local = dt.datetime.fromtimestamp(ts, zone)
    hhmm = local.strftime("%H:%M")
    return hhmm if ts - now < DAY_MIN * 60 else f"{DAYS[local.weekday()]} {hhmm}"
