"""Service benchmarks: a real service process tree on PostgreSQL, driven through its stubs."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
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
        auth_tokens=json.dumps([{"sha256": digest(BENCH_TOKEN), "shops": ["*"], "scopes": ["write"]}]),
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
