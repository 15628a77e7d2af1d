"""The delivery worker: creates every due delivery order exactly once, on any number of replicas.

Each batch is one transaction: claim due deliveries with SKIP LOCKED (another
replica's claimed rows are skipped, not waited for), mark them created and queue
their outbox events, commit. A crash before commit leaves the rows open for the
next tick; after commit the relay owns delivery of the events. After downtime
the worker simply finds more rows due and catches up in bounded batches.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial

import structlog

from services.common.db import Database
from services.common.server import ServiceContext, Worker
from services.common.telemetry import BACKLOG, WORKER_LAG_SECONDS
from services.common.tracing import Attributes, Tracing
from services.cycle_delivery import store
from services.cycle_delivery.models import DeliveryRecord

log = structlog.get_logger("cycle_delivery.worker")
BATCH = 500  # deliveries per transaction: larger batches amortise the claim query (see bench/cycle_bench.py)
MAX_BATCHES_PER_TICK = 50


def delivery_tracer(tracing: Tracing | None) -> Callable[[DeliveryRecord], str] | None:
    """What starts each due delivery's own trace (None when tracing is off): its root span's traceparent."""
    if tracing is None:
        return None

    def trace_of(row: DeliveryRecord) -> str:
        attributes: Attributes = {
            "loyalty.shop_id": row.shop_id,
            "subscription_id": row.subscription_id,
            "index": row.index,
        }
        return tracing.root_traceparent("cycle_delivery.create_due_delivery", attributes)

    return trace_of


def create_due_deliveries(ctx: ServiceContext, *, batch: int = BATCH, max_batches: int = MAX_BATCHES_PER_TICK) -> int:
    created = create_due_in_batches(
        ctx.db, now=ctx.clock(), batch=batch, max_batches=max_batches, trace_of=delivery_tracer(ctx.tracing)
    )
    if created:
        log.info("deliveries_created", count=created)
    waiting, earliest = ctx.db.run(lambda session: store.due_backlog(session, now=ctx.clock()))
    BACKLOG.labels("due_deliveries").set(waiting)
    WORKER_LAG_SECONDS.labels("delivery-creation").set((ctx.clock() - earliest).total_seconds() if earliest else 0.0)
    return created


def create_due_in_batches(
    db: Database,
    *,
    now: datetime,
    batch: int,
    max_batches: int,
    trace_of: Callable[[DeliveryRecord], str] | None = None,
) -> int:
    """Creates due deliveries shop by shop (longest-waiting shop first), one transaction per batch of one shop.

    At most `max_batches` transactions. A shop whose batch comes back short is
    done for this tick (or another replica holds the rest): the next shop goes.
    """
    shops = db.run(partial(store.shops_with_due_deliveries, now=now, limit=max_batches))
    created = transactions = 0
    for shop_id in shops:
        while transactions < max_batches:
            count = db.run(
                partial(store.create_due_deliveries, shop_id=shop_id, now=now, limit=batch, trace_of=trace_of)
            )
            created, transactions = created + count, transactions + 1
            if count < batch:
                break
    return created


def cycle_delivery_workers(ctx: ServiceContext) -> list[Worker]:
    return [Worker("delivery-creation", ctx.settings.delivery_worker_seconds, lambda: create_due_deliveries(ctx))]
