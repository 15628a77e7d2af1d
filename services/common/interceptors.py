"""The guard every RPC passes: auth, shop/scope checks, error mapping, access log, metrics.

One interceptor wraps each method handler so that a caller always gets a
documented status: domain errors map through `services.common.status`, a lost
database becomes UNAVAILABLE, and anything unexpected becomes INTERNAL with an
incident id (the trace goes to the log, never to the caller).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import grpc
import sqlalchemy.exc
import structlog
from google.protobuf import descriptor_pool
from loyalty.common.v1 import common_pb2
from opentelemetry import trace

from services.common.auth import Principal, TokenRegistry, authorize
from services.common.channels import rpc_code
from services.common.clock import Clock, utc_now
from services.common.deadlines import caller_deadline
from services.common.errors import DomainError, FieldViolation, InvalidArgument, PermissionDenied, Unavailable
from services.common.status import internal_status, to_status
from services.common.telemetry import RPC_SECONDS, RPC_TOTAL
from services.common.tracing import current_ids
from services.common.validation import ID_PATTERN

log = structlog.get_logger("rpc")

OPEN_SERVICES = frozenset(
    {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)
_SCOPE_NAMES = {common_pb2.SCOPE_READ: "read", common_pb2.SCOPE_WRITE: "write", common_pb2.SCOPE_ADMIN: "admin"}
# Transient peer failures that mean "try again", not "bug".
_PEER_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


@lru_cache(maxsize=1024)
def required_scope(full_method: str) -> str | None:
    """The scope a method declares in its proto; None when it declares none (refused)."""
    service_name, _, method_name = full_method.lstrip("/").partition("/")
    try:
        method = descriptor_pool.Default().FindServiceByName(service_name).FindMethodByName(method_name)
    except KeyError:
        return None
    return _SCOPE_NAMES.get(method.GetOptions().Extensions[common_pb2.required_scope])


def classify(exc: BaseException) -> DomainError | None:
    """The domain error an exception stands for; None for a bug."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return Unavailable("database unavailable, retry with the same request_id", reason="DATABASE_UNAVAILABLE")
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return Unavailable("database connection lost, retry with the same request_id", reason="DATABASE_UNAVAILABLE")
    peer_code = rpc_code(exc)
    if peer_code in _PEER_RETRYABLE:
        assert peer_code is not None
        return Unavailable(f"a dependency is unavailable ({peer_code.name}), retry later", reason="PEER_UNAVAILABLE")
    return None


@dataclass(frozen=True)
class Undecodable:
    """A request body that does not parse as the method's message (garbage, truncated, invalid UTF-8).

    gRPC would answer a failing deserializer with INTERNAL; the guard answers
    INVALID_ARGUMENT instead, after authentication, like any other bad request.
    """

    type_name: str
    error: str


def decoder(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """The method's deserializer, returning Undecodable instead of raising.

    The guard decodes in the handler's thread: gRPC would decode on its one
    polling thread, which every call of the process waits on.
    """
    if deserializer is None:
        return lambda body: body
    owner = getattr(deserializer, "__self__", None)
    type_name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def decode(body: bytes) -> Any:
        try:
            return deserializer(body)
        except Exception as exc:  # DecodeError, UnicodeDecodeError, RecursionError: all mean a bad body
            return Undecodable(type_name, type(exc).__name__)

    return decode


class _Guard:
    """Per-call state of one RPC."""

    def __init__(
        self, registry: TokenRegistry, clock: Clock, method: str, metadata: dict[str, str], *, traced: bool = False
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.method = method
        self.metadata = metadata
        self.traced = traced
        self.started = time.perf_counter()
        self.shop_id = ""
        self.request_id = ""

    # -- checks -----------------------------------------------------------
    def principal(self) -> Principal:
        principal = self.registry.authenticate(self.metadata.get("authorization"), self.clock())
        scope = required_scope(self.method)
        if scope is None:
            raise PermissionDenied("method declares no required scope; refused", reason="SCOPE_UNDECLARED")
        self.scope = scope
        return principal

    def check_message(self, principal: Principal, message: Any) -> None:
        if isinstance(message, Undecodable):
            raise InvalidArgument(
                [FieldViolation("(request)", f"is not a valid {message.type_name} message ({message.error})")],
                reason="UNDECODABLE_REQUEST",
            )
        shop_id = getattr(message, "shop_id", "")
        if not self.shop_id:
            self.shop_id = shop_id if ID_PATTERN.match(shop_id or "") else ""
            self.request_id = getattr(message, "request_id", "")[:64]
            if self.traced and self.shop_id:
                trace.get_current_span().set_attribute("loyalty.shop_id", self.shop_id)
        if not shop_id:
            raise InvalidArgument([FieldViolation("shop_id", "is required")])
        if not ID_PATTERN.match(shop_id):
            raise InvalidArgument([FieldViolation("shop_id", "must be 1-64 characters of [A-Za-z0-9_.:-]")])
        if shop_id != self.shop_id:
            raise InvalidArgument([FieldViolation("shop_id", "must be the same in every message of a stream")])
        authorize(principal, scope=self.scope, shop_id=shop_id)

    def checked_stream(self, principal: Principal, messages: Iterator[Any]) -> Iterator[Any]:
        for message in messages:
            self.check_message(principal, message)
            yield message

    # -- outcome ----------------------------------------------------------
    def finish(self, code: grpc.StatusCode, **extra: Any) -> None:
        elapsed = time.perf_counter() - self.started
        RPC_TOTAL.labels(self.method, code.name).inc()
        RPC_SECONDS.labels(self.method).observe(elapsed)
        if self.traced and (ids := current_ids()) is not None:  # logs and traces join on these
            extra = {"trace_id": ids[0], "span_id": ids[1], **extra}
        log.info(
            "rpc",
            method=self.method,
            shop_id=self.shop_id,
            request_id=self.request_id,
            status=code.name,
            duration_ms=round(elapsed * 1000, 3),
            **extra,
        )

    def fail(self, exc: Exception, context: grpc.ServicerContext) -> None:
        """Answers the caller with the status `exc` stands for; always raises."""
        already = context.code() if hasattr(context, "code") else None
        if already is not None and already != grpc.StatusCode.OK:
            self.finish(already)
            raise exc
        error = classify(exc)
        if error is None:
            incident = uuid.uuid4().hex[:12]
            log.error(
                "rpc_unexpected_error", method=self.method, shop_id=self.shop_id, incident_id=incident, exc_info=exc
            )
            self.finish(grpc.StatusCode.INTERNAL, incident_id=incident)
            context.abort_with_status(internal_status(incident))
        else:
            status = to_status(error)
            self.finish(status.code, reason=error.reason)
            context.abort_with_status(status)
        raise exc  # abort_with_status raises; this line only satisfies type checkers


Behavior = Callable[[Any, grpc.ServicerContext], Any]


if TYPE_CHECKING:  # generic in the stubs only
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor


class GuardInterceptor(_ServerInterceptor):
    """Wraps every handler of our services; health and reflection stay open.

    A method's wrapped handler is built once and reused: gRPC asks for it on
    every call, and the guard's own work per call is what the hot path pays.
    """

    def __init__(self, registry: TokenRegistry, clock: Clock = utc_now, *, traced: bool = False) -> None:
        self.registry = registry
        self.clock = clock
        self.traced = traced  # tracing on: spans carry the shop, access log lines the trace and span ids
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = details.method
        try:
            return self._handlers[method]
        except KeyError:
            pass
        handler = continuation(details)
        if handler is None:
            return None  # an unknown method: not remembered, a caller could name endless ones
        if method.lstrip("/").partition("/")[0] not in OPEN_SERVICES:
            handler = self._guarded(method, handler)
        self._handlers[method] = handler
        return handler

    def _guarded(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        registry, clock, traced = self.registry, self.clock, self.traced
        decode = decoder(handler.request_deserializer)

        def guarded(behavior: Behavior, request_streaming: bool, response_streaming: bool) -> Behavior:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
                guard = _Guard(registry, clock, method, metadata, traced=traced)
                try:
                    principal = guard.principal()
                    if request_streaming:
                        request = guard.checked_stream(principal, map(decode, request))
                    else:
                        request = decode(request)
                        guard.check_message(principal, request)
                    with (
                        structlog.contextvars.bound_contextvars(shop_id=guard.shop_id, request_id=guard.request_id),
                        caller_deadline(context.time_remaining()),
                    ):
                        result = behavior(request, context)
                except Exception as exc:
                    guard.fail(exc, context)
                if response_streaming:
                    return _streamed(guard, result, context)
                guard.finish(grpc.StatusCode.OK)
                return result

            return run

        kinds = {
            "unary_unary": (grpc.unary_unary_rpc_method_handler, False, False),
            "unary_stream": (grpc.unary_stream_rpc_method_handler, False, True),
            "stream_unary": (grpc.stream_unary_rpc_method_handler, True, False),
            "stream_stream": (grpc.stream_stream_rpc_method_handler, True, True),
        }
        for attribute, (factory, request_streaming, response_streaming) in kinds.items():
            behavior = getattr(handler, attribute)
            if behavior is not None:
                wrapped: grpc.RpcMethodHandler[Any, Any] = factory(
                    guarded(behavior, request_streaming, response_streaming),
                    request_deserializer=None,  # bytes: `run` decodes them
                    response_serializer=handler.response_serializer,
                )
                return wrapped
        return handler


def _streamed(guard: _Guard, responses: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    try:
        yield from responses
    except Exception as exc:
        guard.fail(exc, context)
    guard.finish(grpc.StatusCode.OK)
