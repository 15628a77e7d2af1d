"""A bare delivery replica for the crash test (worker, and relay when given the receivers' addresses).

`python -m tests.delivery_worker_process URL NOW_ISO [METRICS_ADDRESS POINTS_ADDRESS TOKEN]`

Traced as a service is when the OTEL_* variables say so. With
`DELIVERY_REPLICA_HANG_AFTER_CLAIM=1` it creates every due delivery, claims
one batch of their events and then waits (at most a minute) for the SIGKILL a
test sends: a replica killed between writing its events and sending them.

Runs the real `workers.create_due_in_batches` one batch at a time and, when given the
metrics and points addresses, the real `OutboxRelay` after each batch, until
nothing is due and every event is delivered; bounded in count and time, so the
test can SIGKILL it at any point (mid-transaction or mid-send).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timedelta

from sqlalchemy import func, select

from services.common.channels import peer_channel
from services.common.clock import utc_now
from services.common.db import Database
from services.common.outbox import OutboxEvent, OutboxRelay
from services.common.tracing import Tracing, provider_from_env
from services.cycle_delivery.workers import create_due_in_batches, delivery_tracer

MAX_ROUNDS = 10_000
MAX_SECONDS = 600.0
BATCH = 50
# A killed replica's claimed events wait this long before another replica sends them again.
RELAY_LEASE = timedelta(seconds=3)


def outstanding(db: Database) -> int:
    return int(
        db.run(
            lambda s: s.scalar(
                select(func.count()).where(OutboxEvent.delivered_at.is_(None), OutboxEvent.dead.is_(False))
            )
        )
        or 0
    )


def main(url: str, now_iso: str, targets: list[str]) -> int:
    now = datetime.fromisoformat(now_iso)
    db = Database(url, pool_size=2)
    provider = provider_from_env("cycle_delivery")
    tracing = Tracing(provider, "cycle_delivery") if provider is not None else None
    trace_of = delivery_tracer(tracing)
    relay = None
    if targets:
        metrics, points, token = targets
        channels = {"metrics": peer_channel(metrics, token), "points": peer_channel(points, token)}
        relay = OutboxRelay(db, channels.__getitem__, utc_now, batch_size=BATCH, lease=RELAY_LEASE, tracing=tracing)
    if os.environ.get("DELIVERY_REPLICA_HANG_AFTER_CLAIM") == "1":
        while create_due_in_batches(db, now=now, batch=BATCH, max_batches=1, trace_of=trace_of):
            pass
        if relay is not None:
            db.run(relay._claim)
        time.sleep(60)
        return 1
    stop_at = time.monotonic() + MAX_SECONDS
    try:
        for _ in range(MAX_ROUNDS):
            if time.monotonic() > stop_at:
                return 1
            created = create_due_in_batches(db, now=now, batch=BATCH, max_batches=1, trace_of=trace_of)
            sent = relay.relay_once() if relay is not None else 0
            if created == 0 and sent == 0:
                if relay is None or outstanding(db) == 0:
                    return 0
                time.sleep(0.2)  # what is left is leased by another replica (or a killed one)
        return 1
    finally:
        db.dispose()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
