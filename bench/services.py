"""Service benchmarks: a real service process tree on PostgreSQL, driven through its stubs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2
from loyalty.points.v1 import points_pb2, points_pb2_grpc

from bench.baselines import client_channel, wait_for_listeners
from bench.ledger_fill import SHOP, TIERS
from bench.load import with_children
from services.common.auth import digest
from services.common.logs import configure_logging
from services.common.server import RunningService, ServiceSpec, rpc_threads
from services.common.settings import Settings
from services.common.supervisor import hold_port
from services.common.tracing import DiscardingExporter, batching_provider
from tools.supervise import wait_serving

BENCH_TOKEN = "bench-token"
METADATA = (("authorization", f"Bearer {BENCH_TOKEN}"),)
BENCH_GRANTS = json.dumps([{"sha256": digest(BENCH_TOKEN), "shops": ["*"], "scopes": ["admin"]}])  # the services' side
MEMBERS = 10_000
# The storefront's program: tier multipliers, a first-order bonus, a daily cap, expiring points,
# points as payment; orders activate at once (the harder case: every earn writes entries and a lot).
PROGRAM = points_pb2.Program(
    earn=points_pb2.EarnRules(
        points_per_unit=points_pb2.Ratio(numerator=1, denominator=1),
        category_multipliers={"dairy": points_pb2.Ratio(numerator=2, denominator=1)},
        first_order_bonus=100,
        max_per_day=2_000,
        growth_per_unit=points_pb2.Ratio(numerator=1, denominator=1),
    ),
    expiry=points_pb2.ExpiryPolicy(kind=points_pb2.EXPIRY_KIND_DAYS_AFTER_EARNING, n=365),
    spend=points_pb2.SpendRules(points_per_unit=100, max_share_bp=5_000),
    tiers=points_pb2.TierRules(
        basis=points_pb2.TIER_BASIS_LIFETIME_GROWTH,
        tiers=[
            points_pb2.Tier(
                code=code,
                name=code,
                threshold=threshold,
                earn_multiplier=points_pb2.Ratio(numerator=multiplier, denominator=2),
            )
            for (code, threshold), multiplier in zip(TIERS, (3, 4), strict=True)
        ],
    ),
)


def sqlalchemy_url(dsn: str) -> str:
    """A libpq DSN as SQLAlchemy's psycopg URL."""
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


def service_tuning() -> dict[str, int]:
    """The services run with their own defaults; BENCH_WORKERS / BENCH_POOL try other thread and pool sizes."""
    tuning = {}
    if "BENCH_WORKERS" in os.environ:
        tuning["max_workers"] = int(os.environ["BENCH_WORKERS"])
    if "BENCH_POOL" in os.environ:
        tuning["db_pool_size"] = int(os.environ["BENCH_POOL"])
    return tuning


@contextmanager
def bench_service(spec: ServiceSpec, database_url: str, *, traced: bool = False) -> Iterator[str]:
    """One service in this process on `database_url`, accepting BENCH_TOKEN; yields its address.

    `traced`: OpenTelemetry on, every call sampled, spans batched and discarded (tracing's own cost).
    """
    settings = Settings.model_validate(
        {
            "service": spec.name,
            "grpc_port": 0,
            "database_url": database_url,
            "log_level": "WARNING",
            "auth_tokens": BENCH_GRANTS,
            **service_tuning(),
        }
    )
    configure_logging(spec.name, settings.log_level)
    provider = batching_provider(spec.name, DiscardingExporter()) if traced else None
    running = RunningService(spec, settings, tracer_provider=provider).start()
    IN_PROCESS.append(running)
    try:
        yield running.address
    finally:
        IN_PROCESS.remove(running)
        running.stop(grace=2)
        if provider is not None:
            provider.shutdown()


IN_PROCESS: list[RunningService] = []


def release_connections() -> None:
    """Closes the idle pooled connections of this process's services (they reopen on demand).

    PostgreSQL allows 100 connections here; three in-process services and the
    two supervised copies would hold more than that between them.
    """
    for running in IN_PROCESS:
        running.db.dispose()


def warm_connections() -> None:
    """Refills the pools `release_connections` emptied, so that no measured load pays for connecting.

    The hot path's autocommit pool gets one connection per RPC thread; the
    engine's pool, which serves the other calls and the workers, a few.
    """
    for running in IN_PROCESS:
        if not running.db.is_postgres:
            continue
        running.db.autocommit_pool.warm(rpc_threads(running.spec, running.settings))
        held = [running.db.engine.connect() for _ in range(4)]
        for connection in held:
            connection.close()


@contextmanager
def supervised_points(database_url: str, workers: int) -> Iterator[tuple[str, list[int]]]:
    """The points service as its container runs it, with LOYALTY_WORKERS; yields (address, pids)."""
    holder, port = hold_port("127.0.0.1", 0)  # the supervisor's copies join it with SO_REUSEPORT
    env = {
        **os.environ,
        "LOYALTY_WORKERS": str(workers),
        "LOYALTY_GRPC_PORT": str(port),
        "LOYALTY_LOG_LEVEL": "WARNING",
        "DATABASE_URL": database_url,
        **{f"LOYALTY_{name.upper()}": str(value) for name, value in service_tuning().items()},
        "LOYALTY_AUTH_TOKENS": BENCH_GRANTS,
    }
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "services.points", "serve"], env=env, stdout=subprocess.DEVNULL
    )
    address = f"127.0.0.1:{port}"
    try:
        wait_serving(supervisor, address, timeout=60, label="points supervisor")
        wait_for_listeners(port, workers, [supervisor], label="the points supervisor's copies")  # every copy
        yield address, with_children(supervisor.pid)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(30)
        holder.close()


def set_program(address: str) -> None:
    stub = points_pb2_grpc.PointsServiceStub(client_channel(address))
    stub.SetProgram(
        points_pb2.SetProgramRequest(shop_id=SHOP, request_id=f"program-{uuid.uuid4().hex[:8]}", program=PROGRAM),
        metadata=METADATA,
    )


def adjust_client(index: int, address: str) -> Callable[[int], None]:
    stub = points_pb2_grpc.PointsServiceStub(client_channel(address))
    metadata = METADATA
    rng = random.Random(index)
    run = uuid.uuid4().hex[:8]

    def once(op: int) -> None:
        stub.AdjustPoints(
            points_pb2.AdjustPointsRequest(
                shop_id="bench",
                request_id=f"{run}-{index}-{op}",
                customer_id=f"c{rng.randint(1, 10_000)}",
                asset=points_pb2.ASSET_POINTS,
                delta=10,
            ),
            metadata=metadata,
            timeout=10,
        )

    return once


def get_account_client(index: int, address: str) -> Callable[[int], None]:
    stub = points_pb2_grpc.PointsServiceStub(client_channel(address))
    metadata: Any = METADATA
    rng = random.Random(index)

    def once(_op: int) -> None:
        stub.GetAccount(
            points_pb2.GetAccountRequest(shop_id="bench", customer_id=f"c{rng.randint(1, 10_000)}"),
            metadata=metadata,
            timeout=10,
        )

    return once


def earn_client(index: int, address: str) -> Callable[[int], None]:
    """EarnForOrder of a two-line order for one of 10,000 members (the storefront's hot path)."""
    stub = points_pb2_grpc.PointsServiceStub(client_channel(address))
    metadata = METADATA
    rng = random.Random(index)
    run = uuid.uuid4().hex[:8]
    paid_at = Timestamp()
    paid_at.GetCurrentTime()

    def once(op: int) -> None:
        amount = rng.randint(1_000, 50_000)
        order = common_pb2.Order(
            order_id=f"{run}-{index}-{op}",
            customer_id=f"c{rng.randint(1, 10_000)}",
            paid_at=paid_at,
            paid=common_pb2.Money(amount_minor=amount, currency="CNY"),
            items=[
                common_pb2.OrderItem(
                    sku="milk-1l", category="dairy", quantity=1, paid=common_pb2.Money(amount_minor=amount // 2)
                ),
                common_pb2.OrderItem(
                    sku="bread", category="bakery", quantity=1, paid=common_pb2.Money(amount_minor=amount // 3)
                ),
            ],
        )
        stub.EarnForOrder(
            points_pb2.EarnForOrderRequest(shop_id="bench", request_id=f"e-{order.order_id}", order=order),
            metadata=metadata,
            timeout=10,
        )

    return once


def spend_client(index: int, address: str) -> Callable[[int], None]:
    """SpendPoints at checkout: 1-100 points toward an order, by one of 10,000 members with earned points."""
    rng = random.Random(index)
    return _checkouts(index, address, lambda: f"s{rng.randint(1, MEMBERS)}", most_points=100)


def _checkouts(index: int, address: str, member: Callable[[], str], *, most_points: int) -> Callable[[int], None]:
    stub = points_pb2_grpc.PointsServiceStub(client_channel(address))
    rng = random.Random(index)
    run = uuid.uuid4().hex[:8]

    def once(op: int) -> None:
        stub.SpendPoints(
            points_pb2.SpendPointsRequest(
                shop_id=SHOP,
                request_id=f"{run}-{index}-{op}",
                customer_id=member(),
                order_id=f"pay-{run}-{index}-{op}",
                order_amount=common_pb2.Money(amount_minor=1_000_000, currency="CNY"),
                points=rng.randint(1, most_points),
            ),
            metadata=METADATA,
            timeout=10,
        )

    return once


SOLO = "solo"


def fund_solo(address: str) -> None:
    """One member with points enough for any run (the SQLite contention benchmark)."""
    stub = points_pb2_grpc.PointsServiceStub(client_channel(address))
    stub.AdjustPoints(
        points_pb2.AdjustPointsRequest(
            shop_id=SHOP,
            request_id=f"solo-{uuid.uuid4().hex[:8]}",
            customer_id=SOLO,
            asset=points_pb2.ASSET_POINTS,
            delta=10**8,
        ),
        metadata=METADATA,
    )


def solo_spend_client(index: int, address: str) -> Callable[[int], None]:
    """Many checkouts of one member at once: every request wants the same member lock."""
    return _checkouts(index, address, lambda: SOLO, most_points=10)


HOT_MEMBERS = 100


def prepare_redeem(address: str) -> None:
    """A bench program, a mall item with ample stock, and 100 funded members."""
    stub = points_pb2_grpc.PointsServiceStub(client_channel(address))
    metadata = METADATA
    run = uuid.uuid4().hex[:8]
    item = points_pb2.MallItem(item_id="bench-mug", name="mug", cost_points=1, stock=10**9)
    stub.UpsertMallItem(
        points_pb2.UpsertMallItemRequest(shop_id="bench", request_id=f"{run}-item", item=item), metadata=metadata
    )
    for member in range(HOT_MEMBERS):
        stub.AdjustPoints(
            points_pb2.AdjustPointsRequest(
                shop_id="bench",
                request_id=f"{run}-fund-{member}",
                customer_id=f"hot{member}",
                asset=points_pb2.ASSET_POINTS,
                delta=10**7,
            ),
            metadata=metadata,
        )


def redeem_client(index: int, address: str) -> Callable[[int], None]:
    """Redeem of one mall item by 100 hot members: contention on the item row and on members."""
    stub = points_pb2_grpc.PointsServiceStub(client_channel(address))
    metadata = METADATA
    rng = random.Random(index)
    run = uuid.uuid4().hex[:8]

    def once(op: int) -> None:
        stub.Redeem(
            points_pb2.RedeemRequest(
                shop_id="bench",
                request_id=f"{run}-{index}-{op}",
                customer_id=f"hot{rng.randrange(HOT_MEMBERS)}",
                item_id="bench-mug",
                quantity=1,
            ),
            metadata=metadata,
            timeout=10,
        )

    return once


def sell_out(address: str, *, stock: int = 300, clients: int = 32) -> tuple[int, int]:
    """32 clients redeem a scarce item until it is gone; returns (redemptions acknowledged, stock left)."""
    stub = points_pb2_grpc.PointsServiceStub(client_channel(address))
    run = uuid.uuid4().hex[:8]
    item = points_pb2.MallItem(item_id=f"scarce-{run}", name="scarce", cost_points=1, stock=stock)
    stub.UpsertMallItem(
        points_pb2.UpsertMallItemRequest(shop_id=SHOP, request_id=f"{run}-scarce", item=item), metadata=METADATA
    )

    def client(index: int) -> int:
        sold = 0
        for op in range(stock):  # bounded: no client can need more tries than there are units
            try:
                stub.Redeem(
                    points_pb2.RedeemRequest(
                        shop_id=SHOP,
                        request_id=f"{run}-{index}-{op}",
                        customer_id=f"hot{(index + op) % HOT_MEMBERS}",
                        item_id=item.item_id,
                        quantity=1,
                    ),
                    metadata=METADATA,
                    timeout=10,
                )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    return sold
                raise
            sold += 1
        return sold

    with ThreadPoolExecutor(clients) as pool:
        sold = sum(pool.map(client, range(clients)))
    items = stub.ListMallItems(points_pb2.ListMallItemsRequest(shop_id=SHOP, page_size=500), metadata=METADATA)
    left = next(i.stock for i in items.items if i.item_id == item.item_id)
    return sold, left
