"""Earning rules by hand, and the breakdown always adding up (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.points.earning import (
    BreakdownItem,
    EarnContext,
    EarnLine,
    EarnRules,
    Promotion,
    Rounding,
    earn,
)

NOON = datetime(2026, 11, 11, 4, tzinfo=UTC)
WEEK = Promotion(
    "double-11", datetime(2026, 11, 9, 16, tzinfo=UTC), datetime(2026, 11, 12, 16, tzinfo=UTC), Fraction(2)
)


def items(*pairs: tuple[str, int]) -> tuple[BreakdownItem, ...]:
    return tuple(BreakdownItem(rule, points) for rule, points in pairs)


def test_base_rate_floors_once_per_order() -> None:
    result = earn(EarnRules(), 19999, [], EarnContext(NOON))  # 199.99 yuan at 1 point per yuan
    assert (result.points, result.breakdown) == (199, items(("base", 199)))


@pytest.mark.parametrize(
    ("rounding", "expected"), [(Rounding.FLOOR, 199), (Rounding.HALF_UP, 200), (Rounding.CEIL, 200)]
)
def test_rounding_modes(rounding: Rounding, expected: int) -> None:
    assert earn(EarnRules(rounding=rounding), 19950, [], EarnContext(NOON)).points == expected


def test_tier_bonus_and_largest_remainder_breakdown() -> None:
    rules = EarnRules(tier_multipliers={"gold": Fraction(3, 2)})
    result = earn(rules, 19999, [], EarnContext(NOON, tier="gold"))
    # Exact: base 199.99 + tier 99.995 = 299.985 -> 299; the tier line has the larger remainder.
    assert (result.points, result.breakdown) == (299, items(("base", 199), ("tier:gold", 100)))


def test_promotion_and_category_apply_to_their_lines_only() -> None:
    rules = EarnRules(
        category_multipliers={"milk": Fraction(3)},
        promotions=(Promotion("fruit-week", WEEK.starts_at, WEEK.ends_at, Fraction(2), frozenset({"fruit"})),),
    )
    lines = [EarnLine("milk", 10000), EarnLine("fruit", 5000)]
    result = earn(rules, 20000, lines, EarnContext(NOON))  # 50 yuan not itemised
    # base 100 + 50 + 50 = 200; milk +200 (3x on 100); fruit-week +50 (2x on 50).
    assert result.points == 450
    assert dict((i.rule, i.points) for i in result.breakdown) == {
        "base": 200,
        "category:milk": 200,
        "promotion:fruit-week": 50,
    }


def test_promotion_window_is_half_open() -> None:
    rules = EarnRules(promotions=(WEEK,))
    assert earn(rules, 10000, [], EarnContext(WEEK.starts_at)).points == 200
    assert earn(rules, 10000, [], EarnContext(WEEK.ends_at)).points == 100


def test_additive_stacking_birthday_and_first_order_bonus() -> None:
    rules = EarnRules(
        tier_multipliers={"gold": Fraction(3, 2)},
        promotions=(WEEK,),
        birthday_month_multiplier=Fraction(2),
        first_order_bonus=50,
    )
    result = earn(rules, 10000, [], EarnContext(NOON, tier="gold", birthday_month=True, first_order=True))
    # 100 × (1 + 1 + 0.5 + 1) + 50 = 400.
    assert result.points == 400
    assert dict((i.rule, i.points) for i in result.breakdown) == {
        "base": 100,
        "promotion:double-11": 100,
        "tier:gold": 50,
        "birthday_month": 100,
        "first_order": 50,
    }


def test_caps_per_order_and_per_day() -> None:
    rules = EarnRules(max_per_order=150, max_per_day=500)
    assert earn(rules, 30000, [], EarnContext(NOON)).breakdown[-1] == BreakdownItem("cap:order", -150)
    late = earn(rules, 30000, [], EarnContext(NOON, earned_today=420))
    assert (late.points, late.breakdown[-1]) == (80, BreakdownItem("cap:day", -70))
    assert earn(rules, 30000, [], EarnContext(NOON, earned_today=900)).points == 0


def test_an_order_never_costs_points() -> None:
    rules = EarnRules(category_multipliers={"gift_card": Fraction(0)}, tier_multipliers={"staff": Fraction(0)})
    result = earn(rules, 10000, [EarnLine("gift_card", 10000)], EarnContext(NOON, tier="staff"))
    assert result.points == 0
    assert sum(i.points for i in result.breakdown) == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"points_per_unit": Fraction(-1)},
        {"unit_minor": 0},
        {"tier_multipliers": {"x": Fraction(-1)}},
        {"first_order_bonus": -5},
        {"max_per_day": -1},
    ],
)
def test_bad_rules_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"negative|positive"):
        EarnRules(**bad)  # type: ignore[arg-type]


def test_lines_beyond_the_order_are_refused() -> None:
    with pytest.raises(ValueError, match="exceed"):
        earn(EarnRules(), 100, [EarnLine("a", 101)], EarnContext(NOON))


multipliers = st.fractions(min_value=0, max_value=5, max_denominator=8)


@given(
    paid=st.integers(0, 10**7),
    split=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 10**5)), max_size=5),
    tier=multipliers,
    category=multipliers,
    promo=multipliers,
    birthday=multipliers,
    rounding=st.sampled_from(list(Rounding)),
    bonus=st.integers(0, 500),
    cap=st.one_of(st.none(), st.integers(0, 10**5)),
    earned_today=st.integers(0, 10**5),
)
def test_breakdown_always_adds_up_and_caps_hold(
    paid: int,
    split: list[tuple[str, int]],
    tier: Fraction,
    category: Fraction,
    promo: Fraction,
    birthday: Fraction,
    rounding: Rounding,
    bonus: int,
    cap: int | None,
    earned_today: int,
) -> None:
    lines = [EarnLine(c, a) for c, a in split]
    paid = max(paid, sum(line.paid_minor for line in lines))
    rules = EarnRules(
        rounding=rounding,
        tier_multipliers={"t": tier},
        category_multipliers={"a": category},
        promotions=(Promotion("p", WEEK.starts_at, WEEK.ends_at, promo, frozenset({"b"})),),
        birthday_month_multiplier=birthday,
        first_order_bonus=bonus,
        max_per_day=cap,
    )
    result = earn(
        rules,
        paid,
        lines,
        EarnContext(NOON, tier="t", birthday_month=True, first_order=True, earned_today=earned_today),
    )
    assert sum(i.points for i in result.breakdown) == result.points
    assert result.points >= 0
    if cap is not None:
        assert result.points <= max(0, cap - earned_today)
