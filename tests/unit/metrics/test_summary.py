"""Customer summaries by hand: same-day orders, shop-local days, duplicates vs corrections."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from services.common.clock import local_date
from services.metrics.domain import OrderFact, Outcome, classify_order, summarize

SHANGHAI = ZoneInfo("Asia/Shanghai")


def fact(instant: datetime, amount: int) -> OrderFact:
    return OrderFact("c", instant, local_date(instant, SHANGHAI), amount)


def test_no_orders_no_summary() -> None:
    assert summarize("c", []) is None


def test_hand_computed_summary() -> None:
    orders = [
        fact(datetime(2026, 5, 1, 1, 0, tzinfo=UTC), 1000),  # 09:00 May 1 Shanghai
        fact(datetime(2026, 5, 1, 15, 59, tzinfo=UTC), 500),  # 23:59 May 1 Shanghai: same day
        fact(datetime(2026, 5, 1, 16, 1, tzinfo=UTC), 700),  # 00:01 May 2 Shanghai: next day
    ]
    s = summarize("c", orders)
    assert s is not None
    assert (s.order_count, s.purchase_days, s.total_minor) == (3, 2, 2200)
    assert (s.first_order_at, s.last_order_at) == (orders[0].paid_at, orders[2].paid_at)


def test_local_day_is_the_shops_not_utcs() -> None:
    assert local_date(datetime(2026, 5, 1, 16, 30, tzinfo=UTC), SHANGHAI) == date(2026, 5, 2)
    assert local_date(datetime(2026, 5, 1, 16, 30, tzinfo=UTC), ZoneInfo("UTC")) == date(2026, 5, 1)


def test_classify_order() -> None:
    assert classify_order(None, "x") is Outcome.INSERTED
    assert classify_order("x", "x") is Outcome.DUPLICATE
    assert classify_order("x", "y") is Outcome.CORRECTED


def test_refunds_net_the_total_and_full_refunds_leave_the_summary() -> None:
    day = datetime(2026, 5, 1, 4, tzinfo=UTC)
    orders = [
        OrderFact("c", day, date(2026, 5, 1), 1000, refunded_minor=250),
        OrderFact("c", day, date(2026, 5, 2), 400, refunded_minor=400),
    ]
    s = summarize("c", orders)
    assert s is not None
    assert (s.order_count, s.purchase_days, s.total_minor) == (1, 1, 750)
    assert summarize("c", orders[1:]) is None
