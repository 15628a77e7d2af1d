"""Every RPC of every service refuses missing, unknown, expired and other-shop tokens.

The cases are generated from the service descriptors, so a new RPC is covered
the moment it is added to a proto.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2
from loyalty.metrics.v1 import metrics_pb2
from loyalty.points.v1 import points_pb2
from loyalty.segmentation.v1 import segmentation_pb2

from services.common.interceptors import required_scope
from tests.support import Metadata, Stack, bearer

SERVICES = {
    "points": points_pb2.DESCRIPTOR.services_by_name["PointsService"],
    "metrics": metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"],
    "segmentation": segmentation_pb2.DESCRIPTOR.services_by_name["SegmentationService"],
    "cycle_delivery": cycle_delivery_pb2.DESCRIPTOR.services_by_name["CycleDeliveryService"],
}
METHODS = [(name, method) for name, service in SERVICES.items() for method in service.methods]


def call(stack: Stack, service: str, method: MethodDescriptor, request: Any, metadata: Metadata) -> None:
    serializer = GetMessageClass(method.input_type).SerializeToString
    invoke(stack, service, method, request, metadata, serializer, GetMessageClass(method.output_type).FromString)


def invoke(
    stack: Stack,
    service: str,
    method: MethodDescriptor,
    payload: Any,
    metadata: Metadata,
    serializer: Callable[[Any], bytes],
    deserializer: Callable[[bytes], Any],
) -> None:
    """Calls any RPC by its descriptor, whatever its streaming kind, with the given (de)serializers."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    channel = stack.channel(service)
    kind = (method.client_streaming, method.server_streaming)
    if kind == (False, False):
        channel.unary_unary(path, serializer, deserializer)(payload, metadata=metadata, timeout=10)
    elif kind == (False, True):
        list(channel.unary_stream(path, serializer, deserializer)(payload, metadata=metadata, timeout=10))
    elif kind == (True, False):
        channel.stream_unary(path, serializer, deserializer)(iter([payload]), metadata=metadata, timeout=10)
    else:
        list(channel.stream_stream(path, serializer, deserializer)(iter([payload]), metadata=metadata, timeout=10))


def request_for(method: MethodDescriptor, shop_id: str) -> Any:
    request = GetMessageClass(method.input_type)(shop_id=shop_id)
    if "request_id" in method.input_type.fields_by_name:
        request.request_id = "auth-probe"  # type: ignore[attr-defined]
    return request


def code_of(stack: Stack, service: str, method: MethodDescriptor, shop_id: str, metadata: Metadata) -> grpc.StatusCode:
    try:
        call(stack, service, method, request_for(method, shop_id), metadata)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def test_every_rpc_declares_a_scope() -> None:
    undeclared = [
        f"{s}.{m.name}" for s, m in METHODS if required_scope(f"/{m.containing_service.full_name}/{m.name}") is None
    ]
    assert undeclared == []


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
@pytest.mark.parametrize(
    ("who", "shop_id", "expected"),
    [
        (None, "shop-a", grpc.StatusCode.UNAUTHENTICATED),
        ("bogus", "shop-a", grpc.StatusCode.UNAUTHENTICATED),
        ("expired", "shop-a", grpc.StatusCode.UNAUTHENTICATED),
        ("other_shop", "shop-a", grpc.StatusCode.PERMISSION_DENIED),
        ("writer", "shop-b", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_rpc_refuses_wrong_tokens(
    stack: Stack, service: str, method: MethodDescriptor, who: str | None, shop_id: str, expected: grpc.StatusCode
) -> None:
    if who is None:
        metadata: Metadata = ()
    elif who == "bogus":
        metadata = (("authorization", "Bearer not-a-token"),)
    else:
        metadata = bearer(who)
    assert code_of(stack, service, method, shop_id, metadata) == expected


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_read_token_cannot_call_write_rpcs(stack: Stack, service: str, method: MethodDescriptor) -> None:
    scope = method.GetOptions().Extensions[common_pb2.required_scope]
    code = code_of(stack, service, method, "shop-a", bearer("reader"))
    if scope == common_pb2.SCOPE_READ:
        assert code != grpc.StatusCode.PERMISSION_DENIED
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED


def test_missing_shop_id_is_invalid_argument(stack: Stack) -> None:
    method = SERVICES["points"].methods_by_name["GetAccount"]
    assert code_of(stack, "points", method, "", bearer("admin")) == grpc.StatusCode.INVALID_ARGUMENT


def test_refusal_carries_error_info_reason(stack: Stack) -> None:
    stub = stack.channel("points").unary_unary(
        "/loyalty.points.v1.PointsService/GetAccount",
        points_pb2.GetAccountRequest.SerializeToString,
        points_pb2.GetAccountResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub(points_pb2.GetAccountRequest(shop_id="shop-a", customer_id="c"), metadata=bearer("expired"))
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("TOKEN_EXPIRED", "loyalty.suite")


def test_invalid_argument_carries_bad_request_field_violations(stack: Stack) -> None:
    stub = stack.channel("points").unary_unary(
        "/loyalty.points.v1.PointsService/AdjustPoints",
        points_pb2.AdjustPointsRequest.SerializeToString,
        points_pb2.AdjustPointsResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub(points_pb2.AdjustPointsRequest(shop_id="shop-a", request_id="x"), metadata=bearer("writer"))
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    assert {v.field for v in bad.field_violations} == {"customer_id", "asset", "delta"}


@pytest.mark.parametrize("service", list(SERVICES))
def test_health_and_reflection_need_no_token(stack: Stack, service: str) -> None:
    channel = stack.channel(service)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICES[service].full_name), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    listed = {s.name for r in responses for s in r.list_services_response.service}
    assert SERVICES[service].full_name in listed
    assert "grpc.health.v1.Health" in listed


def test_descriptor_pool_knows_every_service() -> None:
    pool = descriptor_pool.Default()
    for service in SERVICES.values():
        assert pool.FindServiceByName(service.full_name) is service
