"""EraseCustomer in every service: nothing names the person afterwards, and every number is what it was."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2 as cd
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2_grpc
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from loyalty.segmentation.v1 import segmentation_pb2 as sg
from loyalty.segmentation.v1 import segmentation_pb2_grpc
from sqlalchemy import inspect, text

from tests.integration.test_metrics_rpc import order
from tests.support import Stack, bearer, details

A = bearer("admin")
PERSON = "erase-me-13800138000"
ADDRESS = "上海市徐汇区隐私路 42 号"
COMMENT = "送货员态度很好，电话 13800138000"


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def rows_naming(stack: Stack, needle: str) -> dict[str, int]:
    """Rows of any text column, in any service database, that contain `needle`."""
    found: dict[str, int] = {}
    for name, service in stack.services.items():
        engine = service.db.engine
        with engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                if table in ("alembic_version", "idempotency_records", "outbox_events"):
                    continue  # request payloads are kept 30 days for retries, then purged
                for column in inspect(conn).get_columns(table):
                    if "CHAR" in str(column["type"]).upper() or "TEXT" in str(column["type"]).upper():
                        count = conn.execute(
                            text(f'SELECT count(*) FROM "{table}" WHERE "{column["name"]}" LIKE :needle'),
                            {"needle": f"%{needle}%"},
                        ).scalar()
                        if count:
                            found[f"{name}.{table}.{column['name']}"] = int(count)
    return found


def test_erasing_a_customer_everywhere_keeps_every_number(stack: Stack, uid: str) -> None:
    shop = f"erase-{uid}"
    now = datetime.now(UTC)
    metrics = metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics"))
    points = points_pb2_grpc.PointsServiceStub(stack.channel("points"))
    segments = segmentation_pb2_grpc.SegmentationServiceStub(stack.channel("segmentation"))
    cycle = cycle_delivery_pb2_grpc.CycleDeliveryServiceStub(stack.channel("cycle_delivery"))
    orders = [
        order(f"eo{n}", who, now - timedelta(days=d), 4_000)
        for n, (who, d) in enumerate([(PERSON, 9), (PERSON, 3), ("other", 2)])
    ]
    metrics.RecordOrders(metrics_pb2.RecordOrdersRequest(shop_id=shop, request_id="o", orders=orders), metadata=A)
    feedback = metrics_pb2.Feedback(
        feedback_id="f1", customer_id=PERSON, order_id="eo0", score=9, comment=COMMENT, given_at=stamp(now)
    )
    metrics.RecordFeedback(
        metrics_pb2.RecordFeedbackRequest(shop_id=shop, request_id="f", feedback=[feedback]), metadata=A
    )
    for o in orders:
        points.EarnForOrder(
            points_pb2.EarnForOrderRequest(shop_id=shop, request_id=f"e-{o.order_id}", order=o), metadata=A
        )
    segments.TagCustomers(
        sg.TagCustomersRequest(shop_id=shop, request_id="t", tag="vip", customer_ids=[PERSON]), metadata=A
    )
    segments.SetMemberAttributes(
        sg.SetMemberAttributesRequest(
            shop_id=shop,
            request_id="a",
            members=[sg.MemberAttributes(customer_id=PERSON, birthday_month=5, channel="mini_program")],
        ),
        metadata=A,
    )
    segments.UpsertSegment(
        sg.UpsertSegmentRequest(
            shop_id=shop, request_id="s", segment=sg.Segment(segment_id="repeat", name="r", rule="order_count >= 2")
        ),
        metadata=A,
    )
    list(segments.EvaluateSegments(sg.EvaluateSegmentsRequest(shop_id=shop), metadata=A))
    plan = cd.Plan(
        plan_id="p",
        sku="milk",
        rule=cd.ScheduleRule(cadence=cd.CADENCE_DAILY),
        delivery_count=3,
        price_per_delivery=common_pb2.Money(amount_minor=500, currency="CNY"),
    )
    cycle.UpsertPlan(cd.UpsertPlanRequest(shop_id=shop, request_id="p", plan=plan), metadata=A)
    start = (now + timedelta(days=5)).date()
    cycle.CreateSubscription(
        cd.CreateSubscriptionRequest(
            shop_id=shop,
            request_id="sub",
            order=common_pb2.Order(
                order_id="sub1",
                customer_id=PERSON,
                paid_at=stamp(now),
                paid=common_pb2.Money(amount_minor=1_500, currency="CNY"),
            ),
            plan_id="p",
            quantity=1,
            address=ADDRESS,
            delivery_mode=cd.DELIVERY_MODE_EXPRESS,
            start_date=common_pb2.Date(year=start.year, month=start.month, day=start.day),
        ),
        metadata=A,
    )
    first_day = (now - timedelta(days=30)).date()
    rate_request = metrics_pb2.GetRepurchaseRateRequest(
        shop_id=shop,
        basis=metrics_pb2.REPURCHASE_BASIS_CUSTOMER,
        period_start=common_pb2.Date(year=first_day.year, month=first_day.month, day=first_day.day),
        period_end=common_pb2.Date(year=now.year, month=now.month, day=now.day),
    )
    rate_before = metrics.GetRepurchaseRate(rate_request, metadata=A).rate
    balance_before = points.GetAccount(
        points_pb2.GetAccountRequest(shop_id=shop, customer_id=PERSON), metadata=A
    ).account.points_balance

    with pytest.raises(grpc.RpcError) as caught:  # deliveries still need the address
        cycle.EraseCustomer(cd.EraseCustomerRequest(shop_id=shop, request_id="x0", customer_id=PERSON), metadata=A)
    assert "cancel them before erasing" in details(caught.value)
    cycle.CancelSubscription(
        cd.CancelSubscriptionRequest(shop_id=shop, request_id="c", subscription_id="sub1"), metadata=A
    )

    erasers: list[tuple[Any, Any]] = [
        (metrics, metrics_pb2.EraseCustomerRequest),
        (points, points_pb2.EraseCustomerRequest),
        (segments, sg.EraseCustomerRequest),
        (cycle, cd.EraseCustomerRequest),
    ]
    stand_ins = {
        stub.EraseCustomer(request_type(shop_id=shop, request_id=f"x-{n}", customer_id=PERSON), metadata=A).anonymous_id
        for n, (stub, request_type) in enumerate(erasers)
    }
    assert len(stand_ins) == 1, "every service must use the same stand-in id"
    stand_in = stand_ins.pop()
    assert rows_naming(stack, PERSON) == {}
    assert rows_naming(stack, "13800138000") == {}
    assert rows_naming(stack, "隐私路") == {}
    rate_after = metrics.GetRepurchaseRate(rate_request, metadata=A).rate
    assert rate_after == rate_before
    summary = metrics.GetCustomerSummary(
        metrics_pb2.GetCustomerSummaryRequest(shop_id=shop, customer_id=stand_in), metadata=A
    ).summary
    assert summary.order_count == 2
    assert (
        points.GetAccount(
            points_pb2.GetAccountRequest(shop_id=shop, customer_id=stand_in), metadata=A
        ).account.points_balance
        == balance_before
    )
    assert points.ReconcileLedger(points_pb2.ReconcileLedgerRequest(shop_id=shop), metadata=A).balanced
    profile = segments.GetCustomerProfile(
        sg.GetCustomerProfileRequest(shop_id=shop, customer_id=stand_in), metadata=A
    ).profile
    assert "vip" in profile.tags
    members = segments.ListSegmentMembers(sg.ListSegmentMembersRequest(shop_id=shop, segment_id="repeat"), metadata=A)
    assert list(members.customer_ids) == [stand_in]
