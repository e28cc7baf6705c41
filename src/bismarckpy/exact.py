"""One pass of an exact GLM solver as an algebraic aggregate: loss, gradient and Hessian sums.

Where an SGD epoch (:mod:`bismarckpy.glm`) moves the model row by row, this aggregate keeps the
coefficients fixed and adds up, over every row, the quantities Newton's method and L-BFGS need
at that point: the number of rows, the summed loss, the gradient ``Σ dℓ/dz · x̃`` and (for
Newton) the Hessian ``Σ d²ℓ/dz² · x̃ x̃ᵀ`` of the summed loss, where ``x̃ = (1, x)`` when the
model has an intercept. All of them are sums, so the parallel merge is an exact sum too: the
result does not depend on how PostgreSQL splits the rows between workers.

The state is one little-endian float64 buffer (``bytea``): a fixed header, the coefficients
``β`` (intercept first), the gradient (``p`` values) and, in ``HESSIAN`` mode, the ``p × p``
Hessian. The functions are pure: bytes in, bytes out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidData
from .glm import encode_labels
from .pack import read_block

MAGIC = 1012.0
LOSS_CODES = {"logistic": 0, "squared": 1}
LOSS_ONLY, GRADIENT, HESSIAN = range(3)  # what a pass accumulates
EXTREME = 1e-8  # fitted probabilities this close to 0 or 1 count as separated rows

(_MAGIC, _P, _LOSS, _INTERCEPT, _MODE, _ITEMSIZE, _YMODE, _YPOS, _YSHIFT, _YSCALE, _ROWS,
 _LOSS_SUM, _SKIPPED, _PARTS, _EXTREME, _SUM_Y, _SUM_Y2) = range(17)
HEADER = 17
_F8 = np.dtype("<f8")


@dataclass
class Pass:
    """A decoded, finished pass: sums over the rows at the coefficients ``beta``.

    ``grad`` and ``hess`` are of the *summed* loss (not the mean); ``hess`` is None unless the
    pass was run in ``HESSIAN`` mode. ``extreme`` counts rows whose fitted probability is within
    ``EXTREME`` of 0 or 1 (logistic only); ``sum_y``/``sum_y2`` are of the coded labels.
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


def state_size(p: int, mode: int) -> int:
    """Number of float64 values in a state with ``p`` coefficients."""
    return HEADER + 2 * p + (p * p if mode == HESSIAN else 0)


def initialize(beta: np.ndarray, *, loss: str, fit_intercept: bool, mode: int,
               itemsize: int = 8,
               y_coding: tuple[int, float, float, float] | None = None) -> bytes:
    """The initial state of a pass at coefficients ``beta`` (intercept first if fitted).

    ``itemsize`` is the width of packed blocks' values; ``y_coding`` = (mode, positive class,
    shift, scale) codes their raw labels as in :func:`bismarckpy.glm.encode_labels`.
    Raises ``ValueError`` for a loss without a second derivative (hinge).
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
    s[HEADER:HEADER + p] = beta
    return s.tobytes()


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
    _accumulate(s, xv.reshape(1, d), np.array([float(y)]))
    return s.tobytes()


def transition_block(state: bytes | None, block: bytes | None, init: bytes) -> bytes:
    """Add a packed block (:mod:`bismarckpy.pack`): its raw labels are coded first."""
    s = np.frombuffer(state if state is not None else init, dtype=_F8).copy()
    if block is None:
        return s.tobytes()
    p = int(s[_P])
    X, raw = read_block(block, p - int(s[_INTERCEPT]), int(s[_ITEMSIZE]))
    y = encode_labels(raw, int(s[_YMODE]), s[_YPOS], s[_YSHIFT], s[_YSCALE])
    _accumulate(s, X, y)
    return s.tobytes()


def _accumulate(s: np.ndarray, X: np.ndarray, y: np.ndarray) -> None:
    """Add the rows ``X`` (n × d, float64) with coded labels ``y`` to the state in place.

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
    g = s[HEADER + p:HEADER + 2 * p]
    g[k:] += X.T @ dz
    if intercept:
        g[0] += float(dz.sum())
    if mode != HESSIAN:
        return
    H = s[HEADER + 2 * p:HEADER + 2 * p + p * p].reshape(p, p)
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
    if sa.size != sb.size or sa[_P] != sb[_P] or sa[_MODE] != sb[_MODE]:
        raise InvalidData("cannot merge passes of different shapes",
                          detail=f"One partial state has {int(sa[_P])} coefficients, the "
                                 f"other {int(sb[_P])}.")
    for slot in (_ROWS, _LOSS_SUM, _SKIPPED, _PARTS, _EXTREME, _SUM_Y, _SUM_Y2):
        sa[slot] += sb[slot]
    p = int(sa[_P])
    sa[HEADER + p:] += sb[HEADER + p:]
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
    hess = (s[HEADER + 2 * p:].reshape(p, p).copy() if mode == HESSIAN else None)
    return Pass(beta=s[HEADER:HEADER + p].copy(), rows=int(s[_ROWS]),
                loss_sum=float(s[_LOSS_SUM]), grad=s[HEADER + p:HEADER + 2 * p].copy(),
                hess=hess, skipped=int(s[_SKIPPED]), parts=int(s[_PARTS]),
                extreme=int(s[_EXTREME]), sum_y=float(s[_SUM_Y]), sum_y2=float(s[_SUM_Y2]))


def _wrong_length(d: int, got: int) -> InvalidData:
    """The error for a feature vector that does not match the model."""
    return InvalidData(
        "feature vector has the wrong length",
        detail=f"The model has {d} features but a row has {got}.",
        hint="Make every feature array the same length, or filter the odd rows out.")
