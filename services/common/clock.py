"""The one source of "now", so tests can move time instead of sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def local_date(instant: datetime, zone: ZoneInfo) -> date:
    """The shop-local calendar day of an instant (00:30 Shanghai is the same day, not UTC's)."""
    if instant.tzinfo is None:
        raise ValueError("naive datetime: instants must be timezone-aware UTC")
    return instant.astimezone(zone).date()


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of a shop-local day, in UTC (a Shanghai day starts at 16:00 UTC the day before)."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
