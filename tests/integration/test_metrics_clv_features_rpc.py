"""FitClvModel, PredictCustomerValue and StreamCustomerFeatures through gRPC."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import numpy as np
import pytest
from loyalty.common.v1 import common_pb2
from loyalty.metrics.v1 import metrics_pb2 as m
from loyalty.metrics.v1 import metrics_pb2_grpc

from services.metrics.clv import BgNbd
from tests.integration.test_metrics_definitions_rpc import d
from tests.integration.test_metrics_rpc import order
from tests.support import Stack, bearer, details

A = bearer("admin")
SHANGHAI = ZoneInfo("Asia/Shanghai")
AS_OF = date(2026, 9, 30)


def metrics(stack: Stack) -> metrics_pb2_grpc.MetricsServiceStub:
    return metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics"))


def simulated_orders(seed: int, customers: int) -> list[common_pb2.Order]:
    rng = random.Random(seed)
    orders = []
    for c in range(customers):
        day = date(2025, 1, 1) + timedelta(days=rng.randint(0, 500))
        # BG/NBD's own story: gamma-distributed purchase rates, beta-distributed dropout
        # (the same dropout for everyone would put the fit on a boundary, a and b → ∞).
        rate = rng.gammavariate(1.5, 0.02)
        dropout = rng.betavariate(1.5, 6.0)
        basket = rng.gammavariate(4.0, 2_500.0)  # each customer's own usual spend, as Gamma-Gamma assumes
        n = 0
        while day <= AS_OF and n < 40:
            paid = max(100, round(rng.gammavariate(6.0, basket / 6.0)))
            orders.append(order(f"c{c}-{n}", f"cust{c:04d}", datetime.combine(day, time(4), UTC), paid))
            n += 1
            if rng.random() < dropout:
                break
            day += timedelta(days=max(1, int(rng.expovariate(rate))))
    return orders


def load(stack: Stack, shop: str, orders: list[common_pb2.Order]) -> None:
    chunks = [
        m.StreamOrdersRequest(shop_id=shop, request_id=f"load{i}", orders=orders[i : i + 1000])
        for i in range(0, len(orders), 1000)
    ]
    metrics(stack).StreamOrders(iter(chunks), metadata=A)


def fit(stack: Stack, shop: str, request_id: str = "fit") -> m.ClvModel:
    model: m.ClvModel = (
        metrics(stack)
        .FitClvModel(m.FitClvModelRequest(shop_id=shop, request_id=request_id, as_of=d(AS_OF)), metadata=A)
        .model
    )
    return model


@pytest.fixture(scope="module")
def shop(stack: Stack) -> str:
    load(stack, "clv-shop", simulated_orders(3, 400))
    return "clv-shop"


def test_prediction_needs_a_model(stack: Stack, uid: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).PredictCustomerValue(
            m.PredictCustomerValueRequest(shop_id=f"none-{uid}", customer_id="c"), metadata=A
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "FitClvModel" in details(caught.value)


def test_fit_converges_and_replays(stack: Stack, shop: str) -> None:
    model = fit(stack, shop)
    assert (model.bg_nbd_converged, model.gamma_gamma_converged) == (True, True), model.message
    assert model.customers == 400
    assert 0 < model.repeat_customers < 400
    assert all(v > 0 for v in (model.r, model.alpha, model.a, model.b, model.p, model.q, model.v))
    assert np.isfinite(model.bg_nbd_log_likelihood)
    assert fit(stack, shop) == model  # same request_id: the stored answer


def test_prediction_matches_the_model(stack: Stack, shop: str) -> None:
    model = fit(stack, shop)
    response = metrics(stack).PredictCustomerValue(
        m.PredictCustomerValueRequest(
            shop_id=shop, customer_id="cust0007", horizon_days=180, months=12, monthly_discount_rate=0.01
        ),
        metadata=A,
    )
    assert response.model == model
    assert 0 < response.probability_alive <= 1
    assert response.expected_purchases >= 0
    assert response.lifetime_value.currency == "CNY"
    rows = [
        r.features
        for r in metrics(stack).StreamCustomerFeatures(
            m.StreamCustomerFeaturesRequest(shop_id=shop, as_of=d(datetime.now(SHANGHAI).date())), metadata=A
        )
        if r.features.customer_id == "cust0007"
    ]
    f = rows[0]
    arrays = [np.array([float(v)]) for v in (f.frequency, f.recency_days, f.age_days)]
    expected = BgNbd(model.r, model.alpha, model.a, model.b).probability_alive(*arrays)[0]
    assert response.probability_alive == pytest.approx(expected, rel=1e-6)


def test_a_backtest_predicts_as_of_the_calibration_end(stack: Stack, shop: str) -> None:
    """Fit as of a past day and predict as of that day: the pure model on that day's features, later orders unseen."""
    calibration_end = AS_OF - timedelta(days=120)
    model = (
        metrics(stack)
        .FitClvModel(m.FitClvModelRequest(shop_id=shop, request_id="calibration", as_of=d(calibration_end)), metadata=A)
        .model
    )
    assert (model.bg_nbd_converged, model.as_of) == (True, d(calibration_end))
    features = {
        r.features.customer_id: r.features
        for r in metrics(stack).StreamCustomerFeatures(
            m.StreamCustomerFeaturesRequest(shop_id=shop, as_of=d(calibration_end)), metadata=A
        )
    }
    repeaters = sorted(c for c, f in features.items() if f.frequency > 0)
    for customer in (repeaters[0], repeaters[-1]):
        f = features[customer]
        response = metrics(stack).PredictCustomerValue(
            m.PredictCustomerValueRequest(
                shop_id=shop, customer_id=customer, horizon_days=120, as_of=d(calibration_end)
            ),
            metadata=A,
        )
        arrays = [np.array([float(v)]) for v in (f.frequency, f.recency_days, f.age_days)]
        pure = BgNbd(model.r, model.alpha, model.a, model.b)
        assert response.probability_alive == pytest.approx(pure.probability_alive(*arrays)[0], rel=1e-9)
        assert response.expected_purchases == pytest.approx(pure.expected_purchases(120, *arrays)[0], rel=1e-9)
    today = metrics(stack).PredictCustomerValue(
        m.PredictCustomerValueRequest(shop_id=shop, customer_id=repeaters[-1], horizon_days=120), metadata=A
    )
    assert today.probability_alive != response.probability_alive  # judged on another day, with later orders


def test_only_one_time_buyers_cannot_fit_spend(stack: Stack, uid: str) -> None:
    shop = f"once-{uid}"
    load(stack, shop, [order(f"o{i}", f"c{i}", datetime(2026, 1, 1 + i % 28, tzinfo=UTC), 100) for i in range(30)])
    model = fit(stack, shop)
    assert (model.gamma_gamma_converged, model.repeat_customers) == (False, 0)
    assert "no repeat buyers" in model.message
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).PredictCustomerValue(m.PredictCustomerValueRequest(shop_id=shop, customer_id="c1"), metadata=A)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def stream(stack: Stack, shop: str, **fields: Any) -> list[m.StreamCustomerFeaturesResponse]:
    return list(
        metrics(stack).StreamCustomerFeatures(
            m.StreamCustomerFeaturesRequest(shop_id=shop, as_of=d(AS_OF), **fields), metadata=A
        )
    )


def test_features_stream_is_sorted_and_resumable(stack: Stack, shop: str) -> None:
    everything = stream(stack, shop)
    ids = [r.features.customer_id for r in everything]
    assert ids == sorted(ids)
    assert len(ids) == 400
    first = stream(stack, shop, max_rows=150)
    rest = stream(stack, shop, resume_token=first[-1].resume_token)
    assert [r.features for r in first + rest] == [r.features for r in everything]


def test_features_carry_clv_predictions_once_a_model_exists(stack: Stack, shop: str, uid: str) -> None:
    other = f"nofit-{uid}"
    load(stack, other, [order("o1", "c1", datetime(2026, 1, 5, tzinfo=UTC), 100)])
    assert not stream(stack, other)[0].features.HasField("probability_alive")
    fit(stack, shop)
    row = stream(stack, shop)[0].features
    assert row.HasField("probability_alive")
    assert row.HasField("expected_purchases_90d")


def test_resume_token_of_another_day_is_refused(stack: Stack, shop: str) -> None:
    token = stream(stack, shop, max_rows=1)[0].resume_token
    with pytest.raises(grpc.RpcError) as caught:
        list(
            metrics(stack).StreamCustomerFeatures(
                m.StreamCustomerFeaturesRequest(shop_id=shop, as_of=d(date(2026, 9, 29)), resume_token=token),
                metadata=A,
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_degenerate_shop_gets_reasons_not_a_converged_model(stack: Stack, uid: str) -> None:
    """One customer, two orders: once reported converged with r = 8.5e16, and predictions then answered INTERNAL."""
    shop = f"tiny-{uid}"
    load(
        stack,
        shop,
        [order(f"t{i}", "only", datetime(2026, 1, 1 + 20 * i, 4, tzinfo=UTC), 10_000) for i in range(2)],
    )
    model = fit(stack, shop)
    assert (model.bg_nbd_converged, model.bg_nbd_reason) == (False, "TOO_FEW_CUSTOMERS")
    assert (model.gamma_gamma_converged, model.gamma_gamma_reason) == (False, "TOO_FEW_REPEAT_BUYERS")
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).PredictCustomerValue(m.PredictCustomerValueRequest(shop_id=shop, customer_id="only"), metadata=A)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "did not converge (bg/nbd: TOO_FEW_CUSTOMERS; gamma-gamma: TOO_FEW_REPEAT_BUYERS)" in details(caught.value)


def test_a_zone_change_retires_the_model_until_it_is_fitted_again(stack: Stack, uid: str) -> None:
    shop = f"clvzone-{uid}"
    load(stack, shop, simulated_orders(3, 400))
    model = fit(stack, shop)
    assert (model.bg_nbd_converged, model.time_zone) == (True, "Asia/Shanghai")
    ask = m.PredictCustomerValueRequest(shop_id=shop, customer_id="cust0001", as_of=d(AS_OF))
    metrics(stack).PredictCustomerValue(ask, metadata=A)
    metrics(stack).SetShopSettings(
        m.SetShopSettingsRequest(
            shop_id=shop, request_id="ny", settings=common_pb2.ShopSettings(time_zone="America/New_York")
        ),
        metadata=A,
    )
    with pytest.raises(grpc.RpcError) as refused:  # fitted on Shanghai days: no prediction mixes two zones
        metrics(stack).PredictCustomerValue(ask, metadata=A)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Asia/Shanghai" in details(refused.value)
    assert "FitClvModel" in details(refused.value)
    features = list(metrics(stack).StreamCustomerFeatures(m.StreamCustomerFeaturesRequest(shop_id=shop), metadata=A))
    assert not any(f.features.HasField("probability_alive") for f in features)  # nor do the features use it
    refitted = fit(stack, shop, request_id="refit")
    assert (refitted.bg_nbd_converged, refitted.time_zone) == (True, "America/New_York")
    assert metrics(stack).PredictCustomerValue(ask, metadata=A).model == refitted
