"""RFM scoring, the 11 named segments, the Chinese 8-class model and churn warning, in plain Python.

Inputs are per-customer features from the metrics service (days since the last
order, order count, net revenue, mean purchase interval, P(alive)).

Quintile tie rule: a customer's score is 1 + ⌊5 · (customers strictly worse) / n⌋,
so equal values always share a score and the score never depends on input order.
"Worse" is a larger recency (days since the last order) and a smaller frequency or
monetary value, so 5 is always best.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class RfmInput:
    customer_id: str
    recency_days: int  # days since the last order
    frequency: int  # orders
    monetary_minor: int  # net revenue


@dataclass(frozen=True)
class RfmScore:
    customer_id: str
    r: int
    f: int
    m: int


def _scores(values: Sequence[float], *, higher_is_better: bool) -> list[int]:
    n = len(values)
    counts = Counter(values)
    worse_than: dict[float, int] = {}
    running = 0
    for value in sorted(counts, reverse=not higher_is_better):
        worse_than[value] = running
        running += counts[value]
    return [1 + (5 * worse_than[v]) // n for v in values]


def rfm_scores(customers: Sequence[RfmInput]) -> list[RfmScore]:
    """Quintile scores 1..5 within the shop's own customers (see the module's tie rule)."""
    if not customers:
        return []
    r = _scores([c.recency_days for c in customers], higher_is_better=False)
    f = _scores([c.frequency for c in customers], higher_is_better=True)
    m = _scores([c.monetary_minor for c in customers], higher_is_better=True)
    return [RfmScore(c.customer_id, r[i], f[i], m[i]) for i, c in enumerate(customers)]


class Segment(Enum):
    """The 11 widely used RFM segments; `segment_of` documents the score map."""

    CHAMPIONS = "Champions"
    LOYAL = "Loyal"
    POTENTIAL_LOYALIST = "Potential Loyalist"
    NEW = "New"
    PROMISING = "Promising"
    NEED_ATTENTION = "Need Attention"
    ABOUT_TO_SLEEP = "About to Sleep"
    AT_RISK = "At Risk"
    CANT_LOSE = "Can't Lose"
    HIBERNATING = "Hibernating"
    LOST = "Lost"


def segment_of(score: RfmScore) -> Segment:
    """The first matching row wins; FM = ⌊(F + M) / 2⌋ (how often and how much, as one score).

    | order | segment | R | FM |
    |---|---|---|---|
    | 1 | Champions | 5 | 4–5 |
    | 2 | Loyal | 3–5 | 4–5 |
    | 3 | Can't Lose | 1 | 4–5 |
    | 4 | At Risk | 2 | 3–5 |
    | 5 | New | 5 | 1 |
    | 6 | Potential Loyalist | 4–5 | 2–3 |
    | 7 | Promising | 4 | 1 |
    | 8 | Need Attention | 3 | 3 |
    | 9 | About to Sleep | 3 | 1–2 |
    | 10 | Hibernating | 2 | 1–2 |
    | 11 | Lost | 1 | 1–3 |
    """
    r, fm = score.r, (score.f + score.m) // 2
    rows: list[tuple[Segment, range, range]] = [
        (Segment.CHAMPIONS, range(5, 6), range(4, 6)),
        (Segment.LOYAL, range(3, 6), range(4, 6)),
        (Segment.CANT_LOSE, range(1, 2), range(4, 6)),
        (Segment.AT_RISK, range(2, 3), range(3, 6)),
        (Segment.NEW, range(5, 6), range(1, 2)),
        (Segment.POTENTIAL_LOYALIST, range(4, 6), range(2, 4)),
        (Segment.PROMISING, range(4, 5), range(1, 2)),
        (Segment.NEED_ATTENTION, range(3, 4), range(3, 4)),
        (Segment.ABOUT_TO_SLEEP, range(3, 4), range(1, 3)),
        (Segment.HIBERNATING, range(2, 3), range(1, 3)),
        (Segment.LOST, range(1, 2), range(1, 4)),
    ]
    for segment, r_range, fm_range in rows:
        if r in r_range and fm in fm_range:
            return segment
    raise AssertionError(f"unmapped RFM score {score}")  # the table covers all 125 scores (tested)


class ValueClass(Enum):
    """The Chinese 8-class RFM model: each of R, F, M above (↑) or below (↓) the shop mean."""

    IMPORTANT_VALUE = "重要价值"  # R↑ F↑ M↑
    IMPORTANT_DEVELOP = "重要发展"  # R↑ F↓ M↑
    IMPORTANT_KEEP = "重要保持"  # R↓ F↑ M↑
    IMPORTANT_RETAIN = "重要挽留"  # R↓ F↓ M↑
    GENERAL_VALUE = "一般价值"  # R↑ F↑ M↓
    GENERAL_DEVELOP = "一般发展"  # R↑ F↓ M↓
    GENERAL_KEEP = "一般保持"  # R↓ F↑ M↓
    GENERAL_RETAIN = "一般挽留"  # R↓ F↓ M↓


_CLASSES = {
    (True, True, True): ValueClass.IMPORTANT_VALUE,
    (True, False, True): ValueClass.IMPORTANT_DEVELOP,
    (False, True, True): ValueClass.IMPORTANT_KEEP,
    (False, False, True): ValueClass.IMPORTANT_RETAIN,
    (True, True, False): ValueClass.GENERAL_VALUE,
    (True, False, False): ValueClass.GENERAL_DEVELOP,
    (False, True, False): ValueClass.GENERAL_KEEP,
    (False, False, False): ValueClass.GENERAL_RETAIN,
}


def value_classes(customers: Sequence[RfmInput]) -> dict[str, ValueClass]:
    """R↑ means at least as recent as the mean (days since ≤ mean); F↑ and M↑ mean at least the mean."""
    if not customers:
        return {}
    mean_r = statistics.fmean(c.recency_days for c in customers)
    mean_f = statistics.fmean(c.frequency for c in customers)
    mean_m = statistics.fmean(c.monetary_minor for c in customers)
    return {
        c.customer_id: _CLASSES[(c.recency_days <= mean_r, c.frequency >= mean_f, c.monetary_minor >= mean_m)]
        for c in customers
    }


class ChurnRisk(Enum):
    NONE = "none"
    WATCH = "watch"
    AT_RISK = "at_risk"
    CHURNED = "churned"


@dataclass(frozen=True)
class ChurnRules:
    """Per-shop thresholds; the defaults are a starting point, not a law."""

    watch_after_intervals: float = 1.5  # days since ≥ 1.5 × the customer's usual interval
    at_risk_after_intervals: float = 2.5
    churned_after_intervals: float = 4.0
    at_risk_below_p_alive: float = 0.5
    churned_below_p_alive: float = 0.2


@dataclass(frozen=True)
class ChurnWarning:
    level: ChurnRisk
    reason: str


def churn_warning(
    recency_days: int,
    mean_interval_days: float | None,
    shop_median_interval_days: float | None,
    p_alive: float | None,
    rules: ChurnRules = ChurnRules(),
) -> ChurnWarning:
    """流失预警: the worse of the interval rule and the P(alive) rule, with the reason a person can act on.

    A one-order customer has no interval of their own, so the shop's median
    interval stands in for it.
    """
    levels = [ChurnWarning(ChurnRisk.NONE, "buying at their usual rhythm")]
    interval = mean_interval_days if mean_interval_days else shop_median_interval_days
    if interval:
        ratio = recency_days / interval
        whose = "their" if mean_interval_days else "the shop's median"
        for threshold, level in (
            (rules.churned_after_intervals, ChurnRisk.CHURNED),
            (rules.at_risk_after_intervals, ChurnRisk.AT_RISK),
            (rules.watch_after_intervals, ChurnRisk.WATCH),
        ):
            if ratio >= threshold:
                levels.append(
                    ChurnWarning(
                        level,
                        f"{recency_days} days since the last order, {ratio:.1f}× "
                        f"{whose} interval of {interval:.0f} days",
                    )
                )
                break
    if p_alive is not None:
        if p_alive < rules.churned_below_p_alive:
            levels.append(ChurnWarning(ChurnRisk.CHURNED, f"P(alive) {p_alive:.2f} < {rules.churned_below_p_alive}"))
        elif p_alive < rules.at_risk_below_p_alive:
            levels.append(ChurnWarning(ChurnRisk.AT_RISK, f"P(alive) {p_alive:.2f} < {rules.at_risk_below_p_alive}"))
    order = list(ChurnRisk)
    return max(levels, key=lambda w: order.index(w.level))


class ActivityLayer(Enum):
    HIGH = "high"
    MID = "mid"
    LOW = "low"


@dataclass(frozen=True)
class ActivityThresholds:
    """Per-shop thresholds over a window (e.g. the last 180 days); AOV 0 means "not a criterion"."""

    high_orders: int = 3
    high_active_days: int = 3
    high_aov_minor: int = 0
    mid_orders: int = 2
    mid_active_days: int = 2

    def __post_init__(self) -> None:
        if self.mid_orders > self.high_orders or self.mid_active_days > self.high_active_days:
            raise ValueError("mid thresholds must not exceed high thresholds")


def activity_layer(
    orders: int, active_days: int, aov_minor: float, rules: ActivityThresholds = ActivityThresholds()
) -> ActivityLayer:
    """High / mid / low activity (Youzan practice) by repurchase frequency, active days and AOV in a window."""
    if orders >= rules.high_orders and active_days >= rules.high_active_days and aov_minor >= rules.high_aov_minor:
        return ActivityLayer.HIGH
    if orders >= rules.mid_orders and active_days >= rules.mid_active_days:
        return ActivityLayer.MID
    return ActivityLayer.LOW
