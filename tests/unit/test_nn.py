"""The MLP epoch aggregate without a database: gradients, optimisers, merge, accuracy.

The gradient is checked against central finite differences of the objective over hypothesis-drawn
architectures; the optimisers against their textbook updates written here; ``merge`` for order
independence; and the whole kernel, driven over in-memory mini-batches as the aggregate would be,
against scikit-learn's ``MLPClassifier``/``MLPRegressor`` with the same layers on real data.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bismarckpy import nn, pack
from bismarckpy.errors import InvalidData, InvalidParameter


def make_data(task: str, n: int = 30, d: int = 3, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if task == "classification":
        y = np.arange(n) % k  # every class present
        rng.shuffle(y)
        return X, y.astype(float)
    return X, X @ rng.normal(size=d) + 0.1 * rng.normal(size=n)


architectures = st.fixed_dictionaries({
    "hidden": st.lists(st.integers(1, 5), min_size=0, max_size=3),
    "activation": st.sampled_from(sorted(nn.ACTIVATIONS)),
    "task": st.sampled_from(sorted(nn.TASKS)),
    "k": st.integers(2, 4),
    "d": st.integers(1, 4),
    "alpha": st.sampled_from([0.0, 0.3]),
    "seed": st.integers(0, 2**31),
})


# --- the objective --------------------------------------------------------------------------

@settings(max_examples=60)
@given(architectures)
def test_gradient_matches_finite_differences(a):
    X, y = make_data(a["task"], n=12, d=a["d"], k=a["k"], seed=a["seed"] % 1000)
    k = a["k"] if a["task"] == "classification" else 1
    sizes = [a["d"], *a["hidden"], k]
    p = nn.glorot(sizes, a["activation"], a["seed"])
    if a["activation"] == "relu":  # keep pre-activations away from relu's kink
        p += 0.05 * np.sign(p)
    f, g = nn.objective(p, sizes, X, y, task=a["task"], activation=a["activation"],
                        alpha=a["alpha"])
    h = 1e-6
    num = np.empty_like(p)
    for i in range(p.size):
        e = np.zeros_like(p)
        e[i] = h
        fp, _ = nn.objective(p + e, sizes, X, y, task=a["task"], activation=a["activation"],
                             alpha=a["alpha"])
        fm, _ = nn.objective(p - e, sizes, X, y, task=a["task"], activation=a["activation"],
                             alpha=a["alpha"])
        num[i] = (fp - fm) / (2 * h)
    assert np.isfinite(f)
    np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-6)


def test_softmax_loss_is_cross_entropy_and_stays_finite():
    z = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss, dz = nn._output_loss(z.copy(), np.array([2.0, 1.0]), 0)
    assert loss[0] == pytest.approx(2000.0)
    assert loss[1] == pytest.approx(math.log(3.0))
    np.testing.assert_allclose(dz[1], [1 / 3, -2 / 3, 1 / 3])


def test_glorot_is_reproducible_and_bounded():
    sizes = [8, 5, 3]
    a, b = nn.glorot(sizes, "relu", 7), nn.glorot(sizes, "relu", 7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, nn.glorot(sizes, "relu", 8))
    for (W, bias), f in zip(nn.unflatten(a, sizes), (8 + 5, 5 + 3), strict=True):
        r = math.sqrt(6.0 / f)
        assert np.abs(W).max() <= r and np.abs(bias).max() <= r
    (W, _), _ = nn.unflatten(nn.glorot(sizes, "logistic", 7), sizes)
    assert np.abs(W).max() <= math.sqrt(2.0 / 13)


# --- optimisers -----------------------------------------------------------------------------

def _one_step(solver: str, alpha: float = 0.5, **kw):
    """Two full-batch steps; the gradients are the objective's (with its L2 share)."""
    X, y = make_data("regression", n=10, d=2)
    st0 = nn.initialize(2, hidden=[3], task="regression", solver=solver, batch_size=10,
                        alpha=alpha, seed=1, **kw)
    p0 = nn.params_of(st0)
    _, g = nn.objective(p0, [2, 3, 1], X, y, task="regression", activation="relu",
                        alpha=alpha)
    s1 = nn.finalize(nn.transition_arrays(st0, X, y))
    _, g1 = nn.objective(nn.params_of(s1), [2, 3, 1], X, y, task="regression",
                         activation="relu", alpha=alpha)
    s2 = nn.finalize(nn.transition_arrays(s1, X, y))
    return p0, g, nn.params_of(s1), g1, nn.params_of(s2)


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_momentum_matches_its_update(nesterov):
    lr, mu = 0.1, 0.9
    p0, g0, p1, g1, p2 = _one_step("sgd", learning_rate_init=lr, momentum=mu,
                                   nesterovs_momentum=nesterov)
    v1 = -lr * g0
    np.testing.assert_allclose(p1, p0 + (mu * v1 - lr * g0 if nesterov else v1), rtol=1e-12)
    v2 = mu * v1 - lr * g1
    np.testing.assert_allclose(p2, p1 + (mu * v2 - lr * g1 if nesterov else v2), rtol=1e-12)


def test_adam_matches_its_update():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    p0, g0, p1, g1, p2 = _one_step("adam", learning_rate_init=lr)
    m, v = (1 - b1) * g0, (1 - b2) * g0 ** 2
    np.testing.assert_allclose(
        p1, p0 - lr * math.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps), rtol=1e-10)
    m, v = b1 * m + (1 - b1) * g1, b2 * v + (1 - b2) * g1 ** 2
    np.testing.assert_allclose(
        p2, p1 - lr * math.sqrt(1 - b2 ** 2) / (1 - b1 ** 2) * m / (np.sqrt(v) + eps),
        rtol=1e-10)


@pytest.mark.parametrize("batch", [1, 4, 7, 40])
def test_batches_carry_over_blocks(batch):
    """Feeding rows in blocks of any size gives the same steps as one pass (batch boundaries)."""
    X, y = make_data("classification", n=40, d=3, k=3)
    init = nn.initialize(3, hidden=[4], classes=[0, 1, 2], batch_size=batch, seed=3)
    whole = nn.finalize(nn.transition_arrays(init, X, y))
    s = init
    for lo, hi in ((0, 5), (5, 6), (6, 23), (23, 40)):
        s = nn.transition_arrays(s, X[lo:hi], y[lo:hi])
    np.testing.assert_allclose(nn.params_of(nn.finalize(s)), nn.params_of(whole), rtol=1e-12)
    assert nn.decode(whole).steps == math.ceil(40 / batch)


def test_packed_block_equals_arrays():
    X, y = make_data("classification", n=25, d=3, k=2)
    values = np.column_stack([y, X])
    block = pack.encode(values, "float64")
    init = nn.initialize(3, hidden=[4], classes=[0, 1], batch_size=8, seed=3)
    a = nn.finalize(nn.transition_block(None, block, init))
    b = nn.finalize(nn.transition_arrays(init, X, y))
    np.testing.assert_allclose(nn.params_of(a), nn.params_of(b), rtol=1e-12)
    c = nn.transition_block(nn.transition_block(None, block, init, 0, 10), block, init, 10)
    np.testing.assert_allclose(nn.params_of(nn.finalize(c)), nn.params_of(a), rtol=1e-12)


def test_row_transition_skips_nulls_and_counts():
    init = nn.initialize(2, hidden=[3], task="regression", batch_size=2)
    s = None
    for x, y in (([1.0, 2.0], 1.0), (None, 1.0), ([1.0, None], 2.0), ([1.0, 2.0], float("nan")),
                 ([0.5, 0.5], 0.0)):
        s = nn.transition(s, x, y, init)
    net = nn.decode(nn.finalize(s))
    assert (net.rows, net.skipped, net.steps) == (2, 3, 1)
    with pytest.raises(InvalidData, match="wrong length"):
        nn.transition(s, [1.0, 2.0, 3.0], 1.0, init)
    raw = pack.expected_header(2) + np.array([0.5, 0.5]).tobytes()
    np.testing.assert_array_equal(nn.params_of(nn.transition(s, raw, 0.0, init)),
                                  nn.params_of(nn.transition(s, [0.5, 0.5], 0.0, init)))
    with pytest.raises(InvalidData, match="wrong length"):
        nn.transition(s, pack.expected_header(3) + np.zeros(3).tobytes(), 0.0, init)
    c = nn.initialize(2, hidden=[3], classes=[-1.0, 1.0])
    np.testing.assert_array_equal(nn.code_labels(c, [1.0, -1.0]), [1.0, 0.0])
    by_row = None
    for x, y in (([0.0, 1.0], 1.0), ([1.0, 0.0], -1.0)):
        by_row = nn.transition(by_row, x, y, c)
    np.testing.assert_array_equal(
        nn.params_of(by_row), nn.params_of(nn.transition_arrays(c, [[0, 1], [1, 0]], [1, -1])))
    for bad in (2.0, 0.0, 0.5):
        with pytest.raises(InvalidData, match="not one of the model's classes"):
            nn.transition(None, [0.0, 1.0], bad, c)


def test_evaluate_mode_only_measures():
    X, y = make_data("regression", n=20, d=2)
    s = nn.initialize(2, hidden=[3], task="regression", seed=2)
    ev = nn.finalize(nn.transition_arrays(nn.next_epoch(s, batch_size=nn.EVALUATE), X, y))
    np.testing.assert_array_equal(nn.params_of(ev), nn.params_of(s))
    f, _ = nn.objective(nn.params_of(s), [2, 3, 1], X, y, task="regression",
                        activation="relu")
    assert nn.decode(ev).data_loss == pytest.approx(f, rel=1e-12)


# --- merge ------------------------------------------------------------------------------------

@settings(max_examples=25)
@given(st.permutations(range(4)), st.sampled_from(["sgd", "adam"]), st.integers(0, 1000))
def test_merge_is_order_independent(order, solver, seed):
    """Workers' partial states merge to the same network whatever the order and grouping."""
    X, y = make_data("classification", n=60, d=3, k=3, seed=seed)
    init = nn.initialize(3, hidden=[4, 3], classes=[0, 1, 2], solver=solver, batch_size=5,
                         seed=seed)
    cuts = [0, 7, 22, 41, 60]
    parts = [nn.transition_arrays(init, X[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]
    serial = None
    for i in (0, 1, 2, 3):
        serial = nn.merge(serial, parts[i])
    shuffled = None
    for i in order:
        shuffled = nn.merge(shuffled, parts[i])
    tree = nn.merge(nn.merge(parts[order[0]], parts[order[1]]),
                    nn.merge(parts[order[2]], parts[order[3]]))
    for other in (shuffled, tree):
        np.testing.assert_allclose(nn.params_of(nn.finalize(other)),
                                   nn.params_of(nn.finalize(serial)), rtol=1e-10, atol=1e-13)
        a, b = nn.decode(other), nn.decode(serial)
        assert (a.rows, a.steps, a.parts) == (b.rows, b.steps, b.parts) == (60, 13, 4)
        assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-12)


def test_merge_averages_by_rows():
    X, y = make_data("regression", n=30, d=2)
    init = nn.initialize(2, hidden=[3], task="regression", batch_size=1, seed=4)
    a = nn.transition_arrays(init, X[:10], y[:10])
    b = nn.transition_arrays(init, X[10:], y[10:])
    m = nn.merge(a, b)
    np.testing.assert_allclose(nn.params_of(m),
                               (10 * nn.params_of(a) + 20 * nn.params_of(b)) / 30, rtol=1e-12)
    assert nn.merge(None, a) == a and nn.merge(a, None) == a
    other = nn.initialize(2, hidden=[4], task="regression")
    with pytest.raises(InvalidData, match="different shapes"):
        nn.merge(a, other)


def test_full_batch_merge_is_exact():
    X, y = make_data("classification", n=30, d=3, k=2)
    init = nn.initialize(3, hidden=[4], classes=[0, 1], batch_size=0, seed=5)
    one = nn.finalize(nn.transition_arrays(init, X, y))
    two = nn.finalize(nn.merge(nn.transition_arrays(init, X[:11], y[:11]),
                               nn.transition_arrays(init, X[11:], y[11:])))
    np.testing.assert_allclose(nn.params_of(two), nn.params_of(one), rtol=1e-12)
    assert nn.decode(one).steps == 1


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("hidden", [[0], [64, 0], [-3], [2.5], [None], [True]])
def test_hidden_layer_sizes_must_be_positive(hidden):
    with pytest.raises(InvalidParameter, match="positive integers"):
        nn.initialize(3, hidden=hidden, classes=[0, 1])


@pytest.mark.parametrize("kw,match", [
    ({"activation": "softplus"}, "unknown activation"),
    ({"task": "ranking"}, "unknown task"),
    ({"solver": "lbfgs"}, "unknown solver"),
    ({"learning_rate_init": 0.0}, "learning_rate_init"),
    ({"learning_rate_init": float("nan")}, "learning_rate_init"),
    ({"momentum": 1.5}, "momentum"),
    ({"beta_1": 1.0}, "beta_1"),
    ({"beta_2": -0.1}, "beta_2"),
    ({"epsilon": 0.0}, "epsilon"),
    ({"alpha": -1.0}, "alpha"),
    ({"batch_size": 2.5}, "batch_size"),
])
def test_bad_parameters_are_refused(kw, match):
    with pytest.raises(InvalidParameter, match=match):
        nn.initialize(3, hidden=[2], classes=[0, 1], **kw)


def test_one_class_and_unknown_class_are_refused():
    with pytest.raises(InvalidData, match="at least two classes"):
        nn.initialize(3, hidden=[2], classes=[1.0, 1.0])
    init = nn.initialize(2, hidden=[2], classes=[0, 1])
    with pytest.raises(InvalidData, match="not one of the model's classes"):
        nn.transition_arrays(init, np.zeros((2, 2)), np.array([0.0, 2.0]))


def test_predict_checks_feature_length():
    s = nn.initialize(3, hidden=[2], classes=[0, 1])
    with pytest.raises(InvalidData, match="wrong length"):
        nn.predict(s, np.zeros((2, 4)))
    with pytest.raises(InvalidData, match="not a bismarck MLP state"):
        nn.predict(b"\x00" * 64, np.zeros((2, 3)))


def test_divergence_is_flagged_not_hidden():
    X, y = make_data("regression", n=50, d=3)
    s = nn.initialize(3, hidden=[8], task="regression", solver="sgd", learning_rate_init=1e3,
                      momentum=0.9, batch_size=5, seed=0)
    for _ in range(5):
        s = nn.finalize(nn.transition_arrays(nn.next_epoch(s), X * 100, y * 100))
    net = nn.decode(s)
    assert net.diverged and not math.isfinite(net.mean_loss)


# --- accuracy against scikit-learn ----------------------------------------------------------

def _fit(X, y, epochs, **kw):
    """Drive the kernel as the aggregate would: shuffled blocks of rows, one state per epoch."""
    mu, sd = X.mean(0), X.std(0)
    sd[sd == 0] = np.inf
    s = nn.initialize(X.shape[1], mu=mu, sd=sd, **kw)
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        s = nn.next_epoch(s)
        order = rng.permutation(len(y))
        state = None
        for lo in range(0, len(y), 128):  # 128-row blocks, batches crossing their edges
            rows = order[lo:lo + 128]
            block = pack.encode(np.column_stack([y[rows], X[rows]]), "float64")
            state = nn.transition_block(state, block, s)
        s = nn.finalize(state)
    return s


def _scaled(Xtr, Xte):
    mu, sd = Xtr.mean(0), Xtr.std(0)
    sd[sd == 0] = 1.0
    return (Xtr - mu) / sd, (Xte - mu) / sd


def test_digits_accuracy_close_to_sklearn():
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    s = _fit(Xtr, ytr.astype(float), 60, hidden=[64, 32], classes=np.unique(y), seed=0)
    ours = float((nn.predict(s, Xte) == yte).mean())
    a, b = _scaled(Xtr, Xte)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=60, random_state=0).fit(a, ytr)
    assert ours >= ref.score(b, yte) - 0.03, (ours, ref.score(b, yte))
    proba = nn.predict_proba(s, Xte)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(np.unique(y)[proba.argmax(axis=1)], nn.predict(s, Xte))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_diabetes_r2_close_to_sklearn(activation):
    from sklearn.datasets import load_diabetes
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPRegressor

    X, y = load_diabetes(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)
    ym, ys = ytr.mean(), ytr.std()
    s = _fit(Xtr, ytr, 60, hidden=[64, 32], task="regression", activation=activation,
             y_shift=ym, y_scale=ys, seed=0)
    ours = r2_score(yte, nn.predict(s, Xte))
    a, b = _scaled(Xtr, Xte)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = MLPRegressor(hidden_layer_sizes=(64, 32), activation=activation, max_iter=60,
                           random_state=0).fit(a, (ytr - ym) / ys)
    theirs = r2_score(yte, ref.predict(b) * ys + ym)
    assert ours >= theirs - 0.05, (ours, theirs)
