"""Where points went, month by month: the ledger's entry kinds sorted into the flows a merchant reads.

Pure: the store sums member-side points entries per (kind, sign) and month;
`points_flows` turns those sums into issued / redeemed / expired / clawed back,
each a non-negative amount, so a dashboard never has to know the entry kinds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from loyalty.common.v1 import common_pb2

from services.common.errors import Violations
from services.common.validation import check_date

MAX_SUMMARY_MONTHS = 36

# Kinds whose member-side points entries are credits handed out by the shop.
ISSUING_KINDS = frozenset({"EARN", "REWARD", "CAMPAIGN"})
# Kinds that spend points; RESTORE gives back a spend when its order is refunded.
REDEEMING_KINDS = frozenset({"SPEND", "REDEEM"})


@dataclass(frozen=True)
class PointsFlows:
    issued: int = 0
    redeemed: int = 0
    expired: int = 0
    clawed_back: int = 0


def points_flows(sums: Iterable[tuple[str, int]]) -> PointsFlows:
    """Sorts (kind, summed member-side delta) pairs, split by sign, into the four flows.

    Adjustments count as issued when positive and clawed back when negative;
    restored spends reduce redeemed, so a refunded redemption nets to zero.
    """
    issued = redeemed = expired = clawed_back = 0
    for kind, delta in sums:
        if kind in ISSUING_KINDS or (kind == "ADJUSTMENT" and delta > 0):
            issued += delta
        elif kind in REDEEMING_KINDS or kind == "RESTORE":
            redeemed -= delta
        elif kind == "EXPIRY":
            expired -= delta
        elif kind == "CLAWBACK" or (kind == "ADJUSTMENT" and delta < 0):
            clawed_back -= delta
    return PointsFlows(issued, max(redeemed, 0), expired, clawed_back)


def month_starts(first: date, last: date) -> list[date]:
    """The first day of every month from `first`'s month to `last`'s, inclusive."""
    months = []
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        months.append(date(year, month, 1))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def month_bounds(month: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of a calendar month in the shop's zone, as aware datetimes."""
    following = date(month.year + 1, 1, 1) if month.month == 12 else date(month.year, month.month + 1, 1)
    return (
        datetime(month.year, month.month, 1, tzinfo=zone),
        datetime(following.year, following.month, 1, tzinfo=zone),
    )


def month_of(v: Violations, value: common_pb2.Date, field_path: str) -> date | None:
    """The first day of the month `value` names (its day is ignored), or None with a violation."""
    if value.year == 0 and value.month == 0:
        v.add(field_path, "required: a month such as {year: 2026, month: 3}")
        return None
    return check_date(v, value.year, value.month, 1, field_path)
