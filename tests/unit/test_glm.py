"""The GLM epoch aggregate without a database: codec, transition, merge, finalize.

Every mode is compared with a tiny reference implementation written here in plain numpy:
per-tuple SGD (batch_size 1), mini-batch SGD (k > 1), full-batch gradient descent (0) and
evaluation only (-1). Rows are fed one at a time through ``transition`` exactly as PostgreSQL
would, starting from a NULL state.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bismarckpy import pack
from bismarckpy.errors import InvalidData
from bismarckpy.kinds import glm
from bismarckpy.losses import LOSSES

STRICT = {"all": "raise", "under": "ignore"}  # underflow to 0 is a correct result, not an error


# --- deterministic factories --------------------------------------------------------------------

def make_data(loss: str, n: int = 40, d: int = 3, seed: int = 0,
              loc: float = 0.0, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A small problem with labels encoded as the loss expects (0/1, -1/+1 or real)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=loc, scale=scale, size=(n, d))
    truth = rng.normal(size=d)
    z = (X - loc) / scale @ truth + 0.3 + rng.normal(scale=0.5, size=n)
    if loss == "logistic":
        y = (z > 0).astype(float)
    elif loss == "hinge":
        y = np.where(z > 0, 1.0, -1.0)
    else:
        y = z
    return X, y


def start(d: int, seed: int = 1) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    return rng.normal(scale=0.3, size=d), float(rng.normal(scale=0.3))


def feed(init: bytes, X, y, state: bytes | None = None) -> bytes | None:
    """Run transition over the rows, from a NULL state as PostgreSQL does."""
    for xi, yi in zip(X, y):
        state = glm.transition(state, None if xi is None else list(xi), yi, init)
    return state


def epoch(init: bytes, X, y) -> glm.Model:
    return glm.decode(glm.finalize(feed(init, X, y)))


# --- tiny reference implementations -------------------------------------------------------------

def ref_loss(loss: str, z: float, y: float) -> tuple[float, float]:
    """Per-row loss and d loss / d z, written out independently of the engine."""
    if loss == "logistic":
        p = 1.0 / (1.0 + math.exp(-z))
        return -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p)), p - y
    if loss == "squared":
        return 0.5 * (z - y) ** 2, z - y
    return (1.0 - y * z, -y) if y * z < 1.0 else (0.0, 0.0)


def ref_step(w, b, g, gb, *, eta, alpha, l1, l2, fit_intercept):
    """Proximal gradient step: gradient of loss + L2, then soft-threshold for L1."""
    w = w - eta * (g + alpha * l2 * w)
    w = np.sign(w) * np.maximum(np.abs(w) - eta * alpha * l1, 0.0)
    if fit_intercept:
        b = b - eta * gb
    return w, b


def ref_sgd(X, y, w, b, *, loss, batch, eta0, alpha=0.0, l1=0.0, l2=0.0, invscaling=False,
            power_t=0.5, t=0.0, fit_intercept=True):
    """Mini-batch SGD over the rows in order (batch 1 = per tuple, 0 = the whole epoch)."""
    w = np.array(w, dtype=float)
    total = 0.0
    g, gb, pending = np.zeros_like(w), 0.0, 0

    def step():
        nonlocal w, b, t, g, gb, pending
        eta = eta0 / (t + 1.0) ** power_t if invscaling else eta0
        w, b = ref_step(w, b, g / pending, gb / pending, eta=eta, alpha=alpha, l1=l1, l2=l2,
                        fit_intercept=fit_intercept)
        t += 1
        g, gb, pending = np.zeros_like(w), 0.0, 0

    for xi, yi in zip(X, y):
        lv, dz = ref_loss(loss, float(w @ xi + b), float(yi))
        total += lv
        g, gb, pending = g + dz * xi, gb + dz, pending + 1
        if batch >= 1 and pending == batch:
            step()
    if pending:
        step()
    return w, b, t, total


# --- codec --------------------------------------------------------------------------------------

def test_initialize_roundtrips_through_decode() -> None:
    w = np.array([1.0, -2.0, 3.5])
    s = glm.initialize(3, loss="hinge", alpha=0.1, l1=0.25, l2=0.75, eta=0.3, t=7.0, w=w, b=-1.5)
    assert isinstance(s, bytes)
    assert len(s) == 8 * (glm.HEADER + 5 * 3 + 3)
    m = glm.decode(s)
    np.testing.assert_array_equal(m.w, w)
    assert (m.b, m.rows, m.loss_sum, m.skipped, m.steps, m.t) == (-1.5, 0, 0.0, 0, 0, 7.0)
    assert (m.alpha, m.l1, m.l2) == (0.1, 0.25, 0.75)
    assert math.isnan(m.mean_loss) and math.isnan(m.data_loss)
    m.w[0] = 99.0  # decode returns a copy
    assert glm.decode(s).w[0] == 1.0


def test_decode_rejects_a_wrong_header() -> None:
    good = glm.initialize(2, loss="squared")
    for garbage in (b"", b"\x00" * 8, np.zeros(40).tobytes(),
                    np.random.default_rng(0).normal(size=40).tobytes(),
                    b"\x01" + good[1:]):
        with pytest.raises(InvalidData) as exc:
            glm.decode(garbage)
        assert exc.value.sqlstate == "22000"


@pytest.mark.parametrize("garbage", [b"abc", b"not a state", b"\x00" * 161])
def test_decode_rejects_odd_length_garbage(garbage: bytes) -> None:
    with pytest.raises(InvalidData):
        glm.decode(garbage)


@pytest.mark.parametrize("cut", [1, 5, 12, 14])
def test_decode_rejects_a_truncated_state(cut: int) -> None:
    s = glm.initialize(3, loss="squared", w=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(InvalidData):
        glm.decode(s[:-8 * cut])


def test_model_losses() -> None:
    s = glm.initialize(2, loss="squared", alpha=0.5, l1=0.2, l2=0.8, batch_size=glm.EVALUATE,
                       w=np.array([1.0, -2.0]))
    m = epoch(s, [[0.0, 0.0], [0.0, 0.0]], [1.0, 3.0])  # losses 0.5 and 4.5
    assert m.rows == 2 and m.loss_sum == 5.0
    assert m.data_loss == 2.5
    assert m.mean_loss == pytest.approx(2.5 + 0.5 * (0.2 * 3.0 + 0.4 * 5.0))


# --- gradient -----------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["logistic", "squared"])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), alpha=st.floats(0.0, 2.0), l2=st.floats(0.0, 1.0))
def test_loss_and_gradient_matches_finite_differences(loss, seed, alpha, l2) -> None:
    X, y = make_data(loss, n=30, d=4, seed=seed)
    w, b = start(4, seed)
    h = 1e-6
    with np.errstate(**STRICT):
        obj, grad, grad_b = glm.loss_and_gradient(w, b, X, y, loss, alpha=alpha, l2=l2)
        fd = np.empty(4)
        for j in range(4):
            e = np.zeros(4)
            e[j] = h
            fd[j] = (glm.loss_and_gradient(w + e, b, X, y, loss, alpha=alpha, l2=l2)[0]
                     - glm.loss_and_gradient(w - e, b, X, y, loss, alpha=alpha, l2=l2)[0]) / (2 * h)
        fd_b = (glm.loss_and_gradient(w, b + h, X, y, loss, alpha=alpha, l2=l2)[0]
                - glm.loss_and_gradient(w, b - h, X, y, loss, alpha=alpha, l2=l2)[0]) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)
    assert grad_b == pytest.approx(fd_b, rel=1e-5, abs=1e-6)
    expected = np.mean([ref_loss(loss, float(w @ xi + b), yi)[0] for xi, yi in zip(X, y)])
    assert obj == pytest.approx(expected + 0.5 * alpha * l2 * float(w @ w), rel=1e-12)


# --- full-batch gradient descent (batch_size = 0) ----------------------------------------------

@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_full_batch_epoch_is_one_gradient_step(loss: str, fit_intercept: bool) -> None:
    X, y = make_data(loss, n=25, d=3, seed=3)
    w, b = start(3)
    eta, alpha, l2 = 0.2, 0.3, 0.6
    init = glm.initialize(3, loss=loss, alpha=alpha, l2=l2, eta=eta, batch_size=0,
                          fit_intercept=fit_intercept, w=w, b=b, t=4.0)
    state = feed(init, X, y)
    assert glm.decode(state).steps == 0  # nothing moves before finalize
    np.testing.assert_array_equal(glm.decode(state).w, w)
    m = glm.decode(glm.finalize(state))

    lv, dz = LOSSES[loss](X @ w + b, y)
    n = len(y)
    np.testing.assert_allclose(m.w, w - eta * (X.T @ dz / n + alpha * l2 * w), rtol=1e-12,
                               atol=1e-14)
    assert m.b == pytest.approx(b - eta * dz.mean() if fit_intercept else b, rel=1e-12)
    assert m.rows == n and m.steps == 1 and m.t == 5.0 and m.skipped == 0
    assert m.loss_sum == pytest.approx(lv.sum(), rel=1e-12)


def test_full_batch_gd_converges_to_least_squares() -> None:
    X, y = make_data("squared", n=60, d=3, seed=11)
    w, b = np.zeros(3), 0.0
    for _ in range(400):
        init = glm.initialize(3, loss="squared", eta=0.5, batch_size=0, w=w, b=b)
        m = epoch(init, X, y)
        w, b = m.w, m.b
    A = np.column_stack([X, np.ones(len(y))])
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    np.testing.assert_allclose(np.append(w, b), coef, atol=1e-8)


def test_full_batch_gd_approaches_statsmodels_logit() -> None:
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(5)
    X = rng.normal(size=(200, 2))
    p = 1.0 / (1.0 + np.exp(-(X @ np.array([1.0, -0.5]) + 0.3)))
    y = (rng.uniform(size=200) < p).astype(float)
    w, b = np.zeros(2), 0.0
    for _ in range(300):
        init = glm.initialize(2, loss="logistic", eta=4.0, batch_size=0, w=w, b=b)
        m = epoch(init, X, y)
        w, b = m.w, m.b
    ref = sm.Logit(y, sm.add_constant(X)).fit(disp=0).params
    np.testing.assert_allclose(np.append(b, w), ref, rtol=1e-3, atol=1e-4)


# --- evaluate only (batch_size = -1) ------------------------------------------------------------

@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_evaluate_leaves_the_model_alone_and_sums_the_loss(loss: str) -> None:
    X, y = make_data(loss, n=30, d=3, seed=2)
    w, b = start(3)
    init = glm.initialize(3, loss=loss, alpha=1.0, l1=0.5, l2=0.5, eta=10.0, t=3.0,
                          batch_size=glm.EVALUATE, w=w, b=b)
    m = epoch(init, X, y)
    np.testing.assert_array_equal(m.w, w)
    assert m.b == b and m.steps == 0 and m.t == 3.0 and m.rows == 30
    total = 0.0
    for xi, yi in zip(X, y):
        total += ref_loss(loss, float(w @ xi + b), yi)[0]
    assert m.loss_sum == pytest.approx(total, rel=1e-12, abs=1e-12)
    assert m.data_loss == pytest.approx(total / 30, rel=1e-12, abs=1e-12)


def test_evaluate_merge_leaves_the_model_alone() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=3)
    init = glm.initialize(3, loss="squared", batch_size=glm.EVALUATE, w=w, b=0.3)
    a = feed(init, rng.normal(size=(3, 3)), np.ones(3))
    b = feed(init, rng.normal(size=(7, 3)), np.ones(7))
    m = glm.decode(glm.finalize(glm.merge(a, b)))
    np.testing.assert_array_equal(m.w, w)
    assert m.b == 0.3


# --- per-tuple and mini-batch SGD ---------------------------------------------------------------

PENALTY_MIX = {"none": (0.0, 0.0, 0.0), "l2": (0.1, 0.0, 1.0), "l1": (0.1, 1.0, 0.0),
               "elasticnet": (0.1, 0.3, 0.7)}


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("penalty", sorted(PENALTY_MIX))
@pytest.mark.parametrize("invscaling", [False, True])
def test_per_tuple_sgd_matches_reference(loss: str, penalty: str, invscaling: bool) -> None:
    X = np.array([[1.0, -2.0], [0.5, 0.25], [-1.5, 1.0]])
    y = {"logistic": [1.0, 0.0, 1.0], "hinge": [1.0, -1.0, 1.0], "squared": [2.0, -1.0, 0.5]}[loss]
    w, b = np.array([0.1, -0.2]), 0.05
    alpha, l1, l2 = PENALTY_MIX[penalty]
    kw = dict(alpha=alpha, l1=l1, l2=l2, invscaling=invscaling, power_t=0.5, t=2.0)
    init = glm.initialize(2, loss=loss, eta=0.3, batch_size=1, w=w, b=b, **kw)
    state = feed(init, X, y)
    assert glm.finalize(state) == state  # nothing pending after per-tuple steps
    m = glm.decode(state)
    rw, rb, rt, total = ref_sgd(X, y, w, b, loss=loss, batch=1, eta0=0.3, **kw)
    np.testing.assert_allclose(m.w, rw, rtol=1e-12, atol=1e-15)
    assert m.b == pytest.approx(rb, rel=1e-12, abs=1e-15)
    assert (m.t, m.steps, m.rows) == (rt, 3, 3) and rt == 5.0
    assert m.loss_sum == pytest.approx(total, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 23), k=st.integers(1, 8),
       loss=st.sampled_from(sorted(LOSSES)), penalty=st.sampled_from(sorted(PENALTY_MIX)),
       invscaling=st.booleans(), fit_intercept=st.booleans())
def test_mini_batch_sgd_matches_reference(seed, n, k, loss, penalty, invscaling,
                                          fit_intercept) -> None:
    X, y = make_data(loss, n=n, d=3, seed=seed)
    w, b = start(3, seed)
    alpha, l1, l2 = PENALTY_MIX[penalty]
    kw = dict(alpha=alpha, l1=l1, l2=l2, invscaling=invscaling, power_t=0.7, t=1.0,
              fit_intercept=fit_intercept)
    init = glm.initialize(3, loss=loss, eta=0.2, batch_size=k, w=w, b=b, **kw)
    with np.errstate(**STRICT):
        m = epoch(init, X, y)
    rw, rb, rt, total = ref_sgd(X, y, w, b, loss=loss, batch=k, eta0=0.2, **kw)
    np.testing.assert_allclose(m.w, rw, rtol=1e-11, atol=1e-14)
    assert m.b == pytest.approx(rb, rel=1e-11, abs=1e-14)
    assert m.steps == math.ceil(n / k) and m.t == rt == 1.0 + math.ceil(n / k)
    assert m.loss_sum == pytest.approx(total, rel=1e-11)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), k=st.integers(2, 9),
       loss=st.sampled_from(sorted(LOSSES)), penalty=st.sampled_from(sorted(PENALTY_MIX)),
       invscaling=st.booleans(), cuts=st.lists(st.integers(0, 40), max_size=4),
       loc=st.sampled_from([0.0, 1e4]))
def test_block_steps_match_the_reference_however_the_rows_are_cut(
        seed, n, k, loss, penalty, invscaling, cuts, loc) -> None:
    """Mini-batch steps over a float64 packed block, fed whole or in pieces (rows first:stop
    of the block, a partial batch carried across pieces), standardised, are the reference's
    steps on the standardised rows: a batch taken from one piece (stepped at once) and one
    gathered from several (accumulated, then flushed) give the same model."""
    X, y = make_data(loss, n=n, d=3, seed=seed, loc=loc, scale=2.0)
    mu, sd = X.mean(axis=0), X.std(axis=0) + 0.5
    w, b = start(3, seed)
    alpha, l1, l2 = PENALTY_MIX[penalty]
    kw = dict(alpha=alpha, l1=l1, l2=l2, invscaling=invscaling, power_t=0.7, t=1.0)
    init = glm.initialize(3, loss=loss, eta=0.2, batch_size=k, w=w, b=b, mu=mu, sd=sd,
                          itemsize=8, **kw)
    block = pack.encode(np.column_stack([y, X]), "float64")
    bounds = [0, *sorted(c for c in cuts if c < n), None]
    state = None
    with np.errstate(**STRICT):
        for first, stop in zip(bounds, bounds[1:]):
            state = glm.transition_block(state, block, init, first, stop)
        m = glm.decode(glm.finalize(state))
    rw, rb, rt, total = ref_sgd((X - mu) / sd, y, w, b, loss=loss, batch=k, eta0=0.2, **kw)
    np.testing.assert_allclose(m.w, rw, rtol=1e-9, atol=1e-12)
    assert m.b == pytest.approx(rb, rel=1e-9, abs=1e-12)
    assert m.steps == math.ceil(n / k) and m.t == rt and m.rows == n
    assert m.loss_sum == pytest.approx(total, rel=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_block_fed_in_whole_batches_is_the_block_fed_at_once(dtype: str) -> None:
    """Cutting a block at batch boundaries changes nothing, to the last bit: each batch is
    stepped on the same sums whichever piece holds it."""
    X, y = make_data("logistic", n=50, d=4, seed=9, loc=100.0)
    init = glm.initialize(4, loss="logistic", eta=0.3, batch_size=8, alpha=1e-3, l2=1.0,
                          mu=X.mean(axis=0), sd=X.std(axis=0), itemsize=pack.DTYPES[dtype].itemsize,
                          y_coding=(glm.Y_CLASS01, 1.0, 0.0, 1.0))
    block = pack.encode(np.column_stack([y, X]), dtype)
    whole = glm.transition_block(None, block, init)
    state = None
    for first in range(0, 50, 16):
        state = glm.transition_block(state, block, init, first, min(first + 16, 50))
    assert state == whole


def test_mini_batch_steps_every_k_rows_and_finalize_flushes() -> None:
    X, y = make_data("squared", n=7, d=2, seed=4)
    w, b = start(2)
    init = glm.initialize(2, loss="squared", eta=0.1, batch_size=3, w=w, b=b)
    state, seen = None, []
    for xi, yi in zip(X, y):
        state = glm.transition(state, list(xi), yi, init)
        m = glm.decode(state)
        seen.append(m.steps)
        if m.steps == 0:
            np.testing.assert_array_equal(m.w, w)
    assert seen == [0, 0, 1, 1, 1, 2, 2]
    before = glm.decode(state)
    after = glm.decode(glm.finalize(state))
    assert after.steps == 3 and not np.array_equal(after.w, before.w)
    # The partial batch steps with the mean gradient of its single row.
    rw, rb, _, _ = ref_sgd(X[6:], y[6:], before.w, before.b, loss="squared", batch=3, eta0=0.1)
    np.testing.assert_allclose(after.w, rw, rtol=1e-12)
    assert glm.finalize(glm.finalize(state)) == glm.finalize(state)  # flushing twice is a no-op


@settings(max_examples=40, deadline=None)
@given(eta0=st.floats(1e-4, 10.0), power_t=st.floats(0.0, 3.0), t=st.integers(0, 10_000))
def test_invscaling_rate(eta0: float, power_t: float, t: int) -> None:
    # d loss/dz = -1 on the single row, so the first step moves w by exactly the rate.
    init = glm.initialize(1, loss="squared", eta=eta0, invscaling=True, power_t=power_t,
                          t=float(t), fit_intercept=False)
    m = glm.decode(glm.transition(None, [1.0], 1.0, init))
    assert m.w[0] == pytest.approx(eta0 / (t + 1) ** power_t, rel=1e-14)
    assert m.t == t + 1 and m.b == 0.0


def test_constant_rate_ignores_t() -> None:
    init = glm.initialize(1, loss="squared", eta=0.25, invscaling=False, t=99.0,
                          fit_intercept=False)
    assert glm.decode(glm.transition(None, [1.0], 1.0, init)).w[0] == 0.25


def test_l1_soft_threshold_gives_exact_zeros() -> None:
    w = np.array([0.01, -0.02, 0.5, -0.7, 0.03])
    eta, alpha = 0.5, 0.1  # shrink = 0.05
    init = glm.initialize(5, loss="squared", alpha=alpha, l1=1.0, eta=eta, w=w, b=0.0,
                          fit_intercept=False)
    # An all-zero row gives zero gradient: only the soft-threshold acts.
    m = glm.decode(glm.transition(None, [0.0] * 5, 0.0, init))
    np.testing.assert_array_equal(m.w[[0, 1, 4]], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(m.w[[2, 3]], [0.45, -0.65], rtol=1e-15)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), alpha=st.floats(0.05, 5.0))
def test_strong_l1_zeroes_every_coefficient(seed: int, alpha: float) -> None:
    X, y = make_data("squared", n=10, d=4, seed=seed)
    w, b = start(4, seed)
    init = glm.initialize(4, loss="squared", alpha=alpha, l1=1.0, eta=0.1, batch_size=0, w=w,
                          b=b)
    m = epoch(init, X, y)
    rw, _, _, _ = ref_sgd(X, y, w, b, loss="squared", batch=0, eta0=0.1, alpha=alpha, l1=1.0)
    assert ((m.w == 0.0) == (rw == 0.0)).all()
    np.testing.assert_allclose(m.w, rw, rtol=1e-12, atol=1e-15)


# --- standardisation ----------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [0, 1, 4])
def test_standardisation_inside_the_transition(batch_size: int) -> None:
    X, y = make_data("squared", n=30, d=3, seed=8, loc=50.0, scale=20.0)
    X = X * np.array([1.0, 0.01, 300.0])
    mu, sd = X.mean(axis=0), X.std(axis=0)
    y_mean, y_sd = y.mean(), y.std()
    ys = (y - y_mean) / y_sd
    w, b = start(3)
    kw = dict(loss="squared", eta=0.05, batch_size=batch_size, w=w, b=b)
    on_raw = epoch(glm.initialize(3, mu=mu, sd=sd, **kw), X, ys)
    on_scaled = epoch(glm.initialize(3, **kw), (X - mu) / sd, ys)
    np.testing.assert_allclose(on_raw.w, on_scaled.w, rtol=1e-12)
    assert on_raw.b == pytest.approx(on_scaled.b, rel=1e-12)
    assert on_raw.loss_sum == pytest.approx(on_scaled.loss_sum, rel=1e-12)

    coef, intercept = glm.unstandardize(on_raw.w, on_raw.b, mu, sd, y_mean, y_sd)
    original = X @ coef + intercept
    via_standardised = y_mean + y_sd * (((X - mu) / sd) @ on_raw.w + on_raw.b)
    np.testing.assert_allclose(original, via_standardised, rtol=1e-10, atol=1e-10)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), y_mean=st.floats(-100, 100), y_sd=st.floats(0.01, 100))
def test_unstandardize_preserves_predictions(seed: int, y_mean: float, y_sd: float) -> None:
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 6))
    w, b = rng.normal(size=d), float(rng.normal())
    mu, sd = rng.normal(scale=100, size=d), rng.uniform(0.01, 50, size=d)
    X = rng.normal(mu, sd, size=(20, d))
    coef, intercept = glm.unstandardize(w, b, mu, sd, y_mean, y_sd)
    np.testing.assert_allclose(X @ coef + intercept, y_mean + y_sd * (((X - mu) / sd) @ w + b),
                               rtol=1e-9, atol=1e-9 * (1 + abs(y_mean) + y_sd))
    plain = glm.unstandardize(w, b, np.zeros(d), np.ones(d))
    np.testing.assert_array_equal(plain[0], w)
    assert plain[1] == b


# --- unusable rows ------------------------------------------------------------------------------

def test_null_and_non_finite_rows_are_skipped_and_counted() -> None:
    X, y = make_data("squared", n=6, d=2, seed=9)
    w, b = start(2)
    init = glm.initialize(2, loss="squared", eta=0.1, batch_size=2, w=w, b=b)
    bad = [([1.0, 2.0], None), (None, 1.0), ([1.0, 2.0], math.nan), ([1.0, 2.0], math.inf),
           ([math.nan, 1.0], 1.0), ([1.0, -math.inf], 1.0), ([None, 1.0], 1.0)]
    state = None
    rows = list(zip(X.tolist(), y.tolist()))
    for i, (xi, yi) in enumerate(rows):
        state = glm.transition(state, xi, yi, init)
        if i < len(bad):
            state = glm.transition(state, *bad[i], init)
    state = glm.transition(state, *bad[-1], init)
    m = glm.decode(glm.finalize(state))
    clean = epoch(init, X, y)
    assert m.skipped == len(bad) and m.rows == 6
    np.testing.assert_array_equal(m.w, clean.w)
    assert (m.b, m.loss_sum, m.steps) == (clean.b, clean.loss_sum, clean.steps)


def test_only_bad_rows() -> None:
    init = glm.initialize(2, loss="logistic", w=np.array([1.0, 2.0]))
    m = glm.decode(glm.finalize(glm.transition(None, None, None, init)))
    assert (m.rows, m.skipped, m.steps) == (0, 1, 0)
    assert math.isnan(m.mean_loss)


@pytest.mark.parametrize("x", [[1.0], [1.0, 2.0, 3.0, 4.0], []])
def test_wrong_length_raises_invalid_data(x: list[float]) -> None:
    init = glm.initialize(3, loss="squared")
    with pytest.raises(InvalidData) as exc:
        glm.transition(None, x, 1.0, init)
    assert exc.value.sqlstate == "22000"
    assert "3 features" in exc.value.detail and str(len(x)) in exc.value.detail
    assert exc.value.hint


def test_transition_does_not_mutate_its_inputs() -> None:
    init = glm.initialize(2, loss="squared", w=np.array([1.0, 1.0]))
    copy = bytes(init)
    s1 = glm.transition(None, [1.0, 2.0], 0.0, init)
    s1_copy = bytes(s1)
    glm.transition(s1, [3.0, 4.0], 0.0, init)
    assert init == copy and s1 == s1_copy


# --- merge --------------------------------------------------------------------------------------

def test_merge_none_identities() -> None:
    s = glm.transition(None, [1.0], 2.0, glm.initialize(1, loss="squared"))
    assert glm.merge(None, None) is None
    assert glm.merge(s, None) == s
    assert glm.merge(None, s) == s
    assert glm.finalize(None) is None


def test_merge_refuses_different_dimensions() -> None:
    a = glm.initialize(2, loss="squared")
    b = glm.initialize(3, loss="squared")
    with pytest.raises(InvalidData):
        glm.merge(a, b)


def cuts(n: int, parts: int, seed: int) -> list[slice]:
    """Split range(n) into ``parts`` contiguous, possibly empty, pieces."""
    rng = np.random.default_rng(seed)
    edges = np.sort(rng.integers(0, n + 1, size=parts - 1))
    bounds = [0, *edges.tolist(), n]
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 30),
       loss=st.sampled_from(sorted(LOSSES)), perm=st.permutations([0, 1, 2]))
def test_full_batch_merge_is_exact_and_order_independent(seed, n, loss, perm) -> None:
    X, y = make_data(loss, n=n, d=3, seed=seed)
    w, b = start(3, seed)
    init = glm.initialize(3, loss=loss, alpha=0.01, l2=1.0, eta=0.3, batch_size=0, w=w, b=b,
                          invscaling=True, t=2.0)
    single = glm.decode(glm.finalize(feed(init, X, y)))
    parts = [feed(init, X[s], y[s]) for s in cuts(n, 3, seed)]
    a, b_, c = (parts[i] for i in perm)

    assert glm.merge(a, b_) == glm.merge(b_, a)  # commutative, bit for bit
    left = glm.decode(glm.finalize(glm.merge(glm.merge(a, b_), c)))
    right = glm.decode(glm.finalize(glm.merge(a, glm.merge(b_, c))))
    for m in (left, right):
        np.testing.assert_allclose(m.w, single.w, rtol=1e-12, atol=1e-15)
        assert m.b == pytest.approx(single.b, rel=1e-12, abs=1e-15)
        assert (m.rows, m.steps, m.t) == (n, 1, 3.0)
        assert m.loss_sum == pytest.approx(single.loss_sum, rel=1e-12, abs=1e-15)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), na=st.integers(0, 12), nb=st.integers(0, 12),
       k=st.integers(1, 5), loss=st.sampled_from(sorted(LOSSES)))
def test_mini_batch_merge_is_the_row_weighted_average(seed, na, nb, k, loss) -> None:
    X, y = make_data(loss, n=na + nb + 1, d=3, seed=seed)
    w, b = start(3, seed)
    init = glm.initialize(3, loss=loss, eta=0.2, batch_size=k, w=w, b=b, invscaling=True)
    bad_row = (None, 1.0)  # makes every side a real (non-NULL) state, even with no rows
    sa = feed(init, [*X[:na], bad_row[0]], [*y[:na], bad_row[1]])
    sb = feed(init, X[na:na + nb], y[na:na + nb],
              state=glm.transition(None, *bad_row, init))
    fa, fb = glm.decode(glm.finalize(sa)), glm.decode(glm.finalize(sb))
    m = glm.decode(glm.finalize(glm.merge(sa, sb)))
    assert m.rows == na + nb and m.skipped == 2
    assert m.steps == fa.steps + fb.steps == math.ceil(na / k) + math.ceil(nb / k)
    assert m.t == max(fa.t, fb.t)
    assert m.loss_sum == pytest.approx(fa.loss_sum + fb.loss_sum, rel=1e-14)
    if na + nb == 0:
        np.testing.assert_array_equal(m.w, w)
        return
    np.testing.assert_allclose(m.w, (na * fa.w + nb * fb.w) / (na + nb), rtol=1e-12, atol=1e-15)
    assert m.b == pytest.approx((na * fa.b + nb * fb.b) / (na + nb), rel=1e-12, abs=1e-15)
    m2 = glm.decode(glm.finalize(glm.merge(sb, sa)))
    np.testing.assert_allclose(m2.w, m.w, rtol=1e-14, atol=1e-16)
