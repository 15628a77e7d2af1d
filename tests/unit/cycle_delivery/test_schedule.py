"""Schedules against an independent oracle that walks the calendar day by day."""

from __future__ import annotations

import calendar
import itertools
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.cycle_delivery.schedule import (
    MAX_DELIVERIES,
    Cadence,
    Rule,
    can_change,
    change_deadline,
    first_possible_date,
    schedule,
)


def oracle_matches(rule: Rule, start: date, day: date) -> bool:
    """Does the cadence fall on `day`? Decided from the day alone, not from earlier deliveries."""
    if day < start:
        return False
    if rule.cadence is Cadence.DAILY:
        return True
    if rule.cadence is Cadence.EVERY_N_DAYS:
        return (day - start).days % rule.interval_days == 0
    if rule.cadence is Cadence.WEEKLY:
        return day.isoweekday() in rule.weekdays
    last = calendar.monthrange(day.year, day.month)[1]
    return any(min(d, last) == day.day for d in rule.month_days)


def oracle(rule: Rule, start: date, count: int | None, end: date | None, blackout: frozenset[date]) -> list[date]:
    dates: list[date] = []
    pending = 0  # deliveries displaced by blackout days, waiting for a free day
    day = start
    while True:
        if end is not None and day > end:
            return dates
        if oracle_matches(rule, start, day):
            pending += 1
        if pending and day not in blackout:
            dates.append(day)
            pending -= 1
            if count is not None and len(dates) == count:
                return dates
        day += timedelta(days=1)


rules = st.one_of(
    st.just(Rule(Cadence.DAILY)),
    st.integers(2, 40).map(lambda n: Rule(Cadence.EVERY_N_DAYS, interval_days=n)),
    st.frozensets(st.integers(1, 7), min_size=1).map(lambda w: Rule(Cadence.WEEKLY, weekdays=w)),
    st.frozensets(st.integers(1, 31), min_size=1, max_size=4).map(lambda m: Rule(Cadence.MONTHLY, month_days=m)),
)
starts = st.dates(min_value=date(2023, 1, 1), max_value=date(2030, 12, 31))


@settings(max_examples=1500, deadline=None)
@given(rule=rules, start=starts, count=st.integers(1, 40), blackout_days=st.sets(st.integers(0, 400), max_size=30))
def test_count_schedules_match_the_oracle(rule: Rule, start: date, count: int, blackout_days: set[int]) -> None:
    blackout = frozenset(start + timedelta(days=d) for d in blackout_days)
    got = schedule(rule, start, delivery_count=count, blackout=blackout)
    assert got == oracle(rule, start, count, None, blackout)
    assert len(got) == count
    assert all(a < b for a, b in itertools.pairwise(got))
    assert not set(got) & blackout


@settings(max_examples=800, deadline=None)
@given(rule=rules, start=starts, span=st.integers(0, 500), blackout_days=st.sets(st.integers(0, 500), max_size=20))
def test_end_date_schedules_match_the_oracle(rule: Rule, start: date, span: int, blackout_days: set[int]) -> None:
    end = start + timedelta(days=span)
    blackout = frozenset(start + timedelta(days=d) for d in blackout_days)
    try:
        got = schedule(rule, start, end_date=end, blackout=blackout)
    except InvalidArgument:
        assert len(oracle(rule, start, None, end, blackout)) > MAX_DELIVERIES
        return
    assert got == oracle(rule, start, None, end, blackout)
    assert all(start <= d <= end for d in got)


def test_month_end_never_drifts() -> None:
    got = schedule(Rule(Cadence.MONTHLY, month_days=frozenset({31})), date(2027, 1, 1), delivery_count=6)
    assert got == [
        date(2027, 1, 31),
        date(2027, 2, 28),
        date(2027, 3, 31),
        date(2027, 4, 30),
        date(2027, 5, 31),
        date(2027, 6, 30),
    ]


def test_leap_february_gets_the_29th() -> None:
    got = schedule(Rule(Cadence.MONTHLY, month_days=frozenset({30, 31})), date(2028, 2, 1), delivery_count=3)
    assert got == [date(2028, 2, 29), date(2028, 3, 30), date(2028, 3, 31)]


def test_daily_blackout_run_pushes_deliveries_past_it() -> None:
    start = date(2027, 2, 8)  # Chinese New Year week as shop holidays
    holidays = frozenset(start + timedelta(days=d) for d in range(1, 4))
    got = schedule(Rule(Cadence.DAILY), start, delivery_count=4, blackout=holidays)
    assert got == [date(2027, 2, 8), date(2027, 2, 12), date(2027, 2, 13), date(2027, 2, 14)]


@pytest.mark.parametrize(
    ("rule", "kwargs"),
    [
        (Rule(Cadence.WEEKLY), {"delivery_count": 1}),
        (Rule(Cadence.MONTHLY, month_days=frozenset({0})), {"delivery_count": 1}),
        (Rule(Cadence.MONTHLY, month_days=frozenset({32})), {"delivery_count": 1}),
        (Rule(Cadence.EVERY_N_DAYS, interval_days=0), {"delivery_count": 1}),
        (Rule(Cadence.DAILY), {"delivery_count": 0}),
        (Rule(Cadence.DAILY), {"delivery_count": MAX_DELIVERIES + 1}),
        (Rule(Cadence.DAILY), {}),
        (Rule(Cadence.DAILY), {"delivery_count": 3, "end_date": date(2027, 1, 1)}),
        (Rule(Cadence.DAILY), {"end_date": date(2026, 1, 1)}),
        (Rule(Cadence.DAILY), {"end_date": date(2030, 1, 1)}),
    ],
)
def test_bad_rules_are_refused(rule: Rule, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        schedule(rule, date(2026, 12, 1), **kwargs)  # type: ignore[arg-type]


SHANGHAI = ZoneInfo("Asia/Shanghai")
EVENING = time(18, 0)


@pytest.mark.parametrize(
    ("local", "lead", "cutoff", "expected"),
    [
        (datetime(2026, 12, 1, 17, 59), 1, EVENING, date(2026, 12, 2)),  # before the cut-off: prepare today
        (datetime(2026, 12, 1, 18, 0), 1, EVENING, date(2026, 12, 3)),  # at the cut-off: prepare tomorrow
        (datetime(2026, 12, 1, 23, 58), 0, time(23, 59), date(2026, 12, 1)),
        (datetime(2026, 12, 1, 23, 59), 0, time(23, 59), date(2026, 12, 2)),
        (datetime(2026, 12, 2, 0, 1), 0, time(23, 59), date(2026, 12, 2)),
        (datetime(2026, 12, 31, 20, 0), 2, EVENING, date(2027, 1, 3)),
    ],
)
def test_first_possible_date(local: datetime, lead: int, cutoff: time, expected: date) -> None:
    now = local.replace(tzinfo=SHANGHAI).astimezone(UTC)
    assert first_possible_date(now, SHANGHAI, lead_time_days=lead, cutoff=cutoff) == expected


def test_the_day_is_shanghais_not_utcs() -> None:
    # 16:30 UTC on Dec 1 is 00:30 on Dec 2 in Shanghai: preparation starts on Dec 2.
    now = datetime(2026, 12, 1, 16, 30, tzinfo=UTC)
    assert first_possible_date(now, SHANGHAI, lead_time_days=0, cutoff=EVENING) == date(2026, 12, 2)


def test_change_deadline_is_the_cutoff_on_the_preparation_day() -> None:
    deadline = change_deadline(date(2026, 12, 5), SHANGHAI, lead_time_days=2, cutoff=EVENING)
    assert deadline == datetime(2026, 12, 3, 18, 0, tzinfo=SHANGHAI).astimezone(UTC)
    assert can_change(deadline - timedelta(seconds=1), date(2026, 12, 5), SHANGHAI, lead_time_days=2, cutoff=EVENING)
    assert not can_change(deadline, date(2026, 12, 5), SHANGHAI, lead_time_days=2, cutoff=EVENING)


@given(
    now=st.datetimes(datetime(2026, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC)),
    lead=st.integers(0, 14),
    cutoff=st.times(),
)
def test_changes_are_accepted_exactly_for_dates_an_order_could_still_reach(
    now: datetime, lead: int, cutoff: time
) -> None:
    first = first_possible_date(now, SHANGHAI, lead_time_days=lead, cutoff=cutoff)
    assert can_change(now, first, SHANGHAI, lead_time_days=lead, cutoff=cutoff)
    assert not can_change(now, first - timedelta(days=1), SHANGHAI, lead_time_days=lead, cutoff=cutoff)


def test_naive_instants_and_negative_lead_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        first_possible_date(datetime(2026, 12, 1), SHANGHAI, lead_time_days=0, cutoff=EVENING)
    with pytest.raises(ValueError, match="negative"):
        first_possible_date(datetime(2026, 12, 1, tzinfo=UTC), SHANGHAI, lead_time_days=-1, cutoff=EVENING)
