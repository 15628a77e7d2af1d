"""The points mall (积分商城): items and atomic redemptions.

Items are plain rows; a redemption is a pure use case over the member's book
(`services.points.book`), written by a storage path.
"""

from __future__ import annotations

from datetime import UTC, datetime

from loyalty.points.v1 import points_pb2
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.errors import FailedPrecondition, NotFound
from services.points.book import SYSTEM_MALL, ItemState, MemberBook, MemberQuery, NewEntry, Posting
from services.points.domain import Asset
from services.points.models import MallItemRecord


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


def redeem_query(shop_id: str, customer_id: str, item_id: str, now: datetime) -> MemberQuery:
    return MemberQuery(
        shop_id=shop_id,
        now=now,
        customer_id=customer_id,
        lots_of=frozenset({Asset.POINTS}),
        item_id=item_id,
        entry_ids=2,
    )


def redeem(book: MemberBook, *, request_id: str, item_id: str, quantity: int) -> tuple[NewEntry, ItemState]:
    """Points for mall units: sale window, per-member limit, balance and stock, in that order.

    The stock seen here may be stale by the time the book is written: the
    storage path takes the units with a conditional update (and PostgreSQL's
    `stock >= 0` check), which is what makes overselling impossible.
    """
    item = book.item
    if item is None:
        raise NotFound(f"mall item {item_id} does not exist in this shop", reason="ITEM_NOT_FOUND")
    now = book.now
    if item.starts_at is not None and now < item.starts_at:
        raise RedemptionRefused(
            f"item {item_id} is on sale from {item.starts_at.isoformat()}", reason="ITEM_NOT_ON_SALE"
        )
    if item.ends_at is not None and now >= item.ends_at:
        raise RedemptionRefused(f"item {item_id} was on sale until {item.ends_at.isoformat()}", reason="ITEM_EXPIRED")
    if item.per_customer_limit:
        taken = item.redeemed_by_member
        if taken + quantity > item.per_customer_limit:
            raise RedemptionRefused(
                f"item {item_id} allows {item.per_customer_limit} per member; {taken} already redeemed",
                reason="LIMIT_REACHED",
                metadata={"limit": str(item.per_customer_limit), "redeemed": str(taken)},
            )
    cost = item.cost_points * quantity
    posting = Posting(Asset.POINTS, -cost, SYSTEM_MALL, "REDEEM", request_id, f"{quantity} x {item_id}")
    entry = book.debit(posting)
    if item.stock < quantity:
        raise out_of_stock(item_id, quantity)
    book.redeem_item(item, quantity, cost, posting.transfer_id)
    return entry, item


def out_of_stock(item_id: str, quantity: int) -> RedemptionRefused:
    return RedemptionRefused(f"item {item_id} has fewer than {quantity} units left", reason="OUT_OF_STOCK")
