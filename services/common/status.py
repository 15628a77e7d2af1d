"""The one place where domain errors become gRPC statuses (AIP-193 details)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import DomainError, ErrorKind, InvalidArgument

ERROR_DOMAIN = "loyalty.suite"

_CODES: dict[ErrorKind, int] = {
    ErrorKind.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: code_pb2.NOT_FOUND,
    ErrorKind.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    ErrorKind.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    ErrorKind.ABORTED: code_pb2.ABORTED,
    ErrorKind.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    ErrorKind.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    ErrorKind.UNAVAILABLE: code_pb2.UNAVAILABLE,
    ErrorKind.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    ErrorKind.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
}


def _packed(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(error: DomainError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    details = [_packed(info)]
    if isinstance(error, InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        details.append(_packed(bad))
    status = status_pb2.Status(code=_CODES[error.kind], message=error.message[:2000], details=details)
    return rpc_status.to_status(status)


def internal_status(incident_id: str) -> grpc.Status:
    """What a caller sees of a bug: no internals, an id to find the log line."""
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"incident_id": incident_id})
    status = status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error (incident {incident_id})", details=[_packed(info)]
    )
    return rpc_status.to_status(status)
