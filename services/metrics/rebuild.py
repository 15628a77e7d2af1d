"""`python -m services.metrics.rebuild [SHOP ...]`: recompute customer summaries from the orders.

Summaries are kept incrementally on ingest; this full rebuild must give the
same rows (a test holds it to that). Use it after a bug fix or a manual
repair of orders. With no shop ids it rebuilds every shop.
"""

from __future__ import annotations

import sys
from functools import partial

import structlog

from services.common.db import Database
from services.common.logs import configure_logging
from services.common.settings import Settings
from services.metrics import store


def rebuild(db: Database, shops: list[str]) -> dict[str, int]:
    """Rebuilds each shop in its own transaction; returns customers seen per shop."""
    wanted = shops or db.run(store.shop_ids)
    return {shop: db.run(partial(store.rebuild_summaries, shop_id=shop)) for shop in wanted}


def main(argv: list[str]) -> int:
    settings = Settings(service="metrics")
    configure_logging("metrics", settings.log_level)
    db = Database(settings.resolved_database_url)
    try:
        for shop, customers in rebuild(db, argv).items():
            structlog.get_logger("rebuild").info("summaries_rebuilt", shop_id=shop, customers=customers)
    finally:
        db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
