"""How the points service runs: its gRPC names, servicers and migrations."""

from __future__ import annotations

from pathlib import Path

from loyalty.points.v1 import points_pb2

from services.common.server import ServiceSpec
from services.points.servicer import register
from services.points.workers import points_workers

SPEC = ServiceSpec(
    name="points",
    service_names=(points_pb2.DESCRIPTOR.services_by_name["PointsService"].full_name,),
    register=register,
    migrations=Path(__file__).parent / "migrations",
    workers=points_workers,
)
