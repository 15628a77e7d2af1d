"""A shop's thresholds for the built-in layers (activity, churn warning): defaults, validation, proto form.

The layer rules themselves live in `rfm`; this module only turns what a shop
sends into those rules, naming every field that is out of range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loyalty.segmentation.v1 import segmentation_pb2

from services.common.errors import Violations
from services.segmentation.rfm import ActivityThresholds, ChurnRules

MAX_ORDERS = 10_000
MAX_DAYS = 3_650
MAX_AOV_MINOR = 10**12
MAX_INTERVALS = 100.0


@dataclass(frozen=True)
class Layering:
    activity: ActivityThresholds = field(default_factory=ActivityThresholds)
    churn: ChurnRules = field(default_factory=ChurnRules)


DEFAULT_LAYERING = Layering()


def to_proto(layering: Layering) -> segmentation_pb2.LayeringRules:
    a, c = layering.activity, layering.churn
    return segmentation_pb2.LayeringRules(
        activity=segmentation_pb2.ActivityRules(
            high_orders=a.high_orders,
            high_active_days=a.high_active_days,
            high_aov_minor=a.high_aov_minor,
            mid_orders=a.mid_orders,
            mid_active_days=a.mid_active_days,
        ),
        churn=segmentation_pb2.ChurnRules(
            watch_after_intervals=c.watch_after_intervals,
            at_risk_after_intervals=c.at_risk_after_intervals,
            churned_after_intervals=c.churned_after_intervals,
            at_risk_below_p_alive=c.at_risk_below_p_alive,
            churned_below_p_alive=c.churned_below_p_alive,
        ),
    )


def from_proto(v: Violations, rules: segmentation_pb2.LayeringRules, path: str = "rules") -> Layering | None:
    """The layering a shop sent, or None with every problem added to `v`."""
    a, c = rules.activity, rules.churn
    found = len(v.found)
    for name, value, most in (
        ("high_orders", a.high_orders, MAX_ORDERS),
        ("high_active_days", a.high_active_days, MAX_DAYS),
        ("mid_orders", a.mid_orders, MAX_ORDERS),
        ("mid_active_days", a.mid_active_days, MAX_DAYS),
    ):
        v.check(1 <= value <= most, f"{path}.activity.{name}", f"must be 1..{most}")
    v.check(0 <= a.high_aov_minor <= MAX_AOV_MINOR, f"{path}.activity.high_aov_minor", "must be 0 (any) or positive")
    v.check(a.mid_orders <= a.high_orders, f"{path}.activity.mid_orders", "must not exceed high_orders")
    v.check(
        a.mid_active_days <= a.high_active_days, f"{path}.activity.mid_active_days", "must not exceed high_active_days"
    )
    intervals = (c.watch_after_intervals, c.at_risk_after_intervals, c.churned_after_intervals)
    interval_names = ("watch_after_intervals", "at_risk_after_intervals", "churned_after_intervals")
    for name, interval in zip(interval_names, intervals, strict=True):
        v.check(
            math.isfinite(interval) and 0 < interval <= MAX_INTERVALS,
            f"{path}.churn.{name}",
            f"must be in (0, {MAX_INTERVALS}]",
        )
    v.check(
        intervals[0] <= intervals[1] <= intervals[2],
        f"{path}.churn",
        "needs watch_after_intervals <= at_risk_after_intervals <= churned_after_intervals",
    )
    for name, threshold in (
        ("at_risk_below_p_alive", c.at_risk_below_p_alive),
        ("churned_below_p_alive", c.churned_below_p_alive),
    ):
        v.check(
            math.isfinite(threshold) and 0 <= threshold <= 1,
            f"{path}.churn.{name}",
            "must be in [0, 1] (0 turns it off)",
        )
    v.check(
        c.churned_below_p_alive <= c.at_risk_below_p_alive,
        f"{path}.churn.churned_below_p_alive",
        "must not exceed at_risk_below_p_alive",
    )
    if len(v.found) > found:
        return None
    return Layering(
        ActivityThresholds(a.high_orders, a.high_active_days, a.high_aov_minor, a.mid_orders, a.mid_active_days),
        ChurnRules(*intervals, c.at_risk_below_p_alive, c.churned_below_p_alive),
    )
