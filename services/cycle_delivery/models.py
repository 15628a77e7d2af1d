"""Cycle delivery storage: plans, subscriptions with the terms they were sold with, and their deliveries."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, Index, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import UtcDateTime


class Base(DeclarativeBase):
    pass


class PlanRecord(Base):
    """A plan, stored as the proto it was set as."""

    __tablename__ = "plans"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    plan_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SubscriptionRecord(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (Index("ix_subscriptions_customer", "shop_id", "customer_id"),)

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    plan_id: Mapped[str] = mapped_column(String(64))
    terms: Mapped[bytes] = mapped_column(LargeBinary)  # the plan proto at purchase
    anchor: Mapped[date] = mapped_column(Date)
    state: Mapped[int] = mapped_column(Integer)
    delivery_mode: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class DeliveryRecord(Base):
    """One delivery; (subscription, index) is its identity, and the key that makes its creation once-only."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "state", "due_at"),
        Index("ix_deliveries_day", "shop_id", "day"),
    )

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    state: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(300))
    due_at: Mapped[datetime] = mapped_column(UtcDateTime)  # local midnight of day - lead time
    delivery_order_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    created_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
