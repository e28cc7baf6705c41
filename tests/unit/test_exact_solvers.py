"""Exact solvers without a database: the pass aggregate, Newton, L-BFGS and the statistics.

Expectations come from finite differences, statsmodels (``Logit``/``OLS``), scikit-learn
(L2-penalised fits) and SciPy (distributions); MADlib's published values are checked end to end
in ``tests/test_exact.py`` (end to end).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from bismarckpy import exact, inference, pack, solvers
from bismarckpy.errors import InvalidData

SCALES = np.array([1.0, 10.0, 100.0, 0.1, 5.0])
SHIFTS = np.array([0.0, 50.0, -3.0, 1.0, 2.0])


def data(seed: int, n: int, loss: str, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Features on very different scales and offsets; labels from a known model."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * SCALES[:d] + SHIFTS[:d]
    w = rng.normal(size=d) / SCALES[:d]
    z = (X - SHIFTS[:d]) @ w + 0.3
    if loss == "logistic":
        return X, (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(float)
    return X, z + rng.normal(size=n)


def block(X: np.ndarray, y: np.ndarray, dtype: str = "float64") -> bytes:
    """A packed block (:mod:`bismarckpy.pack`: offsets and residuals) of label, then features."""
    return pack.encode(np.column_stack([y, X]).astype(np.float64), dtype)


def run_pass(X, y, beta, loss, fit_intercept, mode, chunk=97, dtype="float64",
             class_weight=(1.0, 1.0), center=None) -> exact.Pass:
    """One pass over packed blocks of ``chunk`` rows, partial states merged in order."""
    init = exact.initialize(beta, loss=loss, fit_intercept=fit_intercept, mode=mode,
                            itemsize=pack.DTYPE_CODES[dtype], class_weight=class_weight,
                            center=center)
    state = None
    for i in range(0, len(y), chunk):
        state = exact.merge(state, exact.transition_block(
            None, block(X[i:i + chunk], y[i:i + chunk], dtype), init))
    assert state is not None
    return exact.decode(state)


def problem(X, loss, fit_intercept, penalty=None, tol=1e-8) -> solvers.Problem:
    d = X.shape[1]
    names = ["intercept"] * fit_intercept + [f"x{j}" for j in range(d)]
    coords = solvers.Coordinates(X.mean(axis=0), X.std(axis=0), fit_intercept)
    pen = np.zeros(d + fit_intercept) if penalty is None else penalty
    return solvers.Problem(loss, names, coords, pen, tol, 100)


def evaluator(X, y, loss, fit_intercept, counter=None, class_weight=(1.0, 1.0)):
    def evaluate(beta, mode, step):
        if counter is not None:
            counter.append(step)
        return run_pass(X, y, beta, loss, fit_intercept, mode, class_weight=class_weight)
    return evaluate


def design(X, fit_intercept):
    return sm.add_constant(X, has_constant="add") if fit_intercept else X


# -- the aggregate -----------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), loss=st.sampled_from(["logistic", "squared"]),
       fit_intercept=st.booleans())
def test_gradient_and_hessian_match_finite_differences(seed, loss, fit_intercept):
    X, y = data(seed, 60, loss, d=3)
    X = (X - SHIFTS[:3]) / SCALES[:3]  # unit scale: central differences are accurate
    rng = np.random.default_rng(seed + 1)
    beta = rng.normal(size=3 + fit_intercept) * 0.5
    P = run_pass(X, y, beta, loss, fit_intercept, exact.HESSIAN)
    h = 1e-5
    for j in range(beta.size):
        e = np.zeros_like(beta)
        e[j] = h
        up = run_pass(X, y, beta + e, loss, fit_intercept, exact.HESSIAN)
        down = run_pass(X, y, beta - e, loss, fit_intercept, exact.HESSIAN)
        assert P.grad[j] == pytest.approx((up.loss_sum - down.loss_sum) / (2 * h), rel=1e-6,
                                          abs=1e-6)
        np.testing.assert_allclose(P.hess[:, j], (up.grad - down.grad) / (2 * h), rtol=1e-5,
                                   atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), loss=st.sampled_from(["logistic", "squared"]),
       cuts=st.lists(st.integers(1, 79), max_size=6), order=st.randoms(use_true_random=False))
def test_merge_is_an_exact_sum_in_any_order(seed, loss, cuts, order):
    X, y = data(seed, 80, loss)
    beta = np.random.default_rng(seed).normal(size=6) * 0.01
    whole = run_pass(X, y, beta, loss, True, exact.HESSIAN, chunk=80)
    init = exact.initialize(beta, loss=loss, fit_intercept=True, mode=exact.HESSIAN)
    bounds = [0, *sorted(set(cuts)), 80]
    parts = [exact.transition_block(None, block(X[a:b], y[a:b]), init)
             for a, b in zip(bounds, bounds[1:])]
    order.shuffle(parts)
    state = None
    for part in parts:
        state = exact.merge(part, state) if order.random() < 0.5 else exact.merge(state, part)
    merged = exact.decode(state)
    assert merged.rows == whole.rows == 80
    assert merged.parts == len(parts)
    assert merged.loss_sum == pytest.approx(whole.loss_sum, rel=1e-12)
    np.testing.assert_allclose(merged.grad, whole.grad, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(merged.hess, whole.hess, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_rows_and_blocks_give_the_same_sums(loss):
    X, y = data(3, 50, loss)
    beta = np.linspace(-0.01, 0.01, 6)
    init = exact.initialize(beta, loss=loss, fit_intercept=True, mode=exact.HESSIAN)
    state = None
    for xi, yi in zip(X, y):
        raw = np.array([1, 0, 701, 5, 1], dtype="<i4").tobytes() + xi.astype("<f8").tobytes()
        state = exact.transition(state, raw, float(yi), init)
    rows = exact.decode(state)
    blocks = run_pass(X, y, beta, loss, True, exact.HESSIAN)
    assert rows.loss_sum == pytest.approx(blocks.loss_sum, rel=1e-12)
    np.testing.assert_allclose(rows.hess, blocks.hess, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), first=st.integers(0, 60), size=st.integers(0, 60),
       to_end=st.booleans())
def test_a_block_row_range_sums_exactly_those_rows(seed, first, size, to_end):
    X, y = data(seed, 60, "logistic")
    beta = np.random.default_rng(seed).normal(size=6) * 0.1
    init = exact.initialize(beta, loss="logistic", fit_intercept=True, mode=exact.HESSIAN)
    stop = None if to_end else min(first + size, 60)
    part = exact.decode(exact.transition_block(None, block(X, y), init, first, stop))
    want = run_pass(X[first:stop], y[first:stop], beta, "logistic", True, exact.HESSIAN) \
        if len(y[first:stop]) else None
    assert part.rows == len(y[first:stop])
    if want is not None:
        assert part.loss_sum == pytest.approx(want.loss_sum, rel=1e-12)
        np.testing.assert_allclose(part.hess, want.hess, rtol=1e-11)


@pytest.mark.parametrize("centre", [0.0, 1e4, 1e8, -3e9])
def test_float32_blocks_keep_columns_far_from_zero(centre):
    """Offsets + residuals: a float32 block of columns at 1e8 with a spread of 1 gives the
    float64 fit (raw float32 values would round every row of such a column to the same value)."""
    X, y = data(21, 600, "squared", d=3)
    X = X / SCALES[:3] + centre  # spread ~1 around the centre
    X32 = X.copy()
    X32[:] = X - X.min(axis=0)  # what the block can hold exactly: residuals in float32
    X32 = X32.astype(np.float32).astype(np.float64) + X.min(axis=0)
    mu = X.mean(axis=0)
    coords = solvers.Coordinates(np.zeros(3), X.std(axis=0), True)
    prob = solvers.Problem("squared", ["b", "x0", "x1", "x2"], coords, np.zeros(4), 1e-8, 100)
    fit = solvers.newton(lambda b, m, s: run_pass(X, y, b, "squared", True, m, dtype="float32",
                                                  center=mu), prob)
    ref = sm.OLS(y, design(X32 - mu, True)).fit()  # statsmodels itself needs the centring
    np.testing.assert_allclose(fit.beta[1:], ref.params[1:], rtol=1e-6)
    beta = exact.uncentre(fit.beta, mu, True)
    scale = abs(ref.params[0]) + np.abs(mu) @ np.abs(ref.params[1:])  # as the slopes' rtol
    assert beta[0] == pytest.approx(ref.params[0] - mu @ ref.params[1:], abs=1e-6 * scale)
    _, per = inference.statistics("squared", fit.last, coords)
    np.testing.assert_allclose(per["std_err"][1:], ref.bse[1:], rtol=1e-5)


@pytest.mark.parametrize("weights", [(1.0, 4.0), (0.3, 1.0), (2.0, 2.0)])
@pytest.mark.parametrize("solver", [solvers.newton, solvers.lbfgs])
def test_class_weights_fit_scikit_learns_weighted_logistic_regression(weights, solver):
    """class_weight in the pass: the minimiser of Σ w_class(i)·loss_i, as scikit-learn's
    LogisticRegression(class_weight=..., penalty=None); statistics of the weighted likelihood
    (statsmodels' GLM with the weights as frequency weights)."""
    from sklearn.linear_model import LogisticRegression

    X, y = data(13, 800, "logistic", d=3)
    prob = problem(X, "logistic", True)
    fit = solver(evaluator(X, y, "logistic", True, class_weight=weights), prob)
    ref = LogisticRegression(C=np.inf, class_weight={0.0: weights[0], 1.0: weights[1]},
                             tol=1e-12, max_iter=10_000).fit(X, y)
    want = np.concatenate([ref.intercept_, ref.coef_[0]])
    np.testing.assert_allclose(fit.beta, want, rtol=1e-5, atol=1e-7)
    freq = np.where(y > 0, weights[1], weights[0])
    glm = sm.GLM(y, design(X, True), family=sm.families.Binomial(), freq_weights=freq).fit(
        tol=1e-14)
    _, per = inference.statistics("logistic", fit.last, prob.coords)
    np.testing.assert_allclose(per["std_err"], glm.bse, rtol=1e-4)
    assert -fit.last.loss_sum == pytest.approx(glm.llf, rel=1e-8)


def test_rows_with_nulls_or_non_finite_values_are_skipped_and_counted():
    init = exact.initialize(np.zeros(3), loss="squared", fit_intercept=True, mode=exact.GRADIENT)
    s = exact.transition(None, [1.0, 2.0], 3.0, init)
    for x, y in [([1.0, None], 1.0), ([1.0, math.nan], 1.0), ([1.0, 2.0], None),
                 ([1.0, 2.0], math.inf), (None, 1.0)]:
        s = exact.transition(s, x, y, init)
    P = exact.decode(s)
    assert (P.rows, P.skipped) == (1, 5)
    with pytest.raises(InvalidData, match="wrong length"):
        exact.transition(s, [1.0], 1.0, init)


def test_decode_refuses_foreign_bytes():
    for junk in (b"", b"1234567", np.zeros(30).tobytes()):
        with pytest.raises(InvalidData):
            exact.decode(junk)


# -- solvers against statsmodels ---------------------------------------------------------------

@pytest.mark.parametrize("loss", ["logistic", "squared"])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("solver", [solvers.newton, solvers.lbfgs])
def test_fit_and_statistics_match_statsmodels(loss, fit_intercept, solver):
    X, y = data(11, 1500, loss)
    ref_model = (sm.Logit if loss == "logistic" else sm.OLS)(y, design(X, fit_intercept))
    ref = (ref_model.fit(disp=0, method="newton", tol=1e-14) if loss == "logistic"
           else ref_model.fit())
    prob = problem(X, loss, fit_intercept)
    fit = solver(evaluator(X, y, loss, fit_intercept), prob)
    assert fit.converged
    coef_tol = 1e-7 if solver is solvers.newton else 1e-5
    assert np.linalg.norm(fit.beta - ref.params) <= coef_tol * np.linalg.norm(ref.params)
    metrics, per = inference.statistics(loss, fit.last, prob.coords)
    np.testing.assert_allclose(per["std_err"], ref.bse, rtol=1e-4)
    np.testing.assert_allclose(per["statistic"], ref.tvalues, rtol=1e-4)
    np.testing.assert_allclose(per["p_value"], ref.pvalues, rtol=1e-3, atol=1e-12)
    np.testing.assert_allclose(per["vcov"], ref.cov_params(), rtol=1e-4,
                               atol=1e-8 * np.abs(ref.cov_params()).max())
    assert metrics["log_likelihood"] == pytest.approx(ref.llf, rel=1e-9)
    assert metrics["aic"] == pytest.approx(ref.aic, rel=1e-9)
    assert metrics["bic"] == pytest.approx(ref.bic, rel=1e-9)
    if loss == "squared":
        assert metrics["r2"] == pytest.approx(ref.rsquared, rel=1e-9)
        assert metrics["adj_r2"] == pytest.approx(ref.rsquared_adj, rel=1e-9)
        assert metrics["condition_number"] == pytest.approx(ref.condition_number, rel=1e-6)


def test_squared_loss_newton_is_two_passes():
    """One pass for the normal equations, one at the minimiser for its loss (the RSS)."""
    X, y = data(5, 300, "squared")
    calls: list[float] = []
    solvers.newton(evaluator(X, y, "squared", True, calls), problem(X, "squared", True))
    assert len(calls) == 2


@pytest.mark.parametrize("loss", ["logistic", "squared"])
@pytest.mark.parametrize("solver", [solvers.newton, solvers.lbfgs])
def test_l2_penalty_matches_scikit_learn(loss, solver):
    from sklearn.linear_model import LogisticRegression, Ridge

    X, y = data(8, 400, loss)
    n, alpha = len(y), 0.05
    # mean loss + alpha/2 |w|² on unstandardised coefficients, intercept free
    pen = np.concatenate([[0.0], np.full(X.shape[1], alpha)])
    fit = solver(evaluator(X, y, loss, True), problem(X, loss, True, pen, tol=1e-10))
    if loss == "logistic":
        ref = LogisticRegression(C=1.0 / (n * alpha), tol=1e-12, max_iter=10_000).fit(X, y)
        want = np.concatenate([ref.intercept_, ref.coef_[0]])
    else:
        ref = Ridge(alpha=n * alpha, tol=1e-12).fit(X, y)
        want = np.concatenate([[ref.intercept_], ref.coef_])
    np.testing.assert_allclose(fit.beta, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", [solvers.newton, solvers.lbfgs])
@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_collinear_columns_are_named(solver, loss):
    X, y = data(2, 200, loss, d=4)
    X = np.column_stack([X, 2.0 * X[:, 1] - X[:, 3]])  # x4 = 2 x1 - x3
    with pytest.raises(InvalidData, match="collinear feature columns: x1, x3, x4"):
        solver(evaluator(X, y, loss, True), problem(X, loss, True))


@pytest.mark.parametrize("solver", [solvers.newton, solvers.lbfgs])
def test_constant_column_is_named(solver):
    X, y = data(2, 200, "logistic", d=3)
    X[:, 1] = 7.0
    with pytest.raises(InvalidData, match="constant feature columns: x1"):
        solver(evaluator(X, y, "logistic", True), problem(X, "logistic", True))


@pytest.mark.parametrize("solver", [solvers.newton, solvers.lbfgs])
def test_separated_classes_are_named(solver):
    X, _ = data(4, 200, "logistic", d=3)
    y = (X[:, 2] > -3.0).astype(float)  # x2 separates the classes perfectly
    with pytest.raises(InvalidData, match=r"separated \(perfectly or quasi-\) by x2"):
        solver(evaluator(X, y, "logistic", True), problem(X, "logistic", True))


def test_separation_is_fine_with_an_l2_penalty():
    X, _ = data(4, 200, "logistic", d=3)
    y = (X[:, 2] > -3.0).astype(float)
    pen = np.array([0.0, 0.01, 0.01, 0.01])
    fit = solvers.newton(evaluator(X, y, "logistic", True), problem(X, "logistic", True, pen))
    assert fit.converged and np.all(np.isfinite(fit.beta))


# -- coordinates and p-values ------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), fit_intercept=st.booleans())
def test_coordinates_round_trip_and_gradient_is_the_transpose(seed, fit_intercept):
    rng = np.random.default_rng(seed)
    c = solvers.Coordinates(rng.normal(size=4) * 10, rng.uniform(0.1, 10, size=4),
                            fit_intercept)
    theta = rng.normal(size=4 + fit_intercept)
    np.testing.assert_allclose(c.to_theta(c.to_beta(theta)), theta, rtol=1e-12, atol=1e-12)
    A = c.matrix()
    np.testing.assert_allclose(c.to_beta(theta), A @ theta, rtol=1e-12, atol=1e-12)
    g = rng.normal(size=theta.size)
    np.testing.assert_allclose(c.gradient(g), A.T @ g, rtol=1e-12, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(t=st.floats(1e-3, 60), sign=st.sampled_from([-1, 1]), df=st.integers(1, 100_000))
def test_student_t_p_values_match_scipy(t, sign, df):
    # (SciPy's t.sf loses digits for |t| < 1e-3; the closed forms below cover that range.)
    want = 2.0 * sps.t.sf(t, df)
    assert inference.two_sided_p(sign * t, df) == pytest.approx(want, rel=1e-9, abs=1e-300)


@settings(max_examples=100, deadline=None)
@given(t=st.floats(0, 1e6))
def test_student_t_p_values_match_closed_forms(t):
    # df = 1 is the Cauchy distribution; df = 2 has P(|T| > t) = 1 - t / sqrt(2 + t²).
    assert inference.two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t),
                                                        rel=1e-9)
    assert inference.two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(z=st.floats(-30, 30))
def test_normal_p_values_match_scipy(z):
    assert inference.two_sided_p(z, None) == pytest.approx(2.0 * sps.norm.sf(abs(z)), rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(a=st.floats(0.05, 500), b=st.floats(0.05, 500), x=st.floats(0, 1))
def test_incomplete_beta_matches_scipy(a, b, x):
    from scipy.special import betainc

    assert inference.betainc_regularized(a, b, x) == pytest.approx(betainc(a, b, x), rel=1e-9,
                                                                    abs=1e-15)
