"""The PostgreSQL hot path against the Core path: same requests, same answers, same ledger rows.

Both paths run the same use cases on the same in-memory books, but read and
write them differently (one prepared statement each way with a version check,
against SQLAlchemy Core under the member lock). Hypothesis draws a workload
over a rich program (tiers with multipliers, a first-order bonus, a daily cap,
expiring points and rebate credit, a return window, stored value, a mall with
limits and little stock) and a moving clock with the background steps
(activation, expiry sweep, tier review) in between; the workload runs once per
path, each in its own shop of one database. Every answer, every refusal and
every row the two shops hold must be the same, up to the ids the database
assigns. Then the hot path's own mechanics: a lost race is retried and never
loses an update, and a redemption's answer names the stock its own update left.
"""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from loyalty.common.v1 import common_pb2
from loyalty.points.v1 import points_pb2
from sqlalchemy import text

from services.common.db import Database
from services.common.errors import DomainError
from services.common.migrations import upgrade
from services.common.server import Peers, ServiceContext
from services.common.settings import Settings
from services.points import fast, workers
from services.points.domain import Asset
from services.points.ledger import MemberLedger
from services.points.servicer import PointsServicer
from tests.integration.test_points_lifecycle import order, ratio
from tests.support import FakeClock, specs

START = datetime(2026, 5, 1, 2, tzinfo=UTC)
NO_CONTEXT: Any = None  # the servicer methods under test never touch their gRPC context
MEMBERS = ("m1", "m2", "m3")
ITEMS = {"cup": (150, 6, 2), "bag": (400, 3, 1)}  # cost, stock, per-member limit


@pytest.fixture(scope="module")
def points_db(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    if backend != "postgresql":
        pytest.skip("the hot path is PostgreSQL's")
    from tests.support import database_template

    with database_template(backend, tmp_path_factory.mktemp("hot")) as template:
        url = template.replace("{service}", "points")
        upgrade(specs()["points"].migrations, url)
        db = Database(url, pool_size=8)
        try:
            yield db
        finally:
            db.dispose()


def servicer_on(db: Database, clock: FakeClock, *, hot_path: bool) -> PointsServicer:
    settings_ = Settings(service="points", database_url=db.url)
    servicer = PointsServicer(ServiceContext(settings=settings_, db=db, peers=Peers(settings_), clock=clock))
    servicer.ledger = MemberLedger(db, clock, hot_path=hot_path)
    return servicer


def program() -> points_pb2.Program:
    return points_pb2.Program(
        earn=points_pb2.EarnRules(
            points_per_unit=ratio(1),
            category_multipliers={"dairy": ratio(2)},
            first_order_bonus=50,
            max_per_day=900,
            growth_per_unit=ratio(1),
        ),
        expiry=points_pb2.ExpiryPolicy(kind=points_pb2.EXPIRY_KIND_DAYS_AFTER_EARNING, n=20),
        return_window_days=3,
        spend=points_pb2.SpendRules(points_per_unit=100, max_share_bp=5_000),
        tiers=points_pb2.TierRules(
            basis=points_pb2.TIER_BASIS_LIFETIME_GROWTH,
            tiers=[
                points_pb2.Tier(code="silver", name="Silver", threshold=300, earn_multiplier=ratio(3, 2)),
                points_pb2.Tier(code="gold", name="Gold", threshold=900, earn_multiplier=ratio(2)),
            ],
            downgrade_grace_days=5,
        ),
        stored_value=points_pb2.StoredValueRules(plans=[points_pb2.TopUpPlan(pay_minor=20_000, bonus_minor=3_000)]),
        rebate=points_pb2.RebateRules(rate_bp=300, valid_days=10),
    )


Op = tuple[str, int, int, int]  # kind, member, amount, extra

ops = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "earn",
                "earn",
                "earn",
                "confirm",
                "refund",
                "refund",
                "spend",
                "redeem",
                "adjust",
                "top_up",
                "pay_stored",
                "pay_rebate",
                "account",
                "tick",
                "wait",
            ]
        ),
        st.integers(0, len(MEMBERS) - 1),
        st.integers(1, 40_000),
        st.integers(0, 10),
    ),
    min_size=25,
    max_size=70,
)


def cny(amount: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency="CNY")


class Run:
    """One shop driven through one servicer; records every answer in a comparable form."""

    def __init__(self, servicer: PointsServicer, shop: str, clock: FakeClock) -> None:
        self.servicer, self.shop, self.clock = servicer, shop, clock
        self.answers: list[Any] = []
        self.orders: list[tuple[str, int]] = []

    def answer(self, method: str, request: Message) -> Any:
        try:
            response = getattr(self.servicer, method)(request, NO_CONTEXT)
        except DomainError as exc:
            return (method, type(exc).__name__, exc.reason, str(exc))
        return (method, comparable(response))

    def call(self, method: str, request: Message, *, retried: bool = False) -> None:
        first = self.answer(method, request)
        self.answers.append(first)
        if retried:  # a retry of the same request: the same answer, nothing applied twice
            again = self.answer(method, request)
            if first[1] in ("FailedPrecondition", "NotFound"):  # a refusal leaves no record: evaluated afresh
                assert again[1] in ("FailedPrecondition", "NotFound"), (first, again)
            else:
                assert again == first, f"a retry of {method} answered differently"

    def setup(self) -> None:
        self.call(
            "SetProgram", points_pb2.SetProgramRequest(shop_id=self.shop, request_id="program", program=program())
        )
        for item_id, (cost, stock, limit) in ITEMS.items():
            item = points_pb2.MallItem(
                item_id=item_id, name=item_id, cost_points=cost, stock=stock, per_customer_limit=limit
            )
            self.call(
                "UpsertMallItem",
                points_pb2.UpsertMallItemRequest(shop_id=self.shop, request_id=f"item-{item_id}", item=item),
            )

    def apply(self, n: int, op: Op) -> None:
        kind, member_index, amount, extra = op
        member, rid, shop = MEMBERS[member_index], f"op{n}", self.shop
        call = functools.partial(self.call, retried=extra % 4 == 0)
        if kind == "earn":
            at = self.clock.now - timedelta(hours=extra)
            items = [("dairy", amount // 3)] if extra % 2 else []
            self.orders.append((f"o{n}", amount))
            call(
                "EarnForOrder",
                points_pb2.EarnForOrderRequest(
                    shop_id=shop, request_id=rid, order=order(f"o{n}", member, amount, at=at, items=items)
                ),
            )
        elif kind in ("confirm", "refund") and self.orders:
            order_id, paid = self.orders[extra % len(self.orders)]
            if kind == "confirm":
                call("ConfirmOrder", points_pb2.ConfirmOrderRequest(shop_id=shop, request_id=rid, order_id=order_id))
            else:
                refund = cny(max(1, paid * (extra + 1) // 25))
                request: Message = points_pb2.RefundOrderRequest(
                    shop_id=shop, request_id=rid, order_id=order_id, amount=refund
                )
                call("RefundOrder", request)
        elif kind == "spend":
            paid_toward = self.orders[extra % len(self.orders)][0] if self.orders and extra > 5 else f"pay{n}"
            request = points_pb2.SpendPointsRequest(
                shop_id=shop,
                request_id=rid,
                customer_id=member,
                order_id=paid_toward,
                order_amount=cny(200_000),
                points=amount % 900 + 1,
            )
            call("SpendPoints", request)
        elif kind == "redeem":
            item = list(ITEMS)[extra % len(ITEMS)]
            request = points_pb2.RedeemRequest(
                shop_id=shop, request_id=rid, customer_id=member, item_id=item, quantity=1 + extra % 2
            )
            call("Redeem", request)
        elif kind == "adjust":
            delta = amount % 500 + 1
            request = points_pb2.AdjustPointsRequest(
                shop_id=shop,
                request_id=rid,
                customer_id=member,
                asset=points_pb2.ASSET_GROWTH if extra == 10 else points_pb2.ASSET_POINTS,
                delta=-delta if extra % 3 == 0 else delta,
                reason="goodwill",
            )
            call("AdjustPoints", request)
        elif kind == "top_up":
            request = points_pb2.TopUpRequest(
                shop_id=shop, request_id=rid, customer_id=member, top_up_id=f"t{n}", paid=cny(5_000 + amount)
            )
            call("TopUp", request)
        elif kind == "pay_stored":
            request = points_pb2.SpendStoredValueRequest(
                shop_id=shop, request_id=rid, customer_id=member, order_id=f"sv{n}", amount=cny(amount // 4 + 1)
            )
            call("SpendStoredValue", request)
        elif kind == "pay_rebate":
            request = points_pb2.SpendRebateRequest(
                shop_id=shop, request_id=rid, customer_id=member, order_id=f"rb{n}", amount=cny(amount % 300 + 1)
            )
            call("SpendRebate", request)
        elif kind == "account":
            call("GetAccount", points_pb2.GetAccountRequest(shop_id=shop, customer_id=member))


def comparable(response: Message) -> bytes:
    """The response without the ids the database assigns (entry ids differ between the two shops)."""
    copy = type(response)()
    copy.CopyFrom(response)
    for field in ("entry",):
        if field in copy.DESCRIPTOR.fields_by_name and copy.HasField(field):
            getattr(copy, field).entry_id = 0
    return copy.SerializeToString(deterministic=True)


def rows(db: Database, shop: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every ledger row of a shop, in insertion order, with database ids replaced by their rank in the shop."""
    with db.engine.connect() as conn:

        def fetch(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(text(sql), {"shop": shop}).all()]

        lot_rank = {row[0]: n for n, row in enumerate(fetch("SELECT id FROM lots WHERE shop_id = :shop ORDER BY id"))}

        def ranked(value: Any) -> Any:
            if isinstance(value, str) and value.startswith("expiry-"):
                head, _, tail = value.partition(":")
                return f"expiry-#{lot_rank[int(head.removeprefix('expiry-'))]}" + (f":{tail}" if tail else "")
            return value

        return {
            "balances": fetch(
                "SELECT holder, asset, balance, updated_at FROM balances WHERE shop_id = :shop ORDER BY 1, 2"
            ),
            "entries": [
                tuple(ranked(v) for v in r)
                for r in fetch(
                    "SELECT transfer_id, holder, asset, delta, balance_after, kind, reason, request_id, created_at"
                    " FROM entries WHERE shop_id = :shop ORDER BY id"
                )
            ],
            "lots": fetch(
                "SELECT customer_id, asset, transfer_id, amount, remaining, earned_at, expires_at FROM lots"
                " WHERE shop_id = :shop ORDER BY id"
            ),
            "lot_uses": [
                (r[0], lot_rank[r[1]], r[2], r[3])
                for r in fetch(
                    "SELECT transfer_id, lot_id, amount, restored FROM lot_uses WHERE shop_id = :shop ORDER BY id"
                )
            ],
            "earnings": fetch(
                "SELECT order_id, customer_id, fingerprint, paid_at, paid_minor, earned_points, earned_growth,"
                " earned_rebate, breakdown, refunded_minor, state, activates_at, activated_at, created_at"
                " FROM order_earnings WHERE shop_id = :shop ORDER BY order_id"
            ),
            "spends": fetch(
                "SELECT transfer_id, order_id, customer_id, asset, amount, restored FROM order_spends"
                " WHERE shop_id = :shop ORDER BY transfer_id"
            ),
            "tiers": fetch("SELECT customer_id, tier_code, since, reviewed_at FROM member_tiers WHERE shop_id = :shop"),
            "tier_changes": fetch(
                "SELECT customer_id, from_code, to_code, reason, changed_at FROM tier_changes"
                " WHERE shop_id = :shop ORDER BY id"
            ),
            "redemptions": fetch(
                "SELECT item_id, customer_id, quantity, points, transfer_id, created_at FROM redemptions"
                " WHERE shop_id = :shop ORDER BY id"
            ),
            "stock": fetch("SELECT item_id, stock FROM mall_items WHERE shop_id = :shop ORDER BY 1"),
            "top_ups": fetch(
                "SELECT top_up_id, customer_id, transfer_id, paid_minor, bonus_minor, refunded_at FROM top_ups"
                " WHERE shop_id = :shop ORDER BY 1"
            ),
        }


@settings(max_examples=8)
@given(workload=ops, seed=st.integers(0, 2**16))
def test_the_hot_path_answers_and_writes_exactly_what_the_core_path_does(
    points_db: Database, uid: str, workload: list[Op], seed: int
) -> None:
    clock = FakeClock(START)
    hot = servicer_on(points_db, clock, hot_path=True)
    core = servicer_on(points_db, clock, hot_path=False)
    context = hot.ctx
    runs = {path: Run(servicer, f"{path}-{uid}-{seed}", clock) for path, servicer in (("hot", hot), ("core", core))}
    for run in runs.values():
        run.setup()
    rng = random.Random(seed)
    for n, op in enumerate(workload):
        for run in runs.values():  # the same step on both shops at the same instant
            run.apply(n, op)
        if op[0] == "tick":  # the background steps see both shops at once
            workers.activate_due_earnings(context)
            workers.expire_due_lots(context)
            workers.review_all_tiers(context)
        if op[0] == "wait":
            clock.advance(days=rng.choice([1, 2, 4, 9]), hours=rng.randint(0, 23))
    assert runs["hot"].answers == runs["core"].answers
    hot_rows, core_rows = rows(points_db, runs["hot"].shop), rows(points_db, runs["core"].shop)
    for table in hot_rows:
        assert hot_rows[table] == core_rows[table], table
    for run in runs.values():
        reconciled = run.servicer.ReconcileLedger(points_pb2.ReconcileLedgerRequest(shop_id=run.shop), NO_CONTEXT)
        assert reconciled.balanced, list(reconciled.mismatches)


def test_a_member_changed_between_read_and_write_is_read_again_and_no_update_is_lost(
    points_db: Database, uid: str
) -> None:
    """While the hot path computes, another request credits the member: the first write must not land on the
    balance it read (that would lose the credit); it runs again under the member lock and sees the credit."""
    clock = FakeClock(START)
    hot = servicer_on(points_db, clock, hot_path=True)
    core = servicer_on(points_db, clock, hot_path=False)
    shop = f"race-{uid}"

    def adjust(servicer: PointsServicer, request_id: str, delta: int) -> points_pb2.AdjustPointsResponse:
        request = points_pb2.AdjustPointsRequest(
            shop_id=shop, request_id=request_id, customer_id="c", asset=points_pb2.ASSET_POINTS, delta=delta
        )
        response: points_pb2.AdjustPointsResponse = servicer.AdjustPoints(request, NO_CONTEXT)
        return response

    adjust(hot, "first", 100)
    attempts: list[int] = []
    original_read = fast.HotPath._read

    def read_then_race(self: fast.HotPath, *args: Any, **kwargs: Any) -> fast.Snapshot:
        snapshot = original_read(self, *args, **kwargs)
        attempts.append(snapshot.facts.balances[Asset.POINTS].balance)
        if len(attempts) == 1:  # the racing credit commits between this read and its write
            with ThreadPoolExecutor(1) as other:
                other.submit(adjust, core, "racer", 7).result()
        return snapshot

    fast.HotPath._read = read_then_race  # type: ignore[method-assign]
    try:
        answer = adjust(hot, "second", 10)
    finally:
        fast.HotPath._read = original_read  # type: ignore[method-assign]
    assert attempts == [100, 107], "the write after the race must have been retried on a fresh read"
    assert answer.account.points_balance == 117
    reconciled = hot.ReconcileLedger(points_pb2.ReconcileLedgerRequest(shop_id=shop), NO_CONTEXT)
    assert reconciled.balanced, list(reconciled.mismatches)


def test_each_concurrent_redemption_answers_with_the_stock_its_own_update_left(points_db: Database, uid: str) -> None:
    """Sixteen clients redeem one unit each: the answers name 99, 98, ... 84 once each (no stale stock),
    and a retry of any of them answers byte for byte the same."""
    clock = FakeClock(START)
    hot = servicer_on(points_db, clock, hot_path=True)
    shop = f"stock-{uid}"
    item = points_pb2.MallItem(item_id="mug", name="mug", cost_points=10, stock=100)
    hot.UpsertMallItem(points_pb2.UpsertMallItemRequest(shop_id=shop, request_id="item", item=item), NO_CONTEXT)
    members = [f"c{n}" for n in range(16)]
    for member in members:
        hot.AdjustPoints(
            points_pb2.AdjustPointsRequest(
                shop_id=shop, request_id=f"fund-{member}", customer_id=member, asset=points_pb2.ASSET_POINTS, delta=50
            ),
            NO_CONTEXT,
        )
    barrier = threading.Barrier(len(members))

    def redeem(member: str) -> points_pb2.RedeemResponse:
        request = points_pb2.RedeemRequest(
            shop_id=shop, request_id=f"r-{member}", customer_id=member, item_id="mug", quantity=1
        )
        barrier.wait()
        response: points_pb2.RedeemResponse = hot.Redeem(request, NO_CONTEXT)
        assert hot.Redeem(request, NO_CONTEXT).SerializeToString() == response.SerializeToString()
        return response

    with ThreadPoolExecutor(len(members)) as pool:
        answers = list(pool.map(redeem, members))
    assert sorted(a.item.stock for a in answers) == list(range(84, 100))
    assert all(a.account.points_balance == 40 for a in answers)


def _sell_out(servicer: PointsServicer, shop: str, clients: int) -> list[str]:
    outcomes: list[str] = []

    def one(n: int) -> str:
        request = points_pb2.RedeemRequest(
            shop_id=shop, request_id=f"s{n}", customer_id=f"c{n % 4}", item_id="few", quantity=1
        )
        try:
            servicer.Redeem(request, NO_CONTEXT)
        except DomainError as exc:
            return exc.reason
        return "OK"

    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(one, range(60)))
    return outcomes


def test_the_hot_path_never_oversells_under_concurrency(points_db: Database, uid: str) -> None:
    clock = FakeClock(START)
    hot = servicer_on(points_db, clock, hot_path=True)
    shop = f"sellout-{uid}"
    item = points_pb2.MallItem(item_id="few", name="few", cost_points=1, stock=17)
    hot.UpsertMallItem(points_pb2.UpsertMallItemRequest(shop_id=shop, request_id="item", item=item), NO_CONTEXT)
    for member in range(4):
        hot.AdjustPoints(
            points_pb2.AdjustPointsRequest(
                shop_id=shop,
                request_id=f"fund{member}",
                customer_id=f"c{member}",
                asset=points_pb2.ASSET_POINTS,
                delta=1_000,
            ),
            NO_CONTEXT,
        )
    outcomes = _sell_out(hot, shop, clients=16)
    assert outcomes.count("OK") == 17
    assert set(outcomes) == {"OK", "OUT_OF_STOCK"}
    listed = hot.ListMallItems(points_pb2.ListMallItemsRequest(shop_id=shop), NO_CONTEXT)
    assert listed.items[0].stock == 0
    reconciled = hot.ReconcileLedger(points_pb2.ReconcileLedgerRequest(shop_id=shop), NO_CONTEXT)
    assert reconciled.balanced


def test_a_write_that_got_the_member_only_after_its_callers_deadline_changes_nothing(
    points_db: Database, uid: str
) -> None:
    """The member's row is locked without being changed (as the hot path's own second attempts lock it),
    so the waiting write's version check passes once the lock goes: its deadline check must still refuse it."""
    from services.common.deadlines import caller_deadline
    from services.common.errors import DeadlineExceeded

    clock = FakeClock(START)
    hot = servicer_on(points_db, clock, hot_path=True)
    shop = f"late-{uid}"

    def adjust(request_id: str) -> points_pb2.AdjustPointsResponse:
        request = points_pb2.AdjustPointsRequest(
            shop_id=shop, request_id=request_id, customer_id="c", asset=points_pb2.ASSET_POINTS, delta=5
        )
        response: points_pb2.AdjustPointsResponse = hot.AdjustPoints(request, NO_CONTEXT)
        return response

    adjust("first")
    with points_db.engine.connect() as holder:
        holder.execute(
            text("SELECT 1 FROM balances WHERE shop_id = :shop AND holder = 'c' AND asset = 1 FOR UPDATE"),
            {"shop": shop},
        )
        with ThreadPoolExecutor(1) as pool:

            def late() -> BaseException | None:
                with caller_deadline(0.3):
                    try:
                        adjust("late")
                    except DeadlineExceeded as exc:
                        return exc
                return None

            outcome = pool.submit(late)
            threading.Event().wait(0.6)  # the caller's deadline passes while the write waits for the row
            holder.rollback()  # the row was never changed: nothing makes the version check fail
            assert isinstance(outcome.result(timeout=10), DeadlineExceeded)
    with points_db.engine.connect() as conn:
        late_rows = conn.execute(
            text("SELECT count(*) FROM entries WHERE shop_id = :shop AND request_id = 'late'"), {"shop": shop}
        ).scalar()
    assert late_rows == 0
    assert adjust("late").account.points_balance == 10  # the retry is evaluated afresh and applies once
