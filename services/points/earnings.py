"""Order earnings: pending windows, activation, cumulative refunds, and points as payment.

Each function runs inside the caller's transaction and follows the locking rule
of `services.points.store`: the member lock first, then anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import String, bindparam, func, select
from sqlalchemy.orm import Session

from services.common.clock import local_midnight
from services.common.db import UtcDateTime
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.common.orders import PaidOrder
from services.common.validation import CURRENCY_EXPONENTS
from services.points.domain import (
    Asset,
    check_spend,
    kept_share,
    rebate_for,
    refunded_share,
)
from services.points.earning import EarnContext, Earning, EarnLine, earn
from services.points.expiry import expires_at
from services.points.models import (
    Entry,
    MemberTier,
    OrderEarning,
    OrderSpend,
)
from services.points.program import ProgramRules
from services.points.store import (
    _CUSTOMER,
    _SHOP,
    ACTIVE,
    PENDING,
    REFUNDED,
    SYSTEM_EARNED,
    SYSTEM_REFUNDS,
    SYSTEM_SPENT,
    Posting,
    _member_scalar,
    credit,
    debit,
    lock_balances,
    lock_member,
    record_spend,
    restore_to_lots,
    upgrade_if_reached,
)


def unit_minor(currency: str) -> int:
    return int(10 ** CURRENCY_EXPONENTS[currency])


_OTHER_EARNINGS = (
    OrderEarning.shop_id == _SHOP,
    OrderEarning.customer_id == _CUSTOMER,
    OrderEarning.order_id != bindparam("order_id", type_=String()),
    OrderEarning.state != REFUNDED,
)
# What the earning rules need to know about the member, in one round trip.
MEMBER_EARNING_STATE = select(
    _member_scalar(MemberTier.tier_code, MemberTier.shop_id == _SHOP, MemberTier.customer_id == _CUSTOMER).label(
        "tier"
    ),
    select(OrderEarning.order_id).where(*_OTHER_EARNINGS).limit(1).scalar_subquery().label("first_order_id"),
    _member_scalar(
        func.coalesce(func.sum(OrderEarning.earned_points), 0),
        *_OTHER_EARNINGS,
        OrderEarning.paid_at >= bindparam("day_start", type_=UtcDateTime()),
        OrderEarning.paid_at < bindparam("day_end", type_=UtcDateTime()),
    ).label("earned_today"),
)


def compute_earning(
    session: Session,
    *,
    shop_id: str,
    order: PaidOrder,
    birthday_month: int,
    rules: ProgramRules,
) -> tuple[Earning, int]:
    """Points (with breakdown) and growth the order earns given the member's state now."""
    local_day = order.paid_at.astimezone(rules.zone).date()
    state = session.execute(
        MEMBER_EARNING_STATE,
        {
            "shop_id": shop_id,
            "customer_id": order.customer_id,
            "order_id": order.order_id,
            "day_start": local_midnight(local_day, rules.zone),
            "day_end": local_midnight(local_day + timedelta(days=1), rules.zone),
        },
    ).one()
    unit = unit_minor(order.currency)
    context = EarnContext(
        paid_at=order.paid_at,
        tier=state.tier or "",
        birthday_month=birthday_month == order.paid_at.astimezone(rules.zone).month,
        first_order=state.first_order_id is None,
        earned_today=int(state.earned_today or 0),
    )
    lines = [EarnLine(line.category, line.amount_minor) for line in order.lines]
    earning = earn(rules.earn_rules(unit), order.amount_minor, lines, context)
    growth = int(order.amount_minor * rules.growth_per_unit // unit)
    return earning, growth


def earning_for_order(session: Session, *, shop_id: str, order_id: str) -> OrderEarning:
    row = session.get(OrderEarning, (shop_id, order_id))
    if row is None:
        raise NotFound(f"order {order_id} has no earning in this shop", reason="ORDER_NOT_FOUND")
    return row


def earn_for_order(
    session: Session,
    *,
    shop_id: str,
    request_id: str,
    order: PaidOrder,
    birthday_month: int,
    rules: ProgramRules,
    now: datetime,
) -> OrderEarning:
    """Writes the order's earning (pending, or active at once without a return window).

    The same order again returns the first earning; a changed order is refused,
    because its points may already be spent: changes arrive as refunds.
    """
    # Every balance the earning may credit, locked in one statement (points first: the member lock).
    lock_balances(session, shop_id=shop_id, holder=order.customer_id, assets=earned_assets(rules))
    existing = session.get(OrderEarning, (shop_id, order.order_id))
    if existing is not None:
        if existing.fingerprint != order.fingerprint:
            raise AlreadyExists(
                f"order {order.order_id} already earned points with other contents; record changes as refunds",
                reason="ORDER_ALREADY_EARNED",
            )
        return existing
    earning, growth = compute_earning(session, shop_id=shop_id, order=order, birthday_month=birthday_month, rules=rules)
    row = OrderEarning(
        shop_id=shop_id,
        order_id=order.order_id,
        customer_id=order.customer_id,
        fingerprint=order.fingerprint,
        paid_at=order.paid_at,
        paid_minor=order.amount_minor,
        currency=order.currency,
        earned_points=earning.points,
        earned_growth=growth,
        earned_rebate=rebate_for(order.amount_minor, rules.rebate_rate_bp) if order.currency == rules.currency else 0,
        breakdown=json.dumps([[item.rule, item.points] for item in earning.breakdown]),
        refunded_minor=0,
        state=PENDING,
        activates_at=max(order.paid_at + timedelta(days=rules.return_window_days), now)
        if rules.return_window_days
        else now,
        created_at=now,
    )
    session.add(row)
    if rules.return_window_days == 0:
        activate(session, row, request_id=request_id, rules=rules, now=now)  # inserted once, already active
    session.flush()
    return row


def earned_assets(rules: ProgramRules) -> tuple[Asset, ...]:
    """The assets an order can credit under `rules`: points always, growth and rebate when the program pays them."""
    return (
        Asset.POINTS,
        *((Asset.GROWTH,) if rules.growth_per_unit else ()),
        *((Asset.REBATE,) if rules.rebate_rate_bp else ()),
    )


def activate(session: Session, row: OrderEarning, *, request_id: str, rules: ProgramRules, now: datetime) -> None:
    """Credits a pending earning (what is left of it after refunds); the member is locked by the caller."""
    if row.state != PENDING:
        return
    points = kept_share(row.earned_points, row.paid_minor, row.refunded_minor)
    growth = kept_share(row.earned_growth, row.paid_minor, row.refunded_minor)
    row.state, row.activated_at = ACTIVE, now
    reason = f"order {row.order_id}"
    common = {"shop_id": row.shop_id, "customer_id": row.customer_id, "counter": SYSTEM_EARNED}
    if points:
        posting = Posting(asset=Asset.POINTS, delta=points, kind="EARN", request_id=request_id, reason=reason, **common)
        credit(session, posting, now, lot_expires_at=expires_at(rules.expiry, now, rules.zone))
    if growth:
        posting = Posting(asset=Asset.GROWTH, delta=growth, kind="EARN", request_id=request_id, reason=reason, **common)
        credit(session, posting, now)
    rebate = kept_share(row.earned_rebate, row.paid_minor, row.refunded_minor)
    if rebate:
        posting = Posting(asset=Asset.REBATE, delta=rebate, kind="EARN", request_id=request_id, reason=reason, **common)
        credit(session, posting, now, lot_expires_at=expires_at(rules.rebate_expiry, now, rules.zone))
    upgrade_if_reached(session, shop_id=row.shop_id, customer_id=row.customer_id, rules=rules, now=now)
    session.flush()


def confirm_order(
    session: Session, *, shop_id: str, order_id: str, request_id: str, rules: ProgramRules, now: datetime
) -> OrderEarning:
    row = earning_for_order(session, shop_id=shop_id, order_id=order_id)
    lock_member(session, shop_id=shop_id, customer_id=row.customer_id)
    session.refresh(row)
    activate(session, row, request_id=request_id, rules=rules, now=now)
    return row


def due_earnings(session: Session, *, now: datetime, limit: int) -> list[tuple[str, str]]:
    """(shop, order) of pending earnings whose return window has closed, oldest first."""
    rows = session.execute(
        select(OrderEarning.shop_id, OrderEarning.order_id)
        .where(OrderEarning.state == PENDING, OrderEarning.activates_at <= now)
        .order_by(OrderEarning.activates_at)
        .limit(limit)
    ).all()
    return [(shop, order) for shop, order in rows]


def activate_due(session: Session, *, shop_id: str, order_id: str, rules: ProgramRules, now: datetime) -> bool:
    row = earning_for_order(session, shop_id=shop_id, order_id=order_id)
    lock_member(session, shop_id=shop_id, customer_id=row.customer_id)
    session.refresh(row)
    if row.state != PENDING or row.activates_at > now:
        return False
    activate(session, row, request_id=f"activate-{order_id}", rules=rules, now=now)
    return True


@dataclass(frozen=True)
class RefundOutcome:
    earning: OrderEarning
    points_clawed_back: int
    growth_clawed_back: int
    points_restored: int
    points_not_restored_expired: int


def refund_order(
    session: Session, *, shop_id: str, order_id: str, request_id: str, amount_minor: int, currency: str, now: datetime
) -> RefundOutcome:
    """Cuts the order's earning to the kept share and gives back a share of what was spent on it."""
    row = earning_for_order(session, shop_id=shop_id, order_id=order_id)
    lock_member(session, shop_id=shop_id, customer_id=row.customer_id)
    session.refresh(row)
    if currency != row.currency:
        raise FailedPrecondition(
            f"the refund is in {currency} but the order was paid in {row.currency}", reason="CURRENCY_MISMATCH"
        )
    left = row.paid_minor - row.refunded_minor
    if amount_minor > left:
        raise FailedPrecondition(
            f"refund of {amount_minor} exceeds the {left} not yet refunded of order {order_id}",
            reason="REFUND_EXCEEDS_PAID",
            metadata={"refundable_minor": str(left)},
        )
    before, after = row.refunded_minor, row.refunded_minor + amount_minor
    points_back = kept_share(row.earned_points, row.paid_minor, before) - kept_share(
        row.earned_points, row.paid_minor, after
    )
    growth_back = kept_share(row.earned_growth, row.paid_minor, before) - kept_share(
        row.earned_growth, row.paid_minor, after
    )
    rebate_back = kept_share(row.earned_rebate, row.paid_minor, before) - kept_share(
        row.earned_rebate, row.paid_minor, after
    )
    row.refunded_minor = after
    if row.state == ACTIVE:
        common = {
            "shop_id": shop_id,
            "customer_id": row.customer_id,
            "counter": SYSTEM_REFUNDS,
            "request_id": request_id,
        }
        reason = f"refund of order {order_id}"
        for asset, back in ((Asset.POINTS, points_back), (Asset.GROWTH, growth_back), (Asset.REBATE, rebate_back)):
            if back:
                posting = Posting(asset=asset, delta=-back, kind="CLAWBACK", reason=reason, **common)
                debit(session, posting, now, allow_negative=True)
    if after == row.paid_minor:
        row.state = REFUNDED
    restored, expired = restore_spends(session, row=row, before=before, after=after, request_id=request_id, now=now)
    session.flush()
    return RefundOutcome(row, points_back, growth_back, restored, expired)


def restore_spends(
    session: Session, *, row: OrderEarning, before: int, after: int, request_id: str, now: datetime
) -> tuple[int, int]:
    spends = session.scalars(
        select(OrderSpend).where(OrderSpend.shop_id == row.shop_id, OrderSpend.order_id == row.order_id)
    ).all()
    restored = expired = 0
    for spend in spends:
        back = refunded_share(spend.amount, row.paid_minor, after) - refunded_share(
            spend.amount, row.paid_minor, before
        )
        if back <= 0:
            continue
        spend.restored += back
        posting = Posting(
            shop_id=row.shop_id,
            customer_id=spend.customer_id,
            asset=Asset(spend.asset),
            delta=back,
            counter=SYSTEM_SPENT,
            kind="RESTORE",
            request_id=request_id,
            reason=f"refund of order {row.order_id}",
        )
        got, lost = restore_to_lots(session, posting, spend.transfer_id, now)
        restored, expired = restored + got, expired + lost
    return restored, expired


def spend_points(
    session: Session,
    *,
    shop_id: str,
    request_id: str,
    customer_id: str,
    order_id: str,
    order_amount_minor: int,
    currency: str,
    points: int,
    rules: ProgramRules,
    now: datetime,
) -> tuple[Entry, int]:
    discount = check_spend(rules.spend, points, order_amount_minor, unit_minor(currency))
    lock_member(session, shop_id=shop_id, customer_id=customer_id)
    posting = Posting(
        shop_id=shop_id,
        customer_id=customer_id,
        asset=Asset.POINTS,
        delta=-points,
        counter=SYSTEM_SPENT,
        kind="SPEND",
        request_id=request_id,
        reason=f"order {order_id}",
    )
    entry = debit(session, posting, now)
    record_spend(session, posting, order_id)
    session.flush()
    return entry, discount
