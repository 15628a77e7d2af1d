"""Unexpected failures answer INTERNAL with an incident id, leak nothing, and the server stays up."""

from __future__ import annotations

import grpc
import pytest
from loyalty.points.v1 import points_pb2, points_pb2_grpc

from services.points import store
from tests.support import Stack, bearer, details


def test_bug_is_internal_with_incident_and_server_survives(
    stack: Stack, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise KeyError("secret-internal-detail")

    stub = points_pb2_grpc.PointsServiceStub(stack.channel("points"))
    request = points_pb2.GetAccountRequest(shop_id="shop-a", customer_id=uid)
    monkeypatch.setattr(store, "get_account", broken)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetAccount(request, metadata=bearer("reader"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert details(caught.value).startswith("internal error (incident ")
    assert "secret" not in details(caught.value)
    monkeypatch.undo()
    assert stub.GetAccount(request, metadata=bearer("reader")).account.customer_id == uid
