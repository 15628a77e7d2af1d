"""Every RPC of every service under hypothesis-generated requests: only documented statuses, never INTERNAL.

Requests are built from the descriptors (so a new RPC is fuzzed the moment it
exists): random and boundary numbers, empty / huge / non-ASCII strings, nested
messages, repeated fields, unknown enum values, and a share of requests aimed
at the token's own shop. After the run each service still answers health checks.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_auth import METHODS, call, invoke
from tests.support import Stack, bearer

A = bearer("admin")
DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
EXAMPLES_PER_RPC = 25
COUNTED: dict[str, int] = {}

texts = st.one_of(
    st.just(""),
    st.sampled_from(["shop-a", "c1", "o1", "CNY", "Asia/Shanghai", "order_count >= 2", "milk", "1", "0"]),
    st.text(max_size=12),
    st.text(alphabet="积分会员复购周期购🙂\u0000\u202e'\";--", max_size=20),
    st.just("x" * 5_000),
)
ints = st.one_of(
    st.integers(-3, 3), st.sampled_from([2**31 - 1, -(2**31), 10**6, 10**15, 2**62]), st.integers(-(2**31), 2**31 - 1)
)


def value_for(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        nested = field.message_type
        assert nested is not None
        if nested.full_name == "google.protobuf.Timestamp":
            return st.builds(
                lambda s, n: GetMessageClass(nested)(seconds=s, nanos=n),
                st.sampled_from([0, -1, 1_700_000_000, 253_402_300_799, 10**12]),
                st.sampled_from([0, 999_999_999, -1]),
            )
        return message_strategy(nested, depth + 1)
    if field.type == FieldDescriptor.TYPE_STRING:
        return texts
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 100))
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return ints.filter(lambda x: -(2**31) <= x < 2**31)
    if field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    return ints


def message_strategy(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    fields = [f for f in descriptor.fields if depth < 3 or f.type != FieldDescriptor.TYPE_MESSAGE]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = GetMessageClass(descriptor)()
        for field in fields:
            if not draw(st.booleans()):
                continue
            is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
            if is_map and field.message_type is not None:
                key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
                for _ in range(draw(st.integers(0, 2))):
                    k = draw(value_for(key, depth))
                    v = draw(value_for(value, depth))
                    entry = getattr(message, field.name)
                    if value.type == FieldDescriptor.TYPE_MESSAGE:
                        entry[k].CopyFrom(v)
                    else:
                        entry[k] = v
            elif field.is_repeated:
                items = draw(st.lists(value_for(field, depth), max_size=3))
                container = getattr(message, field.name)
                for item in items:
                    if field.type == FieldDescriptor.TYPE_MESSAGE:
                        container.add().CopyFrom(item)
                    else:
                        container.append(item)
            else:
                item = draw(value_for(field, depth))
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    getattr(message, field.name).CopyFrom(item)
                else:
                    setattr(message, field.name, item)
        if "shop_id" in descriptor.fields_by_name and draw(st.booleans()):
            message.shop_id = draw(st.sampled_from(["shop-fuzz", "shop-a"]))  # type: ignore[attr-defined]
        return message

    return build()


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_rpc_answers_fuzzed_requests_with_documented_statuses(
    stack: Stack, service: str, method: MethodDescriptor
) -> None:
    @settings(max_examples=EXAMPLES_PER_RPC, suppress_health_check=list(HealthCheck), database=None)
    @given(message_strategy(method.input_type))
    def fuzz(request: Message) -> None:
        COUNTED[method.full_name] = COUNTED.get(method.full_name, 0) + 1
        try:
            call(stack, service, method, request, A)
        except grpc.RpcError as exc:
            shown = str(request)[:400]
            assert exc.code() in DOCUMENTED, f"{method.full_name}: {exc.code()} {exc.details()} for {shown}"

    fuzz()
    health = health_pb2_grpc.HealthStub(stack.channel(service))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    assert COUNTED[method.full_name] >= 1


GARBAGE_PER_RPC = 12
GARBAGE_COUNTED: dict[str, int] = {}


def garbage_bodies(rng: random.Random) -> list[bytes]:
    """Bodies no well-behaved client sends: random bytes, truncations, bad UTF-8, absurd lengths, deep nesting."""
    bodies = [
        b"\xff" * 7,
        b"\x0a\x02\xff\xfe",  # field 1 (shop_id, a string) holding invalid UTF-8
        b"\x0a\xff\xff\xff\xff\x0f",  # a length far beyond the body
        b"\x0b" * 200 + b"\x0c" * 200,  # groups nested 200 deep, unterminated shapes
        b"\x12" + b"\x02\x12" * 150,  # nested length-delimited fields
        b"\x08",  # a tag with no value
    ]
    bodies += [rng.randbytes(rng.choice([1, 3, 17, 255, 4096])) for _ in range(GARBAGE_PER_RPC - len(bodies))]
    return bodies


def call_raw(stack: Stack, service: str, method: MethodDescriptor, body: bytes) -> None:
    invoke(stack, service, method, body, A, _raw, _raw)


def _raw(body: bytes) -> bytes:
    return body


def resident_megabytes() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_garbage_frames_get_documented_statuses_and_the_servers_stay_up_and_bounded(stack: Stack) -> None:
    """Every RPC gets frames that do not parse: INVALID_ARGUMENT (or another documented refusal when the
    bytes happen to parse), never INTERNAL or UNKNOWN; afterwards every service is healthy and the
    process (which hosts the four services) has not grown without bound."""
    rng = random.Random(20261123)
    for service, method in METHODS[:3]:  # warm up channels and caches before the memory baseline
        with contextlib.suppress(grpc.RpcError):
            call_raw(stack, service, method, b"\xff")
    before = resident_megabytes()
    for _round in range(3):
        for service, method in METHODS:
            for body in garbage_bodies(rng):
                GARBAGE_COUNTED[method.full_name] = GARBAGE_COUNTED.get(method.full_name, 0) + 1
                try:
                    call_raw(stack, service, method, body)
                except grpc.RpcError as exc:
                    assert exc.code() in DOCUMENTED, (
                        f"{method.full_name}: {exc.code()} {exc.details()} for {body[:40]!r}"
                    )
    grown = resident_megabytes() - before
    assert grown < 150, f"resident memory grew {grown:.0f} MB over {sum(GARBAGE_COUNTED.values())} garbage frames"
    for service in {s for s, _ in METHODS}:
        health = health_pb2_grpc.HealthStub(stack.channel(service))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_a_garbage_frame_is_named_invalid_argument_with_the_expected_type(stack: Stack) -> None:
    method = next(m for s, m in METHODS if m.name == "AdjustPoints")
    with pytest.raises(grpc.RpcError) as refused:
        call_raw(stack, "points", method, b"\x0a\x02\xff\xfe")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "loyalty.points.v1.AdjustPointsRequest" in str(refused.value.details())
