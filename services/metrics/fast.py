"""The metric definitions vectorised with numpy, for shops with millions of orders.

Same definitions as `services.metrics.definitions` (which is the reference:
tests hold this module to it on random data). Orders are unsorted columns with
customers numbered densely, so most metrics are a few `bincount` passes; only
the CLV summaries sort once (distinct purchase periods). Days are integers:
days since 1970-01-01 on the shop's calendar.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from services.metrics.definitions import (
    CohortRow,
    CustomerFeatures,
    Grain,
    NinetyDayRepurchase,
    Period,
    Purchase,
    Rate,
    RfmSummary,
    TimeUnit,
    ValueSummary,
    window_start,
)

EPOCH = date(1970, 1, 1)
Int = NDArray[np.int64]


def day_number(day: date) -> int:
    return (day - EPOCH).days


@dataclass(frozen=True)
class OrderColumns:
    """Orders as columns; `group` numbers customers densely 0..customers-1 (no sorting needed)."""

    group: Int  # per order: its customer's number
    day: Int  # per order: shop-local day number
    customers: int
    customer_ids: list[str]
    amount: Int | None = None  # per order: net paid amount, when a metric needs money

    @cached_property
    def first_day(self) -> Int:
        """Per customer: the first order's day (computed once, only by metrics that need it)."""
        first = np.full(self.customers, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, self.group, self.day)
        return first

    @classmethod
    def from_arrays(
        cls,
        group: NDArray[np.integer],
        days: NDArray[np.integer],
        customers: int,
        customer_ids: list[str] | None = None,
        amounts: NDArray[np.integer] | None = None,
    ) -> OrderColumns:
        """From dense customer numbers (0..customers-1) and day numbers, in any order."""
        money = None if amounts is None else np.asarray(amounts, dtype=np.int64)
        return cls(
            np.asarray(group, dtype=np.int64), np.asarray(days, dtype=np.int64), customers, customer_ids or [], money
        )

    @classmethod
    def from_purchases(cls, purchases: Iterable[Purchase]) -> OrderColumns:
        items = list(purchases)
        names = sorted({p.customer_id for p in items})
        code_of = {name: i for i, name in enumerate(names)}
        codes = np.array([code_of[p.customer_id] for p in items], dtype=np.int64)
        days = np.array([day_number(p.day) for p in items], dtype=np.int64)
        amounts = np.array([p.net_minor for p in items], dtype=np.int64)
        return cls.from_arrays(codes, days, len(names), names, amounts)


def _orders_in(columns: OrderColumns, period: Period) -> tuple[NDArray[np.bool_], Int]:
    inside = (columns.day >= day_number(period.start)) & (columns.day <= day_number(period.end))
    return inside, np.bincount(columns.group[inside], minlength=columns.customers)


def repurchase_rate_by_customer(columns: OrderColumns, period: Period, *, count_history: bool = False) -> Rate:
    _, per_customer = _orders_in(columns, period)
    buyers = per_customer > 0
    repeaters = per_customer >= 2
    if count_history:
        repeaters |= buyers & (columns.first_day < day_number(period.start))
    return Rate(int(repeaters.sum()), int(buyers.sum()))


def repurchase_rate_by_order(columns: OrderColumns, period: Period, *, count_history: bool = False) -> Rate:
    inside, per_customer = _orders_in(columns, period)
    buyers = per_customer > 0
    first_is_repeat = count_history & (columns.first_day < day_number(period.start))
    non_repeats = int((buyers & ~first_is_repeat).sum())
    orders = int(inside.sum())
    return Rate(orders - non_repeats, orders)


def ninety_day_repurchase(columns: OrderColumns, cohort: Period, as_of: date, *, days: int = 90) -> NinetyDayRepurchase:
    first = columns.first_day
    in_cohort = (first >= day_number(cohort.start)) & (first <= day_number(cohort.end))
    closed = in_cohort & (first + days <= day_number(as_of))
    first_of_order = first[columns.group]
    later = (columns.day > first_of_order) & (columns.day <= first_of_order + days)
    repeated = np.zeros(columns.customers, dtype=bool)
    repeated[columns.group[later]] = True
    return NinetyDayRepurchase(
        Rate(int((closed & repeated).sum()), int(closed.sum())), int((in_cohort & ~closed).sum())
    )


def _period_index(day: Int, grain: Grain) -> Int:
    if grain is Grain.WEEK:
        return (day + 3) // 7  # weeks start on Monday; 1970-01-01 was a Thursday
    months: Int = day.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    return months


def _period_start(index: int, grain: Grain) -> date:
    if grain is Grain.WEEK:
        return date.fromordinal(EPOCH.toordinal() + index * 7 - 3)
    year, month = divmod(index, 12)
    return date(1970 + year, month + 1, 1)


def cohort_retention(columns: OrderColumns, grain: Grain, as_of: date) -> list[CohortRow]:
    keep = columns.day <= day_number(as_of)
    group, day = columns.group[keep], columns.day[keep]
    if len(day) == 0:
        return []
    order_period = _period_index(day, grain)
    cohort_of_customer = _period_index(columns.first_day, grain)
    last = int(_period_index(np.array([day_number(as_of)], dtype=np.int64), grain)[0])
    low = int(cohort_of_customer[group].min())
    width = last - low + 1
    offset = order_period - cohort_of_customer[group]
    # Distinct (customer, offset) pairs through a bitmap rather than a sort.
    active = np.zeros(columns.customers * width, dtype=bool)
    active[group * width + offset] = True
    pairs = np.flatnonzero(active)
    pair_cohort = cohort_of_customer[pairs // width] - low
    matrix = np.bincount(pair_cohort * width + pairs % width, minlength=width * width).reshape(width, width)
    seen = np.zeros(columns.customers, dtype=bool)
    seen[group] = True
    sizes = np.bincount(cohort_of_customer[seen] - low, minlength=width)
    rows = []
    for index in np.flatnonzero(sizes):
        span = last - (low + int(index)) + 1
        rows.append(
            CohortRow(
                _period_start(low + int(index), grain), int(sizes[index]), tuple(int(v) for v in matrix[index, :span])
            )
        )
    return rows


@dataclass(frozen=True)
class SummaryColumns:
    """BG/NBD inputs per customer who ordered by as_of, in customer-number order."""

    group: Int
    frequency: Int
    recency: Int
    age: Int  # T
    monetary: NDArray[np.float64]


def clv_summary_columns(columns: OrderColumns, as_of: date, unit: TimeUnit = TimeUnit.DAYS) -> SummaryColumns:
    """As `definitions.clv_summaries`: purchases in one period count once, their amounts add up.

    Only the count of distinct purchase periods needs a sort; first and last
    periods come from per-customer min/max days, and repeat spend is total
    spend minus first-period spend.
    """
    if columns.amount is None:
        raise ValueError("clv summaries need order amounts")
    keep = columns.day <= day_number(as_of)
    if keep.all():  # the usual case: no copies
        group, day, amount = columns.group, columns.day, columns.amount
    else:
        group, day, amount = columns.group[keep], columns.day[keep], columns.amount[keep]
    empty = np.zeros(0, dtype=np.int64)
    if len(day) == 0:
        return SummaryColumns(empty, empty, empty, empty, np.zeros(0))
    customers = columns.customers
    period = day + 3 if unit.value == 1 else (day + 3) // unit.value  # periods from Monday 1969-12-29
    low = int(period.min())
    width = (day_number(as_of) + 3) // unit.value - low + 1
    keys = group * width + (period - low)
    if customers * width < np.iinfo(np.int32).max:
        keys = keys.astype(np.int32)  # a 32-bit sort is markedly faster
    keys = np.sort(keys)
    distinct = keys[np.r_[True, keys[1:] != keys[:-1]]]
    owner = distinct // width
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    ends = np.r_[starts[1:] - 1, len(distinct) - 1]
    present = owner[starts].astype(np.int64)
    first = (distinct[starts] % width).astype(np.int64)  # period offsets from `low`
    last = (distinct[ends] % width).astype(np.int64)
    first_of_customer = np.zeros(customers, dtype=np.int64)
    first_of_customer[present] = first
    in_first = (period - low) == first_of_customer[group]
    total = np.bincount(group, weights=amount, minlength=customers)
    first_spend = np.bincount(group[in_first], weights=amount[in_first], minlength=customers)
    frequency = (ends - starts).astype(np.int64)
    repeat_spend = (total - first_spend)[present]
    monetary = np.where(frequency > 0, repeat_spend / np.maximum(frequency, 1), 0.0)
    now = (day_number(as_of) + 3) // unit.value - low
    return SummaryColumns(group=present, frequency=frequency, recency=last - first, age=now - first, monetary=monetary)


def clv_summaries(columns: OrderColumns, as_of: date, unit: TimeUnit = TimeUnit.DAYS) -> list[RfmSummary]:
    """The same rows as `definitions.clv_summaries`, for small shops and for tests."""
    table = clv_summary_columns(columns, as_of, unit)
    return [
        RfmSummary(columns.customer_ids[int(g)], int(f), float(r), float(t), float(m))
        for g, f, r, t, m in zip(table.group, table.frequency, table.recency, table.age, table.monetary, strict=True)
    ]


def value_summary(columns: OrderColumns, period: Period) -> ValueSummary:
    if columns.amount is None:
        raise ValueError("value summaries need order amounts")
    inside, per_customer = _orders_in(columns, period)
    return ValueSummary(int(inside.sum()), int((per_customer > 0).sum()), int(columns.amount[inside].sum()))


def churn_rate(columns: OrderColumns, before: Period, after: Period) -> Rate:
    _, earlier = _orders_in(columns, before)
    _, later = _orders_in(columns, after)
    active = earlier > 0
    return Rate(int((active & (later == 0)).sum()), int(active.sum()))


def customer_features(columns: OrderColumns, as_of: date, window_days: int = 0) -> list[CustomerFeatures]:
    """As `definitions.customer_features`, from the CLV summary columns plus per-customer counts."""
    if columns.amount is None:
        raise ValueError("customer features need order amounts")
    table = clv_summary_columns(columns, as_of, TimeUnit.DAYS)
    keep = columns.day <= day_number(as_of)
    orders = np.bincount(columns.group[keep], minlength=columns.customers)
    revenue = np.bincount(columns.group[keep], weights=columns.amount[keep], minlength=columns.customers)
    recent = keep & (columns.day >= day_number(window_start(as_of, window_days))) if window_days > 0 else keep
    window_orders = np.bincount(columns.group[recent], minlength=columns.customers)
    window_revenue = np.bincount(columns.group[recent], weights=columns.amount[recent], minlength=columns.customers)
    pairs = np.unique(columns.group[recent].astype(np.int64) * (1 << 32) + columns.day[recent])
    window_days_active = np.bincount(pairs >> 32, minlength=columns.customers)
    as_of_ordinal = as_of.toordinal()
    rows = []
    for g, f, r, t, m in zip(
        table.group.tolist(),
        table.frequency.tolist(),
        table.recency.tolist(),
        table.age.tolist(),
        table.monetary.tolist(),
        strict=True,
    ):
        first = date.fromordinal(as_of_ordinal - t)
        rows.append(
            CustomerFeatures(
                customer_id=columns.customer_ids[g],
                order_count=int(orders[g]),
                net_revenue_minor=int(revenue[g]),
                purchase_days=f + 1,
                frequency=f,
                recency_days=r,
                age_days=t,
                days_since_last_order=t - r,
                monetary_minor=float(m),
                first_day=first,
                last_day=date.fromordinal(first.toordinal() + r),
                window_orders=int(window_orders[g]),
                window_active_days=int(window_days_active[g]),
                window_net_revenue_minor=int(window_revenue[g]),
            )
        )
    return rows
