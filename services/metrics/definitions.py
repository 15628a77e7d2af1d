"""The metric definitions merchants act on, one function each, in plain Python.

Every function takes the orders it needs as `Purchase` facts already placed on
the shop-local calendar (`day`), so day, week and month boundaries are the
shop's, never UTC's. Fully refunded orders are excluded by the caller unless a
metric is asked to include them (`usable` below). A rate over an empty set is
undefined (`Rate.value is None`), never 0.

Conventions, each stated once:
- Repurchase rates count orders (two orders on one day are two orders).
- 90-day repurchase counts a later purchase *day*: a second order on the first
  day (a split cart) is not a repurchase.
- CLV summaries follow the BG/NBD literature and the `lifetimes` package:
  purchases in one time unit count once.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from enum import Enum


def is_fully_refunded(amount_minor: int, refunded_minor: int) -> bool:
    """A fully refunded order counts in no metric (unless a request asks for refunded orders)."""
    return amount_minor > 0 and refunded_minor >= amount_minor


def net_amount(amount_minor: int, refunded_minor: int) -> int:
    """Paid minus refunded, never below zero."""
    return amount_minor - min(refunded_minor, amount_minor)


@dataclass(frozen=True)
class Purchase:
    """One order as the metrics see it."""

    order_id: str
    customer_id: str
    day: date  # shop-local calendar day of payment
    amount_minor: int  # paid amount
    refunded_minor: int = 0  # refunded so far (partial or full)

    @property
    def fully_refunded(self) -> bool:
        return is_fully_refunded(self.amount_minor, self.refunded_minor)

    @property
    def net_minor(self) -> int:
        return net_amount(self.amount_minor, self.refunded_minor)


@dataclass(frozen=True)
class Period:
    """Inclusive range of shop-local days."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"period ends ({self.end}) before it starts ({self.start})")

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and self.start <= day <= self.end


@dataclass(frozen=True)
class Rate:
    numerator: int
    denominator: int

    @property
    def value(self) -> float | None:
        """numerator ÷ denominator, or None when the denominator is 0 (undefined, not zero)."""
        return self.numerator / self.denominator if self.denominator else None


def usable(purchases: Iterable[Purchase], *, include_refunded: bool = False) -> list[Purchase]:
    """The purchases a metric counts: fully refunded orders only when asked."""
    return [p for p in purchases if include_refunded or not p.fully_refunded]


def _by_customer(purchases: Iterable[Purchase]) -> dict[str, list[Purchase]]:
    grouped: dict[str, list[Purchase]] = defaultdict(list)
    for p in purchases:
        grouped[p.customer_id].append(p)
    for orders in grouped.values():
        orders.sort(key=lambda p: (p.day, p.order_id))
    return grouped


# -- repurchase (复购率) -----------------------------------------------------------


def repurchase_rate_by_customer(purchases: Iterable[Purchase], period: Period, *, count_history: bool = False) -> Rate:
    """Customers with ≥ 2 orders in the period ÷ customers with ≥ 1 order in the period.

    With `count_history`, a customer who ordered before the period and at least
    once in it is also a repurchaser (their first order in the period is a repeat).
    """
    grouped = _by_customer(purchases)
    buyers = repeaters = 0
    for orders in grouped.values():
        inside = [p for p in orders if p.day in period]
        if not inside:
            continue
        buyers += 1
        before = any(p.day < period.start for p in orders)
        if len(inside) >= 2 or (count_history and before):
            repeaters += 1
    return Rate(repeaters, buyers)


def repurchase_rate_by_order(purchases: Iterable[Purchase], period: Period, *, count_history: bool = False) -> Rate:
    """Orders in the period that are not their customer's first order in the period ÷ orders in the period.

    With `count_history`, only a customer's first-ever order is a non-repeat.
    """
    grouped = _by_customer(purchases)
    orders_in = repeats = 0
    for orders in grouped.values():
        inside = [p for p in orders if p.day in period]
        orders_in += len(inside)
        if not inside:
            continue
        first_is_repeat = count_history and orders[0].day < period.start
        repeats += len(inside) - (0 if first_is_repeat else 1)
    return Rate(repeats, orders_in)


class RepurchaseStage(Enum):
    """Hillstrom's rule (seed 003): what a shop's 90-day repurchase rate says it should focus on."""

    ACQUISITION = "acquisition"  # < 15 %: 获客模式, win new customers
    HYBRID = "hybrid"  # 15 % – 30 %: 混合模式, balance acquisition and retention
    LOYALTY = "loyalty"  # ≥ 30 %: 忠诚模式, invest in repeat purchase


def repurchase_stage(rate: Rate) -> RepurchaseStage | None:
    value = rate.value
    if value is None:
        return None
    if value < 0.15:
        return RepurchaseStage.ACQUISITION
    return RepurchaseStage.HYBRID if value < 0.30 else RepurchaseStage.LOYALTY


@dataclass(frozen=True)
class NinetyDayRepurchase:
    rate: Rate  # of customers whose 90-day window has closed by `as_of`
    window_open: int  # cohort customers left out because their window is still open

    @property
    def stage(self) -> RepurchaseStage | None:
        return repurchase_stage(self.rate)


def ninety_day_repurchase(
    purchases: Iterable[Purchase], cohort: Period, as_of: date, *, days: int = 90
) -> NinetyDayRepurchase:
    """Of customers whose first-ever order falls in `cohort`, the share who buy again on a later day within 90 days.

    A customer whose window (first day + 90) ends after `as_of` is not counted
    either way: counting them would bias the rate down for recent cohorts.
    """
    grouped = _by_customer(purchases)
    closed = repeated = still_open = 0
    for orders in grouped.values():
        first = orders[0].day
        if first not in cohort:
            continue
        window_end = first + timedelta(days=days)
        if window_end > as_of:
            still_open += 1
            continue
        closed += 1
        if any(first < p.day <= window_end for p in orders):
            repeated += 1
    return NinetyDayRepurchase(Rate(repeated, closed), still_open)


# -- retention and churn ------------------------------------------------------------


class Grain(Enum):
    WEEK = "week"  # ISO weeks, Monday first
    MONTH = "month"


def period_start(day: date, grain: Grain) -> date:
    if grain is Grain.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def periods_between(first: date, later: date, grain: Grain) -> int:
    """How many whole grain periods `later`'s period is after `first`'s."""
    if grain is Grain.WEEK:
        return (period_start(later, grain) - period_start(first, grain)).days // 7
    return (later.year - first.year) * 12 + later.month - first.month


@dataclass(frozen=True)
class CohortRow:
    cohort_start: date  # first day of the cohort's period
    size: int  # customers whose first order is in it
    active: tuple[int, ...]  # active[k]: of them, customers with an order k periods later

    def retention(self, offset: int) -> float | None:
        return self.active[offset] / self.size if self.size and offset < len(self.active) else None


def cohort_retention(purchases: Iterable[Purchase], grain: Grain, as_of: date) -> list[CohortRow]:
    """Cohorts by first-order period; for each, who is active in each later period up to `as_of`'s period.

    Offset 0 is always the whole cohort. A cohort has as many offsets as periods
    have begun by `as_of`, so the newest cohorts have the shortest rows.
    """
    grouped = _by_customer(p for p in purchases if p.day <= as_of)
    members: dict[date, list[set[int]]] = {}
    for orders in grouped.values():
        first = orders[0].day
        cohort = period_start(first, grain)
        span = periods_between(first, as_of, grain) + 1
        offsets = {periods_between(first, p.day, grain) for p in orders}
        members.setdefault(cohort, []).append({o for o in offsets if o < span})
    rows = []
    for cohort in sorted(members):
        span = periods_between(cohort, as_of, grain) + 1
        customers = members[cohort]
        rows.append(CohortRow(cohort, len(customers), tuple(sum(k in c for c in customers) for k in range(span))))
    return rows


def churn_rate(purchases: Iterable[Purchase], before: Period, after: Period) -> Rate:
    """Customers active in `before` with no order in `after` ÷ customers active in `before`."""
    items = list(purchases)
    active_before = {p.customer_id for p in items if p.day in before}
    active_after = {p.customer_id for p in items if p.day in after}
    return Rate(len(active_before - active_after), len(active_before))


# -- value and rhythm -------------------------------------------------------------------


@dataclass(frozen=True)
class ValueSummary:
    orders: int
    customers: int
    net_revenue_minor: int

    @property
    def aov_minor(self) -> float | None:
        """客单价: net revenue ÷ orders."""
        return self.net_revenue_minor / self.orders if self.orders else None

    @property
    def revenue_per_customer_minor(self) -> float | None:
        return self.net_revenue_minor / self.customers if self.customers else None

    @property
    def purchase_frequency(self) -> float | None:
        """Orders per customer in the period."""
        return self.orders / self.customers if self.customers else None


def value_summary(purchases: Iterable[Purchase], period: Period) -> ValueSummary:
    """Orders, customers and net revenue (paid minus refunded) in the period."""
    inside = [p for p in purchases if p.day in period]
    return ValueSummary(len(inside), len({p.customer_id for p in inside}), sum(p.net_minor for p in inside))


@dataclass(frozen=True)
class PurchaseRhythm:
    gaps: int  # number of gaps between consecutive purchase days
    mean_days: float | None
    median_days: float | None


def purchase_rhythm(purchases: Iterable[Purchase]) -> PurchaseRhythm:
    """消费周期: days between consecutive purchase days, pooled over all customers with ≥ 2 purchase days."""
    gaps: list[int] = []
    for orders in _by_customer(purchases).values():
        days = sorted({p.day for p in orders})
        gaps += [(b - a).days for a, b in itertools.pairwise(days)]
    if not gaps:
        return PurchaseRhythm(0, None, None)
    return PurchaseRhythm(len(gaps), statistics.fmean(gaps), float(statistics.median(gaps)))


def active_days(purchases: Iterable[Purchase]) -> dict[str, int]:
    """Distinct shop-local days with an order, per customer."""
    return {c: len({p.day for p in orders}) for c, orders in _by_customer(purchases).items()}


# -- CLV summaries (BG/NBD / lifetimes conventions) -----------------------------------


class TimeUnit(Enum):
    DAYS = 1
    WEEKS = 7


@dataclass(frozen=True)
class RfmSummary:
    """One customer's row for BG/NBD and Gamma-Gamma, as `lifetimes.utils.summary_data_from_transaction_data`."""

    customer_id: str
    frequency: int  # purchase periods after the first
    recency: float  # first to last purchase period, in units
    T: float  # the literature's name: first purchase period to as_of, in units
    monetary_minor: float  # mean amount of the repeat purchase periods (0 when frequency is 0)


def clv_summaries(purchases: Iterable[Purchase], as_of: date, unit: TimeUnit = TimeUnit.DAYS) -> list[RfmSummary]:
    """Per-customer frequency / recency / T / monetary value as of `as_of` (orders after it are ignored).

    Purchases are grouped into periods of `unit` (weeks start on Monday, as
    pandas' weekly periods do in lifetimes); amounts in one period add up.
    """
    epoch = date(1969, 12, 29)  # a Monday
    now = (as_of - epoch).days // unit.value
    rows = []
    for customer, orders in sorted(_by_customer(p for p in purchases if p.day <= as_of).items()):
        spend: dict[int, int] = defaultdict(int)
        for p in orders:
            spend[(p.day - epoch).days // unit.value] += p.net_minor
        periods = sorted(spend)
        first, last = periods[0], periods[-1]
        repeat = [spend[k] for k in periods[1:]]
        rows.append(
            RfmSummary(
                customer_id=customer,
                frequency=len(repeat),
                recency=float(last - first),
                T=float(now - first),
                monetary_minor=statistics.fmean(repeat) if repeat else 0.0,
            )
        )
    return rows


# -- per-customer features for segmentation -----------------------------------------


@dataclass(frozen=True)
class CustomerFeatures:
    """Everything segmentation scores a customer on, as of one day (days are shop-local)."""

    customer_id: str
    order_count: int
    net_revenue_minor: int
    purchase_days: int  # active days
    frequency: int  # repeat purchase days (lifetimes)
    recency_days: int  # first to last purchase day (lifetimes)
    age_days: int  # first purchase day to as_of (lifetimes T)
    days_since_last_order: int
    monetary_minor: float  # mean spend of repeat purchase days
    first_day: date
    last_day: date
    # The same counts over the last `window_days` days up to as_of (the whole history without a window):
    # activity layers are about recent behaviour, not a lifetime.
    window_orders: int = 0
    window_active_days: int = 0
    window_net_revenue_minor: int = 0

    @property
    def aov_minor(self) -> float:
        return self.net_revenue_minor / self.order_count

    @property
    def mean_interval_days(self) -> float | None:
        """Mean days between consecutive purchase days (= recency ÷ frequency); None for one-day customers."""
        return self.recency_days / self.frequency if self.frequency else None


def window_start(as_of: date, window_days: int) -> date:
    """First day of a window of `window_days` days ending on `as_of` (0 = no window: all history)."""
    return date.min if window_days <= 0 else as_of - timedelta(days=window_days - 1)


def customer_features(purchases: Iterable[Purchase], as_of: date, window_days: int = 0) -> list[CustomerFeatures]:
    """One row per customer with an order on or before `as_of`, sorted by customer id."""
    since = window_start(as_of, window_days)
    rows = []
    for customer, orders in sorted(_by_customer(p for p in purchases if p.day <= as_of).items()):
        spend: dict[date, int] = defaultdict(int)
        for p in orders:
            spend[p.day] += p.net_minor
        days = sorted(spend)
        repeat = [spend[d] for d in days[1:]]
        rows.append(
            CustomerFeatures(
                customer_id=customer,
                order_count=len(orders),
                net_revenue_minor=sum(spend.values()),
                purchase_days=len(days),
                frequency=len(days) - 1,
                recency_days=(days[-1] - days[0]).days,
                age_days=(as_of - days[0]).days,
                days_since_last_order=(as_of - days[-1]).days,
                monetary_minor=statistics.fmean(repeat) if repeat else 0.0,
                first_day=days[0],
                last_day=days[-1],
                window_orders=sum(1 for p in orders if p.day >= since),
                window_active_days=sum(1 for d in days if d >= since),
                window_net_revenue_minor=sum(spend[d] for d in days if d >= since),
            )
        )
    return rows


# -- satisfaction and recommendation ----------------------------------------------------


@dataclass(frozen=True)
class Satisfaction:
    """Scores 0–10 of a period: promoters 9–10, passives 7–8, detractors 0–6."""

    responses: int
    promoters: int
    passives: int
    detractors: int
    score_sum: int

    @property
    def nps(self) -> float | None:
        """Net Promoter Score: % promoters − % detractors, from −100 to 100."""
        return 100 * (self.promoters - self.detractors) / self.responses if self.responses else None

    @property
    def average_score(self) -> float | None:
        return self.score_sum / self.responses if self.responses else None

    @property
    def recommendation_rate(self) -> Rate:
        """推荐率: share of respondents who would recommend (promoters)."""
        return Rate(self.promoters, self.responses)


def satisfaction(scores: Iterable[int]) -> Satisfaction:
    values = list(scores)
    if any(not 0 <= s <= 10 for s in values):
        raise ValueError("scores are 0..10")
    return Satisfaction(
        responses=len(values),
        promoters=sum(s >= 9 for s in values),
        passives=sum(7 <= s <= 8 for s in values),
        detractors=sum(s <= 6 for s in values),
        score_sum=sum(values),
    )
