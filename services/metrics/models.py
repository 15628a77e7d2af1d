"""Metrics storage: shops, orders and per-customer summaries kept on ingest."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import UtcDateTime


class Base(DeclarativeBase):
    pass


class Shop(Base):
    """A shop's fixed facts: its currency (first recorded) and time zone."""

    __tablename__ = "shops"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3))
    time_zone: Mapped[str] = mapped_column(String(64))


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_customer", "shop_id", "customer_id", "paid_at"),)

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    paid_at: Mapped[datetime] = mapped_column(UtcDateTime)
    local_date: Mapped[date] = mapped_column(Date)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    refunded_minor: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    channel: Mapped[str] = mapped_column(String(32))
    source: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64))


class Refund(Base):
    """One refund; an order's `refunded_minor` is the sum of its refunds."""

    __tablename__ = "refunds"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    refund_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    refunded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CustomerSummary(Base):
    __tablename__ = "customer_summaries"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_count: Mapped[int] = mapped_column(Integer)
    purchase_days: Mapped[int] = mapped_column(Integer)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    first_order_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_order_at: Mapped[datetime] = mapped_column(UtcDateTime)
