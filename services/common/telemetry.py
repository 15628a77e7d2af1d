"""Prometheus metrics of a service process, served on a side port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server

RPC_TOTAL = Counter("loyalty_rpc_total", "RPCs handled", ["method", "code"])
RPC_SECONDS = Histogram(
    "loyalty_rpc_seconds",
    "RPC handling time",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
# With LOYALTY_WORKERS > 1 the supervisor sums the processes' files; the gauge
# modes say how: healthy only if every live process is, the worst lag of any.
HEALTHY = Gauge("loyalty_healthy", "1 when the service reports SERVING", multiprocess_mode="livemin")
WORKER_LAG_SECONDS = Gauge(
    "loyalty_worker_lag_seconds",
    "Age of the oldest work item a worker has not done",
    ["worker"],
    multiprocess_mode="livemax",
)
# Work waiting, by kind: outbox events not yet delivered, dead outbox events (an operator's to inspect), due
# deliveries not yet created. Every copy reads the same database, so the copies agree: the max is the value.
BACKLOG = Gauge("loyalty_backlog_items", "Work items waiting, by kind", ["kind"], multiprocess_mode="livemax")
DB_POOL_IN_USE = Gauge(
    "loyalty_db_pool_in_use", "Database connections checked out, by pool", ["pool"], multiprocess_mode="livesum"
)
DB_POOL_CAPACITY = Gauge(
    "loyalty_db_pool_capacity", "Connections a pool may hand out at once", ["pool"], multiprocess_mode="livesum"
)


def serve_metrics(host: str, port: int) -> None:
    if port > 0:
        start_http_server(port, addr=host)


def serve_multiprocess_metrics(host: str, port: int, directory: str) -> None:
    """The supervisor's /metrics: every worker process's samples, read from their files in `directory`."""
    if port > 0:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=host, registry=registry)
