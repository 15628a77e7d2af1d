"""Points RPCs through gRPC on each backend: balances, idempotency, paging, refusals."""

from __future__ import annotations

import grpc
import pytest
from loyalty.points.v1 import points_pb2, points_pb2_grpc

from tests.support import Stack, bearer, details

W = bearer("writer")


def points(stack: Stack) -> points_pb2_grpc.PointsServiceStub:
    return points_pb2_grpc.PointsServiceStub(stack.channel("points"))


def adjust(
    stack: Stack,
    request_id: str,
    customer: str,
    delta: int,
    asset: points_pb2.Asset.ValueType = points_pb2.ASSET_POINTS,
    **extra: str,
) -> points_pb2.AdjustPointsResponse:
    response: points_pb2.AdjustPointsResponse = points(stack).AdjustPoints(
        points_pb2.AdjustPointsRequest(
            shop_id="shop-a", request_id=request_id, customer_id=customer, asset=asset, delta=delta, **extra
        ),
        metadata=W,
    )
    return response


def test_unknown_member_has_zero_balances(stack: Stack, uid: str) -> None:
    account = (
        points(stack).GetAccount(points_pb2.GetAccountRequest(shop_id="shop-a", customer_id=uid), metadata=W).account
    )
    assert (account.points_balance, account.growth_balance, account.HasField("updated_at")) == (0, 0, False)


def test_adjustments_move_each_asset_separately(stack: Stack, uid: str) -> None:
    adjust(stack, f"{uid}-1", uid, 500)
    adjust(stack, f"{uid}-2", uid, 70, asset=points_pb2.ASSET_GROWTH)
    last = adjust(stack, f"{uid}-3", uid, -120, reason="兑换纠正")
    assert (last.account.points_balance, last.account.growth_balance) == (380, 70)
    assert (last.entry.delta, last.entry.balance_after, last.entry.reason) == (-120, 380, "兑换纠正")


def test_retry_with_same_request_id_returns_first_response_and_changes_nothing(stack: Stack, uid: str) -> None:
    first = adjust(stack, f"{uid}-r", uid, 100)
    again = adjust(stack, f"{uid}-r", uid, 100)
    assert again == first
    account = (
        points(stack).GetAccount(points_pb2.GetAccountRequest(shop_id="shop-a", customer_id=uid), metadata=W).account
    )
    assert account.points_balance == 100


def test_same_request_id_with_other_payload_is_already_exists(stack: Stack, uid: str) -> None:
    adjust(stack, f"{uid}-r", uid, 100)
    with pytest.raises(grpc.RpcError) as caught:
        adjust(stack, f"{uid}-r", uid, 101)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "different payload" in details(caught.value)


def test_debit_beyond_balance_is_failed_precondition_and_writes_nothing(stack: Stack, uid: str) -> None:
    adjust(stack, f"{uid}-1", uid, 10)
    with pytest.raises(grpc.RpcError) as caught:
        adjust(stack, f"{uid}-2", uid, -11)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot cover" in details(caught.value)
    listed = points(stack).ListLedgerEntries(
        points_pb2.ListLedgerEntriesRequest(shop_id="shop-a", customer_id=uid), metadata=W
    )
    assert [e.delta for e in listed.entries] == [10]


def test_failed_request_can_be_retried_with_same_id_after_conditions_change(stack: Stack, uid: str) -> None:
    with pytest.raises(grpc.RpcError):
        adjust(stack, f"{uid}-debit", uid, -5)
    adjust(stack, f"{uid}-credit", uid, 5)
    assert adjust(stack, f"{uid}-debit", uid, -5).account.points_balance == 0


@pytest.mark.parametrize(
    ("fields", "violation"),
    [
        ({"customer_id": ""}, "customer_id"),
        ({"customer_id": "x" * 65}, "customer_id"),
        ({"customer_id": "a b"}, "customer_id"),
        ({"delta": 0}, "delta"),
        ({"delta": 10**12}, "delta"),
        ({"asset": 0}, "asset"),
        ({"asset": 99}, "asset"),
        ({"reason": "长" * 201}, "reason"),
        ({"request_id": ""}, "request_id"),
        ({"request_id": "r" * 65}, "request_id"),
    ],
)
def test_bad_adjustments_are_invalid_argument_naming_the_field(
    stack: Stack, uid: str, fields: dict[str, object], violation: str
) -> None:
    values: dict[str, object] = {
        "shop_id": "shop-a",
        "request_id": uid,
        "customer_id": uid,
        "asset": points_pb2.ASSET_POINTS,
        "delta": 1,
    }
    values.update(fields)
    with pytest.raises(grpc.RpcError) as caught:
        points(stack).AdjustPoints(points_pb2.AdjustPointsRequest(**values), metadata=W)  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation in details(caught.value)


def test_ledger_pages_newest_first_until_an_empty_token(stack: Stack, uid: str) -> None:
    for i in range(7):
        adjust(stack, f"{uid}-{i}", uid, i + 1)
    seen: list[int] = []
    token = ""
    pages = 0
    while True:
        page = points(stack).ListLedgerEntries(
            points_pb2.ListLedgerEntriesRequest(shop_id="shop-a", customer_id=uid, page_size=3, page_token=token),
            metadata=W,
        )
        seen += [e.delta for e in page.entries]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    assert pages == 3


@pytest.mark.parametrize(("size", "token"), [(-1, ""), (3, "garbage"), (3, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")])
def test_bad_paging_is_invalid_argument(stack: Stack, uid: str, size: int, token: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        points(stack).ListLedgerEntries(
            points_pb2.ListLedgerEntriesRequest(shop_id="shop-a", customer_id=uid, page_size=size, page_token=token),
            metadata=W,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_page_token_of_one_member_is_refused_for_another(stack: Stack, uid: str) -> None:
    for i in range(3):
        adjust(stack, f"{uid}-{i}", uid, 1)
    token = (
        points(stack)
        .ListLedgerEntries(
            points_pb2.ListLedgerEntriesRequest(shop_id="shop-a", customer_id=uid, page_size=1), metadata=W
        )
        .next_page_token
    )
    with pytest.raises(grpc.RpcError) as caught:
        points(stack).ListLedgerEntries(
            points_pb2.ListLedgerEntriesRequest(shop_id="shop-a", customer_id=uid + "x", page_token=token), metadata=W
        )
    assert "different query" in details(caught.value)
