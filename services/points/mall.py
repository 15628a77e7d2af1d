"""The points mall (积分商城): items and atomic redemptions.

Each function runs inside the caller's transaction and follows the locking rule
of `services.points.store`: the member lock first, then anything else.
"""

from __future__ import annotations

from datetime import UTC, datetime

from loyalty.points.v1 import points_pb2
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.common.errors import FailedPrecondition, NotFound
from services.points.domain import (
    Asset,
)
from services.points.models import (
    Entry,
    MallItemRecord,
    Redemption,
)
from services.points.store import (
    SYSTEM_MALL,
    Posting,
    debit,
    lock_member,
)


def upsert_mall_item(session: Session, *, shop_id: str, item: points_pb2.MallItem, now: datetime) -> MallItemRecord:
    row = session.get(MallItemRecord, (shop_id, item.item_id), with_for_update=True)
    if row is None:
        row = MallItemRecord(shop_id=shop_id, item_id=item.item_id)
        session.add(row)
    row.name = item.name
    row.cost_points = item.cost_points
    row.stock = item.stock
    row.starts_at = item.starts_at.ToDatetime(tzinfo=UTC) if item.HasField("starts_at") else None
    row.ends_at = item.ends_at.ToDatetime(tzinfo=UTC) if item.HasField("ends_at") else None
    row.per_customer_limit = item.per_customer_limit
    row.updated_at = now
    session.flush()
    return row


def list_mall_items(session: Session, *, shop_id: str, after: str, limit: int) -> list[MallItemRecord]:
    return list(
        session.scalars(
            select(MallItemRecord)
            .where(MallItemRecord.shop_id == shop_id, MallItemRecord.item_id > after)
            .order_by(MallItemRecord.item_id)
            .limit(limit)
        ).all()
    )


class RedemptionRefused(FailedPrecondition):
    reason = "REDEMPTION_REFUSED"


def redeem(
    session: Session, *, shop_id: str, request_id: str, customer_id: str, item_id: str, quantity: int, now: datetime
) -> tuple[Entry, MallItemRecord]:
    """Points for mall units: balance, window, limit and stock checked and changed in this transaction."""
    lock_member(session, shop_id=shop_id, customer_id=customer_id)
    item = session.get(MallItemRecord, (shop_id, item_id))
    if item is None:
        raise NotFound(f"mall item {item_id} does not exist in this shop", reason="ITEM_NOT_FOUND")
    if item.starts_at is not None and now < item.starts_at:
        raise RedemptionRefused(
            f"item {item_id} is on sale from {item.starts_at.isoformat()}", reason="ITEM_NOT_ON_SALE"
        )
    if item.ends_at is not None and now >= item.ends_at:
        raise RedemptionRefused(f"item {item_id} was on sale until {item.ends_at.isoformat()}", reason="ITEM_EXPIRED")
    if item.per_customer_limit:
        taken = session.scalar(
            select(func.coalesce(func.sum(Redemption.quantity), 0)).where(
                Redemption.shop_id == shop_id, Redemption.item_id == item_id, Redemption.customer_id == customer_id
            )
        )
        if int(taken or 0) + quantity > item.per_customer_limit:
            raise RedemptionRefused(
                f"item {item_id} allows {item.per_customer_limit} per member; {taken} already redeemed",
                reason="LIMIT_REACHED",
                metadata={"limit": str(item.per_customer_limit), "redeemed": str(taken)},
            )
    cost = item.cost_points * quantity
    posting = Posting(
        shop_id=shop_id,
        customer_id=customer_id,
        asset=Asset.POINTS,
        delta=-cost,
        counter=SYSTEM_MALL,
        kind="REDEEM",
        request_id=request_id,
        reason=f"{quantity} x {item_id}",
    )
    entry = debit(session, posting, now)
    taken_stock = session.execute(
        update(MallItemRecord)
        .where(MallItemRecord.shop_id == shop_id, MallItemRecord.item_id == item_id, MallItemRecord.stock >= quantity)
        .values(stock=MallItemRecord.stock - quantity)
    )
    if getattr(taken_stock, "rowcount", 0) != 1:
        raise RedemptionRefused(f"item {item_id} has fewer than {quantity} units left", reason="OUT_OF_STOCK")
    session.add(
        Redemption(
            shop_id=shop_id,
            item_id=item_id,
            customer_id=customer_id,
            quantity=quantity,
            points=cost,
            transfer_id=posting.transfer_id,
            created_at=now,
        )
    )
    session.flush()
    session.refresh(item)
    return entry, item
