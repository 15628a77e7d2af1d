"""Plan rules as merchants send them: repeated days are one day, problems name their field, long plans fit."""

from __future__ import annotations

from datetime import date

from loyalty.cycle_delivery.v1 import cycle_delivery_pb2 as cd

from services.common.errors import Violations
from services.cycle_delivery.plans import parse_rule
from services.cycle_delivery.schedule import Cadence, Rule, schedule

WEEK = [day for day in cd.Weekday.values() if day] + [cd.WEEKDAY_SUNDAY]  # Monday..Sunday, then Sunday again


def test_a_weekday_named_twice_is_one_weekday_whatever_the_list_length() -> None:
    v = Violations()
    rule = parse_rule(v, cd.ScheduleRule(cadence=cd.CADENCE_WEEKLY, weekdays=WEEK))
    assert v.found == []  # was "rule: too many weekdays or month days"
    assert rule is not None
    assert rule.weekdays == frozenset(range(1, 8))
    monthly = parse_rule(v, cd.ScheduleRule(cadence=cd.CADENCE_MONTHLY, month_days=[1, 15] * 20))
    assert v.found == []
    assert monthly is not None
    assert monthly.month_days == frozenset({1, 15})


def test_a_bad_day_is_named_by_its_field() -> None:
    v = Violations()
    parse_rule(v, cd.ScheduleRule(cadence=cd.CADENCE_MONTHLY, month_days=[0, 32]), "plan.rule")
    assert [f.field for f in v.found] == ["plan.rule.month_days"]


def test_a_six_year_monthly_plan_is_scheduled() -> None:
    rule = Rule(cadence=Cadence.MONTHLY, month_days=frozenset({1}))
    dates = schedule(rule, date(2027, 1, 1), end_date=date(2033, 1, 1))
    assert (len(dates), dates[0], dates[-1]) == (73, date(2027, 1, 1), date(2033, 1, 1))
