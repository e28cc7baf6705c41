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

from .exact import Pass, to_original
from .solvers import Coordinates


def statistics(loss: str, P: Pass, coords: Coordinates) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics (log-likelihood, AIC, condition number, R²) and per-coefficient statistics.

    ``P`` is the pass at the estimate, with its Hessian, in centred coordinates
    (:mod:`bismarckpy.exact`); ``coords`` standardises them. The covariance is inverted there,
    where it is well conditioned whatever the columns' offsets, and mapped back to the raw
    features exactly (:func:`bismarckpy.exact.to_original`). Returns ``(metrics, fitted)``;
    the arrays of ``fitted`` (``std_err``, ``statistic``, ``p_value``) follow the coefficients,
    intercept first when fitted, and ``vcov`` is their variance–covariance matrix.
    """
    assert P.hess is not None
    n, p = P.rows, P.beta.size
    A = coords.matrix()
    H_theta = A.T @ P.hess @ A  # well conditioned: invert here, map back
    inv_c = A @ np.linalg.inv(H_theta) @ A.T
    beta, inv = to_original(P.beta, P.center, P.ycenter, coords.fit_intercept, inv_c)
    assert inv is not None
    # cond(H_raw) = λmax(H_raw)·λmax(H_raw⁻¹): both extremes are well conditioned to compute,
    # unlike the smallest eigenvalue of H_raw when a column sits far from zero.
    T_inv = np.eye(p)
    if coords.fit_intercept and P.center is not None and p > 1:
        T_inv[0, 1:] = P.center
    top = float(np.linalg.eigvalsh(T_inv.T @ P.hess @ T_inv)[-1])
    top_inv = float(np.linalg.eigvalsh(inv)[-1])
    cond = math.sqrt(top * top_inv) if top > 0 and top_inv > 0 else math.inf
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
        # labels are centred (ycenter ≈ their mean) when there is an intercept: no cancellation
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
    if df >= 1e4 and t2 * t2 < 2e-5 * df:
        return 2.0 * _t_sf_large_df(abs(stat), df)
    return _betainc(0.5 * df, 0.5, df / (df + t2), t2 / (df + t2))


def _t_sf_large_df(t: float, df: float) -> float:
    """``P(T > t)`` for Student's t with large ``df`` (``t⁴ < 2e-5 df``) by its expansion in 1/df.

    ``Q(t) + φ(t) [(t³ + t) / (4 df) + (3t⁷ − 7t⁵ − 5t³ − 3t) / (96 df²)]`` (the Edgeworth-type
    expansion of the t distribution, Fisher 1925; Johnson, Kotz & Balakrishnan, *Continuous
    Univariate Distributions* 2, ch. 28); the omitted term is ``O(t¹¹ φ / df³)``, below 1e-13
    of the result in this range. There the incomplete beta function would evaluate its
    continued fraction at ``x`` within 1/df of 1, where it converges slowly and loses digits.
    """
    t2 = t * t
    g1 = (t2 + 1.0) * t / 4.0
    g2 = (((3.0 * t2 - 7.0) * t2 - 5.0) * t2 - 3.0) * t / 96.0
    v = 1.0 / df
    density = math.exp(-0.5 * t2) / math.sqrt(2.0 * math.pi)
    return 0.5 * math.erfc(t / math.sqrt(2.0)) + density * v * (g1 + v * g2)


def _lgamma_ratio(a: float, b: float) -> float:
    """``log Γ(a + b) − log Γ(a) − log Γ(b)`` without the cancellation of large ``a``.

    For ``a > 1e4`` and ``b = ½`` (Student's t at large df) the difference of the first two
    is ``½ log a − 1/(8a) + 1/(192a³) + …`` (the asymptotic series of ``Γ(a + ½)/Γ(a)``,
    DLMF 5.11.14 with Bernoulli polynomials at ½); lgamma of 5e8 would carry absolute errors
    of 1e-7 into the p-value.
    """
    if b == 0.5 and a > 1e4:
        return (0.5 * math.log(a) - 1.0 / (8.0 * a) + 1.0 / (192.0 * a ** 3)
                - math.lgamma(0.5))
    return math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)


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
    log_x = math.log1p(-y) if y < 0.5 else math.log(x)  # accurate when x is near 1
    log_y = math.log1p(-x) if x < 0.5 else math.log(y)
    log_front = _lgamma_ratio(a, b) if b <= a else _lgamma_ratio(b, a)
    log_front += a * log_x + b * log_y
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
    for m in range(1, 1_000_000):
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
