"""Metrics storage: shops, orders and per-customer summaries kept on ingest."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Boolean, Date, Float, Index, Integer, PrimaryKeyConstraint, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import UtcDateTime


class Base(DeclarativeBase):
    pass


class Shop(Base):
    """A shop's settings: its currency ("" until the first order or SetShopSettings fixes it) and time zone.

    A row made by a first order takes the service's default zone;
    `zone_set_at` stays NULL until the shop chooses its own (SetShopSettings).
    """

    __tablename__ = "shops"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3))
    time_zone: Mapped[str] = mapped_column(String(64))
    zone_set_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


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


class StaleSummaryBatch(Base):
    """The customers one bulk chunk touched, whose summaries may now lag their orders.

    The stream path records orders without recomputing summaries chunk by chunk;
    each chunk appends this one row, in the transaction that writes its orders,
    so every committed order has either a fresh summary or a mark. One row per
    chunk (not per customer) keeps a chunk's cost close to COPY's; the settler
    expands the rows into `stale_summaries`, its per-customer work queue.
    `marked_at` lets the settler wait until a load goes quiet.
    """

    __tablename__ = "stale_summary_batches"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Newline-separated (an id cannot hold one): joined and split in C, where a
    # thousand-element array parameter cost a chunk more than its orders' COPY did.
    customer_ids: Mapped[str] = mapped_column(Text)
    marked_at: Mapped[datetime] = mapped_column(UtcDateTime)


class StaleSummary(Base):
    """A customer whose summary the settler must recompute: expanded from `StaleSummaryBatch`, cleared when settled.

    Keyed by customer first, so the settler walks customers in id order and a
    customer marked by many chunks is recomputed once.
    """

    __tablename__ = "stale_summaries"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class ClvModelRecord(Base):
    """A fitted BG/NBD + Gamma-Gamma model; the newest per shop is the shop's current model.

    Parameters are NULL when a fit had nothing to fit (no customers, no repeat buyers).
    """

    __tablename__ = "clv_models"
    __table_args__ = (PrimaryKeyConstraint("shop_id", "id"),)  # the key also serves "the newest per shop"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    as_of: Mapped[date] = mapped_column(Date)
    fitted_at: Mapped[datetime] = mapped_column(UtcDateTime)
    r: Mapped[float | None] = mapped_column(Float, nullable=True)
    alpha: Mapped[float | None] = mapped_column(Float, nullable=True)
    a: Mapped[float | None] = mapped_column(Float, nullable=True)
    b: Mapped[float | None] = mapped_column(Float, nullable=True)
    bg_nbd_log_likelihood: Mapped[float | None] = mapped_column(Float, nullable=True)
    bg_nbd_converged: Mapped[bool] = mapped_column(Boolean)
    bg_nbd_reason: Mapped[str] = mapped_column(String(40), default="", server_default="")
    p: Mapped[float | None] = mapped_column(Float, nullable=True)
    q: Mapped[float | None] = mapped_column(Float, nullable=True)
    v: Mapped[float | None] = mapped_column(Float, nullable=True)
    gamma_gamma_log_likelihood: Mapped[float | None] = mapped_column(Float, nullable=True)
    gamma_gamma_converged: Mapped[bool] = mapped_column(Boolean)
    gamma_gamma_reason: Mapped[str] = mapped_column(String(40), default="", server_default="")
    time_zone: Mapped[str] = mapped_column(String(64), default="", server_default="")
    customers: Mapped[int] = mapped_column(Integer)
    repeat_customers: Mapped[int] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(String(500))


class FeedbackRecord(Base):
    """A satisfaction answer; the comment is personal data and never logged."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_day", "shop_id", "local_date"),)

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    feedback_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[str] = mapped_column(String(64))
    score: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(String(500))
    given_at: Mapped[datetime] = mapped_column(UtcDateTime)
    local_date: Mapped[date] = mapped_column(Date)
