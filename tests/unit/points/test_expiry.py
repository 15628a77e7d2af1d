"""Expiry instants in the shop's zone, and the order in which debits consume lots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.points.expiry import ExpiryKind, ExpiryPolicy, LotBalance, expires_at, plan_consumption

SHANGHAI = ZoneInfo("Asia/Shanghai")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI).astimezone(UTC)  # type: ignore[arg-type, misc]


@pytest.mark.parametrize(
    ("policy", "earned", "expected"),
    [
        (ExpiryPolicy(ExpiryKind.NEVER), local(2026, 1, 1), None),
        (ExpiryPolicy(ExpiryKind.DAYS_AFTER_EARNING, 30), local(2026, 1, 1, 9), local(2026, 2, 1)),
        # 31 Jan 23:30 in Shanghai is still January there (15:30 UTC)
        (ExpiryPolicy(ExpiryKind.END_OF_MONTH, 0), local(2026, 1, 31, 23, 30), local(2026, 2, 1)),
        (ExpiryPolicy(ExpiryKind.END_OF_MONTH, 1), local(2026, 1, 31, 23, 30), local(2026, 3, 1)),
        (ExpiryPolicy(ExpiryKind.END_OF_MONTH, 12), local(2026, 2, 1, 0, 5), local(2027, 3, 1)),
        (ExpiryPolicy(ExpiryKind.END_OF_YEAR, 0), local(2026, 12, 31, 23), local(2027, 1, 1)),
        (ExpiryPolicy(ExpiryKind.END_OF_YEAR, 6), local(2026, 6, 30), local(2027, 1, 1)),
        (ExpiryPolicy(ExpiryKind.END_OF_YEAR, 6), local(2026, 7, 1), local(2028, 1, 1)),
    ],
)
def test_expiry_instants(policy: ExpiryPolicy, earned: datetime, expected: datetime | None) -> None:
    assert expires_at(policy, earned, SHANGHAI) == expected


def test_the_local_day_not_the_utc_day_decides() -> None:
    # 1 Jan 07:00 Shanghai is still 31 Dec in UTC; the lot is January's.
    earned = local(2026, 1, 1, 7)
    assert earned.day == 31
    assert expires_at(ExpiryPolicy(ExpiryKind.END_OF_MONTH, 0), earned, SHANGHAI) == local(2026, 2, 1)
    assert expires_at(ExpiryPolicy(ExpiryKind.END_OF_MONTH, 0), earned, ZoneInfo("UTC")) == datetime(
        2026, 1, 1, tzinfo=UTC
    )


@pytest.mark.parametrize("policy", [(ExpiryKind.DAYS_AFTER_EARNING, 0), (ExpiryKind.END_OF_MONTH, -1)])
def test_counts_out_of_range_are_refused(policy: tuple[ExpiryKind, int]) -> None:
    with pytest.raises(ValueError, match="expiry count"):
        ExpiryPolicy(*policy)


def test_soonest_expiring_first_never_expiring_last() -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    lots = [
        LotBalance(1, 50, None),
        LotBalance(2, 30, base + timedelta(days=10)),
        LotBalance(3, 20, base + timedelta(days=5)),
        LotBalance(4, 10, base + timedelta(days=5)),
    ]
    assert plan_consumption(lots, 65) == [(3, 20), (4, 10), (2, 30), (1, 5)]


lot_lists = st.lists(
    st.builds(
        LotBalance,
        st.integers(1, 10_000),
        st.integers(0, 1_000),
        st.none() | st.datetimes(timezones=st.just(UTC)),
    ),
    unique_by=lambda lot: lot.lot_id,
    max_size=20,
)


@given(lot_lists, st.integers(0, 25_000))
def test_a_plan_takes_what_is_asked_or_everything_and_never_more_than_a_lot_holds(
    lots: list[LotBalance], amount: int
) -> None:
    plan = plan_consumption(lots, amount)
    holds = {lot.lot_id: lot.remaining for lot in lots}
    assert sum(take for _, take in plan) == min(amount, sum(holds.values()))
    assert all(0 < take <= holds[lot_id] for lot_id, take in plan)
    # every lot but the last in the plan is emptied: soonest-expiring lots are used up first
    assert all(take == holds[lot_id] for lot_id, take in plan[:-1])
