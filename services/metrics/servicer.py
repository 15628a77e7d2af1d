"""MetricsService: proto <-> domain translation and validation."""

from __future__ import annotations

import grpc
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from sqlalchemy.orm import Session

from services.common.convert import to_money, to_timestamp
from services.common.errors import NotFound, Violations
from services.common.idempotency import run_idempotent
from services.common.orders import PaidOrder, parse_order
from services.common.server import ServiceContext
from services.common.validation import check_id
from services.metrics import store
from services.metrics.domain import Outcome

MAX_BATCH = 1000


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def RecordOrders(
        self, request: metrics_pb2.RecordOrdersRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.RecordOrdersResponse:
        v = Violations()
        v.check(0 < len(request.orders) <= MAX_BATCH, "orders", f"must hold 1..{MAX_BATCH} orders")
        parsed: list[PaidOrder] = []
        for i, order in enumerate(request.orders[:MAX_BATCH]):
            result = parse_order(v, order, f"orders[{i}]")
            if result is not None:
                parsed.append(result)
        v.raise_if_any()

        def apply(session: Session) -> metrics_pb2.RecordOrdersResponse:
            counts = store.record_orders(
                session, shop_id=request.shop_id, orders=parsed, default_zone=self.ctx.settings.default_time_zone
            )
            return metrics_pb2.RecordOrdersResponse(
                inserted=counts[Outcome.INSERTED],
                duplicates=counts[Outcome.DUPLICATE],
                corrected=counts[Outcome.CORRECTED],
            )

        return run_idempotent(self.ctx.db, request, metrics_pb2.RecordOrdersResponse, apply, clock=self.ctx.clock)

    def GetCustomerSummary(
        self, request: metrics_pb2.GetCustomerSummaryRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.GetCustomerSummaryResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.raise_if_any()
        found = self.ctx.db.run(
            lambda s: store.get_summary(s, shop_id=request.shop_id, customer_id=request.customer_id)
        )
        if found is None:
            raise NotFound(f"customer {request.customer_id!r} has no recorded orders", reason="CUSTOMER_NOT_FOUND")
        summary, currency = found
        return metrics_pb2.GetCustomerSummaryResponse(
            summary=metrics_pb2.CustomerSummary(
                customer_id=summary.customer_id,
                order_count=summary.order_count,
                purchase_days=summary.purchase_days,
                total_paid=to_money(summary.total_minor, currency),
                first_order_at=to_timestamp(summary.first_order_at),
                last_order_at=to_timestamp(summary.last_order_at),
            )
        )


def register(server: grpc.Server, ctx: ServiceContext) -> None:
    metrics_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(ctx), server)
