"""Prometheus metrics of a service process, served on a side port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_TOTAL = Counter("loyalty_rpc_total", "RPCs handled", ["method", "code"])
RPC_SECONDS = Histogram(
    "loyalty_rpc_seconds",
    "RPC handling time",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HEALTHY = Gauge("loyalty_healthy", "1 when the service reports SERVING")
WORKER_LAG_SECONDS = Gauge(
    "loyalty_worker_lag_seconds", "Age of the oldest work item a worker has not done", ["worker"]
)


def serve_metrics(host: str, port: int) -> None:
    if port > 0:
        start_http_server(port, addr=host)
