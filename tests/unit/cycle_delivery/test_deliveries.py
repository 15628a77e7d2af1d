"""A subscription's calendar under buyer changes: counts kept, days distinct, cut-offs enforced."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import DomainError, FailedPrecondition, InvalidArgument
from services.cycle_delivery import deliveries as cal
from services.cycle_delivery.deliveries import CalendarDay, DeliveryState, Terms, calendar_days
from services.cycle_delivery.schedule import Cadence, Rule

SHANGHAI = ZoneInfo("Asia/Shanghai")
WEEKDAYS = Rule(Cadence.WEEKLY, weekdays=frozenset({1, 2, 3, 4, 5}))
ANCHOR = date(2026, 3, 2)  # a Monday
EARLY = datetime(2026, 2, 20, tzinfo=UTC)  # long before any deadline


def terms(rule: Rule = WEEKDAYS, count: int = 5, blackout: frozenset[date] = frozenset(), lead: int = 1) -> Terms:
    return Terms(rule, count, lead, time(18, 0), SHANGHAI, blackout, price_per_delivery_minor=1_500)


def days(calendar: cal.Calendar, *states: DeliveryState) -> list[date]:
    wanted = states or tuple(cal.OPEN)
    return [d.day for d in calendar if d.state in wanted]


def start(t: Terms | None = None) -> cal.Calendar:
    return cal.initial_calendar(t or terms(), ANCHOR, 2, "addr")


def test_skip_appends_a_replacement_after_the_last_delivery() -> None:
    skipped = cal.skip(start(), terms(), ANCHOR, 1, EARLY)
    assert days(skipped) == [date(2026, 3, d) for d in (2, 4, 5, 6, 9)]
    assert cal.by_index(skipped, 1).state is DeliveryState.SKIPPED
    assert cal.by_index(skipped, 5).quantity == 2  # the replacement carries the skipped delivery's details
    assert cal.remaining(skipped) == 5


def test_drop_reduces_the_count_and_reports_the_refund() -> None:
    dropped, refund = cal.drop(start(), terms(), 2, EARLY)
    assert (cal.remaining(dropped), refund) == (4, 3_000)


def test_postpone_one_takes_the_next_free_cadence_day() -> None:
    moved = cal.postpone_one(start(), terms(), ANCHOR, 4, EARLY)  # Fri 6th -> Mon 9th
    assert cal.by_index(moved, 4).day == date(2026, 3, 9)
    assert cal.by_index(moved, 4).state is DeliveryState.POSTPONED
    moved = cal.postpone_one(moved, terms(), ANCHOR, 0, EARLY)  # Mon 2nd -> Fri 6th, freed by the first move
    assert cal.by_index(moved, 0).day == date(2026, 3, 6)


def test_postpone_all_moves_the_rest_one_slot_and_keeps_the_count() -> None:
    moved = cal.postpone_all(start(), terms(), ANCHOR, 2, EARLY)
    assert days(moved) == [date(2026, 3, d) for d in (2, 3, 5, 6, 9)]


def test_month_days_postpone_without_drift() -> None:
    monthly = terms(Rule(Cadence.MONTHLY, month_days=frozenset({31})), count=3)
    calendar = cal.initial_calendar(monthly, date(2026, 1, 31), 1, "a")
    assert days(calendar) == [date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31)]
    moved = cal.postpone_all(calendar, monthly, date(2026, 1, 31), 1, datetime(2026, 1, 1, tzinfo=UTC))
    assert days(moved) == [date(2026, 1, 31), date(2026, 3, 31), date(2026, 4, 30)]


def test_a_change_after_the_cutoff_names_the_deadline() -> None:
    # Delivery on Wed 4 March, lead 1 day: prepared Tue 3rd, cut-off 18:00 Shanghai = 10:00 UTC.
    just_before = datetime(2026, 3, 3, 9, 59, tzinfo=UTC)
    cal.skip(start(), terms(), ANCHOR, 2, just_before)
    with pytest.raises(FailedPrecondition) as caught:
        cal.skip(start(), terms(), ANCHOR, 2, just_before + timedelta(minutes=1))
    assert caught.value.reason == "PAST_CUTOFF"
    assert caught.value.metadata["deadline"] == "2026-03-03T10:00:00+00:00"


def test_change_date_refuses_blackout_taken_and_too_early_days() -> None:
    t = terms(blackout=frozenset({date(2026, 3, 14)}))
    now = datetime(2026, 3, 1, 2, tzinfo=UTC)  # 10:00 Shanghai on 1 March: earliest delivery 2 March
    assert cal.by_index(cal.change_date(start(t), t, 4, date(2026, 3, 15), now), 4).day == date(2026, 3, 15)
    for bad in (date(2026, 3, 14), date(2026, 3, 3), date(2026, 3, 1)):
        with pytest.raises(InvalidArgument):
            cal.change_date(start(t), t, 4, bad, now)


def test_resume_lays_missed_deliveries_from_the_first_possible_day_and_keeps_the_count() -> None:
    now = datetime(2026, 3, 4, 12, tzinfo=UTC)  # 20:00 Shanghai Wed 4th, past cut-off: earliest Fri 6th
    relaid = cal.relay_after_pause(start(), terms(), ANCHOR, now)
    assert days(relaid) == [date(2026, 3, d) for d in (6, 9, 10, 11, 12)]
    assert cal.remaining(relaid) == 5


def test_cancel_refunds_what_can_still_change_and_lets_the_rest_go_out() -> None:
    now = datetime(2026, 3, 3, 11, tzinfo=UTC)  # past the cut-off for Wed 4th, before Thu 5th's
    cancelled, count, refund, going_out = cal.cancel(start(), terms(), now)
    # Mon 2nd and Tue 3rd are past too: 3 go out, Thu and Fri are cancelled
    assert (count, refund, going_out) == (2, 6_000, 3)
    assert days(cancelled, DeliveryState.CANCELLED) == [date(2026, 3, 5), date(2026, 3, 6)]


def test_changes_to_a_created_delivery_are_refused() -> None:
    created = tuple(d if d.index else replace(d, state=DeliveryState.CREATED) for d in start())
    with pytest.raises(FailedPrecondition) as caught:
        cal.skip(created, terms(), ANCHOR, 0, EARLY)
    assert caught.value.reason == "DELIVERY_NOT_OPEN"


operations = st.lists(
    st.tuples(st.sampled_from(["skip", "drop", "postpone_one", "postpone_all", "details"]), st.integers(0, 30)),
    max_size=12,
)


@given(
    st.sampled_from(
        [
            WEEKDAYS,
            Rule(Cadence.DAILY),
            Rule(Cadence.EVERY_N_DAYS, interval_days=3),
            Rule(Cadence.MONTHLY, month_days=frozenset({1, 15, 31})),
        ]
    ),
    st.integers(1, 12),
    st.sets(st.dates(date(2026, 3, 1), date(2026, 6, 30)), max_size=10),
    operations,
)
def test_any_sequence_of_changes_keeps_the_calendar_sound(
    rule: Rule, count: int, blackout: set[date], ops: list[tuple[str, int]]
) -> None:
    t = terms(rule, count, frozenset(blackout))
    calendar = cal.initial_calendar(t, ANCHOR, 1, "a")
    dropped = 0
    for op, index in ops:
        try:
            if op == "skip":
                calendar = cal.skip(calendar, t, ANCHOR, index, EARLY)
            elif op == "drop":
                calendar, _refund = cal.drop(calendar, t, index, EARLY)
                dropped += 1
            elif op == "postpone_one":
                calendar = cal.postpone_one(calendar, t, ANCHOR, index, EARLY)
            elif op == "postpone_all":
                calendar = cal.postpone_all(calendar, t, ANCHOR, index, EARLY)
            else:
                calendar = cal.update_details(calendar, t, index, EARLY, quantity=3, address=None)
        except DomainError:
            continue  # unknown or closed delivery: refused, nothing changed
        open_days = days(calendar)
        assert len(open_days) == len(set(open_days)), "two open deliveries on one day"
        assert not set(open_days) & blackout, "a delivery on a blackout day"
        assert all(d >= ANCHOR for d in open_days)
        assert cal.remaining(calendar) == count - dropped, "skips and postponements must keep the count"
        assert len({d.index for d in calendar}) == len(calendar)


def test_a_new_cadence_relays_the_rest_and_keeps_every_override() -> None:
    calendar = cal.update_details(start(), terms(), 3, EARLY, quantity=4, address="new")
    mondays = Rule(Cadence.WEEKLY, weekdays=frozenset({1}))
    changed, new_terms, anchor = cal.change_cadence(calendar, terms(), 2, mondays, EARLY)
    assert days(changed) == [date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 9), date(2026, 3, 16), date(2026, 3, 23)]
    assert [(d.index, d.quantity, d.address) for d in changed if d.index >= 3] == [(3, 4, "new"), (4, 4, "new")]
    assert (new_terms.rule, anchor) == (mondays, date(2026, 3, 9))
    assert cal.remaining(changed) == 5


def test_a_missed_created_delivery_moves_one_cycle_and_keeps_its_order() -> None:
    created = tuple(replace(d, state=DeliveryState.CREATED) if d.index == 4 else d for d in start())
    moved = cal.postpone_missed(created, terms(), ANCHOR, 4)
    assert (cal.by_index(moved, 4).day, cal.by_index(moved, 4).state) == (date(2026, 3, 9), DeliveryState.CREATED)
    with pytest.raises(FailedPrecondition):
        cal.postpone_missed(start(), terms(), ANCHOR, 0)


def test_calendar_days_fill_every_day_and_count_units_still_to_send() -> None:
    first = date(2026, 3, 1)
    counts = [
        (date(2026, 3, 2), int(DeliveryState.SCHEDULED), False, 2, 3),
        (date(2026, 3, 2), int(DeliveryState.POSTPONED), False, 1, 1),
        (date(2026, 3, 2), int(DeliveryState.SKIPPED), False, 4, 9),
        (date(2026, 3, 2), int(DeliveryState.SCHEDULED), True, 6, 6),  # a paused subscription's: not sent
        (date(2026, 3, 2), int(DeliveryState.POSTPONED), True, 1, 2),
        (date(2026, 3, 3), int(DeliveryState.DELIVERED), False, 5, 5),
        (date(2026, 3, 3), int(DeliveryState.SHIPPED), False, 1, 2),
        (date(2026, 3, 3), int(DeliveryState.CANCELLED), False, 1, 7),
        (date(2026, 3, 3), int(DeliveryState.CREATED), False, 2, 2),
        (date(2026, 3, 3), int(DeliveryState.CREATED), True, 1, 1),  # created before the pause: still sent
    ]
    days = calendar_days(counts, first, date(2026, 3, 4))
    assert [d.day for d in days] == [date(2026, 3, n) for n in (1, 2, 3, 4)]
    assert days[0] == CalendarDay(date(2026, 3, 1))
    assert (days[1].planned, days[1].paused, days[1].skipped, days[1].units) == (3, 7, 4, 4)
    assert (days[2].delivered, days[2].shipped, days[2].cancelled, days[2].created, days[2].units) == (5, 1, 1, 3, 5)
    assert days[3] == CalendarDay(date(2026, 3, 4))
