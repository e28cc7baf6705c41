"""Generalized linear models as a Bismarck epoch aggregate: initialize, transition, merge, finalize.

The aggregate state is one little-endian float64 buffer (travelling as ``bytea``): a fixed header,
then the coefficients ``w``, the intercept, the pending gradient sums, the standardisation
``mu``/``sd`` and the running mean of the iterates (averaged SGD). The four functions are pure:
bytes in, bytes out, no database needed.

Modes, by ``batch_size``: 1 is per-tuple SGD; k > 1 accumulates k tuples then steps; 0 is
full-batch gradient descent (one exact step per epoch); -1 only evaluates the loss (no step).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import penalties
from ..errors import InvalidData, InvalidParameter, check_state_size
from ..losses import BY_CODE, REGISTRY, sigmoid
from ..pack import parse_block
from ..params import GLM_PARAMS
from ..shared_model import Layout
from ..stable import linear_scores
from . import ModelKind, Stored

MAGIC = 2012.0
LOSS_CODES = {name: loss.code for name, loss in REGISTRY.items()  # the loss registry's codes
              if loss.kind == "glm"}
EVALUATE = -1  # batch_size that only accumulates the loss
#: η of the first epoch's polynomial-decay mean (Shamir & Zhang, ICML 2013; 3 as in their
#: experiments): its first half of iterates keeps about 6% of the weight, so the transient
#: from the all-zero start fades without knowing how many steps an epoch (or a parallel
#: worker's share of it) takes. A one-epoch run's last iterate at a rate held for the epoch
#: was noisy: 500 signal-free rows in batches of 2 ended 17% above the class priors.
FIRST_EPOCH_DECAY = 3.0

# Header slots of the state vector.
(_MAGIC, _D, _LOSS, _ALPHA, _L1, _L2, _ETA, _INVSCALING, _POWER_T, _T, _BATCH, _INTERCEPT,
 _ROWS, _LOSS_SUM, _PENDING, _SKIPPED, _STEPS, _STANDARDIZE, _ITEMSIZE, _YMODE, _YPOS, _YSHIFT,
 _YSCALE, _PARTS, _CW_NEG, _CW_POS, _AVG_FROM, _AVG_N, _AVG_DECAY) = range(29)
HEADER = 29
# How packed blocks' raw labels become the loss's labels (rows arrive already encoded).
Y_AS_IS, Y_CLASS01, Y_CLASS_PM1, Y_AFFINE = range(4)
_F8 = np.dtype("<f8")


@dataclass
class Model:
    """A decoded state: the coefficients (standardised units) and the epoch's statistics."""

    w: np.ndarray
    b: float
    rows: int
    loss_sum: float
    skipped: int
    steps: int
    t: float
    alpha: float
    l1: float
    l2: float
    parts: int = 1  # participants whose partial states were merged (1: a serial scan)
    # Averaged SGD: ``w``, ``b`` are then the mean of ``averaged`` iterates, and the last
    # iterate, where the next epoch's steps continue from, is ``w_step``, ``b_step``.
    averaged: float = 0.0
    w_step: np.ndarray | None = None
    b_step: float = 0.0

    @property
    def mean_loss(self) -> float:
        """Mean per-row loss seen during the epoch plus the penalty at the final coefficients."""
        if self.rows == 0:
            return float("nan")
        return self.loss_sum / self.rows + penalties.value(self.w, self.alpha, self.l1, self.l2)

    @property
    def data_loss(self) -> float:
        """Mean per-row loss alone (what validation reports)."""
        return self.loss_sum / self.rows if self.rows else float("nan")

    @property
    def model(self) -> Model:
        """What the training loop carries to the next epoch: the decoded model itself."""
        return self


def initialize(d: int, *, loss: str, alpha: float = 0.0, l1: float = 0.0, l2: float = 0.0,
               eta: float = 0.01, invscaling: bool = False, power_t: float = 0.5,
               t: float = 0.0, batch_size: int = 1, fit_intercept: bool = True,
               w: np.ndarray | None = None, b: float = 0.0,
               mu: np.ndarray | None = None, sd: np.ndarray | None = None,
               itemsize: int = 8, y_coding: tuple[int, float, float, float] | None = None,
               class_weight: tuple[float, float] = (1.0, 1.0), average: bool = False,
               average_from: float = 0.0, average_decay: float = 0.0) -> bytes:
    """Build the initial state of one epoch from hyper-parameters and the previous model.

    ``average``: every step that brings the step count ``t`` above ``average_from`` also
    updates the running mean of the iterates (averaged SGD: Polyak & Juditsky, SIAM J.
    Control Optim. 30, 1992; scikit-learn's ``average``), which starts at the first such
    iterate (each epoch's mean is its own: tail averaging).
    ``average_decay`` η weighs the k-th iterate in by ``(η + 1) / (k + η)`` (polynomial-decay
    averaging, Shamir & Zhang, ICML 2013: weights about k^η, so early iterates fade; 0 is the
    plain mean).

    ``itemsize`` is the width (4 or 8) of the values in packed blocks, if the epoch reads any;
    ``y_coding`` = (mode, positive class, shift, scale) turns their raw labels into the loss's.
    ``class_weight`` = (negative, positive) multiplies each row's loss and gradient by its
    class's weight (scikit-learn's ``class_weight``); classifiers only. ``sd`` may hold
    ``inf`` for a constant column: its standardised value is 0 and its coefficient stays 0.
    """
    check_state_size(_size(d), f"A linear model of {d} features", "Use fewer features.")
    s = np.zeros(_size(d), dtype=_F8)
    s[_MAGIC], s[_D], s[_LOSS] = MAGIC, d, LOSS_CODES[loss]
    s[_ALPHA], s[_L1], s[_L2] = alpha, l1, l2
    s[_ETA], s[_INVSCALING], s[_POWER_T], s[_T] = eta, float(invscaling), power_t, t
    s[_BATCH], s[_INTERCEPT] = batch_size, float(fit_intercept)
    standardize = mu is not None and sd is not None
    s[_STANDARDIZE] = float(standardize)
    s[_ITEMSIZE] = itemsize
    s[_YMODE], s[_YPOS], s[_YSHIFT], s[_YSCALE] = y_coding or (Y_AS_IS, 1.0, 0.0, 1.0)
    s[_PARTS] = 1  # partial states merged into this one (parallel participants)
    s[_CW_NEG], s[_CW_POS] = class_weight
    s[_AVG_FROM] = float(average_from) if average else -1.0  # below 0: no averaging
    s[_AVG_DECAY] = average_decay  # _AVG_N 0: the first iterate folded in replaces the mean
    w_, b_, _, _, mu_, sd_ = _views(s, d)
    if w is not None:
        w_[:] = w
    b_[0] = b
    mu_[:] = mu if standardize else 0.0
    sd_[:] = sd if standardize else 1.0
    return s.tobytes()


def transition(state: bytes | None, x, y: float | None, init: bytes) -> bytes:
    """Consume one tuple: add its loss, accumulate its gradient, step every ``batch_size`` rows.

    ``x`` is a sequence of floats or, cheaper, the in-memory form of a 1-D ``float8[]`` without
    NULLs (``bismarck._float8_array_bytes``). NULL or non-finite labels/features are skipped
    and counted; a feature vector of the wrong length is an error (the caller checks lengths
    before training, so this is a guard).
    """
    s = np.frombuffer(state if state is not None else init, dtype=_F8).copy()
    d = int(s[_D])
    if y is None or x is None or not math.isfinite(y):
        s[_SKIPPED] += 1
        return s.tobytes()
    if isinstance(x, (bytes, bytearray, memoryview)):
        xv = _raw_vector(x, d)  # from a working copy whose rows were checked finite
    else:
        if len(x) != d:
            raise _wrong_length(d, len(x))
        try:
            xv = np.array(x, dtype=_F8)
        except (TypeError, ValueError):  # a NULL element inside the array arrives as None
            s[_SKIPPED] += 1
            return s.tobytes()
        if not np.isfinite(xv).all():
            s[_SKIPPED] += 1
            return s.tobytes()
    # The per-tuple hot path: plain slices and in-place updates, no helper calls when avoidable.
    o = HEADER
    w = s[o:o + d]
    if s[_STANDARDIZE]:
        xv = (xv - s[o + 2 * d + 2:o + 3 * d + 2]) / s[o + 3 * d + 2:o + 4 * d + 2]
    z = float(w @ xv) + s[o + d]
    loss, dz = _scalar_loss(int(s[_LOSS]), z, float(y))
    if s[_CW_NEG] != 1.0 or s[_CW_POS] != 1.0:
        cw = s[_CW_POS] if y > 0 else s[_CW_NEG]
        loss, dz = loss * cw, dz * cw
    s[_LOSS_SUM] += loss
    s[_ROWS] += 1
    batch = int(s[_BATCH])
    if batch == EVALUATE:
        return s.tobytes()
    if batch == 1:
        _step(s, w, s[o + d:o + d + 1], xv, 1.0, dz)
        return s.tobytes()
    _, _, g, gb, _, _ = _views(s, d)
    g += dz * xv
    gb[0] += dz
    s[_PENDING] += 1
    if batch > 1 and s[_PENDING] >= batch:
        _flush(s)
    return s.tobytes()


_RAW_1D = np.array([1, 0], dtype="<i4").tobytes()  # ndim 1, no NULL bitmap


def _raw_vector(raw: bytes, d: int) -> np.ndarray:
    """The values of an in-memory 1-D ``float8[]`` (20-byte header, then raw float8)."""
    if len(raw) != 20 + 8 * d or raw[:8] != _RAW_1D:
        raise _wrong_length(d, (len(raw) - 20) // 8)
    return np.frombuffer(raw, dtype=_F8, offset=20)


raw_vector = _raw_vector  # public: the training loop samples rows of a working copy with it


def _wrong_length(d: int, got: int) -> InvalidData:
    """The error for a feature vector that does not match the model."""
    return InvalidData(
        "feature vector has the wrong length",
        detail=f"The model has {d} features but a row has {got}.",
        hint="Make every feature array the same length, or filter the odd rows out.")


def transition_block(state: bytes | None, block: bytes | None, init: bytes,
                     first: int = 0, stop: int | None = None) -> bytes:
    """Consume rows ``first:stop`` of one packed block (see :mod:`bismarckpy.pack`).

    The same steps as :func:`transition` row by row: rows are taken in block order; a step
    falls every ``batch_size`` rows, carrying a partial batch over to the next block. A block
    holds ``X = offsets + R``; the vectorised steps multiply the residuals ``R`` in the block's
    own type (float32 stays float32) and add the offsets' share in float64 (``z = R·w +
    offsets·w``, ``Xᵀdz = Rᵀdz + offsets·Σdz``), folding the standardisation into the
    coefficients instead of rescaling the block, so precision does not depend on the offsets.
    """
    s = np.frombuffer(state if state is not None else init, dtype=_F8).copy()
    if block is None:
        return s.tobytes()
    h = s[:HEADER].tolist()  # the header as Python floats: cheaper to read than numpy scalars
    d = int(h[_D])
    offsets, M = parse_block(block, d, int(h[_ITEMSIZE]))
    if first or stop is not None:
        M = M[first:stop]
    X = M[:, 1:]  # a strided view: BLAS reads it in place
    yv = encode_labels(np.add(M[:, 0], offsets[0], dtype=np.float64), int(h[_YMODE]), h[_YPOS],
                       h[_YSHIFT], h[_YSCALE])
    w, b, g, gb, mu, sd = _views(s, d)
    standardize = bool(h[_STANDARDIZE])
    # The features' offsets, moved to the standardisation's centre (small when the block sits
    # near the column mean): z = R·we + shift·we + b with we = w / sd.
    shift = offsets[1:] - mu if standardize else offsets[1:]
    weights = None
    if h[_CW_NEG] != 1.0 or h[_CW_POS] != 1.0:
        weights = np.where(yv > 0, h[_CW_POS], h[_CW_NEG])
    if int(h[_BATCH]) == 1:  # per-row steps: standardise the block once, then a scalar loop
        Xs = (X + shift) / sd if standardize else X + shift
        code = int(h[_LOSS])
        avg_from, n_avg, t, decay = h[_AVG_FROM], h[_AVG_N], h[_T], h[_AVG_DECAY]
        s[_AVG_FROM] = -1.0  # the running mean is kept here, in local variables
        w_avg, b_avg = _avg_views(s, d)
        mean_b = float(b_avg[0])
        for i in range(len(yv)):
            xi = Xs[i]
            loss, dz = _scalar_loss(code, float(np.dot(w, xi) + b[0]), float(yv[i]))
            if weights is not None:
                loss, dz = loss * weights[i], dz * weights[i]
            s[_LOSS_SUM] += loss
            _step(s, w, b, xi, 1.0, dz)
            t += 1.0
            if 0 <= avg_from < t:
                n_avg += 1.0
                r = (decay + 1.0) / (n_avg + decay)
                w_avg += r * (w - w_avg)
                mean_b += r * (float(b[0]) - mean_b)
        s[_AVG_FROM], s[_AVG_N], b_avg[0] = avg_from, n_avg, mean_b
        s[_ROWS] += len(yv)
        return s.tobytes()
    _batches(s, h, X, yv, shift, 1.0 / sd if standardize else None, weights)
    return s.tobytes()


def _batches(s: np.ndarray, h: list[float], X: np.ndarray, yv: np.ndarray, shift: np.ndarray,
             inv: np.ndarray | None, weights: np.ndarray | None) -> None:
    """The vectorised steps of :func:`transition_block` (``batch_size`` other than 1) over rows
    ``X`` (n × d, the block's residuals) with coded labels ``yv``, in place on the state ``s``
    whose header ``h`` was read before; ``inv`` is ``1 / sd`` (None: no standardisation).

    The counters live in Python floats during the block and are written back at its end; every
    step is the one :func:`_flush` takes (same operations, same rounding)."""
    d = int(h[_D])
    w, b, g, gb, _, _ = _views(s, d)
    loss_fn = BY_CODE[int(h[_LOSS])].fn
    batch = int(h[_BATCH])
    n = len(yv)
    chunk = n if batch in (EVALUATE, 0) else None
    # Mini-batch steps multiply in the block's own type; full-batch gradient descent is an
    # exact method that may run to tight convergence, so it multiplies in float64.
    ct = _F8 if batch == 0 else X.dtype
    narrow = ct != _F8  # products come back in float32: widen them before adding float64
    pending, loss_sum, t, steps = int(h[_PENDING]), h[_LOSS_SUM], h[_T], h[_STEPS]
    eta0, invscaling, power_t = h[_ETA], h[_INVSCALING], h[_POWER_T]
    alpha, l1, l2, intercept = h[_ALPHA], h[_L1], h[_L2], h[_INTERCEPT]
    avg_from, n_avg, decay = h[_AVG_FROM], h[_AVG_N], h[_AVG_DECAY]
    w_avg, b_avg = _avg_views(s, d)
    b0 = b[0]
    start = 0
    while start < n:
        take = chunk or min(n - start, batch - pending)
        Xc, yc = X[start:start + take], yv[start:start + take]
        we = w * inv if inv is not None else w
        z = Xc @ (we.astype(ct) if narrow else we)
        z = z.astype(np.float64) if narrow else z
        z += b0 + float(shift @ we)
        loss, dz = loss_fn(z, yc)
        if weights is not None:
            wc = weights[start:start + take]
            loss, dz = loss * wc, dz * wc
        loss_sum += float(loss.sum())
        start += take
        if batch == EVALUATE:
            continue
        dsum = float(dz.sum())
        gx = Xc.T @ (dz.astype(ct) if narrow else dz)
        gx = gx.astype(np.float64) if narrow else gx
        gx += shift * dsum
        if inv is not None:
            gx *= inv
        if pending == 0 and take >= batch > 1:
            # The whole batch is this chunk: step on its sums at once (the accumulators are
            # zero, so adding to them first and flushing would take the same step).
            grad, grad_b, rows = gx, dsum, take
        else:
            g += gx
            gb[0] += dsum
            pending += take
            if not (batch > 1 and pending >= batch):
                continue
            grad, grad_b, rows, pending = g, float(gb[0]), pending, 0
        # _step on the batch's mean gradient, as _flush takes it
        eta = eta0 / (t + 1.0) ** power_t if invscaling else eta0
        scale = 1.0 / float(rows)
        penalties.step(w, grad, eta, alpha, l1, l2, scale)
        if intercept:
            b0 -= eta * scale * grad_b
        t += 1
        steps += 1
        if 0 <= avg_from < t:
            n_avg += 1.0
            r = (decay + 1.0) / (n_avg + decay)
            w_avg += r * (w - w_avg)
            b_avg[0] += r * (b0 - b_avg[0])
        if grad is g:
            g[:] = 0.0
            gb[0] = 0.0
    b[0] = b0
    s[_PENDING], s[_LOSS_SUM], s[_T], s[_STEPS] = pending, loss_sum, t, steps
    s[_AVG_N] = n_avg
    s[_ROWS] += n


def encode_labels(y: np.ndarray, mode: int, pos: float, shift: float, scale: float
                  ) -> np.ndarray:
    """Raw labels → the loss's coding: 0/1 or -1/+1 by class, or ``(y - shift) / scale``."""
    if mode == Y_CLASS01:
        return (y == pos).astype(np.float64)
    if mode == Y_CLASS_PM1:
        return np.where(y == pos, 1.0, -1.0)
    if mode == Y_AFFINE:
        return (y - shift) / scale
    return y


def merge(a: bytes | None, b: bytes | None) -> bytes | None:
    """Combine two partial states: sums for statistics, row-weighted average of the models.

    In full-batch mode all partial states share the same coefficients and the gradient sums
    add up exactly; otherwise each side first applies its pending partial batch.
    """
    if a is None:
        return b
    if b is None:
        return a
    sa = np.frombuffer(a, dtype=_F8).copy()
    sb = np.frombuffer(b, dtype=_F8).copy()
    d = int(sa[_D])
    if int(sb[_D]) != d:
        raise InvalidData("cannot merge models of different dimensions",
                          detail=f"One partial state has {d} features, the other {int(sb[_D])}.")
    full_batch = int(sa[_BATCH]) in (0, EVALUATE)  # the model is fixed during the epoch
    if not full_batch:
        _flush(sa)
        _flush(sb)
    na, nb = sa[_ROWS], sb[_ROWS]
    wa, ba, ga, gba, _, _ = _views(sa, d)
    wb, bb, gb_, gbb, _, _ = _views(sb, d)
    if full_batch:
        ga += gb_
        gba += gbb
        sa[_PENDING] += sb[_PENDING]
    elif na + nb > 0:
        wa[:] = (na * wa + nb * wb) / (na + nb)
        ba[:] = (na * ba + nb * bb) / (na + nb)
    ka, kb = sa[_AVG_N], sb[_AVG_N]
    if not full_batch and ka + kb > 0:  # the running means, weighted by their iterates
        (wva, bva), (wvb, bvb) = _avg_views(sa, d), _avg_views(sb, d)
        wva[:] = (ka * wva + kb * wvb) / (ka + kb)
        bva[:] = (ka * bva + kb * bvb) / (ka + kb)
        sa[_AVG_N] = ka + kb  # the next merge weighs this mean by all its iterates
    sa[_T] = max(sa[_T], sb[_T])
    for slot in (_ROWS, _LOSS_SUM, _SKIPPED, _STEPS, _PARTS):
        sa[slot] += sb[slot]
    return sa.tobytes()


def finalize(state: bytes | None) -> bytes | None:
    """Apply the pending (partial or full) batch and return the epoch's final state."""
    if state is None:
        return None
    s = np.frombuffer(state, dtype=_F8).copy()
    _flush(s)
    return s.tobytes()


def decode(state: bytes) -> Model:
    """Read a state produced by :func:`finalize` (or any other function here)."""
    bad = InvalidData("not a bismarck GLM state",
                      detail="The bytes are not a GLM state header followed by its model.")
    if len(state) % 8:
        raise bad
    s = np.frombuffer(state, dtype=_F8)
    if s.size < HEADER or s[_MAGIC] != MAGIC:
        raise bad
    d = int(s[_D])
    if d < 0 or s.size != _size(d):
        raise bad
    w, b, _, _, _, _ = _views(s, d)
    stats = dict(rows=int(s[_ROWS]), loss_sum=float(s[_LOSS_SUM]), skipped=int(s[_SKIPPED]),
                 steps=int(s[_STEPS]), t=float(s[_T]), alpha=float(s[_ALPHA]),
                 l1=float(s[_L1]), l2=float(s[_L2]), parts=int(s[_PARTS]))
    if s[_AVG_N] > 0:  # averaged SGD: the model is the mean of the iterates
        w_avg, b_avg = _avg_views(s, d)
        return Model(w=w_avg.copy(), b=float(b_avg[0]), averaged=float(s[_AVG_N]),
                     w_step=w.copy(), b_step=float(b[0]), **stats)
    return Model(w=w.copy(), b=float(b[0]), **stats)


def unstandardize(w: np.ndarray, b: float, mu: np.ndarray, sd: np.ndarray,
                  y_mean: float = 0.0, y_sd: float = 1.0) -> tuple[np.ndarray, float]:
    """Coefficients fitted on ``(x - mu) / sd`` (and ``(y - y_mean) / y_sd``) in original units."""
    coef = w * y_sd / sd
    intercept = y_mean + y_sd * b - float(np.dot(coef, mu))
    return coef, intercept


def loss_and_gradient(w: np.ndarray, b: float, X: np.ndarray, y: np.ndarray, loss: str,
                      alpha: float = 0.0, l1: float = 0.0, l2: float = 0.0
                      ) -> tuple[float, np.ndarray, float]:
    """Vectorised objective (mean loss + smooth penalty part) and its gradient, for tests/tools."""
    z = X @ w + b
    lv, dz = REGISTRY[loss].fn(z, y)
    n = len(y)
    obj = float(lv.mean()) + penalties.value(w, alpha, 0.0, l2)
    grad = X.T @ dz / n + alpha * l2 * w
    return obj, grad, float(dz.mean())


def _views(s: np.ndarray, d: int):
    """Slices of the state vector: w, b, gradient sum, intercept gradient, mu, sd."""
    o = HEADER
    return (s[o:o + d], s[o + d:o + d + 1], s[o + d + 1:o + 2 * d + 1],
            s[o + 2 * d + 1:o + 2 * d + 2], s[o + 2 * d + 2:o + 3 * d + 2],
            s[o + 3 * d + 2:o + 4 * d + 2])


def _size(d: int) -> int:
    """Length of the state vector of ``d`` features."""
    return HEADER + 5 * d + 3


def _avg_views(s: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices of the state vector: the running means of the iterates' w and b."""
    o = HEADER + 4 * d + 2
    return s[o:o + d], s[o + d:o + d + 1]


def _eta(s: np.ndarray) -> float:
    """Learning rate of the next step: constant, or ``eta0 / (t + 1) ** power_t``."""
    if s[_INVSCALING]:
        return float(s[_ETA] / (s[_T] + 1.0) ** s[_POWER_T])
    return float(s[_ETA])


def _step(s: np.ndarray, w: np.ndarray, b: np.ndarray, grad: np.ndarray, grad_b: float,
          scale: float) -> None:
    """One (proximal) gradient step on ``scale * (grad, grad_b)``.

    A mean over ``n`` rows passes their sums and ``1 / n``; one row passes its features, 1 and
    d loss / d z, so no scaled copy is built on the per-row path.
    """
    eta = _eta(s)
    penalties.step(w, grad, eta, s[_ALPHA], s[_L1], s[_L2], scale)
    if s[_INTERCEPT]:
        b[0] -= eta * scale * grad_b
    s[_T] += 1
    s[_STEPS] += 1
    if 0 <= s[_AVG_FROM] < s[_T]:
        _average(s, w, float(b[0]))


def _average(s: np.ndarray, w: np.ndarray, b: float) -> None:
    """Fold the iterate ``w``, ``b`` just stepped to into the state's running mean."""
    s[_AVG_N] += 1.0
    r = (float(s[_AVG_DECAY]) + 1.0) / (float(s[_AVG_N]) + float(s[_AVG_DECAY]))
    w_avg, b_avg = _avg_views(s, len(w))
    w_avg += r * (w - w_avg)
    b_avg[0] += r * (b - float(b_avg[0]))


def _flush(s: np.ndarray) -> None:
    """Take the step for the rows accumulated so far, if any, and clear the accumulators."""
    n = s[_PENDING]
    if n <= 0 or int(s[_BATCH]) == EVALUATE:
        return
    d = int(s[_D])
    w, b, g, gb, _, _ = _views(s, d)
    _step(s, w, b, g, float(gb[0]), 1.0 / float(n))
    g[:] = 0.0
    gb[0] = 0.0
    s[_PENDING] = 0


def _scalar_loss(code: int, z: float, y: float) -> tuple[float, float]:
    """Per-row loss and d loss / d z without numpy overhead (the per-tuple hot path)."""
    if code == 0:  # logistic, y in {0, 1}
        if z >= 0:
            e = math.exp(-z)
            return z + math.log1p(e) - y * z, 1.0 / (1.0 + e) - y
        e = math.exp(z)
        return math.log1p(e) - y * z, e / (1.0 + e) - y
    if code == 1:  # squared
        r = z - y
        return 0.5 * r * r, r
    m = y * z  # hinge, y in {-1, +1}
    return (1.0 - m, -y) if m < 1.0 else (0.0, 0.0)


def class_weights(spec: Any, classes: list[float] | None, n: int,
                  n_pos: int, labels: list[str] | None = None) -> tuple[float, float]:
    """(negative, positive) class weights from ``class_weight``, scikit-learn's semantics.

    ``None``: 1 and 1. ``'balanced'``: ``n_samples / (n_classes * bincount)`` over the training
    rows. A mapping from class (as the label codes it: "0"/"1", "-1"/"1", "false"/"true") to
    weight: classes not named weigh 1; a label of class values (text, an enum...) names them by
    those values (``labels``, whose indexes are the classes). Raises :class:`InvalidParameter`
    for a regression model or a class the label does not have.
    """
    if spec is None:
        return 1.0, 1.0
    if classes is None:
        raise InvalidParameter("class_weight needs a classifier",
                               detail="loss => 'squared' has no classes to weigh.",
                               hint="Use loss => 'logistic' or 'hinge', or drop class_weight.")
    if spec == "balanced":
        counts = (max(n - n_pos, 1), max(n_pos, 1))
        return n / (2.0 * counts[0]), n / (2.0 * counts[1])
    out = [1.0, 1.0]
    for key, weight in spec.items():
        if labels is not None:
            value = float(labels.index(key)) if key in labels else math.nan
            if value not in classes:
                raise InvalidParameter(
                    f"class_weight names class {key!r}, which the label does not have",
                    detail="The label's classes are " + " and ".join(map(repr, labels)) + ".",
                    hint="Name the classes by the label's values.")
            out[classes.index(value)] = float(weight)
            continue
        value = {"false": 0.0, "true": 1.0}.get(key.strip().lower())
        if value is None:
            try:
                value = float(key)
            except ValueError:
                value = math.nan
        if value not in classes:
            raise InvalidParameter(
                f"class_weight names class {key!r}, which the label does not have",
                detail="The label's classes are " + " and ".join(f"{c:g}" for c in classes)
                       + ".",
                hint='Name the classes as the label codes them, e.g. \'{"0": 1, "1": 10}\'.')
        out[classes.index(value)] = float(weight)
    return out[0], out[1]


# --- the GLM as a model kind (see bismarckpy.kinds) --------------------------------------------


def epoch_init(p: dict[str, Any], data: Any, model: Model | None, *, eta: float = 0.0,
               per_step: bool = False, evaluate: bool = False) -> bytes:
    """:attr:`ModelKind.initialize` of the GLM: an epoch's init state from the run's parameters.

    ``data`` is the prepared data (``d``, ``mu``/``sd``, ``itemsize``, ``y_coding``,
    ``classes``, ``n_train``, ``n_pos``); ``model`` the model carried from the last accepted
    epoch (None: all zeros). ``evaluate`` builds a state that only adds up the loss.
    """
    weights = class_weights(p["class_weight"], data.classes, data.n_train, data.n_pos,
                            getattr(data, "class_labels", None))
    w = np.zeros(data.d) if model is None else model.w
    b = 0.0 if model is None else model.b
    if evaluate:
        return initialize(data.d, loss=p["loss"], batch_size=EVALUATE, w=w, b=b, mu=data.mu,
                          sd=data.sd, itemsize=data.itemsize, y_coding=data.y_coding,
                          class_weight=weights)
    l1, l2 = penalties.mix(p["penalty"], p["l1_ratio"])
    alpha = p["alpha"] if p["penalty"] != "none" else 0.0
    # Averaged SGD over each epoch's iterates: the model is the mean of the epoch's iterates
    # (tail averaging; Jain et al., JMLR 18, 2018), steps go on from the last iterate. The
    # first epoch's mean decays polynomially (FIRST_EPOCH_DECAY), so the transient from the
    # all-zero start fades from it; a plain mean over every epoch kept that transient's tail,
    # and a rate held high until a plateau ('adaptive'), for ever: eta0 => 20 stored 0.825
    # against the last iterate's 0.565.
    average = bool(p.get("average")) and p["batch_size"] != 0
    stepped = model is not None and model.w_step is not None
    average_from = 0.0 if model is None else model.t
    decay = FIRST_EPOCH_DECAY if model is None else 0.0
    return initialize(data.d, loss=p["loss"], alpha=alpha, l1=l1, l2=l2, eta=eta,
                      invscaling=per_step, power_t=p["power_t"],
                      t=0.0 if model is None else model.t, batch_size=p["batch_size"],
                      fit_intercept=p["fit_intercept"], w=model.w_step if stepped else w,
                      b=model.b_step if stepped else b, mu=data.mu, sd=data.sd,
                      itemsize=data.itemsize, y_coding=data.y_coding, class_weight=weights,
                      average=average, average_from=average_from, average_decay=decay)


def export(p: dict[str, Any], data: Any, model: Model | None) -> Stored:
    """:attr:`ModelKind.export`: coefficients and intercept in the original feature units.

    ``model`` None (no epoch accepted) is the all-zero model.
    """
    w = np.zeros(data.d) if model is None else model.w
    b = 0.0 if model is None else model.b
    if data.mu is not None and data.sd is not None:
        coef, intercept = unstandardize(w, b, data.mu, data.sd, data.y_mean, data.y_sd)
    else:
        coef, intercept = w, b
    return stored(p["loss"], coef, intercept, data.classes)


def stored(loss: str, coef: Any, intercept: float, classes: list[Any] | None) -> Stored:
    """A GLM's stored form: ``{"loss", "coef", "intercept"}`` (original feature units)."""
    return Stored("glm", {"loss": loss, "coef": [float(c) for c in coef],
                          "intercept": float(intercept)}, classes=classes)


def predict(stored: Stored, X: np.ndarray) -> np.ndarray:
    """:attr:`ModelKind.predict`: the link of ``X @ coef + intercept`` (n × d → n).

    A probability of the positive class for a probabilistic loss (logistic), else the margin.
    """
    z = linear_scores(X, np.asarray(stored.model["coef"], dtype=np.float64),
                      float(stored.model["intercept"]))
    return sigmoid(z) if REGISTRY[stored.model["loss"]].probabilistic else z


def _shared_slots(s: np.ndarray) -> np.ndarray:
    """The state slots that are the model in shared mode: w, b and the step counter t."""
    return _slots_for(int(s[_D]))


@functools.lru_cache(maxsize=16)
def _slots_for(d: int) -> np.ndarray:
    idx = np.append(np.arange(HEADER, HEADER + d + 1), _T)
    idx.flags.writeable = False
    return idx


def _rows_to_step(s: np.ndarray) -> int:
    """Rows until the next SGD step (the pending partial batch counts)."""
    return max(int(s[_BATCH]) - int(s[_PENDING]), 1)


def _block_rows(s: np.ndarray, block: bytes) -> int:
    return len(parse_block(block, int(s[_D]), int(s[_ITEMSIZE]))[1])


def _shared_refuse(p: dict[str, Any]) -> str | None:
    if p.get("batch_size") == 0:
        return ("batch_size => 0 is full-batch gradient descent: one exact step per epoch, "
                "which parallel workers already compute exactly by summing their gradients.")
    return None


def evaluate(session: Any, row: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    """:attr:`ModelKind.evaluate`: metrics in SQL (:func:`bismarckpy.evaluate.glm_metrics`)."""
    from ..evaluate import glm_metrics  # the scoring queries, loaded only where evaluate runs

    return glm_metrics(session, row, relation)


KIND = ModelKind(
    name="glm", magic=np.array([MAGIC], dtype=_F8).tobytes(), params=GLM_PARAMS,
    losses=tuple(LOSS_CODES), initialize=epoch_init, transition=transition,
    transition_block=transition_block, merge=merge, finalize=finalize, decode=decode,
    export=export, predict=predict, evaluate=evaluate, merge_rule="average",
    sql_train="bismarck.train_glm",
    extra={"shared": Layout(_shared_slots, _rows_to_step, _block_rows, _shared_refuse)},
    doc="Generalized linear models: logistic regression, least squares, linear SVM.")
