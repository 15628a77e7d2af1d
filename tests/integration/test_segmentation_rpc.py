"""Segmentation through gRPC, including its calls to metrics and points."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
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
