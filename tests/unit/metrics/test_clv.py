"""BG/NBD and Gamma-Gamma: closed forms, probabilities, and recovery of known parameters from simulation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.metrics.clv import BgNbd, GammaGamma, customer_lifetime_value, fit_bg_nbd, fit_gamma_gamma

TRUE = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)  # the CDNOW estimates of the paper (weeks)


def simulate(model: BgNbd, customers: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.uniform(27, 39, customers)
    rates = rng.gamma(model.r, 1 / model.alpha, customers)
    dropouts = rng.beta(model.a, model.b, customers)
    x, t_x = np.zeros(customers), np.zeros(customers)
    for i in range(customers):
        now = 0.0
        while True:
            now += rng.exponential(1 / rates[i])
            if now > t[i]:
                break
            x[i] += 1
            t_x[i] = now
            if rng.random() < dropouts[i]:
                break
    return x, t_x, t


def test_one_time_buyer_likelihood_is_the_closed_form() -> None:
    t = np.array([10.0, 39.0])
    got = TRUE.log_likelihood(np.zeros(2), np.zeros(2), t)
    assert got == pytest.approx(TRUE.r * np.log(TRUE.alpha / (TRUE.alpha + t)))


def test_probability_alive() -> None:
    x, t_x, t = np.array([0.0, 3.0, 3.0]), np.array([0.0, 38.0, 5.0]), np.array([39.0, 39.0, 39.0])
    alive = TRUE.probability_alive(x, t_x, t)
    assert alive[0] == 1.0  # never repeated: no evidence of death
    assert 0 < alive[2] < alive[1] < 1  # the same buyer is likelier alive if seen recently


def test_expected_purchases_grow_with_the_horizon_and_with_activity() -> None:
    x, t_x, t = np.array([1.0, 6.0]), np.array([30.0, 38.0]), np.array([39.0, 39.0])
    short, long = TRUE.expected_purchases(4, x, t_x, t), TRUE.expected_purchases(52, x, t_x, t)
    assert np.all(long > short)
    assert np.all(short > 0)
    assert short[1] > short[0]


def test_bg_nbd_fit_recovers_simulated_parameters() -> None:
    x, t_x, t = simulate(TRUE, 4000, seed=11)
    fit = fit_bg_nbd(x, t_x, t)
    assert fit.converged, fit.message
    assert fit.log_likelihood >= float(np.sum(TRUE.log_likelihood(x, t_x, t))) - 1e-6  # it is a maximum
    fitted = BgNbd(**fit.params)
    assert fitted.r / fitted.alpha == pytest.approx(TRUE.r / TRUE.alpha, rel=0.15)  # mean purchase rate
    assert fitted.a / (fitted.a + fitted.b) == pytest.approx(TRUE.a / (TRUE.a + TRUE.b), rel=0.35)  # mean dropout
    # The fitted model predicts the next year's purchases close to the true model.
    predicted = fitted.expected_purchases(52, x, t_x, t).sum()
    assert predicted == pytest.approx(TRUE.expected_purchases(52, x, t_x, t).sum(), rel=0.1)


def test_gamma_gamma_fit_recovers_simulated_spend() -> None:
    truth = GammaGamma(p=6.25, q=3.74, v=15.44)  # the CDNOW estimates
    rng = np.random.default_rng(5)
    x = rng.integers(1, 8, 3000).astype(float)
    nu = rng.gamma(truth.q, 1 / truth.v, 3000)
    m = np.array([rng.gamma(truth.p, 1 / n, int(k)).mean() for n, k in zip(nu, x, strict=True)])
    fit = fit_gamma_gamma(x, m)
    assert fit.converged, fit.message
    assert fit.log_likelihood >= float(np.sum(truth.log_likelihood(x, m))) - 1e-6
    fitted = GammaGamma(**fit.params)
    population = fitted.p * fitted.v / (fitted.q - 1)
    assert population == pytest.approx(truth.p * truth.v / (truth.q - 1), rel=0.1)


def test_spend_expectation_shrinks_towards_the_population_mean() -> None:
    model = GammaGamma(p=6.25, q=3.74, v=15.44)
    population = model.p * model.v / (model.q - 1)
    few, many = model.expected_average_value(np.array([1.0, 50.0]), np.array([100.0, 100.0]))
    assert population < few < many < 100


def test_empty_inputs_report_failure_instead_of_numbers() -> None:
    empty = np.array([], dtype=float)
    assert not fit_bg_nbd(empty, empty, empty).converged
    only_one_timers = fit_gamma_gamma(np.zeros(3), np.zeros(3))
    assert (only_one_timers.converged, only_one_timers.customers) == (False, 0)


def test_clv_discounting_and_horizon() -> None:
    spend = GammaGamma(p=6.25, q=3.74, v=15.44)
    x, t_x, t, m = np.array([4.0]), np.array([30.0]), np.array([39.0]), np.array([35.0])
    year = customer_lifetime_value(TRUE, spend, x, t_x, t, m, months=12, monthly_discount_rate=0.01, unit_days=7)
    two_years = customer_lifetime_value(TRUE, spend, x, t_x, t, m, months=24, monthly_discount_rate=0.01, unit_days=7)
    undiscounted = customer_lifetime_value(TRUE, spend, x, t_x, t, m, months=12, monthly_discount_rate=0.0, unit_days=7)
    assert 0 < year[0] < two_years[0]
    assert year[0] < undiscounted[0]
    expected = TRUE.expected_purchases(12 * 30 / 7, x, t_x, t) * spend.expected_average_value(x, m)
    assert undiscounted[0] == pytest.approx(expected[0])


def test_a_degenerate_shop_is_never_reported_as_converged() -> None:
    """One customer with two orders drove the parameters to 1e56 and the log-likelihood to +1024, 'converged'."""
    one = fit_bg_nbd(np.array([1.0]), np.array([30.0]), np.array([60.0]))
    assert (one.converged, one.reason) == (False, "TOO_FEW_CUSTOMERS")
    one_timers = fit_bg_nbd(np.zeros(50), np.zeros(50), np.full(50, 90.0))
    assert (one_timers.converged, one_timers.reason) == (False, "TOO_FEW_REPEAT_BUYERS")
    # Enough customers, but every history identical: the data cannot separate the parameters.
    same = fit_bg_nbd(np.full(40, 2.0), np.full(40, 20.0), np.full(40, 30.0))
    assert not same.converged
    assert same.reason in {"BOUNDARY_SOLUTION", "POSITIVE_LOG_LIKELIHOOD", "NOT_A_MAXIMUM", "DID_NOT_CONVERGE"}
    spend = fit_gamma_gamma(np.full(20, 2.0), np.full(20, 5_000.0))  # every repeat buyer spends the same
    assert (spend.converged, bool(spend.reason)) == (False, True)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.integers(1, 400), st.integers(0, 400)),
        min_size=1,
        max_size=40,
    )
)
def test_a_fit_reported_converged_is_an_interior_maximum(histories: list[tuple[int, int, int]]) -> None:
    """Small and degenerate shops: whatever is reported converged is finite, bounded, and predicts sanely."""
    x = np.array([float(h[0]) for h in histories])
    t = np.array([float(h[1]) for h in histories])
    t_x = np.array([0.0 if h[0] == 0 else float(min(h[2], h[1])) for h in histories])
    fit = fit_bg_nbd(x, t_x, t)
    assert fit.converged == (fit.reason == "")
    if fit.converged:
        assert fit.log_likelihood <= 0
        assert all(np.isfinite(v) and 1e-12 < v < 1e12 for v in fit.params.values())
        model = BgNbd(**fit.params)
        alive = model.probability_alive(x, t_x, t)
        expected = model.expected_purchases(90, x, t_x, t)
        assert np.all((alive >= 0) & (alive <= 1))
        assert np.all(np.isfinite(expected))
        assert np.all(expected >= 0)
    m = np.where(x > 0, 1_000.0 + 37.0 * np.arange(len(x)) % 500, 0.0)
    spend = fit_gamma_gamma(x, m)
    assert spend.converged == (spend.reason == "")
    if spend.converged:
        assert spend.log_likelihood <= 0
        assert all(np.isfinite(v) and 1e-12 < v < 1e12 for v in spend.params.values())
        population = GammaGamma(**spend.params).expected_average_value(x[x > 0], m[x > 0])
        assert np.all(np.isfinite(population))
