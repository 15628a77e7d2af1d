"""One trace per due delivery: the worker that created it, the relay that sent its events (whichever replica),
the metrics and points calls they made, and those services' database transactions; trace ids in the access log.

The stack runs with an in-memory span exporter. A replica "killed" between
writing and sending is simulated the way a SIGKILL leaves things: its relay
claimed the events and never sent them; after the lease another relay, with
nothing of the first in memory, sends them from the rows alone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2 as cd
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.channels import peer_channel
from services.common.clock import utc_now
from services.common.db import Database
from services.common.migrations import upgrade
from services.common.orders import PaidOrder
from services.common.outbox import OutboxEvent, OutboxRelay
from services.common.tracing import Tracing, tracing_enabled
from services.cycle_delivery import store, workers
from tests.integration.test_cycle_delivery_subscriptions import START, Shop
from tests.integration.test_cycle_delivery_worker_crash import CREATED_AT, WORKERS_RUN_AT
from tests.support import ROOT, TOKENS, FakeClock, Stack, database_template, specs, start_stack

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


def test_a_trace_survives_the_sigkill_of_the_replica_that_wrote_the_events(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    """A real replica process creates due deliveries (traced), claims their events and is SIGKILLed before sending;
    a relay elsewhere sends them later, continuing each delivery's trace from its stored context alone."""
    if backend != "postgresql":
        pytest.skip("a second process on one database: PostgreSQL")
    url = database_url.replace("{service}", "cycle_delivery")
    upgrade(specs()["cycle_delivery"].migrations, url)
    db = Database(url, pool_size=2)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    receivers = start_stack(database_url, only=("metrics", "points"), tracer_provider=provider)
    try:
        subscribe_few(db, 3)
        targets = [receivers.services["metrics"].address, receivers.services["points"].address, TOKENS["peer"][0]]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OTEL_TRACES_EXPORTER": "discard"}
        env["DELIVERY_REPLICA_HANG_AFTER_CLAIM"] = "1"
        victim = subprocess.Popen(
            [sys.executable, "-m", "tests.delivery_worker_process", url, WORKERS_RUN_AT.isoformat(), *targets],
            cwd=ROOT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while not claimed_all(db) and time.monotonic() < deadline and victim.poll() is None:
                time.sleep(0.1)
            assert claimed_all(db), "the replica never claimed its events"
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
        stored = db.run(lambda s: list(s.scalars(select(OutboxEvent.trace_context))))
        assert len(stored) == 6  # 3 deliveries, to metrics and to points
        assert all(stored)
        time.sleep(3.5)  # the killed replica's lease (RELAY_LEASE) runs out
        tracing = Tracing(provider, "cycle_delivery")
        channels = {
            name: tracing.instrument_channel(peer_channel(receivers.services[name].address, TOKENS["peer"][0]))
            for name in ("metrics", "points")
        }
        assert OutboxRelay(db, channels.__getitem__, utc_now, tracing=tracing).drain() == 6
        spans = list(exporter.get_finished_spans())
        for traceparent in set(stored):
            _version, trace_hex, parent_hex, _flags = traceparent.split("-")
            trace = by_trace(spans, int(trace_hex, 16))
            relays = [s for s in trace if s.name == "outbox.relay"]
            assert len(relays) == 2
            assert all(s.parent is not None and f"{s.parent.span_id:016x}" == parent_hex for s in relays)
            served = {s.name for s in trace if s.kind == SpanKind.SERVER}
            assert served == {
                "/loyalty.metrics.v1.MetricsService/RecordOrders",
                "/loyalty.points.v1.PointsService/EarnForOrder",
            }
    finally:
        receivers.stop()
        db.dispose()


def subscribe_few(db: Database, count: int) -> None:
    plan = cd.Plan(
        plan_id="daily-milk",
        sku="milk",
        rule=cd.ScheduleRule(cadence=cd.CADENCE_DAILY),
        delivery_count=1,
        lead_time_days=1,
        cutoff_minute=18 * 60,
        price_per_delivery=common_pb2.Money(amount_minor=800, currency="CNY"),
    )

    def subscribe(session: Session) -> None:
        store.save_plan(session, shop_id="traced-crash", plan=plan, now=CREATED_AT)
        for n in range(count):
            order = PaidOrder(f"t{n}", f"c{n}", CREATED_AT, 800, "CNY", "", 1, (), "")
            store.create_subscription(
                session,
                shop_id="traced-crash",
                order=order,
                plan_id="daily-milk",
                quantity=1,
                address="addr",
                delivery_mode=cd.DELIVERY_MODE_EXPRESS,
                start=date(2026, 3, 3),
                default_zone="Asia/Shanghai",
                now=CREATED_AT,
            )

    db.run(subscribe)


def claimed_all(db: Database) -> bool:
    attempts = db.run(lambda s: list(s.scalars(select(OutboxEvent.attempts))))
    return bool(attempts) and all(a > 0 for a in attempts)
