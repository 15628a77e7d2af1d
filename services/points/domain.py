"""Points rules in plain Python: which assets exist, how a transfer changes a balance."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from services.common.errors import FailedPrecondition

MAX_ADJUSTMENT = 100_000_000


class Asset(IntEnum):
    """Values equal the proto enum `loyalty.points.v1.Asset`."""

    POINTS = 1
    GROWTH = 2


# Counter accounts: where value comes from and goes to, so every transfer sums to zero.
SYSTEM_ADJUSTMENTS = "@adjustments"


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
