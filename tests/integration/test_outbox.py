"""The transactional outbox: exactly-once effect across concurrent relays, retries, dead events, leases."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import pytest
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from sqlalchemy import select

from services.common.channels import peer_channel
from services.common.db import Database
from services.common.outbox import Backlog, OutboxEvent, OutboxRelay, enqueue, purge_delivered
from tests.integration.test_metrics_rpc import order
from tests.support import TOKENS, FakeClock, Stack, bearer, free_port, migrated_database

RECORD_ORDERS = "/loyalty.metrics.v1.MetricsService/RecordOrders"


class CountingChannels:
    """Channels to the stack that count every send per request payload."""

    def __init__(self, stack: Stack, *, broken: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.sent: Counter[bytes] = Counter()
        self.lock = threading.Lock()
        self.channels = {
            name: peer_channel(
                f"127.0.0.1:{free_port()}" if name in broken else stack.services[name].address, TOKENS["peer"][0]
            )
            for name in ("metrics", "points")
        }

    def __call__(self, destination: str) -> Any:
        counter = self

        class Counted:
            def unary_unary(self, method: str, **kwargs: Any) -> Callable[..., Any]:
                call = counter.channels[destination].unary_unary(method, **kwargs)

                def send(payload: bytes, **options: Any) -> Any:
                    with counter.lock:
                        counter.sent[payload] += 1
                    return call(payload, **options)

                return send

        return Counted()


@pytest.fixture
def outbox_db(database_url: str) -> Iterator[Database]:
    with migrated_database(database_url, "cycle_delivery", pool_size=8) as db:
        yield db


def add_events(db: Database, uid: str, count: int, clock: FakeClock) -> None:
    def write(session: Any) -> None:
        for i in range(count):
            request = metrics_pb2.RecordOrdersRequest(
                shop_id="shop-a", orders=[order(f"{uid}-{i}", f"{uid}-c", datetime(2026, 5, 1, tzinfo=UTC), 100)]
            )
            enqueue(
                session,
                destination="metrics",
                method=RECORD_ORDERS,
                request=request,
                event_id=f"{uid}-e{i}",
                now=clock(),
            )

    db.run(write)


def order_count(stack: Stack, customer: str) -> int:
    stub = metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics"))
    try:
        return int(
            stub.GetCustomerSummary(
                metrics_pb2.GetCustomerSummaryRequest(shop_id="shop-a", customer_id=customer), metadata=bearer("reader")
            ).summary.order_count
        )
    except grpc.RpcError:
        return 0


def events(db: Database) -> list[OutboxEvent]:
    return db.run(lambda s: list(s.scalars(select(OutboxEvent).order_by(OutboxEvent.id))))


def test_concurrent_relays_deliver_every_event_once(stack: Stack, outbox_db: Database, uid: str) -> None:
    clock = FakeClock()
    add_events(outbox_db, uid, 250, clock)
    channels = CountingChannels(stack)
    relays = [OutboxRelay(outbox_db, channels, clock, batch_size=20) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        delivered = sum(pool.map(lambda r: r.drain(), relays))
    assert delivered == 250
    assert all(e.delivered_at is not None and e.attempts == 1 for e in events(outbox_db))
    assert order_count(stack, f"{uid}-c") == 250
    assert set(channels.sent.values()) == {1}, "an event was sent twice"


def test_refused_event_is_dead_and_never_retried(stack: Stack, outbox_db: Database, uid: str) -> None:
    clock = FakeClock()
    bad = metrics_pb2.RecordOrdersRequest(shop_id="shop-a", orders=[order(f"{uid}-x", "", clock(), -5)])
    outbox_db.run(
        lambda s: enqueue(
            s, destination="metrics", method=RECORD_ORDERS, request=bad, event_id=f"{uid}-bad", now=clock()
        )
    )
    relay = OutboxRelay(outbox_db, CountingChannels(stack), clock)
    assert relay.drain() == 0
    clock.now += timedelta(days=1)
    assert relay.drain() == 0
    [event] = events(outbox_db)
    assert (event.dead, event.attempts, event.delivered_at) == (True, 1, None)
    assert event.last_error.startswith("INVALID_ARGUMENT")


def test_unreachable_destination_backs_off_then_delivers(stack: Stack, outbox_db: Database, uid: str) -> None:
    clock = FakeClock()
    add_events(outbox_db, uid, 3, clock)
    down = OutboxRelay(outbox_db, CountingChannels(stack, broken={"metrics"}), clock, timeout_seconds=2)
    assert down.drain() == 0
    after_first = events(outbox_db)
    assert all(e.attempts == 1 and not e.dead and e.next_attempt_at > clock() for e in after_first)
    assert all(e.last_error.startswith("UNAVAILABLE") for e in after_first)
    up = OutboxRelay(outbox_db, CountingChannels(stack), clock)
    assert up.drain() == 0  # not due yet: backoff holds
    clock.now += timedelta(minutes=10)
    assert up.drain() == 3
    assert order_count(stack, f"{uid}-c") == 3


def test_a_crashed_relays_claim_expires_and_the_resend_is_absorbed(stack: Stack, outbox_db: Database, uid: str) -> None:
    clock = FakeClock()
    add_events(outbox_db, uid, 5, clock)
    channels = CountingChannels(stack)
    crashed = OutboxRelay(outbox_db, channels, clock)
    claimed = outbox_db.run(crashed._claim)
    for event in claimed:  # sent, then the relay dies before recording the outcome
        crashed._send(event)
    survivor = OutboxRelay(outbox_db, channels, clock)
    assert survivor.drain() == 0  # still leased
    clock.now += crashed.lease + timedelta(seconds=1)
    assert survivor.drain() == 5
    assert set(channels.sent.values()) == {2}  # sent twice...
    assert order_count(stack, f"{uid}-c") == 5  # ...applied once


def test_delivered_events_are_purged_after_the_retention_window(stack: Stack, outbox_db: Database, uid: str) -> None:
    clock = FakeClock()
    add_events(outbox_db, uid, 3, clock)
    OutboxRelay(outbox_db, CountingChannels(stack), clock, batch_size=20).drain()
    add_events(outbox_db, f"{uid}-later", 2, clock)  # queued, not delivered: never purged
    later = clock.now + timedelta(days=31)
    purged = outbox_db.run(lambda s: purge_delivered(s, older_than=timedelta(days=30), now=later))
    assert purged >= 3
    left = [e for e in events(outbox_db) if e.event_id.startswith(uid)]
    assert len(left) == 2
    assert all(e.delivered_at is None for e in left)


def test_destinations_are_sent_side_by_side_and_each_in_claim_order(outbox_db: Database, uid: str) -> None:
    """A slow receiver does not hold up the others' events: metrics here answers only once points was called."""
    clock = FakeClock()

    def write(session: Any) -> None:
        for i in range(6):
            for destination in ("metrics", "points"):
                request = metrics_pb2.RecordOrdersRequest(shop_id="shop-a")
                enqueue(
                    session,
                    destination=destination,
                    method=RECORD_ORDERS,
                    request=request,
                    event_id=f"{uid}-{destination}-{i}",
                    now=clock(),
                )

    outbox_db.run(write)
    points_called = threading.Event()
    received: dict[str, list[str]] = {"metrics": [], "points": []}

    class Receiver:
        def __init__(self, destination: str) -> None:
            self.destination = destination

        def unary_unary(self, _method: str, **_kwargs: Any) -> Callable[..., bytes]:
            def call(payload: bytes, **_options: Any) -> bytes:
                request = metrics_pb2.RecordOrdersRequest.FromString(payload)
                if self.destination == "metrics" and not points_called.wait(5):
                    raise AssertionError("metrics was called and waited: points' events were held behind it")
                points_called.set()
                received[self.destination].append(request.request_id)
                return b""

            return call

    relay = OutboxRelay(outbox_db, lambda destination: cast(grpc.Channel, Receiver(destination)), clock, batch_size=12)
    assert relay.relay_once() == 12
    assert received == {d: [f"{uid}-{d}-{i}" for i in range(6)] for d in ("metrics", "points")}


def test_the_backlog_counts_waiting_and_dead_events_and_the_oldest_wait(
    stack: Stack, outbox_db: Database, uid: str
) -> None:
    """What the outbox gauges export (loyalty_backlog_items, loyalty_worker_lag_seconds) after each drain."""
    clock = FakeClock()
    add_events(outbox_db, uid, 3, clock)
    bad = metrics_pb2.RecordOrdersRequest(shop_id="shop-a", orders=[order(f"{uid}-x", "", clock(), -5)])
    outbox_db.run(
        lambda s: enqueue(s, destination="metrics", method=RECORD_ORDERS, request=bad, event_id=f"{uid}-b", now=clock())
    )
    clock.now += timedelta(seconds=90)
    down = OutboxRelay(outbox_db, CountingChannels(stack, broken={"metrics"}), clock, timeout_seconds=2)
    down.drain()  # metrics unreachable: nothing delivered, nothing refused yet
    assert down.backlog() == Backlog(waiting=4, dead=0, oldest_age_seconds=90.0)
    clock.now += timedelta(minutes=10)
    up = OutboxRelay(outbox_db, CountingChannels(stack), clock)
    up.drain()
    assert up.backlog() == Backlog(waiting=0, dead=1, oldest_age_seconds=0.0)  # the bad one refused for good
