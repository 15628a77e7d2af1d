"""RFM quintiles with ties, the 11-segment map, the 8-class model and churn warning, by hand."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.segmentation.rfm import (
    ChurnRisk,
    RfmInput,
    RfmScore,
    Segment,
    ValueClass,
    churn_warning,
    rfm_scores,
    segment_of,
    value_classes,
)


def test_quintiles_with_ties_by_hand() -> None:
    customers = [
        RfmInput("a", 1, 10, 500),
        RfmInput("b", 5, 10, 100),
        RfmInput("c", 5, 20, 300),
        RfmInput("d", 30, 30, 300),
        RfmInput("e", 100, 40, 900),
    ]
    scores = {s.customer_id: (s.r, s.f, s.m) for s in rfm_scores(customers)}
    # R (fewer days is better): 100 -> 1, 30 -> 2, the two 5s share 3, 1 -> 5.
    # F: the two 10s share 1, 20 -> 3, 30 -> 4, 40 -> 5.  M: 100 -> 1, the two 300s share 2, 500 -> 4, 900 -> 5.
    assert scores == {"a": (5, 1, 4), "b": (3, 1, 1), "c": (3, 3, 2), "d": (2, 4, 2), "e": (1, 5, 5)}


customer_lists = st.lists(
    st.builds(
        RfmInput,
        customer_id=st.uuids().map(str),
        recency_days=st.integers(0, 400),
        frequency=st.integers(1, 30),
        monetary_minor=st.integers(0, 10**6),
    ),
    min_size=1,
    max_size=60,
    unique_by=lambda c: c.customer_id,
)


@given(customer_lists, st.randoms())
def test_scores_do_not_depend_on_input_order_and_ties_share(customers: list[RfmInput], rng: random.Random) -> None:
    shuffled = customers[:]
    rng.shuffle(shuffled)
    by_id = {s.customer_id: s for s in rfm_scores(customers)}
    assert {s.customer_id: s for s in rfm_scores(shuffled)} == by_id
    for a, b in itertools.combinations(customers, 2):
        if a.frequency == b.frequency:
            assert by_id[a.customer_id].f == by_id[b.customer_id].f
        if a.frequency < b.frequency:
            assert by_id[a.customer_id].f <= by_id[b.customer_id].f
        if a.recency_days < b.recency_days:
            assert by_id[a.customer_id].r >= by_id[b.customer_id].r
    assert all(1 <= v <= 5 for s in by_id.values() for v in (s.r, s.f, s.m))


def test_every_score_has_exactly_one_segment_and_all_eleven_occur() -> None:
    seen = {segment_of(RfmScore("x", r, f, m)) for r, f, m in itertools.product(range(1, 6), repeat=3)}
    assert seen == set(Segment)


@pytest.mark.parametrize(
    ("r", "f", "m", "segment"),
    [
        (5, 5, 5, Segment.CHAMPIONS),
        (5, 4, 3, Segment.POTENTIAL_LOYALIST),
        (4, 5, 4, Segment.LOYAL),
        (1, 5, 5, Segment.CANT_LOSE),
        (2, 3, 4, Segment.AT_RISK),
        (5, 1, 1, Segment.NEW),
        (4, 1, 2, Segment.PROMISING),
        (3, 3, 3, Segment.NEED_ATTENTION),
        (3, 1, 3, Segment.ABOUT_TO_SLEEP),
        (2, 1, 2, Segment.HIBERNATING),
        (1, 1, 1, Segment.LOST),
        (1, 3, 4, Segment.LOST),
    ],
)
def test_segment_map_by_hand(r: int, f: int, m: int, segment: Segment) -> None:
    assert segment_of(RfmScore("x", r, f, m)) is segment


def test_eight_classes_by_hand() -> None:
    # Means: recency 25, frequency 4, monetary 400.
    customers = [
        RfmInput("vip", 5, 8, 800),
        RfmInput("new_big", 10, 1, 500),
        RfmInput("old_loyal", 60, 6, 200),
        RfmInput("gone", 25, 1, 100),
    ]
    assert value_classes(customers) == {
        "vip": ValueClass.IMPORTANT_VALUE,
        "new_big": ValueClass.IMPORTANT_DEVELOP,
        "old_loyal": ValueClass.GENERAL_KEEP,
        "gone": ValueClass.GENERAL_DEVELOP,  # 25 days = the mean counts as R↑
    }
    assert value_classes([]) == {}


@pytest.mark.parametrize(
    ("recency", "interval", "median", "p_alive", "level", "words"),
    [
        (20, 30.0, None, None, ChurnRisk.NONE, "usual rhythm"),
        (45, 30.0, None, None, ChurnRisk.WATCH, "1.5× their interval of 30 days"),
        (75, 30.0, None, None, ChurnRisk.AT_RISK, "2.5×"),
        (120, 30.0, None, None, ChurnRisk.CHURNED, "4.0×"),
        (50, None, 20.0, None, ChurnRisk.AT_RISK, "the shop's median interval of 20 days"),
        (10, 30.0, None, 0.4, ChurnRisk.AT_RISK, "P(alive) 0.40"),
        (50, 30.0, None, 0.1, ChurnRisk.CHURNED, "P(alive) 0.10"),
        (10, None, None, None, ChurnRisk.NONE, "usual rhythm"),
    ],
)
def test_churn_warning(
    recency: int, interval: float | None, median: float | None, p_alive: float | None, level: ChurnRisk, words: str
) -> None:
    warning = churn_warning(recency, interval, median, p_alive)
    assert warning.level is level
    assert words in warning.reason


@pytest.mark.parametrize(
    ("orders", "days", "aov", "expected"),
    [
        (5, 4, 100.0, "high"),
        (5, 2, 100.0, "mid"),
        (3, 3, 100.0, "high"),
        (2, 2, 100.0, "mid"),
        (4, 1, 100.0, "low"),
        (1, 1, 9000.0, "low"),
        (0, 0, 0.0, "low"),
    ],
)
def test_activity_layers_with_defaults(orders: int, days: int, aov: float, expected: str) -> None:
    from services.segmentation.rfm import activity_layer

    assert activity_layer(orders, days, aov).value == expected


def test_activity_aov_threshold_and_bad_thresholds() -> None:
    from services.segmentation.rfm import ActivityThresholds, activity_layer

    rules = ActivityThresholds(high_aov_minor=10_000)
    assert activity_layer(5, 5, 9_999, rules).value == "mid"
    assert activity_layer(5, 5, 10_000, rules).value == "high"
    with pytest.raises(ValueError, match="must not exceed"):
        ActivityThresholds(mid_orders=5, high_orders=3)
