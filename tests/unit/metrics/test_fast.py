"""The vectorised engine equals the reference definitions on random shops."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.metrics import definitions as reference
from services.metrics import fast
from services.metrics.definitions import Grain, Period, Purchase

purchases = st.lists(
    st.builds(
        Purchase,
        order_id=st.uuids().map(str),
        customer_id=st.sampled_from([f"c{i}" for i in range(12)]),
        day=st.dates(date(2025, 1, 1), date(2026, 12, 31)),
        amount_minor=st.just(100),
    ),
    max_size=120,
)
periods = st.tuples(st.dates(date(2024, 12, 1), date(2027, 1, 31)), st.integers(0, 400)).map(
    lambda t: Period(t[0], t[0] + timedelta(days=t[1]))
)


@settings(max_examples=400)
@given(purchases, periods, st.booleans())
def test_repurchase_rates(items: list[Purchase], period: Period, history: bool) -> None:
    columns = fast.OrderColumns.from_purchases(items)
    assert fast.repurchase_rate_by_customer(
        columns, period, count_history=history
    ) == reference.repurchase_rate_by_customer(items, period, count_history=history)
    assert fast.repurchase_rate_by_order(columns, period, count_history=history) == reference.repurchase_rate_by_order(
        items, period, count_history=history
    )


@settings(max_examples=400)
@given(purchases, periods, st.dates(date(2025, 1, 1), date(2027, 6, 30)))
def test_ninety_day_repurchase(items: list[Purchase], cohort: Period, as_of: date) -> None:
    columns = fast.OrderColumns.from_purchases(items)
    assert fast.ninety_day_repurchase(columns, cohort, as_of) == reference.ninety_day_repurchase(items, cohort, as_of)


@settings(max_examples=400)
@given(purchases, st.sampled_from(list(Grain)), st.dates(date(2025, 1, 1), date(2027, 1, 31)))
def test_cohort_retention(items: list[Purchase], grain: Grain, as_of: date) -> None:
    columns = fast.OrderColumns.from_purchases(items)
    assert fast.cohort_retention(columns, grain, as_of) == reference.cohort_retention(items, grain, as_of)


def test_week_and_month_starts() -> None:
    assert fast._period_start(
        int(fast._period_index(fast.np.array([fast.day_number(date(2026, 1, 7))]), Grain.WEEK)[0]), Grain.WEEK
    ) == date(2026, 1, 5)
    assert fast._period_start(
        int(fast._period_index(fast.np.array([fast.day_number(date(2026, 1, 7))]), Grain.MONTH)[0]), Grain.MONTH
    ) == date(2026, 1, 1)
