"""Segmentation through gRPC, including its calls to metrics and points."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import pytest
from loyalty.common.v1 import common_pb2
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from loyalty.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from tests.integration.test_metrics_rpc import order, record
from tests.support import Stack, bearer

W = bearer("writer")


def segmentation(stack: Stack) -> segmentation_pb2_grpc.SegmentationServiceStub:
    return segmentation_pb2_grpc.SegmentationServiceStub(stack.channel("segmentation"))


def profile(stack: Stack, customer: str) -> segmentation_pb2.CustomerProfile:
    found: segmentation_pb2.CustomerProfile = (
        segmentation(stack)
        .GetCustomerProfile(
            segmentation_pb2.GetCustomerProfileRequest(shop_id="shop-a", customer_id=customer), metadata=W
        )
        .profile
    )
    return found


def test_profile_joins_metrics_points_and_tags(stack: Stack, uid: str) -> None:
    paid = datetime.now(UTC) - timedelta(days=3)
    record(stack, f"{uid}-o", order(f"{uid}-1", uid, paid, 4200), order(f"{uid}-2", uid, paid, 800))
    stack.stub("points", points_pb2_grpc.PointsServiceStub).AdjustPoints(
        points_pb2.AdjustPointsRequest(
            shop_id="shop-a", request_id=f"{uid}-p", customer_id=uid, asset=points_pb2.ASSET_POINTS, delta=321
        ),
        metadata=W,
    )
    for i, tag in enumerate(("高价值", "vip")):
        segmentation(stack).TagCustomers(
            segmentation_pb2.TagCustomersRequest(
                shop_id="shop-a", request_id=f"{uid}-t{i}", tag=tag, customer_ids=[uid]
            ),
            metadata=W,
        )
    found = profile(stack, uid)
    assert (found.order_count, found.total_paid.amount_minor, found.points_balance) == (2, 5000, 321)
    assert found.days_since_last_order in (3, 4)  # 3 shop-local days, 4 if the test straddles midnight
    assert list(found.tags) == sorted(["高价值", "vip"])


def test_profile_of_a_customer_without_orders(stack: Stack, uid: str) -> None:
    found = profile(stack, uid)
    assert (found.order_count, found.days_since_last_order, found.points_balance, list(found.tags)) == (0, -1, 0, [])


def test_tagging_twice_counts_only_new_customers(stack: Stack, uid: str) -> None:
    def tag(request_id: str, customers: list[str]) -> int:
        result: int = (
            segmentation(stack)
            .TagCustomers(
                segmentation_pb2.TagCustomersRequest(
                    shop_id="shop-a", request_id=request_id, tag="复购", customer_ids=customers
                ),
                metadata=W,
            )
            .newly_tagged
        )
        return result

    assert tag(f"{uid}-1", [f"{uid}-a", f"{uid}-b", f"{uid}-a"]) == 2
    assert tag(f"{uid}-2", [f"{uid}-b", f"{uid}-c"]) == 1
    assert tag(f"{uid}-2", [f"{uid}-b", f"{uid}-c"]) == 1  # replay returns the first answer


@pytest.mark.parametrize("tag", ["", "has space", "x" * 65, "drop;table"])
def test_bad_tags_are_invalid_argument(stack: Stack, uid: str, tag: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        segmentation(stack).TagCustomers(
            segmentation_pb2.TagCustomersRequest(shop_id="shop-a", request_id=uid, tag=tag, customer_ids=[uid]),
            metadata=W,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def attributes(customer: str, month: int = 0, registered: date | None = None, channel: str = "") -> Any:
    member = segmentation_pb2.MemberAttributes(customer_id=customer, birthday_month=month, channel=channel)
    if registered is not None:
        member.registered_on.CopyFrom(common_pb2.Date(year=registered.year, month=registered.month, day=registered.day))
    return member


def test_member_attributes_reach_the_profile_and_the_segment_rules(stack: Stack, uid: str) -> None:
    shop, admin = f"attr-{uid}", bearer("admin")
    stub = segmentation(stack)
    paid = datetime.now(UTC) - timedelta(days=2)
    stack.stub("metrics", metrics_pb2_grpc.MetricsServiceStub).RecordOrders(
        metrics_pb2.RecordOrdersRequest(
            shop_id=shop, request_id=f"{uid}-o", orders=[order(f"{uid}-{c}", f"{uid}-{c}", paid, 5000) for c in "abc"]
        ),
        metadata=admin,
    )
    today = datetime.now(UTC).date()
    written = stub.SetMemberAttributes(
        segmentation_pb2.SetMemberAttributesRequest(
            shop_id=shop,
            request_id=f"{uid}-attrs",
            members=[
                attributes(f"{uid}-a", 11, today - timedelta(days=10), "mini_program"),
                attributes(f"{uid}-b", 3, date(2024, 5, 1), "h5"),
            ],
        ),
        metadata=admin,
    )
    assert written.written == 2
    found = stub.GetCustomerProfile(
        segmentation_pb2.GetCustomerProfileRequest(shop_id=shop, customer_id=f"{uid}-a"), metadata=admin
    ).profile
    assert (found.attributes.birthday_month, found.attributes.channel) == (11, "mini_program")
    for segment_id, rule in (("newcomers", "registered_days < 30"), ("h5", 'channel = "h5" and birthday_month = 3')):
        stub.UpsertSegment(
            segmentation_pb2.UpsertSegmentRequest(
                shop_id=shop,
                request_id=f"{uid}-{segment_id}",
                segment=segmentation_pb2.Segment(segment_id=segment_id, name=segment_id, rule=rule),
            ),
            metadata=admin,
        )
    done = list(stub.EvaluateSegments(segmentation_pb2.EvaluateSegmentsRequest(shop_id=shop), metadata=admin))[-1]
    assert dict(done.members) == {"newcomers": 1, "h5": 1}
    # Replaced as a whole: the channel is now unknown, so the h5 segment loses b.
    stub.SetMemberAttributes(
        segmentation_pb2.SetMemberAttributesRequest(
            shop_id=shop, request_id=f"{uid}-attrs-2", members=[attributes(f"{uid}-b", 3)]
        ),
        metadata=admin,
    )
    done = list(stub.EvaluateSegments(segmentation_pb2.EvaluateSegmentsRequest(shop_id=shop), metadata=admin))[-1]
    assert dict(done.members) == {"newcomers": 1, "h5": 0}


@pytest.mark.parametrize(
    ("member", "field"),
    [
        (attributes("c1", month=13), "members[0].birthday_month"),
        (attributes("c1", channel="Mini Program"), "members[0].channel"),
        (attributes("c1", registered=date(2999, 1, 1)), "members[0].registered_on"),
        (attributes("", month=1), "members[0].customer_id"),
    ],
)
def test_bad_member_attributes_are_invalid_argument_naming_the_field(
    stack: Stack, uid: str, member: Any, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        segmentation(stack).SetMemberAttributes(
            segmentation_pb2.SetMemberAttributesRequest(shop_id="shop-a", request_id=uid, members=[member]),
            metadata=W,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in str(refused.value.details())


def test_layering_rules_default_then_stored_then_used_by_the_evaluation(stack: Stack, uid: str) -> None:
    shop, admin = f"layers-{uid}", bearer("admin")
    stub = segmentation(stack)
    defaults = stub.GetLayeringRules(segmentation_pb2.GetLayeringRulesRequest(shop_id=shop), metadata=admin)
    assert defaults.defaults
    assert defaults.rules.activity.high_orders == 3
    paid = datetime.now(UTC) - timedelta(days=2)
    stack.stub("metrics", metrics_pb2_grpc.MetricsServiceStub).RecordOrders(
        metrics_pb2.RecordOrdersRequest(
            shop_id=shop, request_id=f"{uid}-o", orders=[order(f"{uid}-{c}", f"{uid}-{c}", paid, 5000) for c in "ab"]
        ),
        metadata=admin,
    )
    stub.UpsertSegment(
        segmentation_pb2.UpsertSegmentRequest(
            shop_id=shop,
            request_id=f"{uid}-seg",
            segment=segmentation_pb2.Segment(segment_id="mid", name="mid", rule='activity_layer = "mid"'),
        ),
        metadata=admin,
    )

    def mid_members() -> int:
        request = segmentation_pb2.EvaluateSegmentsRequest(shop_id=shop)
        return dict(list(stub.EvaluateSegments(request, metadata=admin))[-1].members)["mid"]

    assert mid_members() == 0  # one order each: "low" under the defaults
    rules = defaults.rules
    rules.activity.mid_orders, rules.activity.mid_active_days = 1, 1
    stored = stub.SetLayeringRules(
        segmentation_pb2.SetLayeringRulesRequest(shop_id=shop, request_id=f"{uid}-rules", rules=rules), metadata=admin
    )
    assert stored.rules == rules
    now = stub.GetLayeringRules(segmentation_pb2.GetLayeringRulesRequest(shop_id=shop), metadata=admin)
    assert (now.defaults, now.rules) == (False, rules)
    assert mid_members() == 2
    rules.churn.watch_after_intervals = 9.0  # above at_risk_after_intervals
    with pytest.raises(grpc.RpcError) as refused:
        stub.SetLayeringRules(
            segmentation_pb2.SetLayeringRulesRequest(shop_id=shop, request_id=f"{uid}-bad", rules=rules),
            metadata=admin,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rules.churn" in str(refused.value.details())


def test_layer_summary_counts_the_latest_evaluation_with_revenue(stack: Stack, uid: str) -> None:
    shop, admin = f"summary-{uid}", bearer("admin")
    stub = segmentation(stack)
    never = stub.GetLayerSummary(segmentation_pb2.GetLayerSummaryRequest(shop_id=shop), metadata=admin)
    assert (never.version, never.customers, list(never.value_classes)) == (0, 0, [])
    now = datetime.now(UTC)
    orders = [order(f"{uid}-a{i}", f"{uid}-a", now - timedelta(days=3 + 20 * i), 10_000) for i in range(4)]
    orders += [order(f"{uid}-b", f"{uid}-b", now - timedelta(days=200), 3_000)]
    orders += [order(f"{uid}-c{i}", f"{uid}-c", now - timedelta(days=5 + i), 2_500) for i in range(2)]
    stack.stub("metrics", metrics_pb2_grpc.MetricsServiceStub).RecordOrders(
        metrics_pb2.RecordOrdersRequest(shop_id=shop, request_id=f"{uid}-o", orders=orders), metadata=admin
    )
    stub.UpsertSegment(
        segmentation_pb2.UpsertSegmentRequest(
            shop_id=shop,
            request_id=f"{uid}-seg",
            segment=segmentation_pb2.Segment(segment_id="all", name="all", rule="order_count >= 1"),
        ),
        metadata=admin,
    )
    list(stub.EvaluateSegments(segmentation_pb2.EvaluateSegmentsRequest(shop_id=shop), metadata=admin))
    summary = stub.GetLayerSummary(segmentation_pb2.GetLayerSummaryRequest(shop_id=shop), metadata=admin)
    assert (summary.version, summary.customers, summary.net_revenue_minor) == (1, 3, 48_000)
    for layering in (summary.rfm_segments, summary.value_classes, summary.activity_layers, summary.churn_risks):
        assert sum(c.customers for c in layering) == 3
        assert sum(c.net_revenue_minor for c in layering) == 48_000
        assert [c.customers for c in layering] == sorted((c.customers for c in layering), reverse=True)
    # Each class holds exactly the revenue of the customers the profiles put in it.
    by_class: dict[str, int] = {}
    spend = {f"{uid}-a": 40_000, f"{uid}-b": 3_000, f"{uid}-c": 5_000}
    for customer, paid in spend.items():
        found = stub.GetCustomerProfile(
            segmentation_pb2.GetCustomerProfileRequest(shop_id=shop, customer_id=customer), metadata=admin
        ).profile
        by_class[found.value_class] = by_class.get(found.value_class, 0) + paid
    assert {c.label: c.net_revenue_minor for c in summary.value_classes} == by_class
    as_of = date(summary.as_of.year, summary.as_of.month, summary.as_of.day)
    assert abs((as_of - now.date()).days) <= 1  # today in the shop's zone
