"""The "worse than trivial" decision without a database: which model a run's final loss is
compared with (the best one without features it could express) and what follows.

The reference for a run that fits an intercept is the best constant model (the label's mean,
the class priors), not the all-zero model every run starts from: on a label of mean 1000 the
zero model's loss is so large that a model 600 times worse than the mean passed as converged.
References are computed here with plain numpy from the data, not from the code under test.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from bismarckpy.kinds import mlp
from bismarckpy.loop import (
    WORSE_THAN_START,
    WORSE_THAN_ZERO,
    _overshoot_note,
    trivial_glm_loss,
    trivial_verdict,
    zero_model_loss,
)
from bismarckpy.params import validate


def _half_mse(y: np.ndarray, prediction: float) -> float:
    return float(np.mean(0.5 * (y - prediction) ** 2))


# --- the trivial model's loss -------------------------------------------------------------------

def test_squared_with_intercept_is_the_mean_model() -> None:
    y = 1000.0 + np.random.default_rng(0).normal(size=500)
    got, what = trivial_glm_loss("squared", True, y_mean=float(y.mean()), y_sd=float(y.std()))
    assert got == pytest.approx(_half_mse(y, float(y.mean())), rel=1e-9)
    assert "mean" in what
    # the zero model, the old reference, is ~500,000 times larger here
    assert _half_mse(y, 0.0) > 1e5 * got


def test_squared_without_intercept_is_the_zero_model() -> None:
    y = 1000.0 + np.random.default_rng(1).normal(size=500)
    got, what = trivial_glm_loss("squared", False, y_mean=float(y.mean()), y_sd=float(y.std()))
    assert got == pytest.approx(_half_mse(y, 0.0), rel=1e-9)
    assert "fit_intercept" in what


def test_squared_without_moments_is_unknown() -> None:
    assert trivial_glm_loss("squared", True)[0] is None


@pytest.mark.parametrize("n, n_pos", [(10, 5), (1000, 10), (1000, 990), (7, 1)])
def test_logistic_with_intercept_is_the_class_priors(n: int, n_pos: int) -> None:
    p = n_pos / n
    priors = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    got, what = trivial_glm_loss("logistic", True, n=n, n_pos=n_pos)
    assert got == pytest.approx(priors, rel=1e-12)
    assert got <= math.log(2) + 1e-15  # never looser than the zero model's
    assert "priors" in what


def test_weighted_logistic_priors() -> None:
    # class weights (1, 4) on 80 negatives and 20 positives: as if 80 and 80 rows, shares 1/2
    got, _ = trivial_glm_loss("logistic", True, weights=(1.0, 4.0), n=100, n_pos=20)
    assert got == pytest.approx(1.6 * math.log(2), rel=1e-12)  # = the zero model's here
    assert got == pytest.approx(zero_model_loss("logistic", (1.0, 4.0), 100, 20), rel=1e-12)


@pytest.mark.parametrize("n, n_pos", [(10, 5), (1000, 10), (1000, 990)])
def test_hinge_with_intercept_is_the_majority_class(n: int, n_pos: int) -> None:
    y = np.r_[np.ones(n_pos), -np.ones(n - n_pos)]
    best = min(float(np.mean(np.maximum(0.0, 1.0 - y * b))) for b in np.linspace(-3, 3, 601))
    got, _ = trivial_glm_loss("hinge", True, n=n, n_pos=n_pos)
    assert got == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("loss", ["logistic", "hinge"])
def test_classifiers_without_intercept_keep_the_zero_model(loss: str) -> None:
    assert trivial_glm_loss(loss, False, n=1000, n_pos=10)[0] == zero_model_loss(
        loss, (1.0, 1.0), 1000, 10)


# --- the decision ------------------------------------------------------------------------------

# The reproduction: y = 2 z + 50 + noise, x = 1000 z, squared loss, standardize => false,
# fit_intercept => true, learning_rate => 'bold_driver' ended at a loss of 1249 (R² -630) and
# was stored as converged: the zero model's loss (1252) excused it; the mean's (2.0) does not.
REPRO_LOSS, REPRO_ZERO, REPRO_MEAN = 1249.0, 1252.0, 2.0


def test_the_reproduction_was_excused_by_the_zero_model_and_is_refused_now() -> None:
    assert trivial_verdict(REPRO_LOSS, REPRO_ZERO) is None  # the old reference: "fine"
    assert trivial_verdict(REPRO_LOSS, REPRO_MEAN) == "diverged"


@pytest.mark.parametrize("ratio, verdict", [
    (0.01, None),  # a good fit
    (0.999, None),  # data with no signal: the good model is the mean itself
    (1.03, None),  # SGD's last steps' noise around the mean
    (1.2, "overshoot"),
    (WORSE_THAN_ZERO * 0.99, "overshoot"),
    (WORSE_THAN_ZERO * 1.01, "diverged"),
])
def test_verdict_by_ratio_to_the_trivial_loss(ratio: float, verdict: str | None) -> None:
    assert trivial_verdict(ratio * 0.5, 0.5) == verdict


@pytest.mark.parametrize("trivial", [None, 0.0, float("nan")])
def test_no_reference_no_verdict(trivial: float | None) -> None:
    # a constant label (its mean's loss is 0) or an unknown reference: no verdict
    assert trivial_verdict(123.0, trivial) is None


def test_non_finite_loss_is_left_to_the_other_checks() -> None:
    assert trivial_verdict(float("inf"), 1.0) is None
    assert trivial_verdict(float("nan"), 1.0) is None


def test_overshoot_note_names_the_model_and_the_remedy() -> None:
    note = _overshoot_note(3.0, 2.0, "eta0", 0.01, "predicting the label's mean",
                           standardize=False)
    assert note is not None
    assert "predicting the label's mean" in note and "not reported as converged" in note
    assert "standardize => true" in note and "try 0.001" in note
    assert "standardize" not in (_overshoot_note(3.0, 2.0, "eta0", 0.01) or "")
    assert _overshoot_note(2.0 * WORSE_THAN_START * 0.99, 2.0, "eta0", 0.01) is None


# --- the MLP's trivial network -----------------------------------------------------------------

def _mlp_params(**kw):
    return validate({"task": "regression", **kw}, where="train_mlp", params=mlp.KIND.params)


def test_unstandardised_mlp_regression_is_compared_with_the_mean() -> None:
    y = 1e4 + np.random.default_rng(2).normal(size=300)
    data = SimpleNamespace(y_stats=(float(y.mean()), float(y.std())), y_stats_exact=True,
                           y_mean=0.0, y_sd=1.0)
    got, what = mlp.trivial_loss(_mlp_params(standardize=False), data)
    assert got == pytest.approx(_half_mse(y, float(y.mean())), rel=1e-9)
    assert "mean" in what
    # moments from a sample only: measured (the zero network), as before
    data.y_stats_exact = False
    assert mlp.trivial_loss(_mlp_params(standardize=False), data)[0] is None
