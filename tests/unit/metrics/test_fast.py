"""The vectorised engine equals the reference definitions on random shops."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest
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
        int(fast._period_index(np.array([fast.day_number(date(2026, 1, 7))]), Grain.WEEK)[0]), Grain.WEEK
    ) == date(2026, 1, 5)
    assert fast._period_start(
        int(fast._period_index(np.array([fast.day_number(date(2026, 1, 7))]), Grain.MONTH)[0]), Grain.MONTH
    ) == date(2026, 1, 1)


@settings(max_examples=400)
@given(purchases, st.dates(date(2025, 1, 1), date(2027, 1, 31)), st.sampled_from(list(reference.TimeUnit)))
def test_clv_summaries(items: list[Purchase], as_of: date, unit: reference.TimeUnit) -> None:
    columns = fast.OrderColumns.from_purchases(items)
    got, expected = fast.clv_summaries(columns, as_of, unit), reference.clv_summaries(items, as_of, unit)
    assert [(r.customer_id, r.frequency, r.recency, r.T) for r in got] == [
        (r.customer_id, r.frequency, r.recency, r.T) for r in expected
    ]
    assert [r.monetary_minor for r in got] == pytest.approx([r.monetary_minor for r in expected])


@settings(max_examples=60, deadline=None)
@given(purchases.filter(bool), st.dates(date(2025, 6, 1), date(2027, 1, 31)), st.sampled_from(["D", "W"]))
def test_clv_summaries_match_the_lifetimes_package(items: list[Purchase], as_of: date, freq: str) -> None:
    """The real `lifetimes.utils.summary_data_from_transaction_data`, not a re-implementation of it."""
    pd = pytest.importorskip("pandas")
    lifetimes_utils = pytest.importorskip("lifetimes.utils")
    frame = pd.DataFrame(
        {
            "customer": [p.customer_id for p in items],
            "day": pd.to_datetime([p.day for p in items]),
            "amount": [float(p.amount_minor) for p in items],
        }
    )
    frame = frame[frame["day"] <= pd.Timestamp(as_of)]
    unit = reference.TimeUnit.DAYS if freq == "D" else reference.TimeUnit.WEEKS
    ours = fast.clv_summaries(fast.OrderColumns.from_purchases(items), as_of, unit)
    if frame.empty:
        assert ours == []
        return
    theirs = lifetimes_utils.summary_data_from_transaction_data(
        frame, "customer", "day", monetary_value_col="amount", observation_period_end=pd.Timestamp(as_of), freq=freq
    )
    assert [r.customer_id for r in ours] == list(theirs.index)
    assert [r.frequency for r in ours] == list(theirs["frequency"])
    assert [r.recency for r in ours] == list(theirs["recency"])
    assert [r.T for r in ours] == list(theirs["T"])
    assert [r.monetary_minor for r in ours] == pytest.approx(list(theirs["monetary_value"]))


purchases_with_refunds = st.lists(
    st.builds(
        Purchase,
        order_id=st.uuids().map(str),
        customer_id=st.sampled_from([f"c{i}" for i in range(12)]),
        day=st.dates(date(2025, 1, 1), date(2026, 12, 31)),
        amount_minor=st.integers(1, 10_000),
        refunded_minor=st.integers(0, 3_000),
    ),
    max_size=120,
)


@settings(max_examples=300)
@given(purchases_with_refunds, periods, periods)
def test_value_summary_and_churn(items: list[Purchase], period: Period, later: Period) -> None:
    columns = fast.OrderColumns.from_purchases(items)
    assert fast.value_summary(columns, period) == reference.value_summary(items, period)
    assert fast.churn_rate(columns, period, later) == reference.churn_rate(items, period, later)


@settings(max_examples=300)
@given(purchases_with_refunds, st.dates(date(2025, 1, 1), date(2027, 1, 31)), st.sampled_from([0, 1, 7, 30, 180]))
def test_customer_features(items: list[Purchase], as_of: date, window_days: int) -> None:
    got = fast.customer_features(fast.OrderColumns.from_purchases(items), as_of, window_days)
    expected = reference.customer_features(items, as_of, window_days)
    assert [
        (
            f.customer_id,
            f.order_count,
            f.net_revenue_minor,
            f.purchase_days,
            f.frequency,
            f.recency_days,
            f.age_days,
            f.days_since_last_order,
            f.first_day,
            f.last_day,
            f.window_orders,
            f.window_active_days,
            f.window_net_revenue_minor,
        )
        for f in got
    ] == [
        (
            f.customer_id,
            f.order_count,
            f.net_revenue_minor,
            f.purchase_days,
            f.frequency,
            f.recency_days,
            f.age_days,
            f.days_since_last_order,
            f.first_day,
            f.last_day,
            f.window_orders,
            f.window_active_days,
            f.window_net_revenue_minor,
        )
        for f in expected
    ]
    assert [f.monetary_minor for f in got] == pytest.approx([f.monetary_minor for f in expected])
