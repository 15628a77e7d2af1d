"""Points rules in plain Python: which assets exist, how a transfer changes a balance."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum, IntEnum

from services.common.errors import FailedPrecondition

MAX_ADJUSTMENT = 100_000_000
# An order earning's state; the values equal the proto enum `loyalty.points.v1.EarningState`.
PENDING = 1
ACTIVE = 2
REFUNDED = 3


class Asset(IntEnum):
    """Values equal the proto enum `loyalty.points.v1.Asset`."""

    POINTS = 1
    GROWTH = 2
    STORED_PRINCIPAL = 3
    STORED_BONUS = 4
    REBATE = 5


class InsufficientBalance(FailedPrecondition):
    reason = "INSUFFICIENT_BALANCE"


@dataclass(frozen=True)
class Movement:
    before: int
    delta: int

    @property
    def after(self) -> int:
        return self.before + self.delta


def apply_delta(balance: int, delta: int, *, allow_negative: bool = False) -> Movement:
    """The movement of a balance by `delta`; a debit below zero is refused unless allowed."""
    movement = Movement(before=balance, delta=delta)
    if movement.after < 0 and not allow_negative:
        raise InsufficientBalance(
            f"balance {balance} cannot cover a debit of {-delta}",
            metadata={"balance": str(balance), "requested": str(-delta)},
        )
    return movement


def kept_share(value: int, paid_minor: int, refunded_minor: int) -> int:
    """What remains of `value` earned by an order when `refunded_minor` of `paid_minor` was refunded.

    Computed from the cumulative refund, never from the last one, so a series
    of partial refunds takes back exactly as much as one refund of their sum.
    """
    if paid_minor <= 0:
        return 0 if refunded_minor > 0 else value
    return value * (paid_minor - refunded_minor) // paid_minor


def refunded_share(value: int, paid_minor: int, refunded_minor: int) -> int:
    """The part of `value` that follows the refund: `value - kept_share(...)` (rounded up)."""
    return value - kept_share(value, paid_minor, refunded_minor)


@dataclass(frozen=True)
class SpendRules:
    """Points as payment: `points_per_unit` points are worth one currency unit."""

    points_per_unit: int = 0
    max_share_bp: int = 10_000

    @property
    def enabled(self) -> bool:
        return self.points_per_unit > 0

    def step(self, unit_minor: int) -> int:
        """The smallest number of points worth a whole minor unit."""
        return self.points_per_unit // math.gcd(self.points_per_unit, unit_minor)

    def discount_minor(self, points: int, unit_minor: int) -> int:
        return points * unit_minor // self.points_per_unit

    def max_points(self, order_amount_minor: int, unit_minor: int) -> int:
        """The most points an order of this amount accepts, a multiple of `step`."""
        cap_minor = order_amount_minor * self.max_share_bp // 10_000
        raw = cap_minor * self.points_per_unit // unit_minor
        return raw - raw % self.step(unit_minor)


class SpendRefused(FailedPrecondition):
    reason = "SPEND_REFUSED"


def check_spend(rules: SpendRules, points: int, order_amount_minor: int, unit_minor: int) -> int:
    """The discount `points` give off the order, or why they may not pay for it."""
    if not rules.enabled:
        raise SpendRefused("this shop does not accept points as payment", reason="POINTS_PAYMENT_DISABLED")
    step = rules.step(unit_minor)
    if points % step:
        raise SpendRefused(
            f"points must be a multiple of {step} (the points worth one minor unit)",
            reason="POINTS_NOT_WHOLE_UNIT",
            metadata={"step": str(step)},
        )
    most = rules.max_points(order_amount_minor, unit_minor)
    if points > most:
        raise SpendRefused(
            f"at most {most} points may pay for this order ({rules.max_share_bp / 100:g} % of its amount)",
            reason="POINTS_OVER_MAX_SHARE",
            metadata={"max_points": str(most)},
        )
    return rules.discount_minor(points, unit_minor)


class DrawRule(Enum):
    PROPORTIONAL = 1
    BONUS_FIRST = 2


def split_stored_value_draw(amount: int, principal: int, bonus: int, rule: DrawRule) -> tuple[int, int]:
    """(from principal, from bonus) for a stored-value payment of `amount`.

    Proportional takes the bonus share of the member's stored value, rounded
    down, so the bonus never pays more than its share.
    """
    if amount > principal + bonus:
        raise InsufficientBalance(
            f"stored value {principal + bonus} cannot cover a payment of {amount}",
            metadata={"balance": str(principal + bonus), "requested": str(amount)},
        )
    if rule is DrawRule.BONUS_FIRST:
        from_bonus = min(amount, bonus)
    else:
        from_bonus = amount * bonus // (principal + bonus) if amount else 0
    from_principal = amount - from_bonus
    if from_principal > principal:  # rounding left principal short: bonus covers the rest
        from_bonus += from_principal - principal
        from_principal = principal
    return from_principal, from_bonus


def top_up_bonus(paid_minor: int, plans: list[tuple[int, int]]) -> int:
    """The bonus of the largest plan (pay, bonus) whose amount `paid_minor` reaches; 0 if none."""
    reached = [bonus for pay, bonus in sorted(plans) if paid_minor >= pay]
    return reached[-1] if reached else 0


def rebate_for(paid_minor: int, rate_bp: int) -> int:
    return paid_minor * rate_bp // 10_000
