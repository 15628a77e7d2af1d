"""A subscription's calendar and the buyer's changes to it, in plain Python.

Every delivery keeps the index it was born with, so overrides (quantity,
address) and fulfilment stay attached to it whatever happens to its date. New
dates always come from the plan's cadence laid from the subscription's anchor
(`slots`), never from adding a period to the previous date: no month-end drift.
A change to a delivery is accepted only before its deadline, the cut-off on its
preparation day, the same rule that decides the first possible delivery date.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from enum import IntEnum
from zoneinfo import ZoneInfo

from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from services.cycle_delivery.schedule import Rule, cadence_dates, change_deadline, first_possible_date, schedule

# How far ahead a new slot is searched before the calendar is called full (about 5 years of days).
MAX_SLOT_SEARCH = 2000


class DeliveryState(IntEnum):
    """Values equal the proto enum `loyalty.cycle_delivery.v1.DeliveryState`."""

    SCHEDULED = 1
    SKIPPED = 2
    POSTPONED = 3
    CREATED = 4
    SHIPPED = 5
    CANCELLED = 6
    DELIVERED = 7


OPEN = frozenset({DeliveryState.SCHEDULED, DeliveryState.POSTPONED})
FULFILMENT = frozenset({DeliveryState.CREATED, DeliveryState.SHIPPED, DeliveryState.DELIVERED})


@dataclass(frozen=True)
class Terms:
    """What a subscription was sold with: a snapshot of its plan at purchase."""

    rule: Rule
    delivery_count: int
    lead_time_days: int
    cutoff: time
    zone: ZoneInfo
    blackout: frozenset[date]
    price_per_delivery_minor: int

    def deadline(self, day: date) -> datetime:
        return change_deadline(day, self.zone, lead_time_days=self.lead_time_days, cutoff=self.cutoff)

    def first_possible(self, now: datetime) -> date:
        return first_possible_date(now, self.zone, lead_time_days=self.lead_time_days, cutoff=self.cutoff)


@dataclass(frozen=True)
class Delivery:
    index: int
    day: date
    state: DeliveryState
    quantity: int
    address: str

    @property
    def is_open(self) -> bool:
        return self.state in OPEN


Calendar = tuple[Delivery, ...]


def initial_calendar(terms: Terms, anchor: date, quantity: int, address: str) -> Calendar:
    days = schedule(terms.rule, anchor, delivery_count=terms.delivery_count, blackout=terms.blackout)
    return tuple(Delivery(i, day, DeliveryState.SCHEDULED, quantity, address) for i, day in enumerate(days))


def slots(terms: Terms, anchor: date) -> Iterator[date]:
    """The cadence's days from the anchor, each blackout day moved to the next free day."""
    previous: date | None = None
    for candidate in cadence_dates(terms.rule, anchor):
        day = candidate
        while day in terms.blackout or (previous is not None and day <= previous):
            day += timedelta(days=1)
        previous = day
        yield day


def free_slots(terms: Terms, anchor: date, after: date, taken: set[date]) -> Iterator[date]:
    """Cadence days strictly after `after` that no open delivery holds, in order."""
    for searched, day in enumerate(slots(terms, anchor)):
        if searched > MAX_SLOT_SEARCH:
            raise FailedPrecondition("no free delivery day within five years of the anchor", reason="CALENDAR_FULL")
        if day > after and day not in taken:
            taken.add(day)
            yield day


def by_index(calendar: Calendar, index: int) -> Delivery:
    for delivery in calendar:
        if delivery.index == index:
            return delivery
    raise NotFound(f"the subscription has no delivery {index}", reason="DELIVERY_NOT_FOUND")


class ChangeRefused(FailedPrecondition):
    reason = "CHANGE_REFUSED"


def check_changeable(terms: Terms, delivery: Delivery, now: datetime) -> None:
    if not delivery.is_open:
        raise ChangeRefused(
            f"delivery {delivery.index} is {delivery.state.name.lower()} and can no longer change",
            reason="DELIVERY_NOT_OPEN",
        )
    deadline = terms.deadline(delivery.day)
    if now >= deadline:
        raise ChangeRefused(
            f"delivery {delivery.index} on {delivery.day} could be changed until {deadline.isoformat()} (cut-off)",
            reason="PAST_CUTOFF",
            metadata={"deadline": deadline.isoformat()},
        )


def _held_days(calendar: Calendar, *, except_indexes: frozenset[int] = frozenset()) -> set[date]:
    """Days a delivery occupies: open ones and those already created or fulfilled."""
    return {d.day for d in calendar if (d.is_open or d.state in FULFILMENT) and d.index not in except_indexes}


def _set(calendar: Calendar, *changed: Delivery) -> Calendar:
    by_id = {d.index: d for d in changed}
    merged = [by_id.pop(d.index, d) for d in calendar] + list(by_id.values())
    return tuple(sorted(merged, key=lambda d: (d.day, d.index)))


def skip(calendar: Calendar, terms: Terms, anchor: date, index: int, now: datetime) -> Calendar:
    """This delivery does not happen; a replacement goes after the last one, so the count is kept."""
    delivery = by_index(calendar, index)
    check_changeable(terms, delivery, now)
    last = max(d.day for d in calendar)
    day = next(free_slots(terms, anchor, last, _held_days(calendar)))
    replacement = Delivery(
        max(d.index for d in calendar) + 1, day, DeliveryState.SCHEDULED, delivery.quantity, delivery.address
    )
    return _set(calendar, replace(delivery, state=DeliveryState.SKIPPED), replacement)


def drop(calendar: Calendar, terms: Terms, index: int, now: datetime) -> tuple[Calendar, int]:
    """This delivery does not happen and is refunded; returns the refund in minor units."""
    delivery = by_index(calendar, index)
    check_changeable(terms, delivery, now)
    refund = terms.price_per_delivery_minor * delivery.quantity
    return _set(calendar, replace(delivery, state=DeliveryState.CANCELLED)), refund


def postpone_one(calendar: Calendar, terms: Terms, anchor: date, index: int, now: datetime) -> Calendar:
    delivery = by_index(calendar, index)
    check_changeable(terms, delivery, now)
    day = next(free_slots(terms, anchor, delivery.day, _held_days(calendar, except_indexes=frozenset({index}))))
    return _set(calendar, replace(delivery, day=day, state=DeliveryState.POSTPONED))


def postpone_all(calendar: Calendar, terms: Terms, anchor: date, index: int, now: datetime) -> Calendar:
    """This delivery and every later open one move one cadence slot later (顺延)."""
    first = by_index(calendar, index)
    check_changeable(terms, first, now)
    moving = [d for d in calendar if d.is_open and (d.day, d.index) >= (first.day, first.index)]
    staying = _held_days(calendar, except_indexes=frozenset(d.index for d in moving))
    new_days = free_slots(terms, anchor, first.day, staying)
    return _set(calendar, *(replace(d, day=next(new_days), state=DeliveryState.POSTPONED) for d in moving))


def change_date(calendar: Calendar, terms: Terms, index: int, new_day: date, now: datetime) -> Calendar:
    delivery = by_index(calendar, index)
    check_changeable(terms, delivery, now)
    earliest = terms.first_possible(now)
    problems = []
    if new_day < earliest:
        problems.append(FieldViolation("new_date", f"must be on or after {earliest}, the first possible delivery day"))
    if new_day in terms.blackout:
        problems.append(FieldViolation("new_date", f"{new_day} is a day without deliveries"))
    if new_day in _held_days(calendar, except_indexes=frozenset({index})):
        problems.append(FieldViolation("new_date", f"another delivery is already on {new_day}"))
    if problems:
        raise InvalidArgument(problems)
    return _set(calendar, replace(delivery, day=new_day, state=DeliveryState.POSTPONED))


def update_details(
    calendar: Calendar, terms: Terms, index: int, now: datetime, *, quantity: int | None, address: str | None
) -> Calendar:
    """New quantity and/or address for this delivery and every later open one (by index)."""
    check_changeable(terms, by_index(calendar, index), now)
    changed = [
        replace(d, quantity=quantity or d.quantity, address=address or d.address)
        for d in calendar
        if d.is_open and d.index >= index
    ]
    return _set(calendar, *changed)


def relay_after_pause(calendar: Calendar, terms: Terms, anchor: date, now: datetime) -> Calendar:
    """On resume: open deliveries are laid again on the cadence from the first possible day, keeping their number.

    Deliveries whose day passed during the pause are never created late, and
    open deliveries still in the future keep their order.
    """
    earliest = terms.first_possible(now)
    open_deliveries = sorted((d for d in calendar if d.is_open), key=lambda d: (d.day, d.index))
    if not open_deliveries or open_deliveries[0].day >= earliest:
        return calendar
    taken = _held_days(calendar, except_indexes=frozenset(d.index for d in open_deliveries))
    new_days = free_slots(terms, anchor, earliest - timedelta(days=1), taken)
    return _set(calendar, *(replace(d, day=next(new_days), state=DeliveryState.POSTPONED) for d in open_deliveries))


def cancel(calendar: Calendar, terms: Terms, now: datetime) -> tuple[Calendar, int, int, int]:
    """Cancels every open delivery still before its deadline: (calendar, cancelled, refund, still going out)."""
    cancellable = [d for d in calendar if d.is_open and now < terms.deadline(d.day)]
    going_out = sum(1 for d in calendar if d.is_open and now >= terms.deadline(d.day))
    refund = sum(terms.price_per_delivery_minor * d.quantity for d in cancellable)
    updated = _set(calendar, *(replace(d, state=DeliveryState.CANCELLED) for d in cancellable))
    return updated, len(cancellable), refund, going_out


def change_cadence(
    calendar: Calendar, terms: Terms, index: int, new_rule: Rule, now: datetime
) -> tuple[Calendar, Terms, date]:
    """Lays this and every later open delivery on a new cadence; returns (calendar, new terms, new anchor).

    The new anchor is the first re-laid day, so later skips and postponements
    follow the new cadence too. Indexes, and with them every override, are kept.
    """
    first = by_index(calendar, index)
    check_changeable(terms, first, now)
    new_terms = replace(terms, rule=new_rule)
    anchor = max(first.day, terms.first_possible(now))
    moving = [d for d in calendar if d.is_open and (d.day, d.index) >= (first.day, first.index)]
    staying = _held_days(calendar, except_indexes=frozenset(d.index for d in moving))
    new_days = free_slots(new_terms, anchor, anchor - timedelta(days=1), staying)
    moved = [replace(d, day=next(new_days), state=DeliveryState.POSTPONED) for d in moving]
    return _set(calendar, *moved), new_terms, moved[0].day if moved else anchor


def postpone_missed(calendar: Calendar, terms: Terms, anchor: date, index: int) -> Calendar:
    """A created delivery that fulfilment missed moves to the next free cadence day; its order stays."""
    delivery = by_index(calendar, index)
    if delivery.state is not DeliveryState.CREATED:
        raise ChangeRefused(
            f"only a created, unshipped delivery can be postponed as missed; delivery {index} is "
            f"{delivery.state.name.lower()}",
            reason="DELIVERY_NOT_CREATED",
        )
    day = next(free_slots(terms, anchor, delivery.day, _held_days(calendar, except_indexes=frozenset({index}))))
    return _set(calendar, replace(delivery, day=day))


def remaining(calendar: Sequence[Delivery]) -> int:
    return sum(1 for d in calendar if d.is_open)


MAX_CALENDAR_DAYS = 366
UNITS_TO_SEND = OPEN | {DeliveryState.CREATED, DeliveryState.SHIPPED}


@dataclass(frozen=True)
class CalendarDay:
    """One day of the warehouse calendar: deliveries by state, and the units still to send."""

    day: date
    planned: int = 0
    paused: int = 0  # open deliveries of paused subscriptions: not sent unless resumed (then re-laid)
    created: int = 0
    shipped: int = 0
    delivered: int = 0
    skipped: int = 0
    cancelled: int = 0
    units: int = 0


_COLUMN_OF_STATE = {
    DeliveryState.SCHEDULED: "planned",
    DeliveryState.POSTPONED: "planned",
    DeliveryState.CREATED: "created",
    DeliveryState.SHIPPED: "shipped",
    DeliveryState.DELIVERED: "delivered",
    DeliveryState.SKIPPED: "skipped",
    DeliveryState.CANCELLED: "cancelled",
}


def calendar_days(counts: Sequence[tuple[date, int, bool, int, int]], first: date, last: date) -> list[CalendarDay]:
    """Every day from `first` to `last` (zeros included) from (day, state, paused, deliveries, quantity) counts.

    The worker creates deliveries of active subscriptions only, so a paused
    subscription's open deliveries are neither planned nor units to send.
    """
    tallies: dict[date, dict[str, int]] = {}
    for day, state, paused, deliveries, quantity in counts:
        tally = tallies.setdefault(day, {})
        on_hold = paused and state in OPEN
        column = "paused" if on_hold else _COLUMN_OF_STATE[DeliveryState(state)]
        tally[column] = tally.get(column, 0) + deliveries
        if state in UNITS_TO_SEND and not on_hold:
            tally["units"] = tally.get("units", 0) + quantity
    return [
        CalendarDay(day=first + timedelta(days=n), **tallies.get(first + timedelta(days=n), {}))
        for n in range((last - first).days + 1)
    ]
