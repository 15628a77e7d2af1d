"""The demo shop has no artefacts: no day of synthetic pile-up, nothing dated after its 'today'."""

from __future__ import annotations

from collections import Counter
from datetime import date

import pytest

from services.cli.demo import demo_shop


@pytest.mark.parametrize("today", [date(2026, 11, 23), date(2026, 6, 1)])
def test_the_busiest_day_is_within_twice_the_double_eleven_peak(today: date) -> None:
    """Late repeat orders were once clamped to 'yesterday': 172 orders on one day against a peak of 21."""
    shop = demo_shop(1_000, 7, today)
    per_day = Counter(order.paid_at.date() for order in shop.orders)
    peak = max(count for day, count in per_day.items() if (day.month, day.day) == (11, 11))
    assert max(per_day.values()) <= 2 * peak
    assert max(per_day) < today  # the data ends yesterday


def test_the_demo_answers_the_survey_and_redeems_points_before_its_today() -> None:
    """The report's NPS card and redemption bars need data: every demo shop has both."""
    today = date(2026, 11, 23)
    shop = demo_shop(1_000, 7, today)
    assert len(shop.feedback) > 100
    assert all(f.given_at.date() < today for f in shop.feedback)
    assert {f.order_id for f in shop.feedback} <= {o.order_id for o in shop.orders}
    scores = Counter(f.score for f in shop.feedback)
    promoters, detractors = sum(scores[s] for s in (9, 10)), sum(scores[s] for s in range(7))
    assert promoters > detractors > 0  # a shop people like, with critics
    assert len(shop.redemptions) >= 5
    assert len({customer for customer, _item in shop.redemptions}) == len(shop.redemptions)  # one each
