"""When earned points expire, and which lots a debit consumes first.

Pure: instants are computed in the shop's zone, because "the end of the month"
is a local notion (a lot earned on 31 Jan 23:30 in Shanghai belongs to
January, although it is still 31 Jan in UTC only until 16:00).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta

from services.common.clock import local_midnight

MAX_EXPIRY_COUNT = 3650


class ExpiryKind(Enum):
    NEVER = 1
    DAYS_AFTER_EARNING = 2
    END_OF_MONTH = 3
    END_OF_YEAR = 4


@dataclass(frozen=True)
class ExpiryPolicy:
    kind: ExpiryKind = ExpiryKind.NEVER
    n: int = 0

    def __post_init__(self) -> None:
        if not self.minimum_n <= self.n <= MAX_EXPIRY_COUNT:
            raise ValueError(f"an expiry count must be {self.minimum_n}..{MAX_EXPIRY_COUNT}")

    @property
    def minimum_n(self) -> int:
        """Days must be at least one; "end of the month (year) 0 months on" is the earning month (year) itself."""
        return 1 if self.kind is ExpiryKind.DAYS_AFTER_EARNING else 0


def expires_at(policy: ExpiryPolicy, earned_at: datetime, zone: ZoneInfo) -> datetime | None:
    """The instant a lot earned at `earned_at` stops being spendable; None when it never does.

    Points stay usable through the whole last local day: a lot earned on 1 Jan
    with "30 days" is spendable until 31 Jan 23:59:59 and expires at 1 Feb 00:00.
    """
    earned_day = earned_at.astimezone(zone).date()
    if policy.kind is ExpiryKind.NEVER:
        return None
    if policy.kind is ExpiryKind.DAYS_AFTER_EARNING:
        return local_midnight(earned_day + timedelta(days=policy.n + 1), zone)
    if policy.kind is ExpiryKind.END_OF_MONTH:
        last_month = earned_day.replace(day=1) + relativedelta(months=policy.n)
        return local_midnight(last_month + relativedelta(months=1), zone)
    last_year = (earned_day + relativedelta(months=policy.n)).year
    return local_midnight(date(last_year + 1, 1, 1), zone)


@dataclass(frozen=True)
class LotBalance:
    lot_id: int
    remaining: int
    expires_at: datetime | None


def consumption_order(lots: Sequence[LotBalance]) -> list[LotBalance]:
    """Soonest-expiring first, never-expiring last, oldest first among equals."""
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(lots, key=lambda lot: (lot.expires_at or far, lot.lot_id))


def plan_consumption(lots: Sequence[LotBalance], amount: int) -> list[tuple[int, int]]:
    """(lot id, amount taken) for a debit of `amount`, taking whole lots soonest-expiring first.

    Takes at most what the lots hold; the caller decides what a shortfall means.
    """
    if amount < 0:
        raise ValueError("a debit amount must not be negative")
    taken: list[tuple[int, int]] = []
    left = amount
    for lot in consumption_order(lots):
        if left == 0:
            break
        take = min(lot.remaining, left)
        if take > 0:
            taken.append((lot.lot_id, take))
            left -= take
    return taken
