"""Crash soak: the compose stack with two replicas per service, a mixed workload, SIGKILLs, then a checker.

`run_soak` starts the stack natively from deploy/compose.yaml on the machine's
PostgreSQL, drives a seeded mixed workload (earn, spend, redeem, refund and
adjust points, record orders, create subscriptions whose first delivery is due
at once) from many client threads with 20 % of request ids sent twice and every
call retried with the same request id on UNAVAILABLE or DEADLINE_EXCEEDED, and
SIGKILLs a random replica `kills` times mid-run, restarting it each time.
`check` then proves, from the databases and the RPCs: every acknowledged
mutation applied exactly once and nothing unacknowledged applied, ledger sums
equal balances, no forbidden negative balance, no oversold mall item, every due
delivery created once, every outbox event delivered, and metrics holding exactly
the orders sent. The integration test runs a small soak; `make soak`
(`python -m tests.soak`) a longer one. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from google.protobuf.message import Message
from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2 as cd
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2_grpc as cd_grpc
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from services.common.outbox import OutboxEvent
from services.common.settings import DEV_TOKEN
from services.cycle_delivery.deliveries import DeliveryState
from services.cycle_delivery.models import DeliveryRecord, SubscriptionRecord
from services.metrics.models import Order
from services.points.models import Entry, MallItemRecord, OrderEarning, Redemption
from tests.compose_stack import NativeStack, load_compose
from tests.integration.test_metrics_rpc import order

AUTH = (("authorization", f"Bearer {DEV_TOKEN}"),)
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
REFUSALS = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}
SERVICES = ("points", "metrics", "segmentation", "cycle_delivery")
ITEMS = {"mug": (120, 15, 2), "tote": (300, 10, 1)}  # cost, stock, per-member limit
PLAN_ID = "soak-milk"
SHOP_ZONE = ZoneInfo("Asia/Shanghai")
# Points entries each acknowledged request of these kinds must have written.
MUST_WRITE = {"earn", "spend", "redeem", "adjust"}


@dataclass(frozen=True)
class SoakPlan:
    operations: int = 300
    clients: int = 8
    kills: int = 3
    seed: int = 1
    call_budget_seconds: float = 90.0  # how long one operation may keep retrying


@dataclass(frozen=True)
class Operation:
    kind: str
    service: str
    method: str
    request: Message
    order_id: str = ""  # the order it records or subscribes with, where it has one

    @property
    def request_id(self) -> str:
        return str(getattr(self.request, "request_id"))  # noqa: B009 (Message has no typed field)


@dataclass
class SoakReport:
    operations: int = 0
    sends: int = 0
    duplicates: int = 0
    retries: int = 0
    acknowledged: int = 0
    refused: int = 0
    kills: list[str] = field(default_factory=list)
    deliveries_created: int = 0
    events_delivered: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.operations} operations ({self.sends} sends, {self.duplicates} duplicated ids, "
            f"{self.retries} retries), {self.acknowledged} acknowledged, {self.refused} refused, "
            f"{len(self.kills)} kills ({', '.join(self.kills)}), {self.deliveries_created} deliveries created, "
            f"{self.events_delivered} outbox events delivered, {len(self.violations)} violations, "
            f"{self.seconds:.0f} s"
        )


def workload(shop: str, plan: SoakPlan, rng: random.Random, now: datetime) -> list[Operation]:
    """A seeded operation list; refunds pick earlier earned orders (they may arrive first: NOT_FOUND)."""
    customers = [f"m{i}" for i in range(12)]
    earned: list[tuple[str, int]] = []
    start = now.astimezone(SHOP_ZONE).date()
    if now.astimezone(SHOP_ZONE).hour == 23 and now.astimezone(SHOP_ZONE).minute >= 50:
        start += timedelta(days=1)  # too close to the cut-off: no delivery is due during the run
    ops: list[Operation] = []
    kinds = ["earn", "spend", "redeem", "refund", "adjust", "record", "subscribe"]
    for i in range(plan.operations):
        rid = f"{shop}-op{i}"
        customer = rng.choice(customers)
        kind = rng.choices(kinds, weights=[4, 2, 2, 1, 1, 3, 1])[0]
        if kind == "refund" and not earned:
            kind = "earn"
        if kind == "earn":
            amount = rng.randint(1_000, 60_000)
            earned.append((f"e{i}", amount))
            request: Message = points_pb2.EarnForOrderRequest(
                shop_id=shop, request_id=rid, order=order(f"e{i}", customer, now, amount)
            )
            ops.append(Operation(kind, "points", "EarnForOrder", request))
        elif kind == "spend":
            request = points_pb2.SpendPointsRequest(
                shop_id=shop,
                request_id=rid,
                customer_id=customer,
                order_id=f"pay{i}",
                order_amount=common_pb2.Money(amount_minor=1_000_000, currency="CNY"),
                points=rng.randint(1, 300),
            )
            ops.append(Operation(kind, "points", "SpendPoints", request))
        elif kind == "redeem":
            request = points_pb2.RedeemRequest(
                shop_id=shop, request_id=rid, customer_id=customer, item_id=rng.choice(list(ITEMS)), quantity=1
            )
            ops.append(Operation(kind, "points", "Redeem", request))
        elif kind == "refund":
            order_id, amount = rng.choice(earned)
            request = points_pb2.RefundOrderRequest(
                shop_id=shop,
                request_id=rid,
                order_id=order_id,
                amount=common_pb2.Money(amount_minor=rng.randint(1, amount // 2), currency="CNY"),
            )
            ops.append(Operation(kind, "points", "RefundOrder", request))
        elif kind == "adjust":
            request = points_pb2.AdjustPointsRequest(
                shop_id=shop, request_id=rid, customer_id=customer, asset=points_pb2.ASSET_POINTS, delta=200
            )
            ops.append(Operation(kind, "points", "AdjustPoints", request))
        elif kind == "record":
            request = metrics_pb2.RecordOrdersRequest(
                shop_id=shop, request_id=rid, orders=[order(f"r{i}", customer, now, rng.randint(500, 90_000))]
            )
            ops.append(Operation(kind, "metrics", "RecordOrders", request, order_id=f"r{i}"))
        else:
            request = cd.CreateSubscriptionRequest(
                shop_id=shop,
                request_id=rid,
                order=order(f"s{i}", customer, now, 2 * 800),
                plan_id=PLAN_ID,
                quantity=1,
                address="soak address",
                delivery_mode=cd.DELIVERY_MODE_EXPRESS,
                start_date=common_pb2.Date(year=start.year, month=start.month, day=start.day),
            )
            ops.append(Operation(kind, "cycle_delivery", "CreateSubscription", request, order_id=f"s{i}"))
    return ops


def set_up_shop(channels: dict[str, grpc.Channel], shop: str) -> None:
    points = points_pb2_grpc.PointsServiceStub(channels["points"])
    program = points_pb2.Program(spend=points_pb2.SpendRules(points_per_unit=100, max_share_bp=5_000))
    points.SetProgram(points_pb2.SetProgramRequest(shop_id=shop, request_id="program", program=program), metadata=AUTH)
    for item_id, (cost, stock, limit) in ITEMS.items():
        item = points_pb2.MallItem(
            item_id=item_id, name=item_id, cost_points=cost, stock=stock, per_customer_limit=limit
        )
        points.UpsertMallItem(
            points_pb2.UpsertMallItemRequest(shop_id=shop, request_id=f"item-{item_id}", item=item), metadata=AUTH
        )
    plan = cd.Plan(
        plan_id=PLAN_ID,
        sku="milk",
        rule=cd.ScheduleRule(cadence=cd.CADENCE_DAILY),
        delivery_count=2,
        lead_time_days=0,
        cutoff_minute=23 * 60 + 59,
        price_per_delivery=common_pb2.Money(amount_minor=800, currency="CNY"),
    )
    cd_grpc.CycleDeliveryServiceStub(channels["cycle_delivery"]).UpsertPlan(
        cd.UpsertPlanRequest(shop_id=shop, request_id="plan", plan=plan), metadata=AUTH
    )


class Killer(threading.Thread):
    """SIGKILLs a replica each time progress crosses the next mark (calls are in flight), then restarts it.

    Kills go to points, cycle delivery, metrics, segmentation in turn (a random
    replica of each), so even a short soak kills the ledger and the delivery worker.
    """

    ORDER = ("points", "cycle_delivery", "metrics", "segmentation")

    def __init__(self, stack: NativeStack, rng: random.Random, kills: int, total: int) -> None:
        super().__init__(daemon=True)
        self.stack, self.rng = stack, rng
        self.marks = [total * (k + 1) // (kills + 1) for k in range(kills)]
        self.done = 0
        self.finished = threading.Event()
        self.killed: list[str] = []

    def run(self) -> None:
        for number, mark in enumerate(self.marks):
            while self.done < mark and not self.finished.is_set():
                time.sleep(0.005)
            if self.finished.is_set():
                return
            name = self.ORDER[number % len(self.ORDER)]
            replica = self.rng.choice(self.stack.replicas[name])
            os.kill(replica.process.pid, signal.SIGKILL)
            replica.process.wait(10)
            self.killed.append(f"{name}[{replica.index}]")
            self.stack.start_service(name, only_index=replica.index)  # back in a few seconds; clients retry

    def wait_all_healthy(self) -> None:
        for name in self.ORDER:
            self.stack.wait_healthy(name, timeout=60)


@dataclass(frozen=True)
class Outcome:
    request_id: str
    body: bytes | None  # None when refused
    unexpected: str | None  # a status no client should ever see
    retries: int


def send(stubs: dict[str, Any], op: Operation, budget: float) -> Outcome:
    """One operation, retried with the same request id like a storefront does."""
    method = getattr(stubs[op.service], op.method)
    give_up = time.monotonic() + budget
    pause, retries = 0.05, 0
    while True:
        try:
            body = method(op.request, metadata=AUTH, timeout=10).SerializeToString()
            return Outcome(op.request_id, body, None, retries)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in RETRYABLE and time.monotonic() < give_up:
                retries += 1
                time.sleep(pause)
                pause = min(1.0, pause * 2)
                continue
            if code in REFUSALS:
                return Outcome(op.request_id, None, None, retries)
            return Outcome(op.request_id, None, f"{op.method} {op.request_id}: {code.name} {exc.details()}", retries)


def database_url(stack: NativeStack, service: str) -> str:
    template = stack.env_for(service, None, None)["DATABASE_URL"]
    return template.replace("{service}", service)


def wait_until_settled(stack: NativeStack, shop: str, seconds: float) -> None:
    """Waits (bounded) until no due delivery is still scheduled and every outbox event is delivered."""
    cycle = create_engine(database_url(stack, "cycle_delivery"))
    try:
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            with Session(cycle) as session:
                due = session.scalar(
                    select(func.count()).where(
                        DeliveryRecord.shop_id == shop,
                        DeliveryRecord.state == DeliveryState.SCHEDULED,
                        DeliveryRecord.due_at <= datetime.now(UTC),
                    )
                )
                pending = session.scalar(select(func.count()).where(OutboxEvent.delivered_at.is_(None)))
            if not due and not pending:
                return
            time.sleep(0.5)
    finally:
        cycle.dispose()


def check(
    stack: NativeStack, shop: str, ops: list[Operation], answers: dict[str, set[bytes]], report: SoakReport
) -> None:
    """Appends every broken invariant to report.violations."""
    v = report.violations
    v.extend(f"{rid}: {len(bodies)} different answers" for rid, bodies in answers.items() if len(bodies) > 1)
    by_kind = {op.request_id: op.kind for op in ops}
    acknowledged = set(answers)

    points = create_engine(database_url(stack, "points"))
    metrics = create_engine(database_url(stack, "metrics"))
    cycle = create_engine(database_url(stack, "cycle_delivery"))
    try:
        with Session(points) as session:
            entries = session.execute(
                select(Entry.request_id, Entry.kind, Entry.asset, Entry.balance_after).where(
                    Entry.shop_id == shop, ~Entry.holder.startswith("@")
                )
            ).all()
            writes = Counter((e.request_id, e.kind, e.asset) for e in entries)
            v.extend(f"{key} written {n} times" for key, n in writes.items() if n > 1)
            writers = {e.request_id for e in entries if e.request_id in by_kind}
            v.extend(f"{rid}: applied but never acknowledged" for rid in sorted(writers - acknowledged))
            missing = {rid for rid in acknowledged if by_kind[rid] in MUST_WRITE} - writers
            v.extend(f"{rid}: acknowledged but not in the ledger" for rid in sorted(missing))
            v.extend(
                f"{e.request_id}: {e.kind} left balance {e.balance_after}"
                for e in entries
                if e.kind in ("SPEND", "REDEEM") and (e.balance_after or 0) < 0
            )
            for item_id, (_cost, stock, limit) in ITEMS.items():
                left = session.scalar(
                    select(MallItemRecord.stock).where(
                        MallItemRecord.shop_id == shop, MallItemRecord.item_id == item_id
                    )
                )
                taken = session.execute(
                    select(Redemption.customer_id, func.sum(Redemption.quantity))
                    .where(Redemption.shop_id == shop, Redemption.item_id == item_id)
                    .group_by(Redemption.customer_id)
                ).all()
                if left is None or left < 0 or left + sum(int(q) for _, q in taken) != stock:
                    v.append(f"mall item {item_id}: stock {left} and redemptions {taken} disagree")
                v.extend(f"{item_id}: {c} redeemed {q} > limit" for c, q in taken if int(q) > limit)
            earned_orders = set(session.scalars(select(OrderEarning.order_id).where(OrderEarning.shop_id == shop)))
        with Session(cycle) as session:
            subscriptions = set(
                session.scalars(select(SubscriptionRecord.subscription_id).where(SubscriptionRecord.shop_id == shop))
            )
            deliveries = session.execute(
                select(DeliveryRecord.state, DeliveryRecord.due_at, DeliveryRecord.delivery_order_id).where(
                    DeliveryRecord.shop_id == shop
                )
            ).all()
            undelivered = session.scalar(select(func.count()).where(OutboxEvent.delivered_at.is_(None)))
            report.events_delivered = int(
                session.scalar(select(func.count()).where(OutboxEvent.delivered_at.is_not(None))) or 0
            )
        delivery_orders = [d.delivery_order_id for d in deliveries if d.delivery_order_id]
        report.deliveries_created = len(delivery_orders)
        now = datetime.now(UTC)
        v.extend(
            f"delivery due {d.due_at} still scheduled"
            for d in deliveries
            if d.state == DeliveryState.SCHEDULED and d.due_at <= now
        )
        if len(set(delivery_orders)) != len(delivery_orders):
            v.append("a delivery order was created twice")
        if undelivered:
            v.append(f"{undelivered} outbox events never delivered")
        acknowledged_subscriptions = {
            op.order_id for op in ops if op.kind == "subscribe" and op.request_id in acknowledged
        }
        if subscriptions != acknowledged_subscriptions:
            v.append(f"subscriptions {sorted(subscriptions ^ acknowledged_subscriptions)} differ from the acknowledged")
        v.extend(f"delivery order {o} earned no points" for o in delivery_orders if o not in earned_orders)
        with Session(metrics) as session:
            recorded = list(session.scalars(select(Order.order_id).where(Order.shop_id == shop)))
        sent = {op.order_id for op in ops if op.kind == "record" and op.request_id in acknowledged} | set(
            delivery_orders
        )
        if sorted(recorded) != sorted(sent):
            v.append(
                f"metrics holds {len(recorded)} orders, {len(sent)} were sent: {sorted(set(recorded) ^ sent)[:10]}"
            )
    finally:
        for engine in (points, metrics, cycle):
            engine.dispose()
    ledger = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(stack.target_of("points"))).ReconcileLedger(
        points_pb2.ReconcileLedgerRequest(shop_id=shop), metadata=AUTH, timeout=60
    )
    if not ledger.balanced:
        v.append(f"ledger does not reconcile: {list(ledger.mismatches)[:5]}")


def soak_compose() -> dict[str, Any]:
    """deploy/compose.yaml with two replicas of every service."""
    compose = load_compose()
    for name in SERVICES:
        compose["services"][name].setdefault("deploy", {})["replicas"] = 2
    return compose


def run_soak(plan: SoakPlan, log_dir: Path, progress: Callable[[str], None] = lambda _m: None) -> SoakReport:
    started = time.monotonic()
    rng = random.Random(plan.seed)
    shop = f"soak{plan.seed % 10_000}-{os.getpid()}"
    report = SoakReport()
    stack = NativeStack(
        soak_compose(),
        log_dir=log_dir,
        extra_env={"LOYALTY_DELIVERY_WORKER_SECONDS": "1", "LOYALTY_OUTBOX_RELAY_SECONDS": "0.5"},
    ).start()
    try:
        channels = {name: grpc.insecure_channel(stack.target_of(name)) for name in SERVICES}
        stubs = {
            "points": points_pb2_grpc.PointsServiceStub(channels["points"]),
            "metrics": metrics_pb2_grpc.MetricsServiceStub(channels["metrics"]),
            "cycle_delivery": cd_grpc.CycleDeliveryServiceStub(channels["cycle_delivery"]),
        }
        set_up_shop(channels, shop)
        ops = workload(shop, plan, rng, datetime.now(UTC))
        sends = ops + rng.sample(ops, len(ops) // 5)
        rng.shuffle(sends)
        report.operations, report.sends, report.duplicates = len(ops), len(sends), len(sends) - len(ops)
        killer = Killer(stack, random.Random(plan.seed + 1), plan.kills, len(sends))
        lock = threading.Lock()

        def client(op: Operation) -> Outcome:
            outcome = send(stubs, op, plan.call_budget_seconds)
            with lock:
                killer.done += 1
            return outcome

        progress(f"stack up; {len(sends)} sends from {plan.clients} clients, {plan.kills} kills")
        killer.start()
        try:
            with ThreadPoolExecutor(plan.clients) as pool:
                outcomes = list(pool.map(client, sends))
        finally:
            killer.finished.set()
            killer.join(120)
        report.kills = killer.killed
        killer.wait_all_healthy()
        answers: dict[str, set[bytes]] = {}
        for outcome in outcomes:
            report.retries += outcome.retries
            if outcome.unexpected:
                report.violations.append(outcome.unexpected)
            if outcome.body is not None:
                answers.setdefault(outcome.request_id, set()).add(outcome.body)
        report.acknowledged = len(answers)
        report.refused = len(ops) - len(answers)
        progress("workload done; waiting for workers and relays")
        wait_until_settled(stack, shop, seconds=120)
        check(stack, shop, ops, answers, report)
        for channel in channels.values():
            channel.close()
    finally:
        stack.stop()
    report.seconds = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Crash soak of the compose stack (127.0.0.1 only)")
    parser.add_argument("--operations", type=int, default=3_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    plan = SoakPlan(operations=args.operations, clients=args.clients, kills=args.kills, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="soak-") as logs:
        report = run_soak(plan, Path(logs), progress=lambda m: print(m, flush=True))
    print(f"seed {plan.seed}: {report.summary()}")
    for violation in report.violations[:50]:
        print("VIOLATION", violation)
    return 0 if not report.violations else 1


if __name__ == "__main__":
    sys.exit(main())
