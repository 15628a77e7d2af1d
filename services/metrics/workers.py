"""The metrics service's background work: settling the summaries that bulk streams left stale."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from services.common.clock import Clock, utc_now
from services.common.db import Database
from services.common.server import ServiceContext, Worker
from services.common.telemetry import WORKER_LAG_SECONDS
from services.metrics import store
from services.metrics.servicer import SUMMARY_SETTLER


def settle_stale_summaries(
    db: Database,
    *,
    batch: int = store.SETTLE_BATCH,
    quiet: timedelta = timedelta(0),
    max_lag: timedelta = timedelta(0),
    clock: Clock = utc_now,
) -> int:
    """Recomputes the stale summaries of every shop due (`store.shops_to_settle`), one bounded batch per transaction.

    With the defaults every stale summary is due. Returns how many were settled.
    Replicas may run this at once: a customer settled twice is recomputed twice
    from the same orders, never wrongly (see `store.settle_summaries`).
    """
    settled = 0
    for shop_id in db.run(partial(store.shops_to_settle, now=clock(), quiet=quiet, max_lag=max_lag)):
        db.run(partial(store.expand_stale_batches, shop_id=shop_id))
        after = ""
        while customers := db.run(partial(store.settle_summaries, shop_id=shop_id, after=after, limit=batch)):
            settled += len(customers)
            after = customers[-1]
    oldest = db.run(store.oldest_stale_mark)
    WORKER_LAG_SECONDS.labels("summary-settler").set((clock() - oldest).total_seconds() if oldest else 0.0)
    return settled


def summary_settler(ctx: ServiceContext) -> Worker:
    """Ticks settle loads that went quiet (or waited too long); a wake, sent when a stream ends, settles all."""
    interval = ctx.settings.summary_settle_seconds
    return Worker(
        SUMMARY_SETTLER,
        interval,
        lambda: settle_stale_summaries(
            ctx.db,
            quiet=timedelta(seconds=interval),
            max_lag=timedelta(seconds=ctx.settings.summary_max_lag_seconds),
            clock=ctx.clock,
        ),
        on_wake=lambda: settle_stale_summaries(ctx.db, clock=ctx.clock),
    )


def metrics_workers(ctx: ServiceContext) -> list[Worker]:
    return [summary_settler(ctx)]
