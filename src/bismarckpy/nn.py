"""Multi-layer perceptrons as a Bismarck epoch aggregate: initialize, transition, merge, finalize.

The aggregate state is one little-endian float64 buffer (travelling as ``bytea``)::

    header (HEADER slots) | sizes (L + 1) | classes (K, classification only) | mu (d) | sd (d)
    | params (P) | gradient sum (P) | moment 1 (P) | moment 2 (P)

``sizes`` = ``[d, *hidden, k]`` (``k`` = number of classes, or 1 for regression); ``params``
holds layer after layer its weights ``W`` (``fan_in × fan_out``, C order) then its intercepts
``b`` (``fan_out``), so ``P = Σ (fan_in + 1) · fan_out``. Moment 1 is SGD's velocity or Adam's
first moment, moment 2 Adam's second moment. A packed mini-batch transition is a forward pass,
a backward pass and an optimiser step on views of this one buffer.

The objective, its gradient, the Glorot initialisation and both optimisers are scikit-learn's
``MLPClassifier``/``MLPRegressor`` (``sklearn/neural_network/_multilayer_perceptron.py`` and
``_stochastic_optimizers.py``): per mini-batch of ``n`` rows the loss is the mean data loss plus
``alpha · ½‖W‖² / n`` (intercepts unpenalised); classification uses a softmax output with
cross-entropy (also for two classes, where it equals the logistic output), regression an identity
output with ``½ (ŷ - y)²``. Features are standardised with the ``mu``/``sd`` held in the state
(``sd`` = ``inf`` for a constant column maps it to 0); regression targets with ``y_shift``/
``y_scale``, so losses are in standardised label units.

Modes, by ``batch_size``: k ≥ 1 steps every k rows (a partial batch carries over to the next
block and is stepped by :func:`finalize`); 0 is full-batch gradient descent (one step per epoch);
-1 (:data:`EVALUATE`) only accumulates the loss (validation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidData, InvalidParameter, check_state_size
from .pack import parse_block

MAGIC = 2043.0  # tells an MLP state from a GLM's (2012.0)
EVALUATE = -1
TASKS = {"classification": 0, "regression": 1}
TASK_NAMES = {v: k for k, v in TASKS.items()}
ACTIVATIONS = {"relu": 0, "tanh": 1, "logistic": 2}
ACTIVATION_NAMES = {v: k for k, v in ACTIVATIONS.items()}
SOLVERS = {"sgd": 0, "adam": 1}
SOLVER_NAMES = {v: k for k, v in SOLVERS.items()}

# Header slots of the state vector.
(_MAGIC, _TASK, _ACT, _SOLVER, _NSIZES, _K, _D, _LR, _MOMENTUM, _NESTEROV, _BETA1, _BETA2,
 _EPS, _ALPHA, _BATCH, _T, _ROWS, _LOSS_SUM, _PENDING, _SKIPPED, _STEPS, _PARTS, _STANDARDIZE,
 _ITEMSIZE, _YSHIFT, _YSCALE, _DIVERGED, _SEED) = range(28)
HEADER = 28
_F8 = np.dtype("<f8")
_RAW_1D = np.array([1, 0], dtype="<i4").tobytes()  # a 1-D float8[] without a NULL bitmap


@dataclass
class Network:
    """A decoded state: the architecture, the parameters and the epoch's statistics."""

    sizes: list[int]
    task: str
    activation: str
    layers: list[tuple[np.ndarray, np.ndarray]]  # (W: fan_in × fan_out, b: fan_out) per layer
    classes: np.ndarray  # K class values (classification), empty for regression
    mu: np.ndarray
    sd: np.ndarray
    y_shift: float
    y_scale: float
    rows: int
    loss_sum: float
    skipped: int
    steps: int
    t: float
    alpha: float
    batch_size: int
    parts: int
    diverged: bool

    @property
    def data_loss(self) -> float:
        """Mean per-row loss seen during the epoch (what validation reports)."""
        return self.loss_sum / self.rows if self.rows else float("nan")

    @property
    def mean_loss(self) -> float:
        """Mean per-row loss plus the L2 penalty ``alpha · ½‖W‖² / batch`` at the final weights.

        scikit-learn's ``loss_`` adds the penalty per mini-batch divided by the batch's rows;
        with ``batch_size`` 0 (full batch) the divisor is the epoch's rows.
        """
        if self.rows == 0:
            return float("nan")
        n = self.batch_size if self.batch_size > 0 else self.rows
        sq = sum(float(np.dot(W.ravel(), W.ravel())) for W, _ in self.layers)
        return self.data_loss + 0.5 * self.alpha * sq / n


# --- architecture -----------------------------------------------------------------------------

def check_hidden(hidden) -> list[int]:
    """Validated hidden layer sizes (``[]`` is allowed: a linear/softmax model).

    Raises :class:`InvalidParameter` for a size that is not a positive integer.
    """
    out = []
    for i, h in enumerate(list(hidden if hidden is not None else [])):
        if h is None or isinstance(h, bool) or not float(h).is_integer() or int(h) < 1:
            raise InvalidParameter(
                "hidden layer sizes must be positive integers",
                detail=f"Hidden layer {i + 1} has size {h!r}.",
                hint="Give one size ≥ 1 per hidden layer, e.g. hidden => ARRAY[64, 32].")
        out.append(int(h))
    return out


def n_params(sizes: list[int]) -> int:
    """Number of weights and intercepts of a network with layer widths ``sizes``."""
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def state_values(sizes: list[int]) -> int:
    """float64 values of an epoch state for layer widths ``sizes`` (K classes ≤ the last
    width): the header, sizes, classes, ``mu``/``sd``, and four ``P``-vectors (weights, gradient
    sum, two optimiser moments)."""
    return HEADER + 2 * len(sizes) + 2 * sizes[0] + 4 * n_params(sizes)


def unflatten(params: np.ndarray, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Views ``(W, b)`` per layer into a flat parameter vector (no copy)."""
    layers, o = [], 0
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        W = params[o:o + a * b].reshape(a, b)
        o += a * b
        layers.append((W, params[o:o + b]))
        o += b
    return layers


def weight_mask(sizes: list[int]) -> np.ndarray:
    """1.0 on weights, 0.0 on intercepts (the L2 penalty's support), shape ``(P,)``."""
    m = np.zeros(n_params(sizes))
    for W, _ in unflatten(m, sizes):
        W[...] = 1.0
    return m


def glorot(sizes: list[int], activation: str, seed: int) -> np.ndarray:
    """Initial parameters, Glorot-uniform as scikit-learn's MLP (``_init_coef``).

    Every weight and intercept of layer ``fan_in → fan_out`` is drawn from ``U(-r, r)`` with
    ``r = sqrt(f / (fan_in + fan_out))``, ``f`` = 2 for logistic, else 6 (Glorot & Bengio
    2010). The draws come from ``numpy.random.default_rng(seed)`` layer by layer, so a seed
    gives the same network on every machine.
    """
    rng = np.random.default_rng(int(seed) & (2**63 - 1))
    f = 2.0 if activation == "logistic" else 6.0
    params = np.empty(n_params(sizes))
    for W, b in unflatten(params, sizes):
        r = math.sqrt(f / (W.shape[0] + W.shape[1]))
        W[...] = rng.uniform(-r, r, W.shape)
        b[...] = rng.uniform(-r, r, b.shape)
    return params


# --- the objective ----------------------------------------------------------------------------

def _activate(z: np.ndarray, code: int) -> np.ndarray:
    if code == 0:
        return np.maximum(z, 0.0, out=z)
    if code == 1:
        return np.tanh(z, out=z)
    # logistic, written to stay finite for any z
    return np.exp(-np.logaddexp(0.0, -z), out=z)


def _derivative(a: np.ndarray, delta: np.ndarray, code: int) -> None:
    """Multiply ``delta`` in place by the activation's derivative, written with its output ``a``."""
    if code == 0:
        delta[a <= 0] = 0.0
    elif code == 1:
        delta *= 1.0 - a * a
    else:
        delta *= a * (1.0 - a)


def forward(layers, X: np.ndarray, activation: int) -> list[np.ndarray]:
    """Activations of every layer for rows ``X`` (``n × d``); the last is the raw output ``z``."""
    acts = [X]
    last = len(layers) - 1
    for i, (W, b) in enumerate(layers):
        z = acts[-1] @ W
        z += b
        acts.append(z if i == last else _activate(z, activation))
    return acts


def _output_loss(z: np.ndarray, y: np.ndarray, task: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row loss and d loss / d z for raw outputs ``z`` (``n × k``).

    Classification: ``y`` holds class indices, loss ``-log softmax(z)[y]``, gradient
    ``softmax(z) - onehot(y)``. Regression: ``y`` real, loss ``½ (z - y)²``, gradient ``z - y``.
    """
    n = z.shape[0]
    if task == 0:
        zmax = z.max(axis=1, keepdims=True)
        e = np.exp(z - zmax)
        s = e.sum(axis=1, keepdims=True)
        p = e / s
        idx = y.astype(np.intp)
        rows = np.arange(n)
        loss = (np.log(s[:, 0]) + zmax[:, 0]) - z[rows, idx]
        p[rows, idx] -= 1.0
        return loss, p
    r = z - y.reshape(n, -1)
    return 0.5 * (r * r).sum(axis=1), r


def loss_grad_sum(params: np.ndarray, sizes: list[int], X: np.ndarray, y: np.ndarray,
                  task: int, activation: int) -> tuple[float, np.ndarray]:
    """Sum over rows of the data loss and of its gradient (flat, ``(P,)``), no penalty.

    Backpropagation (Rumelhart, Hinton & Williams 1986) in scikit-learn's arrangement:
    ``δ_L = ∂loss/∂z_L``, ``∂/∂W_l = a_{l-1}ᵀ δ_l``, ``∂/∂b_l = Σ δ_l``,
    ``δ_{l-1} = (δ_l W_lᵀ) ⊙ act'(a_{l-1})``.
    """
    layers = unflatten(params, sizes)
    acts = forward(layers, X, activation)
    loss, delta = _output_loss(acts[-1], y, task)
    grad = np.empty_like(params)
    glayers = unflatten(grad, sizes)
    for i in range(len(layers) - 1, -1, -1):
        gW, gb = glayers[i]
        np.matmul(acts[i].T, delta, out=gW)
        gb[...] = delta.sum(axis=0)
        if i:
            delta = delta @ layers[i][0].T
            _derivative(acts[i], delta, activation)
    return float(loss.sum()), grad


def objective(params: np.ndarray, sizes: list[int], X: np.ndarray, y: np.ndarray, *,
              task: str, activation: str, alpha: float = 0.0) -> tuple[float, np.ndarray]:
    """scikit-learn's mini-batch objective and its gradient over all rows of ``X``.

    ``mean loss + alpha · ½‖W‖² / n`` and ``(Σ ∇loss + alpha · W) / n``; ``y`` holds class
    indices (classification) or standardised targets (regression).
    """
    n = X.shape[0]
    total, g = loss_grad_sum(params, sizes, X, y, TASKS[task], ACTIVATIONS[activation])
    m = weight_mask(sizes)
    wp = params * m
    return (total + 0.5 * alpha * float(wp @ wp)) / n, (g + alpha * wp) / n


# --- the aggregate --------------------------------------------------------------------------

def initialize(d: int, *, hidden, task: str = "classification", classes=None,
               activation: str = "relu", solver: str = "adam", learning_rate_init: float = 1e-3,
               momentum: float = 0.9, nesterovs_momentum: bool = True, beta_1: float = 0.9,
               beta_2: float = 0.999, epsilon: float = 1e-8, alpha: float = 1e-4,
               batch_size: int = 200, seed: int = 0, params: np.ndarray | None = None,
               mu: np.ndarray | None = None, sd: np.ndarray | None = None,
               y_shift: float = 0.0, y_scale: float = 1.0, itemsize: int = 8) -> bytes:
    """A fresh state: Glorot weights under ``seed`` (or ``params``), zero optimiser moments.

    ``classes`` are the K ≥ 2 label values (floats) of a classification task, sorted; rows
    carry one of them as their label. ``itemsize`` (4 or 8) is the width of packed blocks'
    values. Raises :class:`InvalidParameter` for an unknown task/activation/solver, a hidden
    layer of size < 1, fewer than two classes or an out-of-range optimiser setting.
    """
    hidden = check_hidden(hidden)
    for name, value, table in (("task", task, TASKS), ("activation", activation, ACTIVATIONS),
                               ("solver", solver, SOLVERS)):
        if value not in table:
            raise InvalidParameter(f"unknown {name} {value!r}",
                                   hint=f"Use one of: {', '.join(table)}.")
    _check_range("learning_rate_init", learning_rate_init, lo=0.0, lo_open=True)
    _check_range("momentum", momentum, lo=0.0, hi=1.0)
    _check_range("beta_1", beta_1, lo=0.0, hi=1.0, hi_open=True)
    _check_range("beta_2", beta_2, lo=0.0, hi=1.0, hi_open=True)
    _check_range("epsilon", epsilon, lo=0.0, lo_open=True)
    _check_range("alpha", alpha, lo=0.0)
    if int(batch_size) != batch_size or batch_size < EVALUATE:
        raise InvalidParameter("batch_size must be an integer ≥ 0 (0: full batch)",
                               detail=f"Got {batch_size!r}.")
    if d < 1:
        raise InvalidParameter("an MLP needs at least one feature", detail=f"d = {d}.")
    if task == "classification":
        cls = np.unique(np.asarray(classes if classes is not None else [], dtype=np.float64))
        if cls.size < 2:
            raise InvalidData("classification needs at least two classes",
                              detail=f"The label has {cls.size} distinct value(s).",
                              hint="Use task => 'regression' for a real-valued label, or "
                                   "train on data holding two or more classes.")
        k = int(cls.size)
    else:
        cls, k = np.empty(0), 1
    sizes = [int(d), *hidden, k]
    P = n_params(sizes)
    check_state_size(state_values(sizes), f"A network of layer sizes {sizes}",
                     "Use fewer or smaller hidden layers (or fewer features).")
    s = np.zeros(HEADER + len(sizes) + cls.size + 2 * d + 4 * P, dtype=_F8)
    s[_MAGIC], s[_TASK], s[_ACT] = MAGIC, TASKS[task], ACTIVATIONS[activation]
    s[_SOLVER], s[_NSIZES], s[_K], s[_D] = SOLVERS[solver], len(sizes), cls.size, d
    s[_LR], s[_MOMENTUM], s[_NESTEROV] = learning_rate_init, momentum, float(nesterovs_momentum)
    s[_BETA1], s[_BETA2], s[_EPS], s[_ALPHA] = beta_1, beta_2, epsilon, alpha
    s[_BATCH], s[_PARTS], s[_ITEMSIZE], s[_SEED] = batch_size, 1, itemsize, seed
    s[_STANDARDIZE] = float(mu is not None and sd is not None)
    s[_YSHIFT], s[_YSCALE] = y_shift, y_scale
    s[HEADER:HEADER + len(sizes)] = sizes
    v = _views(s)
    v["classes"][:] = cls
    v["mu"][:] = mu if mu is not None and sd is not None else 0.0
    v["sd"][:] = sd if mu is not None and sd is not None else 1.0
    v["params"][:] = params if params is not None else glorot(sizes, activation, seed)
    return s.tobytes()


def next_epoch(state: bytes, *, learning_rate_init: float | None = None,
               batch_size: int | None = None) -> bytes:
    """The initial state of the next epoch: the weights and moments kept, the counters cleared.

    ``learning_rate_init`` sets the epoch's rate (a schedule's); ``batch_size`` = -1 turns the
    state into a loss-only evaluation of the current network (validation).
    """
    s = _load(state)
    for slot in (_ROWS, _LOSS_SUM, _PENDING, _SKIPPED, _STEPS, _DIVERGED):
        s[slot] = 0.0
    s[_PARTS] = 1
    _views(s)["grad"][:] = 0.0
    if learning_rate_init is not None:
        s[_LR] = learning_rate_init
    if batch_size is not None:
        s[_BATCH] = batch_size
    return s.tobytes()


def transition_block(state: bytes | None, block: bytes | None, init: bytes,
                     first: int = 0, stop: int | None = None) -> bytes:
    """Consume rows ``first:stop`` of one packed block (see :mod:`bismarckpy.pack`).

    Rows are taken in block order; a step falls every ``batch_size`` rows, a partial batch
    carrying over to the next block. Raises :class:`InvalidData` for a label that is not one of
    the state's classes or a block of another width.
    """
    s = _load(state if state is not None else init)
    if block is None:
        return s.tobytes()
    d = int(s[_D])
    offsets, M = parse_block(block, d, int(s[_ITEMSIZE]))
    M = M[first:stop]
    values = M.astype(np.float64)
    values += offsets
    _consume(s, values[:, 1:], _labels(s, values[:, 0]))
    return s.tobytes()


def transition(state: bytes | None, x, y: float | None, init: bytes) -> bytes:
    """Consume one tuple (the row-at-a-time path). NULL or non-finite rows are skipped, counted.

    ``y`` is a class's raw value (coded here as in packed blocks: its index among the state's
    classes), or a regression target already standardised, as the training loop's row copy
    holds it (packed blocks hold raw targets, standardised here with ``y_shift``/``y_scale``).

    ``x`` is a sequence of floats or the in-memory bytes of a 1-D ``float8[]`` without NULLs
    (``bismarck._float8_array_bytes``: a 20-byte header, then the values).
    """
    s = _load(state if state is not None else init)
    d = int(s[_D])
    if y is None or x is None or not math.isfinite(y):
        s[_SKIPPED] += 1
        return s.tobytes()
    if isinstance(x, (bytes, bytearray, memoryview)):  # the in-memory form of a float8[]
        raw = bytes(x)
        if len(raw) != 20 + 8 * d or raw[:8] != _RAW_1D:
            raise wrong_length(d, (len(raw) - 20) // 8)
        xv = np.frombuffer(raw, dtype=_F8, offset=20).reshape(1, d)
    else:
        if len(x) != d:
            raise wrong_length(d, len(x))
        try:
            xv = np.array(x, dtype=_F8).reshape(1, d)
        except (TypeError, ValueError):
            s[_SKIPPED] += 1
            return s.tobytes()
    if not np.isfinite(xv).all():
        s[_SKIPPED] += 1
        return s.tobytes()
    yv = np.array([float(y)])
    _consume(s, xv, _labels(s, yv) if int(s[_TASK]) == 0 else yv)
    return s.tobytes()


def transition_arrays(state: bytes, X: np.ndarray, y: np.ndarray) -> bytes:
    """Consume in-memory rows ``X`` (``n × d``, raw units) and raw labels ``y`` (tests, tools)."""
    s = _load(state)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != int(s[_D]):
        raise wrong_length(int(s[_D]), X.shape[-1] if X.ndim else 0)
    _consume(s, X, _labels(s, np.asarray(y, dtype=np.float64)))
    return s.tobytes()


def merge(a: bytes | None, b: bytes | None) -> bytes | None:
    """Combine two partial states: counters add up, networks and moments average by rows.

    Each side first steps its pending partial batch (as :func:`finalize` would), so the result
    does not depend on the order in which workers' states are merged (up to rounding). In
    full-batch mode the networks are equal and the gradient sums add exactly.
    """
    if a is None:
        return b
    if b is None:
        return a
    sa, sb = _load(a), _load(b)
    if sa.size != sb.size or not np.array_equal(_views(sa)["sizes"], _views(sb)["sizes"]):
        raise InvalidData("cannot merge networks of different shapes",
                          detail="The partial states have different layer sizes.")
    va, vb = _views(sa), _views(sb)
    full_batch = int(sa[_BATCH]) in (0, EVALUATE)
    if full_batch:
        va["grad"] += vb["grad"]
        sa[_PENDING] += sb[_PENDING]
    else:
        _flush(sa)
        _flush(sb)
        na, nb = sa[_ROWS], sb[_ROWS]
        if na + nb > 0:
            for key in ("params", "m1", "m2"):
                va[key][:] = (na * va[key] + nb * vb[key]) / (na + nb)
    sa[_T] = max(sa[_T], sb[_T])
    sa[_DIVERGED] = max(sa[_DIVERGED], sb[_DIVERGED])
    for slot in (_ROWS, _LOSS_SUM, _SKIPPED, _STEPS, _PARTS):
        sa[slot] += sb[slot]
    return sa.tobytes()


def finalize(state: bytes | None) -> bytes | None:
    """Step the pending (partial or full) batch and return the epoch's final state."""
    if state is None:
        return None
    s = _load(state)
    _flush(s)
    return s.tobytes()


def decode(state: bytes) -> Network:
    """Read a state produced by any function here. Raises :class:`InvalidData` otherwise."""
    s = _load(state)
    v = _views(s)
    sizes = [int(x) for x in v["sizes"]]
    return Network(
        sizes=sizes, task=TASK_NAMES[int(s[_TASK])], activation=ACTIVATION_NAMES[int(s[_ACT])],
        layers=[(W.copy(), b.copy()) for W, b in unflatten(v["params"], sizes)],
        classes=v["classes"].copy(), mu=v["mu"].copy(), sd=v["sd"].copy(),
        y_shift=float(s[_YSHIFT]), y_scale=float(s[_YSCALE]), rows=int(s[_ROWS]),
        loss_sum=float(s[_LOSS_SUM]), skipped=int(s[_SKIPPED]), steps=int(s[_STEPS]),
        t=float(s[_T]), alpha=float(s[_ALPHA]), batch_size=int(s[_BATCH]),
        parts=int(s[_PARTS]), diverged=bool(s[_DIVERGED]))


def params_of(state: bytes) -> np.ndarray:
    """A copy of the flat parameter vector (``(P,)``)."""
    return _views(_load(state))["params"].copy()


def with_params(state: bytes, params: np.ndarray) -> bytes:
    """``state`` with its flat parameter vector replaced by ``params`` (``(P,)``)."""
    s = _load(state)
    _views(s)["params"][:] = params
    return s.tobytes()


# --- prediction -----------------------------------------------------------------------------

def raw_output(state: bytes, X) -> np.ndarray:
    """Network outputs ``z`` (``n × k``) for raw feature rows ``X`` (``n × d`` or one row).

    Raises :class:`InvalidData` when the rows do not have the model's ``d`` features.
    """
    s = _load(state)
    v = _views(s)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    d = int(s[_D])
    if X.ndim != 2 or X.shape[1] != d:
        raise wrong_length(d, X.shape[-1])
    if s[_STANDARDIZE]:
        X = (X - v["mu"]) / v["sd"]
    sizes = [int(x) for x in v["sizes"]]
    return forward(unflatten(v["params"], sizes), X, int(s[_ACT]))[-1]


def predict_proba(state: bytes, X) -> np.ndarray:
    """Class probabilities (``n × K``, columns in the order of the sorted classes)."""
    s = _load(state)
    if int(s[_TASK]) != 0:
        raise InvalidParameter("predict_proba needs a classification network",
                               hint="This MLP was trained with task => 'regression'.")
    z = raw_output(state, X)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(state: bytes, X) -> np.ndarray:
    """Predicted class values (classification) or targets in the label's units (regression)."""
    s = _load(state)
    z = raw_output(state, X)
    if int(s[_TASK]) == 0:
        return _views(s)["classes"][np.argmax(z, axis=1)]
    return z[:, 0] * s[_YSCALE] + s[_YSHIFT]


# --- internals ------------------------------------------------------------------------------

def wrong_length(d: int, got: int) -> InvalidData:
    """The error for a feature vector that does not match the network."""
    return InvalidData(
        "feature vector has the wrong length",
        detail=f"The model has {d} features but a row has {got}.",
        hint="Pass the same feature columns, in the same order, as at training time.")


def _check_range(name: str, value: float, *, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    v = float(value)
    bad = not math.isfinite(v)
    bad |= lo is not None and (v <= lo if lo_open else v < lo)
    bad |= hi is not None and (v >= hi if hi_open else v > hi)
    if bad:
        lo_s = "" if lo is None else ("> " if lo_open else "≥ ") + f"{lo:g}"
        hi_s = "" if hi is None else ("< " if hi_open else "≤ ") + f"{hi:g}"
        bounds = " and ".join(x for x in (lo_s, hi_s) if x)
        raise InvalidParameter(f"{name} is out of range",
                               detail=f"{name} must be {bounds}; got {value!r}.")


def _load(state: bytes) -> np.ndarray:
    bad = InvalidData("not a bismarck MLP state",
                      detail="The bytes are not an MLP state header followed by its network.")
    if state is None or len(state) % 8 or len(state) < 8 * HEADER:
        raise bad
    s = np.frombuffer(state, dtype=_F8).copy()
    if s[_MAGIC] != MAGIC:
        raise bad
    dims = s[[_NSIZES, _K, _D]]
    if not (np.isfinite(dims).all() and (dims >= 0).all() and (dims < s.size).all()
            and (dims == np.floor(dims)).all()):
        raise bad
    return s


def _views(s: np.ndarray) -> dict[str, np.ndarray]:
    """Named slices of the state vector (views: writing them writes the state)."""
    L1, K, d = int(s[_NSIZES]), int(s[_K]), int(s[_D])
    o = HEADER
    sizes = s[o:o + L1]
    o += L1
    P = n_params([int(x) for x in sizes])
    out = {"sizes": sizes}
    for key, n in (("classes", K), ("mu", d), ("sd", d), ("params", P), ("grad", P),
                   ("m1", P), ("m2", P)):
        out[key] = s[o:o + n]
        o += n
    if o != s.size:
        raise InvalidData("not a bismarck MLP state",
                          detail=f"The state holds {s.size} values; its header implies {o}.")
    return out


def code_labels(state: bytes, y) -> np.ndarray:
    """Raw labels → the codes rows carry on the row path (see :func:`transition`)."""
    return _labels(_load(state), np.asarray(y, dtype=np.float64))


def _labels(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Raw labels → class indices (classification) or standardised targets (regression)."""
    if int(s[_TASK]) == 0:
        cls = _views(s)["classes"]
        idx = np.searchsorted(cls, y).clip(0, cls.size - 1)
        bad = cls[idx] != y
        if bad.any():
            raise InvalidData("a label is not one of the model's classes",
                              detail=f"Label {y[bad][0]!r}; the classes are "
                                     f"{', '.join(f'{c:g}' for c in cls[:10])}"
                                     f"{' …' if cls.size > 10 else ''}.",
                              hint="Train on data that holds every class.")
        return idx.astype(np.float64)
    return (y - s[_YSHIFT]) / s[_YSCALE]


def _consume(s: np.ndarray, X: np.ndarray, yv: np.ndarray) -> None:
    """Feed rows (raw features, coded labels) through the network: accumulate losses and
    gradients, step per batch."""
    v = _views(s)
    if s[_STANDARDIZE]:
        X = (X - v["mu"]) / v["sd"]
    sizes = [int(x) for x in v["sizes"]]
    task, act, batch = int(s[_TASK]), int(s[_ACT]), int(s[_BATCH])
    n, start = len(yv), 0
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        while start < n:
            take = n - start if batch <= 0 else min(n - start, batch - int(s[_PENDING]))
            Xc, yc = X[start:start + take], yv[start:start + take]
            start += take
            s[_ROWS] += take
            if s[_DIVERGED]:  # no point computing on NaN weights; the loss says it diverged
                s[_LOSS_SUM] = math.inf
                continue
            if batch == EVALUATE:
                acts = forward(unflatten(v["params"], sizes), Xc, act)
                s[_LOSS_SUM] += float(_output_loss(acts[-1], yc, task)[0].sum())
                continue
            loss, g = loss_grad_sum(v["params"], sizes, Xc, yc, task, act)
            s[_LOSS_SUM] += loss
            v["grad"] += g
            s[_PENDING] += take
            if batch > 0 and s[_PENDING] >= batch:
                _flush(s, v, sizes)
            if not math.isfinite(s[_LOSS_SUM]):
                s[_DIVERGED] = 1.0


def _flush(s: np.ndarray, v: dict | None = None, sizes: list[int] | None = None) -> None:
    """Step on the rows accumulated so far, if any, and clear the accumulator."""
    n = s[_PENDING]
    if n <= 0 or int(s[_BATCH]) == EVALUATE or s[_DIVERGED]:
        return
    v = v or _views(s)
    sizes = sizes or [int(x) for x in v["sizes"]]
    p, g = v["params"], v["grad"]
    g += s[_ALPHA] * p * weight_mask(sizes)
    g /= n
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        _update(s, p, g, v["m1"], v["m2"])
    g[:] = 0.0
    s[_PENDING] = 0
    s[_STEPS] += 1
    if not np.isfinite(p).all():
        s[_DIVERGED] = 1.0
        s[_LOSS_SUM] = math.inf


def _update(s: np.ndarray, p: np.ndarray, g: np.ndarray, m1: np.ndarray, m2: np.ndarray
            ) -> None:
    """One optimiser step on ``p`` for the mean gradient ``g`` (scikit-learn's optimisers).

    SGD: ``v ← μ v - η g``; the update is ``μ v - η g`` (Nesterov) or ``v``.
    Adam (Kingma & Ba 2015): ``t ← t + 1``, ``m ← β₁ m + (1 - β₁) g``, ``u ← β₂ u + (1 - β₂) g²``,
    ``p ← p - η √(1 - β₂ᵗ) / (1 - β₁ᵗ) · m / (√u + ε)``.
    """
    lr = s[_LR]
    s[_T] += 1
    if int(s[_SOLVER]) == 0:
        mu = s[_MOMENTUM]
        m1 *= mu
        m1 -= lr * g
        p += (mu * m1 - lr * g) if s[_NESTEROV] else m1
        return
    b1, b2, t = s[_BETA1], s[_BETA2], s[_T]
    m1 *= b1
    m1 += (1.0 - b1) * g
    m2 *= b2
    m2 += (1.0 - b2) * g * g
    lr_t = lr * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    p -= lr_t * m1 / (np.sqrt(m2) + s[_EPS])
