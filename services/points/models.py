"""Points storage: cached member balances and the append-only, double-entry ledger."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String
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
    __table_args__ = (Index("ix_entries_holder", "shop_id", "holder", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    shop_id: Mapped[str] = mapped_column(String(64))
    transfer_id: Mapped[str] = mapped_column(String(80), index=True)
    holder: Mapped[str] = mapped_column(String(64))
    asset: Mapped[int] = mapped_column(Integer)
    delta: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(200), default="")
    request_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
