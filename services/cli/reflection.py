"""Generic calls through server reflection: a grpcurl that installs with the project.

The services publish their descriptors (grpcio-reflection); this reads them
back, so any method can be listed, described and called with proto3 JSON,
without generated stubs and without the proto files at hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.common.channels import peer_channel


class UnknownName(LookupError):
    """No service or method by that name on any of the targets."""


@dataclass
class Reflected:
    """One target's services, read through its reflection service."""

    name: str
    target: str
    pool: DescriptorPool
    services: list[str]


def json_fields(message: Message) -> dict[str, Any]:
    """A message as loyaltyctl prints it: proto3 JSON with the proto's field names and zeros kept."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def reflect(name: str, target: str) -> Reflected:
    database = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(target))
    services = sorted(database.get_services())
    return Reflected(name, target, DescriptorPool(database), services)


def find_service(targets: dict[str, str], service_name: str) -> tuple[Reflected, ServiceDescriptor]:
    """The target that serves `service_name` (our own services first; health and reflection are on all)."""
    for name, target in targets.items():
        reflected = reflect(name, target)
        if service_name in reflected.services:
            return reflected, reflected.pool.FindServiceByName(service_name)
    raise UnknownName(f"no service {service_name!r} on {', '.join(targets.values())}; `loyaltyctl rpc list` shows them")


def find_method(service: ServiceDescriptor, method_name: str) -> MethodDescriptor:
    method = service.methods_by_name.get(method_name)
    if method is None:
        known = ", ".join(sorted(service.methods_by_name))
        raise UnknownName(f"{service.full_name} has no method {method_name!r}; it has {known}")
    return method


def signature(method: MethodDescriptor) -> str:
    """`Name(Request) returns (stream Response)`, as the proto file declares it."""
    request = ("stream " if method.client_streaming else "") + method.input_type.full_name
    response = ("stream " if method.server_streaming else "") + method.output_type.full_name
    return f"{method.name}({request}) returns ({response})"


def describe_message(message: Descriptor, indent: str = "  ") -> Iterator[str]:
    """The fields of a request type, one line each, as the proto file declares them."""
    for field in message.fields:
        if field.message_type is not None:
            kind = field.message_type.full_name
        elif field.enum_type is not None:
            kind = field.enum_type.full_name
        else:
            kind = _SCALARS[field.type]
        repeated = "repeated " if field.is_repeated else ""
        yield f"{indent}{repeated}{kind} {field.name} = {field.number};"


# FieldDescriptor.TYPE_INT64 -> "int64", ...: the proto spelling of every scalar type.
_SCALARS = {
    getattr(FieldDescriptor, name): name.removeprefix("TYPE_").lower()
    for name in dir(FieldDescriptor)
    if name.startswith("TYPE_")
}


def call(target: str, token: str, method: MethodDescriptor, data: str, timeout: float) -> Iterator[str]:
    """Calls `method` with the JSON `data` (a JSON array of messages for a client stream); yields JSON answers."""
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)

    def parse(value: Any) -> Message:
        return json_format.ParseDict(value, request_type())

    loaded = json.loads(data or "{}")
    path = f"/{method.containing_service.full_name}/{method.name}"
    channel = peer_channel(target, token)
    serialize, deserialize = request_type.SerializeToString, response_type.FromString
    if method.client_streaming:
        requests = iter([parse(item) for item in (loaded if isinstance(loaded, list) else [loaded])])
        if method.server_streaming:
            answers: Any = channel.stream_stream(path, serialize, deserialize)(requests, timeout=timeout)
        else:
            answers = [channel.stream_unary(path, serialize, deserialize)(requests, timeout=timeout)]
    elif method.server_streaming:
        answers = channel.unary_stream(path, serialize, deserialize)(parse(loaded), timeout=timeout)
    else:
        answers = [channel.unary_unary(path, serialize, deserialize)(parse(loaded), timeout=timeout)]
    for answer in answers:
        yield json.dumps(json_fields(answer), indent=2, ensure_ascii=False)
