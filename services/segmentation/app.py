"""How the segmentation service runs: its gRPC names, servicers and migrations."""

from __future__ import annotations

from pathlib import Path

from loyalty.segmentation.v1 import segmentation_pb2

from services.common.server import ServiceSpec
from services.segmentation.servicer import register

SPEC = ServiceSpec(
    name="segmentation",
    service_names=(segmentation_pb2.DESCRIPTOR.services_by_name["SegmentationService"].full_name,),
    register=register,
    migrations=Path(__file__).parent / "migrations",
)
