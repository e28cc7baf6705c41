"""Inference statistics of an unpenalised maximum-likelihood GLM fit, from its last exact pass.

Standard errors come from the inverse of the Hessian of the summed loss at the estimate (the
observed information; for logistic loss it equals the Fisher information ``XᵀWX``). Logistic
fits report Wald z statistics with normal p-values; least squares scales ``(XᵀX)⁻¹`` by
``σ̂² = RSS / (n − p)`` and reports t statistics with ``n − p`` degrees of freedom — the
conventions of statsmodels' ``Logit``/``OLS`` and MADlib's ``logregr``/``linregr``.
P-values need only the standard library: ``erfc`` for the normal distribution and the
regularised incomplete beta function (continued fraction, Numerical Recipes 3rd ed. §6.4) for
Student's t.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .exact import Pass, centring, uncentre
from .solvers import Coordinates


def statistics(loss: str, P: Pass, coords: Coordinates) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics (log-likelihood, AIC, condition number, R²) and per-coefficient statistics.

    ``P`` is the pass at the estimate, with its Hessian. Returns ``(metrics, fitted)``; the
    arrays of ``fitted`` (``std_err``, ``statistic``, ``p_value``) follow the coefficients,
    intercept first when fitted, and ``vcov`` is their variance–covariance matrix. A pass over
    centred features (``P.center``) is mapped to the raw features' coefficients,
    ``β = Q β_c`` and ``V = Q V_c Qᵀ`` (:func:`bismarckpy.exact.centring`).
    """
    assert P.hess is not None
    n, p = P.rows, P.beta.size
    A = coords.matrix()
    H_theta = A.T @ P.hess @ A  # well conditioned: invert here, map back
    Q = centring(P.center, p, coords.fit_intercept)
    QA = Q @ A
    inv = QA @ np.linalg.inv(H_theta) @ QA.T
    beta = uncentre(P.beta, P.center, coords.fit_intercept)
    Qi = np.linalg.inv(Q)  # the raw design's Hessian, for its condition number
    eig = np.linalg.eigvalsh(Qi.T @ P.hess @ Qi)
    cond = math.sqrt(eig[-1] / eig[0]) if eig[0] > 0 else math.inf
    metrics: dict[str, Any] = {"condition_number": cond}
    if loss == "logistic":
        vcov = inv
        ll = -P.loss_sum
        kind, df = "z", None
    else:
        rss = 2.0 * P.loss_sum
        df = n - p
        sigma2 = rss / df if df > 0 else math.nan
        vcov = sigma2 * inv
        ll = -0.5 * n * (math.log(2.0 * math.pi * rss / n) + 1.0) if rss > 0 else math.inf
        tss = P.sum_y2 - (P.sum_y ** 2 / n if coords.fit_intercept else 0.0)
        r2 = 1.0 - rss / tss if tss > 0 else math.nan
        metrics["r2"] = r2
        metrics["adj_r2"] = (1.0 - (n - coords.k) / df * (1.0 - r2)) if df > 0 else math.nan
        metrics["sigma"] = math.sqrt(sigma2) if df > 0 else math.nan
        metrics["df_resid"] = df
        kind = "t"
    metrics["log_likelihood"] = ll
    metrics["aic"] = 2.0 * p - 2.0 * ll
    metrics["bic"] = math.log(n) * p - 2.0 * ll
    se = np.sqrt(np.maximum(np.diag(vcov), 0.0))
    stat = np.divide(beta, se, out=np.full(p, math.nan), where=se > 0)
    pval = [two_sided_p(float(s), df) for s in stat]
    fitted = {"statistic_kind": kind, "std_err": se.tolist(), "statistic": stat.tolist(),
              "p_value": pval, "vcov": vcov.tolist()}
    return metrics, fitted


def two_sided_p(stat: float, df: int | None) -> float:
    """``P(|T| ≥ |stat|)`` for a standard normal (``df`` None) or Student t with ``df``."""
    if not math.isfinite(stat):
        return 0.0 if math.isinf(stat) else math.nan
    if df is None:
        return math.erfc(abs(stat) / math.sqrt(2.0))
    if df <= 0:
        return math.nan
    t2 = stat * stat
    return _betainc(0.5 * df, 0.5, df / (df + t2), t2 / (df + t2))


def betainc_regularized(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 ≤ x ≤ 1``.

    Lentz's continued fraction, evaluated on the side where it converges fast (Numerical
    Recipes 3rd ed., §6.4); accurate to about 1e-14 relative.
    """
    return _betainc(a, b, x, 1.0 - x)


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """``I_x(a, b)`` given both ``x`` and ``y = 1 − x``, each computed without cancellation."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log(y))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, y) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h
