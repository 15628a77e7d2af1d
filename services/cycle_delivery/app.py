"""How the cycle_delivery service runs: its gRPC names, servicers and migrations."""

from __future__ import annotations

from pathlib import Path

from loyalty.cycle_delivery.v1 import cycle_delivery_pb2

from services.common.server import ServiceSpec
from services.cycle_delivery.servicer import register
from services.cycle_delivery.workers import cycle_delivery_workers

SPEC = ServiceSpec(
    name="cycle_delivery",
    service_names=(cycle_delivery_pb2.DESCRIPTOR.services_by_name["CycleDeliveryService"].full_name,),
    register=register,
    migrations=Path(__file__).parent / "migrations",
    workers=cycle_delivery_workers,
)
