"""PreviewSchedule through gRPC: dates and refusals."""

from __future__ import annotations

from datetime import date

import grpc
import pytest
from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2 as cd
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2_grpc

from tests.support import Stack, bearer, details

R = bearer("reader")


def d(value: date) -> common_pb2.Date:
    return common_pb2.Date(year=value.year, month=value.month, day=value.day)


def preview(stack: Stack, **fields: object) -> list[date]:
    stub = stack.stub("cycle_delivery", cycle_delivery_pb2_grpc.CycleDeliveryServiceStub)
    response = stub.PreviewSchedule(cd.PreviewScheduleRequest(shop_id="shop-a", **fields), metadata=R)  # type: ignore[arg-type]
    return [date(x.year, x.month, x.day) for x in response.dates]


def test_monthly_on_the_31st_clamps_without_drift(stack: Stack) -> None:
    dates = preview(
        stack,
        rule=cd.ScheduleRule(cadence=cd.CADENCE_MONTHLY, month_days=[31]),
        start_date=d(date(2028, 1, 1)),
        delivery_count=4,
    )
    assert dates == [date(2028, 1, 31), date(2028, 2, 29), date(2028, 3, 31), date(2028, 4, 30)]


def test_weekly_with_blackout_keeps_the_count(stack: Stack) -> None:
    dates = preview(
        stack,
        rule=cd.ScheduleRule(cadence=cd.CADENCE_WEEKLY, weekdays=[cd.WEEKDAY_MONDAY]),
        start_date=d(date(2026, 12, 1)),
        delivery_count=3,
        blackout_dates=[d(date(2026, 12, 14))],
    )
    assert dates == [date(2026, 12, 7), date(2026, 12, 15), date(2026, 12, 21)]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"rule": cd.ScheduleRule(cadence=cd.CADENCE_WEEKLY), "delivery_count": 3}, "rule.weekdays"),
        ({"rule": cd.ScheduleRule(cadence=cd.CADENCE_MONTHLY, month_days=[0]), "delivery_count": 3}, "rule.month_days"),
        (
            {"rule": cd.ScheduleRule(cadence=cd.CADENCE_MONTHLY, month_days=[32]), "delivery_count": 3},
            "rule.month_days",
        ),
        ({"rule": cd.ScheduleRule(cadence=cd.CADENCE_DAILY), "delivery_count": 10**6}, "delivery_count"),
        ({"rule": cd.ScheduleRule(cadence=cd.CADENCE_DAILY)}, "delivery_count"),
        ({"rule": cd.ScheduleRule(), "delivery_count": 3}, "rule.cadence"),
        (
            {"rule": cd.ScheduleRule(cadence=cd.CADENCE_EVERY_N_DAYS, interval_days=1), "delivery_count": 3},
            "rule.interval_days",
        ),
        ({"rule": cd.ScheduleRule(cadence=cd.CADENCE_DAILY), "end_date": d(date(2026, 11, 30))}, "end_date"),
    ],
)
def test_bad_rules_are_invalid_argument(stack: Stack, fields: dict[str, object], field: str) -> None:
    fields.setdefault("start_date", d(date(2026, 12, 1)))
    with pytest.raises(grpc.RpcError) as caught:
        preview(stack, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details(caught.value)


def test_impossible_start_date_is_invalid_argument(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        preview(
            stack,
            rule=cd.ScheduleRule(cadence=cd.CADENCE_DAILY),
            delivery_count=1,
            start_date=common_pb2.Date(year=2026, month=2, day=30),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2026-02-30" in details(caught.value)
