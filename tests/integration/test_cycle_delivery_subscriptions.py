"""Subscriptions through gRPC with a hand-moved clock: calendars, changes, pause, cancel, and the delivery worker.

The worker's delivery orders travel through the outbox to metrics and points:
the test follows one subscription from purchase to orders counted and points
earned, exactly once each.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2 as cd
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2_grpc
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from sqlalchemy import func, select

from services.cycle_delivery import store, workers
from services.cycle_delivery.deliveries import DeliveryState
from services.cycle_delivery.models import DeliveryRecord
from tests.support import FakeClock, Stack, bearer, database_template, details, start_stack

A = bearer("admin")
# Sunday 1 March 2026, 10:00 in Shanghai.
START = datetime(2026, 3, 1, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(scope="module")
def clocked(backend: str, clock: FakeClock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with database_template(backend, tmp_path_factory.mktemp("cycle")) as url:
        running = start_stack(url, clock=clock, delivery_worker_seconds=3600.0)
        # The tests run the worker's tick themselves, at the times they set. The
        # background loop's first tick, late on a loaded machine, once created a
        # delivery between a test's subscribe and its next read.
        for worker in running.services["cycle_delivery"].workers:
            if worker.name == "delivery-creation":
                worker.stop(timeout=30)
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(autouse=True)
def reset_clock(clock: FakeClock) -> None:
    clock.now = START


def d(value: date) -> common_pb2.Date:
    return common_pb2.Date(year=value.year, month=value.month, day=value.day)


def day_of(value: common_pb2.Date) -> date:
    return date(value.year, value.month, value.day)


class Shop:
    def __init__(self, stack: Stack, uid: str) -> None:
        self.id = f"shop-{uid}"
        self.stack = stack
        self.stub = cycle_delivery_pb2_grpc.CycleDeliveryServiceStub(stack.channel("cycle_delivery"))
        self.counter = 0

    def call(self, method: str, **fields: Any) -> Any:
        request_type = getattr(cd, f"{method}Request")
        if "request_id" in request_type.DESCRIPTOR.fields_by_name and "request_id" not in fields:
            self.counter += 1
            fields["request_id"] = f"r{self.counter}"
        return getattr(self.stub, method)(request_type(shop_id=self.id, **fields), metadata=A)

    def plan(self, **overrides: Any) -> cd.Plan:
        fields: dict[str, Any] = {
            "plan_id": "milk",
            "sku": "milk-1l",
            "name": "鲜牛奶 工作日配送",
            "rule": cd.ScheduleRule(cadence=cd.CADENCE_WEEKLY, weekdays=[1, 2, 3, 4, 5]),  # type: ignore[list-item]
            "delivery_count": 5,
            "lead_time_days": 1,
            "cutoff_minute": 18 * 60,
            "delivery_modes": [cd.DELIVERY_MODE_SAME_CITY],
            "price_per_delivery": common_pb2.Money(amount_minor=1_500, currency="CNY"),
        }
        fields.update(overrides)
        response: cd.UpsertPlanResponse = self.call("UpsertPlan", plan=cd.Plan(**fields))
        return response.plan

    def subscribe(
        self, order_id: str = "o1", customer: str = "c1", start: date = date(2026, 3, 2), **extra: Any
    ) -> cd.Subscription:
        paid_at = Timestamp()
        paid_at.FromDatetime(START)
        order = common_pb2.Order(
            order_id=order_id,
            customer_id=customer,
            paid_at=paid_at,
            paid=common_pb2.Money(amount_minor=7_500, currency="CNY"),
        )
        fields: dict[str, Any] = {
            "order": order,
            "plan_id": "milk",
            "quantity": 1,
            "address": "上海市徐汇区漕溪北路 1 号",
            "delivery_mode": cd.DELIVERY_MODE_SAME_CITY,
            "start_date": d(start),
            **extra,
        }
        response: cd.CreateSubscriptionResponse = self.call("CreateSubscription", **fields)
        return response.subscription

    def change(self, kind: int, index: int, **fields: Any) -> cd.ChangeDeliveriesResponse:
        response: cd.ChangeDeliveriesResponse = self.call(
            "ChangeDeliveries", subscription_id="o1", kind=kind, index=index, **fields
        )
        return response


def open_days(subscription: cd.Subscription) -> list[date]:
    return [
        day_of(x.date)
        for x in subscription.deliveries
        if x.state in (cd.DELIVERY_STATE_SCHEDULED, cd.DELIVERY_STATE_POSTPONED)
    ]


@pytest.fixture
def shop(clocked: Stack, uid: str) -> Shop:
    return Shop(clocked, uid)


def test_a_subscription_fixes_its_calendar_with_deadlines(shop: Shop) -> None:
    shop.plan()
    # Starting on Tuesday: no delivery is due yet, so the background worker cannot change the calendar between
    # the two reads below (Monday's would be due at once: its preparation day has begun).
    sub = shop.subscribe(start=date(2026, 3, 3))
    assert open_days(sub) == [date(2026, 3, d) for d in (3, 4, 5, 6, 9)]
    assert sub.remaining == 5
    # Tuesday's delivery is prepared on Monday: changes until Monday 18:00 Shanghai.
    assert sub.deliveries[0].change_deadline.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 2, 10, tzinfo=UTC)
    assert shop.call("GetSubscription", subscription_id="o1").subscription == sub


def test_start_before_the_first_possible_day_is_refused_with_the_earliest_day(shop: Shop, clock: FakeClock) -> None:
    shop.plan()
    clock.now = datetime(2026, 3, 1, 10, 1, tzinfo=UTC)  # 18:01 Shanghai: past the cut-off
    with pytest.raises(grpc.RpcError) as caught:
        shop.subscribe(start=date(2026, 3, 2))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "2026-03-03 at the earliest" in details(caught.value)


def test_buyer_changes_through_the_api(shop: Shop, clock: FakeClock) -> None:
    shop.plan()
    shop.subscribe()
    skipped = shop.change(cd.CHANGE_KIND_SKIP, 1).subscription
    assert open_days(skipped) == [date(2026, 3, d) for d in (2, 4, 5, 6, 9)]
    dropped = shop.change(cd.CHANGE_KIND_DROP, 2)
    assert (dropped.refund.amount_minor, dropped.subscription.remaining) == (1_500, 4)
    moved = shop.change(cd.CHANGE_KIND_CHANGE_DATE, 3, new_date=d(date(2026, 3, 12))).subscription
    assert date(2026, 3, 12) in open_days(moved)
    details_changed = shop.change(cd.CHANGE_KIND_UPDATE_DETAILS, 4, quantity=3).subscription
    assert [x.quantity for x in details_changed.deliveries if x.index >= 4] == [3, 3]
    clock.now = datetime(2026, 3, 1, 10, tzinfo=UTC)  # Sunday 18:00 Shanghai: Monday's deadline
    with pytest.raises(grpc.RpcError) as caught:
        shop.change(cd.CHANGE_KIND_SKIP, 0)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "2026-03-01T10:00:00+00:00" in details(caught.value)


def test_changing_the_cadence_keeps_overrides_and_sticks_for_later_changes(shop: Shop) -> None:
    shop.plan()
    shop.subscribe()
    shop.change(cd.CHANGE_KIND_UPDATE_DETAILS, 3, address="新地址")
    mondays = cd.ScheduleRule(cadence=cd.CADENCE_WEEKLY, weekdays=[cd.WEEKDAY_MONDAY])
    changed = shop.change(cd.CHANGE_KIND_CHANGE_CADENCE, 2, new_rule=mondays).subscription
    assert open_days(changed) == [
        date(2026, 3, 2),
        date(2026, 3, 3),
        date(2026, 3, 9),
        date(2026, 3, 16),
        date(2026, 3, 23),
    ]
    skipped = shop.change(cd.CHANGE_KIND_SKIP, 2).subscription  # the replacement follows the new cadence
    assert open_days(skipped)[-1] == date(2026, 3, 30)
    with pytest.raises(grpc.RpcError) as caught:
        shop.change(cd.CHANGE_KIND_CHANGE_CADENCE, 3, new_rule=cd.ScheduleRule(cadence=cd.CADENCE_WEEKLY))
    assert "new_rule.weekdays" in details(caught.value)


def test_pause_creates_nothing_and_resume_never_delivers_late(shop: Shop, clock: FakeClock) -> None:
    shop.plan()
    shop.subscribe()
    shop.call("PauseSubscription", subscription_id="o1")
    clock.now = datetime(2026, 3, 4, 2, tzinfo=UTC)  # Wednesday 10:00
    workers.create_due_deliveries(shop.stack.services["cycle_delivery"].context)
    paused = shop.call("GetSubscription", subscription_id="o1").subscription
    assert {x.state for x in paused.deliveries} == {cd.DELIVERY_STATE_PAUSED}  # none will be created while paused
    calendar = shop.call("GetDeliveryCalendar", from_date=d(date(2026, 3, 1)), to_date=d(date(2026, 3, 31))).days
    assert (sum(x.planned for x in calendar), sum(x.units for x in calendar)) == (0, 0)
    assert sum(x.paused for x in calendar) == len(paused.deliveries)
    resumed = shop.call("ResumeSubscription", subscription_id="o1").subscription
    assert cd.DELIVERY_STATE_PAUSED not in {x.state for x in resumed.deliveries}
    assert open_days(resumed) == [date(2026, 3, d) for d in (5, 6, 9, 10, 11)]
    assert resumed.state == cd.SUBSCRIPTION_STATE_ACTIVE


def test_cancel_reports_refund_and_what_still_goes_out(shop: Shop, clock: FakeClock) -> None:
    shop.plan()
    shop.subscribe()
    clock.now = datetime(2026, 3, 2, 11, tzinfo=UTC)  # Monday 19:00: Tuesday's delivery is past its cut-off
    cancelled = shop.call("CancelSubscription", subscription_id="o1")
    assert (cancelled.cancelled_deliveries, cancelled.refund.amount_minor, cancelled.still_going_out) == (3, 4_500, 2)
    with pytest.raises(grpc.RpcError) as caught:
        shop.change(cd.CHANGE_KIND_SKIP, 4)
    assert "cancelled" in details(caught.value)


def test_due_deliveries_become_orders_in_metrics_and_points_exactly_once(shop: Shop, clock: FakeClock) -> None:
    shop.plan()
    shop.subscribe(customer="milk-lover")
    ctx = shop.stack.services["cycle_delivery"].context
    clock.now = datetime(2026, 3, 2, 16, 1, tzinfo=UTC)  # Tuesday 00:01 Shanghai: Wed's preparation day began
    workers.create_due_deliveries(ctx)  # Mon (late, catching up), Tue and Wed
    workers.create_due_deliveries(ctx)  # again: nothing new
    sub = shop.call("GetSubscription", subscription_id="o1").subscription
    created = [x for x in sub.deliveries if x.state == cd.DELIVERY_STATE_CREATED]
    assert [x.delivery_order_id for x in created] == ["o1-d0", "o1-d1", "o1-d2"]
    relay = shop.stack.services["cycle_delivery"].relay
    for _ in range(10):
        if relay.relay_once() == 0:
            break
    relay.relay_once()  # a second pass finds nothing new; a resend would be absorbed anyway
    metrics = metrics_pb2_grpc.MetricsServiceStub(shop.stack.channel("metrics"))
    summary = metrics.GetCustomerSummary(
        metrics_pb2.GetCustomerSummaryRequest(shop_id=shop.id, customer_id="milk-lover"), metadata=A
    ).summary
    assert summary.order_count == 3
    points = points_pb2_grpc.PointsServiceStub(shop.stack.channel("points"))
    account = points.GetAccount(points_pb2.GetAccountRequest(shop_id=shop.id, customer_id="milk-lover"), metadata=A)
    assert account.account.points_balance == 3 * 15
    shipped = shop.call("MarkDelivery", subscription_id="o1", index=0, state=cd.DELIVERY_STATE_SHIPPED)
    assert shipped.delivery.state == cd.DELIVERY_STATE_SHIPPED
    with pytest.raises(grpc.RpcError) as caught:
        shop.call("MarkDelivery", subscription_id="o1", index=4, state=cd.DELIVERY_STATE_SHIPPED)
    assert "cannot become shipped" in details(caught.value)


def test_subscriptions_list_by_customer_and_by_due_date(shop: Shop) -> None:
    shop.plan()
    for i in range(3):
        shop.subscribe(order_id=f"o{i}", customer="c1" if i < 2 else "c2", start=date(2026, 3, 2 + i))
    by_customer = shop.call("ListSubscriptions", customer_id="c1", page_size=1)
    rest = shop.call("ListSubscriptions", customer_id="c1", page_token=by_customer.next_page_token)
    assert [s.subscription_id for s in [*by_customer.subscriptions, *rest.subscriptions]] == ["o0", "o1"]
    due = shop.call("ListSubscriptions", due_date=d(date(2026, 3, 2)))
    assert [s.subscription_id for s in due.subscriptions] == ["o0"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"rule": cd.ScheduleRule(cadence=cd.CADENCE_WEEKLY)}, "plan.rule.weekdays"),
        ({"rule": cd.ScheduleRule(cadence=cd.CADENCE_MONTHLY, month_days=[32])}, "plan.rule.month_days"),
        ({"delivery_count": 0}, "plan.delivery_count"),
        ({"delivery_count": 10**6}, "plan.delivery_count"),
        ({"cutoff_minute": 1440}, "plan.cutoff_minute"),
        ({"time_zone": "Mars/Base"}, "plan.time_zone"),
    ],
)
def test_bad_plans_are_invalid_argument(shop: Shop, overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        shop.plan(**overrides)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details(caught.value)


def test_unknown_plan_and_bad_subscription_requests(shop: Shop) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        shop.subscribe()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    shop.plan()
    refusals: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
        ({"quantity": 0}, grpc.StatusCode.INVALID_ARGUMENT, "quantity"),
        ({"address": " "}, grpc.StatusCode.INVALID_ARGUMENT, "address"),
        ({"delivery_mode": cd.DELIVERY_MODE_PICKUP}, grpc.StatusCode.FAILED_PRECONDITION, "delivery mode"),
    ]
    for extra, code, text in refusals:
        with pytest.raises(grpc.RpcError) as caught:
            shop.subscribe(**extra)
        assert (caught.value.code(), text in details(caught.value)) == (code, True), details(caught.value)
    shop.subscribe()
    with pytest.raises(grpc.RpcError) as caught:
        shop.subscribe()
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as caught:
        shop.change(cd.CHANGE_KIND_SKIP, 99)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_addresses_never_reach_the_logs(shop: Shop, capsys: pytest.CaptureFixture[str]) -> None:
    shop.plan()
    shop.subscribe(address="北京市朝阳区秘密路 99 号")
    shop.change(cd.CHANGE_KIND_UPDATE_DETAILS, 1, address="北京市海淀区隐私街 7 号")
    captured = capsys.readouterr()
    assert "秘密路" not in captured.out + captured.err
    assert "隐私街" not in captured.out + captured.err


def test_delivery_calendar_counts_each_day_by_state_with_units_to_send(shop: Shop, clock: FakeClock) -> None:
    shop.plan()
    shop.subscribe()  # c1: Mon 2 .. Fri 6 March, one bottle each
    shop.subscribe(order_id="o2", customer="c2", quantity=2)
    shop.change(cd.CHANGE_KIND_SKIP, 1)  # o1's Tuesday skipped, a replacement on Mon 9
    shop.change(cd.CHANGE_KIND_DROP, 2)  # o1's Wednesday dropped
    clock.now = datetime(2026, 3, 2, 16, 1, tzinfo=UTC)
    workers.create_due_deliveries(shop.stack.services["cycle_delivery"].context)  # Mon, Tue, Wed
    shop.call("MarkDelivery", subscription_id="o1", index=0, state=cd.DELIVERY_STATE_SHIPPED)
    calendar = shop.call("GetDeliveryCalendar", from_date=d(date(2026, 3, 1)), to_date=d(date(2026, 3, 10)))
    rows = {
        day_of(x.day).day: (x.planned, x.created, x.shipped, x.delivered, x.skipped, x.cancelled, x.units)
        for x in calendar.days
    }
    assert list(rows) == list(range(1, 11))
    assert rows == {
        1: (0, 0, 0, 0, 0, 0, 0),
        2: (0, 1, 1, 0, 0, 0, 3),
        3: (0, 1, 0, 0, 1, 0, 2),
        4: (0, 1, 0, 0, 0, 1, 2),
        5: (2, 0, 0, 0, 0, 0, 3),
        6: (2, 0, 0, 0, 0, 0, 3),
        7: (0, 0, 0, 0, 0, 0, 0),
        8: (0, 0, 0, 0, 0, 0, 0),
        9: (1, 0, 0, 0, 0, 0, 1),
        10: (0, 0, 0, 0, 0, 0, 0),
    }


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"to_date": d(date(2026, 3, 1))}, "from_date"),
        ({"from_date": d(date(2026, 3, 2)), "to_date": d(date(2026, 3, 1))}, "must not be before from_date"),
        ({"from_date": d(date(2026, 1, 1)), "to_date": d(date(2027, 1, 2))}, "at most 365 days"),
    ],
)
def test_delivery_calendar_refuses_a_bad_range(shop: Shop, fields: dict[str, Any], text: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        shop.call("GetDeliveryCalendar", **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert text in details(caught.value)


def test_the_due_backlog_counts_due_deliveries_not_yet_created(shop: Shop, clock: FakeClock) -> None:
    """What the delivery gauges export (loyalty_backlog_items{kind="due_deliveries"}, the worker's lag)."""
    shop.plan()
    shop.subscribe(order_id="o1", customer="c-backlog")
    ctx = shop.stack.services["cycle_delivery"].context
    clock.now = datetime(2026, 3, 2, 16, 1, tzinfo=UTC)  # Mon, Tue and Wed are due (as in the test above)
    waiting, earliest = ctx.db.run(lambda s: store.due_backlog(s, now=clock()))
    assert waiting >= 3  # this shop's three; other tests' shops may have left some due in the same database
    assert earliest is not None
    assert earliest <= clock()
    workers.create_due_deliveries(ctx)
    assert ctx.db.run(lambda s: store.due_backlog(s, now=clock())) == (0, None)


def test_the_worker_claims_shop_by_shop_longest_waiting_first_within_its_bound(
    clocked: Stack, uid: str, clock: FakeClock
) -> None:
    """Citus refuses a claim over several shards, so the worker claims per shop (deploy/citus/README.md)."""
    shops = [Shop(clocked, f"{uid}-{n}") for n in range(3)]
    for shop in shops:
        shop.plan()
        shop.subscribe(order_id="o1", customer="c1")
    ctx = clocked.services["cycle_delivery"].context
    clock.now = datetime(2026, 3, 2, 16, 1, tzinfo=UTC)  # Mon, Tue and Wed are due in each shop

    def created_per_shop() -> dict[str, int]:
        rows = ctx.db.run(
            lambda s: s.execute(
                select(DeliveryRecord.shop_id, func.count())
                .where(DeliveryRecord.state == int(DeliveryState.CREATED))
                .group_by(DeliveryRecord.shop_id)
            ).all()
        )
        return {shop_id: int(count) for shop_id, count in rows}

    due_shops = ctx.db.run(lambda s: store.shops_with_due_deliveries(s, now=clock(), limit=1000))
    assert {s.id for s in shops} <= set(due_shops)
    before = created_per_shop()
    # One delivery per transaction, at most two transactions: only the longest-waiting shop is served.
    created = workers.create_due_in_batches(ctx.db, now=clock(), batch=1, max_batches=2)
    after = created_per_shop()
    grown = {shop_id: n - before.get(shop_id, 0) for shop_id, n in after.items() if n != before.get(shop_id, 0)}
    assert created in (1, 2)
    assert grown == {due_shops[0]: created}
    workers.create_due_deliveries(ctx)  # every shop's rest
    assert ctx.db.run(lambda s: store.due_backlog(s, now=clock())) == (0, None)
    done = created_per_shop()
    assert [done[s.id] for s in shops] == [3, 3, 3]  # Mon, Tue and Wed, once each
