"""The exact solvers' side of the training loop: passes over the prepared data, history, model.

:func:`bismarckpy.loop.train_glm` prepares the data (checked rows or packed blocks) as for SGD
and hands over here when ``solver`` is ``newton`` or ``lbfgs``. Every pass is one query of the
``bismarck._exact_pass`` aggregate (or ``_exact_pass_packed``), run with the same parallel
settings as an SGD epoch; it is recorded in ``bismarck.training_history`` like an epoch, with
the objective as ``train_loss`` and the step length as ``learning_rate``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from . import exact, inference, penalties, solvers
from .errors import InvalidData, InvalidParameter, counted
from .execution import parallel_settings
from .kinds import glm
from .loop import (
    EpochRecord,
    TrainingSession,
    TrainResult,
    _Prepared,
    _scaling,
    class_weights,
    store_model,
    validation_share,
)
from .moments import decode as moments_decode
from .moments import select as moments_select
from .packing import PackedTable, settings_for_transaction
from .source import Source


def check_options(p: dict[str, Any]) -> None:
    """Refuse what the exact solvers cannot fit, before any work: hinge loss, L1 penalties."""
    solver = p["solver"]
    if solver == "sgd":
        return
    if p["loss"] not in exact.LOSS_CODES:
        raise InvalidParameter(
            f"solver '{solver}' cannot fit loss '{p['loss']}'",
            detail="The hinge loss has no second derivative and no gradient at the hinge; the "
                   "exact solvers fit loss 'logistic' and 'squared'.",
            hint="Use solver => 'sgd' for loss => 'hinge'.")
    l1, _ = penalties.mix(p["penalty"], p["l1_ratio"])
    if l1 and p["alpha"] > 0:
        raise InvalidParameter(
            f"solver '{solver}' does not support penalty '{p['penalty']}'",
            detail="An L1 penalty is not differentiable at zero; Newton's method and L-BFGS "
                   "need a smooth objective.",
            hint="Use solver => 'sgd' (proximal steps) for penalty 'l1' or 'elasticnet', or "
                 f"penalty => 'l2' or 'none' with solver => '{solver}'.")


def check_packed_table(table: PackedTable, p: dict[str, Any]) -> None:
    """Record the real value type of a ``bismarck.pack`` table's blocks in the run's params
    (``dtype`` applies only to the copies training packs itself)."""
    p["dtype"] = {4: "float32", 8: "float64"}[table.itemsize]


def run(session: TrainingSession, src: Source | PackedTable, p: dict[str, Any],
        prep: _Prepared, model_name: str, run_id: int, started: float) -> TrainResult:
    """Fit by ``p['solver']`` on ``prep``, record each pass, store the model; return the result."""
    fit_intercept = bool(p["fit_intercept"])
    mu, sd = prep.mu, prep.sd
    if mu is None or sd is None:  # the solvers always work in standardised coordinates
        mu, sd = _feature_moments(session, prep, fit_intercept)
    # A constant column (sd = inf: recognised relative to its magnitude, as for SGD) keeps the
    # solvers' convention of scale 1: its centred values are 0, so a penalised fit leaves its
    # coefficient at 0; an unpenalised fit cannot identify it and is refused by name below.
    constant = [int(j) for j in np.flatnonzero(~np.isfinite(sd))]
    sd = np.where(np.isfinite(sd), sd, 1.0)
    # With an intercept the passes sum centred features x − μ (exact.py: no cancellation for
    # columns far from zero); the solvers then work on centred data, centre 0.
    center = np.asarray(mu, dtype=np.float64) if fit_intercept else None
    # Squared-loss labels are centred too (their mean): RSS and TSS of labels far from zero.
    ycenter = (_label_mean(session, prep) if fit_intercept and p["loss"] == "squared"
               else 0.0)
    coords = solvers.Coordinates(np.zeros(prep.d) if fit_intercept else mu, sd, fit_intercept)
    weights = class_weights(p["class_weight"], prep.classes, prep.n_train, prep.n_pos,
                            prep.class_labels)
    _, l2 = penalties.mix(p["penalty"], p["l1_ratio"])
    # The penalty of SGD: alpha·l2/2·|w|² on the coefficients it fits, standardised ones when
    # standardize is on (w = coef·sd); for squared loss in y's units either way.
    lam = p["alpha"] * l2 * (sd ** 2 if p["standardize"] else np.ones(prep.d))
    penalty = np.concatenate([[0.0] * fit_intercept, lam]) if p["penalty"] != "none" \
        else np.zeros(prep.d + fit_intercept)
    constant_names = [feature_names(src, prep.d)[j] for j in constant]
    if constant_names and not np.any(penalty):
        raise solvers.constant_columns(constant_names)
    names = ["(intercept)"] * fit_intercept + feature_names(src, prep.d)
    prob = solvers.Problem(p["loss"], names, coords, penalty, p["tol"], p["max_epochs"])
    coding = (prep.y_coding if p["loss"] == "logistic" else (glm.Y_AFFINE, 0.0, 0.0, 1.0))
    history: list[EpochRecord] = []

    def one_pass(table: str, beta: np.ndarray, mode: int, rows: str) -> exact.Pass:
        init = exact.initialize(beta, loss=p["loss"], fit_intercept=fit_intercept, mode=mode,
                                itemsize=prep.itemsize, y_coding=coding, class_weight=weights,
                                center=center, ycenter=ycenter)
        query = (f"SELECT bismarck._exact_pass_packed(data, %s, {rows}) FROM {table}"
                 if prep.packed else f"SELECT bismarck._exact_pass(x, y, %s) FROM {table}")
        with settings_for_transaction(session, parallel_settings(p["parallel"])):
            state = session.query(query, [init])[0][0]
        if state is None:
            raise InvalidData("no training rows", hint="Check the source table.")
        return exact.decode(state)

    def evaluate(beta: np.ndarray, mode: int, step: float) -> exact.Pass:
        t0 = time.monotonic()
        P = one_pass(prep.train, beta, mode, prep.train_rows)
        workers = P.parts if p["parallel"] else max(P.parts - 1, 0)
        rec = EpochRecord(len(history) + 1, prob.objective(P), None, step, P.rows,
                          time.monotonic() - t0, p["max_epochs"], workers)
        history.append(rec)
        session.query(
            "SELECT bismarck._record_epoch(bismarck._ticket(), %s, %s::integer, %s::float8, "
            "%s::float8, %s::float8, %s::bigint, %s::float8, %s::integer) AS recorded",
            [run_id, rec.epoch, _or_none(rec.train_loss), None, rec.learning_rate, rec.rows,
             rec.seconds, rec.workers])
        session.checkpoint()
        session.on_epoch(rec)
        return P

    fit = (solvers.newton if p["solver"] == "newton" else solvers.lbfgs)(evaluate, prob)
    beta, _ = exact.to_original(fit.beta, center, ycenter, fit_intercept)
    last = fit.last
    train_loss = prob.objective(last)
    valid_loss = None
    if prep.valid:
        vp = one_pass(prep.valid, fit.beta, exact.LOSS_ONLY, prep.valid_rows)
        valid_loss = vp.loss_sum / vp.rows if vp.rows else None
    coef = beta[fit_intercept:]
    intercept = float(beta[0]) if fit_intercept else 0.0
    metrics: dict[str, Any] = {
        "train_loss": train_loss, "validation_loss": valid_loss, "epochs": len(history),
        "converged": fit.converged, "rows": prep.n_train, "validation_rows": prep.n_valid,
        "skipped_rows": prep.skipped, "solver": p["solver"], "iterations": fit.iterations,
        "passes": len(history),
        "block_dtype": ({4: "float32", 8: "float64"}[prep.itemsize] if prep.packed else None),
        "constant_features": constant_names}
    if prep.classes is not None:
        names = prep.class_labels or [f"{c:g}" for c in prep.classes]
        metrics["class_weight"] = {names[0]: weights[0], names[1]: weights[1]}
        if weights != (1.0, 1.0) and not np.any(penalty):
            metrics["weighted_likelihood"] = True  # the statistics are of Σ w·loglik
    fitted: dict[str, Any] = {"mu": None if prep.mu is None else prep.mu.tolist(),
                              "sd": None if prep.sd is None else prep.sd.tolist(),
                              "terms": names}
    # Inference statistics only for an unpenalised fit that converged: at a point that is not
    # the maximum-likelihood estimate, the inverse Hessian is no covariance of anything. A fit
    # stopped by max_epochs is stored with converged false and NULL statistics, and says so (a
    # WARNING), as statsmodels' ConvergenceWarning does.
    if not np.any(penalty) and last.hess is not None and fit.converged:
        stats, per_coef = inference.statistics(p["loss"], last, coords)
        metrics.update(stats)
        if not fit_intercept:  # index 0 of every array is the intercept's
            per_coef = {k: ([None, *v] if k in ("std_err", "statistic", "p_value") else v)
                        for k, v in per_coef.items()}
        fitted.update(per_coef)
    notes = list(prep.notes)
    if prep.packed and prep.itemsize == 4:
        notes.append(f"solver '{p['solver']}' fitted float32 blocks: each value kept 7 "
                     "significant digits of its distance from its block's column minimum, so "
                     "the estimate and its statistics are those of that rounded data. Use "
                     "dtype => 'float64' (or pack with it) for the data as stored.")
    if not fit.converged:
        notes.append(f"solver '{p['solver']}' did not converge in max_epochs = "
                     f"{counted(p['max_epochs'], 'iteration')} "
                     f"({counted(len(history), 'pass')}); the model is "
                     "stored with converged = false and without standard errors or p-values. "
                     "Raise max_epochs or tol.")
    metrics["validation_share"] = validation_share(prep, p["validation_fraction"], notes)
    for note in notes:
        session.warn(note)
    seconds = time.monotonic() - started
    metrics["seconds"] = seconds
    version = store_model(session, model_name, src, p,
                          glm.stored(p["loss"], coef, intercept, prep.classes), metrics, fitted)
    return TrainResult(model_name=model_name, version=version, epochs=len(history),
                       converged=fit.converged, train_loss=train_loss,
                       validation_loss=valid_loss, seconds=seconds, rows=prep.n_train,
                       skipped=prep.skipped, history=history, warnings=notes)


def feature_names(src: Source | PackedTable, d: int) -> list[str]:
    """One name per coefficient: the feature columns, or ``x[1]``… of one array column."""
    if src.array_feature:
        return [f"{src.features[0]}[{j}]" for j in range(1, d + 1)]
    return list(src.features)


def _feature_moments(session: TrainingSession, prep: _Prepared,
                     fit_intercept: bool) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale of the training features (not kept for SGD unless standardize is on),
    constant columns at scale ``inf`` as :func:`bismarckpy.loop._scaling` gives them."""
    if prep.packed:
        state = session.query(f"SELECT bismarck._moments_packed(data, {int(prep.d)}, "
                              f"{int(prep.itemsize)}, {prep.train_rows}) FROM {prep.train}")[0][0]
        stats = moments_select(moments_decode(state), slice(1, None))  # column 0: the label
    else:
        stats = moments_decode(session.query(f"SELECT bismarck._moments(x) FROM {prep.train}")
                               [0][0])
    mu, sd, _ = _scaling(stats, fit_intercept)
    return mu, sd


def _label_mean(session: TrainingSession, prep: _Prepared) -> float:
    """The training labels' mean (raw labels: squared loss codes them as they are)."""
    if prep.packed:
        state = session.query(f"SELECT bismarck._moments_packed(data, {int(prep.d)}, "
                              f"{int(prep.itemsize)}, {prep.train_rows}) FROM {prep.train}")[0][0]
        return float(moments_decode(state).mean[0])
    return float(session.query(f"SELECT avg(y) AS m FROM {prep.train}")[0][0] or 0.0)


def _or_none(v: float) -> float | None:
    """NaN/inf as SQL NULL."""
    return v if math.isfinite(v) else None
