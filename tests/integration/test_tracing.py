"""One trace per due delivery: the worker that created it, the relay that sent its events (whichever replica),
the metrics and points calls they made, and those services' database transactions; trace ids in the access log.

The stack runs with an in-memory span exporter. A replica "killed" between
writing and sending is simulated the way a SIGKILL leaves things: its relay
claimed the events and never sent them; after the lease another relay, with
nothing of the first in memory, sends them from the rows alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.common.outbox import OutboxRelay
from services.common.tracing import tracing_enabled
from services.cycle_delivery import workers
from tests.integration.test_cycle_delivery_subscriptions import START, Shop
from tests.support import FakeClock, Stack, database_template, start_stack

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(scope="module")
def traced(backend: str, clock: FakeClock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    with database_template(backend, tmp_path_factory.mktemp("traced")) as url:
        running = start_stack(
            url, clock=clock, tracer_provider=provider, delivery_worker_seconds=3600.0, outbox_relay_seconds=3600.0
        )
        for service in running.services.values():  # the test runs the worker and the relays itself
            for worker in service.workers:
                if worker.name in ("delivery-creation", "outbox-relay"):
                    worker.stop(timeout=30)
        try:
            yield running
        finally:
            running.stop()


def by_trace(spans: list[ReadableSpan], trace_id: int) -> list[ReadableSpan]:
    return [s for s in spans if s.context is not None and s.context.trace_id == trace_id]


def delivery_root(spans: list[ReadableSpan], index: int) -> ReadableSpan:
    [root] = [
        s
        for s in spans
        if s.name == "cycle_delivery.create_due_delivery" and s.attributes and s.attributes.get("index") == index
    ]
    return root


def test_a_due_delivery_is_one_trace_from_the_worker_to_the_points_it_earned(
    traced: Stack, clock: FakeClock, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    EXPORTER.clear()
    clock.now = START
    shop = Shop(traced, uid)
    shop.plan()
    shop.subscribe(customer="traced")
    cycle = traced.services["cycle_delivery"]
    clock.now = datetime(2026, 3, 2, 16, 1, tzinfo=UTC)  # Mon (catching up), Tue and Wed are due
    assert workers.create_due_deliveries(cycle.context) == 3

    # The replica that wrote the events claims them and dies before sending: nothing it holds survives.
    doomed = OutboxRelay(cycle.db, cycle.context.peers.channel, clock, tracing=cycle.tracing)
    assert len(cycle.db.run(doomed._claim)) > 0
    clock.now += timedelta(minutes=5)  # past the lease
    survivor = traced.services["cycle_delivery"].relay  # another relay, with only the rows to go on
    assert survivor.drain() > 0

    spans = list(EXPORTER.get_finished_spans())
    root = delivery_root(spans, 0)
    assert root.context is not None
    trace = by_trace(spans, root.context.trace_id)
    names = [s.name for s in trace]
    relays = [s for s in trace if s.name == "outbox.relay"]
    assert relays, names
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in relays)
    calls = {(s.name, s.kind) for s in trace}
    for method in ("/loyalty.metrics.v1.MetricsService/RecordOrders", "/loyalty.points.v1.PointsService/EarnForOrder"):
        assert (method, SpanKind.CLIENT) in calls, names
        assert (method, SpanKind.SERVER) in calls, names
    servers = [s for s in trace if s.kind == SpanKind.SERVER]
    assert {s.attributes.get("loyalty.shop_id") for s in servers if s.attributes} == {shop.id}
    server_ids = {s.context.span_id for s in servers if s.context is not None}
    assert any(s.name == "db.transaction" and s.parent and s.parent.span_id in server_ids for s in trace)
    # Each delivery is its own trace: the second delivery's calls are not in the first's.
    other = delivery_root(spans, 1)
    assert other.context is not None
    assert other.context.trace_id != root.context.trace_id
    assert by_trace(spans, other.context.trace_id)

    # Logs and traces join: the servers' access log lines carry the trace and span ids.
    logged = capsys.readouterr().out
    trace_hex = f"{root.context.trace_id:032x}"
    lines = [line for line in logged.splitlines() if trace_hex in line and "RecordOrders" in line]
    assert lines, "no access log line names the delivery's trace"
    assert all(re.search(r"span_id[=\":\s]+[0-9a-f]{16}", line) for line in lines)


def test_tracing_is_off_unless_the_standard_variables_turn_it_on() -> None:
    assert not tracing_enabled({})
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert tracing_enabled({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_enabled({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert not tracing_enabled({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})


def test_without_tracing_a_service_builds_no_tracer(stack: Stack) -> None:
    """The default stack (no OTEL_* set): no interceptor, no spans, no trace context in the outbox."""
    assert all(service.tracing is None for service in stack.services.values())
    assert all(service.context.peers.tracing is None for service in stack.services.values())
    assert all(service.db.tracing is None and service.relay.tracing is None for service in stack.services.values())
