"""PointsService: proto <-> domain translation and validation; the rules live in domain/store."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from loyalty.common.v1 import common_pb2
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from loyalty.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc
from sqlalchemy.orm import Session

from services.common.channels import rpc_code
from services.common.convert import from_timestamp, to_date, to_money, to_timestamp
from services.common.errors import NotFound, Violations
from services.common.idempotency import run_idempotent
from services.common.orders import parse_order
from services.common.paging import Cursor, decode_token, encode_token, page_size, position_int
from services.common.server import ServiceContext
from services.common.validation import check_amount, check_currency, check_id, check_text
from services.points import earnings, erasure, mall, rewards, store, summary, wallet
from services.points import tiers as tier_rules
from services.points.book import (
    SYSTEM_ADJUSTMENTS,
    AccountView,
    EarningState,
    ItemState,
    MemberBook,
    MemberQuery,
    NewEntry,
    Posting,
    rolling_since,
)
from services.points.domain import MAX_ADJUSTMENT, Asset, kept_share
from services.points.expiry import expires_at
from services.points.ledger import MemberLedger
from services.points.models import CouponRecord, Entry, MallItemRecord, OrderEarning
from services.points.program import ProgramRules, program_rules, with_defaults

R = TypeVar("R", bound=Message)
HasId = TypeVar("HasId", Entry, CouponRecord)
MemberPageRequest = points_pb2.ListLedgerEntriesRequest | points_pb2.ListCouponsRequest
MAX_SPEND_POINTS = 100_000_000
MAX_REDEEM_QUANTITY = 100
CAMPAIGN_PAGE = 500
STANDINGS_BATCH = 5_000
PEER_TIMEOUT_SECONDS = 10.0
ADJUSTABLE_ASSETS = frozenset({points_pb2.ASSET_POINTS, points_pb2.ASSET_GROWTH})


def tier_status_proto(rules: ProgramRules, view: AccountView) -> points_pb2.TierStatus:
    tier = rules.tiers.by_code(view.tier_code)
    ahead = tier_rules.progress(rules.tiers, view.tier_code, view.tier_basis_value)
    status = points_pb2.TierStatus(
        code=view.tier_code,
        name=tier.name if tier else "",
        basis_value=view.tier_basis_value,
        next_code=ahead.next_code,
        to_next=ahead.to_next,
    )
    if view.tier_since is not None and view.tier_code:
        status.since.CopyFrom(to_timestamp(view.tier_since))
    return status


def account_proto(rules: ProgramRules, book: MemberBook) -> points_pb2.Account:
    view = book.account(rules.tiers)
    account = points_pb2.Account(
        customer_id=view.customer_id,
        points_balance=view.points,
        growth_balance=view.growth,
        updated_at=to_timestamp(view.updated_at),
        pending_points=view.pending_points,
        tier=tier_status_proto(rules, view),
        stored_principal=view.stored_principal,
        stored_bonus=view.stored_bonus,
        rebate_balance=view.rebate,
    )
    if view.expiring_at is not None:
        account.expiring_soonest.points = view.expiring_points
        account.expiring_soonest.expires_at.CopyFrom(to_timestamp(view.expiring_at))
    return account


def entry_proto(entry: Entry | NewEntry) -> points_pb2.LedgerEntry:
    return points_pb2.LedgerEntry(
        entry_id=entry.id or 0,
        customer_id=entry.holder,
        asset=entry.asset,  # type: ignore[arg-type]
        delta=entry.delta,
        balance_after=entry.balance_after or 0,
        kind=entry.kind,
        reason=entry.reason,
        request_id=entry.request_id,
        created_at=to_timestamp(entry.created_at),
    )


def earning_proto(row: OrderEarning | EarningState) -> points_pb2.Earning:
    return points_pb2.Earning(
        order_id=row.order_id,
        customer_id=row.customer_id,
        points=kept_share(row.earned_points, row.paid_minor, row.refunded_minor),
        growth=kept_share(row.earned_growth, row.paid_minor, row.refunded_minor),
        breakdown=[points_pb2.BreakdownLine(rule=rule, points=p) for rule, p in json.loads(row.breakdown)],
        state=row.state,  # type: ignore[arg-type]
        activates_at=to_timestamp(row.activates_at),
        paid=to_money(row.paid_minor, row.currency),
        refunded=to_money(row.refunded_minor, row.currency),
    )


def coupon_proto(row: CouponRecord, now: datetime) -> points_pb2.Coupon:
    if row.redeemed_at is not None:
        state = points_pb2.COUPON_STATE_REDEEMED
    elif now >= row.expires_at:
        state = points_pb2.COUPON_STATE_EXPIRED
    else:
        state = points_pb2.COUPON_STATE_ISSUED
    return points_pb2.Coupon(
        coupon_id=str(row.id),
        customer_id=row.customer_id,
        template_id=row.template_id,
        name=row.name,
        value_minor=row.value_minor,
        min_order_minor=row.min_order_minor,
        issued_at=to_timestamp(row.issued_at),
        expires_at=to_timestamp(row.expires_at),
        state=state,
        source=row.source,
        redeemed_order_id=row.redeemed_order_id or "",
    )


def item_proto(row: MallItemRecord | ItemState) -> points_pb2.MallItem:
    return points_pb2.MallItem(
        item_id=row.item_id,
        name=row.name,
        cost_points=row.cost_points,
        stock=row.stock,
        starts_at=to_timestamp(row.starts_at),
        ends_at=to_timestamp(row.ends_at),
        per_customer_limit=row.per_customer_limit,
    )


class ProgramCache:
    """Each shop's program rules, re-read at most every `ttl` seconds.

    Every earning and account read needs the rules; reading and validating them
    per call cost more than the rest of a GetAccount. A change made through this
    replica applies at once; through another replica, within `ttl` seconds.
    """

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._rules: dict[str, tuple[float, ProgramRules]] = {}
        self._lock = threading.Lock()

    def get(self, shop_id: str, load: Callable[[], ProgramRules]) -> ProgramRules:
        now = time.monotonic()
        with self._lock:
            cached = self._rules.get(shop_id)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        rules = load()
        with self._lock:
            self._rules[shop_id] = (now, rules)
        return rules

    def forget(self, shop_id: str) -> None:
        with self._lock:
            self._rules.pop(shop_id, None)


class PointsServicer(points_pb2_grpc.PointsServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.programs = ProgramCache()
        self.ledger = MemberLedger(ctx.db, ctx.clock)

    # -- helpers

    def _program(self, session: Session, shop_id: str) -> ProgramRules:
        zone = self.ctx.settings.default_time_zone
        return self.programs.get(shop_id, lambda: store.load_program(session, shop_id=shop_id, default_zone=zone)[1])

    def _rules(self, shop_id: str) -> ProgramRules:
        """The shop's rules from the cache; read in a transaction of their own only when not cached."""
        zone = self.ctx.settings.default_time_zone
        return self.programs.get(
            shop_id, lambda: self.ctx.db.run(lambda s: store.load_program(s, shop_id=shop_id, default_zone=zone)[1])
        )

    def _member_query(self, shop_id: str, customer_id: str, rules: ProgramRules, **parts: Any) -> MemberQuery:
        now = self.ctx.clock()
        return MemberQuery(
            shop_id=shop_id, now=now, customer_id=customer_id, rolling_since=rolling_since(rules.tiers, now), **parts
        )

    def _newest_first_page(
        self, request: MemberPageRequest, kind: str, fetch: Callable[..., Sequence[HasId]]
    ) -> tuple[Sequence[HasId], str]:
        """One page of a member's rows, newest first (AIP-158), and the token of the next."""
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.raise_if_any()
        size = page_size(request.page_size)
        query = f"{kind}:{request.shop_id}:{request.customer_id}"
        position = decode_token(request.page_token, query=query)
        before_id = position_int(position, "before_id") if position else None
        rows = self.ctx.db.run(
            lambda s: fetch(
                s, shop_id=request.shop_id, customer_id=request.customer_id, limit=size + 1, before_id=before_id
            )
        )
        page, more = rows[:size], len(rows) > size
        return page, encode_token(Cursor(query, {"before_id": page[-1].id})) if more else ""

    def _mutate(self, request: Message, response_type: type[R], apply: Callable[[Session], R]) -> R:
        return run_idempotent(self.ctx.db, request, response_type, apply, clock=self.ctx.clock)

    # -- accounts and ledger

    def GetAccount(
        self, request: points_pb2.GetAccountRequest, context: grpc.ServicerContext
    ) -> points_pb2.GetAccountResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.raise_if_any()
        rules = self._rules(request.shop_id)
        return self.ledger.read(
            self._member_query(request.shop_id, request.customer_id, rules),
            lambda book: points_pb2.GetAccountResponse(account=account_proto(rules, book)),
        )

    def AdjustPoints(
        self, request: points_pb2.AdjustPointsRequest, context: grpc.ServicerContext
    ) -> points_pb2.AdjustPointsResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.check(request.asset in ADJUSTABLE_ASSETS, "asset", "must be ASSET_POINTS or ASSET_GROWTH")
        v.check(request.delta != 0, "delta", "must not be zero")
        v.check(abs(request.delta) <= MAX_ADJUSTMENT, "delta", f"must be within ±{MAX_ADJUSTMENT}")
        check_text(v, request.reason, "reason", max_length=200)
        v.raise_if_any()
        rules = self._rules(request.shop_id)
        asset = Asset(request.asset)
        debited = frozenset({asset}) if request.delta < 0 else frozenset()
        posting = Posting(asset, request.delta, SYSTEM_ADJUSTMENTS, "ADJUSTMENT", request.request_id, request.reason)

        def adjust(book: MemberBook, _others: object) -> NewEntry:
            """A merchant's manual adjustment; credited points expire like earned ones."""
            if posting.delta > 0:
                return book.credit(posting, lot_expires_at=expires_at(rules.expiry, book.now, rules.zone))
            return book.debit(posting)

        return self.ledger.mutate(
            request,
            points_pb2.AdjustPointsResponse,
            self._member_query(request.shop_id, request.customer_id, rules, lots_of=debited, entry_ids=2),
            adjust,
            lambda book, entry: points_pb2.AdjustPointsResponse(
                entry=entry_proto(entry), account=account_proto(rules, book)
            ),
        )

    def ListLedgerEntries(
        self, request: points_pb2.ListLedgerEntriesRequest, context: grpc.ServicerContext
    ) -> points_pb2.ListLedgerEntriesResponse:
        entries, token = self._newest_first_page(request, "entries", store.list_entries)
        return points_pb2.ListLedgerEntriesResponse(entries=[entry_proto(e) for e in entries], next_page_token=token)

    def ReconcileLedger(
        self, request: points_pb2.ReconcileLedgerRequest, context: grpc.ServicerContext
    ) -> points_pb2.ReconcileLedgerResponse:
        result = self.ctx.db.run(lambda s: store.reconcile(s, shop_id=request.shop_id))
        return points_pb2.ReconcileLedgerResponse(
            balanced=not result.mismatches,
            balances_checked=result.balances_checked,
            entries_checked=result.entries_checked,
            mismatches=result.mismatches,
        )

    def GetPointsSummary(
        self, request: points_pb2.GetPointsSummaryRequest, context: grpc.ServicerContext
    ) -> points_pb2.GetPointsSummaryResponse:
        v = Violations()
        first = summary.month_of(v, request.from_month, "from_month")
        last = summary.month_of(v, request.to_month, "to_month")
        if first is not None and last is not None:
            v.check(first <= last, "to_month", "must not be before from_month")
            v.check(
                len(summary.month_starts(first, last)) <= summary.MAX_SUMMARY_MONTHS,
                "to_month",
                "at most 36 months from from_month",
            )
        v.raise_if_any()
        assert first is not None
        assert last is not None
        months = summary.month_starts(first, last)

        def read(session: Session) -> points_pb2.GetPointsSummaryResponse:
            rules = self._program(session, request.shop_id)
            response = points_pb2.GetPointsSummaryResponse()
            for month in months:
                start, end = summary.month_bounds(month, rules.zone)
                flows = summary.points_flows(
                    store.points_movements(session, shop_id=request.shop_id, start=start, end=end)
                )
                response.months.add(
                    month=to_date(month),
                    issued=flows.issued,
                    redeemed=flows.redeemed,
                    expired=flows.expired,
                    clawed_back=flows.clawed_back,
                )
            counts = store.tier_counts(session, shop_id=request.shop_id)
            ladder = [("", "")] + [(t.code, t.name) for t in rules.tiers.tiers]
            retired = sorted(set(counts) - {code for code, _ in ladder})
            for code, name in ladder + [(code, "") for code in retired]:
                response.tiers.add(tier_code=code, name=name, members=counts.get(code, 0))
            response.members = sum(counts.values())
            return response

        return self.ctx.db.run(read)

    # -- program

    def SetProgram(
        self, request: points_pb2.SetProgramRequest, context: grpc.ServicerContext
    ) -> points_pb2.SetProgramResponse:
        program = with_defaults(request.program, self.ctx.settings.default_time_zone)
        v = Violations()
        program_rules(v, program)
        v.raise_if_any()

        def apply(session: Session) -> points_pb2.SetProgramResponse:
            store.save_program(session, shop_id=request.shop_id, program=program, now=self.ctx.clock())
            return points_pb2.SetProgramResponse(program=program)

        response = self._mutate(request, points_pb2.SetProgramResponse, apply)
        self.programs.forget(request.shop_id)
        return response

    def GetProgram(
        self, request: points_pb2.GetProgramRequest, context: grpc.ServicerContext
    ) -> points_pb2.GetProgramResponse:
        program, _rules = self.ctx.db.run(
            lambda s: store.load_program(s, shop_id=request.shop_id, default_zone=self.ctx.settings.default_time_zone)
        )
        return points_pb2.GetProgramResponse(program=program)

    # -- earning

    def EarnForOrder(
        self, request: points_pb2.EarnForOrderRequest, context: grpc.ServicerContext
    ) -> points_pb2.EarnForOrderResponse:
        v = Violations()
        order = parse_order(v, request.order, "order", now=self.ctx.clock())
        v.check(0 <= request.birthday_month <= 12, "birthday_month", "must be 1..12, or 0 when unknown")
        v.raise_if_any()
        assert order is not None
        rules = self._rules(request.shop_id)
        return self.ledger.mutate(
            request,
            points_pb2.EarnForOrderResponse,
            earnings.earn_query(request.shop_id, order, rules, self.ctx.clock()),
            lambda book, _others: earnings.earn_for_order(
                book, request_id=request.request_id, order=order, birthday_month=request.birthday_month, rules=rules
            ),
            lambda book, row: points_pb2.EarnForOrderResponse(
                earning=earning_proto(row), account=account_proto(rules, book)
            ),
        )

    def PreviewEarn(
        self, request: points_pb2.PreviewEarnRequest, context: grpc.ServicerContext
    ) -> points_pb2.PreviewEarnResponse:
        v = Violations()
        order = parse_order(v, request.order, "order", now=self.ctx.clock())
        v.check(0 <= request.birthday_month <= 12, "birthday_month", "must be 1..12, or 0 when unknown")
        v.raise_if_any()
        assert order is not None
        rules = self._rules(request.shop_id)

        def preview(book: MemberBook) -> points_pb2.PreviewEarnResponse:
            earning, growth = earnings.compute_earning(book.facts, order, request.birthday_month, rules)
            return points_pb2.PreviewEarnResponse(
                earning=points_pb2.Earning(
                    order_id=order.order_id,
                    customer_id=order.customer_id,
                    points=earning.points,
                    growth=growth,
                    breakdown=[points_pb2.BreakdownLine(rule=i.rule, points=i.points) for i in earning.breakdown],
                    paid=to_money(order.amount_minor, order.currency),
                    refunded=to_money(0, order.currency),
                )
            )

        return self.ledger.read(earnings.earn_query(request.shop_id, order, rules, self.ctx.clock()), preview)

    def ConfirmOrder(
        self, request: points_pb2.ConfirmOrderRequest, context: grpc.ServicerContext
    ) -> points_pb2.ConfirmOrderResponse:
        v = Violations()
        check_id(v, request.order_id, "order_id")
        v.raise_if_any()
        rules = self._rules(request.shop_id)
        return self.ledger.mutate(
            request,
            points_pb2.ConfirmOrderResponse,
            earnings.order_query(request.shop_id, request.order_id, rules, self.ctx.clock(), refund=False),
            lambda book, _others: earnings.confirm_order(
                book, order_id=request.order_id, request_id=request.request_id, rules=rules
            ),
            lambda book, row: points_pb2.ConfirmOrderResponse(
                earning=earning_proto(row), account=account_proto(rules, book)
            ),
        )

    def RefundOrder(
        self, request: points_pb2.RefundOrderRequest, context: grpc.ServicerContext
    ) -> points_pb2.RefundOrderResponse:
        v = Violations()
        check_id(v, request.order_id, "order_id")
        check_amount(v, request.amount.amount_minor, "amount.amount_minor", allow_zero=False)
        check_currency(v, request.amount.currency, "amount.currency")
        v.raise_if_any()
        rules = self._rules(request.shop_id)

        def refund(book: MemberBook, others: Callable[[str], MemberBook]) -> earnings.RefundOutcome:
            return earnings.refund_order(
                book,
                order_id=request.order_id,
                request_id=request.request_id,
                amount_minor=request.amount.amount_minor,
                currency=request.amount.currency,
                payer_book=others,
            )

        return self.ledger.mutate(
            request,
            points_pb2.RefundOrderResponse,
            earnings.order_query(request.shop_id, request.order_id, rules, self.ctx.clock(), refund=True),
            refund,
            lambda book, outcome: points_pb2.RefundOrderResponse(
                earning=earning_proto(outcome.earning),
                points_clawed_back=outcome.points_clawed_back,
                growth_clawed_back=outcome.growth_clawed_back,
                points_restored=outcome.points_restored,
                points_not_restored_expired=outcome.points_not_restored_expired,
                account=account_proto(rules, book),
            ),
        )

    # -- spending and the mall

    def SpendPoints(
        self, request: points_pb2.SpendPointsRequest, context: grpc.ServicerContext
    ) -> points_pb2.SpendPointsResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        check_id(v, request.order_id, "order_id")
        check_amount(v, request.order_amount.amount_minor, "order_amount.amount_minor", allow_zero=False)
        check_currency(v, request.order_amount.currency, "order_amount.currency")
        v.check(0 < request.points <= MAX_SPEND_POINTS, "points", f"must be 1..{MAX_SPEND_POINTS}")
        v.raise_if_any()
        rules = self._rules(request.shop_id)
        currency = request.order_amount.currency
        return self.ledger.mutate(
            request,
            points_pb2.SpendPointsResponse,
            self._member_query(
                request.shop_id, request.customer_id, rules, lots_of=frozenset({Asset.POINTS}), entry_ids=2
            ),
            lambda book, _others: earnings.spend_points(
                book,
                request_id=request.request_id,
                order_id=request.order_id,
                order_amount_minor=request.order_amount.amount_minor,
                currency=currency,
                points=request.points,
                rules=rules,
            ),
            lambda book, spent: points_pb2.SpendPointsResponse(
                entry=entry_proto(spent[0]), discount=to_money(spent[1], currency), account=account_proto(rules, book)
            ),
        )

    def UpsertMallItem(
        self, request: points_pb2.UpsertMallItemRequest, context: grpc.ServicerContext
    ) -> points_pb2.UpsertMallItemResponse:
        item = request.item
        v = Violations()
        check_id(v, item.item_id, "item.item_id")
        check_text(v, item.name, "item.name", max_length=200)
        v.check(bool(item.name), "item.name", "is required")
        v.check(0 < item.cost_points <= MAX_SPEND_POINTS, "item.cost_points", f"must be 1..{MAX_SPEND_POINTS}")
        v.check(0 <= item.stock <= 10**9, "item.stock", "must be 0..1000000000")
        v.check(0 <= item.per_customer_limit <= 10**6, "item.per_customer_limit", "must be 0..1000000")
        starts = (
            from_timestamp(v, item.starts_at, "item.starts_at", present=True) if item.HasField("starts_at") else None
        )
        ends = from_timestamp(v, item.ends_at, "item.ends_at", present=True) if item.HasField("ends_at") else None
        v.check(starts is None or ends is None or starts < ends, "item.ends_at", "must be after starts_at")
        v.raise_if_any()

        def apply(session: Session) -> points_pb2.UpsertMallItemResponse:
            row = mall.upsert_mall_item(session, shop_id=request.shop_id, item=item, now=self.ctx.clock())
            return points_pb2.UpsertMallItemResponse(item=item_proto(row))

        return self._mutate(request, points_pb2.UpsertMallItemResponse, apply)

    def ListMallItems(
        self, request: points_pb2.ListMallItemsRequest, context: grpc.ServicerContext
    ) -> points_pb2.ListMallItemsResponse:
        size = page_size(request.page_size)
        query = f"mall:{request.shop_id}"
        position = decode_token(request.page_token, query=query)
        after = str(position.get("after", "")) if position else ""
        rows = self.ctx.db.run(lambda s: mall.list_mall_items(s, shop_id=request.shop_id, after=after, limit=size + 1))
        page, more = rows[:size], len(rows) > size
        token = encode_token(Cursor(query, {"after": page[-1].item_id})) if more else ""
        return points_pb2.ListMallItemsResponse(items=[item_proto(r) for r in page], next_page_token=token)

    def Redeem(self, request: points_pb2.RedeemRequest, context: grpc.ServicerContext) -> points_pb2.RedeemResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        check_id(v, request.item_id, "item_id")
        v.check(1 <= request.quantity <= MAX_REDEEM_QUANTITY, "quantity", f"must be 1..{MAX_REDEEM_QUANTITY}")
        v.raise_if_any()
        rules = self._rules(request.shop_id)
        return self.ledger.mutate(
            request,
            points_pb2.RedeemResponse,
            self._member_query(
                request.shop_id,
                request.customer_id,
                rules,
                lots_of=frozenset({Asset.POINTS}),
                item_id=request.item_id,
                entry_ids=2,
            ),
            lambda book, _others: mall.redeem(
                book, request_id=request.request_id, item_id=request.item_id, quantity=request.quantity
            ),
            lambda book, redeemed: points_pb2.RedeemResponse(
                entry=entry_proto(redeemed[0]), item=item_proto(redeemed[1]), account=account_proto(rules, book)
            ),
        )

    # -- stored value and rebate credit

    def _check_money(self, v: Violations, money: common_pb2.Money, path: str) -> None:
        check_amount(v, money.amount_minor, f"{path}.amount_minor", allow_zero=False)
        check_currency(v, money.currency, f"{path}.currency")

    def _check_payment(self, request: points_pb2.SpendStoredValueRequest | points_pb2.SpendRebateRequest) -> None:
        """A payment toward an order from a balance: who pays, for which order, how much."""
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        check_id(v, request.order_id, "order_id")
        self._check_money(v, request.amount, "amount")
        v.raise_if_any()

    def TopUp(self, request: points_pb2.TopUpRequest, context: grpc.ServicerContext) -> points_pb2.TopUpResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        check_id(v, request.top_up_id, "top_up_id")
        self._check_money(v, request.paid, "paid")
        v.raise_if_any()
        rules = self._rules(request.shop_id)
        return self.ledger.mutate(
            request,
            points_pb2.TopUpResponse,
            self._member_query(request.shop_id, request.customer_id, rules, top_up_id=request.top_up_id, entry_ids=4),
            lambda book, _others: wallet.top_up(
                book,
                request_id=request.request_id,
                top_up_id=request.top_up_id,
                paid_minor=request.paid.amount_minor,
                currency=request.paid.currency,
                rules=rules,
            ),
            lambda book, record: points_pb2.TopUpResponse(
                principal_minor=record.paid_minor, bonus_minor=record.bonus_minor, account=account_proto(rules, book)
            ),
        )

    def RefundTopUp(
        self, request: points_pb2.RefundTopUpRequest, context: grpc.ServicerContext
    ) -> points_pb2.RefundTopUpResponse:
        v = Violations()
        check_id(v, request.top_up_id, "top_up_id")
        v.raise_if_any()
        rules = self._rules(request.shop_id)

        def apply(session: Session) -> points_pb2.RefundTopUpResponse:
            owner = store.top_up_owner(session, shop_id=request.shop_id, top_up_id=request.top_up_id)
            query = self._member_query(
                request.shop_id, owner, rules, top_up_id=request.top_up_id, lots_of=wallet.STORED_VALUE
            )
            book = store.member_book(session, query)
            refund = wallet.refund_top_up(book, request_id=request.request_id, top_up_id=request.top_up_id)
            store.save_member(session, book)
            return points_pb2.RefundTopUpResponse(
                refund=to_money(refund.refund_minor, refund.currency),
                principal_removed_minor=refund.principal_removed,
                bonus_removed_minor=refund.bonus_removed,
                bonus_spent_deducted_minor=refund.bonus_spent,
                account=account_proto(rules, book),
            )

        return self._mutate(request, points_pb2.RefundTopUpResponse, apply)

    def SpendStoredValue(
        self, request: points_pb2.SpendStoredValueRequest, context: grpc.ServicerContext
    ) -> points_pb2.SpendStoredValueResponse:
        self._check_payment(request)
        rules = self._rules(request.shop_id)
        return self.ledger.mutate(
            request,
            points_pb2.SpendStoredValueResponse,
            self._member_query(request.shop_id, request.customer_id, rules, lots_of=wallet.STORED_VALUE, entry_ids=4),
            lambda book, _others: wallet.spend_stored_value(
                book,
                request_id=request.request_id,
                order_id=request.order_id,
                amount_minor=request.amount.amount_minor,
                currency=request.amount.currency,
                rules=rules,
            ),
            lambda book, drawn: points_pb2.SpendStoredValueResponse(
                principal_minor=drawn[0], bonus_minor=drawn[1], account=account_proto(rules, book)
            ),
        )

    def SpendRebate(
        self, request: points_pb2.SpendRebateRequest, context: grpc.ServicerContext
    ) -> points_pb2.SpendRebateResponse:
        self._check_payment(request)
        rules = self._rules(request.shop_id)
        return self.ledger.mutate(
            request,
            points_pb2.SpendRebateResponse,
            self._member_query(
                request.shop_id, request.customer_id, rules, lots_of=frozenset({Asset.REBATE}), entry_ids=2
            ),
            lambda book, _others: wallet.spend_rebate(
                book,
                request_id=request.request_id,
                order_id=request.order_id,
                amount_minor=request.amount.amount_minor,
                currency=request.amount.currency,
                rules=rules,
            ),
            lambda book, entry: points_pb2.SpendRebateResponse(
                entry=entry_proto(entry), account=account_proto(rules, book)
            ),
        )

    # -- rewards and coupons

    def ClaimReward(
        self, request: points_pb2.ClaimRewardRequest, context: grpc.ServicerContext
    ) -> points_pb2.ClaimRewardResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.check(request.event in points_pb2.RewardEvent.values() and request.event != 0, "event", "unknown event")
        if request.event == points_pb2.REWARD_EVENT_REVIEW_WITH_PHOTOS:
            check_id(v, request.order_id, "order_id")
        if request.event == points_pb2.REWARD_EVENT_REFERRAL:
            check_id(v, request.referee_id, "referee_id")
            v.check(request.referee_id != request.customer_id, "referee_id", "a member cannot refer themselves")
        if request.event == points_pb2.REWARD_EVENT_BIRTHDAY:
            v.check(1 <= request.birthday_month <= 12, "birthday_month", "must be 1..12")
        v.raise_if_any()

        def apply(session: Session) -> points_pb2.ClaimRewardResponse:
            rules = self._program(session, request.shop_id)
            now = self.ctx.clock()
            grant, books = rewards.claim_reward(
                session,
                shop_id=request.shop_id,
                request_id=request.request_id,
                customer_id=request.customer_id,
                event=request.event,
                order_id=request.order_id,
                referee_id=request.referee_id if request.event == points_pb2.REWARD_EVENT_REFERRAL else "",
                birthday_month=request.birthday_month,
                rules=rules,
                now=now,
            )
            return points_pb2.ClaimRewardResponse(
                points=grant.points,
                referee_points=grant.referee_points,
                coupons=[coupon_proto(c, now) for c in grant.coupons],
                account=account_proto(rules, books[request.customer_id]),
            )

        return self._mutate(request, points_pb2.ClaimRewardResponse, apply)

    def IssueCoupon(
        self, request: points_pb2.IssueCouponRequest, context: grpc.ServicerContext
    ) -> points_pb2.IssueCouponResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        check_id(v, request.template_id, "template_id")
        check_text(v, request.source, "source", max_length=64)
        v.raise_if_any()

        def apply(session: Session) -> points_pb2.IssueCouponResponse:
            rules = self._program(session, request.shop_id)
            now = self.ctx.clock()
            coupon = rewards.issue_coupon(
                session,
                shop_id=request.shop_id,
                customer_id=request.customer_id,
                template=rewards.coupon_template(rules, request.template_id),
                source=request.source,
                now=now,
            )
            return points_pb2.IssueCouponResponse(coupon=coupon_proto(coupon, now))

        return self._mutate(request, points_pb2.IssueCouponResponse, apply)

    def ListCoupons(
        self, request: points_pb2.ListCouponsRequest, context: grpc.ServicerContext
    ) -> points_pb2.ListCouponsResponse:
        coupons, token = self._newest_first_page(request, "coupons", rewards.list_coupons)
        now = self.ctx.clock()
        return points_pb2.ListCouponsResponse(coupons=[coupon_proto(c, now) for c in coupons], next_page_token=token)

    def RedeemCoupon(
        self, request: points_pb2.RedeemCouponRequest, context: grpc.ServicerContext
    ) -> points_pb2.RedeemCouponResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        check_id(v, request.order_id, "order_id")
        v.check(
            rewards.coupon_id_number(request.coupon_id) is not None,
            "coupon_id",
            "must be a coupon id this service issued",
        )
        self._check_money(v, request.order_amount, "order_amount")
        v.raise_if_any()

        def apply(session: Session) -> points_pb2.RedeemCouponResponse:
            rules = self._program(session, request.shop_id)
            now = self.ctx.clock()
            coupon = rewards.redeem_coupon(
                session,
                shop_id=request.shop_id,
                customer_id=request.customer_id,
                coupon_id=request.coupon_id,
                order_id=request.order_id,
                order_amount_minor=request.order_amount.amount_minor,
                currency=request.order_amount.currency,
                rules=rules,
                now=now,
            )
            return points_pb2.RedeemCouponResponse(coupon=coupon_proto(coupon, now))

        return self._mutate(request, points_pb2.RedeemCouponResponse, apply)

    # -- privacy

    def EraseCustomer(
        self, request: points_pb2.EraseCustomerRequest, context: grpc.ServicerContext
    ) -> points_pb2.EraseCustomerResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.raise_if_any()

        def apply(session: Session) -> points_pb2.EraseCustomerResponse:
            anonymous, rows = erasure.erase_customer(session, shop_id=request.shop_id, customer_id=request.customer_id)
            return points_pb2.EraseCustomerResponse(anonymous_id=anonymous, rows_anonymised=rows)

        return self._mutate(request, points_pb2.EraseCustomerResponse, apply)

    # -- campaigns

    def GrantToSegment(
        self, request: points_pb2.GrantToSegmentRequest, context: grpc.ServicerContext
    ) -> Iterator[points_pb2.GrantToSegmentResponse]:
        v = Violations()
        check_id(v, request.campaign_id, "campaign_id")
        check_id(v, request.segment_id, "segment_id")
        v.check(request.segment_version >= 0, "segment_version", "must not be negative")
        v.check(0 <= request.points <= MAX_ADJUSTMENT, "points", f"must be 0..{MAX_ADJUSTMENT}")
        v.check(bool(request.points or request.coupon_template_id), "points", "grant points, a coupon or both")
        if request.coupon_template_id:
            check_id(v, request.coupon_template_id, "coupon_template_id")
        v.raise_if_any()
        shop_id = request.shop_id
        if request.coupon_template_id:  # an unknown template is refused before anyone gets anything
            self.ctx.db.run(lambda s: rewards.coupon_template(self._program(s, shop_id), request.coupon_template_id))
        segments = segmentation_pb2_grpc.SegmentationServiceStub(self.ctx.peers.channel("segmentation"))

        def members_page(version: int, token: str) -> segmentation_pb2.ListSegmentMembersResponse:
            try:
                page: segmentation_pb2.ListSegmentMembersResponse = segments.ListSegmentMembers(
                    segmentation_pb2.ListSegmentMembersRequest(
                        shop_id=shop_id,
                        segment_id=request.segment_id,
                        version=version,
                        page_size=CAMPAIGN_PAGE,
                        page_token=token,
                    ),
                    timeout=PEER_TIMEOUT_SECONDS,
                )
            except grpc.RpcError as exc:
                if rpc_code(exc) == grpc.StatusCode.NOT_FOUND:  # no such segment, version, or no evaluation yet
                    raise NotFound(f"segmentation: {exc.details()}", reason="SEGMENT_NOT_FOUND") from exc
                raise
            return page

        page = members_page(request.segment_version, "")
        campaign = self.ctx.db.run(
            lambda s: rewards.fix_campaign(
                s,
                shop_id=shop_id,
                campaign_id=request.campaign_id,
                segment_id=request.segment_id,
                segment_version=page.version,
                points=request.points,
                coupon_template_id=request.coupon_template_id,
                now=self.ctx.clock(),
            )
        )
        if campaign.segment_version != page.version:  # a rerun grants the version its first run pinned
            page = members_page(campaign.segment_version, "")
        seen = granted = already = 0
        while True:

            def grant(session: Session, ids: tuple[str, ...] = tuple(page.customer_ids)) -> tuple[int, int]:
                rules = self._program(session, shop_id)
                return rewards.grant_campaign_page(
                    session, campaign=campaign, customer_ids=ids, rules=rules, now=self.ctx.clock()
                )

            new, had = self.ctx.db.run(grant)
            seen, granted, already = seen + len(page.customer_ids), granted + new, already + had
            done = not page.next_page_token
            yield points_pb2.GrantToSegmentResponse(
                members_seen=seen,
                granted=granted,
                already_granted=already,
                segment_version=campaign.segment_version,
                done=done,
            )
            if done:
                return
            page = members_page(campaign.segment_version, page.next_page_token)

    def StreamMemberStandings(
        self, request: points_pb2.StreamMemberStandingsRequest, context: grpc.ServicerContext
    ) -> Iterator[points_pb2.StreamMemberStandingsResponse]:
        if request.after_customer_id:
            v = Violations()
            check_id(v, request.after_customer_id, "after_customer_id")
            v.raise_if_any()
        after = request.after_customer_id

        def batch_after(session: Session, start: str) -> list[tuple[str, int, str]]:
            return store.member_standings(session, shop_id=request.shop_id, after=start, limit=STANDINGS_BATCH)

        while True:  # one short transaction per batch: a long stream never holds a snapshot open
            batch = self.ctx.db.run(functools.partial(batch_after, start=after))
            for customer_id, balance, tier in batch:
                yield points_pb2.StreamMemberStandingsResponse(
                    customer_id=customer_id, points_balance=balance, tier=tier
                )
            if len(batch) < STANDINGS_BATCH:
                return
            after = batch[-1][0]


def register(server: grpc.Server, ctx: ServiceContext) -> None:
    points_pb2_grpc.add_PointsServiceServicer_to_server(PointsServicer(ctx), server)
