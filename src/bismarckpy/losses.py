"""Loss functions of the generalized linear models, as pure numpy functions of the margin.

Each loss maps the margin ``z = x·w + b`` and the encoded label ``y`` to a per-row loss and its
derivative ``d loss / d z``; the chain rule through ``z`` gives every gradient the engine needs.
Labels are encoded before they get here: ``logistic`` takes 0/1, ``hinge`` takes -1/+1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

LossFn = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def logistic(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Negative log-likelihood of a Bernoulli label y in {0, 1}; stable for large |z|.

    One ``logaddexp`` serves both: ``log(1 + e^z)`` is the loss's first term, and the
    probability is ``e^(z - log(1 + e^z))`` (no masks, no overflow).
    """
    softplus = np.logaddexp(0.0, z)
    return softplus - y * z, np.exp(z - softplus) - y


def squared(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half the squared error, ``(z - y)**2 / 2`` (least squares, as scikit-learn defines it)."""
    r = z - y
    return 0.5 * r * r, r


def hinge(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear SVM loss ``max(0, 1 - y z)`` for y in {-1, +1}; subgradient 0 at the kink."""
    m = y * z
    active = m < 1.0
    return np.where(active, 1.0 - m, 0.0), np.where(active, -y, 0.0)


@dataclass(frozen=True)
class Loss:
    """One loss of the registry: what every module asks about a loss, asked here, by name.

    ``code`` is its number inside a GLM state; ``coding`` how a class label is coded for it
    (``"01"``: 0/1, ``"pm1"``: -1/+1, ``None``: a real number, regression); ``zero_row_loss``
    the loss of one row at margin 0 for classifiers (the all-zero model's, per row), None for
    regression (it depends on the label); ``probabilistic`` whether the model gives class
    probabilities (log-loss, ``predict_proba``); ``kind`` the model kind that trains it
    (``"softmax"``: K classes coded ``"index"``, by :mod:`bismarckpy.kinds.softmax`).
    """

    name: str
    fn: LossFn | None  # of the margin z (GLM losses); None for a kind's own loss
    code: int
    coding: str | None
    zero_row_loss: float | None
    probabilistic: bool = False
    kind: str = "glm"  # the model kind (bismarckpy.kinds) that trains it

    @property
    def classifier(self) -> bool:
        """Whether the label is a class rather than a real number."""
        return self.coding is not None


REGISTRY: dict[str, Loss] = {
    "logistic": Loss("logistic", logistic, 0, "01", math.log(2.0), probabilistic=True),
    "squared": Loss("squared", squared, 1, None, None),
    "hinge": Loss("hinge", hinge, 2, "pm1", 1.0),
    "softmax": Loss("softmax", None, -1, "index", None, probabilistic=True, kind="softmax"),
}
BY_CODE: dict[int, Loss] = {loss.code: loss for loss in REGISTRY.values()}

#: The GLM's loss functions of the margin by name (what the vectorised paths call).
LOSSES: dict[str, LossFn] = {name: loss.fn for name, loss in REGISTRY.items()
                             if loss.fn is not None}

#: Losses of a binary GLM whose label is one of two classes rather than a real number.
CLASSIFIERS = tuple(name for name, loss in REGISTRY.items()
                    if loss.classifier and loss.kind == "glm")


def get(name: str) -> Loss:
    """The registered loss called ``name``; KeyError names the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(REGISTRY)}") from None


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Probability of the positive class for margins ``z``, by the formula :func:`logistic` uses."""
    z = np.atleast_1d(np.asarray(z, dtype=np.float64))
    return np.exp(z - np.logaddexp(0.0, z))
