"""A realistic demo shop, generated deterministically from a seed: a year of orders and everything around them.

Pure: `demo_shop` returns plain data; `loyaltyctl demo seed` loads it through
the public RPCs. The mix follows what merchants see: most customers buy once,
some come back now and then, a loyal few buy every few weeks; sales peak around
618 (June) and 双11 (November) and at the new year; a few orders are refunded;
some buyers top up stored value, review with photos, or subscribe to weekday milk;
some answer the satisfaction survey (loyal buyers recommend more) or spend their
points in the mall.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

CATEGORIES = {"dairy": (1_500, 6_000), "bakery": (800, 3_000), "fruit": (2_000, 12_000), "gift": (8_000, 50_000)}
CHANNELS = ("mini_program", "h5", "app")


@dataclass(frozen=True)
class DemoItem:
    sku: str
    category: str
    amount_minor: int


@dataclass(frozen=True)
class DemoOrder:
    order_id: str
    customer_id: str
    paid_at: datetime
    channel: str
    items: tuple[DemoItem, ...]

    @property
    def amount_minor(self) -> int:
        return sum(item.amount_minor for item in self.items)


@dataclass(frozen=True)
class DemoRefund:
    refund_id: str
    order_id: str
    amount_minor: int
    refunded_at: datetime


@dataclass(frozen=True)
class DemoSubscription:
    order_id: str
    customer_id: str
    paid_at: datetime
    start: date
    skips: tuple[int, ...]  # delivery indexes the buyer skips
    pause: bool


@dataclass(frozen=True)
class DemoFeedback:
    feedback_id: str
    customer_id: str
    order_id: str
    score: int  # 0-10, "how likely are you to recommend us"
    given_at: datetime


# Score weights for 0..10 by kind of buyer: loyal buyers mostly promote, one-time buyers spread out.
SCORE_WEIGHTS = {
    "once": (2, 1, 1, 2, 2, 4, 6, 10, 14, 10, 8),
    "occasional": (0, 0, 1, 1, 1, 2, 4, 10, 18, 20, 14),
    "loyal": (0, 0, 0, 0, 0, 1, 1, 4, 12, 30, 40),
}
MALL_PICKS = (("tote", 500), ("mug", 800), ("milk-card", 1_500))


@dataclass
class DemoShop:
    orders: list[DemoOrder] = field(default_factory=list)
    refunds: list[DemoRefund] = field(default_factory=list)
    top_ups: list[tuple[str, str, int]] = field(default_factory=list)  # (top-up id, customer, paid minor)
    reviews: list[tuple[str, str]] = field(default_factory=list)  # (customer, order id)
    subscriptions: list[DemoSubscription] = field(default_factory=list)
    feedback: list[DemoFeedback] = field(default_factory=list)
    redemptions: list[tuple[str, str]] = field(default_factory=list)  # (customer, mall item id)


def season_weight(day: date) -> float:
    """Relative daily demand: 618, 双11 and the new year stand out from a mild weekly rhythm."""
    weight = 1.0 + (0.25 if day.weekday() >= 5 else 0.0)
    for peak_month, peak_day, height in ((6, 18, 3.0), (11, 11, 5.0), (1, 1, 1.5), (12, 12, 1.5)):
        peak = date(day.year, peak_month, peak_day)
        distance = abs((day - peak).days)
        weight += height * math.exp(-distance / 4)
    return weight


def _weighted_day(rng: random.Random, days: list[date], weights: list[float]) -> date:
    return rng.choices(days, weights=weights, k=1)[0]


def demo_shop(customers: int, seed: int, today: date) -> DemoShop:
    """The demo data for `customers` customers over the year before `today`, the same for the same seed."""
    rng = random.Random(seed)
    days = [today - timedelta(days=n) for n in range(365, 0, -1)]
    weights = [season_weight(d) for d in days]
    shop = DemoShop()
    kinds: dict[str, str] = {}
    for n in range(customers):
        customer = f"demo-c{n:06d}"
        kind = rng.choices(["once", "occasional", "loyal"], weights=[60, 30, 10])[0]
        kinds[customer] = kind
        first = _weighted_day(rng, days, weights)
        visits = [first]
        if kind == "occasional":
            later = [first + timedelta(days=rng.randint(20, 150)) for _ in range(rng.randint(1, 3))]
            visits += [day for day in later if day < today]  # a return still to come is not in the data yet
        elif kind == "loyal":
            gap = rng.randint(10, 35)
            day = first
            while (day := day + timedelta(days=max(3, int(rng.gauss(gap, gap / 4))))) < today:
                visits.append(day)
        for v, day in enumerate(sorted(visits)):
            paid_at = datetime.combine(day, time(rng.randint(1, 14), rng.randint(0, 59)), UTC)
            items = tuple(
                DemoItem(f"{category}-{rng.randint(1, 20):02d}", category, rng.randint(*CATEGORIES[category]))
                for category in rng.sample(list(CATEGORIES), rng.randint(1, 2))
            )
            order = DemoOrder(f"demo-o{n:06d}-{v:03d}", customer, paid_at, rng.choice(CHANNELS), items)
            shop.orders.append(order)
            if rng.random() < 0.05:
                share = rng.choice([1.0, 1.0, 0.5, 0.3])
                refunded_at = paid_at + timedelta(days=rng.randint(1, 6))
                if refunded_at.date() < today:
                    shop.refunds.append(
                        DemoRefund(
                            f"demo-r{order.order_id}", order.order_id, int(order.amount_minor * share), refunded_at
                        )
                    )
            elif rng.random() < 0.12:
                shop.reviews.append((customer, order.order_id))
        if kind != "once" and rng.random() < 0.15:
            shop.top_ups.append((f"demo-t{n:06d}", customer, rng.choice([50_000, 100_000, 20_000])))
        if kind == "loyal" and rng.random() < 0.3:
            paid_at = datetime.combine(today - timedelta(days=rng.randint(1, 20)), time(3, 0), UTC)
            start = today + timedelta(days=rng.randint(3, 10))
            skips = tuple(sorted(rng.sample(range(10), rng.randint(0, 2))))
            shop.subscriptions.append(
                DemoSubscription(f"demo-s{n:06d}", customer, paid_at, start, skips, rng.random() < 0.2)
            )
    shop.orders.sort(key=lambda o: (o.paid_at, o.order_id))
    answers_and_redemptions(shop, kinds, random.Random(seed * 7_919 + 1), today)
    return shop


def answers_and_redemptions(shop: DemoShop, kinds: dict[str, str], rng: random.Random, today: date) -> None:
    """Survey answers after some orders, and mall redemptions by loyal buyers.

    A second random stream: adding these left the orders, and so every figure
    the README shows, as they were.
    """
    for order in shop.orders:
        if rng.random() < 0.15:
            given_at = order.paid_at + timedelta(days=rng.randint(2, 7), hours=rng.randint(0, 9))
            if given_at.date() < today:
                score = rng.choices(range(11), weights=SCORE_WEIGHTS[kinds[order.customer_id]])[0]
                shop.feedback.append(
                    DemoFeedback(f"demo-f{order.order_id}", order.customer_id, order.order_id, score, given_at)
                )
    spent: dict[str, int] = {}
    for order in shop.orders:
        spent[order.customer_id] = spent.get(order.customer_id, 0) + order.amount_minor
    for customer, kind in kinds.items():
        if kind == "loyal" and rng.random() < 0.4:
            item, cost = rng.choice(MALL_PICKS)
            if spent.get(customer, 0) // 100 >= 2 * cost:  # a point per yuan: twice the price, refunds or not
                shop.redemptions.append((customer, item))
