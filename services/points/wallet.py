"""Stored value (储值) and rebate credit (消费金): top-ups, draws, top-up refunds.

Pure use cases over a `MemberBook` (see `services.points.book`): each says what
it needs read (`*_query`) and changes the book; a storage path reads and writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.points.book import (
    SYSTEM_SPENT,
    SYSTEM_TOP_UPS,
    MemberBook,
    MemberQuery,
    NewEntry,
    Posting,
    TopUpState,
)
from services.points.domain import Asset, split_stored_value_draw, top_up_bonus
from services.points.program import ProgramRules

STORED_VALUE = frozenset({Asset.STORED_PRINCIPAL, Asset.STORED_BONUS})


class WrongCurrency(FailedPrecondition):
    reason = "CURRENCY_MISMATCH"


def check_program_currency(rules: ProgramRules, currency: str) -> None:
    if currency != rules.currency:
        raise WrongCurrency(f"this shop keeps stored value and rebate credit in {rules.currency}, not {currency}")


def top_up_query(shop_id: str, customer_id: str, top_up_id: str, now: datetime) -> MemberQuery:
    return MemberQuery(shop_id=shop_id, now=now, customer_id=customer_id, top_up_id=top_up_id, entry_ids=4)


def top_up(
    book: MemberBook,
    *,
    request_id: str,
    top_up_id: str,
    paid_minor: int,
    currency: str,
    rules: ProgramRules,
) -> TopUpState:
    """Credits principal and bonus as two lots of one transfer; the same top-up again is found, not credited."""
    check_program_currency(rules, currency)
    existing = book.top_up
    if existing is not None:
        if (existing.customer_id, existing.paid_minor) != (book.customer_id, paid_minor):
            raise AlreadyExists(
                f"top-up {top_up_id} was recorded with another member or amount", reason="TOP_UP_EXISTS"
            )
        return existing
    bonus = top_up_bonus(paid_minor, list(rules.top_up_plans))
    reason = f"top-up {top_up_id}"
    principal = Posting(Asset.STORED_PRINCIPAL, paid_minor, SYSTEM_TOP_UPS, "TOP_UP", request_id, reason)
    book.credit(principal)
    if bonus:
        book.credit(Posting(Asset.STORED_BONUS, bonus, SYSTEM_TOP_UPS, "TOP_UP", request_id, reason))
    record = TopUpState(
        top_up_id=top_up_id,
        customer_id=book.customer_id,
        transfer_id=principal.transfer_id,
        paid_minor=paid_minor,
        bonus_minor=bonus,
        currency=currency,
        refunded_at=None,
        created_at=book.now,
    )
    book.add_top_up(record)
    return record


@dataclass(frozen=True)
class TopUpRefund:
    customer_id: str
    refund_minor: int
    principal_removed: int
    bonus_removed: int
    bonus_spent: int
    currency: str


def refund_top_up_query(shop_id: str, customer_id: str, top_up_id: str, now: datetime) -> MemberQuery:
    return MemberQuery(shop_id=shop_id, now=now, customer_id=customer_id, top_up_id=top_up_id, lots_of=STORED_VALUE)


def refund_top_up(book: MemberBook, *, request_id: str, top_up_id: str) -> TopUpRefund:
    """Takes back what is left of a top-up's own lots; its bonus already spent is kept back from the refund."""
    record = book.top_up
    if record is None:
        raise NotFound(f"top-up {top_up_id} does not exist in this shop", reason="TOP_UP_NOT_FOUND")
    if record.refunded_at is not None:
        raise FailedPrecondition(f"top-up {top_up_id} was already refunded", reason="TOP_UP_REFUNDED")
    own = {
        lot.asset: lot
        for asset in (Asset.STORED_PRINCIPAL, Asset.STORED_BONUS)
        for lot in book.live_lots(asset)
        if lot.transfer_id == record.transfer_id
    }
    principal_lot, bonus_lot = own.get(Asset.STORED_PRINCIPAL), own.get(Asset.STORED_BONUS)
    principal_left = principal_lot.remaining if principal_lot else 0
    bonus_left = bonus_lot.remaining if bonus_lot else 0
    bonus_spent = record.bonus_minor - bonus_left
    reason = f"refund of top-up {top_up_id}"
    for lot, amount in ((principal_lot, principal_left), (bonus_lot, bonus_left)):
        if lot is not None and amount:
            posting = Posting(lot.asset, -amount, SYSTEM_TOP_UPS, "TOP_UP_REFUND", request_id, reason)
            book.take_from_lot(lot, posting)
    record.refunded_at = book.now
    book.top_up_changed = True
    return TopUpRefund(
        customer_id=record.customer_id,
        refund_minor=max(0, principal_left - bonus_spent),
        principal_removed=principal_left,
        bonus_removed=bonus_left,
        bonus_spent=bonus_spent,
        currency=record.currency,
    )


def stored_value_query(shop_id: str, customer_id: str, now: datetime) -> MemberQuery:
    return MemberQuery(shop_id=shop_id, now=now, customer_id=customer_id, lots_of=STORED_VALUE, entry_ids=4)


def spend_stored_value(
    book: MemberBook,
    *,
    request_id: str,
    order_id: str,
    amount_minor: int,
    currency: str,
    rules: ProgramRules,
) -> tuple[int, int]:
    """(from principal, from bonus): split by the shop's draw rule, each side oldest top-up first."""
    check_program_currency(rules, currency)
    for asset in STORED_VALUE:  # the draw's rows exist afterwards, as the member lock leaves them
        book.touch(asset)
    from_principal, from_bonus = split_stored_value_draw(
        amount_minor, book.balance(Asset.STORED_PRINCIPAL), book.balance(Asset.STORED_BONUS), rules.draw_rule
    )
    reason = f"order {order_id}"
    for asset, part, kind in (
        (Asset.STORED_PRINCIPAL, from_principal, "SPEND_PRINCIPAL"),
        (Asset.STORED_BONUS, from_bonus, "SPEND_BONUS"),
    ):
        if part:
            posting = Posting(asset, -part, SYSTEM_SPENT, kind, request_id, reason)
            book.debit(posting)
            book.record_spend(posting, order_id)
    return from_principal, from_bonus


def spend_rebate(
    book: MemberBook,
    *,
    request_id: str,
    order_id: str,
    amount_minor: int,
    currency: str,
    rules: ProgramRules,
) -> NewEntry:
    check_program_currency(rules, currency)
    posting = Posting(Asset.REBATE, -amount_minor, SYSTEM_SPENT, "SPEND", request_id, f"order {order_id}")
    entry = book.debit(posting)
    book.record_spend(posting, order_id)
    return entry
