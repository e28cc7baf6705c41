"""Defaults that are fast and good (issue 11 item 1), end to end on a real server.

A user who passes only source, label and features gets a model whose log-loss is no worse
than what scikit-learn's ``SGDClassifier`` defaults typically reach when fitted to convergence
(the median over five ``random_state`` values: one SGD run is itself a random draw, spread
0.614–0.624 on the correlated case below) and, on well-conditioned data, within two epochs and
within 1% of scikit-learn's exact fit of the same objective (``LogisticRegression(lbfgs,
C = 1 / (alpha · n))``; R² of numpy's least squares for regression): the expectations.
Ill-conditioned data (correlation 0.9) gets the defaults' own stopping rule, not two epochs:
two epochs of first-order steps land at 0.622–0.624 there, within scikit-learn's spread but
above its median.
``batch_size => 1`` still means per-row SGD with eta0 0.1.
"""

from __future__ import annotations

import numpy as np
import pytest
from psycopg import sql
from reference_data import load_array_table, load_table
from sklearn.linear_model import LogisticRegression, SGDClassifier, SGDRegressor

from bismarckpy.schedule import auto_batch_size

ALPHA = 1e-4  # the default penalty strength (l2)


def _data(n: int, d: int, corr: float, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Correlated features far from zero on different scales; labels from a logistic model."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 1))
    X = np.sqrt(1 - corr) * rng.normal(size=(n, d)) + np.sqrt(corr) * Z
    X = X * np.geomspace(0.01, 100, d) + np.linspace(-1e3, 1e3, d)
    w = rng.normal(size=d) * 1.5
    z = ((X - X.mean(0)) / X.std(0)) @ w / np.sqrt(d) + 0.3
    return X, (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)


def _sklearn_log_loss(X: np.ndarray, y: np.ndarray) -> float:
    Xs = (X - X.mean(0)) / X.std(0)
    clf = LogisticRegression(C=1 / (ALPHA * len(y)), tol=1e-10, max_iter=10_000).fit(Xs, y)
    p = np.clip(clf.predict_proba(Xs)[:, 1], 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def train(conn, table: str, label: str, features: list[str], model: str, **params) -> None:
    """bismarck.train_glm through SQL with only the given parameters (the rest: defaults)."""
    params.setdefault("seed", 11)
    types = {int: "integer", float: "float8", str: "text", bool: "boolean"}
    args = sql.SQL("").join(sql.SQL(", {} => {}").format(
        sql.Identifier(k), sql.SQL("%s::" + types[type(v)])) for k, v in params.items())
    conn.execute(sql.SQL("SELECT * FROM bismarck.train_glm(%s, %s, %s, %s{})").format(args),
                 [table, label, features, model, *params.values()])


def _sgd_defaults_log_loss(X: np.ndarray, y: np.ndarray) -> float:
    """scikit-learn's SGDClassifier with its defaults (log loss), to convergence: the median
    log-loss over random_state 0..4 (what its defaults typically reach, not one draw)."""
    Xs = (X - X.mean(0)) / X.std(0)
    losses = []
    for state in range(5):
        clf = SGDClassifier(loss="log_loss", random_state=state).fit(Xs, y)
        p = np.clip(clf.predict_proba(Xs)[:, 1], 1e-15, 1 - 1e-15)
        losses.append(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))
    return float(np.median(losses))


def _params(conn, model: str) -> dict:
    return conn.execute("SELECT params FROM bismarck.models WHERE model_name = %s "
                        "ORDER BY version DESC LIMIT 1", [model]).fetchone()[0]


CASES = {  # name: (rows, features, correlation, layout, extra options)
    "packed, uncorrelated": (20_000, 10, 0.0, "columns", {}),
    "packed, correlated 0.9": (20_000, 10, 0.9, "columns", {}),
    "rows path (shuffle always)": (8_000, 6, 0.5, "columns", {"shuffle": "always"}),
    "array column, parallel": (20_000, 20, 0.3, "array", {"parallel": 2}),
    "validation held out": (20_000, 10, 0.5, "columns", {"validation_fraction": 0.2}),
}


@pytest.mark.parametrize("case", CASES)
def test_defaults_reach_sklearns_log_loss(conn, case: str) -> None:
    n, d, corr, layout, extra = CASES[case]
    X, y = _data(n, d, corr)
    name = f"dflt_{abs(hash(case)) % 10**6}"
    if layout == "array":
        load_array_table(conn, name, X, y)
        features: list[str] | str = "x"
    else:
        features = [f"x{i}" for i in range(d)]
        load_table(conn, name, features, X, y)
    model = name + "_m"
    cap = {"max_epochs": 2} if corr <= 0.5 else {}  # ill-conditioned: the defaults' own stop
    train(conn, name, "y", features if isinstance(features, list) else [features], model,
          **cap, **extra)
    got = dict(conn.execute("SELECT * FROM bismarck.evaluate(%s, %s)", [model, name]))
    assert got["log_loss"] <= _sgd_defaults_log_loss(X, y)
    if corr <= 0.5:  # condition number of the standardised features ≤ ~11
        want = _sklearn_log_loss(X, y)
        assert got["log_loss"] <= want * 1.01, (got["log_loss"], want)
    p = _params(conn, model)
    rows = conn.execute("SELECT (metrics->>'rows')::int FROM bismarck.models "
                        "WHERE model_name = %s", [model]).fetchone()[0]
    assert p["batch_size"] == auto_batch_size(rows, 512) > 1
    assert p["eta0"] > 0.1  # resolved from the data, not the per-row default


def test_squared_loss_defaults_reach_least_squares_r2(conn) -> None:
    rng = np.random.default_rng(8)
    n, d = 20_000, 8
    X = rng.normal(size=(n, d)) * np.geomspace(0.1, 10, d) + 50.0
    y = X @ rng.normal(size=d) + rng.normal(size=n) * 3.0
    cols = [f"x{i}" for i in range(d)]
    load_table(conn, "dflt_sq", cols, X, y)
    train(conn, "dflt_sq", "y", cols, "dflt_sq_m", loss="squared",
          max_epochs=2)
    A = np.hstack([X, np.ones((n, 1))])
    resid = y - A @ np.linalg.lstsq(A, y, rcond=None)[0]
    want = 1 - resid @ resid / ((y - y.mean()) @ (y - y.mean()))
    got = dict(conn.execute("SELECT * FROM bismarck.evaluate(%s, %s)",
                            ["dflt_sq_m", "dflt_sq"]))["r2"]
    assert got >= want - 0.01 * (1 - want), (got, want)


def test_squared_loss_defaults_on_wide_few_rows_match_sgdregressor(conn) -> None:
    """2,100 × 200 Gaussian rows: the defaults resolve batch_size 2, and with invscaling's
    classifier exponent 0.5 the rate decayed so fast that 100 epochs stopped at held-out MSE
    1.37 (unconverged), where SGDRegressor's defaults reach 1.15 and least squares 1.14."""
    rng = np.random.default_rng(1)
    n, d = 2100, 200
    X = rng.normal(size=(2 * n, d))
    y = X @ rng.normal(size=d) + rng.normal(size=2 * n)
    load_array_table(conn, "dflt_wide", X[:n], y[:n])
    load_array_table(conn, "dflt_wide_test", X[n:], y[n:])
    train(conn, "dflt_wide", "y", ["x"], "dflt_wide_m", loss="squared")
    p = _params(conn, "dflt_wide_m")
    assert p["batch_size"] == 2 and p["power_t"] == 0.25
    rmse = dict(conn.execute("SELECT * FROM bismarck.evaluate(%s, %s)",
                             ["dflt_wide_m", "dflt_wide_test"]))["rmse"]
    theirs = np.median([np.mean((SGDRegressor(random_state=s).fit(X[:n], y[:n]).predict(X[n:])
                                 - y[n:]) ** 2) for s in range(3)])
    assert rmse**2 <= theirs, (rmse**2, theirs)


@pytest.mark.parametrize("path", ["packed", "rows"])
def test_batch_size_one_is_still_per_row_sgd(conn, path: str) -> None:
    X, y = _data(3000, 4, 0.0)
    cols = [f"x{i}" for i in range(4)]
    load_table(conn, "dflt_row", cols, X, y)
    train(conn, "dflt_row", "y", cols, "dflt_row_m", batch_size=1,
          max_epochs=2, packed=path == "packed")
    p = _params(conn, "dflt_row_m")
    assert p["batch_size"] == 1 and p["eta0"] == 0.1
    # small tables take batches of 2 by default, with eta0 measured on the data
    load_table(conn, "dflt_small", cols, X[:400], y[:400])
    train(conn, "dflt_small", "y", cols, "dflt_small_m", max_epochs=2)
    p = _params(conn, "dflt_small_m")
    assert p["batch_size"] == 2 and p["eta0"] != 0.1


@pytest.mark.parametrize("options", [{}, {"standardize": False},
                                     {"shuffle": "always", "packed": False}],
                         ids=["packed", "unstandardized", "rows"])
def test_squared_loss_convergence_is_free_of_the_labels_units(conn, options: dict) -> None:
    """tol is judged in the standardised label's units: the same rows with the label
    multiplied by 1e4 and by 1e-3 stop at the same epoch, both converged (judged in the
    label's own units, the first ran all 100 epochs unconverged and the second stopped at
    epoch 6), while the reported losses stay in the label's units (1e14 times apart)."""
    rng = np.random.default_rng(12)
    X = rng.normal(size=(500, 2))
    y = X @ [3.0, -2.0] + 0.5 * rng.normal(size=500) + 7.0
    got = {}
    for scale in (1e4, 1e-3):
        table = f"dflt_units_{'big' if scale > 1 else 'small'}"
        load_table(conn, table, ["a", "b"], X, y * scale)
        train(conn, table, "y", ["a", "b"], table + "_m", loss="squared", **options)
        got[scale] = conn.execute(
            "SELECT (metrics->>'epochs')::int, (metrics->>'converged')::bool, "
            "(metrics->>'train_loss')::float8 FROM bismarck.models WHERE model_name = %s "
            "ORDER BY version DESC LIMIT 1", [table + "_m"]).fetchone()
    (big_epochs, big_ok, big_loss), (small_epochs, small_ok, small_loss) = got.values()
    assert big_ok and small_ok and big_epochs == small_epochs < 100, got
    assert big_loss / small_loss == pytest.approx(1e14, rel=1e-3), got
