"""Service benchmarks: a real service process tree on PostgreSQL, driven through its stubs."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2
from loyalty.points.v1 import points_pb2, points_pb2_grpc

from services.common.auth import digest
from services.common.logs import configure_logging
from services.common.server import RunningService, ServiceSpec
from services.common.settings import Settings

BENCH_TOKEN = "bench-token"


def sqlalchemy_url(dsn: str) -> str:
    """A libpq DSN as SQLAlchemy's psycopg URL."""
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


@contextmanager
def bench_service(spec: ServiceSpec, database_url: str) -> Iterator[str]:
    """One service in this process on `database_url`, accepting BENCH_TOKEN; yields its address."""
    settings = Settings(
        service=spec.name,
        grpc_port=0,
        database_url=database_url,
        db_pool_size=32,
        log_level="WARNING",
        auth_tokens=json.dumps([{"sha256": digest(BENCH_TOKEN), "shops": ["*"], "scopes": ["admin"]}]),
    )
    configure_logging(spec.name, settings.log_level)
    running = RunningService(spec, settings).start()
    try:
        yield running.address
    finally:
        running.stop(grace=2)


def adjust_client(index: int, address: str) -> Callable[[int], None]:
    stub = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(address))
    metadata = (("authorization", f"Bearer {BENCH_TOKEN}"),)
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
    stub = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(address))
    metadata: Any = (("authorization", f"Bearer {BENCH_TOKEN}"),)
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
    stub = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(address))
    metadata = (("authorization", f"Bearer {BENCH_TOKEN}"),)
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


HOT_MEMBERS = 100


def prepare_redeem(address: str) -> None:
    """A bench program, a mall item with ample stock, and 100 funded members."""
    stub = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(address))
    metadata = (("authorization", f"Bearer {BENCH_TOKEN}"),)
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
    stub = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(address))
    metadata = (("authorization", f"Bearer {BENCH_TOKEN}"),)
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
