"""Earning rules: how many points an order earns, and a breakdown a member can be shown.

Pure and exact: amounts become `Fraction`s, every rule adds its share, and the
order's total is rounded once (the shop's rounding mode). The breakdown lines
are then rounded with the largest-remainder method so they always add up to
the total exactly.

Multipliers stack additively, which is what makes the breakdown honest: with a
gold tier (1.5×) in a double-points week (2×), an order earns base × (1 + 0.5 + 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from fractions import Fraction

ZERO, ONE = Fraction(0), Fraction(1)


class Rounding(Enum):
    FLOOR = "floor"
    HALF_UP = "half_up"
    CEIL = "ceil"

    def apply(self, value: Fraction) -> int:
        if self is Rounding.FLOOR:
            return math.floor(value)
        if self is Rounding.CEIL:
            return math.ceil(value)
        return math.floor(value + Fraction(1, 2))


@dataclass(frozen=True)
class Promotion:
    """A time-boxed multiplier (e.g. double points week) over [starts_at, ends_at), optionally on some categories."""

    name: str
    starts_at: datetime
    ends_at: datetime
    multiplier: Fraction
    categories: frozenset[str] = frozenset()  # empty = every category

    def applies(self, paid_at: datetime, category: str) -> bool:
        return self.starts_at <= paid_at < self.ends_at and (not self.categories or category in self.categories)


@dataclass(frozen=True)
class EarnRules:
    points_per_unit: Fraction = Fraction(1)  # points per currency unit of paid amount
    unit_minor: int = 100  # minor units in a currency unit (fen per yuan)
    rounding: Rounding = Rounding.FLOOR
    tier_multipliers: Mapping[str, Fraction] = field(default_factory=dict)
    category_multipliers: Mapping[str, Fraction] = field(default_factory=dict)
    promotions: tuple[Promotion, ...] = ()
    first_order_bonus: int = 0
    birthday_month_multiplier: Fraction = Fraction(1)
    max_per_order: int | None = None
    max_per_day: int | None = None

    def __post_init__(self) -> None:
        multipliers = [
            *self.tier_multipliers.values(),
            *self.category_multipliers.values(),
            *(p.multiplier for p in self.promotions),
            self.birthday_month_multiplier,
        ]
        if self.points_per_unit < 0 or self.unit_minor <= 0 or any(m < 0 for m in multipliers):
            raise ValueError("rates and multipliers must not be negative, and a unit must be positive")
        if self.first_order_bonus < 0 or any(c is not None and c < 0 for c in (self.max_per_order, self.max_per_day)):
            raise ValueError("bonuses and caps must not be negative")


@dataclass(frozen=True)
class EarnLine:
    category: str
    paid_minor: int


@dataclass(frozen=True)
class EarnContext:
    paid_at: datetime
    tier: str = ""
    birthday_month: bool = False  # the order falls in the member's birthday month (shop-local)
    first_order: bool = False
    earned_today: int = 0  # points already earned today (shop-local), for the daily cap


@dataclass(frozen=True)
class BreakdownItem:
    rule: str  # "base", "category:<c>", "promotion:<name>", "tier:<t>", "birthday_month", "first_order", "cap:…"
    points: int


@dataclass(frozen=True)
class Earning:
    points: int
    breakdown: tuple[BreakdownItem, ...]


def earn(rules: EarnRules, order_paid_minor: int, lines: Sequence[EarnLine], context: EarnContext) -> Earning:
    """Points for one paid order; the part of the payment not itemised in `lines` earns the base rules."""
    itemised = sum(line.paid_minor for line in lines)
    if order_paid_minor < 0 or any(line.paid_minor < 0 for line in lines) or itemised > order_paid_minor:
        raise ValueError("paid amounts must be non-negative and lines may not exceed the order")
    parts = [*lines, EarnLine("", order_paid_minor - itemised)] if itemised < order_paid_minor else list(lines)
    shares: dict[str, Fraction] = {}

    def add(rule: str, amount: Fraction) -> None:
        if amount:
            shares[rule] = shares.get(rule, ZERO) + amount

    def add_multiplied(rule: str, base: Fraction, multiplier: Fraction) -> None:
        """What a multiplier adds on top of the base (a multiplier of 1 adds nothing: no Fraction work)."""
        if multiplier != 1:
            add(rule, base * (multiplier - 1))

    rate = rules.points_per_unit
    tier = rules.tier_multipliers.get(context.tier, ONE)
    for part in parts:
        base = Fraction(part.paid_minor * rate.numerator, rate.denominator * rules.unit_minor)
        add("base", base)
        add_multiplied(f"category:{part.category}", base, rules.category_multipliers.get(part.category, ONE))
        for promotion in rules.promotions:
            if promotion.applies(context.paid_at, part.category):
                add_multiplied(f"promotion:{promotion.name}", base, promotion.multiplier)
        add_multiplied(f"tier:{context.tier}", base, tier)
        if context.birthday_month:
            add_multiplied("birthday_month", base, rules.birthday_month_multiplier)
    if context.first_order:
        add("first_order", Fraction(rules.first_order_bonus))
    rounded = rules.rounding.apply(sum(shares.values(), ZERO))
    items = _largest_remainder(shares, rounded)
    if rounded < 0:  # multipliers below 1 can take an order under zero; an order never costs points
        items.append(BreakdownItem("floor:zero", -rounded))
    capped = max(0, rounded)
    if rules.max_per_order is not None and capped > rules.max_per_order:
        items.append(BreakdownItem("cap:order", rules.max_per_order - capped))
        capped = rules.max_per_order
    if rules.max_per_day is not None:
        room = max(0, rules.max_per_day - context.earned_today)
        if capped > room:
            items.append(BreakdownItem("cap:day", room - capped))
            capped = room
    return Earning(capped, tuple(items))


def _largest_remainder(shares: Mapping[str, Fraction], total: int) -> list[BreakdownItem]:
    """Integer lines that add up to `total`, each as close to its exact share as possible.

    `total` is the rounded sum of the shares, so it exceeds the sum of their
    floors by less than the number of shares: each gets at most one extra point.
    """
    floors = {rule: math.floor(share) for rule, share in shares.items()}
    missing = total - sum(floors.values())
    for rule in sorted(shares, key=lambda r: (-(shares[r] - floors[r]), r))[:missing]:
        floors[rule] += 1
    return [BreakdownItem(rule, points) for rule, points in floors.items() if points]
