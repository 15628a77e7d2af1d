"""Per-shop layering thresholds: defaults round-trip, every bad field is named, and the rules change the layers."""

from __future__ import annotations

import math

import pytest
from loyalty.segmentation.v1 import segmentation_pb2

from services.common.errors import Violations
from services.segmentation.evaluation import FeatureRow, customer_scores
from services.segmentation.layering import DEFAULT_LAYERING, from_proto, to_proto


def test_the_defaults_survive_the_proto_round_trip() -> None:
    v = Violations()
    assert from_proto(v, to_proto(DEFAULT_LAYERING)) == DEFAULT_LAYERING
    assert v.found == []


def changed(**fields: float) -> segmentation_pb2.LayeringRules:
    rules = to_proto(DEFAULT_LAYERING)
    for path, value in fields.items():
        part, name = path.split("__")
        setattr(getattr(rules, part), name, value)
    return rules


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"activity__high_orders": 0}, "rules.activity.high_orders"),
        ({"activity__mid_orders": 5}, "rules.activity.mid_orders"),
        ({"activity__mid_active_days": 9}, "rules.activity.mid_active_days"),
        ({"activity__high_aov_minor": -1}, "rules.activity.high_aov_minor"),
        ({"churn__watch_after_intervals": 0.0}, "rules.churn.watch_after_intervals"),
        ({"churn__churned_after_intervals": math.inf}, "rules.churn.churned_after_intervals"),
        ({"churn__watch_after_intervals": 3.0}, "rules.churn"),
        ({"churn__at_risk_below_p_alive": 1.5}, "rules.churn.at_risk_below_p_alive"),
        ({"churn__churned_below_p_alive": 0.9}, "rules.churn.churned_below_p_alive"),
        ({"churn__at_risk_below_p_alive": math.nan}, "rules.churn.at_risk_below_p_alive"),
    ],
)
def test_each_bad_threshold_is_named(fields: dict[str, float], named: str) -> None:
    v = Violations()
    assert from_proto(v, changed(**fields)) is None
    assert named in [violation.field for violation in v.found]


def test_a_shops_thresholds_move_customers_between_layers_and_risks() -> None:
    one_order = FeatureRow("c", 1, 1, 5_000, 5_000.0, 40, 40, None, 0.6, window_orders=1, window_active_days=1)
    regular = FeatureRow("r", 4, 4, 20_000, 5_000.0, 40, 200, 20.0, 0.6, window_orders=4, window_active_days=4)
    default = {s.customer_id: s for s in customer_scores([one_order, regular])}
    assert (default["c"].activity_layer, default["r"].activity_layer) == ("low", "high")
    assert default["r"].churn_risk == "watch"  # 40 days over a 20-day interval = 2 intervals: watch from 1.5
    loose = from_proto(
        Violations(),
        changed(
            activity__mid_orders=1,
            activity__mid_active_days=1,
            churn__watch_after_intervals=3.0,
            churn__at_risk_after_intervals=5.0,
            churn__churned_after_intervals=8.0,
            churn__at_risk_below_p_alive=0.0,
            churn__churned_below_p_alive=0.0,
        ),
    )
    assert loose is not None
    custom = {s.customer_id: s for s in customer_scores([one_order, regular], loose.activity, loose.churn)}
    assert custom["c"].activity_layer == "mid"
    assert custom["r"].churn_risk == "none"
