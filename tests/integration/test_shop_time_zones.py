"""A shop's own time zone in every day-based RPC of metrics and segmentation, and a zone change that re-settles.

Orders sit at 23:30 and 00:30 local time around month, cohort and 90-day
boundaries and New York's DST change days; every answer is compared with the
pure definitions over the orders' days in the shop's zone, and the data is
checked to give other answers in another zone (else the test could not fail).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2
from loyalty.metrics.v1 import metrics_pb2 as m
from loyalty.metrics.v1 import metrics_pb2_grpc
from loyalty.segmentation.v1 import segmentation_pb2 as s
from loyalty.segmentation.v1 import segmentation_pb2_grpc
from sqlalchemy import select

from services.common.clock import local_date
from services.metrics import definitions as defs
from services.metrics.definitions import Grain, Period, Purchase
from services.metrics.models import Order
from tests.integration.test_metrics_definitions_rpc import d
from tests.integration.test_metrics_rpc import order
from tests.support import FakeClock, Stack, bearer, database_template, details, start_stack

A = bearer("admin")
SHANGHAI, NEW_YORK = ZoneInfo("Asia/Shanghai"), ZoneInfo("America/New_York")
ZONES = ["Asia/Shanghai", "UTC", "America/New_York", "Pacific/Kiritimati"]
# 16:30 UTC: still 31 December in New York and UTC, already 1 January in Shanghai and Kiritimati.
NOW = datetime(2025, 12, 31, 16, 30, tzinfo=UTC)
AS_OF = date(2025, 12, 31)

# (customer, local wall time): each pair straddles a boundary of some day-based number.
WALL_TIMES = [
    ("month", "2025-02-28 23:30"),  # the last minutes before the March period...
    ("month", "2025-03-01 00:30"),  # ...and the first of it
    ("dst-start", "2025-03-09 23:30"),  # New York springs forward on 9 March
    ("dst-start", "2025-03-10 00:30"),
    ("month-end", "2025-03-31 23:30"),
    ("month-end", "2025-04-01 00:30"),
    ("dst-end", "2025-11-01 23:30"),  # and falls back on 2 November
    ("dst-end", "2025-11-02 00:30"),
    ("dst-end", "2025-11-02 23:30"),
    ("cohort-june", "2025-06-30 23:30"),  # last day of the June cohort...
    ("cohort-june", "2025-09-28 23:30"),  # ...and again 90 days later: inside the window
    ("cohort-july", "2025-07-01 00:30"),  # first day of the July cohort
    ("cohort-july", "2025-09-29 00:30"),
    ("day-90", "2025-06-15 12:00"),
    ("day-90", "2025-09-13 23:30"),  # day 90: a repurchase
    ("day-91", "2025-06-15 12:00"),
    ("day-91", "2025-09-14 00:30"),  # day 91: too late
    ("december", "2025-12-31 00:30"),  # today in some zones, tomorrow in none
]
FEEDBACK_WALL_TIMES = [("month-end", "2025-03-31 23:30", 10), ("month-end", "2025-04-01 00:30", 0)]
MARCH = Period(date(2025, 3, 1), date(2025, 3, 31))
APRIL = Period(date(2025, 4, 1), date(2025, 4, 30))
NOVEMBER = Period(date(2025, 11, 1), date(2025, 11, 30))
COHORTS = [Period(date(2025, 6, 1), date(2025, 6, 30)), Period(date(2025, 7, 1), date(2025, 7, 31))]


def at(zone: str, wall: str) -> datetime:
    return datetime.fromisoformat(wall).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def instants(zone: str) -> list[tuple[str, str, datetime]]:
    """(order id, customer, paid at) of the shop in `zone`."""
    return [(f"o{i}", customer, at(zone, wall)) for i, (customer, wall) in enumerate(WALL_TIMES)]


def purchases_in(zone: str, paid: list[tuple[str, str, datetime]]) -> list[Purchase]:
    return [Purchase(o, c, local_date(t, ZoneInfo(zone)), 1000, 0) for o, c, t in paid]


def expected(
    zone: str, paid: list[tuple[str, str, datetime]], answered: list[tuple[str, datetime, int]]
) -> dict[str, Any]:
    """Every number the RPCs below answer, from the pure definitions over the days in `zone`."""
    orders = defs.usable(purchases_in(zone, paid))
    today = local_date(NOW, ZoneInfo(zone))
    days = [local_date(t, ZoneInfo(zone)) for _c, t, _s in answered]
    out: dict[str, Any] = {}
    for name, period in (("march", MARCH), ("november", NOVEMBER)):
        for history in (False, True):
            by_customer = defs.repurchase_rate_by_customer(orders, period, count_history=history)
            by_order = defs.repurchase_rate_by_order(orders, period, count_history=history)
            out[f"rate {name} {history}"] = (by_customer.numerator, by_customer.denominator)
            out[f"orders {name} {history}"] = (by_order.numerator, by_order.denominator)
    for cohort in COHORTS:
        ninety = defs.ninety_day_repurchase(orders, cohort, AS_OF)
        out[f"90d {cohort.start}"] = (ninety.rate.numerator, ninety.rate.denominator, ninety.window_open)
    for grain in Grain:
        out[f"cohorts {grain.name}"] = [
            (r.cohort_start, r.size, list(r.active)) for r in defs.cohort_retention(orders, grain, AS_OF)
        ]
    churn = defs.churn_rate(orders, MARCH, APRIL)
    out["churn"] = (churn.numerator, churn.denominator)
    out["overview orders"] = sum(1 for p in orders if p.day in MARCH)
    out["feedback march"] = sum(1 for day in days if day in MARCH)
    out["features today"] = [
        (f.customer_id, f.purchase_days, f.recency_days, f.age_days, f.days_since_last_order)
        for f in defs.customer_features(orders, today)
    ]
    summaries = {f.customer_id: f for f in defs.customer_features(orders, AS_OF)}
    out["summaries"] = {c: (f.purchase_days, f.frequency, f.recency_days, f.age_days) for c, f in summaries.items()}
    out["today"] = today
    return out


def answers(stack: Stack, shop: str) -> dict[str, Any]:
    """The same numbers, asked of the running services."""
    metrics = metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics"))
    out: dict[str, Any] = {}
    for name, period in (("march", MARCH), ("november", NOVEMBER)):
        span: dict[str, Any] = {"period_start": d(period.start), "period_end": d(period.end)}
        for history in (False, True):
            for key, basis in (("rate", m.REPURCHASE_BASIS_CUSTOMER), ("orders", m.REPURCHASE_BASIS_ORDER)):
                rate = metrics.GetRepurchaseRate(
                    m.GetRepurchaseRateRequest(shop_id=shop, basis=basis, count_history=history, **span), metadata=A
                ).rate
                out[f"{key} {name} {history}"] = (rate.numerator, rate.denominator)
    for cohort in COHORTS:
        stage = metrics.GetRepurchaseStage(
            m.GetRepurchaseStageRequest(
                shop_id=shop, cohort_start=d(cohort.start), cohort_end=d(cohort.end), as_of=d(AS_OF)
            ),
            metadata=A,
        )
        out[f"90d {cohort.start}"] = (stage.rate.numerator, stage.rate.denominator, stage.window_open)
    for grain, proto_grain in ((Grain.WEEK, m.COHORT_GRAIN_WEEK), (Grain.MONTH, m.COHORT_GRAIN_MONTH)):
        rows = metrics.GetCohortRetention(
            m.GetCohortRetentionRequest(shop_id=shop, grain=proto_grain, as_of=d(AS_OF)), metadata=A
        ).rows
        out[f"cohorts {grain.name}"] = [
            (date(r.cohort_start.year, r.cohort_start.month, r.cohort_start.day), r.size, list(r.active)) for r in rows
        ]
    churn = metrics.GetChurnRate(
        m.GetChurnRateRequest(
            shop_id=shop,
            before_start=d(MARCH.start),
            before_end=d(MARCH.end),
            after_start=d(APRIL.start),
            after_end=d(APRIL.end),
        ),
        metadata=A,
    ).rate
    out["churn"] = (churn.numerator, churn.denominator)
    march = {"period_start": d(MARCH.start), "period_end": d(MARCH.end)}
    out["overview orders"] = metrics.GetShopOverview(m.GetShopOverviewRequest(shop_id=shop, **march), metadata=A).orders
    out["feedback march"] = metrics.GetSatisfaction(
        m.GetSatisfactionRequest(shop_id=shop, **march), metadata=A
    ).responses
    features = metrics.StreamCustomerFeatures(m.StreamCustomerFeaturesRequest(shop_id=shop), metadata=A)
    out["features today"] = [
        (f.customer_id, f.purchase_days, f.recency_days, f.age_days, f.days_since_last_order)
        for f in (message.features for message in features)
    ]
    out["summaries"] = {}
    for customer in sorted({c for c, _w in WALL_TIMES}):
        summary = metrics.GetCustomerSummary(
            m.GetCustomerSummaryRequest(shop_id=shop, customer_id=customer, as_of=d(AS_OF)), metadata=A
        ).summary
        out["summaries"][customer] = (summary.purchase_days, summary.clv.frequency, summary.clv.recency, summary.clv.t)
    out["today"] = today_of_segmentation(stack, shop)
    return out


def today_of_segmentation(stack: Stack, shop: str) -> date:
    """The day segmentation evaluates as of when asked for today (its layer summary's as_of)."""
    stub = segmentation(stack)
    stub.UpsertSegment(
        s.UpsertSegmentRequest(
            shop_id=shop,
            request_id=f"all-{shop}",
            segment=s.Segment(segment_id="all", name="all", rule="order_count >= 1"),
        ),
        metadata=A,
    )
    list(stub.EvaluateSegments(s.EvaluateSegmentsRequest(shop_id=shop), metadata=A))
    as_of = stub.GetLayerSummary(s.GetLayerSummaryRequest(shop_id=shop), metadata=A).as_of
    return date(as_of.year, as_of.month, as_of.day)


def segmentation(stack: Stack) -> segmentation_pb2_grpc.SegmentationServiceStub:
    return segmentation_pb2_grpc.SegmentationServiceStub(stack.channel("segmentation"))


def metrics_stub(stack: Stack) -> metrics_pb2_grpc.MetricsServiceStub:
    return metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics"))


def set_zone(stack: Stack, shop: str, zone: str, request_id: str) -> tuple[m.SetShopSettingsResponse, Any]:
    """As `loyaltyctl shop set-zone` does: metrics first, then segmentation."""
    settings = common_pb2.ShopSettings(time_zone=zone)
    on_metrics = metrics_stub(stack).SetShopSettings(
        m.SetShopSettingsRequest(shop_id=shop, request_id=request_id, settings=settings), metadata=A
    )
    on_segmentation = segmentation(stack).SetShopSettings(
        s.SetShopSettingsRequest(shop_id=shop, request_id=request_id, settings=settings), metadata=A
    )
    return on_metrics, on_segmentation


def record_shop(
    stack: Stack, shop: str, paid: list[tuple[str, str, datetime]], zone: str
) -> list[tuple[str, datetime, int]]:
    metrics = metrics_stub(stack)
    metrics.RecordOrders(
        m.RecordOrdersRequest(shop_id=shop, request_id="orders", orders=[order(o, c, t, 1000) for o, c, t in paid]),
        metadata=A,
    )
    answered = [(c, at(zone, wall), score) for c, wall, score in FEEDBACK_WALL_TIMES]
    metrics.RecordFeedback(
        m.RecordFeedbackRequest(
            shop_id=shop,
            request_id="feedback",
            feedback=[
                m.Feedback(feedback_id=f"f{i}", customer_id=c, order_id="", score=score, given_at=stamp(t))
                for i, (c, t, score) in enumerate(answered)
            ],
        ),
        metadata=A,
    )
    return answered


@pytest.fixture(scope="module")
def zoned(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose clock stands at NOW, so that "today" differs between the zones."""
    with database_template(backend, tmp_path_factory.mktemp("zones")) as url:
        running = start_stack(url, clock=FakeClock(NOW))
        try:
            yield running
        finally:
            running.stop()


def slug(zone: str) -> str:
    return zone.replace("/", "-").replace("_", "-").lower()


@pytest.mark.parametrize("zone", ZONES)
def test_every_day_based_rpc_judges_days_in_the_shops_zone(zoned: Stack, zone: str, uid: str) -> None:
    shop = f"tz-{slug(zone)}-{uid}"
    set_zone(zoned, shop, zone, "zone")  # before the first order: nothing to re-date
    paid = instants(zone)
    answered = record_shop(zoned, shop, paid, zone)
    want = expected(zone, paid, answered)
    assert answers(zoned, shop) == want
    other = "UTC" if zone == "Asia/Shanghai" else "Asia/Shanghai"
    wrong = expected(other, paid, answered)
    differing = sorted(k for k in want if want[k] != wrong[k])
    assert len(differing) >= 5, f"the data cannot tell {zone} from {other}: only {differing} differ"
    settings = metrics_stub(zoned).GetShopSettings(m.GetShopSettingsRequest(shop_id=shop), metadata=A)
    assert (settings.settings.time_zone, settings.settings.currency, settings.default_zone) == (zone, "CNY", False)


@pytest.mark.parametrize("zone", ZONES)
def test_shop_local_today_in_profiles_and_member_attributes(zoned: Stack, zone: str, uid: str) -> None:
    shop = f"today-{slug(zone)}-{uid}"
    set_zone(zoned, shop, zone, "zone")
    today = local_date(NOW, ZoneInfo(zone))
    last = at(zone, f"{today - timedelta(days=3)} 23:30")
    metrics_stub(zoned).RecordOrders(
        m.RecordOrdersRequest(shop_id=shop, request_id="o", orders=[order("o1", "c1", last, 500)]), metadata=A
    )
    found = segmentation(zoned).GetCustomerProfile(
        s.GetCustomerProfileRequest(shop_id=shop, customer_id="c1"), metadata=A
    )
    assert found.profile.days_since_last_order == 3

    def register(request_id: str, day: date) -> None:
        segmentation(zoned).SetMemberAttributes(
            s.SetMemberAttributesRequest(
                shop_id=shop,
                request_id=request_id,
                members=[s.MemberAttributes(customer_id="c1", registered_on=d(day))],
            ),
            metadata=A,
        )

    register("today", today)  # today in the shop's zone is not "in the future"
    with pytest.raises(grpc.RpcError) as refused:
        register("tomorrow", today + timedelta(days=1))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "registered_on" in details(refused.value)


def test_a_zone_change_re_dates_orders_and_re_settles_summaries_and_scores(zoned: Stack, uid: str) -> None:
    shop = f"move-{uid}"
    paid = instants("America/New_York")
    answered = record_shop(zoned, shop, paid, "America/New_York")  # recorded under the default zone, Shanghai
    before = answers(zoned, shop)
    assert before == expected("Asia/Shanghai", paid, answered)
    assert metrics_stub(zoned).GetShopSettings(m.GetShopSettingsRequest(shop_id=shop), metadata=A).default_zone

    with pytest.raises(grpc.RpcError) as mismatch:  # segmentation alone would mix metrics' days with its own
        segmentation(zoned).SetShopSettings(
            s.SetShopSettingsRequest(
                shop_id=shop, request_id="early", settings=common_pb2.ShopSettings(time_zone="America/New_York")
            ),
            metadata=A,
        )
    assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "SHOP_ZONE_MISMATCH" in str(mismatch.value.trailing_metadata()) or "set one zone" in details(mismatch.value)

    version_before = segmentation(zoned).GetLayerSummary(s.GetLayerSummaryRequest(shop_id=shop), metadata=A).version
    on_metrics, on_segmentation = set_zone(zoned, shop, "America/New_York", "move")

    def moved(instants: list[datetime]) -> int:
        return sum(1 for t in instants if local_date(t, SHANGHAI) != local_date(t, NEW_YORK))

    assert on_metrics.zone_changed
    assert on_metrics.orders_redated == moved([t for _o, _c, t in paid]) > 0
    assert on_metrics.feedback_redated == moved([t for _c, t, _s in answered]) == 1
    assert on_segmentation.zone_changed
    assert on_segmentation.reevaluated_version == version_before + 1
    layer = segmentation(zoned).GetLayerSummary(s.GetLayerSummaryRequest(shop_id=shop), metadata=A)
    assert (layer.version, date(layer.as_of.year, layer.as_of.month, layer.as_of.day)) == (
        version_before + 1,
        local_date(NOW, ZoneInfo("America/New_York")),
    )
    after = answers(zoned, shop)
    assert after == expected("America/New_York", paid, answered)
    assert after != before

    again, _ = set_zone(zoned, shop, "America/New_York", "move")  # a retry answers as the first call did
    assert again == on_metrics
    same, _ = set_zone(zoned, shop, "America/New_York", "same-again")  # the same zone again moves nothing
    assert (same.zone_changed, same.orders_redated, same.summaries_queued) == (False, 0, 0)


def test_settings_refuse_bad_zones_and_a_second_currency(zoned: Stack, uid: str) -> None:
    shop = f"bad-{uid}"
    metrics = metrics_stub(zoned)
    for zone in ("Mars/Olympus", "Asia/Shanghai\n", "../etc/passwd"):
        with pytest.raises(grpc.RpcError) as refused:
            metrics.SetShopSettings(
                m.SetShopSettingsRequest(
                    shop_id=shop, request_id=zone, settings=common_pb2.ShopSettings(time_zone=zone)
                ),
                metadata=A,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "settings.time_zone" in details(refused.value)
    metrics.SetShopSettings(
        m.SetShopSettingsRequest(shop_id=shop, request_id="usd", settings=common_pb2.ShopSettings(currency="USD")),
        metadata=A,
    )
    with pytest.raises(grpc.RpcError) as refused:  # the shop's money is dollars now: a yuan order is refused
        metrics.RecordOrders(
            m.RecordOrdersRequest(shop_id=shop, request_id="cny", orders=[order("o1", "c1", NOW, 100)]), metadata=A
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as refused:
        metrics.SetShopSettings(
            m.SetShopSettingsRequest(shop_id=shop, request_id="eur", settings=common_pb2.ShopSettings(currency="EUR")),
            metadata=A,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as refused:
        segmentation(zoned).SetShopSettings(
            s.SetShopSettingsRequest(
                shop_id=shop, request_id="cur", settings=common_pb2.ShopSettings(time_zone="UTC", currency="USD")
            ),
            metadata=A,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "settings.currency" in details(refused.value)


def test_orders_recorded_during_zone_changes_are_dated_in_the_final_zone(zoned: Stack, uid: str) -> None:
    """Writers race zone flips; afterwards every stored order carries its day in the zone that stuck.

    Without the shop row lock an order dated under the old zone could commit
    after the re-dating and keep the old day.
    """
    shop = f"race-{uid}"
    metrics = metrics_stub(zoned)
    zones = ["America/New_York", "Pacific/Kiritimati"]
    stop = threading.Event()
    failures: list[BaseException] = []
    base = datetime(2025, 5, 1, 11, 30, tzinfo=UTC)  # 07:30 in New York, 01:30 next day in Kiritimati

    def writer(n: int) -> None:
        try:
            for batch in range(40):
                if stop.is_set():
                    return
                orders = [
                    order(f"w{n}-{batch}-{k}", f"c{n}", base + timedelta(days=batch, minutes=k), 100) for k in range(5)
                ]
                metrics.RecordOrders(
                    m.RecordOrdersRequest(shop_id=shop, request_id=f"w{n}-{batch}", orders=orders),
                    metadata=A,
                    timeout=30,
                )
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    metrics.RecordOrders(
        m.RecordOrdersRequest(shop_id=shop, request_id="first", orders=[order("o0", "c", base, 1)]), metadata=A
    )
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for flip in range(8):
        metrics.SetShopSettings(
            m.SetShopSettingsRequest(
                shop_id=shop, request_id=f"flip{flip}", settings=common_pb2.ShopSettings(time_zone=zones[flip % 2])
            ),
            metadata=A,
            timeout=30,
        )
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    final = ZoneInfo(zones[1])
    db = zoned.services["metrics"].db
    rows = db.run(
        lambda session: session.execute(select(Order.paid_at, Order.local_date).where(Order.shop_id == shop)).all()
    )
    assert len(rows) > 1
    assert [(t, day) for t, day in rows if day != local_date(t, final)] == []
