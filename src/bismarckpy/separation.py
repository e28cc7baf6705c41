"""Whether the training DATA are (quasi-)separated, for unpenalised SGD logistic regression.

An SGD model after a few epochs never separates every row even when the data are separable,
so asking the stored model is not enough. This module asks the data: a short Newton run of
the exact solvers (:mod:`bismarckpy.solvers`, one ``bismarck._exact_pass`` per iteration) on
the same working copy. Without separation Newton converges in a handful of passes; under
complete or quasi-complete separation its steps keep the same direction and the fitted
probabilities reach 0 or 1, which :func:`bismarckpy.solvers.check_separation` recognises (as
statsmodels' perfect-prediction check and R's ``glm`` warning do).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import exact, solvers
from .errors import BismarckError, Separated

#: Newton iterations of the check: separation shows in the growth of the steps well before
#: this; a non-separated problem converges to ``tol`` in about five.
MAX_ITER = 12
#: The check's convergence tolerance: tight, so a separated run is not stopped as converged.
TOL = 1e-10


def data_separated(session: Any, prep: Any, p: dict[str, Any], names: list[str]) -> str | None:
    """The columns separating the classes of ``prep``'s training rows, or None.

    ``prep`` is the training loop's prepared data (row copy or packed blocks); ``p`` the run's
    parameters (``fit_intercept``, ``parallel``); ``names`` one name per feature. Costs the
    passes of a short Newton run (at most :data:`MAX_ITER` plus step halvings) and nothing is
    recorded in the run's history. A problem Newton cannot set up (a singular Hessian from
    constant or collinear columns, an overflowing objective) answers None: no evidence.
    """
    from .exact_loop import _feature_moments  # noqa: PLC0415 (exact_loop imports loop)
    from .execution import EXACT, parallel_settings
    from .packing import settings_for_transaction

    fit_intercept = bool(p["fit_intercept"])
    mu, sd = prep.mu, prep.sd
    if mu is None or sd is None:
        mu, sd = (getattr(prep, "scaling", None)
                  or _feature_moments(session, prep, fit_intercept))
    sd = np.where(np.isfinite(sd), sd, 1.0)
    center = np.asarray(mu, dtype=np.float64) if fit_intercept else None
    coords = solvers.Coordinates(np.zeros(prep.d) if fit_intercept else mu, sd, fit_intercept)
    terms = ["(intercept)"] * fit_intercept + list(names)
    prob = solvers.Problem("logistic", terms, coords, np.zeros(prep.d + fit_intercept), TOL,
                           MAX_ITER)

    def evaluate(beta: np.ndarray, mode: int, step: float) -> exact.Pass:
        init = exact.initialize(beta, loss="logistic", fit_intercept=fit_intercept, mode=mode,
                                itemsize=prep.itemsize, y_coding=prep.y_coding, center=center)
        query = (f"SELECT bismarck._exact_pass_packed(data, %s, {prep.train_rows}) "
                 f"FROM {prep.train}" if prep.packed
                 else prep.train_scan.sql(EXACT) if getattr(prep, "train_scan", None)
                 else f"SELECT bismarck._exact_pass(x, y, %s) FROM {prep.train}")
        with settings_for_transaction(session, parallel_settings(p["parallel"])):
            state = session.query(query, [init])[0][0]
        return exact.decode(state)

    try:
        solvers.newton(evaluate, prob)
    except Separated as exc:
        return ", ".join(exc.columns) or "the data"
    except BismarckError as exc:
        if exc.server:  # the transaction failed: nothing more can run in it
            raise
        return None
    return None
