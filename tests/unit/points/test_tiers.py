"""Tier upgrades, reviews with grace periods, and progress to the next tier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.points.tiers import Tier, TierRules, progress, reached_tier, review, upgrade

RULES = TierRules(
    tiers=(Tier("silver", "白银", 1_000), Tier("gold", "黄金", 5_000), Tier("black", "黑金", 20_000)),
    downgrade_grace_days=30,
)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_reached_tier_is_the_highest_threshold_met() -> None:
    assert [getattr(reached_tier(RULES, v), "code", "") for v in (0, 999, 1_000, 19_999, 10**9)] == [
        "",
        "",
        "silver",
        "gold",
        "black",
    ]


def test_upgrade_skips_tiers_and_never_moves_down() -> None:
    move = upgrade(RULES, "", 6_000)
    assert move is not None
    assert move.to_code == "gold"
    assert "5000" in move.reason
    assert upgrade(RULES, "gold", 1_500) is None
    assert upgrade(RULES, "gold", 5_000) is None


def test_review_waits_for_the_grace_period_before_moving_down() -> None:
    since = NOW - timedelta(days=29)
    assert review(RULES, "gold", 0, since, NOW) is None
    move = review(RULES, "gold", 1_200, since, NOW + timedelta(days=1))
    assert move is not None
    assert move.to_code == "silver"
    assert "below gold" in move.reason


def test_review_moves_up_without_waiting_and_off_a_removed_tier_at_once() -> None:
    assert getattr(review(RULES, "silver", 25_000, NOW, NOW), "to_code", None) == "black"
    assert getattr(review(RULES, "platinum", 6_000, NOW, NOW), "to_code", None) == "gold"
    move = review(RULES, "platinum", 500, NOW, NOW)
    assert move is not None
    assert move.to_code == ""
    assert "no longer offered" in move.reason


def test_progress_names_the_next_tier_and_the_gap() -> None:
    assert (progress(RULES, "", 300).next_code, progress(RULES, "", 300).to_next) == ("silver", 700)
    assert (progress(RULES, "gold", 7_000).next_code, progress(RULES, "gold", 7_000).to_next) == ("black", 13_000)
    assert (progress(RULES, "black", 0).next_code, progress(RULES, "black", 0).to_next) == ("", 0)
    # kept in a tier by grace, already above the next threshold: nothing missing
    assert progress(RULES, "silver", 6_000).to_next == 0


@pytest.mark.parametrize("thresholds", [(10, 10), (10, 5), (-1, 5)])
def test_ladders_must_strictly_increase_from_zero(thresholds: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="thresholds"):
        TierRules(tiers=tuple(Tier(f"t{i}", "", t) for i, t in enumerate(thresholds)))


@given(
    st.sampled_from(["", "silver", "gold", "black"]),
    st.integers(0, 30_000),
    st.integers(0, 60),
)
def test_after_a_review_past_grace_the_tier_is_exactly_the_one_reached(code: str, value: int, age: int) -> None:
    since = NOW - timedelta(days=age)
    move = review(RULES, code, value, since, NOW)
    after = move.to_code if move else code
    reached = getattr(reached_tier(RULES, value), "code", "")
    if age >= RULES.downgrade_grace_days:
        assert after == reached
    else:
        assert RULES.rank(after) == max(RULES.rank(code), RULES.rank(reached))
