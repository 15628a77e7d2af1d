"""Loads a demo shop through the public RPCs, as a storefront would; every call is idempotent, so a rerun is safe."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2 as cd
from loyalty.metrics.v1 import metrics_pb2
from loyalty.points.v1 import points_pb2
from loyalty.segmentation.v1 import segmentation_pb2 as sg

from services.cli.demo import DemoOrder, DemoRefund, DemoShop, demo_shop

T = TypeVar("T")
CHUNK = 1_000
PARALLEL_CALLS = 8
TIMEOUT = 60.0
DEMO_SEGMENTS = {
    "repeat_buyers": ("复购客户 repeat buyers", "order_count >= 2", "repeat_buyer"),
    "lapsed": ("沉睡客户 lapsed", "recency_days > 90 and order_count >= 2", ""),
    "champions": ("Champions", 'rfm_segment = "Champions"', ""),
    "churn_watch": ("流失预警 churn warning", 'churn_risk in ("watch", "at_risk")', ""),
    "high_activity": ("高活跃 high activity", 'activity_layer = "high"', ""),
}


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def cny(amount: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency="CNY")


def d(day: date) -> common_pb2.Date:
    return common_pb2.Date(year=day.year, month=day.month, day=day.day)


def order_proto(order: DemoOrder, source: int = common_pb2.ORDER_SOURCE_NORMAL) -> common_pb2.Order:
    return common_pb2.Order(
        order_id=order.order_id,
        customer_id=order.customer_id,
        paid_at=stamp(order.paid_at),
        paid=cny(order.amount_minor),
        channel=order.channel,
        source=source,  # type: ignore[arg-type]
        items=[
            common_pb2.OrderItem(sku=i.sku, category=i.category, quantity=1, paid=cny(i.amount_minor))
            for i in order.items
        ],
    )


def demo_program() -> points_pb2.Program:
    return points_pb2.Program(
        earn=points_pb2.EarnRules(
            category_multipliers={"gift": points_pb2.Ratio(numerator=2, denominator=1)}, first_order_bonus=50
        ),
        expiry=points_pb2.ExpiryPolicy(kind=points_pb2.EXPIRY_KIND_END_OF_YEAR, n=12),
        spend=points_pb2.SpendRules(points_per_unit=100, max_share_bp=3_000),
        tiers=points_pb2.TierRules(
            tiers=[
                points_pb2.Tier(code="silver", name="白银会员", threshold=500),
                points_pb2.Tier(
                    code="gold",
                    name="黄金会员",
                    threshold=2_000,
                    earn_multiplier=points_pb2.Ratio(numerator=3, denominator=2),
                ),
            ],
            downgrade_grace_days=90,
        ),
        stored_value=points_pb2.StoredValueRules(
            plans=[
                points_pb2.TopUpPlan(pay_minor=20_000, bonus_minor=1_000),
                points_pb2.TopUpPlan(pay_minor=50_000, bonus_minor=5_000),
            ]
        ),
        rebate=points_pb2.RebateRules(rate_bp=100, valid_days=90),
        rewards=points_pb2.RewardRules(
            coupon_templates=[
                points_pb2.CouponTemplate(
                    template_id="review5", name="晒单返券 5元", value_minor=500, min_order_minor=3_000, valid_days=30
                )
            ],
            review_with_photos=points_pb2.Reward(points=20, coupon_template_id="review5"),
        ),
    )


@dataclass
class Stubs:
    points: Any
    metrics: Any
    segmentation: Any
    cycle_delivery: Any


Step = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


def parallel(calls: Iterable[Callable[[], object]], advance: Callable[[int], None]) -> None:
    with ThreadPoolExecutor(PARALLEL_CALLS) as pool:
        for _ in pool.map(lambda call: call(), calls):
            advance(1)


def seed_demo(stubs: Stubs, shop_id: str, *, customers: int, seed: int, today: date, step: Step) -> DemoShop:
    """Loads the demo shop; returns what was generated so the caller can report it."""
    data = demo_shop(customers, seed, today)
    key = f"demo{seed}"
    stubs.points.SetProgram(
        points_pb2.SetProgramRequest(shop_id=shop_id, request_id=f"{key}-program", program=demo_program()),
        timeout=TIMEOUT,
    )
    for item_id, name, cost, stock in (
        ("mug", "定制马克杯", 800, 200),
        ("tote", "帆布袋", 500, 500),
        ("milk-card", "牛奶兑换卡", 1_500, 100),
    ):
        item = points_pb2.MallItem(item_id=item_id, name=name, cost_points=cost, stock=stock, per_customer_limit=2)
        stubs.points.UpsertMallItem(
            points_pb2.UpsertMallItemRequest(shop_id=shop_id, request_id=f"{key}-item-{item_id}", item=item),
            timeout=TIMEOUT,
        )

    advance = step("orders → metrics (StreamOrders)", len(data.orders))
    requests = (
        metrics_pb2.StreamOrdersRequest(
            shop_id=shop_id, request_id=f"{key}-orders-{n}", orders=[order_proto(o) for o in chunk]
        )
        for n, chunk in enumerate(chunks(data.orders, CHUNK))
    )

    def counted() -> Iterator[metrics_pb2.StreamOrdersRequest]:
        for request in requests:
            yield request
            advance(len(request.orders))

    stubs.metrics.StreamOrders(counted(), timeout=3600)
    refunds = [
        metrics_pb2.Refund(
            refund_id=r.refund_id, order_id=r.order_id, amount=cny(r.amount_minor), refunded_at=stamp(r.refunded_at)
        )
        for r in data.refunds
    ]
    for n, chunk in enumerate(chunks(refunds, CHUNK)):
        stubs.metrics.RecordRefunds(
            metrics_pb2.RecordRefundsRequest(shop_id=shop_id, request_id=f"{key}-refunds-{n}", refunds=list(chunk)),
            timeout=TIMEOUT,
        )

    def earn(o: DemoOrder) -> None:
        request_id = f"{key}-earn-{o.order_id}"[:64]
        stubs.points.EarnForOrder(
            points_pb2.EarnForOrderRequest(shop_id=shop_id, request_id=request_id, order=order_proto(o)),
            timeout=TIMEOUT,
        )

    def refund(r: DemoRefund) -> None:
        request = points_pb2.RefundOrderRequest(
            shop_id=shop_id, request_id=f"{key}-{r.refund_id}"[:64], order_id=r.order_id, amount=cny(r.amount_minor)
        )
        stubs.points.RefundOrder(request, timeout=TIMEOUT)

    def top_up(top_up_id: str, customer: str, paid: int) -> None:
        request = points_pb2.TopUpRequest(
            shop_id=shop_id, request_id=f"{key}-{top_up_id}", customer_id=customer, top_up_id=top_up_id, paid=cny(paid)
        )
        stubs.points.TopUp(request, timeout=TIMEOUT)

    def review(customer: str, order_id: str) -> None:
        request = points_pb2.ClaimRewardRequest(
            shop_id=shop_id,
            request_id=f"{key}-review-{order_id}"[:64],
            customer_id=customer,
            event=points_pb2.REWARD_EVENT_REVIEW_WITH_PHOTOS,
            order_id=order_id,
        )
        stubs.points.ClaimReward(request, timeout=TIMEOUT)

    def redeem(customer: str, item_id: str) -> None:
        request = points_pb2.RedeemRequest(
            shop_id=shop_id, request_id=f"{key}-redeem-{customer}", customer_id=customer, item_id=item_id, quantity=1
        )
        stubs.points.Redeem(request, timeout=TIMEOUT)

    parallel([partial(earn, o) for o in data.orders], step("orders → points (EarnForOrder)", len(data.orders)))
    calls: list[Callable[[], object]] = [partial(refund, r) for r in data.refunds]
    calls += [partial(top_up, *t) for t in data.top_ups]
    calls += [partial(review, *r) for r in data.reviews]
    parallel(calls, step("refunds, top-ups and reviews → points", len(calls)))
    # After the refunds: a redemption spends points that no claw-back takes away again.
    parallel([partial(redeem, *r) for r in data.redemptions], step("mall redemptions → points", len(data.redemptions)))
    answers = [
        metrics_pb2.Feedback(
            feedback_id=f.feedback_id,
            customer_id=f.customer_id,
            order_id=f.order_id,
            score=f.score,
            given_at=stamp(f.given_at),
        )
        for f in data.feedback
    ]
    advance = step("satisfaction answers → metrics", len(answers))
    for n, batch in enumerate(chunks(answers, CHUNK)):
        stubs.metrics.RecordFeedback(
            metrics_pb2.RecordFeedbackRequest(shop_id=shop_id, request_id=f"{key}-feedback-{n}", feedback=list(batch)),
            timeout=TIMEOUT,
        )
        advance(len(batch))

    advance = step("subscriptions → cycle delivery", len(data.subscriptions))
    plan = cd.Plan(
        plan_id="milk-weekday",
        sku="milk-1l",
        name="鲜牛奶 工作日配送",
        rule=cd.ScheduleRule(
            cadence=cd.CADENCE_WEEKLY,
            weekdays=[
                cd.WEEKDAY_MONDAY,
                cd.WEEKDAY_TUESDAY,
                cd.WEEKDAY_WEDNESDAY,
                cd.WEEKDAY_THURSDAY,
                cd.WEEKDAY_FRIDAY,
            ],
        ),
        delivery_count=20,
        lead_time_days=1,
        cutoff_minute=20 * 60,
        delivery_modes=[cd.DELIVERY_MODE_SAME_CITY],
        price_per_delivery=cny(800),
    )
    stubs.cycle_delivery.UpsertPlan(
        cd.UpsertPlanRequest(shop_id=shop_id, request_id=f"{key}-plan", plan=plan), timeout=TIMEOUT
    )
    # The service refuses a first delivery before its own lead time and cut-off, judged by its clock, not the
    # demo's 'today': a demo dated in the past starts its subscriptions a few days after the real today instead.
    earliest_start = today_utc() + timedelta(days=3)
    for s in data.subscriptions:
        order = common_pb2.Order(
            order_id=s.order_id, customer_id=s.customer_id, paid_at=stamp(s.paid_at), paid=cny(16_000)
        )
        stubs.cycle_delivery.CreateSubscription(
            cd.CreateSubscriptionRequest(
                shop_id=shop_id,
                request_id=f"{key}-sub-{s.order_id}",
                order=order,
                plan_id=plan.plan_id,
                quantity=1,
                address="上海市示例路 1 号",
                delivery_mode=cd.DELIVERY_MODE_SAME_CITY,
                start_date=d(max(s.start, earliest_start)),
            ),
            timeout=TIMEOUT,
        )
        for index in s.skips:
            stubs.cycle_delivery.ChangeDeliveries(
                cd.ChangeDeliveriesRequest(
                    shop_id=shop_id,
                    request_id=f"{key}-skip-{s.order_id}-{index}",
                    subscription_id=s.order_id,
                    kind=cd.CHANGE_KIND_SKIP,
                    index=index,
                ),
                timeout=TIMEOUT,
            )
        if s.pause:
            stubs.cycle_delivery.PauseSubscription(
                cd.PauseSubscriptionRequest(
                    shop_id=shop_id, request_id=f"{key}-pause-{s.order_id}", subscription_id=s.order_id
                ),
                timeout=TIMEOUT,
            )
        advance(1)

    advance = step("segments → evaluation", 1)
    for segment_id, (name, rule, tag) in DEMO_SEGMENTS.items():
        segment = sg.Segment(segment_id=segment_id, name=name, rule=rule, auto_tag=tag)
        stubs.segmentation.UpsertSegment(
            sg.UpsertSegmentRequest(shop_id=shop_id, request_id=f"{key}-seg-{segment_id}", segment=segment),
            timeout=TIMEOUT,
        )
    for _ in stubs.segmentation.EvaluateSegments(
        sg.EvaluateSegmentsRequest(shop_id=shop_id, as_of=d(today)), timeout=3600
    ):
        pass
    advance(1)
    return data


def today_utc() -> date:
    return datetime.now(UTC).date()
