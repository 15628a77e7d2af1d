"""Background work of the points service: activating earnings, expiring lots, reviewing tiers.

Each tick does a bounded amount of work, one member per transaction, so a
crash loses at most the member in flight (its transaction rolls back and the
next tick redoes it). Every step re-checks its condition under the member lock,
so two replicas running the same tick never apply a step twice.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from sqlalchemy.orm import Session

from services.common.server import ServiceContext, Worker
from services.points import earnings, store
from services.points.book import EXPIRING_ASSETS, MemberQuery, rolling_since

log = structlog.get_logger("points.workers")
BATCH = 200


def activate_due_earnings(ctx: ServiceContext) -> int:
    now = ctx.clock()
    due = ctx.db.run(lambda s: store.due_earnings(s, now=now, limit=BATCH))
    zone = ctx.settings.default_time_zone
    done = 0
    for shop_id, order_id in due:

        def one(session: Session, shop_id: str = shop_id, order_id: str = order_id) -> bool:
            rules = store.load_program(session, shop_id=shop_id, default_zone=zone)[1]
            book = store.member_book(session, earnings.order_query(shop_id, order_id, rules, now, refund=False))
            if not earnings.activate_if_due(book, order_id=order_id, rules=rules):
                return False
            store.save_member(session, book)
            return True

        done += ctx.db.run(one)
    if done:
        log.info("earnings_activated", count=done)
    return done


def expire_due_lots(ctx: ServiceContext) -> int:
    now = ctx.clock()
    members = ctx.db.run(lambda s: store.members_with_expired_lots(s, now=now, limit=BATCH))
    expired = 0
    for shop_id, customer_id in members:

        def one(session: Session, shop_id: str = shop_id, customer_id: str = customer_id) -> int:
            query = MemberQuery(shop_id=shop_id, now=now, customer_id=customer_id, lots_of=frozenset(EXPIRING_ASSETS))
            book = store.member_book(session, query)
            for asset in EXPIRING_ASSETS:  # both rows exist afterwards, as the sweep's lock leaves them
                book.touch(asset)
            expired = sum(book.expire_due(asset) for asset in EXPIRING_ASSETS)
            store.save_member(session, book)
            return expired

        expired += ctx.db.run(one)
    if expired:
        log.info("points_expired", members=len(members), points=expired)
    return expired


def review_tiers(ctx: ServiceContext, shop_id: str) -> int:
    """Reviews every tiered member of a shop not reviewed in the last day; returns how many."""
    now = ctx.clock()
    zone = ctx.settings.default_time_zone
    reviewed = 0
    while True:
        members = ctx.db.run(
            lambda s: store.members_due_for_review(
                s, shop_id=shop_id, reviewed_before=now - timedelta(days=1), limit=BATCH
            )
        )
        for customer_id in members:

            def one(session: Session, customer_id: str = customer_id) -> None:
                rules = store.load_program(session, shop_id=shop_id, default_zone=zone)[1]
                query = MemberQuery(
                    shop_id=shop_id, now=now, customer_id=customer_id, rolling_since=rolling_since(rules.tiers, now)
                )
                book = store.member_book(session, query)
                book.review_tier(rules.tiers)
                store.save_member(session, book)

            ctx.db.run(one)
        reviewed += len(members)
        if len(members) < BATCH:
            return reviewed


def review_all_tiers(ctx: ServiceContext) -> int:
    shops = ctx.db.run(store.shops_with_tiers)
    return sum(review_tiers(ctx, shop_id) for shop_id in shops)


def points_workers(ctx: ServiceContext) -> list[Worker]:
    return [
        Worker("earning-activation", 30.0, lambda: activate_due_earnings(ctx)),
        Worker("points-expiry", 60.0, lambda: expire_due_lots(ctx)),
        Worker("tier-review", 3600.0, lambda: review_all_tiers(ctx)),
    ]
