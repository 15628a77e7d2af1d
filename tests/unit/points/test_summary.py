"""Points flows per month: every ledger kind lands in exactly one flow, and the flows add up to the ledger."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from services.points.summary import month_bounds, month_starts, points_flows

CREDITS = ("EARN", "REWARD", "CAMPAIGN", "ADJUSTMENT", "RESTORE")
DEBITS = ("SPEND", "REDEEM", "EXPIRY", "CLAWBACK", "ADJUSTMENT")


def test_each_kind_goes_to_its_flow() -> None:
    flows = points_flows(
        [
            ("EARN", 100),
            ("REWARD", 20),
            ("CAMPAIGN", 30),
            ("ADJUSTMENT", 5),
            ("ADJUSTMENT", -7),
            ("SPEND", -40),
            ("REDEEM", -25),
            ("RESTORE", 15),
            ("EXPIRY", -9),
            ("CLAWBACK", -11),
        ]
    )
    assert (flows.issued, flows.redeemed, flows.expired, flows.clawed_back) == (155, 50, 9, 18)


def test_a_restore_in_a_month_without_spends_does_not_make_redeemed_negative() -> None:
    assert points_flows([("RESTORE", 30)]).redeemed == 0


@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(CREDITS[:4]), st.integers(1, 10**9)),
            st.tuples(st.sampled_from(DEBITS), st.integers(-(10**9), -1)),
        ),
        max_size=30,
    ),
    st.integers(0, 10**9),
)
def test_flows_add_up_to_the_net_ledger_movement(sums: list[tuple[str, int]], restored: int) -> None:
    spent = -sum(delta for kind, delta in sums if kind in ("SPEND", "REDEEM"))
    restored = min(restored, spent)  # the ledger never restores more than was spent
    flows = points_flows([*sums, ("RESTORE", restored)] if restored else sums)
    net = sum(delta for _, delta in sums) + restored
    assert flows.issued - flows.redeemed - flows.expired - flows.clawed_back == net
    assert min(flows.issued, flows.redeemed, flows.expired, flows.clawed_back) >= 0


def test_months_run_inclusive_across_the_year_end() -> None:
    assert month_starts(date(2025, 11, 20), date(2026, 2, 3)) == [
        date(2025, 11, 1),
        date(2025, 12, 1),
        date(2026, 1, 1),
        date(2026, 2, 1),
    ]
    assert month_starts(date(2026, 3, 1), date(2026, 2, 1)) == []


def test_month_bounds_are_local_midnights() -> None:
    start, end = month_bounds(date(2026, 12, 1), ZoneInfo("Asia/Shanghai"))
    assert (start.astimezone(UTC), end.astimezone(UTC)) == (
        datetime(2026, 11, 30, 16, tzinfo=UTC),
        datetime(2026, 12, 31, 16, tzinfo=UTC),
    )
