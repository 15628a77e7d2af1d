"""CycleDeliveryService: proto <-> domain translation and validation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2, cycle_delivery_pb2_grpc
from sqlalchemy.orm import Session

from services.common.convert import from_date, to_date, to_money, to_timestamp
from services.common.errors import FailedPrecondition, Violations
from services.common.idempotency import run_idempotent
from services.common.orders import parse_order
from services.common.paging import Cursor, decode_token, encode_token, page_size
from services.common.server import ServiceContext
from services.common.validation import check_id, check_text
from services.cycle_delivery import deliveries, store
from services.cycle_delivery.plans import DELIVERY_MODES, parse_dates, parse_rule, plan_terms
from services.cycle_delivery.schedule import schedule

R = TypeVar("R", bound=Message)
MAX_QUANTITY = 100
CHANGE_KINDS = frozenset(cycle_delivery_pb2.ChangeKind.values()) - {0}


class CycleDeliveryServicer(cycle_delivery_pb2_grpc.CycleDeliveryServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def PreviewSchedule(
        self, request: cycle_delivery_pb2.PreviewScheduleRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.PreviewScheduleResponse:
        v = Violations()
        rule = parse_rule(v, request.rule)
        start = from_date(v, request.start_date, "start_date") if request.HasField("start_date") else None
        if not request.HasField("start_date"):
            v.add("start_date", "is required")
        end = from_date(v, request.end_date, "end_date") if request.HasField("end_date") else None
        blackout = parse_dates(v, request.blackout_dates, "blackout_dates")
        v.raise_if_any()
        assert rule is not None
        assert start is not None
        dates = schedule(
            rule,
            start,
            delivery_count=request.delivery_count or None,
            end_date=end,
            blackout=blackout,
        )
        return cycle_delivery_pb2.PreviewScheduleResponse(dates=[to_date(d) for d in dates])

    # -- plans

    def UpsertPlan(
        self, request: cycle_delivery_pb2.UpsertPlanRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.UpsertPlanResponse:
        v = Violations()
        plan_terms(v, request.plan, self.ctx.settings.default_time_zone)
        v.raise_if_any()

        def apply(session: Session) -> cycle_delivery_pb2.UpsertPlanResponse:
            store.save_plan(session, shop_id=request.shop_id, plan=request.plan, now=self.ctx.clock())
            return cycle_delivery_pb2.UpsertPlanResponse(plan=request.plan)

        return self._mutate(request, cycle_delivery_pb2.UpsertPlanResponse, apply)

    def GetPlan(
        self, request: cycle_delivery_pb2.GetPlanRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.GetPlanResponse:
        v = Violations()
        check_id(v, request.plan_id, "plan_id")
        v.raise_if_any()
        plan = self.ctx.db.run(lambda s: store.load_plan(s, shop_id=request.shop_id, plan_id=request.plan_id))
        return cycle_delivery_pb2.GetPlanResponse(plan=plan)

    # -- subscriptions

    def _mutate(self, request: Message, response_type: type[R], apply: Callable[[Session], R]) -> R:
        return run_idempotent(self.ctx.db, request, response_type, apply, clock=self.ctx.clock)

    def _load(self, session: Session, shop_id: str, subscription_id: str) -> store.Loaded:
        return store.load_for_change(
            session, shop_id=shop_id, subscription_id=subscription_id, default_zone=self.ctx.settings.default_time_zone
        )

    def CreateSubscription(
        self, request: cycle_delivery_pb2.CreateSubscriptionRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.CreateSubscriptionResponse:
        v = Violations()
        order = parse_order(v, request.order, "order", now=self.ctx.clock())
        check_id(v, request.plan_id, "plan_id")
        v.check(1 <= request.quantity <= MAX_QUANTITY, "quantity", f"must be 1..{MAX_QUANTITY}")
        check_text(v, request.address, "address", max_length=300)
        v.check(bool(request.address.strip()), "address", "is required")
        v.check(request.delivery_mode in DELIVERY_MODES, "delivery_mode", "must be a DELIVERY_MODE_* value")
        start = from_date(v, request.start_date, "start_date") if request.HasField("start_date") else None
        if not request.HasField("start_date"):
            v.add("start_date", "is required")
        v.raise_if_any()
        assert order is not None
        assert start is not None

        def apply(session: Session) -> cycle_delivery_pb2.CreateSubscriptionResponse:
            loaded = store.create_subscription(
                session,
                shop_id=request.shop_id,
                order=order,
                plan_id=request.plan_id,
                quantity=request.quantity,
                address=request.address,
                delivery_mode=request.delivery_mode,
                start=start,
                default_zone=self.ctx.settings.default_time_zone,
                now=self.ctx.clock(),
            )
            return cycle_delivery_pb2.CreateSubscriptionResponse(subscription=subscription_proto(loaded))

        return self._mutate(request, cycle_delivery_pb2.CreateSubscriptionResponse, apply)

    def GetSubscription(
        self, request: cycle_delivery_pb2.GetSubscriptionRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.GetSubscriptionResponse:
        v = Violations()
        check_id(v, request.subscription_id, "subscription_id")
        v.raise_if_any()
        loaded = self.ctx.db.run(
            lambda s: store.load(
                s,
                shop_id=request.shop_id,
                subscription_id=request.subscription_id,
                default_zone=self.ctx.settings.default_time_zone,
                lock=False,
            )
        )
        return cycle_delivery_pb2.GetSubscriptionResponse(subscription=subscription_proto(loaded))

    def GetDeliveryCalendar(
        self, request: cycle_delivery_pb2.GetDeliveryCalendarRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.GetDeliveryCalendarResponse:
        v = Violations()
        first = from_date(v, request.from_date, "from_date")
        last = from_date(v, request.to_date, "to_date")
        if first is not None and last is not None:
            v.check(first <= last, "to_date", "must not be before from_date")
            v.check((last - first).days < deliveries.MAX_CALENDAR_DAYS, "to_date", "at most 365 days after from_date")
        v.raise_if_any()
        assert first is not None
        assert last is not None
        counts = self.ctx.db.run(lambda s: store.delivery_counts(s, shop_id=request.shop_id, first=first, last=last))
        return cycle_delivery_pb2.GetDeliveryCalendarResponse(
            days=[
                cycle_delivery_pb2.DeliveryDay(
                    day=to_date(d.day),
                    planned=d.planned,
                    paused=d.paused,
                    created=d.created,
                    shipped=d.shipped,
                    delivered=d.delivered,
                    skipped=d.skipped,
                    cancelled=d.cancelled,
                    units=d.units,
                )
                for d in deliveries.calendar_days(counts, first, last)
            ]
        )

    def ListSubscriptions(
        self, request: cycle_delivery_pb2.ListSubscriptionsRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.ListSubscriptionsResponse:
        v = Violations()
        due = from_date(v, request.due_date, "due_date") if request.HasField("due_date") else None
        v.check(
            (due is None) != (not request.customer_id), "customer_id", "set exactly one of customer_id and due_date"
        )
        if request.customer_id:
            check_id(v, request.customer_id, "customer_id")
        v.raise_if_any()
        size = page_size(request.page_size)
        query = f"subscriptions:{request.shop_id}:{request.customer_id}:{due}"
        position = decode_token(request.page_token, query=query)
        after = str(position.get("after", "")) if position else ""
        zone = self.ctx.settings.default_time_zone

        def page(session: Session) -> list[store.Loaded]:
            ids = store.list_subscriptions(
                session,
                shop_id=request.shop_id,
                customer_id=request.customer_id,
                due_day=due,
                after=after,
                limit=size + 1,
            )
            return [
                store.load(session, shop_id=request.shop_id, subscription_id=i, default_zone=zone, lock=False)
                for i in ids
            ]

        loaded = self.ctx.db.run(page)
        shown, more = loaded[:size], len(loaded) > size
        token = encode_token(Cursor(query, {"after": shown[-1].record.subscription_id})) if more else ""
        return cycle_delivery_pb2.ListSubscriptionsResponse(
            subscriptions=[subscription_proto(x) for x in shown], next_page_token=token
        )

    def ChangeDeliveries(
        self, request: cycle_delivery_pb2.ChangeDeliveriesRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.ChangeDeliveriesResponse:
        v = Violations()
        check_id(v, request.subscription_id, "subscription_id")
        v.check(request.kind in CHANGE_KINDS, "kind", "must be a CHANGE_KIND_* value")
        v.check(request.index >= 0, "index", "must not be negative")
        new_day = None
        if request.kind == cycle_delivery_pb2.CHANGE_KIND_CHANGE_DATE:
            new_day = from_date(v, request.new_date, "new_date") if request.HasField("new_date") else None
            v.check(request.HasField("new_date"), "new_date", "is required for CHANGE_KIND_CHANGE_DATE")
        if request.kind == cycle_delivery_pb2.CHANGE_KIND_UPDATE_DETAILS:
            v.check(0 <= request.quantity <= MAX_QUANTITY, "quantity", f"must be 0 (unchanged) or 1..{MAX_QUANTITY}")
            check_text(v, request.address, "address", max_length=300)
            v.check(bool(request.quantity or request.address.strip()), "quantity", "change quantity, address or both")
        new_rule = None
        if request.kind == cycle_delivery_pb2.CHANGE_KIND_CHANGE_CADENCE:
            new_rule = parse_rule(v, request.new_rule, "new_rule")
        v.raise_if_any()

        def apply(session: Session) -> cycle_delivery_pb2.ChangeDeliveriesResponse:
            now = self.ctx.clock()
            loaded = self._load(session, request.shop_id, request.subscription_id)
            cal, terms, anchor, index = loaded.calendar, loaded.terms, loaded.record.anchor, request.index
            refund = 0
            kind = request.kind
            if kind == cycle_delivery_pb2.CHANGE_KIND_SKIP:
                changed = deliveries.skip(cal, terms, anchor, index, now)
            elif kind == cycle_delivery_pb2.CHANGE_KIND_DROP:
                changed, refund = deliveries.drop(cal, terms, index, now)
            elif kind == cycle_delivery_pb2.CHANGE_KIND_POSTPONE_ONE:
                changed = deliveries.postpone_one(cal, terms, anchor, index, now)
            elif kind == cycle_delivery_pb2.CHANGE_KIND_POSTPONE_ALL:
                changed = deliveries.postpone_all(cal, terms, anchor, index, now)
            elif kind == cycle_delivery_pb2.CHANGE_KIND_CHANGE_DATE:
                assert new_day is not None
                changed = deliveries.change_date(cal, terms, index, new_day, now)
            elif kind == cycle_delivery_pb2.CHANGE_KIND_CHANGE_CADENCE:
                assert new_rule is not None
                changed, terms, new_anchor = deliveries.change_cadence(cal, terms, index, new_rule, now)
                store.change_rule(loaded.record, request.new_rule, new_anchor)
                loaded = replace(loaded, terms=terms)
            elif kind == cycle_delivery_pb2.CHANGE_KIND_POSTPONE_MISSED:
                changed = deliveries.postpone_missed(cal, terms, anchor, index)
            else:
                changed = deliveries.update_details(
                    cal, terms, index, now, quantity=request.quantity or None, address=request.address.strip() or None
                )
            store.write_calendar(session, loaded.record, terms, cal, changed, now)
            return cycle_delivery_pb2.ChangeDeliveriesResponse(
                subscription=subscription_proto(replace(loaded, calendar=changed)),
                refund=to_money(refund, loaded.plan.price_per_delivery.currency),
            )

        return self._mutate(request, cycle_delivery_pb2.ChangeDeliveriesResponse, apply)

    def PauseSubscription(
        self, request: cycle_delivery_pb2.PauseSubscriptionRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.PauseSubscriptionResponse:
        check_subscription_id(request.subscription_id)

        def apply(session: Session) -> cycle_delivery_pb2.PauseSubscriptionResponse:
            loaded = self._load(session, request.shop_id, request.subscription_id)
            loaded.record.state, loaded.record.updated_at = store.PAUSED, self.ctx.clock()
            return cycle_delivery_pb2.PauseSubscriptionResponse(subscription=subscription_proto(loaded))

        return self._mutate(request, cycle_delivery_pb2.PauseSubscriptionResponse, apply)

    def ResumeSubscription(
        self, request: cycle_delivery_pb2.ResumeSubscriptionRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.ResumeSubscriptionResponse:
        check_subscription_id(request.subscription_id)

        def apply(session: Session) -> cycle_delivery_pb2.ResumeSubscriptionResponse:
            now = self.ctx.clock()
            loaded = self._load(session, request.shop_id, request.subscription_id)
            if loaded.record.state != store.PAUSED:
                raise FailedPrecondition(f"subscription {request.subscription_id} is not paused", reason="NOT_PAUSED")
            relaid = deliveries.relay_after_pause(loaded.calendar, loaded.terms, loaded.record.anchor, now)
            loaded.record.state = store.ACTIVE
            store.write_calendar(session, loaded.record, loaded.terms, loaded.calendar, relaid, now)
            return cycle_delivery_pb2.ResumeSubscriptionResponse(
                subscription=subscription_proto(replace(loaded, calendar=relaid))
            )

        return self._mutate(request, cycle_delivery_pb2.ResumeSubscriptionResponse, apply)

    def CancelSubscription(
        self, request: cycle_delivery_pb2.CancelSubscriptionRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.CancelSubscriptionResponse:
        check_subscription_id(request.subscription_id)

        def apply(session: Session) -> cycle_delivery_pb2.CancelSubscriptionResponse:
            now = self.ctx.clock()
            loaded = self._load(session, request.shop_id, request.subscription_id)
            changed, cancelled, refund, going_out = deliveries.cancel(loaded.calendar, loaded.terms, now)
            loaded.record.state = store.CANCELLED
            store.write_calendar(session, loaded.record, loaded.terms, loaded.calendar, changed, now)
            return cycle_delivery_pb2.CancelSubscriptionResponse(
                subscription=subscription_proto(replace(loaded, calendar=changed)),
                cancelled_deliveries=cancelled,
                refund=to_money(refund, loaded.plan.price_per_delivery.currency),
                still_going_out=going_out,
            )

        return self._mutate(request, cycle_delivery_pb2.CancelSubscriptionResponse, apply)

    def EraseCustomer(
        self, request: cycle_delivery_pb2.EraseCustomerRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.EraseCustomerResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.raise_if_any()

        def apply(session: Session) -> cycle_delivery_pb2.EraseCustomerResponse:
            anonymous, rows = store.erase_customer(session, shop_id=request.shop_id, customer_id=request.customer_id)
            return cycle_delivery_pb2.EraseCustomerResponse(anonymous_id=anonymous, rows_anonymised=rows)

        return self._mutate(request, cycle_delivery_pb2.EraseCustomerResponse, apply)

    def MarkDelivery(
        self, request: cycle_delivery_pb2.MarkDeliveryRequest, context: grpc.ServicerContext
    ) -> cycle_delivery_pb2.MarkDeliveryResponse:
        check_subscription_id(request.subscription_id)
        v = Violations()
        v.check(
            request.state in (cycle_delivery_pb2.DELIVERY_STATE_SHIPPED, cycle_delivery_pb2.DELIVERY_STATE_DELIVERED),
            "state",
            "must be DELIVERY_STATE_SHIPPED or DELIVERY_STATE_DELIVERED",
        )
        v.raise_if_any()

        def apply(session: Session) -> cycle_delivery_pb2.MarkDeliveryResponse:
            row = store.mark_delivery(
                session,
                shop_id=request.shop_id,
                subscription_id=request.subscription_id,
                index=request.index,
                state=deliveries.DeliveryState(request.state),
                now=self.ctx.clock(),
            )
            return cycle_delivery_pb2.MarkDeliveryResponse(
                delivery=cycle_delivery_pb2.Delivery(
                    index=row.index,
                    date=to_date(row.day),
                    state=row.state,  # type: ignore[arg-type]
                    quantity=row.quantity,
                    delivery_order_id=row.delivery_order_id or "",
                )
            )

        return self._mutate(request, cycle_delivery_pb2.MarkDeliveryResponse, apply)


def check_subscription_id(subscription_id: str) -> None:
    v = Violations()
    check_id(v, subscription_id, "subscription_id")
    v.raise_if_any()


def subscription_proto(loaded: store.Loaded) -> cycle_delivery_pb2.Subscription:
    return cycle_delivery_pb2.Subscription(
        subscription_id=loaded.record.subscription_id,
        customer_id=loaded.record.customer_id,
        plan_id=loaded.record.plan_id,
        state=loaded.record.state,  # type: ignore[arg-type]
        delivery_mode=loaded.record.delivery_mode,  # type: ignore[arg-type]
        remaining=deliveries.remaining(loaded.calendar),
        deliveries=[
            cycle_delivery_pb2.Delivery(
                index=d.index,
                date=to_date(d.day),
                state=shown_state(d.state, paused=loaded.record.state == store.PAUSED),
                quantity=d.quantity,
                delivery_order_id=loaded.order_ids.get(d.index, ""),
                change_deadline=to_timestamp(loaded.terms.deadline(d.day)),
            )
            for d in loaded.calendar
        ],
    )


def shown_state(state: deliveries.DeliveryState, *, paused: bool) -> cycle_delivery_pb2.DeliveryState.ValueType:
    """An open delivery of a paused subscription is shown as paused: it will not be created while paused."""
    if paused and state in deliveries.OPEN:
        return cycle_delivery_pb2.DELIVERY_STATE_PAUSED
    return cycle_delivery_pb2.DeliveryState.ValueType(int(state))


def register(server: grpc.Server, ctx: ServiceContext) -> None:
    cycle_delivery_pb2_grpc.add_CycleDeliveryServiceServicer_to_server(CycleDeliveryServicer(ctx), server)
