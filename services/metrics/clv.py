"""Predictive CLV: BG/NBD (Fader, Hardie & Lee 2005) and Gamma-Gamma (Fader, Hardie & Lee 2005b).

Pure numerics on per-customer summaries (frequency x, recency t_x, age T,
monetary value m) in one time unit. Parameters are fitted by maximum
likelihood on log-parameters (so they stay positive); a fit that does not
converge says so in `Fit.converged` and `Fit.message` instead of pretending.
Formulas follow the papers and the `lifetimes` package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, special

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Fit:
    params: dict[str, float]
    log_likelihood: float  # total over customers, at the fitted parameters
    converged: bool
    message: str
    customers: int


@dataclass(frozen=True)
class BgNbd:
    r: float
    alpha: float
    a: float
    b: float

    def log_likelihood(self, x: Array, t_x: Array, t: Array) -> Array:
        """Per-customer log-likelihood of (x, t_x, T)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
        a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
        a3 = -(r + x) * np.log(alpha + t)
        with np.errstate(divide="ignore", invalid="ignore"):
            a4 = np.where(
                x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x), -np.inf
            )
        result: Array = a1 + a2 + np.logaddexp(a3, a4)
        return result

    def _death_odds(self, x: Array, t_x: Array, t: Array) -> Array:
        """a/(b+x-1) · ((α+T)/(α+t_x))^(r+x) for repeat buyers; 0 for one-time buyers (who are surely alive)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            odds = self.a / (self.b + x - 1) * ((self.alpha + t) / (self.alpha + t_x)) ** (self.r + x)
        result: Array = np.where(x > 0, odds, 0.0)
        return result

    def probability_alive(self, x: Array, t_x: Array, t: Array) -> Array:
        result: Array = 1.0 / (1.0 + self._death_odds(x, t_x, t))
        return result

    def expected_purchases(self, horizon: float, x: Array, t_x: Array, t: Array) -> Array:
        """E[X(horizon) | x, t_x, T]: purchases expected in the next `horizon` units."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, horizon / (alpha + t + horizon))
        first = (a + b + x - 1) / (a - 1)
        second = 1 - ((alpha + t) / (alpha + t + horizon)) ** (r + x) * hyp
        result: Array = first * second / (1 + self._death_odds(x, t_x, t))
        return result


@dataclass(frozen=True)
class GammaGamma:
    p: float
    q: float
    v: float

    def log_likelihood(self, x: Array, m: Array) -> Array:
        """Per-customer log-likelihood of the mean repeat spend m over x repeat purchases (x > 0)."""
        p, q, v = self.p, self.q, self.v
        result: Array = (
            special.gammaln(p * x + q)
            - special.gammaln(p * x)
            - special.gammaln(q)
            + q * np.log(v)
            + (p * x - 1) * np.log(m)
            + p * x * np.log(x)
            - (p * x + q) * np.log(x * m + v)
        )
        return result

    def expected_average_value(self, x: Array, m: Array) -> Array:
        """E[M | x, m]: shrinks a customer's mean spend towards the population mean p·v/(q-1)."""
        p, q, v = self.p, self.q, self.v
        population = p * v / (q - 1)
        result: Array = (q - 1) / (p * x + q - 1) * population + p * x / (p * x + q - 1) * m
        return result


def _fit(negative_ll: Callable[[Array], float], names: Sequence[str], start: Array, customers: int) -> Fit:
    result = optimize.minimize(
        negative_ll, np.log(start), method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-7, "fatol": 1e-7}
    )
    params = {n: float(v) for n, v in zip(names, np.exp(result.x), strict=True)}
    finite = bool(np.isfinite(result.fun))
    return Fit(
        params=params,
        log_likelihood=float(-result.fun),
        converged=bool(result.success) and finite,
        message=str(result.message),
        customers=customers,
    )


def fit_bg_nbd(x: Array, t_x: Array, t: Array) -> Fit:
    """Maximum-likelihood (r, alpha, a, b) for customers' (frequency, recency, T)."""
    if len(x) == 0:
        return Fit({}, float("nan"), False, "no customers to fit", 0)

    def negative(log_params: Array) -> float:
        model = BgNbd(*np.exp(log_params))
        total = float(np.sum(model.log_likelihood(x, t_x, t)))
        return -total if np.isfinite(total) else 1e300

    scale = max(float(np.mean(t)), 1.0)
    return _fit(negative, ("r", "alpha", "a", "b"), np.array([1.0, scale, 1.0, 1.0]), len(x))


def fit_gamma_gamma(x: Array, m: Array) -> Fit:
    """Maximum-likelihood (p, q, v) on repeat buyers only (x > 0, m > 0)."""
    keep = (x > 0) & (m > 0)
    x, m = x[keep], m[keep]
    if len(x) == 0:
        return Fit({}, float("nan"), False, "no repeat buyers with spend to fit", 0)

    def negative(log_params: Array) -> float:
        total = float(np.sum(GammaGamma(*np.exp(log_params)).log_likelihood(x, m)))
        return -total if np.isfinite(total) else 1e300

    return _fit(negative, ("p", "q", "v"), np.array([1.0, 2.0, float(np.mean(m))]), len(x))


def customer_lifetime_value(
    transactions: BgNbd,
    spend: GammaGamma,
    x: Array,
    t_x: Array,
    t: Array,
    m: Array,
    *,
    months: int,
    monthly_discount_rate: float,
    unit_days: float = 1.0,
) -> Array:
    """Discounted value of the next `months` months: Σ_i ΔE[X] in month i × E[M] / (1+d)^i (a month = 30 days)."""
    value = spend.expected_average_value(np.maximum(x, 0), np.where(x > 0, m, 0.0))
    per_month = 30.0 / unit_days
    total = np.zeros_like(x, dtype=float)
    previous = np.zeros_like(x, dtype=float)
    for month in range(1, months + 1):
        cumulative = transactions.expected_purchases(month * per_month, x, t_x, t)
        total += (cumulative - previous) * value / (1 + monthly_discount_rate) ** month
        previous = cumulative
    return total
