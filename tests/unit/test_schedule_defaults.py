"""The automatic batch size and learning rate (issue 11 item 1), without a database.

Expectations: numpy's symmetric eigen-solver for the top eigenvalue, and plain mini-batch
gradient descent for the claim that 1 / L is a step that decreases the loss.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bismarckpy.losses import LOSSES
from bismarckpy.params import validate
from bismarckpy.schedule import (
    MIN_STEPS_PER_EPOCH,
    auto_batch_size,
    auto_eta0,
    top_eigenvalue,
)


@pytest.mark.parametrize(("n", "block", "want"), [
    (0, 512, 1), (1, 512, 1), (2, 512, 2), (400, 512, 2), (2047, 512, 2), (2048, 512, 2),
    (3072, 512, 3), (20_000, 512, 19), (20_000, 1, 1), (1_000_000, 512, 512),
    (1_000_000, 64, 64), (10**9, 512, 512)])
def test_auto_batch_size(n: int, block: int, want: int) -> None:
    got = auto_batch_size(n, block)
    assert got == want
    assert 1 <= got <= block
    # an epoch keeps enough steps, unless it is too small for that with batches of 2
    assert got <= 2 or n // got >= MIN_STEPS_PER_EPOCH


def test_defaults_are_null_until_the_loop_resolves_them() -> None:
    p = validate({})
    assert p["batch_size"] is None and p["eta0"] is None
    assert validate({"batch_size": 1, "eta0": 0.5})["batch_size"] == 1  # per-row stays per-row


@settings(max_examples=30, deadline=None)
@given(n=st.integers(5, 300), d=st.integers(1, 12), seed=st.integers(0, 2**31),
       scale=st.floats(0.01, 100.0))
def test_top_eigenvalue_is_within_ten_percent_below_numpys(n: int, d: int, seed: int,
                                                          scale: float) -> None:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, d)) * rng.uniform(0.1, 2.0, size=d) * scale
    A[:, 0] += rng.normal(size=n) * scale  # correlated columns
    want = float(np.linalg.eigvalsh(A.T @ A / n)[-1])
    got = top_eigenvalue(A)
    # From below, and close enough for a step size: 1 / (0.9 L) is still under 2 / L, the
    # limit of a stable gradient step on an L-smooth loss.
    assert 0.9 * want <= got <= want * (1 + 1e-9)


def test_top_eigenvalue_of_empty_or_zero() -> None:
    assert top_eigenvalue(np.zeros((0, 3))) == 0.0
    assert top_eigenvalue(np.zeros((4, 3))) == 0.0


@pytest.mark.parametrize("loss", ["logistic", "squared"])
@pytest.mark.parametrize("corr", [0.0, 0.9, 0.99])
def test_auto_eta0_is_a_descent_step_of_full_batch_gradient_descent(loss: str,
                                                                      corr: float) -> None:
    """1 / L never increases the loss of full-batch GD (L-smooth descent lemma), any correlation."""
    rng = np.random.default_rng(3)
    n, d = 2000, 8
    Z = rng.normal(size=(n, 1))
    X = np.sqrt(1 - corr) * rng.normal(size=(n, d)) + np.sqrt(corr) * Z
    X = (X - X.mean(0)) / X.std(0)
    A = np.hstack([X, np.ones((n, 1))])
    w_true = rng.normal(size=d + 1)
    z = A @ w_true
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float) if loss == "logistic" else z
    eta = auto_eta0(loss, A, 0)
    lam = float(np.linalg.eigvalsh(A.T @ A / n)[-1])
    smooth = {"logistic": 0.25, "squared": 1.0}[loss] * lam
    assert 1 / smooth * (1 - 1e-9) <= eta <= 1 / (0.9 * smooth)
    w = np.zeros(d + 1)
    prev = np.inf
    for _ in range(50):
        lv, dz = LOSSES[loss](A @ w, y)
        assert lv.mean() <= prev + 1e-12
        prev = float(lv.mean())
        w -= eta * A.T @ dz / n
    # and twice the step is where a correlated squared loss stops being safe: L is tight
    if loss == "squared" and corr > 0.9:
        w = np.zeros(d + 1)
        losses = []
        for _ in range(50):
            lv, dz = LOSSES[loss](A @ w, y)
            losses.append(float(lv.mean()))
            w -= 2.2 * eta * A.T @ dz / n
        assert losses[-1] > losses[0]


def test_auto_eta0_is_smaller_for_smaller_batches() -> None:
    """A batch of B rows has curvature up to its own λ_max: noisier batches get smaller steps."""
    rng = np.random.default_rng(0)
    A = np.hstack([rng.normal(size=(1024, 50)), np.ones((1024, 1))])
    etas = [auto_eta0("logistic", A, b) for b in (1, 8, 64, 512, 0)]
    assert etas == sorted(etas)
    assert etas[0] == pytest.approx(4 / max((A * A).sum(1)), rel=1e-6)  # one row: 4 / max ‖x‖²


def test_hinge_takes_ten_times_the_step_decaying_as_one_over_the_epoch() -> None:
    """Hinge has no curvature to bound: its scale is 1/10 (ten times squared loss's step on the
    same rows), and its mini-batch steps decay as 1 / epoch (power_t 1); per-row hinge steps,
    whose rate decays with every row, keep 0.5, and the other losses their own."""
    from bismarckpy.schedule import HINGE_SCALE, default_power_t

    rng = np.random.default_rng(5)
    A = np.hstack([rng.normal(size=(512, 4)), np.ones((512, 1))])
    assert HINGE_SCALE == 0.1
    assert auto_eta0("hinge", A, 2) == pytest.approx(10 * auto_eta0("squared", A, 2))
    assert default_power_t("hinge", 2) == default_power_t("hinge", 0) == 1.0
    assert default_power_t("hinge", 1) == 0.5
    assert default_power_t("logistic", 2) == 0.5 and default_power_t("squared", 2) == 0.25
