"""Plans as merchants set them (proto), validated into the `Terms` the calendar code works with."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, time
from zoneinfo import ZoneInfo

from loyalty.common.v1 import common_pb2
from loyalty.cycle_delivery.v1 import cycle_delivery_pb2

from services.common.convert import from_date
from services.common.errors import Violations
from services.common.validation import check_amount, check_currency, check_id, check_text, check_time_zone
from services.cycle_delivery.deliveries import Terms
from services.cycle_delivery.schedule import MAX_DELIVERIES, Cadence, Rule

MAX_BLACKOUT_DATES = 2000
MAX_LEAD_TIME_DAYS = 60
DELIVERY_MODES = frozenset(cycle_delivery_pb2.DeliveryMode.values()) - {0}


def parse_rule(v: Violations, rule: cycle_delivery_pb2.ScheduleRule, path: str = "rule") -> Rule | None:
    if int(rule.cadence) not in {c.value for c in Cadence}:
        v.add(f"{path}.cadence", "must be one of CADENCE_DAILY, CADENCE_EVERY_N_DAYS, CADENCE_WEEKLY, CADENCE_MONTHLY")
        return None
    parsed = Rule(  # the lists are sets: a repeated day is the same day (their values are checked below)
        cadence=Cadence(rule.cadence),
        interval_days=rule.interval_days,
        weekdays=frozenset(int(d) for d in rule.weekdays),
        month_days=frozenset(rule.month_days),
    )
    for problem in parsed.problems():
        v.add(problem.field.replace("rule", path, 1), problem.description)
    return parsed


def parse_dates(v: Violations, dates: Iterable[common_pb2.Date], path: str) -> frozenset[date]:
    found: set[date] = set()
    items = list(dates)
    v.check(len(items) <= MAX_BLACKOUT_DATES, path, f"at most {MAX_BLACKOUT_DATES} dates")
    for i, day in enumerate(items[:MAX_BLACKOUT_DATES]):
        parsed = from_date(v, day, f"{path}[{i}]")
        if parsed is not None:
            found.add(parsed)
    return frozenset(found)


def plan_terms(v: Violations, plan: cycle_delivery_pb2.Plan, default_zone: str, path: str = "plan") -> Terms | None:
    """The terms a plan sells, or None with every problem recorded in `v`."""
    before = len(v.found)
    check_id(v, plan.plan_id, f"{path}.plan_id")
    check_text(v, plan.sku, f"{path}.sku", max_length=64)
    v.check(bool(plan.sku), f"{path}.sku", "is required")
    check_text(v, plan.name, f"{path}.name", max_length=200)
    rule = parse_rule(v, plan.rule, f"{path}.rule")
    v.check(1 <= plan.delivery_count <= MAX_DELIVERIES, f"{path}.delivery_count", f"must be 1..{MAX_DELIVERIES}")
    v.check(
        0 <= plan.lead_time_days <= MAX_LEAD_TIME_DAYS, f"{path}.lead_time_days", f"must be 0..{MAX_LEAD_TIME_DAYS}"
    )
    v.check(0 <= plan.cutoff_minute < 24 * 60, f"{path}.cutoff_minute", "must be 0..1439")
    v.check(set(plan.delivery_modes) <= DELIVERY_MODES, f"{path}.delivery_modes", "unknown delivery mode")
    check_amount(v, plan.price_per_delivery.amount_minor, f"{path}.price_per_delivery.amount_minor")
    check_currency(v, plan.price_per_delivery.currency, f"{path}.price_per_delivery.currency")
    blackout = parse_dates(v, plan.blackout_dates, f"{path}.blackout_dates")
    zone = check_time_zone(v, plan.time_zone or default_zone, f"{path}.time_zone") or ZoneInfo("UTC")
    if len(v.found) > before or rule is None:
        return None
    return Terms(
        rule=rule,
        delivery_count=plan.delivery_count,
        lead_time_days=plan.lead_time_days,
        cutoff=time(plan.cutoff_minute // 60, plan.cutoff_minute % 60),
        zone=zone,
        blackout=blackout,
        price_per_delivery_minor=plan.price_per_delivery.amount_minor,
    )
