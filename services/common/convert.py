"""Protobuf <-> Python value conversions used by every servicer."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import overload

from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2

from services.common.errors import Violations
from services.common.validation import check_date

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@overload
def to_timestamp(value: datetime) -> Timestamp: ...
@overload
def to_timestamp(value: None) -> None: ...
@overload
def to_timestamp(value: datetime | None) -> Timestamp | None: ...
def to_timestamp(value: datetime | None) -> Timestamp | None:
    """Whole microseconds since the epoch, in integers (Timestamp.FromDatetime's tuple road costs more per stamp)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.astimezone(UTC)  # as FromDatetime took it: local time
    since = value - EPOCH  # an aware datetime: exact across offsets; days may be negative, the rest never is
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1_000)


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
