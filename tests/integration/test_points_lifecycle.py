"""Points through gRPC with a hand-moved clock: earning, pending windows, refunds, spending, mall, tiers, expiry.

Every test uses its own shop (the admin token reaches all shops) so it can set
its own program; the ledger is reconciled at the end of each.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from sqlalchemy import text as sql

from services.common.server import ServiceContext
from services.points import workers
from services.points.reconcile import reconcile_shops
from tests.support import FakeClock, Stack, bearer, database_template, details, start_stack

A = bearer("admin")
START = datetime(2026, 3, 10, 4, tzinfo=UTC)  # 12:00 in Shanghai


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(scope="module")
def clocked(backend: str, clock: FakeClock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with database_template(backend, tmp_path_factory.mktemp("points")) as url:
        running = start_stack(url, clock=clock)
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(autouse=True)
def reset_clock(clock: FakeClock) -> None:
    clock.now = START


class Shop:
    """One test shop: its id, a stub and small helpers for the calls tests make."""

    def __init__(self, stack: Stack, uid: str) -> None:
        self.id = f"shop-{uid}"
        self.stack = stack
        self.stub = points_pb2_grpc.PointsServiceStub(stack.channel("points"))
        self.counter = 0

    def rid(self) -> str:
        self.counter += 1
        return f"r{self.counter}"

    def call(self, method: str, **fields: Any) -> Any:
        request_type = getattr(points_pb2, f"{method}Request")
        return getattr(self.stub, method)(request_type(shop_id=self.id, **fields), metadata=A)

    def set_program(self, **fields: Any) -> points_pb2.Program:
        program = points_pb2.Program(**fields)
        response: points_pb2.SetProgramResponse = self.call("SetProgram", request_id=self.rid(), program=program)
        return response.program

    def earn(self, order: common_pb2.Order, **fields: Any) -> points_pb2.EarnForOrderResponse:
        response: points_pb2.EarnForOrderResponse = self.call(
            "EarnForOrder", request_id=self.rid(), order=order, **fields
        )
        return response

    def refund(self, order_id: str, amount: int) -> points_pb2.RefundOrderResponse:
        response: points_pb2.RefundOrderResponse = self.call(
            "RefundOrder",
            request_id=self.rid(),
            order_id=order_id,
            amount=common_pb2.Money(amount_minor=amount, currency="CNY"),
        )
        return response

    def account(self, customer: str) -> points_pb2.Account:
        response: points_pb2.GetAccountResponse = self.call("GetAccount", customer_id=customer)
        return response.account

    def adjust(self, customer: str, delta: int) -> points_pb2.AdjustPointsResponse:
        response: points_pb2.AdjustPointsResponse = self.call(
            "AdjustPoints", request_id=self.rid(), customer_id=customer, asset=points_pb2.ASSET_POINTS, delta=delta
        )
        return response

    def spend(self, customer: str, order_id: str, order_amount: int, points: int) -> points_pb2.SpendPointsResponse:
        response: points_pb2.SpendPointsResponse = self.call(
            "SpendPoints",
            request_id=self.rid(),
            customer_id=customer,
            order_id=order_id,
            order_amount=common_pb2.Money(amount_minor=order_amount, currency="CNY"),
            points=points,
        )
        return response

    def assert_balanced(self) -> None:
        result: points_pb2.ReconcileLedgerResponse = self.call("ReconcileLedger")
        assert result.balanced, list(result.mismatches)


def order(
    order_id: str, customer: str, amount: int, *, at: datetime = START, items: list[tuple[str, int]] | None = None
) -> common_pb2.Order:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return common_pb2.Order(
        order_id=order_id,
        customer_id=customer,
        paid_at=stamp,
        paid=common_pb2.Money(amount_minor=amount, currency="CNY"),
        items=[
            common_pb2.OrderItem(sku=f"sku-{i}", category=c, quantity=1, paid=common_pb2.Money(amount_minor=a))
            for i, (c, a) in enumerate(items or [])
        ],
    )


def ratio(numerator: int, denominator: int = 1) -> points_pb2.Ratio:
    return points_pb2.Ratio(numerator=numerator, denominator=denominator)


def context_of(stack: Stack) -> ServiceContext:
    return stack.services["points"].context


@pytest.fixture
def shop(clocked: Stack, uid: str) -> Shop:
    return Shop(clocked, uid)


def test_order_without_return_window_earns_at_once_with_a_breakdown_that_adds_up(shop: Shop) -> None:
    shop.set_program(
        earn=points_pb2.EarnRules(category_multipliers={"milk": ratio(2)}, first_order_bonus=50),
    )
    response = shop.earn(order("o1", "c1", 12_345, items=[("milk", 5_000)]))
    # base 123.45 + milk extra 50 + first order 50 = 223.45 -> floor 223
    assert response.earning.points == 223
    assert sum(line.points for line in response.earning.breakdown) == 223
    assert {line.rule for line in response.earning.breakdown} == {"base", "category:milk", "first_order"}
    assert response.earning.state == points_pb2.EARNING_STATE_ACTIVE
    assert (response.account.points_balance, response.account.growth_balance) == (223, 123)
    second = shop.earn(order("o2", "c1", 10_000))
    assert second.earning.points == 100  # no first-order bonus twice
    shop.assert_balanced()


def test_pending_points_activate_when_the_window_closes_or_on_confirmation(shop: Shop, clock: FakeClock) -> None:
    shop.set_program(return_window_days=7)
    first = shop.earn(order("o1", "c1", 10_000))
    shop.earn(order("o2", "c1", 5_000))
    assert first.earning.state == points_pb2.EARNING_STATE_PENDING
    assert (first.account.points_balance, shop.account("c1").pending_points) == (0, 150)
    confirmed = shop.call("ConfirmOrder", request_id=shop.rid(), order_id="o2")
    assert confirmed.earning.state == points_pb2.EARNING_STATE_ACTIVE
    assert (confirmed.account.points_balance, confirmed.account.pending_points) == (50, 100)
    clock.advance(days=6, hours=23)
    assert workers.activate_due_earnings(context_of(shop.stack)) == 0
    clock.advance(hours=1)
    workers.activate_due_earnings(context_of(shop.stack))
    account = shop.account("c1")
    assert (account.points_balance, account.pending_points) == (150, 0)
    assert workers.activate_due_earnings(context_of(shop.stack)) == 0  # nothing twice
    shop.assert_balanced()


def test_same_order_under_new_request_id_returns_first_earning_and_changed_order_is_refused(shop: Shop) -> None:
    first = shop.earn(order("o1", "c1", 10_000))
    again = shop.earn(order("o1", "c1", 10_000))
    assert again.earning == first.earning
    assert shop.account("c1").points_balance == 100
    with pytest.raises(grpc.RpcError) as caught:
        shop.earn(order("o1", "c1", 20_000))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "refunds" in details(caught.value)


def test_partial_refunds_claw_back_exactly_what_one_refund_of_their_sum_would(shop: Shop) -> None:
    shop.earn(order("split", "c1", 10_001))
    shop.earn(order("whole", "c2", 10_001))
    clawed = [shop.refund("split", 3_333).points_clawed_back, shop.refund("split", 3_334).points_clawed_back]
    single = shop.refund("whole", 6_667).points_clawed_back
    assert sum(clawed) == single == 67  # 100 earned; floor(100 * 3334 / 10001) = 33 kept
    assert shop.account("c1").points_balance == shop.account("c2").points_balance == 33
    last = shop.refund("split", 3_334)
    assert last.earning.state == points_pb2.EARNING_STATE_REFUNDED
    assert (last.account.points_balance, last.account.growth_balance) == (0, 0)
    with pytest.raises(grpc.RpcError) as caught:
        shop.refund("split", 1)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "exceeds" in details(caught.value)
    shop.assert_balanced()


def test_refund_of_a_pending_order_shrinks_it_before_activation(shop: Shop, clock: FakeClock) -> None:
    shop.set_program(return_window_days=3)
    shop.earn(order("o1", "c1", 10_000))
    refund = shop.refund("o1", 4_000)
    assert (refund.points_clawed_back, refund.account.points_balance, refund.account.pending_points) == (40, 0, 60)
    clock.advance(days=3)
    workers.activate_due_earnings(context_of(shop.stack))
    assert shop.account("c1").points_balance == 60
    shop.assert_balanced()


def test_clawback_of_spent_points_leaves_a_debt_that_the_next_earning_repays(shop: Shop) -> None:
    shop.set_program(spend=points_pb2.SpendRules(points_per_unit=100))
    shop.earn(order("o1", "c1", 10_000))
    shop.spend("c1", "o-next", 50_000, 100)
    refund = shop.refund("o1", 10_000)
    assert (refund.points_clawed_back, refund.account.points_balance) == (100, -100)
    with pytest.raises(grpc.RpcError) as caught:
        shop.spend("c1", "o-x", 50_000, 1)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert shop.earn(order("o2", "c1", 25_000)).account.points_balance == 150
    shop.assert_balanced()


def test_points_pay_up_to_the_shops_share_and_come_back_when_the_order_is_refunded(shop: Shop) -> None:
    shop.set_program(spend=points_pb2.SpendRules(points_per_unit=100, max_share_bp=5_000))
    shop.adjust("c1", 10_000)
    with pytest.raises(grpc.RpcError) as caught:
        shop.spend("c1", "pay-1", 10_000, 5_001)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "at most 5000 points" in details(caught.value)
    paid = shop.spend("c1", "pay-1", 10_000, 5_000)
    assert (paid.discount.amount_minor, paid.account.points_balance) == (5_000, 5_000)
    shop.earn(order("pay-1", "c1", 5_000))  # the order, paid with the rest in cash
    refund = shop.refund("pay-1", 2_500)
    assert (refund.points_restored, refund.points_clawed_back) == (2_500, 25)
    assert refund.account.points_balance == 5_000 + 50 - 25 + 2_500
    shop.assert_balanced()


def test_spending_is_refused_when_the_shop_does_not_accept_points_or_the_amount_is_not_whole(shop: Shop) -> None:
    shop.adjust("c1", 1_000)
    with pytest.raises(grpc.RpcError) as caught:
        shop.spend("c1", "o1", 10_000, 100)
    assert "does not accept points" in details(caught.value)
    shop.set_program(spend=points_pb2.SpendRules(points_per_unit=300))  # 3 points = 1 fen
    with pytest.raises(grpc.RpcError) as caught:
        shop.spend("c1", "o1", 10_000, 100)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "multiple of 3" in details(caught.value)
    assert shop.spend("c1", "o1", 10_000, 99).discount.amount_minor == 33


def test_spending_takes_the_soonest_expiring_points_and_the_sweep_expires_the_rest(
    shop: Shop, clock: FakeClock
) -> None:
    shop.set_program(
        expiry=points_pb2.ExpiryPolicy(kind=points_pb2.EXPIRY_KIND_DAYS_AFTER_EARNING, n=30),
        spend=points_pb2.SpendRules(points_per_unit=1),
    )
    shop.adjust("c1", 100)  # earned 10 Mar -> expires 10 Apr 00:00 Shanghai
    clock.advance(days=10)
    shop.adjust("c1", 70)  # expires 20 Apr
    account = shop.account("c1")
    assert account.expiring_soonest.points == 100
    assert account.expiring_soonest.expires_at.ToDatetime(tzinfo=UTC) == datetime(2026, 4, 9, 16, tzinfo=UTC)
    shop.spend("c1", "o1", 1_000_000, 60)  # from the first lot
    clock.now = datetime(2026, 4, 9, 16, tzinfo=UTC)
    assert shop.account("c1").points_balance == 70  # the 40 left of the first lot are gone, swept or not
    assert workers.expire_due_lots(context_of(shop.stack)) == 40
    assert workers.expire_due_lots(context_of(shop.stack)) == 0
    entries = shop.call("ListLedgerEntries", customer_id="c1").entries
    assert [(e.kind, e.delta) for e in entries[:1]] == [("EXPIRY", -40)]
    shop.assert_balanced()


def test_refund_does_not_bring_back_spent_points_that_have_expired_since(shop: Shop, clock: FakeClock) -> None:
    shop.set_program(
        expiry=points_pb2.ExpiryPolicy(kind=points_pb2.EXPIRY_KIND_END_OF_MONTH, n=0),
        spend=points_pb2.SpendRules(points_per_unit=1),
    )
    shop.adjust("c1", 100)
    shop.spend("c1", "o1", 100_000, 100)
    shop.earn(order("o1", "c1", 900))
    clock.now = datetime(2026, 4, 2, tzinfo=UTC)
    refund = shop.refund("o1", 900)
    assert (refund.points_restored, refund.points_not_restored_expired) == (0, 100)
    shop.assert_balanced()


def test_mall_redemption_checks_window_limit_stock_and_balance(shop: Shop, clock: FakeClock) -> None:
    ends = Timestamp()
    ends.FromDatetime(START + timedelta(days=5))
    item = points_pb2.MallItem(
        item_id="mug", name="马克杯", cost_points=300, stock=3, per_customer_limit=2, ends_at=ends
    )
    shop.call("UpsertMallItem", request_id=shop.rid(), item=item)
    shop.adjust("c1", 1_000)
    shop.adjust("c2", 250)
    redeemed = shop.call("Redeem", request_id=shop.rid(), customer_id="c1", item_id="mug", quantity=2)
    assert (redeemed.item.stock, redeemed.account.points_balance) == (1, 400)
    refusals = [
        (dict(customer_id="c1", item_id="mug", quantity=1), grpc.StatusCode.FAILED_PRECONDITION, "per member"),
        (dict(customer_id="c2", item_id="mug", quantity=1), grpc.StatusCode.FAILED_PRECONDITION, "cannot cover"),
        (dict(customer_id="c1", item_id="nope", quantity=1), grpc.StatusCode.NOT_FOUND, "does not exist"),
        (dict(customer_id="c1", item_id="mug", quantity=0), grpc.StatusCode.INVALID_ARGUMENT, "quantity"),
    ]
    for fields, code, text in refusals:
        with pytest.raises(grpc.RpcError) as caught:
            shop.call("Redeem", request_id=shop.rid(), **fields)
        assert (caught.value.code(), text in details(caught.value)) == (code, True), details(caught.value)
    shop.adjust("c3", 1_000)
    with pytest.raises(grpc.RpcError) as caught:
        shop.call("Redeem", request_id=shop.rid(), customer_id="c3", item_id="mug", quantity=2)
    assert "fewer than 2 units" in details(caught.value)
    clock.advance(days=5)
    with pytest.raises(grpc.RpcError) as caught:
        shop.call("Redeem", request_id=shop.rid(), customer_id="c3", item_id="mug", quantity=1)
    assert "was on sale until" in details(caught.value)
    assert shop.account("c3").points_balance == 1_000
    shop.assert_balanced()


def test_mall_items_page_by_id(shop: Shop) -> None:
    for i in range(5):
        item = points_pb2.MallItem(item_id=f"item-{i}", name=f"Item {i}", cost_points=10, stock=1)
        shop.call("UpsertMallItem", request_id=shop.rid(), item=item)
    first = shop.call("ListMallItems", page_size=3)
    rest = shop.call("ListMallItems", page_size=3, page_token=first.next_page_token)
    assert [i.item_id for i in [*first.items, *rest.items]] == [f"item-{i}" for i in range(5)]
    assert rest.next_page_token == ""


def test_tier_upgrades_at_once_and_is_lowered_only_by_a_review_after_the_grace_period(
    shop: Shop, clock: FakeClock
) -> None:
    shop.set_program(
        tiers=points_pb2.TierRules(
            basis=points_pb2.TIER_BASIS_ROLLING_SPEND,
            rolling_window_days=30,
            downgrade_grace_days=40,
            tiers=[
                points_pb2.Tier(code="silver", name="白银", threshold=10_000),
                points_pb2.Tier(code="gold", name="黄金", threshold=50_000, earn_multiplier=ratio(3, 2)),
            ],
        )
    )
    first = shop.earn(order("o1", "c1", 20_000))
    assert (first.account.tier.code, first.account.tier.next_code, first.account.tier.to_next) == (
        "silver",
        "gold",
        30_000,
    )
    shop.earn(order("o2", "c1", 30_000))
    assert shop.account("c1").tier.code == "gold"
    boosted = shop.earn(order("o3", "c1", 10_000))
    assert [(b.rule, b.points) for b in boosted.earning.breakdown] == [("base", 100), ("tier:gold", 50)]
    ctx = context_of(shop.stack)
    clock.advance(days=35)  # spend in window is 0 now, but gold was reached 35 days ago
    workers.review_tiers(ctx, shop.id)
    assert shop.account("c1").tier.code == "gold"
    clock.advance(days=6)
    workers.review_tiers(ctx, shop.id)
    assert shop.account("c1").tier.code == ""


def test_a_bad_program_names_every_bad_field(shop: Shop) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        shop.set_program(
            time_zone="Mars/Base",
            expiry=points_pb2.ExpiryPolicy(kind=points_pb2.EXPIRY_KIND_DAYS_AFTER_EARNING),
            tiers=points_pb2.TierRules(
                tiers=[points_pb2.Tier(code="a", threshold=10), points_pb2.Tier(code="b", threshold=10)]
            ),
            earn=points_pb2.EarnRules(points_per_unit=ratio(1, 0), max_per_day=-1),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = details(caught.value)
    for path in (
        "program.time_zone",
        "program.expiry.n",
        "program.tiers.tiers[1].threshold",
        "program.earn.max_per_day",
    ):
        assert path in text, text


def test_program_reads_back_with_defaults(shop: Shop) -> None:
    program = shop.call("GetProgram").program
    assert (program.time_zone, program.expiry.kind, program.spend.max_share_bp) == (
        "Asia/Shanghai",
        points_pb2.EXPIRY_KIND_NEVER,
        10_000,
    )
    stored = shop.set_program(return_window_days=15)
    assert shop.call("GetProgram").program == stored


def test_preview_writes_nothing_and_matches_the_earning(shop: Shop) -> None:
    shop.set_program(earn=points_pb2.EarnRules(first_order_bonus=20))
    preview = shop.call("PreviewEarn", order=order("o1", "c1", 9_999)).earning
    assert shop.account("c1").points_balance == 0
    earned = shop.earn(order("o1", "c1", 9_999)).earning
    assert (preview.points, list(preview.breakdown)) == (earned.points, list(earned.breakdown))


@pytest.mark.parametrize(
    ("method", "fields", "code", "text"),
    [
        (
            "RefundOrder",
            dict(order_id="missing", amount=common_pb2.Money(amount_minor=1, currency="CNY")),
            "NOT_FOUND",
            "no earning",
        ),
        (
            "RefundOrder",
            dict(order_id="o", amount=common_pb2.Money(amount_minor=-1, currency="CNY")),
            "INVALID_ARGUMENT",
            "amount",
        ),
        (
            "RefundOrder",
            dict(order_id="o", amount=common_pb2.Money(amount_minor=1, currency="XXX")),
            "INVALID_ARGUMENT",
            "currency",
        ),
        (
            "SpendPoints",
            dict(
                customer_id="c", order_id="o", order_amount=common_pb2.Money(amount_minor=1, currency="CNY"), points=-5
            ),
            "INVALID_ARGUMENT",
            "points",
        ),
        ("ConfirmOrder", dict(order_id="bad id!"), "INVALID_ARGUMENT", "order_id"),
        (
            "EarnForOrder",
            dict(order=common_pb2.Order(order_id="o", customer_id="c"), birthday_month=13),
            "INVALID_ARGUMENT",
            "birthday_month",
        ),
        (
            "UpsertMallItem",
            dict(item=points_pb2.MallItem(item_id="x", name="x" * 300, cost_points=0)),
            "INVALID_ARGUMENT",
            "cost_points",
        ),
    ],
)
def test_bad_requests_get_a_clear_status(shop: Shop, method: str, fields: dict[str, Any], code: str, text: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        shop.call(method, request_id=shop.rid(), **fields)
    assert caught.value.code() == getattr(grpc.StatusCode, code)
    assert text in details(caught.value)


def cny(amount: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency="CNY")


def test_top_up_keeps_principal_and_bonus_apart_and_draws_by_the_shops_rule(shop: Shop) -> None:
    plans = [
        points_pb2.TopUpPlan(pay_minor=50_000, bonus_minor=5_000),
        points_pb2.TopUpPlan(pay_minor=100_000, bonus_minor=15_000),
    ]
    shop.set_program(stored_value=points_pb2.StoredValueRules(plans=plans))
    topped = shop.call("TopUp", request_id=shop.rid(), customer_id="c1", top_up_id="t1", paid=cny(80_000))
    assert (topped.principal_minor, topped.bonus_minor) == (80_000, 5_000)  # the 500 plan is the largest reached
    paid = shop.call("SpendStoredValue", request_id=shop.rid(), customer_id="c1", order_id="o1", amount=cny(17_000))
    # proportional: bonus share 5000/85000 of 17000 = 1000
    assert (paid.principal_minor, paid.bonus_minor) == (16_000, 1_000)
    assert (paid.account.stored_principal, paid.account.stored_bonus) == (64_000, 4_000)
    with pytest.raises(grpc.RpcError) as caught:
        shop.call("SpendStoredValue", request_id=shop.rid(), customer_id="c1", order_id="o2", amount=cny(68_001))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    shop.set_program(stored_value=points_pb2.StoredValueRules(plans=plans, draw_rule=points_pb2.DRAW_RULE_BONUS_FIRST))
    paid = shop.call("SpendStoredValue", request_id=shop.rid(), customer_id="c1", order_id="o3", amount=cny(5_000))
    assert (paid.principal_minor, paid.bonus_minor) == (1_000, 4_000)
    shop.assert_balanced()


def test_refunding_a_top_up_returns_unspent_principal_less_the_bonus_it_already_spent(shop: Shop) -> None:
    shop.set_program(
        stored_value=points_pb2.StoredValueRules(
            plans=[points_pb2.TopUpPlan(pay_minor=50_000, bonus_minor=5_000)],
            draw_rule=points_pb2.DRAW_RULE_BONUS_FIRST,
        )
    )
    shop.call("TopUp", request_id=shop.rid(), customer_id="c1", top_up_id="t1", paid=cny(50_000))
    shop.call("TopUp", request_id=shop.rid(), customer_id="c1", top_up_id="t2", paid=cny(50_000))
    shop.call("SpendStoredValue", request_id=shop.rid(), customer_id="c1", order_id="o1", amount=cny(3_000))
    refund = shop.call("RefundTopUp", request_id=shop.rid(), top_up_id="t1")
    # t1's bonus paid the 3000: its 50000 principal is all there, but 3000 of bonus was used
    assert (refund.refund.amount_minor, refund.principal_removed_minor) == (47_000, 50_000)
    assert (refund.bonus_removed_minor, refund.bonus_spent_deducted_minor) == (2_000, 3_000)
    assert (refund.account.stored_principal, refund.account.stored_bonus) == (50_000, 5_000)  # t2 untouched
    with pytest.raises(grpc.RpcError) as caught:
        shop.call("RefundTopUp", request_id=shop.rid(), top_up_id="t1")
    assert "already refunded" in details(caught.value)
    shop.assert_balanced()


def test_stored_value_spent_on_a_refunded_order_comes_back(shop: Shop) -> None:
    shop.call("TopUp", request_id=shop.rid(), customer_id="c1", top_up_id="t1", paid=cny(10_000))
    shop.call("SpendStoredValue", request_id=shop.rid(), customer_id="c1", order_id="o1", amount=cny(6_000))
    shop.earn(order("o1", "c1", 4_000))  # the cash part of the order
    refund = shop.refund("o1", 4_000)
    assert refund.account.stored_principal == 10_000
    shop.assert_balanced()


def test_rebate_credit_arrives_after_the_window_expires_and_is_spendable(shop: Shop, clock: FakeClock) -> None:
    shop.set_program(return_window_days=7, rebate=points_pb2.RebateRules(rate_bp=200, valid_days=30))
    shop.earn(order("o1", "c1", 50_000))
    assert shop.account("c1").rebate_balance == 0
    clock.advance(days=7)
    workers.activate_due_earnings(context_of(shop.stack))
    assert shop.account("c1").rebate_balance == 1_000
    spent = shop.call("SpendRebate", request_id=shop.rid(), customer_id="c1", order_id="o2", amount=cny(400))
    assert spent.account.rebate_balance == 600
    refund = shop.refund("o1", 25_000)  # half refunded: half the rebate goes
    assert refund.account.rebate_balance == 100
    clock.advance(days=31)
    assert shop.account("c1").rebate_balance == 0
    assert workers.expire_due_lots(context_of(shop.stack)) == 100
    shop.assert_balanced()


def test_event_rewards_pay_once_per_event(shop: Shop, clock: FakeClock) -> None:
    shop.set_program(
        rewards=points_pb2.RewardRules(
            coupon_templates=[
                points_pb2.CouponTemplate(
                    template_id="10off", name="满100减10", value_minor=1_000, min_order_minor=10_000, valid_days=30
                )
            ],
            review_with_photos=points_pb2.Reward(coupon_template_id="10off"),
            sign_in=points_pb2.Reward(points=5),
            referrer=points_pb2.Reward(points=100),
            referee=points_pb2.Reward(points=50, coupon_template_id="10off"),
            birthday=points_pb2.Reward(points=200),
        )
    )
    shop.earn(order("o1", "c1", 10_000))

    def claim(event: int, **fields: Any) -> points_pb2.ClaimRewardResponse:
        response: points_pb2.ClaimRewardResponse = shop.call(
            "ClaimReward", request_id=shop.rid(), customer_id="c1", event=event, **fields
        )
        return response

    review = claim(points_pb2.REWARD_EVENT_REVIEW_WITH_PHOTOS, order_id="o1")
    assert [c.template_id for c in review.coupons] == ["10off"]
    referral = claim(points_pb2.REWARD_EVENT_REFERRAL, referee_id="c2")
    assert (referral.points, referral.referee_points) == (100, 50)
    assert claim(points_pb2.REWARD_EVENT_SIGN_IN).points == 5
    assert claim(points_pb2.REWARD_EVENT_BIRTHDAY, birthday_month=3).points == 200
    repeats: list[tuple[int, dict[str, Any]]] = [
        (points_pb2.REWARD_EVENT_REVIEW_WITH_PHOTOS, {"order_id": "o1"}),
        (points_pb2.REWARD_EVENT_SIGN_IN, {}),
        (points_pb2.REWARD_EVENT_BIRTHDAY, {"birthday_month": 3}),
    ]
    for event, fields in repeats:
        with pytest.raises(grpc.RpcError) as caught:
            claim(event, **fields)
        assert "already claimed" in details(caught.value)
    with pytest.raises(grpc.RpcError) as caught:  # c2 was referred already, by anyone
        shop.call(
            "ClaimReward",
            request_id=shop.rid(),
            customer_id="c3",
            event=points_pb2.REWARD_EVENT_REFERRAL,
            referee_id="c2",
        )
    assert "already claimed" in details(caught.value)
    clock.advance(days=1)
    assert claim(points_pb2.REWARD_EVENT_SIGN_IN).points == 5  # a new day
    with pytest.raises(grpc.RpcError) as caught:
        claim(points_pb2.REWARD_EVENT_BIRTHDAY, birthday_month=7)
    assert "birthday month" in details(caught.value)
    with pytest.raises(grpc.RpcError) as caught:
        claim(points_pb2.REWARD_EVENT_REVIEW_WITH_PHOTOS, order_id="not-mine")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert shop.account("c1").points_balance == 100 + 100 + 5 + 200 + 5
    assert shop.account("c2").points_balance == 50
    shop.assert_balanced()


def test_a_coupon_is_used_once_and_not_after_it_expires(shop: Shop, clock: FakeClock) -> None:
    template = points_pb2.CouponTemplate(
        template_id="5off", name="5元券", value_minor=500, min_order_minor=3_000, valid_days=10
    )
    shop.set_program(rewards=points_pb2.RewardRules(coupon_templates=[template]))
    first = shop.call(
        "IssueCoupon", request_id=shop.rid(), customer_id="c1", template_id="5off", source="campaign:spring"
    ).coupon
    second = shop.call("IssueCoupon", request_id=shop.rid(), customer_id="c1", template_id="5off").coupon

    def use(coupon: points_pb2.Coupon, amount: int, customer: str = "c1") -> points_pb2.RedeemCouponResponse:
        response: points_pb2.RedeemCouponResponse = shop.call(
            "RedeemCoupon",
            request_id=shop.rid(),
            customer_id=customer,
            coupon_id=coupon.coupon_id,
            order_id="o1",
            order_amount=cny(amount),
        )
        return response

    refusals = [((first, 2_999), "at least 3000"), ((first, 5_000, "c2"), "holds no coupon")]
    for args, text in refusals:
        with pytest.raises(grpc.RpcError) as caught:
            use(*args)  # type: ignore[arg-type]
        assert text in details(caught.value)
    assert use(first, 5_000).coupon.state == points_pb2.COUPON_STATE_REDEEMED
    with pytest.raises(grpc.RpcError) as caught:
        use(first, 5_000)
    assert "already used" in details(caught.value)
    clock.advance(days=10)
    with pytest.raises(grpc.RpcError) as caught:
        use(second, 5_000)
    assert "expired" in details(caught.value)
    listed = shop.call("ListCoupons", customer_id="c1").coupons
    assert [(c.coupon_id, c.state) for c in listed] == [
        (second.coupon_id, points_pb2.COUPON_STATE_EXPIRED),
        (first.coupon_id, points_pb2.COUPON_STATE_REDEEMED),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        shop.call("IssueCoupon", request_id=shop.rid(), customer_id="c1", template_id="nope")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_erasing_a_member_leaves_no_trace_of_them_and_every_sum_true(shop: Shop) -> None:
    shop.set_program(
        spend=points_pb2.SpendRules(points_per_unit=100),
        rewards=points_pb2.RewardRules(sign_in=points_pb2.Reward(points=3)),
    )
    shop.earn(order("o1", "erase-me", 20_000))
    shop.call(
        "AdjustPoints",
        request_id=shop.rid(),
        customer_id="erase-me",
        asset=points_pb2.ASSET_POINTS,
        delta=50,
        reason="goodwill for 13800138000",
    )
    shop.spend("erase-me", "o2", 10_000, 100)
    shop.call("ClaimReward", request_id=shop.rid(), customer_id="erase-me", event=points_pb2.REWARD_EVENT_SIGN_IN)
    before = shop.account("erase-me")
    erased = shop.call("EraseCustomer", request_id=shop.rid(), customer_id="erase-me")
    assert erased.anonymous_id.startswith("erased-")
    assert erased.rows_anonymised > 0
    stand_in = shop.account(erased.anonymous_id)
    assert (stand_in.points_balance, stand_in.growth_balance) == (before.points_balance, before.growth_balance)
    assert shop.account("erase-me").points_balance == 0
    db = shop.stack.services["points"].db
    with db.engine.connect() as conn:
        for table in ("entries", "balances", "lots", "order_earnings", "order_spends", "reward_claims", "coupons"):
            column = "holder" if table in ("entries", "balances") else "customer_id"
            count = conn.execute(sql(f"SELECT count(*) FROM {table} WHERE {column} = 'erase-me'")).scalar()
            assert count == 0, table
        assert conn.execute(sql("SELECT count(*) FROM reward_claims WHERE claim_key LIKE '%erase-me%'")).scalar() == 0
        assert conn.execute(sql("SELECT count(*) FROM entries WHERE reason LIKE '%13800138000%'")).scalar() == 0
    shop.earn(order("o3", "erase-me", 10_000))  # the member comes back and is erased again
    again = shop.call("EraseCustomer", request_id=shop.rid(), customer_id="erase-me")
    assert again.anonymous_id == erased.anonymous_id
    assert shop.account(erased.anonymous_id).points_balance == before.points_balance + 100
    shop.assert_balanced()


def test_the_reconcile_command_finds_a_tampered_balance(shop: Shop) -> None:
    shop.adjust("c1", 500)
    db = shop.stack.services["points"].db
    assert reconcile_shops(db, [shop.id])[shop.id].mismatches == []
    with db.engine.begin() as conn:
        conn.execute(
            sql("UPDATE balances SET balance = balance + 1 WHERE shop_id = :s AND holder = 'c1'"), {"s": shop.id}
        )
    found = reconcile_shops(db, [shop.id])[shop.id].mismatches
    assert {(m.check, m.holder) for m in found} == {("balance_vs_entries", "c1"), ("lots_vs_balance", "c1")}
    assert not shop.call("ReconcileLedger").balanced


def test_member_standings_stream_in_customer_order_and_refuse_a_bad_cursor(shop: Shop) -> None:
    for customer in ("m3", "m1", "m2"):
        shop.adjust(customer, 10)
    rows = list(shop.call("StreamMemberStandings"))
    assert [(r.customer_id, r.points_balance) for r in rows] == [("m1", 10), ("m2", 10), ("m3", 10)]
    assert [r.customer_id for r in shop.call("StreamMemberStandings", after_customer_id="m1")] == ["m2", "m3"]
    with pytest.raises(grpc.RpcError) as caught:
        list(shop.call("StreamMemberStandings", after_customer_id="\x00"))  # found by the fuzzer: was INTERNAL
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def month(year: int, number: int) -> common_pb2.Date:
    return common_pb2.Date(year=year, month=number, day=1)


def test_points_summary_sorts_every_movement_into_its_month_and_flow(shop: Shop, clock: FakeClock) -> None:
    shop.set_program(
        expiry=points_pb2.ExpiryPolicy(kind=points_pb2.EXPIRY_KIND_DAYS_AFTER_EARNING, n=30),
        spend=points_pb2.SpendRules(points_per_unit=1),
        tiers=points_pb2.TierRules(
            basis=points_pb2.TIER_BASIS_ROLLING_SPEND,
            tiers=[
                points_pb2.Tier(code="silver", name="白银", threshold=10_000),
                points_pb2.Tier(code="gold", name="黄金", threshold=50_000),
            ],
        ),
    )
    shop.earn(order("o1", "c1", 20_000))  # March: issued 200, c1 reaches silver
    shop.adjust("c2", 50)  # issued 50
    shop.adjust("c2", -5)  # clawed back 5
    shop.spend("c1", "s1", 1_000_000, 60)  # redeemed 60
    shop.refund("o1", 5_000)  # clawed back 50 of o1's points
    clock.now = datetime(2026, 3, 31, 17, tzinfo=UTC)  # 1 April 01:00 in Shanghai: an April entry
    shop.adjust("c3", 7)
    clock.now = datetime(2026, 4, 20, tzinfo=UTC)
    workers.expire_due_lots(context_of(shop.stack))  # April: c1's 90 and c2's 45 left expire on 10 April
    summary = shop.call("GetPointsSummary", from_month=month(2026, 2), to_month=month(2026, 5))
    flows = [(m.month.month, m.issued, m.redeemed, m.expired, m.clawed_back) for m in summary.months]
    assert flows == [(2, 0, 0, 0, 0), (3, 250, 60, 0, 55), (4, 7, 0, 135, 0), (5, 0, 0, 0, 0)]
    assert [(t.tier_code, t.name, t.members) for t in summary.tiers] == [
        ("", "", 2),
        ("silver", "白银", 1),
        ("gold", "黄金", 0),
    ]
    assert summary.members == 3
    shop.assert_balanced()


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"to_month": month(2026, 3)}, "from_month: required"),
        ({"from_month": month(2026, 3), "to_month": month(2026, 2)}, "must not be before from_month"),
        ({"from_month": month(2026, 1), "to_month": month(2029, 1)}, "at most 36 months"),
        ({"from_month": common_pb2.Date(year=2026, month=13, day=1), "to_month": month(2026, 3)}, "from_month"),
    ],
)
def test_points_summary_refuses_a_bad_range_naming_the_field(shop: Shop, fields: dict[str, Any], text: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        shop.call("GetPointsSummary", **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert text in details(caught.value)
