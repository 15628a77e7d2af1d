"""Summaries a bulk stream leaves stale: marked with the orders, settled by the worker or on read, never lost."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from loyalty.metrics.v1 import metrics_pb2 as m
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.db import Database
from services.common.idempotency import run_idempotent
from services.common.migrations import upgrade
from services.metrics import store
from services.metrics.app import SPEC as METRICS
from services.metrics.models import CustomerSummary, Order, StaleSummary, StaleSummaryBatch
from services.metrics.servicer import parse_orders, record_chunk, record_chunks_together
from services.metrics.workers import settle_stale_summaries
from tests.integration.test_metrics_refunds_stream import A, chunk, metrics
from tests.integration.test_metrics_rpc import order
from tests.support import Stack

ZONE = "Asia/Shanghai"
START = datetime(2026, 3, 1, 1, tzinfo=UTC)
RECEIVED = START + timedelta(days=30)  # chunks arrive after their orders were paid (later is refused)
Row = tuple[str, int, int, int, datetime, datetime]


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The metrics schema with no service running: nothing settles behind the test's back."""
    url = database_url.replace("{service}", "metrics")
    upgrade(METRICS.migrations, url)
    database = Database(url, pool_size=12)
    yield database
    database.dispose()


def summaries(db: Database, shop: str) -> list[Row]:
    def read(session: Session) -> list[Row]:
        rows = session.scalars(
            select(CustomerSummary).where(CustomerSummary.shop_id == shop).order_by(CustomerSummary.customer_id)
        )
        return [
            (r.customer_id, r.order_count, r.purchase_days, r.total_minor, r.first_order_at, r.last_order_at)
            for r in rows
        ]

    return db.run(read)


def stale_customers(db: Database, shop: str) -> set[str]:
    """Customers named by a chunk mark or an expanded mark."""

    def read(session: Session) -> set[str]:
        # Chunk marks first: each statement has its own snapshot on PostgreSQL, and the settler moves a
        # chunk mark to expanded marks in one commit. Read the other way round, a move committed between
        # the two reads hid the marks from both (the worker test then saw "settled" too early).
        batches = list(session.scalars(select(StaleSummaryBatch.customer_ids).where(StaleSummaryBatch.shop_id == shop)))
        queued = session.scalars(select(StaleSummary.customer_id).where(StaleSummary.shop_id == shop))
        return set(queued).union(*(ids.split(store.ID_SEPARATOR) for ids in batches))

    return db.run(read)


def rebuilt(db: Database, shop: str) -> list[Row]:
    """The reference: every summary recomputed in Python from the orders (the rebuild command's path)."""
    db.run(partial(store.rebuild_summaries, shop_id=shop))
    return summaries(db, shop)


def deferred(
    db: Database, shop: str, request_id: str, *orders: object, received_at: datetime = RECEIVED
) -> m.RecordOrdersResponse:
    """A stream chunk as StreamOrders applies it: idempotent by request id, summaries deferred."""
    request = m.RecordOrdersRequest(shop_id=shop, request_id=request_id, orders=list(orders))  # type: ignore[arg-type]
    received = store.BulkChunk(request_id, received_at)
    apply = partial(record_chunk, shop_id=shop, orders=request.orders, received=received, default_zone=ZONE)
    return run_idempotent(db, request, m.RecordOrdersResponse, apply)


def together(db: Database, shop: str, request_id: str, *chunks: list[object]) -> list[m.RecordOrdersResponse]:
    """Chunks as StreamOrders applies a group: committed together, or one by one when they cannot be."""
    requests = [
        m.StreamOrdersRequest(shop_id=shop, request_id=f"{request_id}-{i}", orders=orders)  # type: ignore[arg-type]
        for i, orders in enumerate(chunks)
    ]
    done = record_chunks_together(db, requests, received_at=RECEIVED, default_zone=ZONE, clock=lambda: RECEIVED)
    return done or [deferred(db, shop, r.request_id, *r.orders) for r in requests]


def inline(db: Database, shop: str, request_id: str, *orders: object) -> m.RecordOrdersResponse:
    """RecordOrders: summaries refreshed in the same transaction."""
    request = m.RecordOrdersRequest(shop_id=shop, request_id=request_id, orders=list(orders))  # type: ignore[arg-type]
    parsed = parse_orders(request.orders, now=RECEIVED)

    def apply(session: Session) -> m.RecordOrdersResponse:
        store.record_orders(session, shop_id=shop, orders=parsed, default_zone=ZONE)
        return m.RecordOrdersResponse()

    return run_idempotent(db, request, m.RecordOrdersResponse, apply)


def test_a_deferred_chunk_marks_its_customers_and_a_read_settles_just_that_one(db: Database) -> None:
    shop = "s"
    deferred(db, shop, "c1", order("o1", "ann", START, 100), order("o2", "ann", START + timedelta(days=2), 50))
    deferred(db, shop, "c2", order("o3", "bob", START, 70), order("o4", "ann", START + timedelta(hours=1), 5))
    assert summaries(db, shop) == []  # nothing recomputed chunk by chunk
    assert stale_customers(db, shop) == {"ann", "bob"}
    found = db.run(partial(store.get_summary, shop_id=shop, customer_id="ann"))
    assert found is not None
    summary, currency = found
    # ann: o1 and o4 on Mar 1 (shop time), o2 on Mar 3 -> 3 orders on 2 days, 155 paid.
    assert (summary.order_count, summary.purchase_days, summary.total_minor, currency) == (3, 2, 155, "CNY")
    assert [r[0] for r in summaries(db, shop)] == ["ann"]  # the read recomputed hers alone
    assert stale_customers(db, shop) == {"ann", "bob"}  # the chunk marks name both: the settler still owes bob
    assert settle_stale_summaries(db) == 2
    assert stale_customers(db, shop) == set()
    assert [r[:4] for r in summaries(db, shop)] == [("ann", 3, 2, 155), ("bob", 1, 1, 70)]


def test_a_read_racing_the_settlers_expansion_still_sees_the_customer_stale(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settler moves chunk marks into per-customer marks while a read is checking both."""
    deferred(db, "s", "c1", order("o1", "ann", START, 100))
    check_chunk_marks = store.in_stale_batches

    def expanded_just_before(session: Session, *, shop_id: str, customer_id: str) -> bool:
        db.run(partial(store.expand_stale_batches, shop_id=shop_id))  # another transaction, committed
        return check_chunk_marks(session, shop_id=shop_id, customer_id=customer_id)

    monkeypatch.setattr(store, "in_stale_batches", expanded_just_before)
    found = db.run(partial(store.get_summary, shop_id="s", customer_id="ann"))
    assert found is not None
    assert found[0].total_minor == 100


def test_expanding_chunk_marks_queues_each_customer_once(db: Database) -> None:
    deferred(db, "s", "c1", order("o1", "ann", START, 100), order("o2", "bob", START, 1))
    deferred(db, "s", "c2", order("o3", "ann", START, 100))
    db.run(partial(store.expand_stale_batches, shop_id="s"))
    queued = db.run(lambda s: s.execute(select(StaleSummary.customer_id, StaleSummary.request_id)).all())
    assert sorted(queued) == [("ann", "c1"), ("bob", "c1")]  # ann once, under the first chunk naming her
    assert settle_stale_summaries(db) == 2


def test_a_chunk_of_duplicates_marks_nobody(db: Database) -> None:
    inline(db, "s", "first", order("o1", "ann", START, 100))
    assert deferred(db, "s", "again", order("o1", "ann", START, 100)).duplicates == 1
    assert stale_customers(db, "s") == set()
    assert settle_stale_summaries(db) == 0


def test_a_corrected_order_marks_both_the_customer_it_left_and_the_one_it_joined(db: Database) -> None:
    inline(db, "s", "first", order("o1", "ann", START, 100))
    deferred(db, "s", "fix", order("o1", "bob", START, 100))
    assert stale_customers(db, "s") == {"ann", "bob"}
    settle_stale_summaries(db)
    assert [r[:4] for r in summaries(db, "s")] == [("bob", 1, 1, 100)]


def test_erasing_a_customer_drops_their_marks_and_keeps_the_others(db: Database) -> None:
    deferred(db, "s", "c1", order("o1", "ann", START, 100), order("o2", "bob", START, 70))
    anonymous, moved = db.run(partial(store.erase_customer, shop_id="s", customer_id="ann"))
    assert moved == 1
    assert stale_customers(db, "s") == {"bob"}  # the chunk's mark named her too: she is gone from it, bob is not
    assert [r[0] for r in summaries(db, "s")] == [anonymous]
    settle_stale_summaries(db)
    assert sorted(r[:4] for r in summaries(db, "s")) == sorted([(anonymous, 1, 1, 100), ("bob", 1, 1, 70)])


def test_the_worker_waits_for_a_load_to_go_quiet_but_not_past_the_max_lag(db: Database) -> None:
    """Settling mid-load is thrown away when the next chunk marks the same customers again."""
    quiet, max_lag = timedelta(seconds=1), timedelta(seconds=60)

    def settle_at(now: datetime) -> int:
        return settle_stale_summaries(db, quiet=quiet, max_lag=max_lag, clock=lambda: now)

    deferred(db, "s", "c1", order("o1", "ann", START, 100), received_at=START)
    assert settle_at(START + timedelta(milliseconds=500)) == 0  # the load may still be running
    assert settle_at(START + quiet) == 1  # quiet for a second: settled
    step = timedelta(seconds=0.9)  # a load that never pauses for a second
    for n in range(1, 70):
        deferred(db, "s", f"c{n + 1}", order(f"o{n + 1}", "bob", START, 1), received_at=START + n * step)
        if n == 40:
            assert settle_at(START + n * step) == 0  # 36 s in: still loading, the oldest mark waited 35 s
    newest = START + 69 * step
    assert settle_at(newest) == 1  # the oldest of these marks has waited 61 s: settled all the same
    assert stale_customers(db, "s") == set()
    deferred(db, "s", "late", order("o-late", "cy", START, 5), received_at=newest)
    db.run(partial(store.expand_stale_batches, shop_id="s"))  # as a settler that stopped half-way leaves it
    assert settle_at(newest) == 1  # expanded marks are always due


def random_orders(rng: random.Random, count: int, *, ids: int, customers: int) -> list[object]:
    """Orders over a small id space, so batches repeat, correct and move each other's orders."""
    return [
        order(
            f"o{rng.randrange(ids)}",
            f"c{rng.randrange(customers)}",
            START + timedelta(hours=rng.randrange(24 * 20)),
            rng.choice([0, 1, 99, 1000]),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_settling_in_small_batches_gives_the_rebuilt_summaries(db: Database, seed: int) -> None:
    rng = random.Random(seed)
    shop = f"b{seed}"
    for n in range(12):
        batch = {o.order_id: o for o in random_orders(rng, 40, ids=120, customers=25)}  # type: ignore[attr-defined]
        deferred(db, shop, f"c{n}", *batch.values())
    assert stale_customers(db, shop)
    settle_stale_summaries(db, batch=3)
    assert stale_customers(db, shop) == set()
    settled = summaries(db, shop)
    assert settled
    assert settled == rebuilt(db, shop)


@pytest.mark.parametrize("seed", [11, 12])
def test_concurrent_chunks_writes_settles_and_reads_leave_no_order_unsummarised(db: Database, seed: int) -> None:
    """The invariant: every committed order is in a fresh summary or its customer is marked, at every moment.

    Deferred chunks, inline batches, settles and reads run at once over the same
    customers and order ids (so batches collide on new orders and correct each
    other); then, before any final settle, each unmarked customer's summary must
    equal the one recomputed from the orders.
    """
    rng = random.Random(seed)
    shop = f"x{seed}"
    jobs: list[Callable[[], object]] = []
    submitted: set[str] = set()
    for n in range(48):
        batch = {o.order_id: o for o in random_orders(rng, 25, ids=150, customers=30)}  # type: ignore[attr-defined]
        kind = rng.choice(["deferred", "deferred", "together", "inline", "settle", "read"])
        if kind in ("deferred", "together", "inline"):
            submitted |= set(batch)
        if kind == "deferred":
            jobs.append(partial(deferred, db, shop, f"d{n}", *batch.values()))
        elif kind == "together":  # split in chunks committed as a group, as StreamOrders does
            orders = list(batch.values())
            split = rng.randrange(1, len(orders))
            jobs.append(partial(together, db, shop, f"t{n}", orders[:split], orders[split:]))
        elif kind == "inline":
            jobs.append(partial(inline, db, shop, f"i{n}", *batch.values()))
        elif kind == "settle":
            jobs.append(partial(settle_stale_summaries, db, batch=rng.choice([2, 7, 1000])))
        else:
            jobs.append(partial(db.run, partial(store.get_summary, shop_id=shop, customer_id=f"c{rng.randrange(30)}")))
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    marked = stale_customers(db, shop)
    before = {row[0]: row for row in summaries(db, shop)}
    reference = {row[0]: row for row in rebuilt(db, shop)}
    for customer, row in reference.items():
        if customer not in marked:
            assert before.get(customer) == row, customer
    settle_stale_summaries(db)
    assert {row[0]: row for row in summaries(db, shop)} == reference
    stored = db.run(lambda s: set(s.scalars(select(Order.order_id).where(Order.shop_id == shop))))
    assert stored == submitted  # every acknowledged order is there, once (order_id is the key)


def wait_until_settled(stack: Stack, shop: str, *, timeout: float = 30.0) -> None:
    db = stack.services["metrics"].db
    deadline = time.monotonic() + timeout
    while stale_customers(db, shop):
        assert time.monotonic() < deadline, "the summary worker did not settle the stream's summaries"
        time.sleep(0.05)


def test_a_stream_is_settled_by_the_worker_soon_after_it_ends(stack: Stack, uid: str) -> None:
    shop = f"ws-{uid}"
    rng = random.Random(5)
    chunks = [chunk(f"c{n}", shop, *random_orders(rng, 200, ids=100_000, customers=40)) for n in range(5)]  # type: ignore[arg-type]
    chunks = [chunk(c.request_id, shop, *{o.order_id: o for o in c.orders}.values()) for c in chunks]
    result = metrics(stack).StreamOrders(iter(chunks), metadata=A)
    assert result.chunks == 5
    wait_until_settled(stack, shop)
    db = stack.services["metrics"].db
    assert summaries(db, shop) == rebuilt(db, shop)


def test_two_streams_racing_with_the_same_new_orders_count_each_order_once(stack: Stack, uid: str) -> None:
    shop = f"race-{uid}"
    orders = [order(f"o{i}", f"c{i % 13}", START + timedelta(minutes=i), 100 + i) for i in range(600)]

    def stream(name: str) -> m.StreamOrdersResponse:
        chunks = [chunk(f"{name}{n}", shop, *orders[n * 200 : (n + 1) * 200]) for n in range(3)]
        response: m.StreamOrdersResponse = metrics(stack).StreamOrders(iter(chunks), metadata=A)
        return response

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(stream, ["a", "b", "c", "d"]))
    assert sum(r.inserted for r in results) == 600
    assert sum(r.duplicates for r in results) == 3 * 600
    assert sum(r.corrected for r in results) == 0
    wait_until_settled(stack, shop)
    db = stack.services["metrics"].db
    assert [r[:4] for r in summaries(db, shop)] == [r[:4] for r in rebuilt(db, shop)]
    assert len(summaries(db, shop)) == 13
