"""Low-rank matrix factorisation as a model kind (see :mod:`bismarckpy.kinds`).

The math and the aggregate functions are :mod:`bismarckpy.factorization`; training is
:mod:`bismarckpy.mf_loop` (``bismarck.train_mf``), which maps ids to dense indices and runs its
own aggregate ``bismarck._mf_epoch`` over blocks of integer indices (exact for any ``bigint``
id). This module declares the kind for the registry of kinds: its parameters, its functions on
the generic row aggregate ``bismarck._epoch`` (a row is ``x = [row index, column index]`` as
float8, exact below 2**53, and ``y`` the value), its stored form and ``predict``.

The factors stay in the backend between calls (:data:`bismarckpy.kinds.scratch`) under a
handle; the aggregate state is the 56-byte :func:`~bismarckpy.factorization.init_state`, so
``merge_rule`` is ``"none"``: epochs run serially (a handle cannot reach a parallel worker).
What the loop carries between epochs (``model``) is that handle.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import factorization as mf
from ..errors import InvalidData, InvalidParameter
from ..params import Param, _check
from . import Epoch, ModelKind, Stored, scratch

MF_PARAMS: tuple[Param, ...] = (
    Param("rank", int, 10, "Number of latent factors per row and column (1 to the smaller "
          "side of the matrix).", low=1),
    Param("alpha", float, 0.02, "L2 penalty on the factor vectors, charged per observed "
          "triple.", low=0.0),
    Param("alpha_bias", float, None, "L2 penalty on the row and column biases (default: "
          "alpha).", low=0.0, nullable=True),
    Param("learning_rate", str, "invscaling", "Schedule between epochs: constant (eta0), "
          "invscaling (eta0 / epoch ** power_t) or adaptive (divided by 5 after "
          "n_iter_no_change epochs without improvement).",
          choices=("constant", "invscaling", "adaptive")),
    Param("eta0", float, 0.03, "Initial learning rate.", low=0.0, low_open=True),
    Param("power_t", float, 0.5, "Exponent of invscaling.", low=0.0, high=10.0),
    Param("max_epochs", int, 30, "Upper bound on passes over the triples.", low=1,
          high=100_000),
    Param("tol", float, 1e-4, "Stop when the loss improves by less than tol for "
          "n_iter_no_change epochs (None, from Python: run max_epochs).", low=0.0,
          nullable=True),
    Param("n_iter_no_change", int, 3, "Epochs without improvement before stopping.", low=1,
          high=1000),
    Param("batch_size", int, 1, "Triples per SGD step: 1 steps after every triple in order; "
          "k > 1 steps once per k triples, summing their gradients.", low=1, high=1_000_000),
    Param("block_size", int, 1024, "Triples per call of the epoch aggregate.", low=1,
          high=1_000_000),
    Param("init_std", float, 0.1, "Standard deviation of the initial factors (normal, "
          "drawn with seed).", low=0.0),
    Param("seed", int, None, "Makes the initial factors, the shuffles and the validation "
          "split reproducible.", low=0, high=2**62, nullable=True),
    Param("validation_fraction", float, 0.0, "Share of (row, column) pairs held out to "
          "report the validation loss (mean squared error) per epoch.", low=0.0, high=0.5),
)
_BY_NAME = {p.name: p for p in MF_PARAMS}


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """A complete, typed parameter dict; :class:`InvalidParameter` names any bad value."""
    unknown = sorted(set(values) - set(_BY_NAME))
    if unknown:
        raise InvalidParameter(
            f"unknown parameter {unknown[0]!r} for train_mf",
            hint="Valid parameters: " + ", ".join(p.name for p in MF_PARAMS) + ".")
    out: dict[str, Any] = {}
    for p in MF_PARAMS:
        v = values.get(p.name)
        if v is None:  # a nullable parameter given as None stays None (tol: no stopping rule)
            out[p.name] = None if p.nullable and p.name in values else p.default
        else:
            out[p.name] = _check(p, v, "train_mf")
    if out["alpha_bias"] is None:  # None: the same as alpha
        out["alpha_bias"] = out["alpha"]
    return out




def initialize(p: dict[str, Any], data: Any, model: bytes, *, eta: float = 0.0,
               per_step: bool = False, evaluate: bool = False) -> bytes:
    """The epoch's init: the run's handle (``model``) and this epoch's step settings;
    ``evaluate`` only adds up squared errors."""
    if model is None:
        raise InvalidData("a matrix factorisation epoch needs the run's handle",
                          hint="Start the run with bismarck._mf_begin (train_mf does).")
    return mf.init_state(bytes(model), mf.Hyper(eta, p["alpha"], p["alpha_bias"],
                                                -1 if evaluate else p["batch_size"]))


def transition(state: bytes | None, x: Any, y: float | None, init: bytes) -> bytes:
    """One row ``x = [row index, column index]`` (in-memory ``float8[]`` bytes or a sequence),
    ``y`` the value."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        if len(x) != 36:
            raise InvalidData("a matrix factorisation row is [row index, column index]")
        x = np.frombuffer(x, dtype="<f8", offset=20).tolist()
    if x is None or len(x) != 2:
        raise InvalidData("a matrix factorisation row is [row index, column index]")
    u, i = (None if v is None else int(v) for v in x)
    return mf.transition(state, u, i, y, init, scratch)


def transition_block(state: bytes | None, block: Any, init: bytes, first: int = 0,
                     stop: int | None = None) -> bytes:
    """Packed blocks are not a matrix factorisation's input (its triples hold integer ids)."""
    raise InvalidParameter("matrix factorisation does not train on packed blocks",
                           hint="Train with bismarck.train_mf on the table of triples.")


def merge(a: bytes | None, b: bytes | None) -> bytes:
    """Never called: states name arrays of one backend (``merge_rule = "none"``)."""
    raise InvalidData("matrix factorisation states cannot be merged across processes",
                      hint="Run its epochs serially (max_parallel_workers_per_gather = 0).")


def finalize(state: bytes | None) -> bytes:
    """The epoch's :class:`~bismarckpy.factorization.EpochStats` bytes."""
    return mf.finalize(state, None, scratch)


def decode(stats: bytes) -> Epoch:
    """The epoch for the loop: rows, Σ e² as ``loss_sum`` (so ``data_loss`` is the mean squared
    error), steps as ``t``, and the run's handle as the model to carry."""
    st = mf.read_stats(stats)
    return Epoch(rows=st.rows, loss_sum=st.loss_sum, model=st.handle, skipped=st.skipped,
                 t=float(st.steps))


def export(p: dict[str, Any], data: Any, model: bytes) -> Stored:
    """The stored form: facts as JSON, the ids, biases and factors as bytes."""
    blob = mf.export(scratch, model)
    f = mf.loads(blob)
    return Stored("mf", {"rank": f.rank, "mean": f.mean, "n_rows": int(f.row_ids.size),
                         "n_cols": int(f.col_ids.size)}, state=blob)


def predict(stored: Stored, X: np.ndarray) -> np.ndarray:
    """Predictions for ``X`` (n × 2 of row id, column id); an unknown id is an error."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != 2:
        raise InvalidData("matrix factorisation predicts from (row id, column id) pairs",
                          detail=f"Got an array of shape {X.shape}.")
    return mf.predict(mf.loads(stored.state), X[:, 0].astype(np.int64),
                      X[:, 1].astype(np.int64))


def check_options(p: dict[str, Any]) -> None:
    """The generic loop (``bismarck._train``, ``bismarck train --kind``) reads a label and
    feature columns; a factorisation's triples and id maps need its own loop: always refused,
    before any work, pointing there."""
    raise InvalidParameter(
        "matrix factorisation trains with bismarck.train_mf, not the generic training loop",
        sqlstate="0A000",
        detail="Its input is (row id, column id, value) triples, not a label and features.",
        hint="SELECT * FROM bismarck.train_mf(source, row_col, col_col, value_col, ...), or "
             "from the shell: bismarck train-mf TABLE --row ... --col ... --value ....")


def evaluate(session: Any, row: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    """``bismarck.evaluate``'s metrics (rmse, mae, rows, unknown_pairs, skipped_rows) of a
    stored factorisation on ``relation``'s triples (:func:`bismarckpy.mf_server.evaluate`)."""
    from ..mf_server import evaluate as evaluate_mf  # lazily: the server module imports kinds

    return evaluate_mf(session, {**row, "state": bytes(row["state"])}, relation)


KIND = ModelKind(
    name="mf", magic=mf.KIND_MAGIC, params=MF_PARAMS, losses=("squared",),
    initialize=initialize, transition=transition, transition_block=transition_block,
    merge=merge, finalize=finalize, decode=decode, export=export, predict=predict,
    merge_rule="none", sql_train="bismarck.train_mf", evaluate=evaluate,
    check_options=check_options,
    doc="Low-rank matrix factorisation with row and column biases (recommendations).")
