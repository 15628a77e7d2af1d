"""Stored value (储值) and rebate credit (消费金): top-ups, draws, top-up refunds.

Each function runs inside the caller's transaction and follows the locking rule
of `services.points.store`: the member lock first, then anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.points.domain import (
    Asset,
    split_stored_value_draw,
    top_up_bonus,
)
from services.points.models import (
    Entry,
    Lot,
    LotUse,
    TopUpRecord,
)
from services.points.program import ProgramRules
from services.points.store import (
    SYSTEM_SPENT,
    SYSTEM_TOP_UPS,
    Posting,
    credit,
    debit,
    lock_balance,
    lock_balances,
    lock_member,
    post,
    record_spend,
)


class WrongCurrency(FailedPrecondition):
    reason = "CURRENCY_MISMATCH"


def check_program_currency(rules: ProgramRules, currency: str) -> None:
    if currency != rules.currency:
        raise WrongCurrency(f"this shop keeps stored value and rebate credit in {rules.currency}, not {currency}")


def top_up(
    session: Session,
    *,
    shop_id: str,
    request_id: str,
    customer_id: str,
    top_up_id: str,
    paid_minor: int,
    currency: str,
    rules: ProgramRules,
    now: datetime,
) -> TopUpRecord:
    """Credits principal and bonus as two lots of one transfer; the same top-up again is found, not credited."""
    check_program_currency(rules, currency)
    lock_member(session, shop_id=shop_id, customer_id=customer_id)
    existing = session.get(TopUpRecord, (shop_id, top_up_id))
    if existing is not None:
        if (existing.customer_id, existing.paid_minor) != (customer_id, paid_minor):
            raise AlreadyExists(
                f"top-up {top_up_id} was recorded with another member or amount", reason="TOP_UP_EXISTS"
            )
        return existing
    bonus = top_up_bonus(paid_minor, list(rules.top_up_plans))
    common = {"shop_id": shop_id, "customer_id": customer_id, "counter": SYSTEM_TOP_UPS, "request_id": request_id}
    reason = f"top-up {top_up_id}"
    principal_posting = Posting(asset=Asset.STORED_PRINCIPAL, delta=paid_minor, kind="TOP_UP", reason=reason, **common)
    credit(session, principal_posting, now)
    if bonus:
        credit(session, Posting(asset=Asset.STORED_BONUS, delta=bonus, kind="TOP_UP", reason=reason, **common), now)
    record = TopUpRecord(
        shop_id=shop_id,
        top_up_id=top_up_id,
        customer_id=customer_id,
        transfer_id=principal_posting.transfer_id,
        paid_minor=paid_minor,
        bonus_minor=bonus,
        currency=currency,
        created_at=now,
    )
    session.add(record)
    session.flush()
    return record


@dataclass(frozen=True)
class TopUpRefund:
    customer_id: str
    refund_minor: int
    principal_removed: int
    bonus_removed: int
    bonus_spent: int
    currency: str


def refund_top_up(session: Session, *, shop_id: str, request_id: str, top_up_id: str, now: datetime) -> TopUpRefund:
    record = session.get(TopUpRecord, (shop_id, top_up_id))
    if record is None:
        raise NotFound(f"top-up {top_up_id} does not exist in this shop", reason="TOP_UP_NOT_FOUND")
    lock_member(session, shop_id=shop_id, customer_id=record.customer_id)
    session.refresh(record)
    if record.refunded_at is not None:
        raise FailedPrecondition(f"top-up {top_up_id} was already refunded", reason="TOP_UP_REFUNDED")
    lots = {
        lot.asset: lot
        for lot in session.scalars(
            select(Lot).where(
                Lot.shop_id == shop_id,
                Lot.transfer_id == record.transfer_id,
                Lot.asset.in_([int(Asset.STORED_PRINCIPAL), int(Asset.STORED_BONUS)]),
            )
        )
    }
    principal_lot, bonus_lot = lots.get(int(Asset.STORED_PRINCIPAL)), lots.get(int(Asset.STORED_BONUS))
    principal_left = principal_lot.remaining if principal_lot else 0
    bonus_left = bonus_lot.remaining if bonus_lot else 0
    bonus_spent = record.bonus_minor - bonus_left
    common = {
        "shop_id": shop_id,
        "customer_id": record.customer_id,
        "counter": SYSTEM_TOP_UPS,
        "request_id": request_id,
    }
    reason = f"refund of top-up {top_up_id}"
    for lot, amount in ((principal_lot, principal_left), (bonus_lot, bonus_left)):
        if lot is not None and amount:
            posting = Posting(asset=Asset(lot.asset), delta=-amount, kind="TOP_UP_REFUND", reason=reason, **common)
            take_from_lot(session, lot, posting, now)
    record.refunded_at = now
    session.flush()
    return TopUpRefund(
        customer_id=record.customer_id,
        refund_minor=max(0, principal_left - bonus_spent),
        principal_removed=principal_left,
        bonus_removed=bonus_left,
        bonus_spent=bonus_spent,
        currency=record.currency,
    )


def take_from_lot(session: Session, lot: Lot, posting: Posting, now: datetime) -> Entry:
    """A debit from one named lot (not the soonest-expiring ones): a top-up refund takes its own lots."""
    balance = lock_balance(session, shop_id=posting.shop_id, holder=posting.customer_id, asset=posting.asset)
    entry = post(session, balance, posting, now, allow_negative=False)
    lot.remaining += posting.delta
    session.add(LotUse(shop_id=posting.shop_id, transfer_id=posting.transfer_id, lot_id=lot.id, amount=-posting.delta))
    return entry


def spend_stored_value(
    session: Session,
    *,
    shop_id: str,
    request_id: str,
    customer_id: str,
    order_id: str,
    amount_minor: int,
    currency: str,
    rules: ProgramRules,
    now: datetime,
) -> tuple[int, int]:
    """(from principal, from bonus): split by the shop's draw rule, each side oldest top-up first."""
    check_program_currency(rules, currency)
    held = lock_balances(  # points first: the member lock
        session, shop_id=shop_id, holder=customer_id, assets=(Asset.POINTS, Asset.STORED_PRINCIPAL, Asset.STORED_BONUS)
    )
    principal, bonus = held[Asset.STORED_PRINCIPAL], held[Asset.STORED_BONUS]
    from_principal, from_bonus = split_stored_value_draw(
        amount_minor, principal.balance, bonus.balance, rules.draw_rule
    )
    common = {"shop_id": shop_id, "customer_id": customer_id, "counter": SYSTEM_SPENT, "reason": f"order {order_id}"}
    for asset, part, kind in (
        (Asset.STORED_PRINCIPAL, from_principal, "SPEND_PRINCIPAL"),
        (Asset.STORED_BONUS, from_bonus, "SPEND_BONUS"),
    ):
        if part:
            posting = Posting(asset=asset, delta=-part, kind=kind, request_id=request_id, **common)
            debit(session, posting, now)
            record_spend(session, posting, order_id)
    session.flush()
    return from_principal, from_bonus


def spend_rebate(
    session: Session,
    *,
    shop_id: str,
    request_id: str,
    customer_id: str,
    order_id: str,
    amount_minor: int,
    currency: str,
    rules: ProgramRules,
    now: datetime,
) -> Entry:
    check_program_currency(rules, currency)
    lock_member(session, shop_id=shop_id, customer_id=customer_id)
    posting = Posting(
        shop_id=shop_id,
        customer_id=customer_id,
        asset=Asset.REBATE,
        delta=-amount_minor,
        counter=SYSTEM_SPENT,
        kind="SPEND",
        request_id=request_id,
        reason=f"order {order_id}",
    )
    entry = debit(session, posting, now)
    record_spend(session, posting, order_id)
    session.flush()
    return entry
