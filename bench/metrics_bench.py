"""Metrics at scale: the numpy engine vs DuckDB SQL over the same generated orders, same process.

Measures repurchase by customer and by order, the 90-day rate and the monthly
cohort matrix; both sides start from the same raw columns, and their answers
are compared before any time is reported.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from services.metrics import fast
from services.metrics.definitions import Grain, Period

PERIOD = Period(date(2025, 7, 1), date(2025, 12, 31))
COHORT = Period(date(2025, 1, 1), date(2025, 3, 31))
AS_OF = date(2026, 6, 30)


@dataclass(frozen=True)
class MetricsBenchResult:
    orders: int
    customers: int
    numpy_seconds: float
    duckdb_seconds: float
    peak_rss_mb: float

    @property
    def ratio(self) -> float:
        return self.numpy_seconds / self.duckdb_seconds


def generate(orders: int, customers: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Skewed customers (few loyal, many one-time) over 2025-01-01..2026-06-30 with a weekly rhythm."""
    rng = np.random.default_rng(seed)
    # Every customer orders once; the rest of the orders go to a skewed few (the loyal ones).
    repeat = np.minimum((rng.pareto(1.2, orders - customers) * customers / 20).astype(np.int64), customers - 1)
    codes = np.concatenate([np.arange(customers, dtype=np.int64), repeat])
    span = (AS_OF - date(2025, 1, 1)).days + 1
    days = fast.day_number(date(2025, 1, 1)) + rng.integers(0, span, orders)
    return codes, days


def best_of(runs: int, work: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def with_numpy(codes: np.ndarray, days: np.ndarray) -> tuple[Any, ...]:
    columns = fast.OrderColumns.from_arrays(codes, days, int(codes.max()) + 1)
    by_customer = fast.repurchase_rate_by_customer(columns, PERIOD)
    by_order = fast.repurchase_rate_by_order(columns, PERIOD)
    ninety = fast.ninety_day_repurchase(columns, COHORT, AS_OF)
    cohorts = fast.cohort_retention(columns, Grain.MONTH, AS_OF)
    return (
        (by_customer.numerator, by_customer.denominator),
        (by_order.numerator, by_order.denominator),
        (ninety.rate.numerator, ninety.rate.denominator),
        sorted((r.cohort_start, k, v) for r in cohorts for k, v in enumerate(r.active) if v),
    )


def with_duckdb(con: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    s, e = f"DATE '{PERIOD.start}'", f"DATE '{PERIOD.end}'"
    cs, ce, asof = f"DATE '{COHORT.start}'", f"DATE '{COHORT.end}'", f"DATE '{AS_OF}'"
    by_customer = con.execute(f"""SELECT count(*) FILTER (WHERE n >= 2), count(*) FROM
        (SELECT c, count(*) n FROM orders WHERE d BETWEEN {s} AND {e} GROUP BY c)""").fetchone()
    by_order = con.execute(f"""SELECT sum(n) - count(*), sum(n) FROM
        (SELECT c, count(*) n FROM orders WHERE d BETWEEN {s} AND {e} GROUP BY c)""").fetchone()
    ninety = con.execute(f"""WITH f AS (SELECT c, min(d) fd FROM orders GROUP BY c)
        SELECT count(*) FILTER (WHERE rep), count(*) FROM (
            SELECT f.c, bool_or(o.d > f.fd AND o.d <= f.fd + 90) rep FROM f JOIN orders o USING (c)
            WHERE f.fd BETWEEN {cs} AND {ce} AND f.fd + 90 <= {asof} GROUP BY f.c)""").fetchone()
    cohorts = con.execute(f"""WITH f AS (SELECT c, min(d) fd FROM orders WHERE d <= {asof} GROUP BY c),
        o AS (SELECT DISTINCT o.c, date_trunc('month', f.fd) cohort,
                     date_diff('month', date_trunc('month', f.fd), date_trunc('month', o.d)) k
              FROM orders o JOIN f USING (c) WHERE o.d <= {asof})
        SELECT cohort::DATE, k, count(*) FROM o GROUP BY ALL""").fetchall()
    assert by_customer is not None
    assert by_order is not None
    assert ninety is not None
    return (tuple(by_customer), tuple(by_order), tuple(ninety), sorted((c, int(k), n) for c, k, n in cohorts))


def run(orders: int = 10_000_000, customers: int = 1_000_000, runs: int = 3) -> MetricsBenchResult:
    codes, days = generate(orders, customers)
    table = pa.table({"c": codes, "d": pa.array(days.astype("datetime64[D]"), type=pa.date32())})
    con = duckdb.connect()
    con.register("orders_arrow", table)
    con.execute("CREATE TABLE orders AS SELECT * FROM orders_arrow")  # DuckDB on its own storage, as it runs best
    numpy_seconds, ours = best_of(runs, lambda: with_numpy(codes, days))
    duckdb_seconds, theirs = best_of(runs, lambda: with_duckdb(con))
    if ours != theirs:
        raise AssertionError("numpy and DuckDB disagree: the benchmark measured different answers")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return MetricsBenchResult(
        orders, len(np.unique(codes)), round(numpy_seconds, 3), round(duckdb_seconds, 3), round(peak, 1)
    )


if __name__ == "__main__":
    result = run(orders=1_000_000, customers=100_000)
    print(result, f"ratio {result.ratio:.2f}")


@dataclass(frozen=True)
class SummariesBenchResult:
    orders: int
    customers: int
    numpy_seconds: float
    lifetimes_seconds: float

    @property
    def speedup(self) -> float:
        return self.lifetimes_seconds / self.numpy_seconds


def run_summaries(orders: int = 1_000_000, customers: int = 100_000) -> SummariesBenchResult:
    """CLV summaries (frequency, recency, T, monetary) vs lifetimes' summary_data_from_transaction_data."""
    import pandas as pd
    from lifetimes.utils import summary_data_from_transaction_data

    codes, days = generate(orders, customers)
    amounts = np.random.default_rng(7).integers(100, 50_000, orders)
    frame = pd.DataFrame({"customer": codes, "day": days.astype("datetime64[D]"), "amount": amounts.astype(float)})
    end = pd.Timestamp(AS_OF)

    def ours() -> fast.SummaryColumns:
        columns = fast.OrderColumns.from_arrays(codes, days, int(codes.max()) + 1, amounts=amounts)
        return fast.clv_summary_columns(columns, AS_OF)

    numpy_seconds, table = best_of(3, ours)
    lifetimes_seconds, theirs = best_of(
        1,
        lambda: summary_data_from_transaction_data(
            frame, "customer", "day", monetary_value_col="amount", observation_period_end=end
        ),
    )
    theirs = theirs.sort_index()
    same = (
        np.array_equal(table.group, theirs.index.to_numpy())
        and np.array_equal(table.frequency, theirs["frequency"].to_numpy())
        and np.array_equal(table.recency, theirs["recency"].to_numpy())
        and np.array_equal(table.age, theirs["T"].to_numpy())
        and np.allclose(table.monetary, theirs["monetary_value"].to_numpy())
    )
    if not same:
        raise AssertionError("numpy and lifetimes summaries disagree")
    return SummariesBenchResult(orders, len(table.group), round(numpy_seconds, 3), round(lifetimes_seconds, 3))
