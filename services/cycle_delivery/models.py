"""Cycle delivery storage (plans and subscriptions arrive with the cycle delivery issue)."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass
