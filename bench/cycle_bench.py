"""Cycle delivery at scale: 100 k schedules previewed, and 100 k due deliveries created by two worker processes.

The delivery worker is the real `workers.create_due_in_batches` (claim with SKIP
LOCKED, mark created, queue two outbox events, commit) in two processes on one
PostgreSQL database, as two replicas would run it. Setup rows are bulk-inserted
and not timed.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2 as cd
from sqlalchemy import insert
from sqlalchemy.orm import Session

from bench.baselines import empty_pg_database
from bench.services import sqlalchemy_url
from services.common.db import Database
from services.common.migrations import upgrade
from services.cycle_delivery import store, workers
from services.cycle_delivery.app import SPEC as CYCLE
from services.cycle_delivery.deliveries import initial_calendar
from services.cycle_delivery.models import DeliveryRecord, SubscriptionRecord
from services.cycle_delivery.schedule import Cadence, Rule, schedule

CREATED_AT = datetime(2026, 3, 1, 2, tzinfo=UTC)
RUN_AT = datetime(2026, 9, 1, tzinfo=UTC)
RULES = [
    Rule(Cadence.DAILY),
    Rule(Cadence.EVERY_N_DAYS, interval_days=3),
    Rule(Cadence.WEEKLY, weekdays=frozenset({1, 3, 5})),
    Rule(Cadence.MONTHLY, month_days=frozenset({1, 15, 31})),
]


@dataclass(frozen=True)
class CycleBenchResult:
    schedules: int
    preview_seconds: float
    deliveries: int
    worker_processes: int
    create_seconds: float

    @property
    def schedules_per_second(self) -> float:
        return self.schedules / self.preview_seconds

    @property
    def deliveries_per_second(self) -> float:
        return self.deliveries / self.create_seconds


def preview(count: int) -> float:
    rng = random.Random(7)
    began = time.perf_counter()
    for _ in range(count):
        schedule(rng.choice(RULES), date(2026, 1, 1) + timedelta(days=rng.randrange(365)), delivery_count=12)
    return time.perf_counter() - began


def seed(db: Database, subscriptions: int, per_subscription: int) -> int:
    plan = cd.Plan(
        plan_id="bench",
        sku="milk",
        rule=cd.ScheduleRule(cadence=cd.CADENCE_DAILY),
        delivery_count=per_subscription,
        lead_time_days=1,
        price_per_delivery=common_pb2.Money(amount_minor=800, currency="CNY"),
    )
    db.run(lambda s: store.save_plan(s, shop_id="bench", plan=plan, now=CREATED_AT))
    terms = store.terms_of(plan, "Asia/Shanghai")
    body = plan.SerializeToString()
    total = 0
    for first in range(0, subscriptions, 5_000):
        subs: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        for n in range(first, min(subscriptions, first + 5_000)):
            anchor = date(2026, 3, 2) + timedelta(days=n % 60)
            subs.append(
                {
                    "shop_id": "bench",
                    "subscription_id": f"s{n}",
                    "customer_id": f"c{n}",
                    "plan_id": "bench",
                    "terms": body,
                    "anchor": anchor,
                    "state": store.ACTIVE,
                    "delivery_mode": 1,
                    "created_at": CREATED_AT,
                    "updated_at": CREATED_AT,
                }
            )
            for d in initial_calendar(terms, anchor, 1, "addr"):
                rows.append(
                    {
                        "shop_id": "bench",
                        "subscription_id": f"s{n}",
                        "index": d.index,
                        "day": d.day,
                        "state": int(d.state),
                        "quantity": 1,
                        "address": "addr",
                        "due_at": store.due_at(terms, d.day),
                        "updated_at": CREATED_AT,
                    }
                )

        def write(session: Session, subs: list[dict[str, Any]] = subs, rows: list[dict[str, Any]] = rows) -> None:
            session.execute(insert(SubscriptionRecord), subs)
            session.execute(insert(DeliveryRecord), rows)

        db.run(write)
        total += len(rows)
    return total


def _drain(url: str) -> None:
    db = Database(url, pool_size=2)
    try:
        for _ in range(100_000):
            if workers.create_due_in_batches(db, now=RUN_AT, batch=workers.BATCH, max_batches=1) == 0:
                return
    finally:
        db.dispose()


def run(
    admin_dsn: str, *, subscriptions: int = 20_000, per_subscription: int = 5, processes: int = 2
) -> CycleBenchResult:
    preview_seconds = preview(subscriptions * per_subscription)
    with empty_pg_database(admin_dsn) as dsn:
        url = sqlalchemy_url(dsn)
        upgrade(CYCLE.migrations, url)
        db = Database(url, pool_size=4)
        try:
            deliveries = seed(db, subscriptions, per_subscription)
        finally:
            db.dispose()
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_drain, args=(url,)) for _ in range(processes)]
        began = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(600)
        create_seconds = time.perf_counter() - began
    return CycleBenchResult(subscriptions * per_subscription, preview_seconds, deliveries, processes, create_seconds)
