"""Order earnings: pending windows, activation, cumulative refunds, and points as payment.

Pure use cases over a `MemberBook` (see `services.points.book`): each says what
it needs read (`*_query`) and changes the book; a storage path reads and writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.common.clock import local_midnight
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.common.orders import PaidOrder
from services.common.validation import CURRENCY_EXPONENTS
from services.points.book import (
    SYSTEM_EARNED,
    SYSTEM_REFUNDS,
    SYSTEM_SPENT,
    EarningState,
    MemberBook,
    MemberFacts,
    MemberQuery,
    NewEntry,
    Posting,
    rolling_since,
)
from services.points.domain import (
    ACTIVE,
    PENDING,
    REFUNDED,
    Asset,
    check_spend,
    kept_share,
    rebate_for,
    refunded_share,
)
from services.points.earning import EarnContext, Earning, EarnLine, earn
from services.points.expiry import expires_at
from services.points.program import ProgramRules

# Assets a refund may take back from lots (clawbacks), so their lots are read.
CLAWBACK_LOTS = frozenset({Asset.POINTS, Asset.REBATE})


def unit_minor(currency: str) -> int:
    return int(10 ** CURRENCY_EXPONENTS[currency])


def earned_assets(rules: ProgramRules) -> tuple[Asset, ...]:
    """The assets an order can credit under `rules`: points always, growth and rebate when the program pays them."""
    return (
        Asset.POINTS,
        *((Asset.GROWTH,) if rules.growth_per_unit else ()),
        *((Asset.REBATE,) if rules.rebate_rate_bp else ()),
    )


def earn_query(shop_id: str, order: PaidOrder, rules: ProgramRules, now: datetime) -> MemberQuery:
    """What earning needs: the order's earning if any, and the member's tier, first order and points earned that day."""
    local_day = order.paid_at.astimezone(rules.zone).date()
    return MemberQuery(
        shop_id=shop_id,
        now=now,
        customer_id=order.customer_id,
        order_id=order.order_id,
        earn_day=(local_midnight(local_day, rules.zone), local_midnight(local_day + timedelta(days=1), rules.zone)),
        rolling_since=rolling_since(rules.tiers, now),
        entry_ids=2 * len(earned_assets(rules)),
    )


def order_query(shop_id: str, order_id: str, rules: ProgramRules, now: datetime, *, refund: bool) -> MemberQuery:
    """The member of an order's earning, with what confirming it (or refunding it) needs."""
    return MemberQuery(
        shop_id=shop_id,
        now=now,
        order_id=order_id,
        lots_of=CLAWBACK_LOTS if refund else frozenset(),
        order_spends=refund,
        rolling_since=rolling_since(rules.tiers, now),
        entry_ids=12 if refund else 6,
    )


def compute_earning(
    facts: MemberFacts, order: PaidOrder, birthday_month: int, rules: ProgramRules
) -> tuple[Earning, int]:
    """Points (with breakdown) and growth the order earns given the member's state (facts of `earn_query`)."""
    unit = unit_minor(order.currency)
    context = EarnContext(
        paid_at=order.paid_at,
        tier=facts.tier.code if facts.tier is not None else "",
        birthday_month=birthday_month == order.paid_at.astimezone(rules.zone).month,
        first_order=facts.first_order,
        earned_today=facts.earned_today,
    )
    lines = [EarnLine(line.category, line.amount_minor) for line in order.lines]
    earning = earn(rules.earn_rules(unit), order.amount_minor, lines, context)
    growth = int(order.amount_minor * rules.growth_per_unit // unit)
    return earning, growth


def earn_for_order(
    book: MemberBook, *, request_id: str, order: PaidOrder, birthday_month: int, rules: ProgramRules
) -> EarningState:
    """Writes the order's earning (pending, or active at once without a return window).

    The same order again returns the first earning; a changed order is refused,
    because its points may already be spent: changes arrive as refunds.
    """
    for asset in earned_assets(rules):
        book.touch(asset)
    existing = book.earning
    if existing is not None:
        if existing.fingerprint != order.fingerprint:
            raise AlreadyExists(
                f"order {order.order_id} already earned points with other contents; record changes as refunds",
                reason="ORDER_ALREADY_EARNED",
            )
        return existing
    earning, growth = compute_earning(book.facts, order, birthday_month, rules)
    now = book.now
    row = EarningState(
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
        activated_at=None,
        created_at=now,
    )
    book.add_earning(row)
    if rules.return_window_days == 0:
        activate(book, request_id=request_id, rules=rules)  # inserted once, already active
    return row


def activate(book: MemberBook, *, request_id: str, rules: ProgramRules) -> None:
    """Credits the book's pending earning (what is left of it after refunds)."""
    row = book.earning
    if row is None or row.state != PENDING:
        return
    row = book.change_earning()
    points = kept_share(row.earned_points, row.paid_minor, row.refunded_minor)
    growth = kept_share(row.earned_growth, row.paid_minor, row.refunded_minor)
    rebate = kept_share(row.earned_rebate, row.paid_minor, row.refunded_minor)
    row.state, row.activated_at = ACTIVE, book.now
    reason = f"order {row.order_id}"
    if points:
        book.credit(
            Posting(Asset.POINTS, points, SYSTEM_EARNED, "EARN", request_id, reason),
            lot_expires_at=expires_at(rules.expiry, book.now, rules.zone),
        )
    if growth:
        book.credit(Posting(Asset.GROWTH, growth, SYSTEM_EARNED, "EARN", request_id, reason))
    if rebate:
        book.credit(
            Posting(Asset.REBATE, rebate, SYSTEM_EARNED, "EARN", request_id, reason),
            lot_expires_at=expires_at(rules.rebate_expiry, book.now, rules.zone),
        )
    book.upgrade_if_reached(rules.tiers)


def order_earning(book: MemberBook, order_id: str) -> EarningState:
    if book.earning is None:
        raise NotFound(f"order {order_id} has no earning in this shop", reason="ORDER_NOT_FOUND")
    return book.earning


def confirm_order(book: MemberBook, *, order_id: str, request_id: str, rules: ProgramRules) -> EarningState:
    """Activates the order's earning at once (the storefront confirmed receipt)."""
    order_earning(book, order_id)
    activate(book, request_id=request_id, rules=rules)
    return order_earning(book, order_id)


def activate_if_due(book: MemberBook, *, order_id: str, rules: ProgramRules) -> bool:
    """The activation worker's step: activates a pending earning whose return window has closed."""
    row = book.earning
    if row is None or row.state != PENDING or row.activates_at > book.now:
        return False
    activate(book, request_id=f"activate-{order_id}", rules=rules)
    return True


@dataclass(frozen=True)
class RefundOutcome:
    earning: EarningState
    points_clawed_back: int
    growth_clawed_back: int
    points_restored: int
    points_not_restored_expired: int


def refund_order(
    book: MemberBook,
    *,
    order_id: str,
    request_id: str,
    amount_minor: int,
    currency: str,
    payer_book: Callable[[str], MemberBook],
) -> RefundOutcome:
    """Cuts the order's earning to the kept share and gives back a share of what was spent on it.

    What was spent toward the order goes back to whoever paid it: `payer_book`
    gives the book of a payer other than the order's member.
    """
    row = order_earning(book, order_id)
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
    row = book.change_earning()
    before, after = row.refunded_minor, row.refunded_minor + amount_minor
    backs = {
        asset: kept_share(earned, row.paid_minor, before) - kept_share(earned, row.paid_minor, after)
        for asset, earned in (
            (Asset.POINTS, row.earned_points),
            (Asset.GROWTH, row.earned_growth),
            (Asset.REBATE, row.earned_rebate),
        )
    }
    row.refunded_minor = after
    if row.state == ACTIVE:
        reason = f"refund of order {order_id}"
        for asset, back in backs.items():
            if back:
                book.debit(Posting(asset, -back, SYSTEM_REFUNDS, "CLAWBACK", request_id, reason), allow_negative=True)
    if after == row.paid_minor:
        row.state = REFUNDED
    restored = expired = 0
    for spend in list(book.spends.values()):
        back = refunded_share(spend.amount, row.paid_minor, after) - refunded_share(
            spend.amount, row.paid_minor, before
        )
        if back <= 0:
            continue
        book.restore_spend(spend, back)
        payer = book if spend.customer_id == book.customer_id else payer_book(spend.customer_id)
        posting = Posting(spend.asset, back, SYSTEM_SPENT, "RESTORE", request_id, f"refund of order {order_id}")
        got, lost = payer.restore(posting, spend.transfer_id)
        restored, expired = restored + got, expired + lost
    return RefundOutcome(row, backs[Asset.POINTS], backs[Asset.GROWTH], restored, expired)


def foreign_payers(facts: MemberFacts) -> list[str]:
    """Members other than the order's who paid toward it (their refunds go back to them)."""
    return sorted({s.customer_id for s in facts.spends} - {facts.customer_id})


def spend_query(shop_id: str, customer_id: str, asset: Asset, now: datetime) -> MemberQuery:
    return MemberQuery(shop_id=shop_id, now=now, customer_id=customer_id, lots_of=frozenset({asset}), entry_ids=2)


def spend_points(
    book: MemberBook,
    *,
    request_id: str,
    order_id: str,
    order_amount_minor: int,
    currency: str,
    points: int,
    rules: ProgramRules,
) -> tuple[NewEntry, int]:
    """Points as payment toward an order: the discount they give, debited soonest-expiring first."""
    discount = check_spend(rules.spend, points, order_amount_minor, unit_minor(currency))
    posting = Posting(Asset.POINTS, -points, SYSTEM_SPENT, "SPEND", request_id, f"order {order_id}")
    entry = book.debit(posting)
    book.record_spend(posting, order_id)
    return entry, discount
