"""Segmentation queries and use cases; each function runs inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.segmentation.models import CustomerTag


def tag_customers(session: Session, *, shop_id: str, tag: str, customer_ids: list[str], now: datetime) -> int:
    """Adds `tag` to each customer; returns how many did not have it."""
    wanted = sorted(set(customer_ids))
    have = set(
        session.scalars(
            select(CustomerTag.customer_id).where(
                CustomerTag.shop_id == shop_id, CustomerTag.tag == tag, CustomerTag.customer_id.in_(wanted)
            )
        )
    )
    new = [c for c in wanted if c not in have]
    session.add_all(CustomerTag(shop_id=shop_id, customer_id=c, tag=tag, tagged_at=now) for c in new)
    session.flush()
    return len(new)


def tags_of(session: Session, *, shop_id: str, customer_id: str) -> list[str]:
    return list(
        session.scalars(
            select(CustomerTag.tag)
            .where(CustomerTag.shop_id == shop_id, CustomerTag.customer_id == customer_id)
            .order_by(CustomerTag.tag)
        )
    )
