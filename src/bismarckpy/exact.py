"""One pass of an exact GLM solver as an algebraic aggregate: loss, gradient and Hessian sums.

Where an SGD epoch (:mod:`bismarckpy.glm`) moves the model row by row, this aggregate keeps the
coefficients fixed and adds up, over every row, the quantities Newton's method and L-BFGS need
at that point: the number of rows, the summed loss, the gradient ``Σ dℓ/dz · x̃`` and (for
Newton) the Hessian ``Σ d²ℓ/dz² · x̃ x̃ᵀ`` of the summed loss, where ``x̃ = (1, x)`` when the
model has an intercept. All of them are sums, so the parallel merge is an exact sum too: the
result does not depend on how PostgreSQL splits the rows between workers.

The state is one little-endian float64 buffer (``bytea``): a fixed header, the coefficients
``β`` (intercept first), the centre ``c`` (``p`` values, 0 for the intercept), the gradient
(``p`` values) and, in ``HESSIAN`` mode, the ``p × p`` Hessian. The functions are pure: bytes
in, bytes out.

With an intercept, the features are centred, ``x − c``, before anything is summed (``c`` is
the training mean): the sums are those of the model ``z = β₀ + (x − c)·β`` (the same slopes; the
intercept of the raw features is ``β₀ − c·β``, :func:`uncentre`). Sums over raw values of a
column far from zero (1e8 ± 1) would square the 1e8 and lose the spread to rounding; a packed
block's offsets are moved to the centre in float64 first, ``(offset − c) + R``, so no such
cancellation occurs anywhere.

With class weights (scikit-learn's ``class_weight``, logistic loss), each row's loss, gradient
and Hessian terms are multiplied by its class's weight: the sums are those of the weighted
log-likelihood, and the statistics derived from them treat the weights as frequency weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidData
from .kinds.glm import encode_labels
from .pack import parse_block

MAGIC = 1012.0
LOSS_CODES = {"logistic": 0, "squared": 1}
LOSS_ONLY, GRADIENT, HESSIAN = range(3)  # what a pass accumulates
EXTREME = 1e-8  # fitted probabilities this close to 0 or 1 count as separated rows

(_MAGIC, _P, _LOSS, _INTERCEPT, _MODE, _ITEMSIZE, _YMODE, _YPOS, _YSHIFT, _YSCALE, _ROWS,
 _LOSS_SUM, _SKIPPED, _PARTS, _EXTREME, _SUM_Y, _SUM_Y2, _CW_NEG, _CW_POS,
 _YCENTER) = range(20)
HEADER = 20
_F8 = np.dtype("<f8")


@dataclass
class Pass:
    """A decoded, finished pass: sums over the rows at the coefficients ``beta``.

    ``grad`` and ``hess`` are of the *summed* loss (not the mean); ``hess`` is None unless the
    pass was run in ``HESSIAN`` mode. ``extreme`` counts rows whose fitted probability is within
    ``EXTREME`` of 0 or 1 (logistic only); ``sum_y``/``sum_y2`` are of the coded labels.
    ``beta``, ``grad`` and ``hess`` are of the centred features when ``center`` is set (one
    value per feature; see :func:`uncentre`).
    """

    beta: np.ndarray
    rows: int
    loss_sum: float
    grad: np.ndarray
    hess: np.ndarray | None
    skipped: int
    parts: int
    extreme: int
    sum_y: float
    sum_y2: float
    center: np.ndarray | None = None
    ycenter: float = 0.0  # subtracted from squared-loss labels (sum_y, sum_y2 are of y − it)


def state_size(p: int, mode: int) -> int:
    """Number of float64 values in a state with ``p`` coefficients."""
    return HEADER + 3 * p + (p * p if mode == HESSIAN else 0)


def uncentre(beta: np.ndarray, center: np.ndarray | None, fit_intercept: bool) -> np.ndarray:
    """Coefficients of the raw features from those of the centred ones (intercept first)."""
    out = np.array(beta, dtype=_F8)
    if fit_intercept and center is not None:
        out[0] -= float(center @ out[1:])
    return out


def centring(center: np.ndarray | None, p: int, fit_intercept: bool) -> np.ndarray:
    """``Q`` (``p × p``) with ``β_raw = Q β_centred``: for covariance matrices ``Q V Qᵀ``."""
    Q = np.eye(p)
    if fit_intercept and center is not None:
        Q[0, 1:] = -np.asarray(center, dtype=_F8)
    return Q


def initialize(beta: np.ndarray, *, loss: str, fit_intercept: bool, mode: int,
               itemsize: int = 8,
               y_coding: tuple[int, float, float, float] | None = None,
               class_weight: tuple[float, float] = (1.0, 1.0),
               center: np.ndarray | None = None, ycenter: float = 0.0) -> bytes:
    """The initial state of a pass at coefficients ``beta`` (intercept first if fitted).

    ``itemsize`` is the width of packed blocks' values; ``y_coding`` = (mode, positive class,
    shift, scale) codes their raw labels as in :func:`bismarckpy.glm.encode_labels`.
    ``class_weight`` = (negative, positive) weighs each row of a class (logistic loss: the
    coded label 0 or 1). ``center`` (one value per feature; None: 0) is subtracted from the
    features before they are summed, ``ycenter`` from the labels (squared loss: then
    ``β₀`` is the intercept minus ``ycenter``, so sums of labels far from zero keep their
    spread); only with an intercept. Raises ``ValueError`` for a
    loss without a second derivative (hinge).
    """
    if loss not in LOSS_CODES:
        raise ValueError(f"no exact solver for loss {loss!r}")
    beta = np.asarray(beta, dtype=_F8)
    p = beta.size
    s = np.zeros(state_size(p, mode), dtype=_F8)
    s[_MAGIC], s[_P], s[_LOSS] = MAGIC, p, LOSS_CODES[loss]
    s[_INTERCEPT], s[_MODE], s[_ITEMSIZE] = float(fit_intercept), mode, itemsize
    s[_YMODE], s[_YPOS], s[_YSHIFT], s[_YSCALE] = y_coding or (0, 1.0, 0.0, 1.0)
    s[_PARTS] = 1
    s[_CW_NEG], s[_CW_POS] = class_weight
    s[HEADER:HEADER + p] = beta
    if center is not None:
        if not fit_intercept:
            raise ValueError("features are centred only with an intercept")
        s[HEADER + p + 1:HEADER + 2 * p] = center
    if ycenter and not fit_intercept:
        raise ValueError("labels are centred only with an intercept")
    s[_YCENTER] = ycenter
    return s.tobytes()


def to_original(beta: np.ndarray, center: np.ndarray | None, ycenter: float,
                fit_intercept: bool,
                vcov: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Centred coefficients (and covariance) → those of the raw features and labels.

    ``β_raw = Q β + ycenter·e₀`` and ``V_raw = Q V Qᵀ`` with the unit upper-triangular ``Q``
    of :func:`centring`: the intercept is ``ycenter + β₀ − c·β``, its variance
    ``V₀₀ − 2 c·V₀ + cᵀ V c``; slopes and their covariances are unchanged.
    """
    beta = np.asarray(beta, dtype=_F8)
    c = None if center is None else np.asarray(center, dtype=_F8)[-(beta.size - 1):]
    Q = centring(c if beta.size > 1 else None, beta.size, fit_intercept)
    out = Q @ beta
    if fit_intercept:
        out[0] += ycenter
    return out, None if vcov is None else Q @ np.asarray(vcov, dtype=_F8) @ Q.T


def transition(state: bytes | None, x, y: float | None, init: bytes) -> bytes:
    """Add one row: ``x`` as floats or a ``float8[]``'s in-memory bytes, ``y`` coded already.

    Rows with a NULL or non-finite label or feature are skipped and counted.
    """
    s = np.frombuffer(state if state is not None else init, dtype=_F8).copy()
    p = int(s[_P])
    d = p - int(s[_INTERCEPT])
    if y is None or x is None or not math.isfinite(y):
        s[_SKIPPED] += 1
        return s.tobytes()
    if isinstance(x, (bytes, bytearray, memoryview)):
        if len(x) != 20 + 8 * d:
            raise _wrong_length(d, (len(x) - 20) // 8)
        xv = np.frombuffer(x, dtype=_F8, offset=20)
    else:
        if len(x) != d:
            raise _wrong_length(d, len(x))
        try:
            xv = np.array(x, dtype=_F8)
        except (TypeError, ValueError):  # a NULL element arrives as None
            s[_SKIPPED] += 1
            return s.tobytes()
        if not np.isfinite(xv).all():
            s[_SKIPPED] += 1
            return s.tobytes()
    p0 = p - d
    _accumulate(s, xv.reshape(1, d) - s[HEADER + p + p0:HEADER + 2 * p],
                np.array([float(y)]) - s[_YCENTER])
    return s.tobytes()


def transition_block(state: bytes | None, block: bytes | None, init: bytes,
                     first: int = 0, stop: int | None = None) -> bytes:
    """Add rows ``first:stop`` of a packed block (:mod:`bismarckpy.pack`), raw labels coded.

    The block holds per-column float64 offsets and residuals ``R``; the rows are rebuilt as
    ``offsets + R`` in float64 (the passes work in float64 whatever the block's type), the
    centre taken off the offsets first, so a column far from zero keeps the precision its
    residuals carry.
    """
    s = np.frombuffer(state if state is not None else init, dtype=_F8).copy()
    if block is None:
        return s.tobytes()
    p = int(s[_P])
    k = int(s[_INTERCEPT])
    offsets, M = parse_block(block, p - k, int(s[_ITEMSIZE]))
    shift = offsets.copy()
    shift[1:] -= s[HEADER + p + k:HEADER + 2 * p]  # features: (offset − centre) + residual
    values = M[first:stop].astype(np.float64) + shift
    y = encode_labels(values[:, 0], int(s[_YMODE]), s[_YPOS], s[_YSHIFT], s[_YSCALE])
    _accumulate(s, values[:, 1:], y - s[_YCENTER])
    return s.tobytes()


def _accumulate(s: np.ndarray, X: np.ndarray, y: np.ndarray) -> None:
    """Add the rows ``X`` (n × d, float64, centred) with coded labels ``y`` to the state.

    Logistic (y in {0, 1}): ℓ = log(1 + e^z) − y z, dℓ/dz = σ(z) − y, d²ℓ/dz² = σ(z)(1 − σ(z));
    squared: ℓ = (z − y)² / 2, dℓ/dz = z − y, d²ℓ/dz² = 1 (McCullagh & Nelder, ch. 2 and 4).
    """
    n = y.shape[0]
    if n == 0:
        return
    p = int(s[_P])
    intercept = bool(s[_INTERCEPT])
    k = int(intercept)
    beta = s[HEADER:HEADER + p]
    z = X @ beta[k:] + (beta[0] if intercept else 0.0)
    if int(s[_LOSS]) == 0:
        softplus = np.logaddexp(0.0, z)
        prob = np.exp(z - softplus)
        loss = softplus - y * z
        dz = prob - y
        h = prob * (1.0 - prob)
        s[_EXTREME] += float(np.count_nonzero(np.minimum(prob, 1.0 - prob) < EXTREME))
        if s[_CW_NEG] != 1.0 or s[_CW_POS] != 1.0:  # class weights: a weighted likelihood
            wt = np.where(y > 0, s[_CW_POS], s[_CW_NEG])
            loss, dz, h = loss * wt, dz * wt, h * wt
    else:
        dz = z - y
        loss = 0.5 * dz * dz
        h = None
    s[_ROWS] += n
    s[_LOSS_SUM] += float(loss.sum())
    s[_SUM_Y] += float(y.sum())
    s[_SUM_Y2] += float(y @ y)
    mode = int(s[_MODE])
    if mode == LOSS_ONLY:
        return
    g = s[HEADER + 2 * p:HEADER + 3 * p]
    g[k:] += X.T @ dz
    if intercept:
        g[0] += float(dz.sum())
    if mode != HESSIAN:
        return
    H = s[HEADER + 3 * p:HEADER + 3 * p + p * p].reshape(p, p)
    if intercept:
        Z = np.empty((n, p))
        Z[:, 0] = 1.0
        Z[:, 1:] = X
    else:
        Z = X
    if h is not None:
        Z = Z * np.sqrt(h)[:, None]
    H += Z.T @ Z  # one symmetric rank-n update (BLAS syrk)


def merge(a: bytes | None, b: bytes | None) -> bytes | None:
    """Combine two partial states of the same pass: every accumulator is a sum (exact)."""
    if a is None:
        return b
    if b is None:
        return a
    sa = np.frombuffer(a, dtype=_F8).copy()
    sb = np.frombuffer(b, dtype=_F8)
    if (sa.size != sb.size or sa[_P] != sb[_P] or sa[_MODE] != sb[_MODE]
            or sa[_YCENTER] != sb[_YCENTER]):
        raise InvalidData("cannot merge passes of different shapes",
                          detail=f"One partial state has {int(sa[_P])} coefficients, the "
                                 f"other {int(sb[_P])}.")
    for slot in (_ROWS, _LOSS_SUM, _SKIPPED, _PARTS, _EXTREME, _SUM_Y, _SUM_Y2):
        sa[slot] += sb[slot]
    p = int(sa[_P])
    if not np.array_equal(sa[HEADER + p:HEADER + 2 * p], sb[HEADER + p:HEADER + 2 * p]):
        raise InvalidData("cannot merge passes of different centres")
    sa[HEADER + 2 * p:] += sb[HEADER + 2 * p:]
    return sa.tobytes()


def decode(state: bytes) -> Pass:
    """Read a finished state; raises :class:`InvalidData` for bytes that are not one."""
    bad = InvalidData("not a bismarck exact-pass state",
                      detail="The bytes are not an exact-pass header followed by its sums.")
    if len(state) % 8:
        raise bad
    s = np.frombuffer(state, dtype=_F8)
    if s.size < HEADER or s[_MAGIC] != MAGIC:
        raise bad
    p, mode = int(s[_P]), int(s[_MODE])
    if p < 1 or s.size != state_size(p, mode):
        raise bad
    hess = (s[HEADER + 3 * p:].reshape(p, p).copy() if mode == HESSIAN else None)
    return Pass(beta=s[HEADER:HEADER + p].copy(), rows=int(s[_ROWS]),
                loss_sum=float(s[_LOSS_SUM]), grad=s[HEADER + 2 * p:HEADER + 3 * p].copy(),
                hess=hess, skipped=int(s[_SKIPPED]), parts=int(s[_PARTS]),
                extreme=int(s[_EXTREME]), sum_y=float(s[_SUM_Y]), sum_y2=float(s[_SUM_Y2]),
                center=(s[HEADER + p + 1:HEADER + 2 * p].copy() if s[_INTERCEPT] else None),
                ycenter=float(s[_YCENTER]))


def _wrong_length(d: int, got: int) -> InvalidData:
    """The error for a feature vector that does not match the model."""
    return InvalidData(
        "feature vector has the wrong length",
        detail=f"The model has {d} features but a row has {got}.",
        hint="Make every feature array the same length, or filter the odd rows out.")
