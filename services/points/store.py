"""Points queries and use cases; each function runs inside the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.db import insert_ignoring_conflicts
from services.points.domain import Asset, apply_delta
from services.points.models import Balance, Entry


@dataclass(frozen=True)
class AccountView:
    customer_id: str
    points: int
    growth: int
    updated_at: datetime | None


def get_account(session: Session, *, shop_id: str, customer_id: str) -> AccountView:
    rows = session.scalars(select(Balance).where(Balance.shop_id == shop_id, Balance.holder == customer_id)).all()
    by_asset = {row.asset: row for row in rows}
    stamps = [row.updated_at for row in rows if row.updated_at is not None]
    return AccountView(
        customer_id=customer_id,
        points=by_asset[Asset.POINTS].balance if Asset.POINTS in by_asset else 0,
        growth=by_asset[Asset.GROWTH].balance if Asset.GROWTH in by_asset else 0,
        updated_at=max(stamps) if stamps else None,
    )


def lock_balance(session: Session, *, shop_id: str, holder: str, asset: Asset) -> Balance:
    """The member's balance row, created if missing, locked until the transaction ends."""
    insert_ignoring_conflicts(
        session, Balance, [{"shop_id": shop_id, "holder": holder, "asset": int(asset), "balance": 0}]
    )
    row = session.scalars(
        select(Balance)
        .where(Balance.shop_id == shop_id, Balance.holder == holder, Balance.asset == int(asset))
        .with_for_update()
    ).one()
    return row


def transfer(
    session: Session,
    *,
    shop_id: str,
    customer_id: str,
    counter_account: str,
    asset: Asset,
    delta: int,
    kind: str,
    reason: str,
    request_id: str,
    now: datetime,
    allow_negative: bool = False,
) -> Entry:
    """Moves `delta` between a member and a system account: two entries summing to zero."""
    balance = lock_balance(session, shop_id=shop_id, holder=customer_id, asset=asset)
    movement = apply_delta(balance.balance, delta, allow_negative=allow_negative)
    balance.balance = movement.after
    balance.updated_at = now
    transfer_id = f"{request_id}:{kind}"
    member_entry = Entry(
        shop_id=shop_id,
        transfer_id=transfer_id,
        holder=customer_id,
        asset=int(asset),
        delta=delta,
        balance_after=movement.after,
        kind=kind,
        reason=reason,
        request_id=request_id,
        created_at=now,
    )
    counter_entry = Entry(
        shop_id=shop_id,
        transfer_id=transfer_id,
        holder=counter_account,
        asset=int(asset),
        delta=-delta,
        balance_after=None,
        kind=kind,
        reason=reason,
        request_id=request_id,
        created_at=now,
    )
    session.add_all([member_entry, counter_entry])
    session.flush()
    return member_entry


def list_entries(session: Session, *, shop_id: str, customer_id: str, limit: int, before_id: int | None) -> list[Entry]:
    query = select(Entry).where(Entry.shop_id == shop_id, Entry.holder == customer_id)
    if before_id is not None:
        query = query.where(Entry.id < before_id)
    return list(session.scalars(query.order_by(Entry.id.desc()).limit(limit)).all())
