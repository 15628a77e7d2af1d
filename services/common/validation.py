"""Field rules shared by every service: ids, currencies, amounts, instants, dates."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.common.errors import Violations

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}\Z")  # \Z: "$" would let a trailing newline in
# Currencies a shop may record; minor-unit exponent per ISO 4217.
CURRENCY_EXPONENTS: dict[str, int] = {
    "CNY": 2,
    "HKD": 2,
    "TWD": 2,
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "SGD": 2,
    "AUD": 2,
    "CAD": 2,
    "MYR": 2,
    "THB": 2,
    "KRW": 0,
    "JPY": 0,
}
MAX_AMOUNT_MINOR = 10**15
# Instants outside this range are data-entry errors, not orders.
EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)  # public order histories (CDNOW) start in 1997
LATEST_INSTANT = datetime(2100, 1, 1, tzinfo=UTC)


def check_id(v: Violations, value: str, field_path: str) -> None:
    if not value:
        v.add(field_path, "is required")
    elif not ID_PATTERN.match(value):
        v.add(field_path, "must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")


def check_currency(v: Violations, value: str, field_path: str) -> None:
    if value not in CURRENCY_EXPONENTS:
        shown = value[:8] if value else "(empty)"
        v.add(field_path, f"unknown currency {shown!r}; use an ISO 4217 code such as CNY")


def check_amount(v: Violations, value: int, field_path: str, *, allow_zero: bool = True) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        v.add(field_path, "must be positive" if not allow_zero else "must not be negative")
    elif value > MAX_AMOUNT_MINOR:
        v.add(field_path, f"must be at most {MAX_AMOUNT_MINOR} minor units")


def check_instant(v: Violations, value: datetime | None, field_path: str) -> None:
    if value is None:
        v.add(field_path, "is required")
    elif not (EARLIEST_INSTANT <= value < LATEST_INSTANT):
        v.add(field_path, "must be between 1970-01-01 and 2100-01-01 UTC")


def check_text(v: Violations, value: str, field_path: str, *, max_length: int) -> None:
    if len(value) > max_length:
        v.add(field_path, f"must be at most {max_length} characters")


def check_date(v: Violations, year: int, month: int, day: int, field_path: str) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        v.add(field_path, f"{year:04d}-{month:02d}-{day:02d} is not a calendar date")
        return None


ZONE_PATTERN = re.compile(r"^[A-Za-z0-9_+\-]{1,32}(/[A-Za-z0-9_+\-]{1,32}){0,2}$")


def check_time_zone(v: Violations, value: str, field_path: str) -> ZoneInfo | None:
    """The IANA zone named by `value`, or None with a violation (a 5,000-character name included)."""
    shown = value[:40]
    if not ZONE_PATTERN.match(value):
        v.add(field_path, f"{shown!r} is not an IANA time zone name such as Asia/Shanghai")
        return None
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        v.add(field_path, f"unknown time zone {shown!r}; use an IANA name such as Asia/Shanghai")
        return None
