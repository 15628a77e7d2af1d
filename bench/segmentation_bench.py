"""Segment rules at scale: the rule engine's numpy evaluation vs the same rules hand-written in numpy."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np

from bench.metrics_bench import best_of
from services.segmentation.evaluation import Attributes, FeatureRow, customer_scores, members
from services.segmentation.rules import FIELDS, Columns, Kind, Node, evaluate_columns, parse_rule

# (rule, the same rule hand-written over the arrays); missing values are NaN or absent.
RULES: list[tuple[str, Callable[..., Any]]] = []
for cut in (30, 60, 90, 180, 365):
    RULES.append(
        (
            f"recency_days > {cut} and order_count >= 2",
            lambda c, cut=cut: (c["recency_days"] > cut) & (c["order_count"] >= 2),
        )
    )
for low, high in ((0, 5000), (5000, 20000), (20000, 100000), (100000, 10**7), (1000, 3000)):
    RULES.append(
        (
            f"net_revenue between {low} and {high}",
            lambda c, low=low, high=high: (c["net_revenue"] >= low) & (c["net_revenue"] <= high),
        )
    )
for tier in ("gold", "silver", "basic", "vip", "none"):
    RULES.append(
        (
            f'tier = "{tier}" or channel in ("app", "pos")',
            lambda c, tier=tier: (c["tier"] == tier) | (c["channel"] == "app") | (c["channel"] == "pos"),
        )
    )
for p in (0.1, 0.3, 0.5, 0.7, 0.9):
    RULES.append(
        (
            f'probability_alive < {p} and not has_tag("blacklist")',
            lambda c, p=p: (c["probability_alive"] < p) & ~c["tag:blacklist"],
        )
    )


@dataclass(frozen=True)
class SegmentationBenchResult:
    customers: int
    rules: int
    engine_seconds: float
    numpy_seconds: float
    # The whole pure evaluation an EvaluateSegments run does after fetching:
    # RFM / value class / activity / churn for every customer, columns, 20 rules.
    pipeline_seconds: float
    peak_rss_mb: float

    @property
    def ratio(self) -> float:
        return self.engine_seconds / self.numpy_seconds


def run(customers: int = 1_000_000, seed: int = 9) -> SegmentationBenchResult:
    rng = np.random.default_rng(seed)
    raw: dict[str, Any] = {
        "recency_days": rng.integers(0, 720, customers).astype(float),
        "order_count": rng.integers(1, 20, customers).astype(float),
        "net_revenue": rng.integers(0, 200_000, customers).astype(float),
        "probability_alive": rng.random(customers),
        "tier": rng.choice(np.array(["gold", "silver", "basic"], dtype=object), customers),
        "channel": rng.choice(np.array(["app", "pos", "h5", "mini_program"], dtype=object), customers),
        "tag:blacklist": rng.random(customers) < 0.02,
    }
    values = {
        name: raw.get(
            name,
            np.full(customers, np.nan if kind is Kind.NUMBER else "", dtype=object if kind is Kind.STRING else float),
        )
        for name, kind in FIELDS.items()
    }
    present = {name: np.full(customers, name in raw) for name in FIELDS}
    columns = Columns(values, present, {"blacklist": raw["tag:blacklist"]}, customers)
    parsed = [parse_rule(rule) for rule, _ in RULES]
    engine_seconds, ours = best_of(3, lambda: [evaluate_columns(node, columns) for node in parsed])
    numpy_seconds, theirs = best_of(3, lambda: [hand(raw) for _, hand in RULES])
    for (rule, _), a, b in zip(RULES, ours, theirs, strict=True):
        if not np.array_equal(a, b):
            raise AssertionError(f"engine and numpy disagree on {rule}")
    pipeline_seconds = evaluate_pipeline(raw, parsed, customers)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return SegmentationBenchResult(
        customers,
        len(RULES),
        round(engine_seconds, 3),
        round(numpy_seconds, 3),
        round(pipeline_seconds, 3),
        round(peak, 1),
    )


def evaluate_pipeline(raw: dict[str, Any], parsed: list[Node], customers: int) -> float:
    """Seconds for scores + columns + members over `customers` feature rows built from the same data."""
    as_of = date(2026, 11, 23)
    rows = [
        FeatureRow(
            customer_id=f"c{i:07d}",
            order_count=int(raw["order_count"][i]),
            purchase_days=int(raw["order_count"][i]),
            net_revenue_minor=int(raw["net_revenue"][i]),
            aov_minor=float(raw["net_revenue"][i]) / float(raw["order_count"][i]),
            recency_days=int(raw["recency_days"][i]),
            age_days=int(raw["recency_days"][i]) + 30,
            mean_interval_days=30.0 if raw["order_count"][i] > 1 else None,
            probability_alive=float(raw["probability_alive"][i]),
            tier=str(raw["tier"][i]),
            window_orders=int(raw["order_count"][i]) // 2,
        )
        for i in range(customers)
    ]
    attributes = {
        row.customer_id: Attributes(1 + i % 12, as_of - timedelta(days=i % 900), str(raw["channel"][i]))
        for i, row in enumerate(rows)
    }
    tags = {"blacklist": {rows[i].customer_id for i in np.flatnonzero(raw["tag:blacklist"])}}
    rules = {f"rule{i}": node for i, node in enumerate(parsed)}
    started = time.perf_counter()
    scores = customer_scores(rows)
    members(rules, rows, scores, tags, attributes, as_of)
    return time.perf_counter() - started


if __name__ == "__main__":
    result = run()
    print(result, f"ratio {result.ratio:.2f}")
