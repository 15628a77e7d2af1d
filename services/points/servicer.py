"""PointsService: proto <-> domain translation and validation; the rules live in domain/store."""

from __future__ import annotations

import grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from sqlalchemy.orm import Session

from services.common.convert import to_timestamp
from services.common.errors import Violations
from services.common.idempotency import run_idempotent
from services.common.paging import Cursor, decode_token, encode_token, page_size, position_int
from services.common.server import ServiceContext
from services.common.validation import check_id, check_text
from services.points import store
from services.points.domain import MAX_ADJUSTMENT, SYSTEM_ADJUSTMENTS, Asset
from services.points.models import Entry


def account_proto(view: store.AccountView) -> points_pb2.Account:
    return points_pb2.Account(
        customer_id=view.customer_id,
        points_balance=view.points,
        growth_balance=view.growth,
        updated_at=to_timestamp(view.updated_at),
    )


def entry_proto(entry: Entry) -> points_pb2.LedgerEntry:
    return points_pb2.LedgerEntry(
        entry_id=entry.id,
        customer_id=entry.holder,
        asset=entry.asset,  # type: ignore[arg-type]
        delta=entry.delta,
        balance_after=entry.balance_after or 0,
        kind=entry.kind,
        reason=entry.reason,
        request_id=entry.request_id,
        created_at=to_timestamp(entry.created_at),
    )


class PointsServicer(points_pb2_grpc.PointsServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def GetAccount(
        self, request: points_pb2.GetAccountRequest, context: grpc.ServicerContext
    ) -> points_pb2.GetAccountResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.raise_if_any()
        view = self.ctx.db.run(lambda s: store.get_account(s, shop_id=request.shop_id, customer_id=request.customer_id))
        return points_pb2.GetAccountResponse(account=account_proto(view))

    def AdjustPoints(
        self, request: points_pb2.AdjustPointsRequest, context: grpc.ServicerContext
    ) -> points_pb2.AdjustPointsResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.check(int(request.asset) in {a.value for a in Asset}, "asset", "must be ASSET_POINTS or ASSET_GROWTH")
        v.check(request.delta != 0, "delta", "must not be zero")
        v.check(abs(request.delta) <= MAX_ADJUSTMENT, "delta", f"must be within ±{MAX_ADJUSTMENT}")
        check_text(v, request.reason, "reason", max_length=200)
        v.raise_if_any()

        def apply(session: Session) -> points_pb2.AdjustPointsResponse:
            entry = store.transfer(
                session,
                shop_id=request.shop_id,
                customer_id=request.customer_id,
                counter_account=SYSTEM_ADJUSTMENTS,
                asset=Asset(request.asset),
                delta=request.delta,
                kind="ADJUSTMENT",
                reason=request.reason,
                request_id=request.request_id,
                now=self.ctx.clock(),
            )
            view = store.get_account(session, shop_id=request.shop_id, customer_id=request.customer_id)
            return points_pb2.AdjustPointsResponse(entry=entry_proto(entry), account=account_proto(view))

        return run_idempotent(self.ctx.db, request, points_pb2.AdjustPointsResponse, apply, clock=self.ctx.clock)

    def ListLedgerEntries(
        self, request: points_pb2.ListLedgerEntriesRequest, context: grpc.ServicerContext
    ) -> points_pb2.ListLedgerEntriesResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.raise_if_any()
        size = page_size(request.page_size)
        query = f"entries:{request.shop_id}:{request.customer_id}"
        position = decode_token(request.page_token, query=query)
        before_id = position_int(position, "before_id") if position else None
        entries = self.ctx.db.run(
            lambda s: store.list_entries(
                s, shop_id=request.shop_id, customer_id=request.customer_id, limit=size + 1, before_id=before_id
            )
        )
        page, more = entries[:size], len(entries) > size
        token = encode_token(Cursor(query, {"before_id": page[-1].id})) if more else ""
        return points_pb2.ListLedgerEntriesResponse(entries=[entry_proto(e) for e in page], next_page_token=token)


def register(server: grpc.Server, ctx: ServiceContext) -> None:
    points_pb2_grpc.add_PointsServiceServicer_to_server(PointsServicer(ctx), server)
