"""Low-rank matrix factorisation (Bismarck's LMF) as an epoch aggregate over (row, col, value).

Model (the biased factorisation of Koren, Bell and Volinsky, "Matrix factorization techniques for
recommender systems", IEEE Computer 2009, eq. 4)::

    r̂(u, i) = mean + row_bias[u] + col_bias[i] + P[u] · Q[i]

``P`` is ``n_rows × rank`` and ``Q`` is ``n_cols × rank``; ``mean`` is the training values' mean
and stays fixed. SGD minimises, per observed triple ``(u, i, r)`` with error ``e = r - r̂``::

    f = e² / 2 + alpha / 2 · (|P[u]|² + |Q[i]|²) + alpha_bias / 2 · (row_bias[u]² + col_bias[i]²)

(the regularisation is charged per observation, as in Funk's SVD and the Surprise library's
``SVD``), so one step with rate ``eta`` is ``θ -= eta · ∂f/∂θ`` on the four touched parameters.

Ids may be any integers (``bigint``): :class:`Factors` keeps the sorted distinct row and column ids,
and dense indices are positions in them (:func:`dense`).

Keeping the arrays out of the aggregate state
---------------------------------------------
PL/Python copies an aggregate's ``bytea`` state in and out of every call, so a state holding the
factors would cost O(model) per triple. Here the arrays live in a per-backend dict (PL/Python's
``GD``, passed in as ``store``) under a random *handle*; the aggregate's state and its ``init``
argument are a few dozen bytes that name the handle (:func:`begin` puts a model there,
:func:`export` serialises it once at the end, :func:`release` frees it). Starting a run
(:func:`begin`) drops every other run this backend still holds, so the arrays of a run whose call
errored do not pile up; the first transition of an epoch (state NULL) replaces the accumulators an
errored epoch left behind.

A handle does not cross processes, so the epoch aggregate has no combine function and its
functions are ``PARALLEL RESTRICTED``: PostgreSQL may scan with parallel workers, but every
transition runs in the leader, in the backend that holds the arrays. A transition that cannot
find its handle (another backend, a connection pooler that switched backends between statements)
raises :class:`~bismarckpy.errors.InvalidData` instead of training something else.
:func:`merge` (averaging weighted by how often each side touched a row or column) is the pure
function that combines epochs run separately, e.g. on partitions, from their exported forms.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidData, InvalidParameter, check_state_size

MAGIC = b"BMF1"  # stored model
#: The kind's magic (:mod:`bismarckpy.kinds`): the first 8 bytes of every aggregate state.
KIND_MAGIC = b"BISMF\x00\x00\x01"
_STATE_MAGIC = KIND_MAGIC  # aggregate state / init: magic, handle, eta, alpha, alpha_bias, batch
_STATE = struct.Struct("<8s16sdddq")
_HEADER = struct.Struct("<4sqqqd")  # magic, n_rows, n_cols, rank, mean
_STATS = struct.Struct("<4s16sqqqd")  # magic, handle, triples, skipped, steps, loss_sum
_STATS_MAGIC = b"BMFe"
STORE_KEY = "bismarck_mf_runs"
_F8 = np.dtype("<f8")
_I8 = np.dtype("<i8")


@dataclass
class Factors:
    """A factorisation: ``mean`` (float), ``row_bias`` (n_rows,), ``col_bias`` (n_cols,),
    ``P`` (n_rows × rank), ``Q`` (n_cols × rank), and the ids ``row_ids`` (n_rows,) and
    ``col_ids`` (n_cols,), int64, sorted ascending, distinct."""

    mean: float
    row_bias: np.ndarray
    col_bias: np.ndarray
    P: np.ndarray
    Q: np.ndarray
    row_ids: np.ndarray
    col_ids: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.P.shape[1])

    def copy(self) -> Factors:
        return Factors(self.mean, self.row_bias.copy(), self.col_bias.copy(), self.P.copy(),
                       self.Q.copy(), self.row_ids.copy(), self.col_ids.copy())


@dataclass
class Hyper:
    """One epoch's step settings: rate ``eta``, L2 weights ``alpha`` (factors) and
    ``alpha_bias`` (biases), ``batch_size`` (1: per triple in order; k > 1: see
    :func:`sgd_dense`; -1: no step, only the squared errors, for validation)."""

    eta: float
    alpha: float
    alpha_bias: float
    batch_size: int = 1


@dataclass
class _Epoch:
    """Accumulators of one epoch (in the store, beside the run's factors)."""

    rows: int = 0
    skipped: int = 0
    steps: int = 0
    loss_sum: float = 0.0  # Σ e², before each triple's step (progressive validation)


@dataclass
class _Run:
    factors: Factors
    epoch: _Epoch | None = None
    row_touch: np.ndarray = field(default_factory=lambda: np.zeros(0, _I8))
    col_touch: np.ndarray = field(default_factory=lambda: np.zeros(0, _I8))


@dataclass
class EpochStats:
    """What :func:`finalize` reports: the run's handle, triples used and skipped, steps, and
    Σ e² over them."""

    handle: bytes
    rows: int
    skipped: int
    steps: int
    loss_sum: float

    @property
    def mse(self) -> float:
        """Mean squared error seen during the epoch (each triple before its own step)."""
        return self.loss_sum / self.rows if self.rows else float("nan")


# -- Model construction, validation and the stored form ------------------------------------------

def check_params(rank: int, n_rows: int, n_cols: int, *, alpha: float, alpha_bias: float,
                 eta0: float, init_std: float) -> None:
    """Raise :class:`InvalidParameter` for a rank outside ``1..min(n_rows, n_cols)`` or a
    negative/non-finite regularisation, a non-positive rate or a negative init scale;
    :class:`~bismarckpy.errors.TooLarge` for factors, biases and ids (``(n_rows + n_cols) ·
    (rank + 2)`` values) over the state limit."""
    limit = min(n_rows, n_cols)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1 or rank > limit:
        raise InvalidParameter(
            "rank must be between 1 and the smaller side of the matrix",
            detail=f"rank => {rank!r}; the training data has {n_rows} distinct row ids and "
                   f"{n_cols} distinct column ids, so the rank can be at most {limit}.",
            hint="Choose a rank from 1 up to min(rows, columns); 5 to 50 is usual.")
    check_state_size((n_rows + n_cols) * (rank + 2),
                     f"A rank-{rank} factorisation of {n_rows} rows × {n_cols} columns",
                     "Lower rank (5 to 50 is usual).")
    for name, value in (("alpha", alpha), ("alpha_bias", alpha_bias), ("init_std", init_std)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise InvalidParameter(f"{name} must be a finite number >= 0",
                                   detail=f"{name} => {value!r}.")
    if not (isinstance(eta0, (int, float)) and math.isfinite(eta0) and eta0 > 0):
        raise InvalidParameter("eta0 must be a finite number > 0", detail=f"eta0 => {eta0!r}.",
                               hint="0.005 to 0.05 is usual for ratings on a 1-5 scale.")


def init_factors(row_ids, col_ids, mean: float, rank: int, *, seed: int = 0,
                 init_std: float = 0.1) -> Factors:
    """A fresh model: zero biases, factors drawn from N(0, init_std²) by
    ``numpy.random.default_rng(seed)`` (P first, then Q), so the same seed gives the same start.

    ``row_ids``/``col_ids``: distinct integer ids (any order; stored sorted).
    """
    rows = np.unique(np.asarray(row_ids, dtype=_I8))
    cols = np.unique(np.asarray(col_ids, dtype=_I8))
    rng = np.random.default_rng(seed)
    P = rng.normal(0.0, init_std, size=(rows.size, rank))
    Q = rng.normal(0.0, init_std, size=(cols.size, rank))
    return Factors(float(mean), np.zeros(rows.size), np.zeros(cols.size), P, Q, rows, cols)


def dense(ids: np.ndarray, values) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``values`` among the sorted ``ids`` and a mask of which ones are known."""
    v = np.asarray(values, dtype=_I8)
    pos = np.searchsorted(ids, v)
    pos = np.minimum(pos, max(ids.size - 1, 0))
    known = (ids.size > 0) & (ids[pos] == v) if ids.size else np.zeros(v.shape, bool)
    return pos, known


def dumps(f: Factors) -> bytes:
    """The stored form: header (magic, n_rows, n_cols, rank, mean), then row_ids, col_ids (int64),
    row_bias, col_bias, P, Q (float64, C order), all little-endian."""
    n, m, k = f.row_ids.size, f.col_ids.size, f.rank
    parts = [_HEADER.pack(MAGIC, n, m, k, f.mean)]
    for a, dt in ((f.row_ids, _I8), (f.col_ids, _I8), (f.row_bias, _F8), (f.col_bias, _F8),
                  (f.P, _F8), (f.Q, _F8)):
        parts.append(np.ascontiguousarray(a, dtype=dt).tobytes())
    return b"".join(parts)


def loads(data: bytes) -> Factors:
    """Inverse of :func:`dumps` (read-only views when given ``bytes``); raises
    :class:`InvalidData` on anything else."""
    buf = memoryview(data)
    if len(buf) < _HEADER.size or bytes(buf[:4]) != MAGIC:
        raise InvalidData("not a stored matrix factorisation",
                          hint="Pass a model trained by bismarck.train_mf.")
    _, n, m, k, mean = _HEADER.unpack_from(buf)
    want = _HEADER.size + 8 * (2 * n + 2 * m + n * k + m * k)
    if len(buf) != want:
        raise InvalidData("stored matrix factorisation has the wrong length",
                          detail=f"Expected {want} bytes, found {len(buf)}.")
    off = _HEADER.size

    def take(count: int, dt) -> np.ndarray:
        nonlocal off
        a = np.frombuffer(buf, dtype=dt, count=count, offset=off)
        off += 8 * count
        return a

    row_ids, col_ids = take(n, _I8), take(m, _I8)
    row_bias, col_bias = take(n, _F8), take(m, _F8)
    P, Q = take(n * k, _F8).reshape(n, k), take(m * k, _F8).reshape(m, k)
    return Factors(float(mean), row_bias, col_bias, P, Q, row_ids, col_ids)


# -- Math on whole arrays (no store) --------------------------------------------------------------

def predict_dense(f: Factors, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """r̂ for dense index arrays ``u``, ``i`` (same shape)."""
    return f.mean + f.row_bias[u] + f.col_bias[i] + np.einsum("nk,nk->n", f.P[u], f.Q[i])


def objective(f: Factors, u, i, r, alpha: float, alpha_bias: float) -> float:
    """Σ over triples of the per-triple objective ``f`` of the module docstring (a float)."""
    u, i, r = np.asarray(u), np.asarray(i), np.asarray(r, dtype=_F8)
    e = r - predict_dense(f, u, i)
    reg = alpha * ((f.P[u] ** 2).sum() + (f.Q[i] ** 2).sum())
    reg_b = alpha_bias * ((f.row_bias[u] ** 2).sum() + (f.col_bias[i] ** 2).sum())
    return float(0.5 * (e @ e) + 0.5 * reg + 0.5 * reg_b)


def gradient_one(f: Factors, u: int, i: int, r: float, alpha: float, alpha_bias: float
                 ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """∂f/∂(row_bias[u], col_bias[i], P[u], Q[i]) for one triple (e = r - r̂)::

        ∂f/∂bu = -e + alpha_bias·bu    ∂f/∂P[u] = -e·Q[i] + alpha·P[u]
        ∂f/∂bi = -e + alpha_bias·bi    ∂f/∂Q[i] = -e·P[u] + alpha·Q[i]
    """
    pu, qi = f.P[u], f.Q[i]
    e = r - (f.mean + f.row_bias[u] + f.col_bias[i] + float(pu @ qi))
    return (-e + alpha_bias * f.row_bias[u], -e + alpha_bias * f.col_bias[i],
            -e * qi + alpha * pu, -e * pu + alpha * qi)


def sgd_dense(f: Factors, u: np.ndarray, i: np.ndarray, r: np.ndarray, h: Hyper,
              row_touch: np.ndarray | None = None, col_touch: np.ndarray | None = None
              ) -> tuple[float, int]:
    """Steps on ``f`` in place over dense triples, in order; returns (Σ e² before each step,
    number of steps).

    ``batch_size`` 1: one step per triple (:func:`gradient_one`), the classic sequential SGD.
    ``batch_size`` k > 1: the triples are cut into consecutive mini-batches of k; every triple of
    a mini-batch reads the parameters as they were at its start and the steps of a row or column
    touched several times in it add up (Hogwild!'s semantics: identical to per-triple SGD when a
    mini-batch touches each row and column at most once). ``row_touch``/``col_touch`` (int64
    counts per row/col) are incremented for :func:`merge`.
    """
    if row_touch is not None:
        np.add.at(row_touch, u, 1)
        np.add.at(col_touch, i, 1)
    if h.batch_size <= 1:
        return _sgd_sequential(f, u, i, r, h), len(r)
    sse, steps = 0.0, 0
    for s in range(0, len(r), h.batch_size):
        uu, ii, rr = u[s:s + h.batch_size], i[s:s + h.batch_size], r[s:s + h.batch_size]
        pu, qi, bu, bi = f.P[uu], f.Q[ii], f.row_bias[uu], f.col_bias[ii]
        e = rr - (f.mean + bu + bi + np.einsum("nk,nk->n", pu, qi))
        sse += float(e @ e)
        np.add.at(f.row_bias, uu, h.eta * (e - h.alpha_bias * bu))
        np.add.at(f.col_bias, ii, h.eta * (e - h.alpha_bias * bi))
        np.add.at(f.P, uu, h.eta * (e[:, None] * qi - h.alpha * pu))
        np.add.at(f.Q, ii, h.eta * (e[:, None] * pu - h.alpha * qi))
        steps += 1
    return sse, steps


def _sgd_sequential(f: Factors, u, i, r, h: Hyper) -> float:
    """Per-triple SGD (the hot loop: plain floats for the biases, in-place row updates)."""
    P, Q, bu, bi = f.P, f.Q, f.row_bias, f.col_bias
    eta, a, ab, mean = h.eta, h.alpha, h.alpha_bias, f.mean
    keep, decay = eta, 1.0 - eta * a
    sse = 0.0
    for uu, ii, rr in zip(u.tolist(), i.tolist(), r.tolist()):
        pu, qi = P[uu], Q[ii]
        e = rr - (mean + bu[uu] + bi[ii] + float(pu @ qi))
        sse += e * e
        bu[uu] += eta * (e - ab * bu[uu])
        bi[ii] += eta * (e - ab * bi[ii])
        old = pu * decay + (keep * e) * qi  # P[u] ← P[u] - eta·(-e·Q[i] + alpha·P[u])
        qi *= decay
        qi += (keep * e) * pu
        pu[:] = old
    return sse


def merge(a: tuple[Factors, np.ndarray, np.ndarray], b: tuple[Factors, np.ndarray, np.ndarray]
          ) -> tuple[Factors, np.ndarray, np.ndarray]:
    """Combine two epochs run separately from the same start, each given as (factors,
    row_touch, col_touch): every row's (column's) bias and factor vector is the average of the
    two sides weighted by how many triples of that row (column) each side saw; a row neither
    side saw keeps ``a``'s value (both sides still hold the common start). Touch counts add.

    Raises :class:`InvalidData` if the two sides are not over the same ids and rank.
    """
    fa, ra, ca = a
    fb, rb, cb = b
    if (fa.rank != fb.rank or not np.array_equal(fa.row_ids, fb.row_ids)
            or not np.array_equal(fa.col_ids, fb.col_ids)):
        raise InvalidData("cannot merge factorisations of different shapes",
                          detail="Both sides must come from the same start (ids and rank).")

    def avg(xa, xb, na, nb):
        wa, wb = na.astype(_F8), nb.astype(_F8)
        tot = wa + wb
        safe = np.where(tot > 0, tot, 1.0)
        wa = np.where(tot > 0, wa / safe, 1.0)
        wb = np.where(tot > 0, wb / safe, 0.0)
        if xa.ndim == 2:
            wa, wb = wa[:, None], wb[:, None]
        return wa * xa + wb * xb

    out = Factors(fa.mean, avg(fa.row_bias, fb.row_bias, ra, rb),
                  avg(fa.col_bias, fb.col_bias, ca, cb), avg(fa.P, fb.P, ra, rb),
                  avg(fa.Q, fb.Q, ca, cb), fa.row_ids.copy(), fa.col_ids.copy())
    return out, ra + rb, ca + cb


# -- Prediction and recommendation on ids ---------------------------------------------------------

UNKNOWN = ("error", "baseline", "null")


def predict(f: Factors, row_ids, col_ids, unknown: str = "error") -> np.ndarray:
    """r̂ for id arrays (same length). An id not seen in training is handled by ``unknown``:

    * ``'error'`` (default): raise :class:`InvalidData` naming the first unknown id;
    * ``'baseline'``: drop the terms that need it (mean + the known biases; the factor product
      only when both ids are known), the usual cold-start fallback;
    * ``'null'``: NaN for that pair (SQL NULL).
    """
    if unknown not in UNKNOWN:
        raise InvalidParameter("unknown must be 'error', 'baseline' or 'null'",
                               detail=f"unknown => {unknown!r}.")
    u, ku = dense(f.row_ids, row_ids)
    i, ki = dense(f.col_ids, col_ids)
    both = ku & ki
    if unknown == "error" and not both.all():
        bad = int(np.flatnonzero(~both)[0])
        which, value = (("row", np.asarray(row_ids)[bad]) if not ku[bad]
                        else ("column", np.asarray(col_ids)[bad]))
        raise InvalidData(
            f"{which} id {int(value)} was not in the model's training data",
            detail="A factorisation has factors only for the ids it was trained on.",
            hint="Pass unknown => 'baseline' for mean + known biases, or unknown => 'null'.")
    out = np.full(u.shape, f.mean)
    out += np.where(ku, f.row_bias[u], 0.0) if f.row_ids.size else 0.0
    out += np.where(ki, f.col_bias[i], 0.0) if f.col_ids.size else 0.0
    if both.any():
        out[both] += np.einsum("nk,nk->n", f.P[u[both]], f.Q[i[both]])
    if unknown == "null":
        out[~both] = np.nan
    return out


def recommend(f: Factors, row_id: int, k: int, exclude=()) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` column ids with the highest r̂ for ``row_id``, skipping the ids in ``exclude``;
    returns (col_ids, scores), best first, ties by ascending id. Raises :class:`InvalidData` for
    an unknown row id and :class:`InvalidParameter` for ``k < 1``."""
    if k < 1:
        raise InvalidParameter("k must be at least 1", detail=f"k => {k!r}.")
    u, known = dense(f.row_ids, [row_id])
    if not known[0]:
        raise InvalidData(f"row id {int(row_id)} was not in the model's training data",
                          hint="Recommendations need a row the model was trained on.")
    scores = f.mean + f.row_bias[u[0]] + f.col_bias + f.Q @ f.P[u[0]]
    keep = np.ones(f.col_ids.size, bool)
    ex, kn = dense(f.col_ids, np.asarray(list(exclude), dtype=_I8))
    keep[ex[kn]] = False
    cand = np.flatnonzero(keep)
    order = np.lexsort((f.col_ids[cand], -scores[cand]))[:k]
    return f.col_ids[cand[order]], scores[cand[order]]


# -- The epoch aggregate over a per-backend store --------------------------------------------------

def _runs(store: dict) -> dict:
    return store.setdefault(STORE_KEY, {})


def begin(store: dict, f: Factors) -> bytes:
    """Hold ``f`` (copied, writable) in ``store`` under a new random handle; returns the handle.
    Drops every other run this backend still holds (runs whose call errored before release)."""
    runs = _runs(store)
    runs.clear()
    handle = os.urandom(16)
    n, m = f.row_ids.size, f.col_ids.size
    runs[handle] = _Run(f.copy(), None, np.zeros(n, _I8), np.zeros(m, _I8))
    return handle


def init_state(handle: bytes, h: Hyper) -> bytes:
    """The epoch aggregate's ``init`` argument: kind magic, handle and step settings (56
    bytes)."""
    return _STATE.pack(_STATE_MAGIC, handle, h.eta, h.alpha, h.alpha_bias, h.batch_size)


def _run(store: dict, init: bytes) -> tuple[_Run, Hyper]:
    magic, handle, eta, alpha, alpha_bias, batch = _STATE.unpack(bytes(init))
    if magic != _STATE_MAGIC:
        raise InvalidData("not a matrix factorisation epoch state")
    run = _runs(store).get(handle)
    if run is None:
        raise InvalidData(
            "the factorisation being trained is not held by this database backend",
            detail="Its arrays live in the backend that started the training run.",
            hint="Run the epoch in the session that started the run, serially (not in a "
                 "parallel worker, not through a pooler that switches backends).")
    return run, Hyper(eta, alpha, alpha_bias, int(batch))


def transition(state: bytes | None, u, i, value, init: bytes, store: dict) -> bytes:
    """Consume one triple given by dense indices ``u``, ``i`` (positions in the model's ids, as
    the training loop's working copy holds them) and its value; NULL or non-finite values are
    skipped and counted; an index outside the model raises :class:`InvalidData`. Returns
    ``init`` (the state stays small; the arrays change in place in ``store``)."""
    return transition_block(state, [u], [i], [value], init, store)


def transition_block(state: bytes | None, us, is_, values, init: bytes, store: dict) -> bytes:
    """Consume a block of triples (three equally long sequences: dense row and column indices
    and values) in order, as :func:`sgd_dense` with the epoch's ``batch_size`` (a negative
    ``batch_size`` only adds up the squared errors: validation). Triples with a NULL index or a
    NULL or non-finite value are skipped and counted."""
    run, h = _run(store, init)
    if state is None:
        run.epoch = _Epoch()
    ep = run.epoch
    if us is None or is_ is None or values is None:
        return init
    if not len(us) == len(is_) == len(values):
        raise InvalidData("a block's id and value arrays differ in length",
                          detail=f"{len(us)} row ids, {len(is_)} column ids, {len(values)} "
                                 "values.")
    r = np.array([np.nan if v is None else v for v in values], dtype=_F8)
    ok = np.isfinite(r)
    if None in us or None in is_:
        ok &= np.array([a is not None and b is not None for a, b in zip(us, is_)], bool)
        us = [a if a is not None else 0 for a in us]
        is_ = [b if b is not None else 0 for b in is_]
    ep.skipped += int((~ok).sum())
    if not ok.any():
        return init
    u, i = np.asarray(us, dtype=_I8)[ok], np.asarray(is_, dtype=_I8)[ok]
    f = run.factors
    if u.min() < 0 or u.max() >= f.row_ids.size or i.min() < 0 or i.max() >= f.col_ids.size:
        raise InvalidData("a triple's index is outside the model being trained",
                          detail=f"The model has {f.row_ids.size} rows and {f.col_ids.size} "
                                 "columns.",
                          hint="Train on the working copy the run prepared.")
    r = r[ok]
    if h.batch_size < 0:
        e = r - predict_dense(f, u, i)
        sse, steps = float(e @ e), 0
    else:
        sse, steps = sgd_dense(f, u, i, r, h, run.row_touch, run.col_touch)
    ep.rows += int(r.size)
    ep.steps += steps
    ep.loss_sum += sse
    return init


def finalize(state: bytes | None, init: bytes | None, store: dict) -> bytes:
    """End the epoch: free its accumulators and return its :class:`EpochStats` as bytes (the
    factors stay in ``store`` for the next epoch; :func:`export` serialises them). ``state`` is
    None for an epoch without rows; then ``init`` (if given) names the run."""
    if state is None:
        handle = _STATE.unpack(bytes(init))[1] if init is not None else b"\0" * 16
        return _STATS.pack(_STATS_MAGIC, handle, 0, 0, 0, 0.0)
    run, _ = _run(store, state)
    ep, run.epoch = run.epoch or _Epoch(), None
    handle = _STATE.unpack(bytes(state))[1]
    return _STATS.pack(_STATS_MAGIC, handle, ep.rows, ep.skipped, ep.steps, ep.loss_sum)


def read_stats(data: bytes) -> EpochStats:
    """Decode :func:`finalize`'s bytes."""
    if data is None or len(data) != _STATS.size or bytes(data[:4]) != _STATS_MAGIC:
        raise InvalidData("not a matrix factorisation epoch result")
    _, handle, rows, skipped, steps, loss_sum = _STATS.unpack(bytes(data))
    return EpochStats(handle, rows, skipped, steps, loss_sum)


def current(store: dict, handle: bytes) -> Factors:
    """The run's factors as they are now (the live arrays, not a copy)."""
    run = _runs(store).get(bytes(handle))
    if run is None:
        raise InvalidData("the factorisation run is not held by this database backend",
                          detail="The handle names no training run of this backend (runs are "
                                 "held only while bismarck.train_mf runs).",
                          hint="Train with bismarck.train_mf; the private _mf_* functions "
                               "take a handle of a run in progress.")
    return run.factors


def touches(store: dict, handle: bytes) -> tuple[np.ndarray, np.ndarray]:
    """How many triples of each row and column the run has consumed so far (for :func:`merge`)."""
    run = _runs(store)[bytes(handle)]
    return run.row_touch, run.col_touch


def export(store: dict, handle: bytes) -> bytes:
    """The run's factors in stored form (:func:`dumps`): the one O(model) copy of a run."""
    return dumps(current(store, handle))


def release(store: dict, handle: bytes) -> None:
    """Forget the run (no error if it is already gone)."""
    _runs(store).pop(bytes(handle), None)
