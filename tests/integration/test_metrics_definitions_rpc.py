"""Repurchase, 90-day stage, cohort retention and churn through gRPC, on hand-computed data."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from loyalty.common.v1 import common_pb2
from loyalty.metrics.v1 import metrics_pb2 as m
from loyalty.metrics.v1 import metrics_pb2_grpc

from tests.integration.test_metrics_rpc import order
from tests.support import Stack, bearer, details

SHANGHAI = ZoneInfo("Asia/Shanghai")
R = bearer("admin")
# (order, customer, shop-local day, amount): the shop of tests/unit/metrics/test_definitions.py without refunds.
ORDERS = [
    ("a1", "A", date(2026, 1, 5), 100),
    ("a2", "A", date(2026, 1, 5), 50),
    ("a3", "A", date(2026, 2, 10), 200),
    ("b1", "B", date(2025, 12, 20), 300),
    ("b2", "B", date(2026, 1, 15), 80),
    ("d1", "D", date(2026, 1, 25), 120),
    ("e1", "E", date(2026, 3, 3), 60),
]


def d(value: date) -> common_pb2.Date:
    return common_pb2.Date(year=value.year, month=value.month, day=value.day)


def noon(day: date) -> datetime:
    return datetime.combine(day, time(12), SHANGHAI).astimezone(UTC)


@pytest.fixture(scope="module")
def shop(stack: Stack) -> str:
    shop_id = "defs-" + stack.services["metrics"].settings.service
    stub = metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics"))
    stub.RecordOrders(
        m.RecordOrdersRequest(
            shop_id=shop_id, request_id="seed", orders=[order(o, c, noon(day), amount) for o, c, day, amount in ORDERS]
        ),
        metadata=R,
    )
    return shop_id


def rate_request(**fields: Any) -> m.GetRepurchaseRateRequest:
    return m.GetRepurchaseRateRequest(**fields)


def metrics(stack: Stack) -> metrics_pb2_grpc.MetricsServiceStub:
    return metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics"))


JANUARY = {"period_start": d(date(2026, 1, 1)), "period_end": d(date(2026, 1, 31))}


@pytest.mark.parametrize(
    ("basis", "history", "expected"),
    [
        (m.REPURCHASE_BASIS_CUSTOMER, False, (1, 3)),
        (m.REPURCHASE_BASIS_CUSTOMER, True, (2, 3)),
        (m.REPURCHASE_BASIS_ORDER, False, (1, 4)),
        (m.REPURCHASE_BASIS_ORDER, True, (2, 4)),
    ],
)
def test_repurchase_rate(stack: Stack, shop: str, basis: int, history: bool, expected: tuple[int, int]) -> None:
    rate = (
        metrics(stack)
        .GetRepurchaseRate(rate_request(shop_id=shop, basis=basis, count_history=history, **JANUARY), metadata=R)
        .rate
    )
    assert (rate.numerator, rate.denominator) == expected
    assert rate.value == pytest.approx(expected[0] / expected[1])


def test_rate_of_an_empty_period_has_no_value(stack: Stack, shop: str) -> None:
    rate = (
        metrics(stack)
        .GetRepurchaseRate(
            rate_request(
                shop_id=shop,
                basis=m.REPURCHASE_BASIS_CUSTOMER,
                period_start=d(date(2030, 1, 1)),
                period_end=d(date(2030, 1, 31)),
            ),
            metadata=R,
        )
        .rate
    )
    assert (rate.denominator, rate.HasField("value")) == (0, False)


def test_ninety_day_stage(stack: Stack, shop: str) -> None:
    response = metrics(stack).GetRepurchaseStage(
        m.GetRepurchaseStageRequest(
            shop_id=shop, cohort_start=d(date(2026, 1, 1)), cohort_end=d(date(2026, 1, 31)), as_of=d(date(2026, 4, 30))
        ),
        metadata=R,
    )
    assert (response.rate.numerator, response.rate.denominator, response.window_open) == (1, 2, 0)
    assert response.stage == m.REPURCHASE_STAGE_LOYALTY
    empty = metrics(stack).GetRepurchaseStage(
        m.GetRepurchaseStageRequest(
            shop_id=shop, cohort_start=d(date(2029, 1, 1)), cohort_end=d(date(2029, 1, 31)), as_of=d(date(2029, 6, 1))
        ),
        metadata=R,
    )
    assert empty.stage == m.REPURCHASE_STAGE_UNSPECIFIED


def test_monthly_cohorts(stack: Stack, shop: str) -> None:
    rows = (
        metrics(stack)
        .GetCohortRetention(
            m.GetCohortRetentionRequest(shop_id=shop, grain=m.COHORT_GRAIN_MONTH, as_of=d(date(2026, 3, 31))),
            metadata=R,
        )
        .rows
    )
    assert [((r.cohort_start.year, r.cohort_start.month), r.size, list(r.active)) for r in rows] == [
        ((2025, 12), 1, [1, 1, 0, 0]),
        ((2026, 1), 2, [2, 1, 0]),
        ((2026, 3), 1, [1]),
    ]


def test_churn(stack: Stack, shop: str) -> None:
    rate = (
        metrics(stack)
        .GetChurnRate(
            m.GetChurnRateRequest(
                shop_id=shop,
                before_start=d(date(2026, 1, 1)),
                before_end=d(date(2026, 1, 31)),
                after_start=d(date(2026, 2, 1)),
                after_end=d(date(2026, 2, 28)),
            ),
            metadata=R,
        )
        .rate
    )
    assert (rate.numerator, rate.denominator) == (2, 3)


def test_a_day_ends_at_shop_midnight_not_utc(stack: Stack, uid: str) -> None:
    shop = f"tz-{uid}"
    last_minute = datetime(2026, 1, 31, 23, 59, tzinfo=SHANGHAI).astimezone(UTC)  # 15:59 UTC
    next_minute = last_minute + timedelta(minutes=2)  # 00:01 on Feb 1 in Shanghai, still Jan 31 in UTC
    metrics(stack).RecordOrders(
        m.RecordOrdersRequest(
            shop_id=shop,
            request_id="tz",
            orders=[
                order("o1", "X", datetime(2026, 1, 10, 4, tzinfo=UTC), 1),
                order("o2", "X", last_minute, 1),
                order("o3", "Y", datetime(2026, 1, 10, 4, tzinfo=UTC), 1),
                order("o4", "Y", next_minute, 1),
            ],
        ),
        metadata=R,
    )
    rate = (
        metrics(stack)
        .GetRepurchaseRate(rate_request(shop_id=shop, basis=m.REPURCHASE_BASIS_CUSTOMER, **JANUARY), metadata=R)
        .rate
    )
    assert (rate.numerator, rate.denominator) == (1, 2)  # X repurchased in January; Y's second order is February's


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"basis": m.REPURCHASE_BASIS_CUSTOMER}, "period_start"),
        ({**JANUARY}, "basis"),
        ({"basis": 1, "period_start": d(date(2026, 2, 1)), "period_end": d(date(2026, 1, 1))}, "period_end"),
        ({"basis": 1, "period_start": d(date(2020, 1, 1)), "period_end": d(date(2026, 1, 1))}, "period_end"),
        (
            {
                "basis": 1,
                "period_start": common_pb2.Date(year=2026, month=2, day=30),
                "period_end": d(date(2026, 3, 1)),
            },
            "period_start",
        ),
    ],
)
def test_bad_periods_are_invalid_argument(stack: Stack, request_fields: dict[str, object], field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).GetRepurchaseRate(
            rate_request(shop_id="shop-a", **request_fields),
            metadata=R,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details(caught.value)


def test_overlapping_churn_periods_are_invalid(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).GetChurnRate(
            m.GetChurnRateRequest(
                shop_id="shop-a",
                before_start=d(date(2026, 1, 1)),
                before_end=d(date(2026, 1, 31)),
                after_start=d(date(2026, 1, 15)),
                after_end=d(date(2026, 2, 28)),
            ),
            metadata=R,
        )
    assert "after_start" in details(caught.value)


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        (m.TIME_UNIT_UNSPECIFIED, (1, 36, 85, 200.0)),
        (m.TIME_UNIT_DAYS, (1, 36, 85, 200.0)),
        (m.TIME_UNIT_WEEKS, (1, 5, 12, 200.0)),
    ],
)
def test_clv_summary_in_days_and_weeks(
    stack: Stack, shop: str, unit: m.TimeUnit.ValueType, expected: tuple[int, int, int, float]
) -> None:
    summary = (
        metrics(stack)
        .GetCustomerSummary(
            m.GetCustomerSummaryRequest(shop_id=shop, customer_id="A", as_of=d(date(2026, 3, 31)), time_unit=unit),
            metadata=R,
        )
        .summary
    )
    clv = summary.clv
    assert (clv.frequency, clv.recency, clv.t, clv.monetary_value_minor) == expected
    assert (clv.as_of.year, clv.as_of.month, clv.as_of.day) == (2026, 3, 31)


def test_unknown_time_unit_is_invalid(stack: Stack, shop: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).GetCustomerSummary(
            m.GetCustomerSummaryRequest(shop_id=shop, customer_id="A", time_unit=9),  # type: ignore[arg-type]
            metadata=R,
        )
    assert "time_unit" in details(caught.value)
