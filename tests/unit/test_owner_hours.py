"""A host owner's hours: the window forms, refusals naming the window, and when a host may work, judged with an
injected clock in named time zones, daylight-saving changes included (mqfleet/owner/hours.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from mqfleet.owner.hours import HoursError, parse_hours, zone_named
from mqfleet.wire.owner import OwnerPolicy, hours_availability

BERLIN = zone_named("Europe/Berlin")
UTC = zone_named("UTC")


def at(zone: dt.tzinfo, year: int, month: int, day: int, hour: int, minute: int, *, fold: int = 0) -> float:
    """The epoch time of a wall-clock time in `zone`."""
    return dt.datetime(year, month, day, hour, minute, tzinfo=zone, fold=fold).timestamp()


def wall(ts: float, zone: dt.tzinfo) -> str:
    return dt.datetime.fromtimestamp(ts, zone).strftime("%a %Y-%m-%d %H:%M:%S %Z")


def test_a_daily_window_crosses_midnight_and_is_open_only_inside_it() -> None:
    hours = parse_hours(["22:00-07:00"])
    assert hours.is_open(at(BERLIN, 2024, 5, 8, 23, 30), BERLIN)  # a Wednesday night
    assert hours.is_open(at(BERLIN, 2024, 5, 9, 6, 59), BERLIN)
    assert not hours.is_open(at(BERLIN, 2024, 5, 9, 7, 0), BERLIN), "the end is not in the window"
    assert not hours.is_open(at(BERLIN, 2024, 5, 9, 12, 0), BERLIN)
    assert hours.is_open(at(BERLIN, 2024, 5, 9, 22, 0), BERLIN), "the start is"


def test_nights_and_the_whole_weekend_together_as_the_issue_writes_them() -> None:
    hours = parse_hours(["22:00-07:00", "sat 00:00-sun 23:59"])
    assert hours.is_open(at(BERLIN, 2024, 5, 11, 14, 0), BERLIN)  # Saturday afternoon
    assert hours.is_open(at(BERLIN, 2024, 5, 12, 23, 59), BERLIN)  # Sunday 23:59: the nightly window covers it
    assert not hours.is_open(at(BERLIN, 2024, 5, 13, 9, 0), BERLIN)  # Monday morning
    opens = hours.next_change(at(BERLIN, 2024, 5, 13, 9, 0), BERLIN)
    assert opens is not None and wall(opens, BERLIN) == "Mon 2024-05-13 22:00:00 CEST"


def test_a_week_span_may_cross_the_weeks_end_and_day_lists_and_ranges_start_on_each_day() -> None:
    span = parse_hours(["sun 22:00-mon 06:00"])
    assert span.is_open(at(UTC, 2024, 5, 12, 23, 0), UTC) and span.is_open(at(UTC, 2024, 5, 13, 5, 0), UTC)
    assert not span.is_open(at(UTC, 2024, 5, 13, 6, 0), UTC)
    weekdays = parse_hours(["mon-fri 18:00-08:00"])
    assert weekdays.is_open(at(UTC, 2024, 5, 11, 7, 0), UTC), "Friday's window runs into Saturday morning"
    assert not weekdays.is_open(at(UTC, 2024, 5, 11, 19, 0), UTC), "none starts on a Saturday"
    both = parse_hours(["sat,sun 09:00-17:00"])
    assert both.is_open(at(UTC, 2024, 5, 12, 10, 0), UTC) and not both.is_open(at(UTC, 2024, 5, 13, 10, 0), UTC)
    assert parse_hours(["00:00-24:00"]).always and parse_hours([]).never


@pytest.mark.parametrize(("windows", "place", "words"), [
    (["25:00-07:00"], "hours[0]", "'25:00' is not a time"),
    (["22:00"], "hours[0]", "is not a window"),
    (["xyz 10:00-sun 11:00"], "hours[0]", "'xyz' is not a day"),
    (["07:00-07:00"], "hours[0]", "ends where it starts is empty"),
    (["08:00-12:00", "10:00-14:00"], "hours[1]", "overlaps hours[0] '08:00-12:00'"),
    (["sat 00:00-sun 23:59", "sat 09:00-17:00"], "hours[1]", "lies wholly inside the other windows"),
    (["mon,mon 01:00-02:00"], "hours[0]", "names a day twice"),
])
def test_malformed_or_overlapping_windows_are_refused_naming_the_window(windows: list[str], place: str, words: str) -> None:
    with pytest.raises(HoursError) as caught:
        parse_hours(windows)
    assert caught.value.place == place
    assert words in caught.value.message


def test_a_window_opens_at_its_local_time_on_both_sides_of_the_spring_change() -> None:
    hours = parse_hours(["22:00-07:00"])
    # Berlin skips 02:00-03:00 on 2024-03-31; the window still ends at 07:00 local, now CEST
    closes = hours.next_change(at(BERLIN, 2024, 3, 30, 23, 0), BERLIN)
    assert closes is not None and wall(closes, BERLIN) == "Sun 2024-03-31 07:00:00 CEST"
    assert closes - at(BERLIN, 2024, 3, 30, 23, 0) == 7 * 3600, "the night is an hour shorter"


def test_a_window_whose_start_the_spring_change_skips_opens_at_the_first_minute_after_the_gap() -> None:
    hours = parse_hours(["02:30-04:00"])
    opens = hours.next_change(at(BERLIN, 2024, 3, 31, 1, 0), BERLIN)
    assert opens is not None and wall(opens, BERLIN) == "Sun 2024-03-31 03:00:00 CEST"
    assert hours.is_open(opens, BERLIN)


def test_the_hour_the_autumn_change_repeats_is_in_the_window_both_times() -> None:
    hours = parse_hours(["02:00-02:30"])
    first = at(BERLIN, 2024, 10, 27, 2, 15, fold=0)
    second = at(BERLIN, 2024, 10, 27, 2, 15, fold=1)
    assert second - first == 3600
    assert hours.is_open(first, BERLIN) and hours.is_open(second, BERLIN)
    closes = hours.next_change(first, BERLIN)
    assert closes is not None and wall(closes, BERLIN) == "Sun 2024-10-27 02:30:00 CEST"


def test_a_host_outside_its_hours_says_until_when_in_its_zone() -> None:
    policy = OwnerPolicy(hours=["22:00-07:00"], timezone="Europe/Berlin")
    wednesday_noon = at(BERLIN, 2024, 5, 8, 12, 0)
    closed = hours_availability(policy, wednesday_noon)
    assert (closed.state, closed.reason) == ("outside_hours", "outside hours until 22:00 (Europe/Berlin)")
    assert closed.until_ts == at(BERLIN, 2024, 5, 8, 22, 0)
    assert hours_availability(policy, at(BERLIN, 2024, 5, 8, 22, 0)).is_available
    weekend = OwnerPolicy(hours=["sat 00:00-sun 23:59"], timezone="Europe/Berlin")
    assert hours_availability(weekend, wednesday_noon).reason == "outside hours until sat 00:00 (Europe/Berlin)"
    assert hours_availability(OwnerPolicy(hours=[]), wednesday_noon).reason == "outside hours: its hours list no window"
    assert hours_availability(OwnerPolicy(), wednesday_noon).is_available
