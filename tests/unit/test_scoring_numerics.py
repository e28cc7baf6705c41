"""Scoring numerics without a database: stable margins and softmax for extreme finite features,
the one f1_macro of every classifier kind, the MLP's NaN-free predictions, divergence advice."""

from __future__ import annotations

import numpy as np
import pytest

from bismarckpy import nn
from bismarckpy.errors import Diverged
from bismarckpy.evaluate import f1_macro
from bismarckpy.kinds import Stored, get
from bismarckpy.schedule import Schedule
from bismarckpy.stable import linear_scores, softmax_rows


def test_linear_scores_never_nan_for_finite_features() -> None:
    X = np.array([[1e308, 1e308, -1e308, -1e308], [1.0, 2.0, 3.0, 4.0],
                  [1e308, -1e308, 1e308, 0.0]])
    W = np.array([[2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0], [-1.0, 0.5, 0.0, 0.0]]).T
    with np.errstate(all="ignore"):
        naive = X @ W
    assert not np.isfinite(naive[0, 0])  # 2e308 + 2e308 - ... overflows: NaN or inf
    Z = linear_scores(X, W, np.zeros(3))
    assert np.isfinite(Z[0]).all() and Z[0] == pytest.approx([0.0, 0.0, -5e307])
    assert Z[1] == pytest.approx([20.0, 10.0, 0.0])
    # 2e308 - 2e308 + 2e308 is beyond float64 (inf); 1e308 and -1.5e308 are finite
    assert Z[2, 0] == np.inf and Z[2, 1:] == pytest.approx([1e308, -1.5e308])
    assert np.isnan(linear_scores(np.array([[np.nan, 1.0]]), np.ones(2), 0.0)).all()
    assert linear_scores(np.array([[1e308, 1e308]]), np.ones(2), 0.0)[0] == np.inf


def test_softmax_rows_limits_and_nan() -> None:
    P = softmax_rows(np.array([[np.inf, 5.0, -np.inf], [np.inf, np.inf, 0.0],
                               [1000.0, 999.0, -1e308], [np.nan, 0.0, 0.0],
                               [-np.inf, -np.inf, -np.inf]]))
    assert P[0] == pytest.approx([1.0, 0.0, 0.0])
    assert P[1] == pytest.approx([0.5, 0.5, 0.0])
    e = np.exp([0.0, -1.0])
    assert P[2, :2] == pytest.approx(e / e.sum()) and P[2, 2] == 0.0
    assert np.isnan(P[3]).all() and np.isnan(P[4]).all()


@pytest.mark.parametrize("seed", range(5))
def test_f1_macro_is_sklearns(seed: int) -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 80)
    pred = np.where(rng.random(80) < 0.6, y, rng.integers(0, 9, 80))  # 5-8 only predicted
    pairs, counts = np.unique(np.stack([y, pred], 1), axis=0, return_counts=True)
    ours = f1_macro((t, g, c) for (t, g), c in zip(pairs, counts, strict=True))
    assert ours == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-15)
    assert np.isnan(f1_macro([]))


def _mlp(task: str) -> Stored:
    """A stored 3-4-k network whose features have spread 1e-3 (standardising 1e308 gives inf)."""
    k = 3 if task == "classification" else 1
    sizes = [3, 4, k]
    rng = np.random.default_rng(0)
    return Stored("mlp", {
        "task": task, "activation": "relu", "sizes": sizes, "hidden": [4], "mu": [0.0] * 3,
        "sd": [1e-3] * 3, "y_shift": 0.0, "y_scale": 1.0, "n_params": nn.n_params(sizes),
        "class_codes": [0.0, 1.0, 2.0] if k == 3 else []},
        state=rng.normal(size=nn.n_params(sizes)).astype("<f8").tobytes())


def test_mlp_predictions_are_nan_not_garbage_when_outputs_overflow() -> None:
    mlp = get("mlp")
    X = np.array([[1e308, -1e308, 1e308], [0.001, 0.0, -0.001]])
    c, r = _mlp("classification"), _mlp("regression")
    P = mlp.predict_proba(c, X)
    assert np.isnan(P[0]).all() and P[1].sum() == pytest.approx(1.0)
    assert np.isnan(mlp.predict(c, X)[0]) and np.isfinite(mlp.predict(c, X)[1])
    assert np.isnan(mlp.predict(r, X)[0]) and np.isfinite(mlp.predict(r, X)[1])
    from bismarckpy.kinds.mlp import metrics

    scores = dict(metrics(c, X, np.array([1.0, 2.0])))
    assert scores["rows"] == 1 and scores["unscorable_rows"] == 1
    assert np.isfinite(scores["log_loss"])


def test_divergence_advice_is_the_callers() -> None:
    mf_like = Schedule("invscaling", 0.5, 1e-4, 3,
                       advice="Lower eta0 (try 0.05), or raise alpha.")
    with pytest.raises(Diverged) as err:
        mf_like.after_epoch(1, float("inf"), float("inf"))
    assert "learning_rate => 'invscaling'" in err.value.detail
    assert err.value.hint == "Lower eta0 (try 0.05), or raise alpha. No model was stored."
    glm = Schedule("invscaling", 0.5, 1e-4, 3)
    with pytest.raises(Diverged) as err:
        glm.after_epoch(1, float("nan"), float("nan"))
    assert "bold_driver" in err.value.hint


def test_mlp_prediction_is_the_argmax_of_its_probabilities_at_infinite_outputs() -> None:
    """A row whose outputs reach +inf (not NaN) has the limit's probabilities; predict gives
    their argmax and metrics score it (clipped log-loss), as predict_proba reads it."""
    from bismarckpy.kinds.mlp import _classify

    z = np.array([[np.inf, 3.0, -np.inf], [1.0, 2.0, 0.5], [np.nan, 0.0, 0.0],
                  [-np.inf, np.inf, np.inf]])
    P, guess, ok = _classify(z)
    assert ok.tolist() == [True, True, False, True]
    assert guess[ok].tolist() == [0, 1, 1]
    assert P[3] == pytest.approx([0.0, 0.5, 0.5])
