"""Every metric definition computed by hand on one small shop.

Shop-local days, amounts in fen:
    A: 2026-01-05 100, 2026-01-05 50 (same day), 2026-02-10 200
    B: 2025-12-20 300 (before January), 2026-01-15 80
    C: 2026-01-20 500, fully refunded
    D: 2026-01-25 120, 20 refunded
    E: 2026-03-03 60
January = 2026-01-01 .. 2026-01-31.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.metrics.definitions import (
    Grain,
    Period,
    Purchase,
    Rate,
    RepurchaseStage,
    TimeUnit,
    active_days,
    churn_rate,
    clv_summaries,
    cohort_retention,
    ninety_day_repurchase,
    purchase_rhythm,
    repurchase_rate_by_customer,
    repurchase_rate_by_order,
    repurchase_stage,
    usable,
    value_summary,
)

SHOP = [
    Purchase("a1", "A", date(2026, 1, 5), 100),
    Purchase("a2", "A", date(2026, 1, 5), 50),
    Purchase("a3", "A", date(2026, 2, 10), 200),
    Purchase("b1", "B", date(2025, 12, 20), 300),
    Purchase("b2", "B", date(2026, 1, 15), 80),
    Purchase("c1", "C", date(2026, 1, 20), 500, refunded_minor=500),
    Purchase("d1", "D", date(2026, 1, 25), 120, refunded_minor=20),
    Purchase("e1", "E", date(2026, 3, 3), 60),
]
JANUARY = Period(date(2026, 1, 1), date(2026, 1, 31))
ORDERS = usable(SHOP)


def test_fully_refunded_orders_are_left_out_unless_asked() -> None:
    assert "c1" not in {p.order_id for p in ORDERS}
    assert "d1" in {p.order_id for p in ORDERS}  # partly refunded stays
    assert len(usable(SHOP, include_refunded=True)) == len(SHOP)


def test_repurchase_by_customer() -> None:
    # In January: A (2 orders), B (1), D (1) -> 1 of 3 bought twice.
    assert repurchase_rate_by_customer(ORDERS, JANUARY) == Rate(1, 3)
    # With history, B (bought in December) is a repurchaser too.
    assert repurchase_rate_by_customer(ORDERS, JANUARY, count_history=True) == Rate(2, 3)
    # Counting C's refunded order adds a one-order buyer.
    assert repurchase_rate_by_customer(usable(SHOP, include_refunded=True), JANUARY) == Rate(1, 4)


def test_repurchase_by_order() -> None:
    # 4 January orders; only A's second is not its customer's first in January.
    assert repurchase_rate_by_order(ORDERS, JANUARY) == Rate(1, 4)
    # With history, B's January order is a repeat of December's.
    assert repurchase_rate_by_order(ORDERS, JANUARY, count_history=True) == Rate(2, 4)


def test_empty_period_is_undefined_not_zero() -> None:
    empty = Period(date(2030, 1, 1), date(2030, 1, 31))
    rate = repurchase_rate_by_customer(ORDERS, empty)
    assert rate == Rate(0, 0)
    assert rate.value is None
    assert repurchase_stage(rate) is None


def test_ninety_day_repurchase_and_stage() -> None:
    # January first-timers: A (Jan 5) and D (Jan 25); B's first order was in December.
    # A buys again on Feb 10 (a later day, within 90); the same-day second order does not count.
    result = ninety_day_repurchase(ORDERS, JANUARY, as_of=date(2026, 4, 30))
    assert (result.rate, result.window_open) == (Rate(1, 2), 0)
    assert result.stage is RepurchaseStage.LOYALTY
    # On April 10, D's window (to April 25) is still open: D is not counted either way.
    early = ninety_day_repurchase(ORDERS, JANUARY, as_of=date(2026, 4, 10))
    assert (early.rate, early.window_open) == (Rate(1, 1), 1)


def test_a_second_order_on_the_first_day_is_not_a_90_day_repurchase() -> None:
    split_cart = [Purchase("x1", "X", date(2026, 1, 5), 10), Purchase("x2", "X", date(2026, 1, 5), 10)]
    assert ninety_day_repurchase(split_cart, JANUARY, as_of=date(2026, 6, 1)).rate == Rate(0, 1)


def test_the_90th_day_counts_and_the_91st_does_not() -> None:
    first = date(2026, 1, 10)
    on_90 = [Purchase("1", "X", first, 1), Purchase("2", "X", first + timedelta(days=90), 1)]
    on_91 = [Purchase("1", "X", first, 1), Purchase("2", "X", first + timedelta(days=91), 1)]
    assert ninety_day_repurchase(on_90, JANUARY, as_of=date(2026, 12, 31)).rate == Rate(1, 1)
    assert ninety_day_repurchase(on_91, JANUARY, as_of=date(2026, 12, 31)).rate == Rate(0, 1)


@pytest.mark.parametrize(
    ("rate", "stage"),
    [
        (Rate(149, 1000), RepurchaseStage.ACQUISITION),
        (Rate(15, 100), RepurchaseStage.HYBRID),
        (Rate(299, 1000), RepurchaseStage.HYBRID),
        (Rate(30, 100), RepurchaseStage.LOYALTY),
        (Rate(0, 5), RepurchaseStage.ACQUISITION),
    ],
)
def test_hillstrom_stage_boundaries(rate: Rate, stage: RepurchaseStage) -> None:
    assert repurchase_stage(rate) is stage


def test_monthly_cohort_retention() -> None:
    rows = cohort_retention(ORDERS, Grain.MONTH, as_of=date(2026, 3, 31))
    assert [(r.cohort_start, r.size, r.active) for r in rows] == [
        (date(2025, 12, 1), 1, (1, 1, 0, 0)),  # B: December, January
        (date(2026, 1, 1), 2, (2, 1, 0)),  # A and D; A again in February
        (date(2026, 3, 1), 1, (1,)),  # E
    ]
    assert rows[1].retention(1) == 0.5
    assert rows[2].retention(1) is None  # April has not begun


def test_weekly_cohorts_start_on_monday() -> None:
    sunday, monday = date(2026, 1, 4), date(2026, 1, 5)
    rows = cohort_retention([Purchase("1", "X", sunday, 1), Purchase("2", "X", monday, 1)], Grain.WEEK, as_of=monday)
    assert [(r.cohort_start, r.active) for r in rows] == [(date(2025, 12, 29), (1, 1))]


def test_churn_between_january_and_february() -> None:
    february = Period(date(2026, 2, 1), date(2026, 2, 28))
    # Active in January: A, B, D. In February only A: B and D churned.
    assert churn_rate(ORDERS, JANUARY, february) == Rate(2, 3)


def test_aov_revenue_per_customer_and_frequency() -> None:
    summary = value_summary(ORDERS, JANUARY)
    # Net revenue 100 + 50 + 80 + (120 - 20) = 330 over 4 orders by 3 customers.
    assert (summary.orders, summary.customers, summary.net_revenue_minor) == (4, 3, 330)
    assert summary.aov_minor == 82.5
    assert summary.revenue_per_customer_minor == 110
    assert summary.purchase_frequency == pytest.approx(4 / 3)
    assert value_summary(ORDERS, Period(date(2030, 1, 1), date(2030, 1, 2))).aov_minor is None


def test_purchase_rhythm_and_active_days() -> None:
    rhythm = purchase_rhythm(ORDERS)
    # A: Jan 5 -> Feb 10 = 36 days; B: Dec 20 -> Jan 15 = 26 days; D and E have one day.
    assert (rhythm.gaps, rhythm.mean_days, rhythm.median_days) == (2, 31.0, 31.0)
    assert active_days(ORDERS) == {"A": 2, "B": 2, "D": 1, "E": 1}
    assert purchase_rhythm([Purchase("1", "X", date(2026, 1, 1), 1)]).mean_days is None


def test_clv_summaries_in_days() -> None:
    rows = {r.customer_id: r for r in clv_summaries(ORDERS, as_of=date(2026, 3, 31))}
    # A: days Jan 5 (150 summed) and Feb 10 (200): one repeat day, 36 days apart, first day 85 days ago.
    assert (rows["A"].frequency, rows["A"].recency, rows["A"].T, rows["A"].monetary_minor) == (1, 36, 85, 200)
    assert (rows["B"].frequency, rows["B"].recency, rows["B"].T, rows["B"].monetary_minor) == (1, 26, 101, 80)
    assert (rows["D"].frequency, rows["D"].recency, rows["D"].T, rows["D"].monetary_minor) == (0, 0, 65, 0)
    assert rows["E"].T == 28


def test_clv_summaries_in_weeks_and_as_of_cuts_later_orders() -> None:
    rows = {r.customer_id: r for r in clv_summaries(ORDERS, as_of=date(2026, 3, 31), unit=TimeUnit.WEEKS)}
    # A: week of Jan 5 and week of Feb 9 -> 5 weeks apart; week of Mar 30 is 12 weeks after Jan 5's.
    assert (rows["A"].frequency, rows["A"].recency, rows["A"].T) == (1, 5, 12)
    early = {r.customer_id for r in clv_summaries(ORDERS, as_of=date(2026, 1, 31))}
    assert early == {"A", "B", "D"}


purchases = st.lists(
    st.builds(
        Purchase,
        order_id=st.uuids().map(str),
        customer_id=st.sampled_from("PQRSTU"),
        day=st.dates(date(2025, 6, 1), date(2026, 6, 1)),
        amount_minor=st.integers(1, 10_000),
    ),
    max_size=60,
)


@given(purchases)
def test_rates_are_proportions_and_history_only_adds(items: list[Purchase]) -> None:
    for metric in (repurchase_rate_by_customer, repurchase_rate_by_order):
        plain, history = metric(items, JANUARY), metric(items, JANUARY, count_history=True)
        assert 0 <= plain.numerator <= plain.denominator
        assert plain.denominator == history.denominator
        assert plain.numerator <= history.numerator <= history.denominator


@given(purchases, st.dates(date(2025, 6, 1), date(2026, 9, 1)))
def test_clv_summaries_match_a_transaction_level_reference(items: list[Purchase], as_of: date) -> None:
    """An independent, slow reference written the way lifetimes describes it."""
    got = {r.customer_id: r for r in clv_summaries(items, as_of)}
    seen = [p for p in items if p.day <= as_of]
    assert set(got) == {p.customer_id for p in seen}
    for customer, row in got.items():
        days = sorted({p.day for p in seen if p.customer_id == customer})
        repeat_totals = [
            sum(p.amount_minor for p in seen if p.customer_id == customer and p.day == d) for d in days[1:]
        ]
        assert row.frequency == len(days) - 1
        assert row.recency == (days[-1] - days[0]).days
        assert (as_of - days[0]).days == row.T
        assert row.monetary_minor == pytest.approx(sum(repeat_totals) / len(repeat_totals) if repeat_totals else 0)


@given(purchases, st.sampled_from(list(Grain)))
def test_cohort_sizes_add_up_to_customers_and_offset_zero_is_everyone(items: list[Purchase], grain: Grain) -> None:
    rows = cohort_retention(items, grain, as_of=date(2026, 6, 1))
    assert sum(r.size for r in rows) == len({p.customer_id for p in items})
    assert all(r.active[0] == r.size and max(r.active) <= r.size for r in rows)


def test_customer_features_by_hand() -> None:
    from services.metrics.definitions import customer_features

    rows = {r.customer_id: r for r in customer_features(ORDERS, as_of=date(2026, 3, 31))}
    a = rows["A"]
    assert (a.order_count, a.net_revenue_minor, a.purchase_days, a.frequency, a.recency_days) == (3, 350, 2, 1, 36)
    assert (a.age_days, a.days_since_last_order, a.monetary_minor) == (85, 49, 200)
    assert a.aov_minor == pytest.approx(350 / 3)
    assert a.mean_interval_days == 36
    d = rows["D"]
    assert (d.net_revenue_minor, d.frequency, d.mean_interval_days, d.days_since_last_order) == (100, 0, None, 65)
    assert list(rows) == sorted(rows)
    # Without a window the window counts are the lifetime ones.
    assert (a.window_orders, a.window_active_days, a.window_net_revenue_minor) == (3, 2, 350)


def test_window_counts_only_the_last_days_up_to_as_of() -> None:
    from services.metrics.definitions import customer_features

    # 60 days up to 31 March start on 31 January: only A's order of 10 February is in.
    rows = {r.customer_id: r for r in customer_features(ORDERS, as_of=date(2026, 3, 31), window_days=60)}
    assert (rows["A"].window_orders, rows["A"].window_active_days, rows["A"].window_net_revenue_minor) == (1, 1, 200)
    assert (rows["B"].window_orders, rows["E"].window_orders) == (0, 1)
    # 90 days start on 1 January: both of A's days, all three orders.
    rows = {r.customer_id: r for r in customer_features(ORDERS, as_of=date(2026, 3, 31), window_days=90)}
    assert (rows["A"].window_orders, rows["A"].window_active_days, rows["A"].window_net_revenue_minor) == (3, 2, 350)
    assert rows["A"].order_count == 3  # lifetime numbers do not change with the window


@given(purchases, st.dates(date(2025, 6, 1), date(2026, 9, 1)))
def test_features_agree_with_clv_summaries(items: list[Purchase], as_of: date) -> None:
    from services.metrics.definitions import customer_features

    features = customer_features(items, as_of)
    summaries = clv_summaries(items, as_of)
    assert [(f.customer_id, f.frequency, f.recency_days, f.age_days) for f in features] == [
        (s.customer_id, s.frequency, s.recency, s.T) for s in summaries
    ]
    assert [f.monetary_minor for f in features] == pytest.approx([s.monetary_minor for s in summaries])


def test_nps_by_hand() -> None:
    from services.metrics.definitions import satisfaction

    # 10, 9 promoters; 8, 7 passives; 6, 0 detractors -> NPS (2 - 2) / 6 = 0; one more 10 -> (3 - 2) / 7.
    s = satisfaction([10, 9, 8, 7, 6, 0])
    assert (s.promoters, s.passives, s.detractors, s.nps, s.average_score) == (2, 2, 2, 0.0, 40 / 6)
    assert satisfaction([10, 9, 8, 7, 6, 0, 10]).nps == pytest.approx(100 / 7)
    assert satisfaction([10, 9, 8, 7, 6, 0]).recommendation_rate == Rate(2, 6)
    empty = satisfaction([])
    assert (empty.nps, empty.average_score, empty.recommendation_rate.value) == (None, None, None)
    with pytest.raises(ValueError, match=r"0\.\.10"):
        satisfaction([11])
