"""Column count, mean, spread and range as a mergeable aggregate (Welford per row, Chan's merge).

Used before training to standardise features. The state is a float64 buffer
``[n, mean[d], root[d], lo[d], hi[d]]`` where ``root`` is the square root of the sum of squared
deviations: kept as a root and combined with ``hypot``, it never overflows even when the squares
of the values would (|x| up to about 1e307), so partial states from parallel workers combine
exactly and safely. Packed blocks are summed from their residuals (see :mod:`bismarckpy.pack`),
so a column's offset from zero costs no precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pack import parse_block

_F8 = np.dtype("<f8")
#: A column whose values all lie within this many float64 ulps of its largest magnitude is
#: treated as constant: its spread is indistinguishable from rounding in the values themselves.
CONSTANT_ULPS = 8.0
_EPS = float(np.finfo(np.float64).eps)


@dataclass
class Moments:
    """Decoded statistics of ``d`` columns over ``n`` rows (population standard deviation)."""

    n: int
    mean: np.ndarray
    sd: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def var(self) -> np.ndarray:
        """Population variance (may overflow to inf when ``sd`` > 1e154; prefer ``sd``)."""
        with np.errstate(over="ignore"):
            return self.sd * self.sd

    @property
    def rms(self) -> np.ndarray:
        """Root mean square ``sqrt(mean² + var)``: the scale of a column not centred."""
        return np.hypot(self.mean, self.sd)

    @property
    def constant(self) -> np.ndarray:
        """Columns with zero variance up to rounding, relative to the column's magnitude.

        A column is constant when its range ``hi - lo`` or its standard deviation is at most
        ``CONSTANT_ULPS`` float64 ulps of its largest magnitude ``max(|lo|, |hi|)``. The
        statistics are computed from shifted values (Welford's deviations, or block residuals),
        so an exactly constant column gives exactly zero, whatever its offset; the bound covers
        values that differ only in their last bits (compare scikit-learn's
        ``_is_constant_feature``, whose bound grows with n for a naive two-pass sum).
        """
        tol = CONSTANT_ULPS * _EPS * np.maximum(np.abs(self.lo), np.abs(self.hi))
        return (self.hi - self.lo <= tol) | (self.sd <= tol)


def _new(d: int) -> np.ndarray:
    s = np.zeros(1 + 4 * d, dtype=_F8)
    s[1 + 2 * d:1 + 3 * d] = np.inf
    s[1 + 3 * d:] = -np.inf
    return s


def _parts(s: np.ndarray):
    d = (len(s) - 1) // 4
    return s[1:1 + d], s[1 + d:1 + 2 * d], s[1 + 2 * d:1 + 3 * d], s[1 + 3 * d:]


def transition(state: bytes | None, x) -> bytes | None:
    """Add one feature vector (floats, or a ``float8[]``'s in-memory bytes); NULL is ignored."""
    if x is None:
        return state
    if isinstance(x, (bytes, bytearray, memoryview)):
        xv = np.frombuffer(x, dtype=_F8, offset=20)  # 1-D, no NULLs: checked by the caller
    else:
        xv = np.array(x, dtype=_F8)
    s = _new(len(xv)) if state is None else np.frombuffer(state, dtype=_F8).copy()
    mean, root, lo, hi = _parts(s)
    n = s[0] + 1.0
    delta = xv - mean
    mean += delta / n
    # m2 += delta * (x - mean'), both factors of one sign: as roots, without squaring.
    root[:] = np.hypot(root, np.sqrt(np.abs(delta)) * np.sqrt(np.abs(xv - mean)))
    np.minimum(lo, xv, out=lo)
    np.maximum(hi, xv, out=hi)
    s[0] = n
    return s.tobytes()


def merge(a: bytes | None, b: bytes | None) -> bytes | None:
    """Combine two partial states (Chan, Golub and LeVeque's parallel variance)."""
    if a is None:
        return b
    if b is None:
        return a
    sa = np.frombuffer(a, dtype=_F8).copy()
    sb = np.frombuffer(b, dtype=_F8)
    return _merge_into(sa, sb).tobytes()


def _merge_into(sa: np.ndarray, sb: np.ndarray) -> np.ndarray:
    na, nb = sa[0], sb[0]
    if nb == 0:
        return sa
    n = na + nb
    mean_a, root_a, lo_a, hi_a = _parts(sa)
    mean_b, root_b, lo_b, hi_b = _parts(sb)
    delta = mean_b - mean_a
    mean_a += delta * (nb / n)
    root_a[:] = np.hypot(np.hypot(root_a, root_b), np.abs(delta) * np.sqrt(na * nb / n))
    np.minimum(lo_a, lo_b, out=lo_a)
    np.maximum(hi_a, hi_b, out=hi_a)
    sa[0] = n
    return sa


def decode(state: bytes) -> Moments:
    """The statistics of a state."""
    s = np.frombuffer(state, dtype=_F8)
    mean, root, lo, hi = _parts(s)
    n = s[0]
    return Moments(int(n), mean.copy(), root / np.sqrt(max(n, 1.0)), lo.copy(), hi.copy())


def of_matrix(offsets: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """The state of the rows ``offsets + residuals`` (``n × d``), without overflow.

    Each column is scaled by a power of two (exact) so that its residuals lie in [-1, 1]
    before they are summed and squared.
    """
    n, d = residuals.shape
    s = _new(d)
    if n == 0:
        return s
    R = np.asarray(residuals, dtype=np.float64)
    lo, hi = R.min(axis=0), R.max(axis=0)
    _, e = np.frexp(np.maximum(np.abs(lo), np.abs(hi)))
    scale = np.ldexp(1.0, e)
    dev = R / scale  # the one temporary: scaled (exactly: powers of two), then centred
    mean_s = dev.mean(axis=0)
    dev -= mean_s
    mean, root, lo_, hi_ = _parts(s)
    mean[:] = offsets + mean_s * scale
    root[:] = np.sqrt(np.einsum("ij,ij->j", dev, dev)) * scale
    lo_[:] = offsets + lo
    hi_[:] = offsets + hi
    s[0] = n
    return s


def of_rows(values: np.ndarray) -> np.ndarray:
    """The state of the rows ``values`` (``n × d`` float64), offsets at the column minimums
    (see :func:`of_matrix`), with one temporary."""
    if len(values) == 0:
        return _new(values.shape[1])
    offsets = values.min(axis=0)
    R = values - offsets
    return of_matrix(offsets, R)


def stack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The state of columns ``a`` then ``b``, two states of the same rows."""
    da, db = (len(a) - 1) // 4, (len(b) - 1) // 4
    s = _new(da + db)
    for part, pa, pb in zip(_parts(s), _parts(a), _parts(b)):
        part[:da], part[da:] = pa, pb
    s[0] = a[0]
    return s


def transition_block(state: bytes | None, block: bytes | None, d: int, itemsize: int,
                     first: int = 0, stop: int | None = None) -> bytes | None:
    """Add rows ``first:stop`` of a packed block (:mod:`bismarckpy.pack`): label, features."""
    if block is None:
        return state
    offsets, residuals = parse_block(block, d, itemsize)
    part = of_matrix(offsets, residuals[first:stop])
    if part[0] == 0:
        return state
    if state is None:
        return part.tobytes()
    return _merge_into(np.frombuffer(state, dtype=_F8).copy(), part).tobytes()


def collapsed(state: np.ndarray) -> np.ndarray:
    """The state of ``state``'s rows each moved to its column means: same count and means, no
    spread. Merged over groups (:func:`_merge_into`), these give the spread *between* the
    groups' means (the between-groups sum of squares of an analysis of variance)."""
    s = state.copy()
    mean, root, lo, hi = _parts(s)
    root[:] = 0.0
    lo[:] = mean
    hi[:] = mean
    return s


def select(stats: Moments, columns: slice) -> Moments:
    """The statistics of some of the columns."""
    return Moments(stats.n, stats.mean[columns], stats.sd[columns], stats.lo[columns],
                   stats.hi[columns])
