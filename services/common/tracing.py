"""OpenTelemetry tracing: off unless the standard OTEL_* variables turn it on.

On: `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`), or
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set
(OTLP over gRPC). `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
keeps it off. The SDK reads the rest itself (`OTEL_TRACES_SAMPLER`,
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, batch sizes...).

Off, a service builds no tracer at all: no interceptor, no span objects, no
per-call cost. On, `Tracing` is what the rest of the code asks for spans:
the gRPC server and client interceptors of opentelemetry-instrumentation-grpc,
a span per database transaction, and W3C trace context carried through the
outbox (stored with an event, restored by the relay that sends it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context, trace
from opentelemetry.instrumentation.grpc import client_interceptor, grpcext, server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()
Attributes = Mapping[str, str | int]
TRACEPARENT = "traceparent"


def tracing_enabled(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


class DiscardingExporter(SpanExporter):
    """Drops every span: tracing's own cost (spans made, sampled, batched), without an exporter's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def exporter_from_env(env: Mapping[str, str] = os.environ) -> SpanExporter:
    """The exporter OTEL_TRACES_EXPORTER names (otlp by default); the OTLP exporter reads its own variables.

    `discard` (not an SDK name) keeps tracing on and throws the spans away: what `make bench` measures.
    """
    name = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if name == "console":
        return ConsoleSpanExporter()
    if name == "discard":
        return DiscardingExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: this suite exports 'otlp', 'console', 'discard' or 'none'")
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def provider_from_env(service: str, env: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """A tracer provider for the service as the environment configures it, None when tracing is off."""
    if not tracing_enabled(env):
        return None
    return batching_provider(service, exporter_from_env(env), env)


def batching_provider(service: str, exporter: SpanExporter, env: Mapping[str, str] = os.environ) -> TracerProvider:
    """Spans batched to `exporter`; the service is `loyalty-<service>` unless OTEL_SERVICE_NAME or
    OTEL_RESOURCE_ATTRIBUTES names it (attributes given here would override the environment's)."""
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": f"loyalty-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


@dataclass(frozen=True)
class Tracing:
    """One service's tracing; `None` where a service holds it means tracing is off."""

    provider: TracerProvider
    service: str

    @property
    def tracer(self) -> trace.Tracer:
        return self.provider.get_tracer(f"loyalty.{self.service}")

    def server_interceptor(self) -> grpc.ServerInterceptor[Any, Any]:
        interceptor: grpc.ServerInterceptor[Any, Any] = server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider
        )
        return interceptor

    def instrument_channel(self, channel: grpc.Channel) -> grpc.Channel:
        interceptor = client_interceptor(tracer_provider=self.provider)  # type: ignore[no-untyped-call]
        traced: grpc.Channel = grpcext.intercept_channel(channel, interceptor)  # type: ignore[no-untyped-call]
        return traced

    @contextmanager
    def span(self, name: str, attributes: Attributes) -> Iterator[trace.Span]:
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    @contextmanager
    def continued(self, carrier: str, name: str, attributes: Attributes) -> Iterator[trace.Span]:
        """A span in the trace whose context `carrier` (a stored traceparent) holds; a new trace if it holds none."""
        parent = PROPAGATOR.extract({TRACEPARENT: carrier}) if carrier else context.Context()
        with self.tracer.start_as_current_span(
            name, context=parent, kind=trace.SpanKind.PRODUCER, attributes=attributes
        ) as span:
            yield span

    def root_traceparent(self, name: str, attributes: Attributes) -> str:
        """Starts and ends a span at the root of a new trace (work that no request started); its traceparent."""
        span = self.tracer.start_span(name, context=context.Context(), attributes=attributes)
        span.end()
        return traceparent_of(trace.set_span_in_context(span))


def current_traceparent() -> str:
    """The current span's W3C traceparent, "" outside any sampled span (e.g. tracing off)."""
    return traceparent_of(None)


def traceparent_of(ctx: context.Context | None) -> str:
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=ctx)
    return carrier.get(TRACEPARENT, "")


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for the access log; None outside a recorded span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"
