"""Scoring a shop's customers against its segments, vectorised: features in, member lists out.

Pure: the caller streams the features in and writes the memberships out. The
derived fields a rule may use (RFM segment, 8-class value class, activity
layer, churn risk) are computed here from the same features, with the rules of
`services.segmentation.rfm`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from services.segmentation import rfm
from services.segmentation.rules import Columns, Node, evaluate_columns


@dataclass(frozen=True)
class FeatureRow:
    customer_id: str
    order_count: int
    purchase_days: int
    net_revenue_minor: int
    aov_minor: float
    recency_days: int
    age_days: int
    mean_interval_days: float | None
    probability_alive: float | None
    points_balance: int | None = None  # from the points service; None for a customer it does not know
    tier: str | None = None
    window_orders: int = 0  # the same counts over the evaluation's window (recent behaviour)
    window_active_days: int = 0
    window_net_revenue_minor: int = 0

    @property
    def window_aov_minor(self) -> float:
        return self.window_net_revenue_minor / self.window_orders if self.window_orders else 0.0


NUMBER_FIELDS: dict[str, Callable[[FeatureRow], float | None]] = {
    "recency_days": lambda r: r.recency_days,
    "order_count": lambda r: r.order_count,
    "purchase_days": lambda r: r.purchase_days,
    "net_revenue": lambda r: r.net_revenue_minor,
    "aov": lambda r: r.aov_minor,
    "age_days": lambda r: r.age_days,
    "mean_interval_days": lambda r: r.mean_interval_days,
    "probability_alive": lambda r: r.probability_alive,
    "points_balance": lambda r: r.points_balance,
    "orders_in_window": lambda r: r.window_orders,
    "active_days_in_window": lambda r: r.window_active_days,
    "revenue_in_window": lambda r: r.window_net_revenue_minor,
}


@dataclass(frozen=True)
class Attributes:
    """A member's attributes as set by the shop; None is unknown (a rule on it does not match)."""

    birthday_month: int | None = None
    registered_on: date | None = None
    channel: str | None = None


def attribute_values(
    attributes: Attributes | None, as_of: date | None
) -> tuple[float | None, float | None, str | None]:
    """(birthday_month, registered_days, channel) as rules see them on `as_of`.

    A member registered after `as_of` was not registered then, and without an
    `as_of` there is no day to count to: registered_days is unknown in both cases.
    """
    if attributes is None:
        return None, None, None
    registered = attributes.registered_on
    days = (as_of - registered).days if registered is not None and as_of is not None and registered <= as_of else None
    month = float(attributes.birthday_month) if attributes.birthday_month else None
    return month, (float(days) if days is not None else None), attributes.channel or None


@dataclass(frozen=True)
class CustomerScore:
    """What an evaluation concludes about one customer, kept for their profile."""

    customer_id: str
    r: int
    f: int
    m: int
    rfm_segment: str
    value_class: str
    activity_layer: str
    churn_risk: str
    churn_reason: str
    net_revenue_minor: int
    days_since_last_order: int = 0


DEFAULT_ACTIVITY = rfm.ActivityThresholds()
DEFAULT_CHURN = rfm.ChurnRules()


def customer_scores(
    rows: Sequence[FeatureRow],
    activity: rfm.ActivityThresholds = DEFAULT_ACTIVITY,
    churn_rules: rfm.ChurnRules = DEFAULT_CHURN,
) -> list[CustomerScore]:
    """RFM scores and segment, value class, activity layer and churn risk (with its reason) per row."""
    inputs = [rfm.RfmInput(r.customer_id, r.recency_days, r.order_count, r.net_revenue_minor) for r in rows]
    scores = rfm.rfm_scores(inputs)
    classes = rfm.value_classes(inputs)
    intervals = [r.mean_interval_days for r in rows if r.mean_interval_days is not None]
    median_interval = statistics.median(intervals) if intervals else None
    result = []
    for row, score in zip(rows, scores, strict=True):
        churn = rfm.churn_warning(
            row.recency_days, row.mean_interval_days, median_interval, row.probability_alive, churn_rules
        )
        result.append(
            CustomerScore(
                customer_id=row.customer_id,
                r=score.r,
                f=score.f,
                m=score.m,
                rfm_segment=rfm.segment_of(score).value,
                value_class=classes[row.customer_id].value,
                activity_layer=rfm.activity_layer(
                    row.window_orders, row.window_active_days, row.window_aov_minor, activity
                ).value,
                churn_risk=churn.level.value,
                churn_reason=churn.reason[:200],
                net_revenue_minor=row.net_revenue_minor,
                days_since_last_order=row.recency_days,
            )
        )
    return result


LABELS = ("rfm_segment", "value_class", "activity_layer", "churn_risk")


def feature_columns(
    rows: Sequence[FeatureRow],
    scores: Sequence[CustomerScore],
    tags: Mapping[str, set[str]],
    attributes: Mapping[str, Attributes] | None = None,
    as_of: date | None = None,
) -> Columns:
    """Columns for `evaluate_columns`: one array per field, presence masks, and a mask per tag."""
    n = len(rows)
    values: dict[str, object] = {}
    present: dict[str, object] = {}
    for name, get in NUMBER_FIELDS.items():
        raw = [get(r) for r in rows]
        present[name] = np.fromiter((x is not None for x in raw), dtype=bool, count=n)
        values[name] = np.fromiter((float(x) if x is not None else np.nan for x in raw), dtype=np.float64, count=n)
    for name in LABELS:
        values[name] = np.array([getattr(score, name) for score in scores], dtype=object)
        present[name] = np.ones(n, dtype=bool)
    tiers = [r.tier for r in rows]
    values["tier"] = np.array([t or "" for t in tiers], dtype=object)
    present["tier"] = np.fromiter((t is not None for t in tiers), dtype=bool, count=n)
    known = attributes or {}
    seen = [attribute_values(known.get(r.customer_id), as_of) for r in rows]
    for position, name in enumerate(("birthday_month", "registered_days")):
        numbers = [member[position] for member in seen]
        present[name] = np.fromiter((x is not None for x in numbers), dtype=bool, count=n)
        values[name] = np.fromiter((x if x is not None else np.nan for x in numbers), dtype=np.float64, count=n)
    channel = [member[2] for member in seen]
    values["channel"] = np.array([c or "" for c in channel], dtype=object)
    present["channel"] = np.fromiter((c is not None for c in channel), dtype=bool, count=n)
    index = {r.customer_id: i for i, r in enumerate(rows)}
    tag_masks = {}
    for tag, customers in tags.items():
        mask = np.zeros(n, dtype=bool)
        mask[[index[c] for c in customers if c in index]] = True
        tag_masks[tag] = mask
    return Columns(values=values, present=present, tags=tag_masks, rows=n)


def members(
    segments: Mapping[str, Node],
    rows: Sequence[FeatureRow],
    scores: Sequence[CustomerScore],
    tags: Mapping[str, set[str]],
    attributes: Mapping[str, Attributes] | None = None,
    as_of: date | None = None,
) -> dict[str, list[str]]:
    """Each segment's members, sorted by customer id."""
    columns = feature_columns(rows, scores, tags, attributes, as_of)
    ids = np.array([r.customer_id for r in rows], dtype=object)
    return {segment_id: sorted(ids[evaluate_columns(rule, columns)].tolist()) for segment_id, rule in segments.items()}
