"""Refund shares that never claw back twice, and the rules for points as payment."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import FailedPrecondition
from services.points.domain import (
    DrawRule,
    InsufficientBalance,
    SpendRules,
    check_spend,
    kept_share,
    rebate_for,
    refunded_share,
    split_stored_value_draw,
    top_up_bonus,
)


@given(st.integers(0, 10**7), st.integers(1, 10**9), st.data())
def test_any_split_of_refunds_claws_back_the_same_as_their_sum(value: int, paid: int, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, paid), max_size=6)))
    steps = [b - a for a, b in zip([0, *cuts], cuts, strict=False)]
    refunded, clawed = 0, 0
    for step in steps:
        clawed += kept_share(value, paid, refunded) - kept_share(value, paid, refunded + step)
        refunded += step
    assert clawed == value - kept_share(value, paid, refunded)
    assert 0 <= kept_share(value, paid, refunded) <= value
    assert kept_share(value, paid, paid) == 0
    assert refunded_share(value, paid, paid) == value


def test_kept_share_rounds_down_so_the_member_keeps_whole_points_only() -> None:
    assert kept_share(100, 10_001, 6_667) == 33
    assert refunded_share(100, 10_001, 6_667) == 67
    assert kept_share(50, 0, 0) == 50  # a free order keeps its bonus until refunded


def test_spend_rules_step_and_cap() -> None:
    rules = SpendRules(points_per_unit=100, max_share_bp=3_000)
    assert rules.step(100) == 1
    assert SpendRules(300).step(100) == 3
    assert SpendRules(50).step(1) == 50
    assert rules.max_points(10_000, 100) == 3_000
    assert check_spend(rules, 3_000, 10_000, 100) == 3_000
    with pytest.raises(FailedPrecondition) as caught:
        check_spend(rules, 3_001, 10_000, 100)
    assert caught.value.reason == "POINTS_OVER_MAX_SHARE"
    assert caught.value.metadata["max_points"] == "3000"


@given(st.integers(1, 10_000), st.integers(1, 10_000), st.integers(1, 10**8), st.sampled_from([1, 100]))
def test_the_most_points_accepted_are_accepted_and_worth_no_more_than_the_share(
    per_unit: int, share: int, amount: int, unit: int
) -> None:
    rules = SpendRules(per_unit, share)
    most = rules.max_points(amount, unit)
    if most:
        discount = check_spend(rules, most, amount, unit)
        assert discount * 10_000 <= amount * share
    with pytest.raises(FailedPrecondition):
        check_spend(rules, most + rules.step(unit), amount, unit)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 2 * 10**6), st.sampled_from(list(DrawRule)))
def test_a_stored_value_draw_adds_up_and_never_overdraws_either_side(
    principal: int, bonus: int, amount: int, rule: DrawRule
) -> None:
    if amount > principal + bonus:
        with pytest.raises(InsufficientBalance):
            split_stored_value_draw(amount, principal, bonus, rule)
        return
    from_principal, from_bonus = split_stored_value_draw(amount, principal, bonus, rule)
    assert from_principal + from_bonus == amount
    assert 0 <= from_principal <= principal
    assert 0 <= from_bonus <= bonus
    if rule is DrawRule.BONUS_FIRST:
        assert from_bonus == min(amount, bonus)
    elif principal + bonus:
        assert from_bonus * (principal + bonus) <= amount * bonus  # the bonus pays at most its share


def test_top_up_bonus_is_the_largest_plan_reached() -> None:
    plans = [(100_000, 15_000), (50_000, 5_000)]
    assert [top_up_bonus(paid, plans) for paid in (49_999, 50_000, 99_999, 200_000)] == [0, 5_000, 5_000, 15_000]
    assert rebate_for(12_345, 200) == 246
