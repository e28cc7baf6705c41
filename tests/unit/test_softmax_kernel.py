"""The softmax kind's numpy functions, without a database: gradients, merge, export, predict."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from bismarckpy import kinds
from bismarckpy.errors import InvalidData
from bismarckpy.kinds import softmax as sm
from bismarckpy.pack import encode


def _raw(x: np.ndarray) -> bytes:
    """A feature vector in the in-memory form of a 1-D float8[] (as the row copies hold it)."""
    return np.array([1, 0, 701, len(x), 1], dtype="<i4").tobytes() + x.astype("<f8").tobytes()


def test_cross_entropy_matches_scipy_and_its_gradient_the_finite_difference() -> None:
    rng = np.random.default_rng(0)
    Z = rng.normal(scale=30, size=(6, 4))
    idx = rng.integers(0, 4, size=6)
    loss, grad = sm.cross_entropy(Z.copy(), idx)
    assert loss == pytest.approx(logsumexp(Z, axis=1) - Z[np.arange(6), idx], rel=1e-12)
    onehot = np.eye(4)[idx]
    assert grad == pytest.approx(softmax(Z, axis=1) - onehot, abs=1e-12)
    huge = np.array([[1e300, 0.0, -1e300]])
    assert np.isfinite(sm.cross_entropy(huge, np.array([1]))[0]).all()


def test_a_full_batch_step_is_gradient_descent_on_the_mean_cross_entropy() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 3))
    y = rng.choice([3.0, 7.0, 9.0], size=20)
    W0, b0 = rng.normal(size=(3, 3)), rng.normal(size=3)
    init = sm.initialize(3, [9, 3, 7], eta=0.5, batch_size=0, W=W0, b=b0, alpha=0.1, l2=1.0)
    state = None
    for xi, yi in zip(X, y):
        state = sm.transition(state, _raw(xi), float(yi), init)
    m = sm.decode(sm.finalize(state))
    idx = np.searchsorted([3.0, 7.0, 9.0], y)
    P = softmax(X @ W0.T + b0, axis=1) - np.eye(3)[idx]
    W = W0 * (1 - 0.5 * 0.1) - 0.5 * (P.T @ X) / 20
    assert pytest.approx(W, rel=1e-12) == m.W and m.b == pytest.approx(b0 - 0.5 * P.mean(0))
    assert m.rows == 20 and m.steps == 1
    assert m.data_loss == pytest.approx(np.mean(logsumexp(X @ W0.T + b0, axis=1)
                                                - (X @ W0.T + b0)[np.arange(20), idx]))


def test_packed_blocks_give_the_rows_steps_and_unknown_labels_are_skipped() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(10, 2))
    y = np.array([0, 1, 2, 1, 0, 5, 2, 1, 0, 2], dtype=float)  # 5: not a class
    init = sm.initialize(2, [0, 1, 2], eta=0.1, batch_size=3)
    rows = None
    for xi, yi in zip(X, y):
        rows = sm.transition(rows, _raw(xi), float(yi), init)
    block = encode(np.column_stack([y, X]), "float64")
    packed = sm.transition_block(None, block, init)
    a, b = sm.decode(sm.finalize(rows)), sm.decode(sm.finalize(packed))
    assert a.skipped == b.skipped == 1 and a.rows == b.rows == 9
    assert pytest.approx(b.W, rel=1e-10) == a.W and a.loss_sum == pytest.approx(b.loss_sum)


def test_merge_averages_weights_by_rows_and_sums_statistics() -> None:
    init = sm.initialize(1, [0, 1], eta=0.1)
    a = sm.transition(None, [1.0], 1.0, init)
    b = sm.transition(sm.transition(None, [2.0], 0.0, init), [3.0], 1.0, init)
    m, ma, mb = (sm.decode(s) for s in (sm.merge(a, b), a, b))
    assert m.rows == 3 and m.parts == 2 and m.loss_sum == pytest.approx(ma.loss_sum + mb.loss_sum)
    assert pytest.approx((ma.W + 2 * mb.W) / 3) == m.W
    assert sm.merge(None, a) == a and sm.merge(a, None) == a
    assert kinds.for_state(init) is sm.KIND


def test_one_class_and_foreign_states_are_refused() -> None:
    with pytest.raises(InvalidData, match="at least two classes"):
        sm.initialize(2, [1.0, 1.0])
    with pytest.raises(InvalidData, match="not a bismarck softmax state"):
        sm.decode(b"\0" * 80)


def test_export_predicts_in_original_units_what_the_standardised_model_predicts() -> None:
    rng = np.random.default_rng(3)
    mu, sd = rng.normal(size=2), rng.uniform(1, 3, size=2)
    W, b = rng.normal(size=(3, 2)), rng.normal(size=3)
    model = sm.decode(sm.initialize(2, [1, 2, 4], W=W, b=b))
    data = type("D", (), {"d": 2, "mu": mu, "sd": sd, "classes": [1.0, 2.0, 4.0]})()
    stored = sm.KIND.export({}, data, model)
    X = rng.normal(size=(8, 2))
    P = softmax(((X - mu) / sd) @ W.T + b, axis=1)
    assert sm.KIND.predict_proba(stored, X) == pytest.approx(P, rel=1e-10)
    assert sm.KIND.predict(stored, X).tolist() == [[1.0, 2.0, 4.0][i] for i in P.argmax(1)]
