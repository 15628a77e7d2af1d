"""CycleDeliveryService: proto <-> domain translation and validation."""

from __future__ import annotations

from datetime import date

import grpc
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2, cycle_delivery_pb2_grpc

from services.common.convert import from_date, to_date
from services.common.errors import Violations
from services.common.server import ServiceContext
from services.cycle_delivery.schedule import Cadence, Rule, schedule

MAX_BLACKOUT_DATES = 2000


def parse_rule(v: Violations, rule: cycle_delivery_pb2.ScheduleRule) -> Rule | None:
    if int(rule.cadence) not in {c.value for c in Cadence}:
        v.add("rule.cadence", "must be one of CADENCE_DAILY, CADENCE_EVERY_N_DAYS, CADENCE_WEEKLY, CADENCE_MONTHLY")
        return None
    v.check(len(rule.weekdays) <= 7 and len(rule.month_days) <= 31, "rule", "too many weekdays or month days")
    return Rule(
        cadence=Cadence(rule.cadence),
        interval_days=rule.interval_days,
        weekdays=frozenset(int(d) for d in rule.weekdays[:7]),
        month_days=frozenset(rule.month_days[:31]),
    )


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
        v.check(
            len(request.blackout_dates) <= MAX_BLACKOUT_DATES, "blackout_dates", f"at most {MAX_BLACKOUT_DATES} dates"
        )
        blackout: set[date] = set()
        for i, day in enumerate(request.blackout_dates[:MAX_BLACKOUT_DATES]):
            parsed = from_date(v, day, f"blackout_dates[{i}]")
            if parsed is not None:
                blackout.add(parsed)
        v.raise_if_any()
        assert rule is not None
        assert start is not None
        dates = schedule(
            rule,
            start,
            delivery_count=request.delivery_count or None,
            end_date=end,
            blackout=frozenset(blackout),
        )
        return cycle_delivery_pb2.PreviewScheduleResponse(dates=[to_date(d) for d in dates])


def register(server: grpc.Server, ctx: ServiceContext) -> None:
    cycle_delivery_pb2_grpc.add_CycleDeliveryServiceServicer_to_server(CycleDeliveryServicer(ctx), server)
