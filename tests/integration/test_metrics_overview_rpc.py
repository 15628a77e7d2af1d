"""Satisfaction, the shop overview, and the summary rebuild."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.metrics.v1 import metrics_pb2 as m
from loyalty.metrics.v1 import metrics_pb2_grpc
from sqlalchemy import select, update

from services.metrics.models import CustomerSummary
from services.metrics.rebuild import rebuild
from tests.integration.test_metrics_definitions_rpc import ORDERS, d, noon
from tests.integration.test_metrics_refunds_stream import refund
from tests.integration.test_metrics_rpc import order
from tests.support import ROOT, Stack, bearer, details

A = bearer("admin")
JANUARY = {"period_start": d(date(2026, 1, 1)), "period_end": d(date(2026, 1, 31))}


def metrics(stack: Stack) -> metrics_pb2_grpc.MetricsServiceStub:
    return metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics"))


def answer(feedback_id: str, score: int, day: date = date(2026, 1, 9), comment: str = "") -> m.Feedback:
    stamp = Timestamp()
    stamp.FromDatetime(noon(day))
    return m.Feedback(feedback_id=feedback_id, customer_id="A", score=score, comment=comment, given_at=stamp)


def seed(stack: Stack, shop: str) -> None:
    metrics(stack).RecordOrders(
        m.RecordOrdersRequest(
            shop_id=shop, request_id="seed", orders=[order(o, c, noon(day), amount) for o, c, day, amount in ORDERS]
        ),
        metadata=A,
    )


def test_satisfaction_by_hand(stack: Stack, uid: str) -> None:
    shop = f"nps-{uid}"
    items = [answer(f"f{i}", s, comment="服务很好") for i, s in enumerate([10, 9, 8, 7, 6, 0])]
    items.append(answer("late", 10, day=date(2026, 2, 1)))
    first = metrics(stack).RecordFeedback(
        m.RecordFeedbackRequest(shop_id=shop, request_id="r1", feedback=items), metadata=A
    )
    assert (first.recorded, first.duplicates) == (7, 0)
    again = metrics(stack).RecordFeedback(
        m.RecordFeedbackRequest(shop_id=shop, request_id="r2", feedback=items[:2]), metadata=A
    )
    assert again.duplicates == 2
    result = metrics(stack).GetSatisfaction(m.GetSatisfactionRequest(shop_id=shop, **JANUARY), metadata=A)
    assert (result.responses, result.promoters, result.passives, result.detractors) == (6, 2, 2, 2)
    assert result.nps == 0
    assert result.average_score == pytest.approx(40 / 6)
    assert (result.recommendation_rate.numerator, result.recommendation_rate.denominator) == (2, 6)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (answer("x", 11), "score"),
        (answer("x", -1), "score"),
        (answer("x", 5, comment="长" * 501), "comment"),
        (m.Feedback(feedback_id="x", customer_id="A", score=5), "given_at"),
    ],
)
def test_bad_feedback_is_invalid_argument(stack: Stack, item: m.Feedback, field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).RecordFeedback(
            m.RecordFeedbackRequest(shop_id="shop-a", request_id="bad", feedback=[item]), metadata=A
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details(caught.value)


def test_feedback_id_reused_with_another_score_is_already_exists(stack: Stack, uid: str) -> None:
    shop = f"nps-{uid}"
    metrics(stack).RecordFeedback(
        m.RecordFeedbackRequest(shop_id=shop, request_id="a", feedback=[answer("f", 9)]), metadata=A
    )
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).RecordFeedback(
            m.RecordFeedbackRequest(shop_id=shop, request_id="b", feedback=[answer("f", 3)]), metadata=A
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_overview_of_january(stack: Stack, uid: str) -> None:
    shop = f"ov-{uid}"
    seed(stack, shop)
    metrics(stack).RecordFeedback(
        m.RecordFeedbackRequest(shop_id=shop, request_id="f", feedback=[answer("f1", 10), answer("f2", 3)]), metadata=A
    )
    o = metrics(stack).GetShopOverview(m.GetShopOverviewRequest(shop_id=shop, **JANUARY), metadata=A)
    # January: A 100 + 50, B 80, D 120 -> 4 orders, 3 customers, 350 net.
    assert (o.orders, o.customers, o.net_revenue.amount_minor, o.net_revenue.currency) == (4, 3, 350, "CNY")
    assert o.aov_minor == 87.5
    assert (o.repurchase_by_customer.numerator, o.repurchase_by_customer.denominator) == (1, 3)
    assert (o.repurchase_by_order.numerator, o.repurchase_by_order.denominator) == (1, 4)
    assert (o.ninety_day_repurchase.numerator, o.ninety_day_repurchase.denominator) == (1, 2)
    assert o.stage == m.REPURCHASE_STAGE_LOYALTY
    # December's only buyer (B) came back in January: no churn.
    assert (o.churn_from_previous_period.numerator, o.churn_from_previous_period.denominator) == (0, 1)
    assert o.nps == 0


def summaries(stack: Stack, shop: str) -> list[tuple[object, ...]]:
    with stack.services["metrics"].db.sessions() as session:
        rows = session.scalars(
            select(CustomerSummary).where(CustomerSummary.shop_id == shop).order_by(CustomerSummary.customer_id)
        )
        return [
            (r.customer_id, r.order_count, r.purchase_days, r.total_minor, r.first_order_at, r.last_order_at)
            for r in rows
        ]


def test_rebuild_gives_the_incremental_summaries_and_repairs_drift(stack: Stack, uid: str) -> None:
    shop = f"rb-{uid}"
    seed(stack, shop)
    metrics(stack).RecordOrders(
        m.RecordOrdersRequest(shop_id=shop, request_id="fix", orders=[order("a3", "E", noon(date(2026, 2, 11)), 250)]),
        metadata=A,
    )  # correction moves a3 from A to E
    metrics(stack).RecordRefunds(
        m.RecordRefundsRequest(shop_id=shop, request_id="rf", refunds=[refund("r1", "b2", 80), refund("r2", "d1", 20)]),
        metadata=A,
    )
    incremental = summaries(stack, shop)
    db = stack.services["metrics"].db
    db.run(
        lambda s: s.execute(
            update(CustomerSummary)
            .where(CustomerSummary.shop_id == shop)
            .values(total_minor=CustomerSummary.total_minor + 1)
        )
    )
    assert summaries(stack, shop) != incremental
    assert rebuild(db, [shop]) == {shop: 4}
    assert summaries(stack, shop) == incremental


def test_rebuild_command_runs_against_the_configured_database(stack: Stack, uid: str) -> None:
    shop = f"rbc-{uid}"
    seed(stack, shop)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env |= {"DATABASE_URL": stack.services["metrics"].settings.database_url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "services.metrics.rebuild", shop],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"customers": 4' in done.stdout


def test_overview_without_orders_has_no_averages(stack: Stack, uid: str) -> None:
    o = metrics(stack).GetShopOverview(m.GetShopOverviewRequest(shop_id=f"empty-{uid}", **JANUARY), metadata=A)
    assert (o.orders, o.HasField("aov_minor"), o.HasField("nps"), o.repurchase_by_customer.HasField("value")) == (
        0,
        False,
        False,
        False,
    )
    assert o.stage == m.REPURCHASE_STAGE_UNSPECIFIED


def test_feedback_comments_and_phone_numbers_never_reach_the_logs(
    stack: Stack, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    phone, address = "13812345678", "上海市徐汇区漕溪北路88号"
    comment = f"送货慢，请打 {phone}，地址 {address}"
    metrics(stack).RecordFeedback(
        m.RecordFeedbackRequest(shop_id=f"pii-{uid}", request_id="p", feedback=[answer("f1", 3, comment=comment)]),
        metadata=A,
    )
    with pytest.raises(grpc.RpcError):  # a refused request must not echo the comment either
        metrics(stack).RecordFeedback(
            m.RecordFeedbackRequest(shop_id=f"pii-{uid}", request_id="q", feedback=[answer("f2", 11, comment=comment)]),
            metadata=A,
        )
    captured = capsys.readouterr()
    logs = captured.out + captured.err
    assert "RecordFeedback" in logs  # the access lines were captured...
    assert phone not in logs  # ...and carry no personal data
    assert address not in logs
