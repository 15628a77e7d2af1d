"""Points storage: cached member balances and the append-only, double-entry ledger."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, LargeBinary, PrimaryKeyConstraint, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import UtcDateTime


class Base(DeclarativeBase):
    pass


class Balance(Base):
    """Cached balance of one member's asset; always equals the sum of its entries.

    System accounts (the counter side of each transfer) are not cached: one hot
    row per shop would serialise every transfer. Their balance is the sum of
    their entries, which `reconcile` checks.
    """

    __tablename__ = "balances"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64), primary_key=True)
    asset: Mapped[int] = mapped_column(Integer, primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Entry(Base):
    """One side of a transfer. Entries are never updated or deleted."""

    __tablename__ = "entries"
    __table_args__ = (PrimaryKeyConstraint("shop_id", "id"), Index("ix_entries_holder", "shop_id", "holder", "id"))

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    transfer_id: Mapped[str] = mapped_column(String(80), index=True)
    holder: Mapped[str] = mapped_column(String(64))
    asset: Mapped[int] = mapped_column(Integer)
    delta: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(200), default="")
    request_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ProgramRecord(Base):
    """A shop's program, stored as the proto it was set as (defaults filled in)."""

    __tablename__ = "programs"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Lot(Base):
    """Value credited at one time with one expiry; debits consume lots soonest-expiring first.

    Guarded by the member's balance row lock: every change to a member's lots
    happens in a transaction that holds it. The unexpired lots of a member add up
    to the balance (or to zero while the balance is negative).
    """

    __tablename__ = "lots"
    __table_args__ = (
        PrimaryKeyConstraint("shop_id", "id"),
        Index("ix_lots_member", "shop_id", "customer_id", "asset", "expires_at"),
        Index("ix_lots_expiry", "expires_at"),
    )

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    asset: Mapped[int] = mapped_column(Integer)
    transfer_id: Mapped[str] = mapped_column(String(80))
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    earned_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class LotUse(Base):
    """How much of a lot one debit took, so a refund can give it back to the same lot."""

    __tablename__ = "lot_uses"
    __table_args__ = (PrimaryKeyConstraint("shop_id", "id"), Index("ix_lot_uses_transfer", "shop_id", "transfer_id"))

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    transfer_id: Mapped[str] = mapped_column(String(80))
    lot_id: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    restored: Mapped[int] = mapped_column(BigInteger, default=0)


class OrderEarning(Base):
    """What one order earns; pending until its return window closes."""

    __tablename__ = "order_earnings"
    __table_args__ = (
        Index("ix_order_earnings_member", "shop_id", "customer_id", "paid_at"),
        Index("ix_order_earnings_due", "state", "activates_at"),
    )

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    paid_at: Mapped[datetime] = mapped_column(UtcDateTime)
    paid_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    earned_points: Mapped[int] = mapped_column(BigInteger)  # at earning time, before refunds
    earned_growth: Mapped[int] = mapped_column(BigInteger)
    earned_rebate: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    breakdown: Mapped[str] = mapped_column(Text)  # JSON [[rule, points], ...]
    refunded_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[int] = mapped_column(Integer)  # proto EarningState
    activates_at: Mapped[datetime] = mapped_column(UtcDateTime)
    activated_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class OrderSpend(Base):
    """Points one request spent on an order; refunds of the order give back a share."""

    __tablename__ = "order_spends"
    __table_args__ = (Index("ix_order_spends_order", "shop_id", "order_id"),)

    transfer_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(String(64))
    asset: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(BigInteger)
    restored: Mapped[int] = mapped_column(BigInteger, default=0)


class MallItemRecord(Base):
    __tablename__ = "mall_items"
    # What makes an oversell impossible on the hot path: its decrement fails here instead of going below zero.
    __table_args__ = (CheckConstraint("stock >= 0", name="ck_mall_items_stock_not_negative"),)

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    cost_points: Mapped[int] = mapped_column(BigInteger)
    stock: Mapped[int] = mapped_column(BigInteger)
    starts_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    ends_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    per_customer_limit: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Redemption(Base):
    __tablename__ = "redemptions"
    __table_args__ = (
        PrimaryKeyConstraint("shop_id", "id"),
        Index("ix_redemptions_member", "shop_id", "item_id", "customer_id"),
    )

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    points: Mapped[int] = mapped_column(BigInteger)
    transfer_id: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class MemberTier(Base):
    __tablename__ = "member_tiers"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tier_code: Mapped[str] = mapped_column(String(32))
    since: Mapped[datetime] = mapped_column(UtcDateTime)
    reviewed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class TierChange(Base):
    """Tier history: every move with its reason."""

    __tablename__ = "tier_changes"
    __table_args__ = (
        PrimaryKeyConstraint("shop_id", "id"),
        Index("ix_tier_changes_member", "shop_id", "customer_id", "id"),
    )

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    from_code: Mapped[str] = mapped_column(String(32))
    to_code: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(200))
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class TopUpRecord(Base):
    """A stored-value top-up; its principal and bonus lots share its transfer id."""

    __tablename__ = "top_ups"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    top_up_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    transfer_id: Mapped[str] = mapped_column(String(80))
    paid_minor: Mapped[int] = mapped_column(BigInteger)
    bonus_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    refunded_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RewardClaim(Base):
    """One claimed event reward; the key (e.g. "review:o-1") makes each event pay once."""

    __tablename__ = "reward_claims"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    claim_key: Mapped[str] = mapped_column(String(160), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CouponRecord(Base):
    __tablename__ = "coupons"
    __table_args__ = (PrimaryKeyConstraint("shop_id", "id"), Index("ix_coupons_member", "shop_id", "customer_id", "id"))

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    template_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    value_minor: Mapped[int] = mapped_column(BigInteger)
    min_order_minor: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(160))
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    redeemed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    redeemed_order_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Campaign(Base):
    """A campaign grant's terms, fixed by its first run; per-customer once-ness lives in reward claims."""

    __tablename__ = "campaigns"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    segment_id: Mapped[str] = mapped_column(String(64))
    segment_version: Mapped[int] = mapped_column(BigInteger)
    points: Mapped[int] = mapped_column(BigInteger)
    coupon_template_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
