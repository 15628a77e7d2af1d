"""`python -m services.points.reconcile [SHOP ...]`: prove each shop's ledger, exit 1 on any mismatch.

The same three checks as the ReconcileLedger RPC, for a cron job or an operator
after a restore from backup. With no shop ids it checks every shop that has
balances.
"""

from __future__ import annotations

import sys
from functools import partial

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.db import Database
from services.common.logs import configure_logging
from services.common.settings import Settings
from services.points import store
from services.points.models import Balance


def shop_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Balance.shop_id).distinct().order_by(Balance.shop_id)).all())


def reconcile_shops(db: Database, shops: list[str]) -> dict[str, store.Reconciliation]:
    wanted = shops or db.run(shop_ids)
    return {shop: db.run(partial(store.reconcile, shop_id=shop)) for shop in wanted}


def main(argv: list[str]) -> int:
    settings = Settings(service="points")
    configure_logging("points", settings.log_level)
    log = structlog.get_logger("reconcile")
    db = Database(settings.resolved_database_url)
    try:
        results = reconcile_shops(db, argv)
    finally:
        db.dispose()
    for shop, result in results.items():
        log.info(
            "ledger_reconciled",
            shop_id=shop,
            balanced=not result.mismatches,
            balances_checked=result.balances_checked,
            entries_checked=result.entries_checked,
        )
        for mismatch in result.mismatches:
            log.error(
                "ledger_mismatch",
                shop_id=shop,
                holder=mismatch.holder,
                asset=int(mismatch.asset),
                check=mismatch.check,
                expected=mismatch.expected,
                actual=mismatch.actual,
            )
    return 1 if any(r.mismatches for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
