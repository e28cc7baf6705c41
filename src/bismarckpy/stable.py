"""Scores of extreme but finite feature values without NaN: linear margins and softmax rows.

Pure numpy. A row of features such as ``[1e308, 1e308, -1e308, -1e308]`` makes ``X @ W`` add
``+inf`` to ``-inf`` (NaN), or overflow in an intermediate sum, although every feature is
finite; the margin's true value is finite or a signed infinity. :func:`linear_scores` computes
such rows again on features scaled by their largest magnitude ``s`` (``z = s · ((x / s) · w +
b / s)``), which never overflows before the last product, so the margin is its float64 value,
or ``±inf`` when that is beyond float64. :func:`softmax_rows` turns such margins into
probabilities by log-sum-exp, with ``+inf`` margins taking all the probability. Callers map
what is still not finite to SQL NULL.
"""

from __future__ import annotations

import numpy as np


def linear_scores(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray | float) -> np.ndarray:
    """``X @ coef + intercept`` (``X`` n × d, ``coef`` d or d × K → n or n × K), with rows
    whose margins are not finite computed again scaled by their largest feature magnitude (an
    intermediate sum may overflow although the margin does not): the result is ±inf only
    where the margin is beyond float64, NaN only where ``X`` itself holds NaN."""
    X = np.asarray(X, dtype=np.float64)
    coef = np.asarray(coef, dtype=np.float64)
    b = np.asarray(intercept, dtype=np.float64)
    with np.errstate(all="ignore"):
        Z = X @ coef + b
        # inf may be an intermediate overflow too (2e308 - 1e308): such rows are redone
        bad = ~np.isfinite(Z) if Z.ndim == 1 else ~np.isfinite(Z).all(axis=1)
        if bad.any():
            Xb = X[bad]
            s = np.maximum(np.abs(Xb).max(axis=1, initial=0.0), 1.0)
            shape = (-1,) if Z.ndim == 1 else (-1, 1)
            Z[bad] = ((Xb / s[:, None]) @ coef + b / s.reshape(shape)) * s.reshape(shape)
    return Z


def softmax_rows(Z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of margins ``Z`` (n × K) by log-sum-exp: no overflow for any finite
    margins; a row with ``+inf`` margins shares the probability among those classes (the
    limit); a row holding NaN, or only ``-inf``, is all NaN (it has no probabilities)."""
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim == 1:
        Z = Z.reshape(1, -1)
    top = Z.max(axis=1, keepdims=True) if Z.shape[1] else np.zeros((len(Z), 1))
    with np.errstate(all="ignore"):
        finite_top = np.isfinite(top[:, 0])
        E = np.exp(np.where(finite_top[:, None], Z - top, -np.inf))
        P = E / E.sum(axis=1, keepdims=True)
        inf = np.isposinf(Z)
        up = inf.any(axis=1)
        P[up] = inf[up] / inf[up].sum(axis=1, keepdims=True)
    P[np.isnan(Z).any(axis=1) | (~finite_top & ~up)] = np.nan
    return P
