"""Predictive CLV: BG/NBD (Fader, Hardie & Lee 2005) and Gamma-Gamma (Fader, Hardie & Lee 2005b).

Pure numerics on per-customer summaries (frequency x, recency t_x, age T,
monetary value m) in one time unit. Parameters are fitted by maximum
likelihood on log-parameters (so they stay positive). A fit counts as
converged only when it is an interior maximum: the optimiser stopped on its
tolerances, every parameter is finite and within SCALE_LIMIT of its starting
scale, the log-likelihood is not positive, no nearby point beats it and the
gradient there is near zero. Anything else (a degenerate shop drives the
parameters to infinity and the likelihood above 1) says why in `Fit.reason`
instead of pretending. Formulas follow the papers and the `lifetimes` package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, special

Array = NDArray[np.float64]


# The least data a fit is tried on: four BG/NBD parameters need customers whose
# histories differ, and both models learn rates and spend from repeat buyers.
MIN_CUSTOMERS = 10
MIN_REPEAT_BUYERS = 3
SCALE_LIMIT = 1e6  # a parameter a million times above or below its starting scale has run to a boundary
_STEP = 1e-4  # log-parameter step of the maximum check
_NELDER_MEAD = {"maxiter": 4000, "xatol": 1e-7, "fatol": 1e-7}
_RESTARTS = 3


@dataclass(frozen=True)
class Fit:
    params: dict[str, float]
    log_likelihood: float  # total over customers, at the fitted parameters
    converged: bool
    message: str
    customers: int
    # "" when converged, else NO_CUSTOMERS, TOO_FEW_CUSTOMERS, TOO_FEW_REPEAT_BUYERS,
    # DID_NOT_CONVERGE, BOUNDARY_SOLUTION, POSITIVE_LOG_LIKELIHOOD or NOT_A_MAXIMUM.
    reason: str = ""


def _refused(reason: str, message: str, customers: int) -> Fit:
    return Fit({}, float("nan"), False, message, customers, reason)


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
    result = optimize.minimize(negative_ll, np.log(start), method="Nelder-Mead", options=_NELDER_MEAD)
    for _ in range(_RESTARTS):  # a fresh simplex from where the last stopped: Nelder-Mead stalls on long ridges
        if result.success:
            break
        result = optimize.minimize(negative_ll, result.x, method="Nelder-Mead", options=_NELDER_MEAD)
    params = {n: float(v) for n, v in zip(names, np.exp(result.x), strict=True)}
    reason, message = _judge(negative_ll, result, names, start)
    return Fit(
        params=params,
        log_likelihood=float(-result.fun),
        converged=not reason,
        message=message,
        customers=customers,
        reason=reason,
    )


def _judge(
    negative_ll: Callable[[Array], float], result: optimize.OptimizeResult, names: Sequence[str], start: Array
) -> tuple[str, str]:
    """(reason, message) of a fit: ("", the optimiser's message) for an interior maximum."""
    best = float(result.fun)
    if not result.success or not np.isfinite(best) or best >= 1e299:  # 1e300: the objective's "undefined here"
        return "DID_NOT_CONVERGE", f"the optimiser stopped without converging: {result.message}"
    for name, log_value, log_start in zip(names, result.x, np.log(start), strict=True):
        if not np.isfinite(log_value) or abs(log_value - log_start) > np.log(SCALE_LIMIT):
            return "BOUNDARY_SOLUTION", (
                f"{name} = {float(np.exp(log_value)):.3g} ran to a boundary (more than {SCALE_LIMIT:.0e} times "
                f"its starting scale {float(np.exp(log_start)):.3g}): the data cannot pin the model down"
            )
    if best < 0:
        return "POSITIVE_LOG_LIKELIHOOD", (
            f"log-likelihood {-best:.3g} > 0: the histories are too alike to fit (degenerate data)"
        )
    tolerance = 1e-6 * max(1.0, abs(best))
    for i, name in enumerate(names):
        step = np.zeros(len(names))
        step[i] = _STEP
        up, down = negative_ll(result.x + step), negative_ll(result.x - step)
        if min(up, down) < best - tolerance:
            return "NOT_A_MAXIMUM", f"a nearby {name} fits better: the optimiser stopped short of the maximum"
        if abs(up - down) / (2 * _STEP) > 1e-3 * max(1.0, abs(best)):
            return "NOT_A_MAXIMUM", f"the likelihood still slopes along {name} at the fit"
    return "", str(result.message)


def fit_bg_nbd(x: Array, t_x: Array, t: Array) -> Fit:
    """Maximum-likelihood (r, alpha, a, b) for customers' (frequency, recency, T)."""
    repeat = int(np.sum(x > 0))
    if len(x) == 0:
        return _refused("NO_CUSTOMERS", "no customers to fit", 0)
    if len(x) < MIN_CUSTOMERS:
        return _refused("TOO_FEW_CUSTOMERS", f"only {len(x)} customers; the fit needs at least {MIN_CUSTOMERS}", len(x))
    if repeat < MIN_REPEAT_BUYERS:
        return _refused(
            "TOO_FEW_REPEAT_BUYERS",
            f"only {repeat} repeat buyers; the fit needs at least {MIN_REPEAT_BUYERS}",
            len(x),
        )

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
        return _refused("TOO_FEW_REPEAT_BUYERS", "no repeat buyers with spend to fit", 0)
    if len(x) < MIN_REPEAT_BUYERS:
        return _refused(
            "TOO_FEW_REPEAT_BUYERS",
            f"only {len(x)} repeat buyers with spend; the fit needs at least {MIN_REPEAT_BUYERS}",
            len(x),
        )

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
