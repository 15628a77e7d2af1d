"""Segment rules at scale: the rule engine's numpy evaluation vs the same rules hand-written in numpy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.metrics_bench import best_of
from services.segmentation.rules import FIELDS, Columns, Kind, evaluate_columns, parse_rule

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
    return SegmentationBenchResult(customers, len(RULES), round(engine_seconds, 3), round(numpy_seconds, 3))


if __name__ == "__main__":
    result = run()
    print(result, f"ratio {result.ratio:.2f}")
