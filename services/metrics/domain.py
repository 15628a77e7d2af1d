"""Metric definitions in plain Python: what a customer's summary is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum

from services.metrics.definitions import is_fully_refunded, net_amount


@dataclass(frozen=True)
class OrderFact:
    """What the metrics need of one order."""

    customer_id: str
    paid_at: datetime
    local_date: date
    amount_minor: int
    refunded_minor: int = 0

    @property
    def counts(self) -> bool:
        """A fully refunded order leaves the customer's summary."""
        return not is_fully_refunded(self.amount_minor, self.refunded_minor)


@dataclass(frozen=True)
class Summary:
    customer_id: str
    order_count: int
    purchase_days: int
    total_minor: int
    first_order_at: datetime
    last_order_at: datetime


def summarize(customer_id: str, orders: Iterable[OrderFact]) -> Summary | None:
    """A customer's summary over orders that count, with amounts net of refunds.

    Purchase days are shop-local calendar days, so same-day orders count once.
    """
    facts = [f for f in orders if f.counts]
    if not facts:
        return None
    return Summary(
        customer_id=customer_id,
        order_count=len(facts),
        purchase_days=len({f.local_date for f in facts}),
        total_minor=sum(net_amount(f.amount_minor, f.refunded_minor) for f in facts),
        first_order_at=min(f.paid_at for f in facts),
        last_order_at=max(f.paid_at for f in facts),
    )


class Outcome(Enum):
    INSERTED = "inserted"
    DUPLICATE = "duplicate"
    CORRECTED = "corrected"


def classify_order(existing_fingerprint: str | None, new_fingerprint: str) -> Outcome:
    """Same order id again: identical payload is a duplicate, anything else a correction."""
    if existing_fingerprint is None:
        return Outcome.INSERTED
    return Outcome.DUPLICATE if existing_fingerprint == new_fingerprint else Outcome.CORRECTED
