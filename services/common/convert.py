"""Protobuf <-> Python value conversions used by every servicer."""

from __future__ import annotations

from datetime import UTC, date, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2

from services.common.errors import Violations
from services.common.validation import check_date


def to_timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def from_timestamp(v: Violations, stamp: Timestamp, field_path: str, *, present: bool) -> datetime | None:
    """An aware UTC datetime, or None (recorded as a violation) when unset or out of range."""
    if not present:
        v.add(field_path, "is required")
        return None
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        v.add(field_path, "is not a valid timestamp")
        return None


def to_date(value: date) -> common_pb2.Date:
    return common_pb2.Date(year=value.year, month=value.month, day=value.day)


def from_date(v: Violations, value: common_pb2.Date, field_path: str) -> date | None:
    return check_date(v, value.year, value.month, value.day, field_path)


def to_money(amount_minor: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount_minor, currency=currency)
