"""Request ids are kept for the retry window, then purged shop by shop (one shard per DELETE on Citus)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from services.common.db import Database
from services.common.idempotency import IdempotencyRecord, purge_expired
from tests.support import migrated_database

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
RETENTION = timedelta(days=30)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    with migrated_database(database_url, "points") as database:
        yield database


def test_only_records_older_than_the_retention_go_in_every_shop(db: Database) -> None:
    ages: dict[str, list[float]] = {
        "shop-a": [31, 40, 1],
        "shop-b": [29, 60],
        "shop-c": [0],
        "shop-d": [30.5, 90, 91, 400],
    }
    rows = [
        {
            "shop_id": shop,
            "request_id": f"r{n}",
            "method": "m",
            "fingerprint": "f",
            "response": b"",
            "created_at": NOW - timedelta(days=age),
        }
        for shop, shop_ages in ages.items()
        for n, age in enumerate(shop_ages)
    ]
    db.run(lambda s: s.execute(insert(IdempotencyRecord), rows))
    assert purge_expired(db, older_than=RETENTION, now=NOW) == 2 + 1 + 4
    left = db.run(
        lambda s: dict(
            s.execute(select(IdempotencyRecord.shop_id, func.count()).group_by(IdempotencyRecord.shop_id)).all()
        )
    )
    assert left == {"shop-a": 1, "shop-b": 1, "shop-c": 1}
    assert purge_expired(db, older_than=RETENTION, now=NOW) == 0
