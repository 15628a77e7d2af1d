"""Erasing a member while keeping every sum true.

Each function runs inside the caller's transaction and follows the locking rule
of `services.points.store`: the member lock first, then anything else.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from services.common.erasure import anonymous_id
from services.points.models import (
    Balance,
    CouponRecord,
    Entry,
    Lot,
    MemberTier,
    OrderEarning,
    OrderSpend,
    Redemption,
    RewardClaim,
    TierChange,
    TopUpRecord,
)
from services.points.store import (
    lock_member,
)


def erase_customer(session: Session, *, shop_id: str, customer_id: str) -> tuple[str, int]:
    """Moves every row naming the member to an anonymous id; amounts stay, so sums stay true.

    Reward claim keys embed member ids (sign-in, birthday, referral): they are
    rewritten too, keeping each claim's once-only guarantee for the anonymous id.
    """
    lock_member(session, shop_id=shop_id, customer_id=customer_id)
    anonymous = anonymous_id(shop_id, customer_id)
    rows = 0
    transfers = select(Entry.transfer_id).where(Entry.shop_id == shop_id, Entry.holder == customer_id)
    rows += _rowcount(
        session.execute(
            update(Entry).where(Entry.shop_id == shop_id, Entry.transfer_id.in_(transfers)).values(reason="")
        )
    )
    rows += _rowcount(
        session.execute(
            update(Entry).where(Entry.shop_id == shop_id, Entry.holder == customer_id).values(holder=anonymous)
        )
    )
    rows += _merge_balances(session, shop_id=shop_id, holder=customer_id, into=anonymous)
    session.execute(delete(MemberTier).where(MemberTier.shop_id == shop_id, MemberTier.customer_id == anonymous))
    for model in (
        Lot,
        OrderEarning,
        OrderSpend,
        Redemption,
        MemberTier,
        TierChange,
        TopUpRecord,
        CouponRecord,
        RewardClaim,
    ):
        column = model.customer_id
        rows += _rowcount(
            session.execute(
                update(model).where(model.shop_id == shop_id, column == customer_id).values(customer_id=anonymous)
            )
        )
    for claim in session.scalars(
        select(RewardClaim).where(
            RewardClaim.shop_id == shop_id,
            or_(RewardClaim.claim_key.contains(f":{customer_id}:"), RewardClaim.claim_key == f"referral:{customer_id}"),
        )
    ):
        claim.claim_key = claim.claim_key.replace(customer_id, anonymous)
        rows += 1
    session.flush()
    return anonymous, rows


def _merge_balances(session: Session, *, shop_id: str, holder: str, into: str) -> int:
    """Moves a holder's balance rows to another holder, adding to rows it already has (a second erasure)."""
    moved = 0
    for row in session.scalars(select(Balance).where(Balance.shop_id == shop_id, Balance.holder == holder)).all():
        target = session.get(Balance, (shop_id, into, row.asset))
        if target is None:
            session.add(
                Balance(shop_id=shop_id, holder=into, asset=row.asset, balance=row.balance, updated_at=row.updated_at)
            )
        else:
            target.balance += row.balance
        session.delete(row)
        moved += 1
    session.flush()
    return moved


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
