"""SegmentationService: proto <-> domain translation, validation, calls to peers."""

from __future__ import annotations

from datetime import UTC
from zoneinfo import ZoneInfo

import grpc
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from loyalty.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc
from sqlalchemy.orm import Session

from services.common.channels import rpc_code
from services.common.errors import Violations
from services.common.idempotency import run_idempotent
from services.common.server import ServiceContext
from services.common.validation import check_id
from services.segmentation import store
from services.segmentation.domain import TAG_PATTERN, days_since

MAX_TAG_BATCH = 1000
PEER_TIMEOUT_SECONDS = 5.0


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def TagCustomers(
        self, request: segmentation_pb2.TagCustomersRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.TagCustomersResponse:
        v = Violations()
        v.check(bool(TAG_PATTERN.match(request.tag)), "tag", "must be 1-64 letters, digits, '_', '-' or ':'")
        v.check(0 < len(request.customer_ids) <= MAX_TAG_BATCH, "customer_ids", f"must hold 1..{MAX_TAG_BATCH} ids")
        for i, customer_id in enumerate(request.customer_ids[:MAX_TAG_BATCH]):
            check_id(v, customer_id, f"customer_ids[{i}]")
        v.raise_if_any()

        def apply(session: Session) -> segmentation_pb2.TagCustomersResponse:
            count = store.tag_customers(
                session,
                shop_id=request.shop_id,
                tag=request.tag,
                customer_ids=list(request.customer_ids),
                now=self.ctx.clock(),
            )
            return segmentation_pb2.TagCustomersResponse(newly_tagged=count)

        return run_idempotent(self.ctx.db, request, segmentation_pb2.TagCustomersResponse, apply, clock=self.ctx.clock)

    def GetCustomerProfile(
        self, request: segmentation_pb2.GetCustomerProfileRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.GetCustomerProfileResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.raise_if_any()
        shop_id, customer_id = request.shop_id, request.customer_id
        profile = segmentation_pb2.CustomerProfile(customer_id=customer_id, days_since_last_order=-1)
        metrics = metrics_pb2_grpc.MetricsServiceStub(self.ctx.peers.channel("metrics"))
        try:
            summary = metrics.GetCustomerSummary(
                metrics_pb2.GetCustomerSummaryRequest(shop_id=shop_id, customer_id=customer_id),
                timeout=PEER_TIMEOUT_SECONDS,
            ).summary
            profile.order_count = summary.order_count
            profile.total_paid.CopyFrom(summary.total_paid)
            zone = ZoneInfo(self.ctx.settings.default_time_zone)
            profile.days_since_last_order = days_since(
                summary.last_order_at.ToDatetime(tzinfo=UTC), self.ctx.clock(), zone
            )
        except grpc.RpcError as exc:
            if rpc_code(exc) != grpc.StatusCode.NOT_FOUND:
                raise
        points = points_pb2_grpc.PointsServiceStub(self.ctx.peers.channel("points"))
        account = points.GetAccount(
            points_pb2.GetAccountRequest(shop_id=shop_id, customer_id=customer_id), timeout=PEER_TIMEOUT_SECONDS
        ).account
        profile.points_balance = account.points_balance
        profile.tags.extend(self.ctx.db.run(lambda s: store.tags_of(s, shop_id=shop_id, customer_id=customer_id)))
        return segmentation_pb2.GetCustomerProfileResponse(profile=profile)


def register(server: grpc.Server, ctx: ServiceContext) -> None:
    segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server(SegmentationServicer(ctx), server)
