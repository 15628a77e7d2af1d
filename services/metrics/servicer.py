"""MetricsService: proto <-> domain translation and validation."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

import grpc
import numpy as np
from google.protobuf.message import Message
from loyalty.common.v1 import common_pb2
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.common.clock import Clock, local_date
from services.common.convert import from_date, from_timestamp, to_date, to_money, to_timestamp
from services.common.db import Database
from services.common.errors import DomainError, FailedPrecondition, NotFound, Violations
from services.common.idempotency import any_seen, record_responses, run_idempotent, valid_request_id
from services.common.orders import PaidOrder, checked_order, paid_by, plainly_valid_order
from services.common.paging import Cursor, decode_token, encode_token
from services.common.server import ServiceContext
from services.common.validation import (
    check_amount,
    check_currency,
    check_id,
    check_instant,
    check_text,
    check_time_zone,
)
from services.metrics import fast, store
from services.metrics.clv import Array, BgNbd, GammaGamma, customer_lifetime_value, fit_bg_nbd, fit_gamma_gamma
from services.metrics.definitions import (
    CustomerFeatures,
    Grain,
    Period,
    Rate,
    RepurchaseStage,
    Satisfaction,
    TimeUnit,
    clv_summaries,
    customer_features,
    satisfaction,
    usable,
)
from services.metrics.domain import Outcome
from services.metrics.models import ClvModelRecord

MAX_BATCH = 1000
CHUNKS_PER_COMMIT = 8  # StreamOrders chunks recorded in one transaction (see record_chunks_together)
SUMMARY_SETTLER = "summary-settler"


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def RecordOrders(
        self, request: metrics_pb2.RecordOrdersRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.RecordOrdersResponse:
        parsed = parse_orders(request.orders, now=self.ctx.clock())
        return run_idempotent(
            self.ctx.db,
            request,
            metrics_pb2.RecordOrdersResponse,
            lambda session: self._record(session, request.shop_id, parsed),
            clock=self.ctx.clock,
        )

    def _record(self, session: Session, shop_id: str, orders: list[PaidOrder]) -> metrics_pb2.RecordOrdersResponse:
        counts = store.record_orders(
            session, shop_id=shop_id, orders=orders, default_zone=self.ctx.settings.default_time_zone
        )
        return counts_response(counts)

    def StreamOrders(
        self, request_iterator: Iterator[metrics_pb2.StreamOrdersRequest], context: grpc.ServicerContext
    ) -> metrics_pb2.StreamOrdersResponse:
        totals = metrics_pb2.StreamOrdersResponse()
        for group in groups_of(request_iterator, CHUNKS_PER_COMMIT):
            # Summaries are settled by the summary worker, or on first read.
            received_at = self.ctx.clock()
            zone = self.ctx.settings.default_time_zone
            done = record_chunks_together(
                self.ctx.db, group, received_at=received_at, default_zone=zone, clock=self.ctx.clock
            ) or [self._record_one_chunk(chunk, received_at) for chunk in group]
            for response in done:
                totals.chunks += 1
                totals.inserted += response.inserted
                totals.duplicates += response.duplicates
                totals.corrected += response.corrected
        self.ctx.wake(SUMMARY_SETTLER)  # the load is in: settle its summaries now, not at the next tick
        return totals

    def _record_one_chunk(
        self, chunk: metrics_pb2.StreamOrdersRequest, received_at: datetime
    ) -> metrics_pb2.RecordOrdersResponse:
        apply = partial(
            record_chunk,
            shop_id=chunk.shop_id,
            orders=chunk.orders,
            received=store.BulkChunk(chunk.request_id, received_at),
            default_zone=self.ctx.settings.default_time_zone,
        )
        return run_idempotent(self.ctx.db, chunk, metrics_pb2.RecordOrdersResponse, apply, clock=self.ctx.clock)

    def RecordRefunds(
        self, request: metrics_pb2.RecordRefundsRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.RecordRefundsResponse:
        v = Violations()
        v.check(0 < len(request.refunds) <= MAX_BATCH, "refunds", f"must hold 1..{MAX_BATCH} refunds")
        refunds: list[store.RefundFact] = []
        for i, refund in enumerate(request.refunds[:MAX_BATCH]):
            path = f"refunds[{i}]"
            check_id(v, refund.refund_id, f"{path}.refund_id")
            check_id(v, refund.order_id, f"{path}.order_id")
            check_amount(v, refund.amount.amount_minor, f"{path}.amount.amount_minor", allow_zero=False)
            check_currency(v, refund.amount.currency, f"{path}.amount.currency")
            at = from_timestamp(v, refund.refunded_at, f"{path}.refunded_at", present=refund.HasField("refunded_at"))
            if at is not None:
                check_instant(v, at, f"{path}.refunded_at")
                refunds.append(
                    store.RefundFact(
                        refund.refund_id, refund.order_id, refund.amount.amount_minor, refund.amount.currency, at
                    )
                )
        ids = [r.refund_id for r in request.refunds]
        v.check(len(set(ids)) == len(ids), "refunds", "a refund_id appears twice in the batch")
        v.raise_if_any()

        def apply(session: Session) -> metrics_pb2.RecordRefundsResponse:
            counts = store.record_refunds(session, shop_id=request.shop_id, refunds=refunds)
            return metrics_pb2.RecordRefundsResponse(applied=counts["applied"], duplicates=counts["duplicate"])

        return run_idempotent(self.ctx.db, request, metrics_pb2.RecordRefundsResponse, apply, clock=self.ctx.clock)

    def GetCustomerSummary(
        self, request: metrics_pb2.GetCustomerSummaryRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.GetCustomerSummaryResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        as_of = from_date(v, request.as_of, "as_of") if request.HasField("as_of") else None
        v.check(request.time_unit in metrics_pb2.TimeUnit.values(), "time_unit", "unknown time unit")
        v.raise_if_any()
        found = self.ctx.db.run(
            lambda s: store.get_summary(s, shop_id=request.shop_id, customer_id=request.customer_id)
        )
        if found is None:
            raise NotFound(f"customer {request.customer_id!r} has no recorded orders", reason="CUSTOMER_NOT_FOUND")
        summary, currency = found
        as_of = as_of or self._today(request.shop_id)
        unit = TimeUnit.WEEKS if request.time_unit == metrics_pb2.TIME_UNIT_WEEKS else TimeUnit.DAYS
        orders = self.ctx.db.run(
            lambda s: store.load_purchases(s, shop_id=request.shop_id, until=as_of, customer_id=request.customer_id)
        )
        rows = clv_summaries(usable(orders), as_of, unit)
        clv = metrics_pb2.ClvSummary(
            time_unit=metrics_pb2.TIME_UNIT_WEEKS if unit is TimeUnit.WEEKS else metrics_pb2.TIME_UNIT_DAYS,
            as_of=to_date(as_of),
        )
        if rows:
            clv.frequency, clv.recency, clv.t = rows[0].frequency, int(rows[0].recency), int(rows[0].T)
            clv.monetary_value_minor = rows[0].monetary_minor
        return metrics_pb2.GetCustomerSummaryResponse(
            summary=metrics_pb2.CustomerSummary(
                customer_id=summary.customer_id,
                order_count=summary.order_count,
                purchase_days=summary.purchase_days,
                total_paid=to_money(summary.total_minor, currency),
                first_order_at=to_timestamp(summary.first_order_at),
                last_order_at=to_timestamp(summary.last_order_at),
                clv=clv,
            )
        )

    # -- metric definitions ------------------------------------------------------------

    def _columns(self, shop_id: str, until: date, *, include_refunded: bool = False) -> fast.OrderColumns:
        return self.ctx.db.run(
            lambda s: store.load_columns(s, shop_id=shop_id, until=until, include_refunded=include_refunded)
        )

    def _today(self, shop_id: str) -> date:
        return local_date(self.ctx.clock(), ZoneInfo(self._zone_name(shop_id)))

    def _settings(self, shop_id: str, session: Session | None = None) -> store.ShopSettings:
        def read(s: Session) -> store.ShopSettings:
            return store.shop_settings(s, shop_id=shop_id, default_zone=self.ctx.settings.default_time_zone)

        return read(session) if session is not None else self.ctx.db.run(read)

    def _zone_name(self, shop_id: str, session: Session | None = None) -> str:
        return self._settings(shop_id, session).time_zone

    def SetShopSettings(
        self, request: metrics_pb2.SetShopSettingsRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.SetShopSettingsResponse:
        wanted = request.settings
        v = Violations()
        if wanted.time_zone:
            check_time_zone(v, wanted.time_zone, "settings.time_zone")
        if wanted.currency:
            check_currency(v, wanted.currency, "settings.currency")
        v.check(bool(wanted.time_zone or wanted.currency), "settings", "set time_zone, currency or both")
        v.raise_if_any()

        def apply(session: Session) -> metrics_pb2.SetShopSettingsResponse:
            settings, change = store.set_shop_settings(
                session,
                shop_id=request.shop_id,
                time_zone=wanted.time_zone,
                currency=wanted.currency,
                default_zone=self.ctx.settings.default_time_zone,
                now=self.ctx.clock(),
                mark=request.request_id,
            )
            response = metrics_pb2.SetShopSettingsResponse(settings=settings_proto(settings))
            if change is not None:
                response.zone_changed = True
                response.orders_redated, response.feedback_redated = change.orders_redated, change.feedback_redated
                response.summaries_queued = change.summaries_queued
            return response

        response = run_idempotent(
            self.ctx.db, request, metrics_pb2.SetShopSettingsResponse, apply, clock=self.ctx.clock
        )
        if response.summaries_queued:
            self.ctx.wake(SUMMARY_SETTLER)
        return response

    def GetShopSettings(
        self, request: metrics_pb2.GetShopSettingsRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.GetShopSettingsResponse:
        settings = self._settings(request.shop_id)
        return metrics_pb2.GetShopSettingsResponse(
            settings=settings_proto(settings), default_zone=settings.default_zone
        )

    def GetRepurchaseRate(
        self, request: metrics_pb2.GetRepurchaseRateRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.GetRepurchaseRateResponse:
        v = Violations()
        period = parse_period(v, request, "period_start", "period_end")
        v.check(request.basis in BASES, "basis", "must be REPURCHASE_BASIS_CUSTOMER or REPURCHASE_BASIS_ORDER")
        v.raise_if_any()
        assert period is not None
        columns = self._columns(request.shop_id, period.end, include_refunded=request.include_refunded)
        rate = BASES[request.basis](columns, period, count_history=request.count_history)
        return metrics_pb2.GetRepurchaseRateResponse(rate=rate_proto(rate))

    def GetRepurchaseStage(
        self, request: metrics_pb2.GetRepurchaseStageRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.GetRepurchaseStageResponse:
        v = Violations()
        cohort = parse_period(v, request, "cohort_start", "cohort_end")
        as_of = from_date(v, request.as_of, "as_of") if request.HasField("as_of") else None
        v.raise_if_any()
        assert cohort is not None
        as_of = as_of or self._today(request.shop_id)
        result = fast.ninety_day_repurchase(self._columns(request.shop_id, as_of), cohort, as_of)
        return metrics_pb2.GetRepurchaseStageResponse(
            rate=rate_proto(result.rate),
            stage=STAGES[result.stage] if result.stage else metrics_pb2.REPURCHASE_STAGE_UNSPECIFIED,
            window_open=result.window_open,
        )

    def GetCohortRetention(
        self, request: metrics_pb2.GetCohortRetentionRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.GetCohortRetentionResponse:
        v = Violations()
        v.check(request.grain in GRAINS, "grain", "must be COHORT_GRAIN_WEEK or COHORT_GRAIN_MONTH")
        as_of = from_date(v, request.as_of, "as_of") if request.HasField("as_of") else None
        v.raise_if_any()
        as_of = as_of or self._today(request.shop_id)
        rows = fast.cohort_retention(self._columns(request.shop_id, as_of), GRAINS[request.grain], as_of)
        return metrics_pb2.GetCohortRetentionResponse(
            rows=[
                metrics_pb2.CohortRow(cohort_start=to_date(r.cohort_start), size=r.size, active=list(r.active))
                for r in rows
            ]
        )

    def FitClvModel(
        self, request: metrics_pb2.FitClvModelRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.FitClvModelResponse:
        v = Violations()
        as_of = from_date(v, request.as_of, "as_of") if request.HasField("as_of") else None
        v.raise_if_any()
        zone = self._zone_name(request.shop_id)
        as_of = as_of or local_date(self.ctx.clock(), ZoneInfo(zone))
        # Fitted before the write transaction, so the fit never holds a database lock.
        features = fast.customer_features(self._columns(request.shop_id, as_of), as_of)
        record = fit_record(request.shop_id, as_of, features, self.ctx.clock())
        record.time_zone = zone

        def apply(session: Session) -> metrics_pb2.FitClvModelResponse:
            if self._zone_name(request.shop_id, session) != zone:
                raise FailedPrecondition(
                    "the shop's time zone changed while the model was fitted; call FitClvModel again",
                    reason="SHOP_ZONE_CHANGED",
                )
            return metrics_pb2.FitClvModelResponse(model=model_proto(store.save_clv_model(session, record)))

        return run_idempotent(self.ctx.db, request, metrics_pb2.FitClvModelResponse, apply, clock=self.ctx.clock)

    def _converged_model(self, shop_id: str) -> ClvModelRecord | None:
        try:
            return self._usable_model(shop_id)
        except FailedPrecondition:
            return None

    def _usable_model(self, shop_id: str) -> ClvModelRecord:
        """The shop's current model if it converged in the shop's current zone; FAILED_PRECONDITION saying why not."""
        record, zone = self.ctx.db.run(
            lambda s: (store.current_clv_model(s, shop_id=shop_id), self._zone_name(shop_id, s))
        )
        if record is None:
            raise FailedPrecondition("the shop has no CLV model: call FitClvModel first", reason="NO_CLV_MODEL")
        if why := unconverged(record):
            raise FailedPrecondition(
                f"the shop's current CLV model (as of {record.as_of}) did not converge ({why}); "
                "call FitClvModel again once the shop has more repeat buyers",
                reason="CLV_MODEL_NOT_CONVERGED",
            )
        if record.time_zone != zone:
            raise FailedPrecondition(
                f"the shop's current CLV model judged days in {record.time_zone or 'another zone'}, "
                f"the shop now in {zone}; call FitClvModel again",
                reason="CLV_MODEL_ZONE_CHANGED",
            )
        return record

    def PredictCustomerValue(
        self, request: metrics_pb2.PredictCustomerValueRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.PredictCustomerValueResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.check(0 <= request.horizon_days <= 3650, "horizon_days", "must be 0..3650")
        v.check(0 <= request.months <= 120, "months", "must be 0..120")
        v.check(0 <= request.monthly_discount_rate < 1, "monthly_discount_rate", "must be at least 0 and below 1")
        as_of = from_date(v, request.as_of, "as_of") if request.HasField("as_of") else None
        v.raise_if_any()
        record = self._usable_model(request.shop_id)
        today = as_of or local_date(self.ctx.clock(), ZoneInfo(record.time_zone))  # usable: the shop's zone
        orders = self.ctx.db.run(
            lambda s: store.load_purchases(s, shop_id=request.shop_id, until=today, customer_id=request.customer_id)
        )
        features = customer_features(usable(orders), today)
        if not features:
            raise NotFound(f"customer {request.customer_id!r} has no recorded orders", reason="CUSTOMER_NOT_FOUND")
        x, t_x, t, m = feature_arrays(features)
        transactions, spend = models_of(record)
        value = customer_lifetime_value(
            transactions,
            spend,
            x,
            t_x,
            t,
            m,
            months=request.months or 12,
            monthly_discount_rate=request.monthly_discount_rate,
        )
        alive = float(transactions.probability_alive(x, t_x, t)[0])
        expected = float(transactions.expected_purchases(request.horizon_days or 90, x, t_x, t)[0])
        average = float(spend.expected_average_value(x, m)[0])
        if not all(math.isfinite(number) for number in (alive, expected, average, float(value[0]))):
            raise FailedPrecondition(  # a model stored before fits were judged strictly can still be degenerate
                "the shop's current CLV model gives no finite prediction for this customer; call FitClvModel again",
                reason="CLV_MODEL_NOT_CONVERGED",
            )
        currency = self.ctx.db.run(lambda s: store.shop_currency(s, shop_id=request.shop_id))
        return metrics_pb2.PredictCustomerValueResponse(
            probability_alive=alive,
            expected_purchases=expected,
            expected_average_value_minor=average,
            lifetime_value=to_money(round(float(value[0])), currency),
            model=model_proto(record),
        )

    def StreamCustomerFeatures(
        self, request: metrics_pb2.StreamCustomerFeaturesRequest, context: grpc.ServicerContext
    ) -> Iterator[metrics_pb2.StreamCustomerFeaturesResponse]:
        v = Violations()
        as_of = from_date(v, request.as_of, "as_of") if request.HasField("as_of") else None
        v.check(request.max_rows >= 0, "max_rows", "must not be negative")
        v.check(0 <= request.window_days <= MAX_WINDOW_DAYS, "window_days", f"must be 0..{MAX_WINDOW_DAYS}")
        v.raise_if_any()
        as_of = as_of or self._today(request.shop_id)
        query = f"features:{request.shop_id}:{as_of.isoformat()}:{request.window_days}"
        position = decode_token(request.resume_token, query=query)
        after = str(position.get("after", "")) if position else ""
        rows = [
            f
            for f in fast.customer_features(self._columns(request.shop_id, as_of), as_of, request.window_days)
            if f.customer_id > after
        ]
        if request.max_rows:
            rows = rows[: request.max_rows]
        record = self._converged_model(request.shop_id)
        alive = expected = None
        if record is not None and rows:
            x, t_x, t, _ = feature_arrays(rows)
            model, _ = models_of(record)
            alive, expected = model.probability_alive(x, t_x, t), model.expected_purchases(90, x, t_x, t)
        currency = self.ctx.db.run(lambda s: store.shop_currency(s, shop_id=request.shop_id))
        for i, row in enumerate(rows):
            features = metrics_pb2.CustomerFeatures(
                customer_id=row.customer_id,
                order_count=row.order_count,
                net_revenue=to_money(row.net_revenue_minor, currency),
                aov_minor=row.aov_minor,
                purchase_days=row.purchase_days,
                frequency=row.frequency,
                recency_days=row.recency_days,
                age_days=row.age_days,
                days_since_last_order=row.days_since_last_order,
                monetary_minor=row.monetary_minor,
                window_orders=row.window_orders,
                window_active_days=row.window_active_days,
                window_net_revenue_minor=row.window_net_revenue_minor,
            )
            if row.mean_interval_days is not None:
                features.mean_interval_days = row.mean_interval_days
            if alive is not None and expected is not None:
                features.probability_alive = float(alive[i])
                features.expected_purchases_90d = float(expected[i])
            token = encode_token(Cursor(query, {"after": row.customer_id}))
            yield metrics_pb2.StreamCustomerFeaturesResponse(features=features, resume_token=token)

    def RecordFeedback(
        self, request: metrics_pb2.RecordFeedbackRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.RecordFeedbackResponse:
        v = Violations()
        v.check(0 < len(request.feedback) <= MAX_BATCH, "feedback", f"must hold 1..{MAX_BATCH} answers")
        answers: list[store.FeedbackFact] = []
        for i, item in enumerate(request.feedback[:MAX_BATCH]):
            path = f"feedback[{i}]"
            check_id(v, item.feedback_id, f"{path}.feedback_id")
            check_id(v, item.customer_id, f"{path}.customer_id")
            if item.order_id:
                check_id(v, item.order_id, f"{path}.order_id")
            v.check(0 <= item.score <= 10, f"{path}.score", "must be 0..10")
            check_text(v, item.comment, f"{path}.comment", max_length=500)
            at = from_timestamp(v, item.given_at, f"{path}.given_at", present=item.HasField("given_at"))
            if at is not None:
                check_instant(v, at, f"{path}.given_at")
                answers.append(
                    store.FeedbackFact(item.feedback_id, item.customer_id, item.order_id, item.score, item.comment, at)
                )
        ids = [f.feedback_id for f in request.feedback]
        v.check(len(set(ids)) == len(ids), "feedback", "a feedback_id appears twice in the batch")
        v.raise_if_any()

        def apply(session: Session) -> metrics_pb2.RecordFeedbackResponse:
            counts = store.record_feedback(
                session, shop_id=request.shop_id, answers=answers, default_zone=self.ctx.settings.default_time_zone
            )
            return metrics_pb2.RecordFeedbackResponse(recorded=counts["recorded"], duplicates=counts["duplicate"])

        return run_idempotent(self.ctx.db, request, metrics_pb2.RecordFeedbackResponse, apply, clock=self.ctx.clock)

    def _satisfaction(self, shop_id: str, period: Period) -> Satisfaction:
        scores = self.ctx.db.run(lambda s: store.scores_between(s, shop_id=shop_id, start=period.start, end=period.end))
        return satisfaction(scores)

    def GetSatisfaction(
        self, request: metrics_pb2.GetSatisfactionRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.GetSatisfactionResponse:
        v = Violations()
        period = parse_period(v, request, "period_start", "period_end")
        v.raise_if_any()
        assert period is not None
        result = self._satisfaction(request.shop_id, period)
        response = metrics_pb2.GetSatisfactionResponse(
            responses=result.responses,
            promoters=result.promoters,
            passives=result.passives,
            detractors=result.detractors,
            recommendation_rate=rate_proto(result.recommendation_rate),
        )
        if result.nps is not None and result.average_score is not None:
            response.nps = result.nps
            response.average_score = result.average_score
        return response

    def GetShopOverview(
        self, request: metrics_pb2.GetShopOverviewRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.GetShopOverviewResponse:
        v = Violations()
        period = parse_period(v, request, "period_start", "period_end")
        v.raise_if_any()
        assert period is not None
        today = self._today(request.shop_id)
        columns = self._columns(request.shop_id, max(today, period.end))
        length = period.end - period.start
        previous = Period(period.start - length - timedelta(days=1), period.start - timedelta(days=1))
        value = fast.value_summary(columns, period)
        ninety = fast.ninety_day_repurchase(columns, period, today)
        currency = self.ctx.db.run(lambda s: store.shop_currency(s, shop_id=request.shop_id))
        response = metrics_pb2.GetShopOverviewResponse(
            orders=value.orders,
            customers=value.customers,
            net_revenue=to_money(value.net_revenue_minor, currency),
            repurchase_by_customer=rate_proto(fast.repurchase_rate_by_customer(columns, period)),
            repurchase_by_order=rate_proto(fast.repurchase_rate_by_order(columns, period)),
            ninety_day_repurchase=rate_proto(ninety.rate),
            stage=STAGES[ninety.stage] if ninety.stage else metrics_pb2.REPURCHASE_STAGE_UNSPECIFIED,
            churn_from_previous_period=rate_proto(fast.churn_rate(columns, previous, period)),
        )
        if value.aov_minor is not None and value.purchase_frequency is not None:
            response.aov_minor = value.aov_minor
            response.purchase_frequency = value.purchase_frequency
        nps = self._satisfaction(request.shop_id, period).nps
        if nps is not None:
            response.nps = nps
        return response

    def GetChurnRate(
        self, request: metrics_pb2.GetChurnRateRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.GetChurnRateResponse:
        v = Violations()
        before = parse_period(v, request, "before_start", "before_end")
        after = parse_period(v, request, "after_start", "after_end")
        if before and after and after.start <= before.end:
            v.add("after_start", "must be after before_end")
        v.raise_if_any()
        assert before is not None
        assert after is not None
        rate = fast.churn_rate(self._columns(request.shop_id, after.end), before, after)
        return metrics_pb2.GetChurnRateResponse(rate=rate_proto(rate))

    def EraseCustomer(
        self, request: metrics_pb2.EraseCustomerRequest, context: grpc.ServicerContext
    ) -> metrics_pb2.EraseCustomerResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.raise_if_any()

        def apply(session: Session) -> metrics_pb2.EraseCustomerResponse:
            anonymous, rows = store.erase_customer(session, shop_id=request.shop_id, customer_id=request.customer_id)
            return metrics_pb2.EraseCustomerResponse(anonymous_id=anonymous, rows_anonymised=rows)

        return run_idempotent(self.ctx.db, request, metrics_pb2.EraseCustomerResponse, apply, clock=self.ctx.clock)


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def model_proto(record: ClvModelRecord) -> metrics_pb2.ClvModel:
    n = nan_if_none
    return metrics_pb2.ClvModel(
        as_of=to_date(record.as_of),
        fitted_at=to_timestamp(record.fitted_at),
        r=n(record.r),
        alpha=n(record.alpha),
        a=n(record.a),
        b=n(record.b),
        bg_nbd_log_likelihood=n(record.bg_nbd_log_likelihood),
        bg_nbd_converged=record.bg_nbd_converged,
        bg_nbd_reason=record.bg_nbd_reason,
        p=n(record.p),
        q=n(record.q),
        v=n(record.v),
        gamma_gamma_log_likelihood=n(record.gamma_gamma_log_likelihood),
        gamma_gamma_converged=record.gamma_gamma_converged,
        gamma_gamma_reason=record.gamma_gamma_reason,
        customers=record.customers,
        repeat_customers=record.repeat_customers,
        message=record.message,
        time_zone=record.time_zone,
    )


def settings_proto(settings: store.ShopSettings) -> common_pb2.ShopSettings:
    return common_pb2.ShopSettings(time_zone=settings.time_zone, currency=settings.currency)


def fit_record(shop_id: str, as_of: date, features: list[CustomerFeatures], now: datetime) -> ClvModelRecord:
    """Fits both models on the customers' features; a failed fit is recorded as such (NaN parameters)."""
    x, t_x, t, m = feature_arrays(features)
    transactions, spend = fit_bg_nbd(x, t_x, t), fit_gamma_gamma(x, m)
    nan = float("nan")
    return ClvModelRecord(
        shop_id=shop_id,
        as_of=as_of,
        fitted_at=now,
        r=transactions.params.get("r", nan),
        alpha=transactions.params.get("alpha", nan),
        a=transactions.params.get("a", nan),
        b=transactions.params.get("b", nan),
        bg_nbd_log_likelihood=transactions.log_likelihood,
        bg_nbd_converged=transactions.converged,
        bg_nbd_reason=transactions.reason,
        p=spend.params.get("p", nan),
        q=spend.params.get("q", nan),
        v=spend.params.get("v", nan),
        gamma_gamma_log_likelihood=spend.log_likelihood,
        gamma_gamma_converged=spend.converged,
        gamma_gamma_reason=spend.reason,
        customers=transactions.customers,
        repeat_customers=spend.customers,
        message=f"bg/nbd: {transactions.message}; gamma-gamma: {spend.message}"[:500],
    )


def unconverged(record: ClvModelRecord) -> str:
    """Why a stored model may not predict ("" when both fits converged)."""
    return "; ".join(
        f"{name}: {reason or 'not converged'}"
        for name, converged, reason in (
            ("bg/nbd", record.bg_nbd_converged, record.bg_nbd_reason),
            ("gamma-gamma", record.gamma_gamma_converged, record.gamma_gamma_reason),
        )
        if not converged
    )


def models_of(record: ClvModelRecord) -> tuple[BgNbd, GammaGamma]:
    n = nan_if_none
    return BgNbd(n(record.r), n(record.alpha), n(record.a), n(record.b)), GammaGamma(
        n(record.p), n(record.q), n(record.v)
    )


def feature_arrays(features: list[CustomerFeatures]) -> tuple[Array, Array, Array, Array]:
    x = np.array([f.frequency for f in features], dtype=float)
    t_x = np.array([f.recency_days for f in features], dtype=float)
    t = np.array([f.age_days for f in features], dtype=float)
    m = np.array([f.monetary_minor for f in features], dtype=float)
    return x, t_x, t, m


def groups_of(
    chunks: Iterator[metrics_pb2.StreamOrdersRequest], size: int
) -> Iterator[list[metrics_pb2.StreamOrdersRequest]]:
    """Consecutive chunks in lists of `size`; if the stream fails, the chunks received before the failure come
    first (applied as they would have been one by one), then the failure."""
    group: list[metrics_pb2.StreamOrdersRequest] = []
    try:
        for chunk in chunks:
            group.append(chunk)
            if len(group) == size:
                yield group
                group = []
    except Exception:
        if group:
            yield group
        raise
    if group:
        yield group


def record_chunks_together(
    db: Database,
    chunks: Sequence[metrics_pb2.StreamOrdersRequest],
    *,
    received_at: datetime,
    default_zone: str,
    clock: Clock,
) -> list[metrics_pb2.RecordOrdersResponse] | None:
    """Records consecutive chunks of new orders in one transaction and one COPY; None, with nothing written, if
    they need the one-by-one path (a request id seen before, an order refused or known, any error).

    Group commit: each chunk keeps its own request id, record and response,
    and they commit together. PostgreSQL inserts a COPY's rows a thousand at a
    time, so one COPY over several chunks overlaps most of that work with the
    parsing of the rows after them; with one chunk per COPY every insert waited
    for the whole chunk. The one-by-one path then gives each chunk exactly the
    answer it would have had alone, including the error of the first bad one.
    """
    if len(chunks) < 2 or not all(0 < len(c.orders) <= MAX_BATCH and valid_request_id(c) for c in chunks):
        return None
    shop_id = chunks[0].shop_id
    orders = [order for chunk in chunks for order in chunk.orders]

    def apply(session: Session) -> list[metrics_pb2.RecordOrdersResponse]:
        if any_seen(session, shop_id=shop_id, request_ids=[c.request_id for c in chunks]):
            raise store.NeedsGeneralPath
        one_mark_row = store.BulkChunk(chunks[0].request_id, received_at)
        record_streaming(session, shop_id, orders, chunk=one_mark_row, default_zone=default_zone, all_new=True)
        responses = [metrics_pb2.RecordOrdersResponse(inserted=len(c.orders)) for c in chunks]
        record_responses(session, chunks, responses, clock=clock)
        return responses

    try:
        return db.run(apply)
    except (store.NeedsGeneralPath, DomainError, IntegrityError):
        return None


def record_chunk(
    session: Session, *, shop_id: str, orders: Sequence[common_pb2.Order], received: store.BulkChunk, default_zone: str
) -> metrics_pb2.RecordOrdersResponse:
    """A StreamOrders chunk: parsed while it streams into PostgreSQL; the detailed checks only if an order fails."""
    check_batch_size(orders)
    try:
        counts = record_streaming(session, shop_id, orders, chunk=received, default_zone=default_zone)
    except store.NeedsGeneralPath:
        parsed = parse_orders(orders, now=received.received_at)
        counts = store.record_orders(
            session, shop_id=shop_id, orders=parsed, default_zone=default_zone, defer_summaries_for=received
        )
    return counts_response(counts)


def record_streaming(
    session: Session,
    shop_id: str,
    orders: Sequence[common_pb2.Order],
    *,
    chunk: store.BulkChunk,
    default_zone: str,
    all_new: bool = False,
) -> Counter[Outcome]:
    """The orders parsed one by one, in id order, as `store.record_streamed_chunk` streams them into the database."""
    return store.record_streamed_chunk(
        session,
        shop_id=shop_id,
        currency=orders[0].paid.currency,
        orders=map(partial(plainly_valid_order, not_after=paid_by(chunk.received_at)), sorted(orders, key=by_order_id)),
        default_zone=default_zone,
        chunk=chunk,
        all_new=all_new,
    )


def counts_response(counts: Counter[Outcome]) -> metrics_pb2.RecordOrdersResponse:
    return metrics_pb2.RecordOrdersResponse(
        inserted=counts[Outcome.INSERTED], duplicates=counts[Outcome.DUPLICATE], corrected=counts[Outcome.CORRECTED]
    )


def check_batch_size(orders: Sequence[common_pb2.Order]) -> None:
    v = Violations()
    v.check(0 < len(orders) <= MAX_BATCH, "orders", f"must hold 1..{MAX_BATCH} orders")
    v.raise_if_any()


def by_order_id(order: common_pb2.Order) -> str:
    """A chunk's orders are written in id order: two racing chunks then lock their shared ids in the same order."""
    return order.order_id


def parse_orders(orders: Sequence[common_pb2.Order], *, now: datetime) -> list[PaidOrder]:
    """1..MAX_BATCH valid orders received at `now`, or INVALID_ARGUMENT naming every bad field.

    The fast checks run over the whole batch first; field paths are built only
    for a batch holding an order they refuse.
    """
    check_batch_size(orders)
    v = Violations()
    latest = paid_by(now)
    fast = [plainly_valid_order(order, latest) for order in orders]
    parsed = [p for p in fast if p is not None]
    if len(parsed) < len(fast):
        parsed = []
        for i, order in enumerate(orders):
            result = fast[i] or checked_order(v, order, f"orders[{i}]", not_after=latest)
            if result is not None:
                parsed.append(result)
    v.raise_if_any()
    return parsed


BASES = {
    metrics_pb2.REPURCHASE_BASIS_CUSTOMER: fast.repurchase_rate_by_customer,
    metrics_pb2.REPURCHASE_BASIS_ORDER: fast.repurchase_rate_by_order,
}
GRAINS = {metrics_pb2.COHORT_GRAIN_WEEK: Grain.WEEK, metrics_pb2.COHORT_GRAIN_MONTH: Grain.MONTH}
STAGES = {
    RepurchaseStage.ACQUISITION: metrics_pb2.REPURCHASE_STAGE_ACQUISITION,
    RepurchaseStage.HYBRID: metrics_pb2.REPURCHASE_STAGE_HYBRID,
    RepurchaseStage.LOYALTY: metrics_pb2.REPURCHASE_STAGE_LOYALTY,
}
MAX_PERIOD_DAYS = 3 * 366
MAX_WINDOW_DAYS = 3650


def rate_proto(rate: Rate) -> metrics_pb2.RateValue:
    proto = metrics_pb2.RateValue(numerator=rate.numerator, denominator=rate.denominator)
    if rate.value is not None:
        proto.value = rate.value
    return proto


def parse_period(v: Violations, request: Message, start_field: str, end_field: str) -> Period | None:
    """A required inclusive period of shop-local days, at most three years long."""
    days: list[date | None] = []
    for name in (start_field, end_field):
        if not request.HasField(name):
            v.add(name, "is required")
            days.append(None)
        else:
            days.append(from_date(v, getattr(request, name), name))
    start, end = days
    if start is None or end is None:
        return None
    if end < start:
        v.add(end_field, f"must not be before {start_field}")
        return None
    if (end - start).days > MAX_PERIOD_DAYS:
        v.add(end_field, f"period must be at most {MAX_PERIOD_DAYS} days")
        return None
    return Period(start, end)


def register(server: grpc.Server, ctx: ServiceContext) -> None:
    metrics_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(ctx), server)
