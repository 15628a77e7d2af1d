"""The metrics service's background work: settling the summaries that bulk streams left stale."""

from __future__ import annotations

from functools import partial

from services.common.db import Database
from services.common.server import ServiceContext, Worker
from services.metrics import store
from services.metrics.servicer import SUMMARY_SETTLER


def settle_stale_summaries(db: Database, *, batch: int = store.SETTLE_BATCH) -> int:
    """Recomputes every shop's stale summaries, one bounded batch per transaction; returns how many.

    Replicas may run this at once: a customer settled twice is recomputed twice
    from the same orders, never wrongly (see `store.settle_summaries`).
    """
    settled = 0
    for shop_id in db.run(store.shops_with_stale_summaries):
        after = ""
        while customers := db.run(partial(store.settle_summaries, shop_id=shop_id, after=after, limit=batch)):
            settled += len(customers)
            after = customers[-1]
    return settled


def metrics_workers(ctx: ServiceContext) -> list[Worker]:
    return [Worker(SUMMARY_SETTLER, ctx.settings.summary_settle_seconds, lambda: settle_stale_summaries(ctx.db))]
