"""Streaming ingest into the metrics service on PostgreSQL vs raw COPY of the same rows, same run."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
from loyalty.common.v1 import common_pb2
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from bench.baselines import empty_pg_database
from bench.services import BENCH_TOKEN, bench_service, sqlalchemy_url
from services.metrics.app import SPEC as METRICS

CHUNK = 1000


@dataclass(frozen=True)
class IngestBenchResult:
    orders: int
    stream_seconds: float
    settled_seconds: float  # from the stream's start until no customer summary is stale
    copy_seconds: float

    @property
    def stream_rows_per_second(self) -> float:
        return self.orders / self.stream_seconds

    @property
    def copy_rows_per_second(self) -> float:
        return self.orders / self.copy_seconds

    @property
    def ratio(self) -> float:
        return self.copy_seconds / self.stream_seconds

    @property
    def settled_ratio(self) -> float:
        return self.copy_seconds / self.settled_seconds


def rows(orders: int, customers: int) -> list[tuple[str, str, datetime, int]]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return [
        (f"o{i}", f"c{(i * 7919) % customers}", start + timedelta(minutes=i * 3), 1000 + i % 5000)
        for i in range(orders)
    ]


def chunks(shop: str, data: list[tuple[str, str, datetime, int]]) -> Iterator[metrics_pb2.StreamOrdersRequest]:
    for n, offset in enumerate(range(0, len(data), CHUNK)):
        request = metrics_pb2.StreamOrdersRequest(shop_id=shop, request_id=f"chunk{n}")
        for order_id, customer, paid_at, amount in data[offset : offset + CHUNK]:
            order = request.orders.add(
                order_id=order_id, customer_id=customer, paid=common_pb2.Money(amount_minor=amount, currency="CNY")
            )
            order.paid_at.FromDatetime(paid_at)
        yield request


def run(admin_dsn: str, orders: int = 100_000, customers: int = 20_000) -> IngestBenchResult:
    data = rows(orders, customers)
    requests = list(chunks("bench", data))  # built before timing: the client's work is not the service's
    with empty_pg_database(admin_dsn) as dsn:
        with bench_service(METRICS, sqlalchemy_url(dsn)) as address:
            stub = metrics_pb2_grpc.MetricsServiceStub(grpc.insecure_channel(address))
            started = time.perf_counter()
            metadata = (("authorization", f"Bearer {BENCH_TOKEN}"),)
            result = stub.StreamOrders(iter(requests), metadata=metadata, timeout=900)
            stream_seconds = time.perf_counter() - started
            if result.inserted != orders:
                raise AssertionError(f"stream inserted {result.inserted} of {orders}")
            settled_seconds = wait_until_settled(dsn, started)
        copy_seconds = min(raw_copy_seconds(dsn, data, binary=False), raw_copy_seconds(dsn, data, binary=True))
    return IngestBenchResult(orders, round(stream_seconds, 3), round(settled_seconds, 3), round(copy_seconds, 3))


COPY_COLUMNS = (
    "shop_id, order_id, customer_id, paid_at, local_date, amount_minor, refunded_minor, channel, source, fingerprint"
)
COPY_TYPES = ["varchar", "varchar", "varchar", "timestamptz", "date", "int8", "int8", "varchar", "int4", "varchar"]


def raw_copy_seconds(dsn: str, data: list[tuple[str, str, datetime, int]], *, binary: bool) -> float:
    """One COPY of the same rows into a copy of the orders table (its indexes too): the baseline.

    Measured in text and in binary format; the faster is the baseline, so the
    service is held to the best raw COPY psycopg offers, not a convenient one.
    """
    table = f"orders_copy_{'binary' if binary else 'text'}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (LIKE orders INCLUDING ALL)")
        started = time.perf_counter()
        with (
            conn.transaction(),
            conn.cursor() as cursor,
            cursor.copy(f"COPY {table} ({COPY_COLUMNS}) FROM STDIN{' (FORMAT BINARY)' if binary else ''}") as copy,
        ):
            if binary:
                copy.set_types(COPY_TYPES)
            for order_id, customer, paid_at, amount in data:
                copy.write_row(("bench", order_id, customer, paid_at, paid_at.date(), amount, 0, "", 1, "x" * 64))
        return time.perf_counter() - started


def wait_until_settled(dsn: str, started: float, *, timeout: float = 300.0) -> float:
    """Seconds from `started` until the summary worker has settled every summary the stream left stale."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.perf_counter() - started < timeout:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM stale_summaries) OR EXISTS (SELECT 1 FROM stale_summary_batches)"
            ).fetchone()
            if row is not None and not row[0]:
                return time.perf_counter() - started
            time.sleep(0.01)
    raise AssertionError(f"summaries still stale {timeout:.0f} s after the stream started")


if __name__ == "__main__":
    from bench.__main__ import ADMIN_DSN

    r = run(ADMIN_DSN, orders=int(os.environ.get("INGEST_ORDERS", "50000")), customers=10_000)
    print(
        r,
        f"stream {r.stream_rows_per_second:.0f} rows/s, COPY {r.copy_rows_per_second:.0f} rows/s, ratio {r.ratio:.3f},"
        f" settled ratio {r.settled_ratio:.3f}",
    )
