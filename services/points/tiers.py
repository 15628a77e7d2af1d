"""Member tiers (会员等级): which tier a basis value reaches, and when a member may move down.

Upgrades are immediate; downgrades wait for a review and a grace period, so a
member who reached gold in March is not demoted by a refund in April. Every
move carries a reason a support agent can read out.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from fractions import Fraction


class TierBasis(Enum):
    LIFETIME_GROWTH = 1
    ROLLING_SPEND = 2


@dataclass(frozen=True)
class Tier:
    code: str
    name: str
    threshold: int
    earn_multiplier: Fraction = Fraction(1)
    birthday_bonus_points: int = 0
    free_shipping: bool = False


@dataclass(frozen=True)
class TierRules:
    basis: TierBasis = TierBasis.LIFETIME_GROWTH
    rolling_window_days: int = 365
    tiers: tuple[Tier, ...] = ()
    downgrade_grace_days: int = 0

    def __post_init__(self) -> None:
        thresholds = [t.threshold for t in self.tiers]
        if any(b <= a for a, b in itertools.pairwise(thresholds)):
            raise ValueError("tier thresholds must strictly increase")
        if any(t < 0 for t in thresholds) or len({t.code for t in self.tiers}) != len(self.tiers):
            raise ValueError("thresholds must not be negative and codes must be unique")

    def by_code(self, code: str) -> Tier | None:
        return next((t for t in self.tiers if t.code == code), None)

    def rank(self, code: str) -> int:
        """Position on the ladder; -1 below the first tier (or for a tier no longer on it)."""
        return next((i for i, t in enumerate(self.tiers) if t.code == code), -1)


def reached_tier(rules: TierRules, basis_value: int) -> Tier | None:
    """The highest tier whose threshold `basis_value` reaches."""
    reached = [t for t in rules.tiers if basis_value >= t.threshold]
    return reached[-1] if reached else None


@dataclass(frozen=True)
class TierMove:
    to_code: str
    reason: str


def upgrade(rules: TierRules, current_code: str, basis_value: int) -> TierMove | None:
    """A move up when the basis reaches a higher tier than the current one; never down."""
    reached = reached_tier(rules, basis_value)
    if reached is None or rules.rank(reached.code) <= rules.rank(current_code):
        return None
    return TierMove(reached.code, f"basis {basis_value} reached {reached.code} threshold {reached.threshold}")


def review(
    rules: TierRules, current_code: str, basis_value: int, since: datetime | None, now: datetime
) -> TierMove | None:
    """The periodic review: up if reached; down to the tier the basis supports once the grace period is over.

    A member on a tier the shop has since removed moves at once: there is no
    threshold left to keep.
    """
    moved_up = upgrade(rules, current_code, basis_value)
    if moved_up is not None:
        return moved_up
    reached = reached_tier(rules, basis_value)
    target = reached.code if reached else ""
    if target == current_code:
        return None
    current = rules.by_code(current_code)
    in_grace = since is not None and now < since + timedelta(days=rules.downgrade_grace_days)
    if current is not None and in_grace:
        return None
    if current is None:
        return TierMove(target, f"review: tier {current_code} is no longer offered")
    return TierMove(target, f"review: basis {basis_value} below {current_code} threshold {current.threshold}")


@dataclass(frozen=True)
class Progress:
    next_code: str
    to_next: int


def progress(rules: TierRules, current_code: str, basis_value: int) -> Progress:
    """The next tier above the current one and how much basis is missing to reach it."""
    above: Sequence[Tier] = rules.tiers[rules.rank(current_code) + 1 :]
    if not above:
        return Progress("", 0)
    return Progress(above[0].code, max(0, above[0].threshold - basis_value))
