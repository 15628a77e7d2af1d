"""Cycle delivery storage use cases; each function runs inside the caller's transaction.

A subscription's calendar is read whole, changed by the pure functions in
`deliveries`, and written back row by row (by delivery index). Every change
locks the subscription row first, so two changes of one subscription are
serial; the delivery worker locks delivery rows with SKIP LOCKED and re-checks
their state, so two replicas never create one delivery twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2
from loyalty.metrics.v1 import metrics_pb2
from loyalty.points.v1 import points_pb2
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from services.common.clock import local_midnight
from services.common.erasure import anonymous_id
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound, Violations
from services.common.orders import PaidOrder
from services.common.outbox import NewEvent, enqueue_many
from services.cycle_delivery.deliveries import OPEN, Calendar, Delivery, DeliveryState, Terms, initial_calendar
from services.cycle_delivery.models import DeliveryRecord, PlanRecord, SubscriptionRecord
from services.cycle_delivery.plans import plan_terms

ACTIVE = cycle_delivery_pb2.SUBSCRIPTION_STATE_ACTIVE
PAUSED = cycle_delivery_pb2.SUBSCRIPTION_STATE_PAUSED
CANCELLED = cycle_delivery_pb2.SUBSCRIPTION_STATE_CANCELLED
RECORD_ORDERS = "/loyalty.metrics.v1.MetricsService/RecordOrders"
EARN_FOR_ORDER = "/loyalty.points.v1.PointsService/EarnForOrder"


# ---------------------------------------------------------------- plans


def save_plan(session: Session, *, shop_id: str, plan: cycle_delivery_pb2.Plan, now: datetime) -> None:
    record = session.get(PlanRecord, (shop_id, plan.plan_id))
    body = plan.SerializeToString(deterministic=True)
    if record is None:
        session.add(PlanRecord(shop_id=shop_id, plan_id=plan.plan_id, body=body, updated_at=now))
    else:
        record.body, record.updated_at = body, now
    session.flush()


def load_plan(session: Session, *, shop_id: str, plan_id: str) -> cycle_delivery_pb2.Plan:
    record = session.get(PlanRecord, (shop_id, plan_id))
    if record is None:
        raise NotFound(f"plan {plan_id} does not exist in this shop", reason="PLAN_NOT_FOUND")
    return cycle_delivery_pb2.Plan.FromString(record.body)


def terms_of(plan: cycle_delivery_pb2.Plan, default_zone: str) -> Terms:
    terms = plan_terms(Violations(), plan, default_zone)
    if terms is None:  # stored plans were validated when set
        raise FailedPrecondition(f"plan {plan.plan_id} no longer validates; set it again")
    return terms


# ---------------------------------------------------------------- subscriptions


@dataclass(frozen=True)
class Loaded:
    record: SubscriptionRecord
    plan: cycle_delivery_pb2.Plan
    terms: Terms
    calendar: Calendar
    order_ids: dict[int, str] = field(default_factory=dict)


def due_at(terms: Terms, day: date) -> datetime:
    """When the worker creates a delivery: local midnight of its preparation day."""
    return local_midnight(day - timedelta(days=terms.lead_time_days), terms.zone)


def create_subscription(
    session: Session,
    *,
    shop_id: str,
    order: PaidOrder,
    plan_id: str,
    quantity: int,
    address: str,
    delivery_mode: int,
    start: date,
    default_zone: str,
    now: datetime,
) -> Loaded:
    plan = load_plan(session, shop_id=shop_id, plan_id=plan_id)
    terms = terms_of(plan, default_zone)
    modes = set(plan.delivery_modes) or {cycle_delivery_pb2.DELIVERY_MODE_EXPRESS}
    if delivery_mode not in modes:
        raise FailedPrecondition(
            f"plan {plan_id} does not offer this delivery mode", reason="DELIVERY_MODE_NOT_OFFERED"
        )
    earliest = terms.first_possible(now)
    if start < earliest:
        raise FailedPrecondition(
            f"the first delivery can be on {earliest} at the earliest (lead time {terms.lead_time_days} days, "
            f"cut-off {terms.cutoff:%H:%M})",
            reason="START_TOO_EARLY",
            metadata={"earliest": earliest.isoformat()},
        )
    if session.get(SubscriptionRecord, (shop_id, order.order_id)) is not None:
        raise AlreadyExists(f"order {order.order_id} already has a subscription", reason="SUBSCRIPTION_EXISTS")
    record = SubscriptionRecord(
        shop_id=shop_id,
        subscription_id=order.order_id,
        customer_id=order.customer_id,
        plan_id=plan_id,
        terms=plan.SerializeToString(deterministic=True),
        anchor=start,
        state=ACTIVE,
        delivery_mode=delivery_mode,
        created_at=now,
        updated_at=now,
    )
    session.add(record)
    calendar = initial_calendar(terms, start, quantity, address)
    write_calendar(session, record, terms, (), calendar, now)
    return Loaded(record, plan, terms, calendar)


def load(session: Session, *, shop_id: str, subscription_id: str, default_zone: str, lock: bool) -> Loaded:
    query = select(SubscriptionRecord).where(
        SubscriptionRecord.shop_id == shop_id, SubscriptionRecord.subscription_id == subscription_id
    )
    record = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if record is None:
        raise NotFound(f"subscription {subscription_id} does not exist in this shop", reason="SUBSCRIPTION_NOT_FOUND")
    plan = cycle_delivery_pb2.Plan.FromString(record.terms)
    rows = session.scalars(
        select(DeliveryRecord).where(
            DeliveryRecord.shop_id == shop_id, DeliveryRecord.subscription_id == subscription_id
        )
    ).all()
    calendar = tuple(
        sorted(
            (Delivery(r.index, r.day, DeliveryState(r.state), r.quantity, r.address) for r in rows),
            key=lambda d: (d.day, d.index),
        )
    )
    order_ids = {r.index: r.delivery_order_id for r in rows if r.delivery_order_id}
    return Loaded(record, plan, terms_of(plan, default_zone), calendar, order_ids)


def load_for_change(session: Session, *, shop_id: str, subscription_id: str, default_zone: str) -> Loaded:
    loaded = load(session, shop_id=shop_id, subscription_id=subscription_id, default_zone=default_zone, lock=True)
    if loaded.record.state == CANCELLED:
        raise FailedPrecondition(f"subscription {subscription_id} is cancelled", reason="SUBSCRIPTION_CANCELLED")
    return loaded


def write_calendar(
    session: Session, record: SubscriptionRecord, terms: Terms, before: Calendar, after: Calendar, now: datetime
) -> None:
    """Writes the deliveries that changed (by index); unchanged rows are not touched."""
    old = {d.index: d for d in before}
    changed = [d for d in after if old.get(d.index) != d]
    existing = {
        r.index: r
        for r in session.scalars(
            select(DeliveryRecord).where(
                DeliveryRecord.shop_id == record.shop_id,
                DeliveryRecord.subscription_id == record.subscription_id,
                DeliveryRecord.index.in_([d.index for d in changed]),
            )
        )
    }
    for delivery in changed:
        row = existing.get(delivery.index)
        if row is None:
            row = DeliveryRecord(shop_id=record.shop_id, subscription_id=record.subscription_id, index=delivery.index)
            session.add(row)
        row.day, row.state, row.quantity, row.address = (
            delivery.day,
            int(delivery.state),
            delivery.quantity,
            delivery.address,
        )
        row.due_at, row.updated_at = due_at(terms, delivery.day), now
    record.updated_at = now
    session.flush()


def change_rule(record: SubscriptionRecord, rule: cycle_delivery_pb2.ScheduleRule, anchor: date) -> None:
    """The subscription's own terms get the new cadence and anchor; the plan itself is untouched."""
    terms = cycle_delivery_pb2.Plan.FromString(record.terms)
    terms.rule.CopyFrom(rule)
    record.terms, record.anchor = terms.SerializeToString(deterministic=True), anchor


def list_subscriptions(
    session: Session, *, shop_id: str, customer_id: str, due_day: date | None, after: str, limit: int
) -> list[str]:
    if due_day is not None:
        query = (
            select(DeliveryRecord.subscription_id)
            .where(
                DeliveryRecord.shop_id == shop_id,
                DeliveryRecord.day == due_day,
                DeliveryRecord.state.in_([int(s) for s in OPEN]),
                DeliveryRecord.subscription_id > after,
            )
            .distinct()
            .order_by(DeliveryRecord.subscription_id)
        )
    else:
        query = (
            select(SubscriptionRecord.subscription_id)
            .where(
                SubscriptionRecord.shop_id == shop_id,
                SubscriptionRecord.customer_id == customer_id,
                SubscriptionRecord.subscription_id > after,
            )
            .order_by(SubscriptionRecord.subscription_id)
        )
    return list(session.scalars(query.limit(limit)).all())


def mark_delivery(
    session: Session, *, shop_id: str, subscription_id: str, index: int, state: DeliveryState, now: datetime
) -> DeliveryRecord:
    session.scalars(
        select(SubscriptionRecord)
        .where(SubscriptionRecord.shop_id == shop_id, SubscriptionRecord.subscription_id == subscription_id)
        .with_for_update()
    ).one_or_none()
    row = session.get(DeliveryRecord, (shop_id, subscription_id, index))
    if row is None:
        raise NotFound(f"subscription {subscription_id} has no delivery {index}", reason="DELIVERY_NOT_FOUND")
    allowed = {
        DeliveryState.SHIPPED: {DeliveryState.CREATED},
        DeliveryState.DELIVERED: {DeliveryState.CREATED, DeliveryState.SHIPPED},
    }[state]
    if DeliveryState(row.state) not in allowed:
        raise FailedPrecondition(
            f"delivery {index} is {DeliveryState(row.state).name.lower()}; it cannot become {state.name.lower()}",
            reason="DELIVERY_STATE",
        )
    row.state, row.updated_at = int(state), now
    session.flush()
    return row


# ---------------------------------------------------------------- the delivery worker


# Open deliveries of active subscriptions whose preparation day has come: the join, then the conditions.
SUBSCRIPTION_OF_DELIVERY = (SubscriptionRecord.shop_id == DeliveryRecord.shop_id) & (
    SubscriptionRecord.subscription_id == DeliveryRecord.subscription_id
)


def due_conditions(now: datetime) -> tuple[ColumnElement[bool], ...]:
    return (
        DeliveryRecord.state.in_([int(s) for s in OPEN]),
        DeliveryRecord.due_at <= now,
        SubscriptionRecord.state == ACTIVE,
    )


def due_backlog(session: Session, *, now: datetime) -> tuple[int, datetime | None]:
    """How many due deliveries are not created yet, and the earliest one's due time (what the alerts watch)."""
    count, earliest = session.execute(
        select(func.count(), func.min(DeliveryRecord.due_at))
        .select_from(DeliveryRecord)
        .join(SubscriptionRecord, SUBSCRIPTION_OF_DELIVERY)
        .where(*due_conditions(now))
    ).one()
    return int(count), earliest


def shops_with_due_deliveries(session: Session, *, now: datetime, limit: int) -> list[str]:
    """The shops with due deliveries, the one waiting longest first: where the worker claims next.

    The one statement of the worker that spans shops, and it locks nothing: Citus
    refuses a claim (FOR UPDATE SKIP LOCKED) over several shards, so the claim
    itself (`claim_due`) is made shop by shop.
    """
    query = (
        select(DeliveryRecord.shop_id)
        .join(SubscriptionRecord, SUBSCRIPTION_OF_DELIVERY)
        .where(*due_conditions(now))
        .group_by(DeliveryRecord.shop_id)
        .order_by(func.min(DeliveryRecord.due_at), DeliveryRecord.shop_id)
        .limit(limit)
    )
    return list(session.scalars(query).all())


def claim_due(session: Session, *, shop_id: str, now: datetime, limit: int) -> Sequence[DeliveryRecord]:
    """One shop's due deliveries (`due_conditions`), locked; rows locked by another worker are skipped."""
    query = (
        select(DeliveryRecord)
        .join(SubscriptionRecord, SUBSCRIPTION_OF_DELIVERY)
        .where(DeliveryRecord.shop_id == shop_id, SubscriptionRecord.shop_id == shop_id, *due_conditions(now))
        .order_by(DeliveryRecord.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=DeliveryRecord)
    )
    return session.scalars(query).all()


def delivery_event_id(destination: str, shop_id: str, order_id: str) -> str:
    """One event id per (destination, shop, delivery order): stable across retries, unique across shops."""
    digest = hashlib.sha256(f"{destination}\0{shop_id}\0{order_id}".encode()).hexdigest()[:32]
    return f"cd-{destination}-{digest}"


def delivery_order(
    row: DeliveryRecord, subscription: SubscriptionRecord, plan: cycle_delivery_pb2.Plan, now: datetime
) -> common_pb2.Order:
    """The order a delivery becomes: the per-delivery price times its quantity, sourced as cycle delivery."""
    paid_at = Timestamp()
    paid_at.FromDatetime(now)
    amount = plan.price_per_delivery.amount_minor * row.quantity
    return common_pb2.Order(
        order_id=f"{row.subscription_id}-d{row.index}",
        customer_id=subscription.customer_id,
        paid_at=paid_at,
        paid=common_pb2.Money(amount_minor=amount, currency=plan.price_per_delivery.currency),
        items=[
            common_pb2.OrderItem(
                sku=plan.sku,
                category="cycle_delivery",
                quantity=row.quantity,
                paid=common_pb2.Money(amount_minor=amount),
            )
        ],
        channel="cycle_delivery",
        source=common_pb2.ORDER_SOURCE_CYCLE_DELIVERY,
    )


def delivery_events(shop_id: str, order: common_pb2.Order) -> list[NewEvent]:
    """The two events a created delivery sends: its order to metrics and to points."""
    return [
        NewEvent(
            "metrics",
            RECORD_ORDERS,
            metrics_pb2.RecordOrdersRequest(shop_id=shop_id, orders=[order]),
            delivery_event_id("metrics", shop_id, order.order_id),
        ),
        NewEvent(
            "points",
            EARN_FOR_ORDER,
            points_pb2.EarnForOrderRequest(shop_id=shop_id, order=order),
            delivery_event_id("points", shop_id, order.order_id),
        ),
    ]


def create_due_deliveries(
    session: Session,
    *,
    shop_id: str,
    now: datetime,
    limit: int,
    trace_of: Callable[[DeliveryRecord], str] | None = None,
) -> int:
    """Claims one shop's due deliveries, marks them created and queues their events, in the caller's transaction.

    Two executemany statements write the batch (delivery updates, outbox rows):
    the worker's cost is one round trip per statement, not per delivery.
    `trace_of` (tracing on) starts a delivery's trace and returns its context,
    which the delivery's events carry to the relay.
    """
    rows = claim_due(session, shop_id=shop_id, now=now, limit=limit)
    if not rows:
        return 0
    subscriptions = {
        (s.shop_id, s.subscription_id): s
        for s in session.scalars(
            select(SubscriptionRecord).where(
                SubscriptionRecord.shop_id == shop_id,
                SubscriptionRecord.subscription_id.in_({r.subscription_id for r in rows}),
            )
        )
    }
    plans: dict[bytes, cycle_delivery_pb2.Plan] = {}
    events: list[NewEvent] = []
    updates: list[dict[str, object]] = []
    for row in rows:
        subscription = subscriptions[(row.shop_id, row.subscription_id)]
        plan = plans.get(subscription.terms) or plans.setdefault(
            subscription.terms, cycle_delivery_pb2.Plan.FromString(subscription.terms)
        )
        order = delivery_order(row, subscription, plan, now)
        if trace_of is None:
            events += delivery_events(row.shop_id, order)
        else:
            traced = trace_of(row)
            events += [replace(event, trace_context=traced) for event in delivery_events(row.shop_id, order)]
        updates.append(
            {
                "shop_id": row.shop_id,
                "subscription_id": row.subscription_id,
                "index": row.index,
                "state": int(DeliveryState.CREATED),
                "delivery_order_id": order.order_id,
                "created_at": now,
                "updated_at": now,
            }
        )
    session.execute(update(DeliveryRecord), updates)
    enqueue_many(session, events, now)
    return len(rows)


def erase_customer(session: Session, *, shop_id: str, customer_id: str) -> tuple[str, int]:
    """Moves subscriptions to the shared anonymous id and clears every delivery address.

    Refused while a subscription still has deliveries to make: they need the
    address. Cancel first, then erase.
    """
    anonymous = anonymous_id(shop_id, customer_id)
    subscriptions = session.scalars(
        select(SubscriptionRecord)
        .where(SubscriptionRecord.shop_id == shop_id, SubscriptionRecord.customer_id == customer_id)
        .with_for_update()
    ).all()
    ids = [s.subscription_id for s in subscriptions]
    open_ids = sorted(
        set(
            session.scalars(
                select(DeliveryRecord.subscription_id).where(
                    DeliveryRecord.shop_id == shop_id,
                    DeliveryRecord.subscription_id.in_(ids),
                    DeliveryRecord.state.in_([int(s) for s in OPEN]),
                )
            )
        )
    )
    active = [s.subscription_id for s in subscriptions if s.state != CANCELLED and s.subscription_id in open_ids]
    if active:
        raise FailedPrecondition(
            f"subscriptions {', '.join(active[:5])} still have deliveries to make; cancel them before erasing",
            reason="OPEN_SUBSCRIPTIONS",
        )
    for subscription in subscriptions:
        subscription.customer_id = anonymous
    cleared = session.execute(
        update(DeliveryRecord)
        .where(DeliveryRecord.shop_id == shop_id, DeliveryRecord.subscription_id.in_(ids))
        .values(address="")
    )
    session.flush()
    return anonymous, len(subscriptions) + int(getattr(cleared, "rowcount", 0) or 0)


def delivery_counts(
    session: Session, *, shop_id: str, first: date, last: date
) -> list[tuple[date, int, bool, int, int]]:
    """(day, state, subscription paused, deliveries, quantity) for deliveries dated first..last (ix_deliveries_day)."""
    paused = SubscriptionRecord.state == PAUSED
    rows = session.execute(
        select(DeliveryRecord.day, DeliveryRecord.state, paused, func.count(), func.sum(DeliveryRecord.quantity))
        .join(
            SubscriptionRecord,
            (SubscriptionRecord.shop_id == DeliveryRecord.shop_id)
            & (SubscriptionRecord.subscription_id == DeliveryRecord.subscription_id),
        )
        .where(DeliveryRecord.shop_id == shop_id, DeliveryRecord.day >= first, DeliveryRecord.day <= last)
        .group_by(DeliveryRecord.day, DeliveryRecord.state, paused)
    ).all()
    return [(day, int(state), bool(on_hold), int(n), int(quantity or 0)) for day, state, on_hold, n, quantity in rows]
