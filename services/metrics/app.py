"""How the metrics service runs: its gRPC names, servicers and migrations."""

from __future__ import annotations

from pathlib import Path

from loyalty.metrics.v1 import metrics_pb2

from services.common.server import ServiceSpec
from services.metrics.servicer import register
from services.metrics.workers import metrics_workers

SPEC = ServiceSpec(
    name="metrics",
    service_names=(metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,),
    register=register,
    migrations=Path(__file__).parent / "migrations",
    workers=metrics_workers,
)
