"""Multinomial logistic regression (softmax) as a Bismarck epoch aggregate: a model kind.

K ≥ 2 classes, a weight matrix ``W`` (K × d) and intercepts ``b`` (K); the loss of a row is the
cross-entropy ``logsumexp(z) - z[y]`` of its margins ``z = W x + b`` (scikit-learn's
``LogisticRegression(multi_class="multinomial")`` objective; its gradient in ``z`` is
``softmax(z) - onehot(y)``), plus ``alpha * (l1 |W|_1 + l2 / 2 |W|²)``. Labels arrive as numbers:
the state holds the K class values (sorted), and each row's label is found among them (a label
outside them is skipped and counted). Booleans arrive as 0/1 and labels of other types (text,
an enum...) as their class index 0..K-1 (:func:`bismarckpy.source.class_index_sql`).

The state is one little-endian float64 buffer: a header (:data:`HEADER` slots, the first is
:data:`MAGIC`), then ``W``, ``b``, the pending gradient sums of both, ``mu``/``sd`` of the
standardisation and the class values. Modes by ``batch_size`` as for the GLM: 1 per-row SGD,
k > 1 mini-batches, 0 full-batch gradient descent, -1 only the loss.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import penalties
from ..errors import InvalidData, InvalidParameter, check_state_size
from ..pack import parse_block
from ..params import GLM_PARAMS, Param, merge_params
from ..source import exact_number
from ..stable import linear_scores, softmax_rows
from . import ModelKind, Stored

MAGIC = 2014.0
EVALUATE = -1
(_MAGIC, _D, _K, _ALPHA, _L1, _L2, _ETA, _INVSCALING, _POWER_T, _T, _BATCH, _INTERCEPT, _ROWS,
 _LOSS_SUM, _PENDING, _SKIPPED, _STEPS, _STANDARDIZE, _ITEMSIZE, _PARTS) = range(20)
HEADER = 20
_F8 = np.dtype("<f8")


def _size(d: int, k: int) -> int:
    return HEADER + 2 * (k * d + k) + 2 * d + k


def _views(s: np.ndarray, d: int, k: int):
    """W (k×d), b, G (k×d), gb, mu, sd, classes: views into the state vector."""
    o = HEADER
    kd = k * d
    W = s[o:o + kd].reshape(k, d)
    b = s[o + kd:o + kd + k]
    o2 = o + kd + k
    G = s[o2:o2 + kd].reshape(k, d)
    gb = s[o2 + kd:o2 + kd + k]
    o3 = o2 + kd + k
    return W, b, G, gb, s[o3:o3 + d], s[o3 + d:o3 + 2 * d], s[o3 + 2 * d:o3 + 2 * d + k]


@dataclass
class Model:
    """A decoded softmax state: weights (standardised units) and the epoch's statistics."""

    W: np.ndarray
    b: np.ndarray
    rows: int
    loss_sum: float
    skipped: int
    steps: int
    t: float
    alpha: float
    l1: float
    l2: float
    parts: int = 1

    @property
    def mean_loss(self) -> float:
        """Mean cross-entropy plus the penalty at the final weights; NaN without rows."""
        if not self.rows:
            return float("nan")
        return self.loss_sum / self.rows + penalties.value(self.W.ravel(), self.alpha,
                                                           self.l1, self.l2)

    @property
    def data_loss(self) -> float:
        """Mean cross-entropy alone."""
        return self.loss_sum / self.rows if self.rows else float("nan")

    @property
    def model(self) -> Model:
        """What the loop carries to the next epoch."""
        return self


def initialize(d: int, classes: Any, *, alpha: float = 0.0, l1: float = 0.0, l2: float = 0.0,
               eta: float = 0.01, invscaling: bool = False, power_t: float = 0.5,
               t: float = 0.0, batch_size: int = 1, fit_intercept: bool = True,
               W: np.ndarray | None = None, b: np.ndarray | None = None,
               mu: np.ndarray | None = None, sd: np.ndarray | None = None,
               itemsize: int = 8) -> bytes:
    """An epoch's initial state. ``classes``: the K ≥ 2 class values (numbers, any order)."""
    cls = np.unique(np.asarray(classes, dtype=np.float64))
    k = len(cls)
    if k < 2:
        raise InvalidData("softmax needs at least two classes",
                          detail=f"The label has {k} class.",
                          hint="Train on data with two or more label values.")
    check_state_size(_size(d, k), f"A softmax model of {k} classes and {d} features",
                     "Use fewer features or classes.")
    s = np.zeros(_size(d, k), dtype=_F8)
    s[_MAGIC], s[_D], s[_K] = MAGIC, d, k
    s[_ALPHA], s[_L1], s[_L2] = alpha, l1, l2
    s[_ETA], s[_INVSCALING], s[_POWER_T], s[_T] = eta, float(invscaling), power_t, t
    s[_BATCH], s[_INTERCEPT], s[_ITEMSIZE], s[_PARTS] = batch_size, float(fit_intercept), \
        itemsize, 1
    standardize = mu is not None and sd is not None
    s[_STANDARDIZE] = float(standardize)
    W_, b_, _, _, mu_, sd_, cls_ = _views(s, d, k)
    if W is not None:
        W_[:] = W
    if b is not None:
        b_[:] = b
    mu_[:] = mu if standardize else 0.0
    sd_[:] = sd if standardize else 1.0
    cls_[:] = cls
    return s.tobytes()


def _load(state: bytes | None, init: bytes) -> tuple[np.ndarray, int, int]:
    s = np.frombuffer(state if state is not None else init, dtype=_F8).copy()
    return s, int(s[_D]), int(s[_K])


def cross_entropy(Z: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row loss ``logsumexp(z) - z[y]`` and its gradient ``softmax(z) - onehot(y)`` (n × K).

    Stable for any margins: the row maximum is subtracted before ``exp``.
    """
    m = Z.max(axis=1, keepdims=True)
    E = np.exp(Z - m)
    total = E.sum(axis=1, keepdims=True)
    lse = (m + np.log(total))[:, 0]
    rows = np.arange(len(idx))
    loss = lse - Z[rows, idx]
    P = E / total
    P[rows, idx] -= 1.0
    return loss, P


def _classes_of(y: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Index of each label among the classes; -1 for a label that is not one of them."""
    pos = np.clip(np.searchsorted(cls, y), 0, len(cls) - 1)
    return np.where(cls[pos] == y, pos, -1)


def _accumulate(s: np.ndarray, d: int, k: int, X: np.ndarray, idx: np.ndarray) -> None:
    """Add the loss of rows ``X`` (standardised, float64) with class indexes ``idx``; take the
    steps their batch size asks for (the rows in order)."""
    W, b, G, gb, _, _, _ = _views(s, d, k)
    batch = int(s[_BATCH])
    n = len(idx)
    if batch == 1:
        for i in range(n):
            loss, P = cross_entropy(X[i:i + 1] @ W.T + b, idx[i:i + 1])
            s[_LOSS_SUM] += float(loss[0])
            _step(s, W, b, np.outer(P[0], X[i]), P[0], 1.0)
        s[_ROWS] += n
        return
    start = 0
    while start < n:
        take = n - start if batch in (0, EVALUATE) else min(n - start, batch - int(s[_PENDING]))
        Xc, ic = X[start:start + take], idx[start:start + take]
        loss, P = cross_entropy(Xc @ W.T + b, ic)
        s[_LOSS_SUM] += float(loss.sum())
        s[_ROWS] += take
        start += take
        if batch == EVALUATE:
            continue
        G += P.T @ Xc
        gb += P.sum(axis=0)
        s[_PENDING] += take
        if batch > 1 and s[_PENDING] >= batch:
            _flush(s, d, k)


def transition(state: bytes | None, x: Any, y: float | None, init: bytes) -> bytes:
    """One row: ``x`` the in-memory bytes of a ``float8[]`` (or a sequence), ``y`` its label."""
    s, d, k = _load(state, init)
    if y is None or x is None or not math.isfinite(y):
        s[_SKIPPED] += 1
        return s.tobytes()
    if isinstance(x, (bytes, bytearray, memoryview)):
        xv = np.frombuffer(x, dtype=_F8, offset=20)
    else:
        try:
            xv = np.array(x, dtype=_F8)
        except (TypeError, ValueError):
            s[_SKIPPED] += 1
            return s.tobytes()
    if len(xv) != d:
        raise InvalidData("feature vector has the wrong length",
                          detail=f"The model has {d} features but a row has {len(xv)}.",
                          hint="Make every feature array the same length.")
    _, _, _, _, mu, sd, cls = _views(s, d, k)
    idx = _classes_of(np.array([y]), cls)
    if idx[0] < 0 or not np.isfinite(xv).all():
        s[_SKIPPED] += 1
        return s.tobytes()
    X = ((xv - mu) / sd if s[_STANDARDIZE] else xv)[None, :]
    _accumulate(s, d, k, X, idx)
    return s.tobytes()


def transition_block(state: bytes | None, block: bytes | None, init: bytes, first: int = 0,
                     stop: int | None = None) -> bytes:
    """Rows ``first:stop`` of one packed block (label column first), in block order."""
    s, d, k = _load(state, init)
    if block is None:
        return s.tobytes()
    offsets, M = parse_block(block, d, int(s[_ITEMSIZE]))
    values = M[first:stop].astype(np.float64) + offsets
    _, _, _, _, mu, sd, cls = _views(s, d, k)
    idx = _classes_of(values[:, 0], cls)
    keep = idx >= 0
    s[_SKIPPED] += int((~keep).sum())
    X = values[keep, 1:]
    if s[_STANDARDIZE]:
        X = (X - mu) / sd
    _accumulate(s, d, k, X, idx[keep])
    return s.tobytes()


def merge(a: bytes | None, b: bytes | None) -> bytes | None:
    """Two partial states: statistics add; weights average by rows (sum of gradients in
    full-batch and evaluation modes, where the weights are fixed during the epoch)."""
    if a is None or b is None:
        return a if b is None else b
    sa = np.frombuffer(a, dtype=_F8).copy()
    sb = np.frombuffer(b, dtype=_F8).copy()
    d, k = int(sa[_D]), int(sa[_K])
    if (int(sb[_D]), int(sb[_K])) != (d, k):
        raise InvalidData("cannot merge softmax states of different shapes")
    full = int(sa[_BATCH]) in (0, EVALUATE)
    if not full:
        _flush(sa, d, k)
        _flush(sb, d, k)
    Wa, ba, Ga, gba, _, _, _ = _views(sa, d, k)
    Wb, bb, Gb, gbb, _, _, _ = _views(sb, d, k)
    na, nb = sa[_ROWS], sb[_ROWS]
    if full:
        Ga += Gb
        gba += gbb
        sa[_PENDING] += sb[_PENDING]
    elif na + nb > 0:
        Wa[:] = (na * Wa + nb * Wb) / (na + nb)
        ba[:] = (na * ba + nb * bb) / (na + nb)
    sa[_T] = max(sa[_T], sb[_T])
    for slot in (_ROWS, _LOSS_SUM, _SKIPPED, _STEPS, _PARTS):
        sa[slot] += sb[slot]
    return sa.tobytes()


def finalize(state: bytes | None) -> bytes | None:
    """Apply the pending batch; the epoch's final state."""
    if state is None:
        return None
    s = np.frombuffer(state, dtype=_F8).copy()
    _flush(s, int(s[_D]), int(s[_K]))
    return s.tobytes()


def decode(state: bytes) -> Model:
    """A state's weights and statistics; :class:`InvalidData` for bytes that are not one."""
    s = np.frombuffer(state, dtype=_F8) if len(state) % 8 == 0 else np.zeros(0)
    if s.size < HEADER or s[_MAGIC] != MAGIC or s.size != _size(int(s[_D]), int(s[_K])):
        raise InvalidData("not a bismarck softmax state")
    d, k = int(s[_D]), int(s[_K])
    W, b, _, _, _, _, _ = _views(s, d, k)
    return Model(W=W.copy(), b=b.copy(), rows=int(s[_ROWS]), loss_sum=float(s[_LOSS_SUM]),
                 skipped=int(s[_SKIPPED]), steps=int(s[_STEPS]), t=float(s[_T]),
                 alpha=float(s[_ALPHA]), l1=float(s[_L1]), l2=float(s[_L2]),
                 parts=int(s[_PARTS]))


def _eta(s: np.ndarray) -> float:
    if s[_INVSCALING]:
        return float(s[_ETA] / (s[_T] + 1.0) ** s[_POWER_T])
    return float(s[_ETA])


def _step(s: np.ndarray, W: np.ndarray, b: np.ndarray, G: np.ndarray, gb: np.ndarray,
          scale: float) -> None:
    """One proximal gradient step on ``scale * (G, gb)``; the intercepts are not penalised."""
    eta = _eta(s)
    flat = W.reshape(-1)
    penalties.step(flat, G.reshape(-1), eta, s[_ALPHA], s[_L1], s[_L2], scale)
    if s[_INTERCEPT]:
        b -= eta * scale * gb
    s[_T] += 1
    s[_STEPS] += 1


def _flush(s: np.ndarray, d: int, k: int) -> None:
    n = s[_PENDING]
    if n <= 0 or int(s[_BATCH]) == EVALUATE:
        return
    W, b, G, gb, _, _, _ = _views(s, d, k)
    _step(s, W, b, G, gb, 1.0 / float(n))
    G[:] = 0.0
    gb[:] = 0.0
    s[_PENDING] = 0


def probabilities(coef: np.ndarray, intercept: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Class probabilities ``softmax(X coefᵀ + intercept)`` (n × K), stable for any finite
    features (:mod:`bismarckpy.stable`: margins beyond float64 are ±inf, never NaN, and the
    classes with a +inf margin share the probability); a row with a NaN feature is NaN."""
    return softmax_rows(linear_scores(X, np.asarray(coef, dtype=np.float64).T, intercept))


def unstandardize(W: np.ndarray, b: np.ndarray, mu: np.ndarray,
                  sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights fitted on ``(x - mu) / sd`` in original units: ``W / sd`` and ``b - (W/sd) mu``."""
    coef = W / sd
    return coef, b - coef @ mu


# --- softmax as a model kind (see bismarckpy.kinds) ---------------------------------------------


def epoch_init(p: dict[str, Any], data: Any, model: Model | None, *, eta: float = 0.0,
               per_step: bool = False, evaluate: bool = False) -> bytes:
    """:attr:`ModelKind.initialize`: an epoch's init state; ``data.classes`` the K classes."""
    k = len(data.classes)
    W = np.zeros((k, data.d)) if model is None else model.W
    b = np.zeros(k) if model is None else model.b
    if evaluate:
        return initialize(data.d, data.classes, batch_size=EVALUATE, W=W, b=b, mu=data.mu,
                          sd=data.sd, itemsize=data.itemsize)
    l1, l2 = penalties.mix(p["penalty"], p["l1_ratio"])
    alpha = p["alpha"] if p["penalty"] != "none" else 0.0
    return initialize(data.d, data.classes, alpha=alpha, l1=l1, l2=l2, eta=eta,
                      invscaling=per_step, power_t=p["power_t"],
                      t=0.0 if model is None else model.t, batch_size=p["batch_size"],
                      fit_intercept=p["fit_intercept"], W=W, b=b, mu=data.mu, sd=data.sd,
                      itemsize=data.itemsize)


def export(p: dict[str, Any], data: Any, model: Model | None) -> Stored:
    """:attr:`ModelKind.export`: ``coef`` (K × d) and ``intercept`` (K) in original units,
    the classes (as the label codes them) and the label's SQL type."""
    k = len(data.classes)
    W = np.zeros((k, data.d)) if model is None else model.W
    b = np.zeros(k) if model is None else model.b
    if data.mu is not None and data.sd is not None:
        W, b = unstandardize(W, b, data.mu, data.sd)
    return Stored("softmax", {"loss": "softmax", "coef": W.tolist(), "intercept": b.tolist(),
                              "classes": list(data.classes)}, classes=list(data.classes))


def predict_proba(stored: Stored, X: np.ndarray) -> np.ndarray:
    """Class probabilities (n × K, classes in ``stored.model["classes"]`` order).

    Raises :class:`InvalidData` when the rows of ``X`` are not as long as the model's features.
    """
    coef = np.asarray(stored.model["coef"], dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != coef.shape[1]:
        got = X.shape[-1] if X.ndim else 0
        raise InvalidData(
            f"feature vector has {got} elements but the model has {coef.shape[1]} features",
            hint="Pass one row's features as a 1-D array in the order of "
                 "bismarck.models.features.")
    return probabilities(coef, np.asarray(stored.model["intercept"]), X)


def predict(stored: Stored, X: np.ndarray) -> np.ndarray:
    """:attr:`ModelKind.predict`: the most probable class of each row (as the label codes it)."""
    classes = np.asarray(stored.model["classes"], dtype=np.float64)
    P = predict_proba(stored, X)
    ok = ~np.isnan(P).any(axis=1)
    return np.where(ok, classes[np.argmax(np.where(ok[:, None], P, 0.0), axis=1)], np.nan)


def evaluate(session: Any, row: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    """:attr:`ModelKind.evaluate`: accuracy, macro-F1 and log-loss, counted in SQL."""
    from ..evaluate import softmax_metrics  # the scoring queries, loaded only where they run

    return softmax_metrics(session, row, relation)


def _adaptive_by_default(p: Param) -> Param:
    """The GLM's ``learning_rate`` with default 'adaptive' (see :data:`PARAMS`)."""
    if p.name != "learning_rate":
        return p
    return dataclasses.replace(p, default="adaptive", doc=p.doc + " Softmax's default is "
                               "adaptive: training stops only once the rate, divided by 5 at "
                               "each plateau, has reached 1e-6.")


#: The parameters of a multinomial model: the GLM's (its loss is 'softmax'), except that
#: ``learning_rate`` defaults to 'adaptive', and there is no ``average``. Under invscaling
#: the rate of per-row steps decays with every step, so the loss falls by less than ``tol`` an
#: epoch long before the optimum: on iris the
#: stopping rule fired at epoch 50 with test log-loss 0.34 (scikit-learn's LogisticRegression:
#: 0.16), and even 2000 epochs reached only 0.14. 'adaptive' keeps the rate until the loss
#: stalls for ``n_iter_no_change`` epochs, then divides it by 5 and stops only when the rate
#: reaches 1e-6 (scikit-learn's rule for learning_rate='adaptive'): "converged" then means that
#: no rate down to 1e-6 improves the loss by tol, and iris reaches log-loss 0.04-0.08 in ~75.
PARAMS = merge_params(tuple(_adaptive_by_default(p) for p in GLM_PARAMS
                            if p.name != "average"))  # not averaged (yet)
#: Most classes a label may have (the state holds K × d weights and gradients).
MAX_CLASSES = 1000


def check_options(p: dict[str, Any]) -> None:
    """:attr:`ModelKind.check_options`: what softmax does not do (yet), refused at once."""
    if p.get("solver", "sgd") != "sgd":
        raise InvalidParameter(f"solver '{p['solver']}' cannot fit loss 'softmax'",
                               detail="The exact solvers fit binary and squared losses.",
                               hint="Use solver => 'sgd' (the default) for loss => 'softmax'.")
    if p.get("class_weight") is not None:
        raise InvalidParameter("class_weight is not supported with loss => 'softmax'",
                               detail="Softmax weighs every row alike.",
                               hint="Drop class_weight, or use a binary loss.")


def after_prepare(session: Any, p: dict[str, Any], data: Any) -> None:
    """:attr:`ModelKind.after_prepare`: the label's classes, from the training rows.

    The training loop finds them over every usable row (``data.classes``, the class indexes
    0..K-1 of a label of text or other class values); only a preparation that did not is
    read here. Raises :class:`InvalidData` for a label with one class or more than
    :data:`MAX_CLASSES`.
    """
    if getattr(data, "classes", None) is not None:
        return
    rows = session.query(f"SELECT DISTINCT y AS v FROM {data.train} ORDER BY 1 "
                         f"LIMIT {MAX_CLASSES + 1}")
    classes = [float(r[0]) for r in rows]
    if len(classes) < 2:
        raise InvalidData(
            "the label has one class only" if classes else "the label has no usable value",
            detail="loss => 'softmax' needs two or more classes among the training rows; "
                   + (f"every row is {exact_number(classes[0])}." if classes
                      else "none was found."),
            hint="Train on rows of at least two classes.")
    if len(classes) > MAX_CLASSES:
        raise InvalidData(f"the label has more than {MAX_CLASSES} classes",
                          detail="Softmax keeps a weight row per class.",
                          hint="Is the label a class? Use loss => 'squared' for a number.")
    data.classes = classes

KIND = ModelKind(
    name="softmax", magic=np.array([MAGIC], dtype=_F8).tobytes(), params=PARAMS,
    losses=("softmax",), initialize=epoch_init, transition=transition,
    transition_block=transition_block, merge=merge, finalize=finalize, decode=decode,
    export=export, predict=predict, evaluate=evaluate, predict_proba=predict_proba,
    after_prepare=after_prepare, check_options=check_options,
    merge_rule="average", sql_train="bismarck.train_glm",
    extra={"trivial_loss": lambda p, data: (
        math.log(len(data.classes)),
        f"uniform probabilities over the {len(data.classes)} classes"),
        # training starts from that model (every weight zero): ending above its loss is
        # overshooting, not converging (loop._overshoot_note)
        "starts_from_trivial": True},
    doc="Multinomial logistic regression: K >= 2 classes, cross-entropy of the softmax.")
