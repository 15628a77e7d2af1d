"""Segmentation storage: customer tags, segments, and versioned memberships."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import UtcDateTime


class Base(DeclarativeBase):
    pass


class ShopSettingsRecord(Base):
    """The zone a shop chose for its days; a shop without a row uses the service's default zone."""

    __tablename__ = "shop_settings"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    time_zone: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CustomerTag(Base):
    __tablename__ = "customer_tags"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    tagged_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SegmentRecord(Base):
    __tablename__ = "segments"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    segment_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    rule: Mapped[str] = mapped_column(Text)
    auto_tag: Mapped[str] = mapped_column(String(64), default="")
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Evaluation(Base):
    """One membership version of a shop: every segment's members as of one day."""

    __tablename__ = "evaluations"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    as_of: Mapped[date] = mapped_column(Date)
    customers: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime)
    time_zone: Mapped[str] = mapped_column(String(64), default="", server_default="")  # "" before zones were kept
    window_days: Mapped[int] = mapped_column(Integer, default=180, server_default="180")


class Membership(Base):
    __tablename__ = "memberships"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    segment_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class CustomerScoreRecord(Base):
    """A customer's scores from the latest evaluation of their shop (replaced by each evaluation)."""

    __tablename__ = "customer_scores"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    r: Mapped[int] = mapped_column(Integer)
    f: Mapped[int] = mapped_column(Integer)
    m: Mapped[int] = mapped_column(Integer)
    rfm_segment: Mapped[str] = mapped_column(String(32))
    value_class: Mapped[str] = mapped_column(String(32))
    activity_layer: Mapped[str] = mapped_column(String(16))
    churn_risk: Mapped[str] = mapped_column(String(16))
    churn_reason: Mapped[str] = mapped_column(String(200))
    net_revenue_minor: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_order_day: Mapped[date | None] = mapped_column(Date, nullable=True)  # NULL: scored before it was kept


class MemberAttributesRecord(Base):
    """Facts about a member that orders do not carry; personal data, removed by EraseCustomer."""

    __tablename__ = "member_attributes"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    birthday_month: Mapped[int | None] = mapped_column(Integer, nullable=True)
    registered_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    channel: Mapped[str | None] = mapped_column(String(32), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class LayeringRulesRecord(Base):
    """A shop's activity and churn thresholds, stored as the proto it set."""

    __tablename__ = "layering_rules"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
