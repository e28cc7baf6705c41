"""One pass of an exact GLM solver as an algebraic aggregate: loss, gradient and Hessian sums.

Where an SGD epoch (:mod:`bismarckpy.glm`) moves the model row by row, this aggregate keeps the
coefficients fixed and adds up, over every row, the quantities Newton's method and L-BFGS need
at that point: the number of rows, the summed loss, the gradient ``Σ dℓ/dz · x̃`` and (for
Newton) the Hessian ``Σ d²ℓ/dz² · x̃ x̃ᵀ`` of the summed loss, where ``x̃ = (1, x − c)`` when
the model has an intercept. All of them are sums, so the parallel merge is an exact sum too: the
result does not depend on how PostgreSQL splits the rows between workers.

Centred coordinates: the sums are taken over ``x − c``, with ``c`` the feature means computed
before the passes (zero without an intercept), and squared-loss labels over ``y − c_y``. The
coefficients ``β`` of a state are those of the centred model
``z = c_y + β₀ + Σⱼ βⱼ (xⱼ − cⱼ)``; :func:`to_original` maps them (and a covariance matrix) back.
Sums of raw values far from zero (timestamps, years, ids: ``1e9 + N(0, 1)``) would lose the
spread of the data to rounding before any solver sees them; centred, their precision does not
depend on a column's offset.

The state is one little-endian float64 buffer (``bytea``): a fixed header, the coefficients
``β`` (intercept first), the centre ``c`` (``p`` values, the first unused with an intercept),
the gradient (``p`` values) and, in ``HESSIAN`` mode, the ``p × p`` Hessian. The functions are
pure: bytes in, bytes out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import pack
from .errors import InvalidData
from .glm import encode_labels
from .pack import read_block

MAGIC = 1012.0
LOSS_CODES = {"logistic": 0, "squared": 1}
LOSS_ONLY, GRADIENT, HESSIAN = range(3)  # what a pass accumulates
EXTREME = 1e-8  # fitted probabilities this close to 0 or 1 count as separated rows

(_MAGIC, _P, _LOSS, _INTERCEPT, _MODE, _ITEMSIZE, _YMODE, _YPOS, _YSHIFT, _YSCALE, _ROWS,
 _LOSS_SUM, _SKIPPED, _PARTS, _EXTREME, _SUM_Y, _SUM_Y2, _YCENTER) = range(18)
HEADER = 18
_F8 = np.dtype("<f8")


@dataclass
class Pass:
    """A decoded, finished pass: sums over the rows at the coefficients ``beta``.

    ``grad`` and ``hess`` are of the *summed* loss (not the mean); ``hess`` is None unless the
    pass was run in ``HESSIAN`` mode. ``extreme`` counts rows whose fitted probability is within
    ``EXTREME`` of 0 or 1 (logistic only); ``sum_y``/``sum_y2`` are of the coded labels minus
    ``ycenter``. ``beta``, ``grad`` and ``hess`` are in the centred coordinates of the module
    docstring, with feature centres ``center`` (``p`` values, entry 0 unused with an intercept).
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
    ycenter: float = 0.0


def state_size(p: int, mode: int) -> int:
    """Number of float64 values in a state with ``p`` coefficients."""
    return HEADER + 3 * p + (p * p if mode == HESSIAN else 0)


def initialize(beta: np.ndarray, *, loss: str, fit_intercept: bool, mode: int,
               itemsize: int = 8,
               y_coding: tuple[int, float, float, float] | None = None,
               center: np.ndarray | None = None, ycenter: float = 0.0) -> bytes:
    """The initial state of a pass at centred coefficients ``beta`` (intercept first if fitted).

    ``itemsize`` is the width of packed blocks' values; ``y_coding`` = (mode, positive class,
    shift, scale) codes their raw labels as in :func:`bismarckpy.glm.encode_labels`.
    ``center`` (``d`` values) and ``ycenter`` are the ``c`` and ``c_y`` of the module docstring;
    both must be zero without an intercept (centring would change that model).
    Raises ``ValueError`` for a loss without a second derivative (hinge) or a centre without
    an intercept.
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
    k = int(fit_intercept)
    if center is not None:
        center = np.asarray(center, dtype=_F8)
        if center.size != p - k:
            raise ValueError(f"{center.size} centres for {p - k} features")
        if not fit_intercept and (np.any(center != 0) or ycenter != 0):
            raise ValueError("a model without an intercept cannot be fitted in centred "
                             "coordinates")
        s[HEADER + p + k:HEADER + 2 * p] = center
    s[_YCENTER] = ycenter
    return s.tobytes()


def to_original(beta: np.ndarray, center: np.ndarray, ycenter: float, fit_intercept: bool,
                vcov: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Centred coefficients (and their covariance) → coefficients of the raw features.

    With an intercept, ``β_raw = T β + c_y e₀`` for the unit upper-triangular
    ``T = [[1, −cᵀ], [0, I]]``, and ``V_raw = T V Tᵀ``: the slopes and their covariances are
    unchanged, the intercept is ``c_y + β₀ − c·β`` and its variance ``V₀₀ − 2 c·V₀ + cᵀ V c``.
    ``center`` has ``d`` values (or ``p`` with an unused first entry).
    """
    beta = np.array(beta, dtype=np.float64)
    if not fit_intercept:
        return beta, None if vcov is None else np.array(vcov, dtype=np.float64)
    c = np.asarray(center, dtype=np.float64)[-(beta.size - 1):] if beta.size > 1 \
        else np.zeros(0)
    T = np.eye(beta.size)
    T[0, 1:] = -c
    out = T @ beta
    out[0] += ycenter
    return out, None if vcov is None else T @ np.asarray(vcov, dtype=np.float64) @ T.T


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
        xv = np.frombuffer(x, dtype=_F8, offset=20) - s[HEADER + 2 * p - d:HEADER + 2 * p]
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
        xv = xv - s[HEADER + 2 * p - d:HEADER + 2 * p]
    _accumulate(s, xv.reshape(1, d), np.array([float(y)]) - s[_YCENTER])
    return s.tobytes()


def transition_block(state: bytes | None, block: bytes | None, init: bytes) -> bytes:
    """Add a packed block (:mod:`bismarckpy.pack`): its raw labels are coded first."""
    s = np.frombuffer(state if state is not None else init, dtype=_F8).copy()
    if block is None:
        return s.tobytes()
    p = int(s[_P])
    d = p - int(s[_INTERCEPT])
    X, raw = centred_block(block, d, int(s[_ITEMSIZE]), s[HEADER + 2 * p - d:HEADER + 2 * p])
    y = encode_labels(raw, int(s[_YMODE]), s[_YPOS], s[_YSHIFT], s[_YSCALE])
    _accumulate(s, X, y - s[_YCENTER])
    return s.tobytes()


def centred_block(block: bytes, d: int, itemsize: int,
                  center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A packed block's features minus ``center`` (``n × d`` float64) and raw labels.

    The one place where the exact passes decode a block (:mod:`bismarckpy.pack`). Blocks that
    store per-column offsets plus residuals (``pack.parse_block``) are centred as
    ``(offset − c) + residual``, which never forms the raw value far from zero.
    """
    parse = getattr(pack, "parse_block", None)
    if parse is None:  # blocks of raw values
        X, raw = read_block(block, d, itemsize)
        return X - center, raw
    offsets, residuals = parse(block, d, itemsize)
    X = residuals[:, 1:].astype(np.float64) + (offsets[1:] - center)
    return X, residuals[:, 0].astype(np.float64) + offsets[0]


def _accumulate(s: np.ndarray, X: np.ndarray, y: np.ndarray) -> None:
    """Add the centred rows ``X`` (n × d, float64) with centred coded labels ``y`` in place.

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
    p = int(sa[_P])
    if (sa.size != sb.size or sa[_P] != sb[_P] or sa[_MODE] != sb[_MODE]
            or sa[_YCENTER] != sb[_YCENTER]
            or np.any(sa[HEADER:HEADER + 2 * p] != sb[HEADER:HEADER + 2 * p])):
        raise InvalidData("cannot merge passes of different shapes",
                          detail=f"One partial state has {int(sa[_P])} coefficients, the "
                                 f"other {int(sb[_P])}.")
    for slot in (_ROWS, _LOSS_SUM, _SKIPPED, _PARTS, _EXTREME, _SUM_Y, _SUM_Y2):
        sa[slot] += sb[slot]
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
                center=s[HEADER + p:HEADER + 2 * p].copy(), ycenter=float(s[_YCENTER]))


def _wrong_length(d: int, got: int) -> InvalidData:
    """The error for a feature vector that does not match the model."""
    return InvalidData(
        "feature vector has the wrong length",
        detail=f"The model has {d} features but a row has {got}.",
        hint="Make every feature array the same length, or filter the odd rows out.")
