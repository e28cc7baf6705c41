"""Penalties (regularisers) on the coefficients, in scikit-learn's parametrisation.

``alpha`` scales the penalty; ``elasticnet`` mixes ``l1_ratio * |w|_1 + (1 - l1_ratio) / 2 * |w|²``.
The L1 part is applied as a proximal (soft-threshold) step so coefficients reach exact zeros.
The intercept is never penalised.
"""

from __future__ import annotations

import numpy as np

PENALTIES = ("none", "l2", "l1", "elasticnet")


def mix(penalty: str, l1_ratio: float) -> tuple[float, float]:
    """Return the (l1, l2) weights of a penalty name; ``elasticnet`` uses ``l1_ratio``."""
    if penalty == "none":
        return 0.0, 0.0
    if penalty == "l2":
        return 0.0, 1.0
    if penalty == "l1":
        return 1.0, 0.0
    if penalty == "elasticnet":
        return float(l1_ratio), 1.0 - float(l1_ratio)
    raise ValueError(f"unknown penalty {penalty!r}")


def value(w: np.ndarray, alpha: float, l1: float, l2: float) -> float:
    """The penalty term added to the mean loss: ``alpha * (l1 |w|_1 + l2 / 2 |w|²)``."""
    if alpha == 0.0 or (l1 == 0.0 and l2 == 0.0):
        return 0.0
    return float(alpha * (l1 * np.abs(w).sum() + 0.5 * l2 * np.dot(w, w)))


def step(w: np.ndarray, grad: np.ndarray, eta: float, alpha: float, l1: float, l2: float,
         scale: float = 1.0) -> None:
    """One proximal-gradient step in place on the gradient ``scale * grad``: the L2 shrink, the
    gradient, then the L1 soft-threshold. ``scale`` saves building the scaled vector."""
    if l2 and alpha:
        w *= 1.0 - eta * alpha * l2
    w -= (eta * scale) * grad
    if l1 and alpha:
        soft_threshold(w, eta * alpha * l1)


def soft_threshold(w: np.ndarray, shrink: float) -> None:
    """The L1 proximal step in place: move each coefficient ``shrink`` toward zero, stop at 0."""
    np.copyto(w, np.sign(w) * np.maximum(np.abs(w) - shrink, 0.0))
