"""Metrics queries and use cases; each function runs inside the caller's transaction."""

from __future__ import annotations

from collections import Counter
from datetime import date
from zoneinfo import ZoneInfo

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.common.clock import local_date
from services.common.db import insert_ignoring_conflicts, lock_keys
from services.common.errors import FailedPrecondition
from services.common.orders import PaidOrder
from services.metrics import domain
from services.metrics.definitions import Purchase
from services.metrics.models import CustomerSummary, Order, Shop


class CurrencyMismatch(FailedPrecondition):
    reason = "CURRENCY_MISMATCH"


def shop_facts(session: Session, *, shop_id: str, currency: str, default_zone: str) -> Shop:
    """The shop's row; its first recorded order fixes its currency."""
    insert_ignoring_conflicts(session, Shop, [{"shop_id": shop_id, "currency": currency, "time_zone": default_zone}])
    shop = session.get(Shop, shop_id)
    assert shop is not None
    if shop.currency != currency:
        raise CurrencyMismatch(
            f"shop {shop_id} records orders in {shop.currency}; got {currency}",
            metadata={"shop_currency": shop.currency, "order_currency": currency},
        )
    return shop


def record_orders(
    session: Session, *, shop_id: str, orders: list[PaidOrder], default_zone: str
) -> Counter[domain.Outcome]:
    """Upserts orders by id and refreshes the summaries of every customer they touch."""
    outcomes: Counter[domain.Outcome] = Counter()
    if not orders:
        return outcomes
    for currency in dict.fromkeys(o.currency for o in orders):  # the batch's first currency decides a new shop
        shop = shop_facts(session, shop_id=shop_id, currency=currency, default_zone=default_zone)
    zone = ZoneInfo(shop.time_zone)
    # One writer per customer at a time: a summary is recomputed from the orders
    # this transaction can see, so a concurrent batch must wait, not interleave.
    lock_keys(session, f"summary:{shop_id}", [o.customer_id for o in orders])
    ids = list({o.order_id for o in orders})
    existing = {
        row.order_id: row
        for row in session.scalars(
            select(Order).where(Order.shop_id == shop_id, Order.order_id.in_(ids)).with_for_update()
        )
    }
    touched: set[str] = set()
    for order in orders:
        row = existing.get(order.order_id)
        outcome = domain.classify_order(row.fingerprint if row else None, order.fingerprint)
        outcomes[outcome] += 1
        if outcome is domain.Outcome.DUPLICATE:
            continue
        if row is None:
            row = Order(shop_id=shop_id, order_id=order.order_id)
            session.add(row)
            existing[order.order_id] = row
        else:
            if row.customer_id != order.customer_id:  # the order moves to another customer
                lock_keys(session, f"summary:{shop_id}", [row.customer_id])
            touched.add(row.customer_id)
        row.customer_id = order.customer_id
        row.paid_at = order.paid_at
        row.local_date = local_date(order.paid_at, zone)
        row.amount_minor = order.amount_minor
        row.channel = order.channel
        row.source = order.source
        row.fingerprint = order.fingerprint
        touched.add(order.customer_id)
    session.flush()
    refresh_summaries(session, shop_id=shop_id, customer_ids=sorted(touched))
    return outcomes


def refresh_summaries(session: Session, *, shop_id: str, customer_ids: list[str]) -> None:
    """Recomputes the summaries of these customers from their orders only."""
    if not customer_ids:
        return
    facts: dict[str, list[domain.OrderFact]] = {c: [] for c in customer_ids}
    rows = session.execute(
        select(Order.customer_id, Order.paid_at, Order.local_date, Order.amount_minor).where(
            Order.shop_id == shop_id, Order.customer_id.in_(customer_ids)
        )
    )
    for customer_id, paid_at, day, amount in rows:
        facts[customer_id].append(domain.OrderFact(customer_id, paid_at, day, amount))
    session.execute(
        delete(CustomerSummary).where(CustomerSummary.shop_id == shop_id, CustomerSummary.customer_id.in_(customer_ids))
    )
    for customer_id in customer_ids:
        summary = domain.summarize(customer_id, facts[customer_id])
        if summary is not None:
            session.add(
                CustomerSummary(
                    shop_id=shop_id,
                    customer_id=customer_id,
                    order_count=summary.order_count,
                    purchase_days=summary.purchase_days,
                    total_minor=summary.total_minor,
                    first_order_at=summary.first_order_at,
                    last_order_at=summary.last_order_at,
                )
            )


def get_summary(session: Session, *, shop_id: str, customer_id: str) -> tuple[CustomerSummary, str] | None:
    summary = session.get(CustomerSummary, (shop_id, customer_id))
    if summary is None:
        return None
    shop = session.get(Shop, shop_id)
    return summary, shop.currency if shop else ""


def shop_zone(session: Session, *, shop_id: str, default_zone: str) -> ZoneInfo:
    shop = session.get(Shop, shop_id)
    return ZoneInfo(shop.time_zone if shop else default_zone)


def load_purchases(session: Session, *, shop_id: str, until: date) -> list[Purchase]:
    """The shop's orders on or before `until` (shop-local), as metric facts.

    A straightforward full read: correct for any shop and the reference the
    fast path of the metrics issue is checked against.
    """
    rows = session.execute(
        select(Order.order_id, Order.customer_id, Order.local_date, Order.amount_minor).where(
            Order.shop_id == shop_id, Order.local_date <= until
        )
    )
    return [Purchase(order_id, customer_id, day, amount) for order_id, customer_id, day, amount in rows]
