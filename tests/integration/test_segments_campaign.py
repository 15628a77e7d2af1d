"""Metrics → segmentation → points: orders in, segments evaluated into versions, a campaign granted once per member."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from loyalty.segmentation.v1 import segmentation_pb2 as sg
from loyalty.segmentation.v1 import segmentation_pb2_grpc

from tests.integration.test_metrics_rpc import order
from tests.support import Stack, bearer, details

A = bearer("admin")


class Shop:
    def __init__(self, stack: Stack, uid: str) -> None:
        self.id = f"seg-{uid}"
        self.metrics = metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics"))
        self.segments = segmentation_pb2_grpc.SegmentationServiceStub(stack.channel("segmentation"))
        self.points = points_pb2_grpc.PointsServiceStub(stack.channel("points"))
        self.counter = 0

    def rid(self) -> str:
        self.counter += 1
        return f"r{self.counter}"

    def orders(self, *spec: tuple[str, int]) -> None:
        now = datetime.now(UTC)
        orders = [
            order(f"{customer}-{n}-{self.rid()}", customer, now - timedelta(days=days_ago), 10_000)
            for n, (customer, days_ago) in enumerate(spec)
        ]
        self.metrics.RecordOrders(
            metrics_pb2.RecordOrdersRequest(shop_id=self.id, request_id=self.rid(), orders=orders), metadata=A
        )

    def segment(self, segment_id: str, rule: str, auto_tag: str = "") -> None:
        segment = sg.Segment(segment_id=segment_id, name=segment_id, rule=rule, auto_tag=auto_tag)
        self.segments.UpsertSegment(
            sg.UpsertSegmentRequest(shop_id=self.id, request_id=self.rid(), segment=segment), metadata=A
        )

    def evaluate(self, window_days: int = 0) -> list[sg.EvaluateSegmentsResponse]:
        request = sg.EvaluateSegmentsRequest(shop_id=self.id, window_days=window_days)
        return list(self.segments.EvaluateSegments(request, metadata=A))

    def members(self, segment_id: str, **fields: Any) -> sg.ListSegmentMembersResponse:
        response: sg.ListSegmentMembersResponse = self.segments.ListSegmentMembers(
            sg.ListSegmentMembersRequest(shop_id=self.id, segment_id=segment_id, **fields), metadata=A
        )
        return response

    def grant(self, campaign: str, segment_id: str, **fields: Any) -> list[points_pb2.GrantToSegmentResponse]:
        request = points_pb2.GrantToSegmentRequest(
            shop_id=self.id, campaign_id=campaign, segment_id=segment_id, **fields
        )
        return list(self.points.GrantToSegment(request, metadata=A))

    def balance(self, customer: str) -> int:
        return int(
            self.points.GetAccount(
                points_pb2.GetAccountRequest(shop_id=self.id, customer_id=customer), metadata=A
            ).account.points_balance
        )


@pytest.fixture
def shop(stack: Stack, uid: str) -> Shop:
    return Shop(stack, uid)


def test_orders_to_segments_to_a_campaign_grant_once_per_member(shop: Shop) -> None:
    shop.orders(("c1", 40), ("c1", 20), ("c1", 2), ("c2", 50), ("c3", 45), ("c3", 35))
    shop.segment("repeat", "order_count >= 2", auto_tag="repeat_buyer")
    shop.segment("lapsed", "recency_days > 30")
    progress = shop.evaluate()
    assert [p.phase for p in progress][-1] == sg.EVALUATION_PHASE_DONE
    assert (progress[-1].version, progress[-1].customers, dict(progress[-1].members)) == (
        1,
        3,
        {"repeat": 2, "lapsed": 2},
    )
    first = shop.members("repeat", page_size=1)
    second = shop.members("repeat", page_size=1, page_token=first.next_page_token)
    assert ([*first.customer_ids, *second.customer_ids], second.next_page_token) == (["c1", "c3"], "")
    pinned = shop.members("repeat", page_size=1, version=first.version, page_token=first.next_page_token)
    assert list(pinned.customer_ids) == ["c3"]  # a "latest" token also serves the version it pinned, by number
    assert list(shop.members("lapsed").customer_ids) == ["c2", "c3"]

    shop.orders(("c2", 1))
    assert shop.evaluate()[-1].version == 2
    with pytest.raises(grpc.RpcError) as caught:  # but never another version
        shop.members("repeat", page_size=1, version=2, page_token=first.next_page_token)
    assert (caught.value.code(), "belongs to version 1, not 2" in details(caught.value)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        True,
    )
    diff = shop.segments.GetSegmentDiff(
        sg.GetSegmentDiffRequest(shop_id=shop.id, segment_id="repeat", from_version=1), metadata=A
    )
    assert (list(diff.entered), list(diff.left), diff.to_version) == (["c2"], [], 2)
    lapsed = shop.segments.GetSegmentDiff(
        sg.GetSegmentDiffRequest(shop_id=shop.id, segment_id="lapsed", from_version=1, to_version=2), metadata=A
    )
    assert (list(lapsed.entered), list(lapsed.left)) == ([], ["c2"])

    grant = shop.grant("spring", "repeat", points=100, segment_version=1)
    assert (grant[-1].done, grant[-1].granted, grant[-1].segment_version) == (True, 2, 1)
    again = shop.grant("spring", "repeat", points=100)  # a rerun keeps the version of the first run
    assert (again[-1].granted, again[-1].already_granted, again[-1].segment_version) == (0, 2, 1)
    assert [shop.balance(c) for c in ("c1", "c2", "c3")] == [100, 0, 100]
    with pytest.raises(grpc.RpcError) as caught:
        shop.grant("spring", "repeat", points=200)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    profile = shop.segments.GetCustomerProfile(
        sg.GetCustomerProfileRequest(shop_id=shop.id, customer_id="c1"), metadata=A
    ).profile
    assert "repeat_buyer" in profile.tags
    assert (list(profile.segments), profile.scores_version, profile.activity_layer) == (["repeat"], 2, "high")
    # Version 2, three customers: days since last order c2 1, c1 2, c3 35; orders c1 3, c2 2, c3 2;
    # net c1 300, c2 200, c3 200 yuan. Score = 1 + 5 × (customers strictly worse) // 3:
    # c1 has one worse recency (R 2), two worse frequencies (F 4) and two worse spends (M 4).
    assert (profile.rfm.r, profile.rfm.f, profile.rfm.m) == (2, 4, 4)
    assert profile.rfm_segment == "At Risk"
    c3 = shop.segments.GetCustomerProfile(
        sg.GetCustomerProfileRequest(shop_id=shop.id, customer_id="c3"), metadata=A
    ).profile
    assert list(c3.segments) == ["lapsed", "repeat"]
    assert c3.churn_reason


def test_a_grant_to_the_latest_version_pages_through_a_large_segment(shop: Shop) -> None:
    """More members than one page of the grant (500): every later page is read at the version the first found."""
    customers = [f"m{n:04d}" for n in range(1_200)]
    for batch in (customers[:600], customers[600:]):
        shop.orders(*((customer, 3) for customer in batch))
    shop.segment("buyers", "order_count >= 1")
    assert shop.evaluate()[-1].members["buyers"] == 1_200
    progress = shop.grant("welcome", "buyers", points=10)  # segment_version 0: the latest
    assert [(p.members_seen, p.done) for p in progress] == [(500, False), (1_000, False), (1_200, True)]
    assert (progress[-1].granted, progress[-1].segment_version) == (1_200, 1)
    assert {shop.balance(c) for c in (customers[0], customers[777], customers[-1])} == {10}


def test_a_segment_the_shop_never_defined_is_not_found_wherever_it_is_named(shop: Shop) -> None:
    shop.orders(("c1", 3))
    shop.segment("buyers", "order_count >= 1")
    shop.evaluate()
    calls: dict[str, Callable[[], object]] = {
        "ListSegmentMembers": lambda: shop.members("nosuch"),
        "GetSegmentDiff": lambda: shop.segments.GetSegmentDiff(
            sg.GetSegmentDiffRequest(shop_id=shop.id, segment_id="nosuch", from_version=1), metadata=A
        ),
        "ExportSegment": lambda: list(
            shop.segments.ExportSegment(sg.ExportSegmentRequest(shop_id=shop.id, segment_id="nosuch"), metadata=A)
        ),
        "GrantToSegment": lambda: shop.grant("nosuch-campaign", "nosuch", points=10),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert (name, caught.value.code()) == (name, grpc.StatusCode.NOT_FOUND)
        assert "'nosuch' does not exist" in details(caught.value)
    assert list(shop.members("buyers").customer_ids) == ["c1"]


def test_export_streams_members_with_their_scores(shop: Shop) -> None:
    shop.orders(*[(f"m{i:03d}", i % 30) for i in range(12)])
    shop.segment("everyone", "order_count >= 1")
    shop.evaluate()
    rows = list(
        shop.segments.ExportSegment(sg.ExportSegmentRequest(shop_id=shop.id, segment_id="everyone"), metadata=A)
    )
    assert [r.customer_id for r in rows] == [f"m{i:03d}" for i in range(12)]
    assert all(r.rfm_segment and 1 <= r.rfm.r <= 5 and r.version == 1 for r in rows)
    shop.evaluate()
    old = list(
        shop.segments.ExportSegment(
            sg.ExportSegmentRequest(shop_id=shop.id, segment_id="everyone", version=1), metadata=A
        )
    )
    assert len(old) == 12
    assert not any(r.rfm_segment for r in old)  # scores are kept for the latest version only


def test_points_balance_and_tier_from_the_points_service_feed_the_rules(shop: Shop) -> None:
    shop.orders(("rich", 3), ("poor", 4), ("stranger", 5))
    for customer, points in (("rich", 5_000), ("poor", 10)):
        shop.points.AdjustPoints(
            points_pb2.AdjustPointsRequest(
                shop_id=shop.id,
                request_id=shop.rid(),
                customer_id=customer,
                asset=points_pb2.ASSET_POINTS,
                delta=points,
            ),
            metadata=A,
        )
    shop.segment("points_rich", "points_balance >= 1000")
    shop.segment("no_points", "not points_balance >= 0")  # a customer the points service never saw has no value
    shop.evaluate()
    assert list(shop.members("points_rich").customer_ids) == ["rich"]
    assert list(shop.members("no_points").customer_ids) == ["stranger"]


def test_activity_layers_look_at_the_window_not_the_lifetime(shop: Shop) -> None:
    # "was" bought four times 200-260 days ago; "is" bought three times this month.
    shop.orders(("was", 260), ("was", 240), ("was", 220), ("was", 200), ("is", 20), ("is", 10), ("is", 3))
    shop.segment("high", 'activity_layer = "high"')
    shop.segment("recent_repeat", "orders_in_window >= 2")
    shop.evaluate()  # default window: 180 days
    assert list(shop.members("high").customer_ids) == ["is"]
    assert list(shop.members("recent_repeat").customer_ids) == ["is"]
    shop.evaluate(window_days=365)
    assert list(shop.members("high").customer_ids) == ["is", "was"]


def test_bad_rules_and_missing_evaluations_are_clear(shop: Shop) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        shop.segment("bad", "order_count >= 2 and spend > 5")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown field 'spend'" in details(caught.value)
    with pytest.raises(grpc.RpcError) as caught:
        shop.evaluate()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as caught:
        shop.members("nothing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'nothing' does not exist" in details(caught.value)
    shop.segment("repeat", "order_count >= 2")
    with pytest.raises(grpc.RpcError) as caught:
        shop.members("repeat")  # defined, never evaluated
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "EvaluateSegments" in details(caught.value)
    with pytest.raises(grpc.RpcError) as caught:
        shop.grant("c", "nothing", points=0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_two_evaluations_at_once_take_turns_and_get_their_own_versions(shop: Shop) -> None:
    shop.orders(("c1", 3), ("c2", 4))
    shop.segment("all", "order_count >= 1")
    with ThreadPoolExecutor(2) as pool:
        finals = [progress[-1] for progress in pool.map(lambda _: shop.evaluate(), range(2))]
    assert sorted(f.version for f in finals) == [1, 2]
    assert all(dict(f.members) == {"all": 2} for f in finals)
    for version in (1, 2):
        assert list(shop.members("all", version=version).customer_ids) == ["c1", "c2"]


def test_derived_labels_can_be_used_in_rules(shop: Shop) -> None:
    shop.orders(("loyal", 2), ("loyal", 9), ("loyal", 16), ("loyal", 23), ("once", 200))
    shop.segment("active", 'activity_layer = "high"')
    shop.segment("valuable", 'value_class = "重要价值"')
    shop.segment("asleep", 'rfm_segment in ("Lost", "Hibernating", "At Risk", "About to Sleep")')
    shop.evaluate()
    assert list(shop.members("active").customer_ids) == ["loyal"]  # 4 orders on 4 days: high
    assert list(shop.members("valuable").customer_ids) == ["loyal"]
    assert list(shop.members("asleep").customer_ids) == ["once"]


def test_bulk_tag_import_streams_chunks_and_a_resent_chunk_changes_nothing(shop: Shop) -> None:
    def chunk(request_id: str, pairs: list[tuple[str, str]]) -> sg.ImportTagsRequest:
        return sg.ImportTagsRequest(
            shop_id=shop.id,
            request_id=request_id,
            assignments=[sg.TagAssignment(customer_id=c, tag=t) for c, t in pairs],
        )

    first = [chunk("i1", [("t1", "vip"), ("t2", "vip"), ("t1", "北京")]), chunk("i2", [("t3", "vip"), ("t1", "vip")])]
    result = shop.segments.ImportTags(iter(first), metadata=A)
    assert (result.chunks, result.newly_tagged, result.already_tagged) == (2, 4, 1)
    again = shop.segments.ImportTags(iter([first[1], chunk("i3", [("t2", "北京")])]), metadata=A)
    assert (again.chunks, again.newly_tagged, again.already_tagged) == (2, 2, 1)  # i2 replayed as first answered
    profile = shop.segments.GetCustomerProfile(
        sg.GetCustomerProfileRequest(shop_id=shop.id, customer_id="t1"), metadata=A
    )
    assert list(profile.profile.tags) == ["vip", "北京"]
    with pytest.raises(grpc.RpcError) as caught:
        shop.segments.ImportTags(iter([chunk("bad", [("t1", "no spaces allowed")])]), metadata=A)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "assignments[0].tag" in details(caught.value)
