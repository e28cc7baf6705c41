"""Exact solvers on features far from zero, the RSS of a near-perfect fit, t p-values, messages.

Expected values come from statsmodels (on the centred design, mapped back to the raw features
by the exact triangular transform) and scipy; nothing here is computed by the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from bismarckpy import exact, inference, pack, solvers
from bismarckpy.errors import InvalidData

OFFSETS = [0.0, 1e3, 1e6, 1e9, 1e12]


def block(X: np.ndarray, y: np.ndarray) -> bytes:
    """A float64 packed block (offsets and residuals): label, then the features."""
    return pack.encode(np.column_stack([y, X]), "float64")


def fit(X, y, loss, solver, fit_intercept=True, max_iter=100, tol=1e-8, chunk=53):
    """The training loop's steps without a database: moments, centred passes, solve, stats."""
    d = X.shape[1]
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    center = mu if fit_intercept else None
    ycenter = float(y.mean()) if fit_intercept and loss == "squared" else 0.0
    coords = solvers.Coordinates(np.zeros(d) if fit_intercept else mu, sd, fit_intercept)
    names = ["(intercept)"] * fit_intercept + [f"x{j}" for j in range(d)]
    prob = solvers.Problem(loss, names, coords, np.zeros(d + fit_intercept), tol, max_iter)

    def evaluate(beta, mode, step):
        init = exact.initialize(beta, loss=loss, fit_intercept=fit_intercept, mode=mode,
                                center=center, ycenter=ycenter)
        state = None
        for i in range(0, len(y), chunk):
            part = exact.transition_block(None, block(X[i:i + chunk], y[i:i + chunk]), init)
            state = exact.merge(state, part)
        return exact.decode(state)

    result = (solvers.newton if solver == "newton" else solvers.lbfgs)(evaluate, prob)
    beta, _ = exact.to_original(result.beta, center, ycenter, fit_intercept)
    metrics, fitted = inference.statistics(loss, result.last, coords)
    return result, beta, metrics, fitted


def reference(Xc, y, off, loss):
    """statsmodels on the centred design ``Xc = X − off`` (exact), mapped back to raw ``X``."""
    model = (sm.OLS if loss == "squared" else sm.Logit)(y, sm.add_constant(Xc))
    res = model.fit(disp=0) if loss == "logistic" else model.fit()
    T = np.eye(Xc.shape[1] + 1)
    T[0, 1:] = -off
    beta = T @ res.params
    vcov = T @ res.cov_params() @ T.T
    return res, beta, np.sqrt(np.diag(vcov))


def make(seed, n, off, loss):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 2))
    X = Z + np.array([off, 0.0])  # one column far from zero, one near it
    Xc = X - np.array([off, 0.0])  # exact: X and off agree in their leading digits
    z = 0.4 + 0.8 * Xc[:, 0] - 0.5 * Xc[:, 1]
    if loss == "logistic":
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(float)
    else:
        y = z + rng.normal(size=n)
    return X, Xc, y


@pytest.mark.parametrize("off", OFFSETS)
@pytest.mark.parametrize("loss,solver", [("squared", "newton"), ("squared", "lbfgs"),
                                         ("logistic", "newton"), ("logistic", "lbfgs")])
def test_precision_does_not_depend_on_a_columns_offset(off, loss, solver):
    X, Xc, y = make(7, 400, off, loss)
    result, beta, metrics, fitted = fit(X, y, loss, solver)
    ref, ref_beta, ref_se = reference(Xc, y, np.array([off, 0.0]), loss)
    assert result.converged
    rel = 1e-6 if solver == "lbfgs" else 1e-9  # lbfgs stops at a gradient tolerance
    np.testing.assert_allclose(beta[1:], ref_beta[1:], rtol=rel)
    np.testing.assert_allclose(beta[0], ref_beta[0], rtol=rel, atol=rel * abs(off))
    np.testing.assert_allclose(fitted["std_err"], ref_se, rtol=1e-6)
    np.testing.assert_allclose(fitted["p_value"][1:], ref.pvalues[1:], rtol=1e-5)
    assert metrics["log_likelihood"] == pytest.approx(ref.llf, rel=1e-9)
    if loss == "squared":
        assert metrics["sigma"] == pytest.approx(np.sqrt(ref.scale), rel=1e-8)
        assert metrics["r2"] == pytest.approx(ref.rsquared, rel=1e-8)


@pytest.mark.parametrize("off", [1e6, 1e9, 1e12])
def test_labels_far_from_zero(off):
    """Squared loss with labels at an offset: the RSS and R² keep the labels' spread."""
    X, Xc, y = make(3, 300, 0.0, "squared")
    y_off = y + off
    _, beta, metrics, _ = fit(X, y_off, "squared", "newton")
    ref = sm.OLS(y_off - off, sm.add_constant(X)).fit()  # y_off − off is exact
    np.testing.assert_allclose(beta[1:], ref.params[1:], rtol=1e-6)
    assert metrics["r2"] == pytest.approx(ref.rsquared, rel=1e-6)
    assert metrics["sigma"] == pytest.approx(np.sqrt(ref.scale), rel=1e-6)


@pytest.mark.parametrize("off", OFFSETS)
def test_constant_is_relative_to_the_columns_scale(off):
    X, _, y = make(1, 100, off, "squared")
    fit(X, y, "squared", "newton")  # sd 1 at any offset is a column that varies
    Xk = np.column_stack([X, np.full(100, off + 1.0)])  # exactly constant: refused
    with pytest.raises(InvalidData, match="constant feature columns: x2"):
        fit(Xk, y, "squared", "newton")


def test_rss_far_below_tss():
    """x = 0, 1, 2 and y = 1 + 2x + tiny noise: statsmodels' σ, standard errors and llf."""
    X = np.array([[0.0], [1.0], [2.0]])
    y = 1.0 + 2.0 * X[:, 0] + np.array([1e-9, -2e-9, 1e-9])
    ref = sm.OLS(y, sm.add_constant(X)).fit()
    _, beta, metrics, fitted = fit(X, y, "squared", "newton")
    assert metrics["sigma"] == pytest.approx(np.sqrt(ref.scale), rel=1e-5)
    np.testing.assert_allclose(fitted["std_err"], ref.bse, rtol=1e-5)
    assert metrics["log_likelihood"] == pytest.approx(ref.llf, rel=1e-6)
    np.testing.assert_allclose(fitted["p_value"], ref.pvalues, rtol=1e-4)


@pytest.mark.parametrize("df", [1, 2, 5, 30, 1000, 1e4, 1e5, 1e6, 1e7, 1e9, 1e12, 1e15])
@pytest.mark.parametrize("t", [0.001, 0.5, 1.0, 1.96, 3.0, 5.0, 10.0, 30.0])
def test_t_p_values_match_scipy_at_any_df(df, t):
    assert inference.two_sided_p(t, df) == pytest.approx(2.0 * stats.t.sf(t, df), rel=1e-9)
    assert inference.two_sided_p(-t, df) == pytest.approx(2.0 * stats.t.sf(t, df), rel=1e-9)


@pytest.mark.parametrize("loss", ["squared", "logistic"])
@pytest.mark.parametrize("n,d", [(1, 1), (2, 2), (3, 4)])
def test_too_few_rows_are_named_as_such(loss, n, d):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(n, d)), (np.arange(n) % 2).astype(float)
    with pytest.raises(InvalidData, match=rf"too few rows \({n}\) for {d + 1} coefficients"):
        fit(X, y, loss, "newton")


def test_all_zero_column_without_intercept():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=50), np.zeros(50)])
    y = X[:, 0] + rng.normal(size=50)
    with pytest.raises(InvalidData, match="all-zero feature columns: x1") as info:
        fit(X, y, "squared", "newton", fit_intercept=False)
    assert "intercept cannot" not in str(info.value.detail)


def test_to_original_is_the_triangular_transform():
    rng = np.random.default_rng(2)
    beta, c = rng.normal(size=3), np.array([1e9, -3.0])
    V = np.cov(rng.normal(size=(3, 10)))
    raw, Vr = exact.to_original(beta, c, 5.0, True, V)
    assert raw[0] == pytest.approx(5.0 + beta[0] - c @ beta[1:])
    np.testing.assert_array_equal(raw[1:], beta[1:])
    T = np.array([[1.0, -c[0], -c[1]], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(Vr, T @ V @ T.T)
    with pytest.raises(ValueError):
        exact.initialize(np.zeros(2), loss="squared", fit_intercept=False, mode=exact.HESSIAN,
                         center=np.ones(2))
