"""Domain errors: plain exceptions that say which kind of failure happened.

Domain and store code raise these; `services.common.status` turns them into
gRPC statuses in one place. Nothing here imports grpc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ErrorKind(Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    ABORTED = "ABORTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """A failure the caller can act on; `reason` is UPPER_SNAKE and stable."""

    kind: ErrorKind = ErrorKind.FAILED_PRECONDITION
    reason: str = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(DomainError):
    kind = ErrorKind.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], *, reason: str | None = None) -> None:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"invalid request: {summary}", reason=reason)
        self.violations = list(violations)


class NotFound(DomainError):
    kind = ErrorKind.NOT_FOUND
    reason = "NOT_FOUND"


class FailedPrecondition(DomainError):
    kind = ErrorKind.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class AlreadyExists(DomainError):
    kind = ErrorKind.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class PermissionDenied(DomainError):
    kind = ErrorKind.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    kind = ErrorKind.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class Unavailable(DomainError):
    kind = ErrorKind.UNAVAILABLE
    reason = "UNAVAILABLE"


class ResourceExhausted(DomainError):
    kind = ErrorKind.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(DomainError):
    kind = ErrorKind.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


@dataclass
class Violations:
    """Collects every field problem of a request so the caller sees all at once."""

    found: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, description: str) -> None:
        self.found.append(FieldViolation(field_path, description))

    def check(self, ok: bool, field_path: str, description: str) -> None:
        if not ok:
            self.add(field_path, description)

    def raise_if_any(self) -> None:
        if self.found:
            raise InvalidArgument(self.found)
