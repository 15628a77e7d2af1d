"""Delivery schedules (周期购) in plain Python.

Delivery n is always computed from the anchor (the start date) and n, never
from the previous delivery, so month ends do not drift (31 -> 28 -> 28).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import IntEnum
from itertools import count
from zoneinfo import ZoneInfo

from services.common.errors import FieldViolation, InvalidArgument

MAX_DELIVERIES = 1000
# An end date further than this from the start is a data-entry error (ten years: a 6-year monthly plan is real).
MAX_SPAN_DAYS = 10 * 366


class Cadence(IntEnum):
    """Values equal the proto enum `loyalty.cycle_delivery.v1.Cadence`."""

    DAILY = 1
    EVERY_N_DAYS = 2
    WEEKLY = 3
    MONTHLY = 4


@dataclass(frozen=True)
class Rule:
    cadence: Cadence
    interval_days: int = 1
    weekdays: frozenset[int] = field(default_factory=frozenset)  # ISO 1 = Monday .. 7 = Sunday
    month_days: frozenset[int] = field(default_factory=frozenset)  # 1..31, clamped to month length

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise InvalidArgument(problems)

    def problems(self) -> list[FieldViolation]:
        problems: list[FieldViolation] = []
        if self.cadence is Cadence.EVERY_N_DAYS and not 2 <= self.interval_days <= 366:
            problems.append(FieldViolation("rule.interval_days", "must be 2..366 for CADENCE_EVERY_N_DAYS"))
        if self.cadence is Cadence.WEEKLY:
            if not self.weekdays:
                problems.append(FieldViolation("rule.weekdays", "must name at least one weekday"))
            elif not self.weekdays <= set(range(1, 8)):
                problems.append(FieldViolation("rule.weekdays", "must be WEEKDAY_MONDAY..WEEKDAY_SUNDAY"))
        if self.cadence is Cadence.MONTHLY:
            if not self.month_days:
                problems.append(FieldViolation("rule.month_days", "must name at least one day of month"))
            elif not self.month_days <= set(range(1, 32)):
                problems.append(FieldViolation("rule.month_days", "days of month must be 1..31"))
        return problems


def clamped_day(year: int, month: int, day: int) -> date:
    """Day `day` of a month, or its last day when the month is shorter (31 -> Feb 28/29)."""
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def cadence_dates(rule: Rule, start: date) -> Iterator[date]:
    """Every date the cadence yields on or after `start`, in order, each computed from the anchor."""
    if rule.cadence is Cadence.DAILY:
        for n in count():
            yield start + timedelta(days=n)
    elif rule.cadence is Cadence.EVERY_N_DAYS:
        for n in count():
            yield start + timedelta(days=n * rule.interval_days)
    elif rule.cadence is Cadence.WEEKLY:
        week_start = start - timedelta(days=start.isoweekday() - 1)
        offsets = sorted(d - 1 for d in rule.weekdays)
        for week in count():
            for offset in offsets:
                day = week_start + timedelta(weeks=week, days=offset)
                if day >= start:
                    yield day
    else:
        for months in count():
            year, month0 = divmod(start.month - 1 + months, 12)
            days = sorted({clamped_day(start.year + year, month0 + 1, d) for d in rule.month_days})
            yield from (d for d in days if d >= start)


def schedule(
    rule: Rule,
    start: date,
    *,
    delivery_count: int | None = None,
    end_date: date | None = None,
    blackout: frozenset[date] = frozenset(),
) -> list[date]:
    """Delivery dates for a rule: `delivery_count` of them, or all up to `end_date`.

    A delivery on a blackout date moves to the next free allowed day after it
    (and after the previous delivery), keeping the count. With an end date,
    a delivery moved past the end date is dropped.
    """
    rule.validate()
    if (delivery_count is None) == (end_date is None):
        raise InvalidArgument([FieldViolation("delivery_count", "set exactly one of delivery_count and end_date")])
    if delivery_count is not None and not 1 <= delivery_count <= MAX_DELIVERIES:
        raise InvalidArgument([FieldViolation("delivery_count", f"must be 1..{MAX_DELIVERIES}")])
    if end_date is not None and not 0 <= (end_date - start).days <= MAX_SPAN_DAYS:
        raise InvalidArgument(
            [FieldViolation("end_date", f"must be on or after start_date and within {MAX_SPAN_DAYS} days of it")]
        )
    dates: list[date] = []
    for candidate in cadence_dates(rule, start):
        if end_date is not None and candidate > end_date:
            break
        day = candidate
        while day in blackout or (dates and day <= dates[-1]):
            day += timedelta(days=1)
        if end_date is not None and day > end_date:
            break
        dates.append(day)
        if len(dates) == delivery_count or len(dates) > MAX_DELIVERIES:
            break
    if len(dates) > MAX_DELIVERIES:
        raise InvalidArgument([FieldViolation("end_date", f"yields more than {MAX_DELIVERIES} deliveries")])
    return dates


# -- lead time and cut-off (备货天数, 截单时间) ----------------------------------------------------


def _preparation_day(now: datetime, zone: ZoneInfo, cutoff: time) -> date:
    """The shop-local day preparation can start: today before the cut-off, tomorrow from it on."""
    local = now.astimezone(zone)
    return local.date() if local.time() < cutoff else local.date() + timedelta(days=1)


def first_possible_date(now: datetime, zone: ZoneInfo, *, lead_time_days: int, cutoff: time) -> date:
    """The earliest delivery date for an order or change made at `now` (an aware instant)."""
    if now.tzinfo is None:
        raise ValueError("naive datetime: pass an aware instant")
    if lead_time_days < 0:
        raise ValueError("lead time must not be negative")
    return _preparation_day(now, zone, cutoff) + timedelta(days=lead_time_days)


def change_deadline(delivery: date, zone: ZoneInfo, *, lead_time_days: int, cutoff: time) -> datetime:
    """The instant (UTC) from which a delivery can no longer be changed: the cut-off on its preparation day.

    The same rule as `first_possible_date`: a change made at `now` is accepted
    exactly when the delivery could still be arranged by an order made at `now`.
    """
    preparation = delivery - timedelta(days=lead_time_days)
    return datetime.combine(preparation, cutoff, zone).astimezone(UTC)


def can_change(now: datetime, delivery: date, zone: ZoneInfo, *, lead_time_days: int, cutoff: time) -> bool:
    return now < change_deadline(delivery, zone, lead_time_days=lead_time_days, cutoff=cutoff)
