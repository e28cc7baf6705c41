"""The multi-layer perceptron as a model kind: :mod:`bismarckpy.nn`'s aggregate, its parameters,
its stored form and its predictions.

The loop carries the finalized :mod:`bismarckpy.nn` state between epochs (weights, optimiser
moments and the step counter), so Adam and momentum continue across epochs as in scikit-learn.
The stored form keeps the architecture, the standardisation and the label's scale in ``model``
(jsonb) and the flat float64 parameters in ``state`` (bytea, exact and compact: a [64, 32]
network on 64 features has 6,570 of them). The scaling is stored and applied at prediction
rather than folded into the first layer, so stored predictions equal the trained network's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import nn
from ..errors import InvalidData, InvalidParameter, check_state_size
from ..pack import parse_block
from ..params import Param, merge_params
from ..shared_model import Layout
from ..source import exact_number
from ..stable import softmax_rows
from . import ModelKind, Stored

_F8 = np.dtype("<f8")


def parse_hidden(v: Any) -> tuple[int, ...]:
    """Hidden layer sizes from an array, a list, a tuple, JSON text or ``'64,32'``.

    No hidden layer (a linear/softmax model) is an empty array, ``[]``; a blank string is
    refused (a forgotten value, e.g. the CLI's ``--hidden ""``), as is NULL's absence of a
    value in text form. Raises ValueError for anything but integers ≥ 1 (a size of 0 in
    particular).
    """
    if isinstance(v, str):
        if not v.strip():
            raise ValueError(v)
        text = v.strip().strip("[]{}()")
        v = [x for x in text.replace(" ", "").split(",") if x] if text else []
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise ValueError(v)
    out = []
    for h in v:
        if isinstance(h, bool):
            raise ValueError(v)
        try:
            f = float(h)
        except (TypeError, ValueError):
            raise ValueError(v) from None
        if not f.is_integer() or f < 1 or f > 100_000:
            raise ValueError(v)
        out.append(int(f))
    if len(out) > 16:
        raise ValueError(v)
    return tuple(out)


MLP_PARAMS: tuple[Param, ...] = merge_params((
    Param("hidden", tuple, (100,), "Sizes of the hidden layers, e.g. ARRAY[64, 32] "
          "(scikit-learn's hidden_layer_sizes); NULL or omitted: the default [100]; an empty "
          "array (CLI: --hidden '[]') fits a linear/softmax model.",
          parse=parse_hidden, shape="an array of up to 16 integers, each 1 to 100000 "
          "('[]' for none)"),
    Param("activation", str, "relu", "Hidden units' activation.",
          choices=tuple(nn.ACTIVATIONS)),
    Param("task", str, "classification", "classification: a softmax output over the label's "
          "classes (two or more), cross-entropy loss; regression: an identity output, squared "
          "loss.", choices=tuple(nn.TASKS)),
    Param("solver", str, "adam", "Optimiser: adam, or sgd with momentum.",
          choices=tuple(nn.SOLVERS)),
    Param("learning_rate_init", float, 0.001, "Initial learning rate.", low=0.0,
          low_open=True),
    Param("learning_rate", str, "constant", "Schedule between epochs: constant, or adaptive "
          "(divide by 5 when the score stalls n_iter_no_change epochs).",
          choices=("constant", "adaptive")),
    Param("momentum", float, 0.9, "sgd: momentum.", low=0.0, high=1.0),
    Param("nesterovs_momentum", bool, True, "sgd: Nesterov's momentum."),
    Param("beta_1", float, 0.9, "adam: decay of the first moment.", low=0.0, high=0.999999),
    Param("beta_2", float, 0.999, "adam: decay of the second moment.", low=0.0,
          high=0.999999999),
    Param("epsilon", float, 1e-8, "adam: numerical stability term.", low=0.0, low_open=True),
    Param("alpha", float, 0.0001, "L2 penalty on the weights (intercepts unpenalised), as "
          "scikit-learn: alpha · ½‖W‖² / batch rows per step.", low=0.0),
    Param("standardize", bool, True, "Fit on standardised features (and, for regression, a "
          "standardised label); predictions are in the original units."),
    Param("batch_size", int, 200, "Rows per step; 0 is full-batch gradient descent.", low=0,
          high=1_000_000_000),
    Param("max_epochs", int, 200, "Upper bound on passes over the data (scikit-learn's "
          "max_iter).", low=1, high=1_000_000),
    Param("tol", float, 0.0001, "Stop when the validation loss (or, without validation, the "
          "training loss) improves by less than tol for n_iter_no_change epochs (regression: "
          "judged in the standardised label's units).", low=0.0,
          nullable=True),
    Param("n_iter_no_change", int, 10, "Epochs without improvement before stopping.", low=1,
          high=10_000),
    Param("validation_fraction", float, 0.1, "Share of rows held out for early stopping on "
          "the validation loss; the epoch with the best validation loss is the one stored.",
          low=0.0, high=0.9),
))
#: The GLM's schedule parameters that the MLP replaces with scikit-learn MLP names.
MLP_PARAMS = tuple(p for p in MLP_PARAMS if p.name not in ("eta0", "power_t"))


def loop_params(p: dict[str, Any]) -> dict[str, Any]:
    """The training loop's names for the MLP's settings: the loss its task implies (the
    cross-entropy of a softmax over K classes, whose raw labels the kernel codes; squared), the
    schedule's initial rate, and an intercept-fitting model's
    standardisation (features and a regression label centred and scaled)."""
    return {"loss": "cross_entropy" if p["task"] == "classification" else "squared",
            "eta0": p["learning_rate_init"], "power_t": 0.5, "fit_intercept": True}


@dataclass
class MLPEpoch:
    """A decoded epoch: what the loop reads, and the finalized state it carries on (``model``)."""

    net: nn.Network
    model: bytes

    rows = property(lambda self: self.net.rows)
    loss_sum = property(lambda self: self.net.loss_sum)
    skipped = property(lambda self: self.net.skipped)
    parts = property(lambda self: self.net.parts)
    t = property(lambda self: self.net.t)
    mean_loss = property(lambda self: self.net.mean_loss)
    data_loss = property(lambda self: self.net.data_loss)


def epoch_init(p: dict[str, Any], data: Any, model: bytes | None, *, eta: float = 0.0,
               per_step: bool = False, evaluate: bool = False) -> bytes:
    """:attr:`ModelKind.initialize`: Glorot weights under ``seed`` before the first epoch, else
    the carried state with its counters cleared (``eta``: the schedule's rate)."""
    if model is None:
        regression = p["task"] == "regression"
        model = nn.initialize(
            data.d, hidden=p["hidden"], task=p["task"],
            classes=None if regression else data.classes, activation=p["activation"],
            solver=p["solver"], learning_rate_init=eta or p["learning_rate_init"],
            momentum=p["momentum"], nesterovs_momentum=p["nesterovs_momentum"],
            beta_1=p["beta_1"], beta_2=p["beta_2"], epsilon=p["epsilon"], alpha=p["alpha"],
            batch_size=p["batch_size"], seed=int(p["seed"] or 0), mu=data.mu, sd=data.sd,
            y_shift=data.y_mean if regression else 0.0,
            y_scale=data.y_sd if regression else 1.0, itemsize=data.itemsize)
    return nn.next_epoch(model, learning_rate_init=eta or None,
                         batch_size=nn.EVALUATE if evaluate else None)


def trivial_loss(p: dict[str, Any], data: Any) -> tuple[float | None, str]:
    """The loss per row of the trivial network, in the epoch's units, for the training loop's
    divergence check: classification's (every weight 0) gives uniform probabilities, log K
    per row; a regression's predicts the label's mean, ½ per row of a standardised label, and
    the label's variance over 2 (from the moments preparation measured, ``data.y_stats``) of
    an unstandardised one. None (measure it with :func:`trivial_init`, the zero network,
    predicting 0) when those moments are not known."""
    if p["task"] == "classification":
        k = len(data.classes)
        return math.log(k), f"uniform probabilities over the {k} classes"
    if p["standardize"]:
        return 0.5, "predicting the label's mean"
    stats = getattr(data, "y_stats", None)
    if stats is not None and getattr(data, "y_stats_exact", False):
        # the label's moments measured in preparation: the mean's loss, not the zero
        # network's (which, on a label far from 0, would excuse any network)
        return 0.5 * (stats[1] / data.y_sd) ** 2, "predicting the label's mean"
    return None, "predicting 0"


def trivial_init(p: dict[str, Any], data: Any) -> bytes:
    """A loss-only evaluation state of the all-zero network (see :func:`trivial_loss`)."""
    init = epoch_init(p, data, None, evaluate=True)
    return nn.with_params(init, np.zeros(nn.n_params([data.d, *p["hidden"], 1 if p["task"]
                                                       == "regression" else len(data.classes)])))


def decode(state: bytes) -> MLPEpoch:
    """:attr:`ModelKind.decode`."""
    return MLPEpoch(nn.decode(state), state)


def export(p: dict[str, Any], data: Any, model: bytes) -> Stored:
    """:attr:`ModelKind.export`: architecture and scaling as JSON, the parameters as bytes.

    A constant feature's ``sd`` is null (its scale is infinite: its standardised value is 0),
    as in a GLM's ``fitted``; the run lists it in ``metrics->'constant_features'``.
    """
    net = nn.decode(model)
    return Stored("mlp", {
        "task": net.task, "activation": net.activation, "sizes": net.sizes,
        "hidden": net.sizes[1:-1], "mu": net.mu.tolist(), "sd": [float(x) for x in net.sd],
        "y_shift": net.y_shift, "y_scale": net.y_scale, "n_params": nn.n_params(net.sizes),
        "class_codes": net.classes.tolist()},
        state=nn.params_of(model).astype(_F8).tobytes(),
        classes=None if net.task == "regression" else data.classes)


def _network(stored: Stored) -> tuple[list[int], np.ndarray]:
    m = stored.model
    sizes = [int(x) for x in m["sizes"]]
    params = np.frombuffer(stored.state or b"", dtype=_F8)
    if params.size != nn.n_params(sizes):
        raise InvalidData("the stored MLP is damaged",
                          detail=f"It holds {params.size} parameters; its layers need "
                                 f"{nn.n_params(sizes)}.",
                          hint="Train the model again.")
    return sizes, params


def raw_output(stored: Stored, X: np.ndarray) -> np.ndarray:
    """Outputs ``z`` (``n × k``) of a stored network for raw rows ``X`` (``n × d``); ±inf or
    NaN where features far beyond the training range overflow.

    Raises :class:`InvalidData` when a row does not have the model's number of features.
    """
    sizes, params = _network(stored)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.shape[1] != sizes[0]:
        raise nn.wrong_length(sizes[0], X.shape[1])
    m = stored.model
    mu = np.asarray(m["mu"], dtype=np.float64)
    sd = np.asarray([np.inf if s is None else s for s in m["sd"]], dtype=np.float64)
    with np.errstate(all="ignore"):  # extreme features overflow to ±inf/NaN: callers map them
        Xs = (X - mu) / sd
        return nn.forward(nn.unflatten(params, sizes), Xs,
                          nn.ACTIVATIONS[m["activation"]])[-1]


def predict_proba(stored: Stored, X: np.ndarray) -> np.ndarray:
    """Class probabilities (``n × K``, in the order of the stored classes); a row whose outputs
    are not finite (features far beyond the training range, e.g. 1e308, overflow the
    hidden layers) is all NaN: it has no probabilities (the SQL functions return NULL).

    Raises :class:`InvalidParameter` for a regression network (it has no classes).
    """
    if stored.model["task"] != "classification":
        raise InvalidParameter("a regression MLP does not give probabilities",
                               detail="It was trained with task => 'regression'.",
                               hint="Use bismarck.predict.")
    return softmax_rows(raw_output(stored, X))


def predict(stored: Stored, X: np.ndarray) -> np.ndarray:
    """:attr:`ModelKind.predict`: the class code (classification) or the target (regression);
    NaN for a row whose outputs are not finite (the SQL functions return NULL)."""
    m = stored.model
    z = raw_output(stored, X)
    if m["task"] == "classification":
        codes = np.asarray(m["class_codes"], dtype=np.float64)
        _, guess, ok = _classify(z)
        return np.where(ok, codes[guess], np.nan)
    out = z[:, 0] * float(m["y_scale"]) + float(m["y_shift"])
    return np.where(np.isfinite(out), out, np.nan)


def _classify(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities (:func:`bismarckpy.stable.softmax_rows`), the predicted class index and
    whether the row has a prediction, for outputs ``z`` (``n × K``). The class is the largest
    output, or for a row with +inf outputs the most probable class of the limit, so that
    ``predict`` is always the argmax of ``predict_proba``; a row with a NaN output has none."""
    P = softmax_rows(z)
    ok = ~np.isnan(P).any(axis=1)
    finite = np.isfinite(z).all(axis=1)
    guess = np.where(finite, np.argmax(np.where(finite[:, None], z, 0.0), axis=1),
                     np.argmax(np.where(ok[:, None], P, 0.0), axis=1))
    return P, guess, ok


#: scikit-learn's log_loss clips probabilities to [eps, 1 - eps] with float64's epsilon.
_LOG_EPS = math.log(np.finfo(np.float64).eps)


def metrics(stored: Stored, X: np.ndarray, y: np.ndarray) -> list[tuple[str, float]]:
    """Metrics of a stored network on rows ``X`` (``n × d``) with raw labels ``y``.

    Classification: accuracy, macro-averaged F1 (:func:`bismarckpy.evaluate.f1_macro`,
    scikit-learn's ``f1_score(average='macro')``: the classes that are a true or a predicted
    label) and log-loss (mean ``-log p(y)``, ``p`` clipped at float64's epsilon as
    scikit-learn's ``log_loss``). Regression: rmse, mae, r2. Rows whose outputs are not finite
    are not scored: their count is the last pair, ``("unscorable_rows", k)``. Raises
    :class:`InvalidData` for a label that is not one of the model's classes.
    """
    from ..evaluate import f1_macro

    m = stored.model
    if m["task"] == "regression":
        pred = predict(stored, X)
        ok = np.isfinite(pred)
        pred, y = pred[ok], y[ok]
        n = len(y)
        r = pred - y
        sst = float(((y - y.mean()) ** 2).sum()) if n else 0.0
        return [("rows", n), ("rmse", float(np.sqrt((r * r).mean())) if n else np.nan),
                ("mae", float(np.abs(r).mean()) if n else np.nan),
                ("r2", 1.0 - float((r * r).sum()) / sst if sst > 0 else np.nan),
                ("unscorable_rows", int((~ok).sum()))]
    codes = np.asarray(m["class_codes"], dtype=np.float64)
    idx = np.searchsorted(codes, y).clip(0, max(codes.size - 1, 0))
    unknown = codes[idx] != y
    if unknown.any():
        raise InvalidData(
            "label values outside the model's classes",
            detail=f"{int(unknown.sum())} rows have a label the model was not trained on "
                   f"(e.g. {exact_number(y[unknown][0])}); its classes are "
                   f"{', '.join(exact_number(c) for c in codes[:10])}"
                   f"{' …' if codes.size > 10 else ''}.",
            hint="Evaluate on data labelled like the training data.")
    z = raw_output(stored, X) if len(y) else np.empty((0, codes.size))
    P, guess, ok = _classify(z)
    z, P, guess, idx = z[ok], P[ok], guess[ok], idx[ok]
    n = len(idx)
    dropped = ("unscorable_rows", int((~ok).sum()))
    if n == 0:
        return [("rows", 0), ("accuracy", np.nan), ("f1_macro", np.nan), ("log_loss", np.nan),
                dropped]
    # log p(y) by log-sum-exp where the outputs are finite; the limit's p(y) (0 or 1/j) where
    # some output is +inf
    finite = np.isfinite(z).all(axis=1)
    zs = np.where(finite[:, None], z, 0.0)
    zmax = zs.max(axis=1, keepdims=True)
    logp = zs - zmax - np.log(np.exp(zs - zmax).sum(axis=1, keepdims=True))
    rows = np.arange(n)
    with np.errstate(divide="ignore"):
        logp_y = np.where(finite, logp[rows, idx], np.log(P[rows, idx]))
    logp_y = np.clip(logp_y, _LOG_EPS, 0.0)
    pairs, counts = np.unique(np.stack([idx, guess], axis=1), axis=0, return_counts=True)
    return [("rows", n), ("accuracy", float((guess == idx).mean())),
            ("f1_macro", f1_macro((int(t), int(g), int(c))
                                  for (t, g), c in zip(pairs, counts, strict=True))),
            ("log_loss", float(-logp_y.mean())), dropped]


def evaluate(session: Any, row: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    """:attr:`ModelKind.evaluate`: the usable rows of ``relation`` are scored in this backend.

    Rows with a NULL, NaN or infinite label or feature, and rows the network cannot score
    (outputs not finite), are skipped and counted (``skipped_rows``). Raises
    :class:`InvalidData` when the rows' feature count differs from the model's.
    """
    from ..evaluate import class_labels, resolve_scored, unknown_classes
    from ..packing import check_rows

    stored = Stored("mlp", row["stored"] if isinstance(row["stored"], dict)
                    else json.loads(row["stored"]), row["state"])
    labels = class_labels(row)
    src = resolve_scored(session, relation, row["label"], row["features"], labels)
    checked = check_rows(session, src)
    d = int(stored.model["sizes"][0])
    if checked.n_usable and checked.d != d:
        raise InvalidData("feature dimension does not match the model",
                          detail=f"Model {row['model_name']} version {row['version']} has {d} "
                                 f"features; rows in {src.name} have {checked.d}.",
                          hint="Evaluate with the same feature columns the model was trained on.")
    rows = session.query(f"SELECT {src.label_expr} AS y, bismarck._float8_array_bytes("
                         f"{src.x_expr}) AS x FROM {src.relation} AS s WHERE {src.valid_expr}")
    y = np.array([float(r[0]) for r in rows], dtype=np.float64)
    X = (np.frombuffer(b"".join(bytes(r[1])[20:] for r in rows), dtype=_F8).reshape(-1, d)
         if rows else np.empty((0, d)))
    if labels is not None and (y < 0).any():
        raise unknown_classes(int((y < 0).sum()), labels)
    out = []
    scores = metrics(stored, X, y)
    unscorable = dict(scores).pop("unscorable_rows", 0)
    skipped = checked.n_total - checked.n_usable + unscorable
    for name, v in [*(s for s in scores if s[0] != "unscorable_rows"), ("skipped_rows", skipped)]:
        f = float(v)
        out.append({"metric": name, "value": None if math.isnan(f) else f})
    return out


def check_options(p: dict[str, Any]) -> None:
    """:attr:`ModelKind.check_options`: refuse, before reading any row, hidden layers whose
    state alone (one feature, one output) would exceed the state limit; the exact size, with
    the features and classes, is checked again when the first state is made."""
    sizes = [1, *p["hidden"], 1]
    check_state_size(nn.state_values(sizes), f"Hidden layers {list(p['hidden'])}",
                     "Use fewer or smaller hidden layers.")


def _shared_slots(s: np.ndarray) -> np.ndarray:
    """The state slots that are the model in shared mode: the weights and the step counter t.

    The optimiser's moments (momentum, Adam's m and v) stay each worker's own.
    """
    L1, K, d = int(s[nn._NSIZES]), int(s[nn._K]), int(s[nn._D])
    start = nn.HEADER + L1 + K + 2 * d
    size = nn.n_params([int(x) for x in s[nn.HEADER:nn.HEADER + L1]])
    return np.append(np.arange(start, start + size), nn._T)


def _rows_to_step(s: np.ndarray) -> int:
    """Rows until the next SGD step (the pending partial batch counts)."""
    return max(int(s[nn._BATCH]) - int(s[nn._PENDING]), 1)


def _block_rows(s: np.ndarray, block: bytes) -> int:
    return len(parse_block(block, int(s[nn._D]), int(s[nn._ITEMSIZE]))[1])


KIND = ModelKind(
    name="mlp", magic=np.array([nn.MAGIC], dtype=_F8).tobytes(), params=MLP_PARAMS,
    losses=("cross_entropy", "squared"), initialize=epoch_init, transition=nn.transition,
    transition_block=nn.transition_block, merge=nn.merge, finalize=nn.finalize, decode=decode,
    export=export, predict=predict, evaluate=evaluate, predict_proba=predict_proba,
    merge_rule="average", check_options=check_options,
    sql_train="bismarck.train_mlp",
    doc="Multi-layer perceptrons: classification (softmax) and regression, SGD or Adam.",
    extra={"loop_params": loop_params,
           "shared": Layout(_shared_slots, _rows_to_step, _block_rows),
           "rate_name": "learning_rate_init", "restore_best": True,
           "trivial_loss": trivial_loss, "trivial_init": trivial_init})
