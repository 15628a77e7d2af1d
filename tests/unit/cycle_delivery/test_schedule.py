"""Schedules against an independent oracle that walks the calendar day by day."""

from __future__ import annotations

import calendar
import itertools
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.cycle_delivery.schedule import MAX_DELIVERIES, Cadence, Rule, schedule


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
