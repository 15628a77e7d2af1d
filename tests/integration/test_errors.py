"""Unexpected failures answer INTERNAL with an incident id, leak nothing, and the server stays up."""

from __future__ import annotations

import grpc
import pytest
from loyalty.points.v1 import points_pb2, points_pb2_grpc

from services.points.book import MemberBook
from tests.support import Stack, bearer, details


def test_bug_is_internal_with_incident_and_server_survives(
    stack: Stack, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise KeyError("secret-internal-detail")

    stub = points_pb2_grpc.PointsServiceStub(stack.channel("points"))
    request = points_pb2.GetAccountRequest(shop_id="shop-a", customer_id=uid)
    monkeypatch.setattr(MemberBook, "account", broken)  # the account view, on every storage path
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetAccount(request, metadata=bearer("reader"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert details(caught.value).startswith("internal error (incident ")
    assert "secret" not in details(caught.value)
    monkeypatch.undo()
    assert stub.GetAccount(request, metadata=bearer("reader")).account.customer_id == uid


def test_a_request_over_the_size_limit_is_resource_exhausted_and_the_server_stays_up(stack: Stack, uid: str) -> None:
    """The servers accept messages up to 8 MiB; a bigger one is refused before any handler runs."""
    stub = points_pb2_grpc.PointsServiceStub(stack.channel("points"))
    huge = points_pb2.GetAccountRequest(shop_id="shop-a", customer_id="x" * (9 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetAccount(huge, metadata=bearer("reader"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    request = points_pb2.GetAccountRequest(shop_id="shop-a", customer_id=uid)
    assert stub.GetAccount(request, metadata=bearer("reader")).account.customer_id == uid


def test_a_page_size_beyond_the_maximum_is_capped(stack: Stack, uid: str) -> None:
    """A client asking for a million rows per page gets at most MAX_PAGE_SIZE and a token for the rest."""
    from services.common.paging import MAX_PAGE_SIZE

    stub = points_pb2_grpc.PointsServiceStub(stack.channel("points"))
    for n in range(MAX_PAGE_SIZE + 5):
        stub.AdjustPoints(
            points_pb2.AdjustPointsRequest(
                shop_id="shop-a", request_id=f"{uid}-{n}", customer_id=uid, asset=points_pb2.ASSET_POINTS, delta=1
            ),
            metadata=bearer("writer"),
        )
    page = stub.ListLedgerEntries(
        points_pb2.ListLedgerEntriesRequest(shop_id="shop-a", customer_id=uid, page_size=1_000_000),
        metadata=bearer("reader"),
    )
    assert len(page.entries) == MAX_PAGE_SIZE
    assert page.next_page_token
