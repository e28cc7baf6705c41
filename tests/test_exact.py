"""Exact solvers end to end: MADlib's published fits, statsmodels on real data, bad input.

Inside the server (``bismarck.train_glm(..., solver => ...)``) and outside (the controller),
over rows and packed blocks, serial and with parallel workers. Expectations are MADlib's
published values (``madlib_data``) and statsmodels fits computed here.
"""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
import statsmodels.api as sm
from cases import cases
from madlib_data import (
    CRIME_COEF,
    CRIME_FEATURES,
    CRIME_LOG_LIKELIHOOD,
    GRAD_COEF,
    GRAD_LOG_LIKELIHOOD,
    HOUSES2_COEF,
    HOUSES2_P,
    HOUSES_COEF,
    HOUSES_CONDITION,
    HOUSES_P,
    HOUSES_R2,
    HOUSES_STD_ERR,
    HOUSES_T,
    PATIENTS_COEF,
    PATIENTS_CONDITION,
    PATIENTS_LOG_LIKELIHOOD,
    crime,
    grad_school,
    load,
    relative_error,
)
from reference_data import breast_cancer, diabetes, load_table

from bismarck_controller import training

SOLVERS = ["newton", "lbfgs"]


@pytest.fixture(scope="module")
def madlib(dsn: str) -> str:
    with psycopg.connect(dsn) as c:
        load(c)
        c.execute("CREATE OR REPLACE VIEW crime_v AS SELECT (crimerat >= 110)::int AS high, * "
                  "FROM crime")
        c.execute("CREATE OR REPLACE VIEW grad_v AS SELECT admit, gre, gpa, "
                  "(rank = 2)::int AS rank2, (rank = 3)::int AS rank3, (rank = 4)::int AS rank4 "
                  "FROM grad_school")
        c.commit()
    return dsn


def _logit(y, X):
    """statsmodels' maximum-likelihood logistic fit with an intercept, run to convergence."""
    return sm.Logit(y, sm.add_constant(np.asarray(X, dtype=float))).fit(
        disp=0, method="newton", tol=1e-10, maxiter=100)


def _train(conn: psycopg.Connection, source: str, label: str, features: list[str], name: str,
           **options: object) -> tuple:
    args = ", ".join(f"{k} => %s" for k in options)
    return conn.execute(
        f"SELECT version, epochs, converged FROM bismarck.train_glm(%s, %s, %s, %s"
        f"{', ' + args if args else ''})",
        [source, label, features, name, *options.values()]).fetchone()


def _coefficients(conn: psycopg.Connection, name: str) -> dict[str, np.ndarray]:
    rows = conn.execute("SELECT feature, coef, std_err, statistic, p_value "
                        "FROM bismarck.coefficients(%s)", [name]).fetchall()
    cols = list(zip(*rows))
    return {"feature": list(cols[0]), **{k: np.array(v, dtype=float) for k, v in
                                         zip(["coef", "std_err", "statistic", "p_value"],
                                             cols[1:])}}


def _metrics(conn: psycopg.Connection, name: str) -> dict:
    return conn.execute("SELECT metrics FROM bismarck.models WHERE model_name = %s "
                        "ORDER BY version DESC LIMIT 1", [name]).fetchone()[0]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("packed", [False, True])
def test_patients_with_null_rows_match_madlib(madlib, conn, solver, packed):
    name = f"patients_{solver}_{packed}"
    _, _, converged = _train(conn, "patients", "second_attack", ["treatment", "trait_anxiety"],
                             name, solver=solver, packed=packed)
    assert converged
    c = _coefficients(conn, name)
    assert c["feature"] == ["(intercept)", "treatment", "trait_anxiety"]
    assert relative_error(c["coef"], PATIENTS_COEF) < 1e-6
    y = [1] * 10 + [0] * 10
    tr = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    ta = [70, 80, 50, 60, 40, 65, 75, 80, 70, 60, 65, 50, 45, 35, 40, 50, 55, 45, 50, 60]
    ref = _logit(y, np.column_stack([tr, ta]).astype(float))
    np.testing.assert_allclose(c["std_err"], ref.bse, rtol=1e-4)
    np.testing.assert_allclose(c["statistic"], ref.tvalues, rtol=1e-4)
    np.testing.assert_allclose(c["p_value"], ref.pvalues, rtol=1e-4)
    m = _metrics(conn, name)
    assert m["rows"] == 20 and m["skipped_rows"] == 3
    assert m["log_likelihood"] == pytest.approx(PATIENTS_LOG_LIKELIHOOD, rel=1e-9)
    assert m["condition_number"] == pytest.approx(PATIENTS_CONDITION, rel=1e-5)


@pytest.mark.parametrize("solver", SOLVERS)
def test_crime_matches_madlib(madlib, conn, solver):
    _train(conn, "crime_v", "high", CRIME_FEATURES, f"crime_{solver}", solver=solver)
    c = _coefficients(conn, f"crime_{solver}")
    assert relative_error(c["coef"], CRIME_COEF) < 1e-6
    data = crime()
    cols = ["crimerat", "maleteen", "south", "educ", "police60", "police59"]
    X = data[:, [cols.index(f) for f in CRIME_FEATURES]]
    ref = _logit((data[:, 0] >= 110).astype(float), X)
    np.testing.assert_allclose(c["std_err"], ref.bse, rtol=1e-4)
    assert _metrics(conn, f"crime_{solver}")["log_likelihood"] == pytest.approx(
        CRIME_LOG_LIKELIHOOD, rel=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
def test_grad_school_matches_madlib(madlib, conn, solver):
    features = ["gre", "gpa", "rank2", "rank3", "rank4"]
    _train(conn, "grad_v", "admit", features, f"grad_{solver}", solver=solver)
    c = _coefficients(conn, f"grad_{solver}")
    assert relative_error(c["coef"], GRAD_COEF) < 1e-6
    g = grad_school()
    X = np.column_stack([g[:, 1], g[:, 2], g[:, 3] == 2, g[:, 3] == 3, g[:, 3] == 4])
    ref = _logit(g[:, 0], X.astype(float))
    np.testing.assert_allclose(c["std_err"], ref.bse, rtol=1e-4)
    assert _metrics(conn, f"grad_{solver}")["log_likelihood"] == pytest.approx(
        GRAD_LOG_LIKELIHOOD, rel=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
def test_houses_match_madlib(madlib, conn, solver):
    _train(conn, "houses", "price", ["tax", "bath", "size"], f"houses_{solver}",
           loss="squared", solver=solver)
    c = _coefficients(conn, f"houses_{solver}")
    assert relative_error(c["coef"], HOUSES_COEF) < 1e-6
    np.testing.assert_allclose(c["std_err"], HOUSES_STD_ERR, rtol=1e-6)
    np.testing.assert_allclose(c["statistic"], HOUSES_T, rtol=1e-6)
    np.testing.assert_allclose(c["p_value"], HOUSES_P, rtol=1e-6)
    m = _metrics(conn, f"houses_{solver}")
    assert m["r2"] == pytest.approx(HOUSES_R2, rel=1e-9)
    assert m["condition_number"] == pytest.approx(HOUSES_CONDITION, rel=1e-6)
    _train(conn, "houses", "price", ["bedroom", "bath", "size"], f"houses2_{solver}",
           loss="squared", solver=solver)
    c = _coefficients(conn, f"houses2_{solver}")
    assert relative_error(c["coef"], HOUSES2_COEF) < 1e-6
    np.testing.assert_allclose(c["p_value"], HOUSES2_P, rtol=1e-4)


def test_newton_for_squared_loss_is_two_passes(madlib, conn):
    _, epochs, converged = _train(conn, "houses", "price", ["tax", "bath", "size"], "houses_1",
                                  loss="squared", solver="newton")
    assert (epochs, converged) == (2, True)  # normal equations, then the RSS at the solution


@pytest.mark.parametrize("solver", SOLVERS)
def test_breast_cancer_and_diabetes_match_statsmodels_from_the_controller(dsn, conn, solver):
    names, X, y = breast_cancer()
    cols = names[:10]  # the 'mean' features: the full 30 are nearly separable
    load_table(conn, "bc_exact", cols, X[:, :10], y, "malignant", label_type="int")
    with psycopg.connect(dsn) as c:
        result = training.train(c, "bc_exact", "malignant", cols, f"bc_{solver}", solver=solver)
    assert result.converged
    ref = _logit(y, X[:, :10])
    got = _coefficients(conn, f"bc_{solver}")
    assert relative_error(got["coef"], ref.params) < 1e-6
    np.testing.assert_allclose(got["std_err"], ref.bse, rtol=1e-4)
    assert _metrics(conn, f"bc_{solver}")["log_likelihood"] == pytest.approx(ref.llf, rel=1e-9)

    names, X, y = diabetes()
    load_table(conn, "diab_exact", names, X, y, "target")
    with psycopg.connect(dsn) as c:
        training.train(c, "diab_exact", "target", names, f"diab_{solver}", loss="squared",
                       solver=solver)
    ref = sm.OLS(y, sm.add_constant(X)).fit()
    got = _coefficients(conn, f"diab_{solver}")
    assert relative_error(got["coef"], ref.params) < 1e-6
    np.testing.assert_allclose(got["std_err"], ref.bse, rtol=1e-4)
    np.testing.assert_allclose(got["p_value"], ref.pvalues, rtol=1e-4)
    m = _metrics(conn, f"diab_{solver}")
    assert m["adj_r2"] == pytest.approx(ref.rsquared_adj, rel=1e-9)
    assert m["aic"] == pytest.approx(ref.aic, rel=1e-9)


@pytest.mark.parametrize("solver", SOLVERS)
def test_two_parallel_workers_give_the_serial_fit(madlib, conn, solver):
    conn.execute("DROP TABLE IF EXISTS grad_big")
    conn.execute("CREATE TABLE grad_big AS SELECT g.* FROM grad_v g, generate_series(1, 20)")
    conn.commit()
    features = ["gre", "gpa", "rank2", "rank3", "rank4"]
    fits = {}
    for workers in (0, 2):
        name = f"grad_par_{solver}_{workers}"
        _train(conn, "grad_big", "admit", features, name, solver=solver, parallel=workers,
               packed=True, block_size=4)  # enough heap pages of blocks for both workers
        fits[workers] = _coefficients(conn, name)
        merged = conn.execute("SELECT max(workers) FROM bismarck.training_history "
                              "WHERE model_name = %s", [name]).fetchone()[0]
        assert (merged >= 1) if workers else (merged == 0)
    # The sums agree to rounding (the order of additions differs); Newton's quadratic
    # convergence erases that, L-BFGS may stop at another point within its tolerance.
    rtol = 1e-9 if solver == "newton" else 1e-6
    np.testing.assert_allclose(fits[2]["coef"], fits[0]["coef"], rtol=rtol)
    np.testing.assert_allclose(fits[2]["std_err"], fits[0]["std_err"], rtol=rtol)
    # 20 copies of every row: the same coefficients, standard errors shrunk by √20
    assert relative_error(fits[0]["coef"], GRAD_COEF) < 1e-6
    g = grad_school()
    X = np.column_stack([g[:, 1], g[:, 2], g[:, 3] == 2, g[:, 3] == 3, g[:, 3] == 4])
    ref = _logit(g[:, 0], X.astype(float))
    np.testing.assert_allclose(fits[0]["std_err"], ref.bse / np.sqrt(20), rtol=1e-4)


def test_l2_penalty_is_sgds_penalty_and_has_no_statistics(madlib, conn):
    """With standardize on, alpha penalises the standardised coefficients, as SGD does."""
    from sklearn.linear_model import LogisticRegression

    features = ["gre", "gpa", "rank2", "rank3", "rank4"]
    _train(conn, "grad_v", "admit", features, "grad_l2", solver="newton", penalty="l2",
           alpha=0.01)
    c = _coefficients(conn, "grad_l2")
    assert np.all(np.isnan(c["std_err"]))
    g = grad_school()
    X = np.column_stack([g[:, 1], g[:, 2], g[:, 3] == 2, g[:, 3] == 3, g[:, 3] == 4])
    mu, sd = X.mean(axis=0), X.std(axis=0)
    ref = LogisticRegression(C=1.0 / (len(X) * 0.01), tol=1e-12, max_iter=10_000).fit(
        (X - mu) / sd, g[:, 0])
    coef = ref.coef_[0] / sd
    np.testing.assert_allclose(c["coef"][1:], coef, rtol=1e-5)
    assert c["coef"][0] == pytest.approx(ref.intercept_[0] - coef @ mu, rel=1e-5)


def test_without_intercept_the_fit_goes_through_the_origin(madlib, conn):
    _train(conn, "houses", "price", ["tax", "bath", "size"], "houses_origin", loss="squared",
           solver="newton", fit_intercept=False)
    c = _coefficients(conn, "houses_origin")
    assert c["feature"] == ["tax", "bath", "size"]
    import madlib_data

    h = np.array(madlib_data.HOUSES, dtype=float)
    ref = sm.OLS(h[:, 3], h[:, [0, 2, 4]]).fit()
    assert relative_error(c["coef"], ref.params) < 1e-9
    np.testing.assert_allclose(c["std_err"], ref.bse, rtol=1e-6)


def test_sgd_models_list_coefficients_without_statistics(madlib, conn):
    _train(conn, "houses", "price", ["tax", "bath", "size"], "houses_sgd", loss="squared",
           max_epochs=2)
    c = _coefficients(conn, "houses_sgd")
    assert c["feature"] == ["(intercept)", "tax", "bath", "size"]
    assert np.all(np.isnan(c["std_err"])) and np.all(np.isfinite(c["coef"]))


# -- bad input: a clear error and nothing stored ---------------------------------------------

BAD = [
    ("solver => 'newton', loss => 'hinge'", "solver 'newton' cannot fit loss 'hinge'", "22023"),
    ("solver => 'lbfgs', penalty => 'l1'", "solver 'lbfgs' does not support penalty 'l1'",
     "22023"),
    ("solver => 'newton', penalty => 'elasticnet'",
     "solver 'newton' does not support penalty 'elasticnet'", "22023"),
    ("solver => 'cholesky'", "invalid value for parameter 'solver'", "22023"),
    # SGD's step options, once silently ignored by the exact solvers
    ("solver => 'newton', average => false", "average is not available with solver 'newton'",
     "22023"),
    ("solver => 'newton', eta0 => 0.5", "eta0 is not available with solver 'newton'", "22023"),
    ("solver => 'lbfgs', batch_size => 32", "batch_size is not available with solver 'lbfgs'",
     "22023"),
    ("solver => 'newton', learning_rate => 'constant'",
     "learning_rate is not available with solver 'newton'", "22023"),
    ("solver => 'newton', power_t => 0.5", "power_t is not available with solver 'newton'",
     "22023"),
]


def test_sgd_options_left_null_are_fine_with_an_exact_solver(madlib, conn):
    """NULL is "the default", not a value: train_glm's own NULL defaults pass."""
    row = conn.execute(
        "SELECT converged FROM bismarck.train_glm('houses', 'price', ARRAY['tax'], 'null_opts', "
        "loss => 'squared', solver => 'newton', average => NULL, eta0 => NULL, "
        "batch_size => NULL, learning_rate => NULL, power_t => NULL)").fetchone()
    assert row == (True,)


@pytest.mark.parametrize("options,message,sqlstate", BAD)
def test_unsupported_options_are_refused(madlib, conn, options, message, sqlstate):
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT * FROM bismarck.train_glm('houses', 'price', ARRAY['tax'], "
                     f"'bad_model', {options})")
    assert info.value.diag.message_primary.startswith(message)
    assert info.value.diag.sqlstate == sqlstate
    assert info.value.diag.message_hint
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = 'bad_model'"
                        ).fetchone()[0] == 0


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("view,label,features,message", [
    ("SELECT price, tax, size, 2 * size - tax AS combo FROM houses", "price",
     ["tax", "size", "combo"], "collinear feature columns: tax, size, combo"),
    ("SELECT price, tax, 3 AS three FROM houses", "price", ["tax", "three"],
     "constant feature columns: three"),
    ("SELECT (gre > 500)::int AS y, gre, gpa FROM grad_school", "y", ["gre", "gpa"],
     "the classes are separated (perfectly or quasi-) by gre"),
])
def test_unidentified_models_name_the_columns(madlib, conn, solver, view, label, features,
                                              message):
    conn.execute("DROP VIEW IF EXISTS bad_v")
    conn.execute(f"CREATE VIEW bad_v AS {view}")
    conn.commit()
    loss = "logistic" if label == "y" else "squared"
    with pytest.raises(psycopg.Error) as info:
        _train(conn, "bad_v", label, features, "bad_fit", solver=solver, loss=loss)
    assert info.value.diag.message_primary == message
    assert info.value.diag.sqlstate == "22000"
    assert "penalty => 'l2'" in info.value.diag.message_hint
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = 'bad_fit'"
                        ).fetchone()[0] == 0


# -- the other front doors: the CLI and the estimators -----------------------------------------

def test_cli_trains_with_solver_and_shows_the_statistics(madlib, conn):
    from click.testing import CliRunner

    from bismarck_controller.cli import main

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("train", "houses", "--label", "price", "--features", "tax,bath,size", "--model",
        "houses_cli", "--loss", "squared", "--solver", "lbfgs", "--dsn", madlib)
    c = _coefficients(conn, "houses_cli")
    assert relative_error(c["coef"], HOUSES_COEF) < 1e-6
    out = run("models", "--dsn", madlib, "show", "houses_cli")
    for text in ("std err", "p-value", "(intercept)", f"{HOUSES_STD_ERR[1]:.6g}",
                 f"{HOUSES_P[3]:.6g}"):
        assert text in out, out


def test_estimators_expose_the_statistics(madlib, conn):
    from bismarck_controller.estimators import LinearRegression, LogisticRegression

    clf = LogisticRegression(model_name="patients_est").fit(
        madlib, table="patients", label="second_attack",
        features=["treatment", "trait_anxiety"])
    assert relative_error(np.r_[clf.intercept_, clf.coef_[0]], PATIENTS_COEF) < 1e-6
    summary = clf.summary(madlib)
    assert list(summary.index) == ["(intercept)", "treatment", "trait_anxiety"]
    np.testing.assert_allclose(summary["std_err"], clf.std_err_)
    assert clf.metrics_["log_likelihood"] == pytest.approx(PATIENTS_LOG_LIKELIHOOD, rel=1e-9)
    assert clf.vcov_.shape == (3, 3)
    np.testing.assert_allclose(np.sqrt(np.diag(clf.vcov_)), clf.std_err_, rtol=1e-12)
    again = LogisticRegression.from_model(madlib, "patients_est")
    np.testing.assert_allclose(again.p_values_, clf.p_values_)
    assert again.solver == "newton"

    reg = LinearRegression(model_name="houses_est").fit(madlib, table="houses", label="price",
                                                       features=["tax", "bath", "size"])
    np.testing.assert_allclose(reg.p_values_, HOUSES_P, rtol=1e-6)
    assert reg.metrics_["r2"] == pytest.approx(HOUSES_R2, rel=1e-9)
    assert reg.n_iter_ == 2


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("path", ["rows", "rows, reshuffled", "array column", "packed table"])
def test_every_data_path_gives_the_same_fit(madlib, conn, solver, path):
    """Rows, an array column, a table written by bismarck.pack: the same exact fit."""
    features = ["gre", "gpa", "rank2", "rank3", "rank4"]
    source, feats, opts = "grad_v", features, {}
    if path == "rows":
        opts = {"packed": False}
    elif path == "rows, reshuffled":
        opts = {"packed": False, "shuffle": "always"}
    elif path == "array column":
        conn.execute("DROP TABLE IF EXISTS grad_arr")
        conn.execute("CREATE TABLE grad_arr AS SELECT admit, ARRAY[gre, gpa, rank2, rank3, "
                     "rank4]::float8[] AS x FROM grad_v")
        conn.commit()
        source, feats = "grad_arr", ["x"]
    elif path == "packed table":
        conn.execute("DROP TABLE IF EXISTS grad_packed")
        conn.execute("SELECT * FROM bismarck.pack('grad_v', 'admit', %s, 'grad_packed', "
                     "dtype => 'float64', block_size => 32)", [features])
        conn.commit()
        source = "grad_packed"
    name = f"grad_path_{solver}"
    _train(conn, source, "admit", feats, name, solver=solver, **opts)
    c = _coefficients(conn, name)
    assert relative_error(c["coef"], GRAD_COEF) < 1e-6
    if path == "array column":
        assert c["feature"][1:] == [f"x[{j}]" for j in range(1, 6)]


def test_validation_loss_of_an_exact_fit(madlib, conn):
    _train(conn, "grad_v", "admit", ["gre", "gpa", "rank2", "rank3", "rank4"], "grad_valid",
           solver="newton", validation_fraction=0.25, seed=3)
    m = _metrics(conn, "grad_valid")
    assert 0 < m["validation_rows"] < 200 and m["rows"] + m["validation_rows"] == 400
    assert 0.3 < m["validation_loss"] < 1.0
    assert m["log_likelihood"] == pytest.approx(-m["train_loss"] * m["rows"], rel=1e-12)


# -- issue 9's numerics meet the exact solvers -----------------------------------------------

def _grad_arrays() -> tuple[np.ndarray, np.ndarray]:
    g = grad_school()
    X = np.column_stack([g[:, 1], g[:, 2]] + [(g[:, 3] == r).astype(float) for r in (2, 3, 4)])
    return X, g[:, 0]


@pytest.mark.parametrize("solver", SOLVERS)
def test_validation_split_of_a_packed_table_keeps_its_rows_out_of_the_passes(madlib, conn,
                                                                             solver):
    """A bismarck.pack table holds out the head rows of each block: exactly
    ceil(0.25 · 400) = 100 rows, which no training pass reads (each pass reads 300 rows)."""
    features = ["gre", "gpa", "rank2", "rank3", "rank4"]
    conn.execute("DROP TABLE IF EXISTS grad_packed_v")
    conn.execute("SELECT * FROM bismarck.pack('grad_v', 'admit', %s, 'grad_packed_v', "
                 "block_size => 64)", [features])
    name = f"grad_packed_valid_{solver}"
    _train(conn, "grad_packed_v", "admit", features, name, solver=solver,
           validation_fraction=0.25)
    m = _metrics(conn, name)
    assert (m["rows"], m["validation_rows"]) == (300, 100)
    rows = conn.execute("SELECT DISTINCT h.rows FROM bismarck.training_history h "
                        "WHERE h.model_name = %s", [name]).fetchall()
    assert rows == [(300,)]
    assert m["log_likelihood"] == pytest.approx(-m["train_loss"] * 300, rel=1e-12)
    assert m["validation_loss"] > 0


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("class_weight, weights", [('{"0": 1, "1": 3}', {0.0: 1.0, 1.0: 3.0}),
                                                   ("balanced", "balanced")])
def test_class_weight_gives_scikit_learns_weighted_fit(madlib, conn, solver, class_weight,
                                                       weights):
    from sklearn.linear_model import LogisticRegression

    X, y = _grad_arrays()
    name = f"grad_weighted_{solver}"
    _train(conn, "grad_v", "admit", ["gre", "gpa", "rank2", "rank3", "rank4"], name,
           solver=solver, class_weight=class_weight)
    ref = LogisticRegression(C=np.inf, class_weight=weights, tol=1e-12,
                             max_iter=100_000).fit(X, y)
    c = _coefficients(conn, name)
    want = np.concatenate([ref.intercept_, ref.coef_[0]])
    assert relative_error(c["coef"], want) < 1e-5
    m = _metrics(conn, name)
    assert m["weighted_likelihood"] is True
    n1 = y.sum()
    w0, w1 = (len(y) / (2 * (len(y) - n1)), len(y) / (2 * n1)) if weights == "balanced" \
        else (1.0, 3.0)  # scikit-learn's 'balanced': n_samples / (n_classes · bincount)
    freq = np.where(y > 0, w1, w0)
    glm = sm.GLM(y, sm.add_constant(X), family=sm.families.Binomial(),
                 freq_weights=freq).fit(tol=1e-14)
    np.testing.assert_allclose(c["std_err"], glm.bse, rtol=1e-3)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("centre", [1e8, -3e9])
def test_columns_far_from_zero_in_float32_blocks(conn, solver, centre):
    """Columns at 1e8 with a spread of ~1: offsets + residuals keep the spread and the passes
    sum centred values, so the fit is statsmodels' (which itself is given centred data)."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(500, 2)) + centre
    y = 2.0 + 0.5 * (X[:, 0] - centre) - 1.5 * (X[:, 1] - centre) + rng.normal(size=500)
    conn.execute("DROP TABLE IF EXISTS far_away")
    conn.execute("CREATE TABLE far_away (y float8, a float8, b float8)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO far_away VALUES (%s, %s, %s)",
                        [(float(y[i]), float(X[i, 0]), float(X[i, 1])) for i in range(500)])
    name = f"far_{solver}"
    _train(conn, "far_away", "y", ["a", "b"], name, solver=solver, loss="squared",
           dtype="float32")
    ref = sm.OLS(y, sm.add_constant(X - X.mean(axis=0))).fit()
    c = _coefficients(conn, name)
    np.testing.assert_allclose(c["coef"][1:], ref.params[1:], rtol=1e-5)
    np.testing.assert_allclose(c["std_err"][1:], ref.bse[1:], rtol=1e-4)


def test_a_constant_column_of_a_penalised_exact_fit_stays_zero(madlib, conn):
    conn.execute("DROP VIEW IF EXISTS const_v")
    conn.execute("CREATE VIEW const_v AS SELECT price, tax, 1e8::float8 AS big FROM houses")
    _train(conn, "const_v", "price", ["tax", "big"], "const_fit", solver="newton",
           loss="squared", penalty="l2", alpha=0.01)
    c = _coefficients(conn, "const_fit")
    assert c["coef"][2] == 0.0
    assert _metrics(conn, "const_fit")["constant_features"] == ["big"]


# -- issue: offsets, refits, convergence, float32 ------------------------------------------------

@pytest.fixture(scope="module")
def offsets(madlib) -> str:
    """x0 = OFF + N(0, 1) for several offsets, x1 = N(0, 1), y by a known linear model."""
    conn = psycopg.connect(madlib)
    rng = np.random.default_rng(11)
    n = 300
    z0, z1, noise = rng.normal(size=(3, n))
    u = rng.random(n)
    conn.execute("DROP TABLE IF EXISTS exact_offsets CASCADE")
    conn.execute("CREATE TABLE exact_offsets (off float8, x0 float8, x1 float8, y float8, "
                 "c float8)")
    with conn.cursor() as cur:
        for off in (1e3, 1e6, 1e9, 1e12):
            y = 0.5 + 0.8 * z0 - 0.3 * z1 + noise
            c = (u < 1.0 / (1.0 + np.exp(-(0.5 + 0.8 * z0 - 0.3 * z1)))).astype(float)
            cur.executemany("INSERT INTO exact_offsets VALUES (%s, %s, %s, %s, %s)",
                            [(off, off + a, b, yy, cc) for a, b, yy, cc in zip(z0, z1, y, c)])
    conn.commit()
    conn.close()
    return "exact_offsets"


# By default four cases: every pair of (loss, standardize, solver) values occurs in one of them
# (a two-level orthogonal array), each offset at least once; the other 20 run slow.
@pytest.mark.parametrize("loss, off, standardize, solver", cases(
    ["squared", "logistic"], [1e3, 1e9, 1e12], [True, False], SOLVERS,
    default=[("squared", 1e9, True, "newton"), ("squared", 1e12, False, "lbfgs"),
             ("logistic", 1e3, True, "lbfgs"), ("logistic", 1e12, False, "newton")]))
def test_columns_far_from_zero_match_statsmodels(conn, offsets, solver, standardize, off, loss):
    label = "y" if loss == "squared" else "c"
    view = f"exact_off_{int(np.log10(off))}"
    conn.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM exact_offsets "
                 f"WHERE off = {off!r}")
    conn.commit()
    rows = np.array(conn.execute(f"SELECT x0, x1, {label} FROM {view}").fetchall())
    Xc = rows[:, :2] - np.array([off, 0.0])  # exact
    ref = (sm.OLS(rows[:, 2], sm.add_constant(Xc)).fit() if loss == "squared"
           else _logit(rows[:, 2], Xc))
    T = np.eye(3)
    T[0, 1] = -off
    beta = T @ ref.params
    se = np.sqrt(np.diag(T @ ref.cov_params() @ T.T))
    _, _, converged = _train(conn, view, label, ["x0", "x1"], view, solver=solver, loss=loss,
                             standardize=standardize)
    assert converged
    got = _coefficients(conn, view)
    rel = 1e-6 if solver == "lbfgs" else 1e-9
    np.testing.assert_allclose(got["coef"][1:], beta[1:], rtol=rel)
    assert abs(got["coef"][0] - beta[0]) <= rel * (abs(beta[0]) + off)
    np.testing.assert_allclose(got["std_err"], se, rtol=1e-6)
    np.testing.assert_allclose(got["p_value"][1:], ref.pvalues[1:], rtol=1e-5)


def test_refit_resets_the_statistics(madlib):
    from bismarck_controller.estimators import LogisticRegression

    clf = LogisticRegression(model_name="patients_refit").fit(
        madlib, table="patients", label="second_attack",
        features=["treatment", "trait_anxiety"])
    assert clf.std_err_ is not None and np.all(np.isfinite(clf.std_err_))
    clf.set_params(penalty="l2", alpha=1.0).fit(
        madlib, table="patients", label="second_attack",
        features=["treatment", "trait_anxiety"])
    assert (clf.std_err_, clf.statistic_, clf.p_values_, clf.vcov_) == (None,) * 4
    assert clf.summary(madlib)["std_err"].isna().all()
    clf.set_params(penalty="none", max_iter=1, tol=0.0)
    with pytest.warns(UserWarning, match="did not converge"):
        clf.fit(madlib, table="patients", label="second_attack",
                features=["treatment", "trait_anxiety"])
    assert not clf.converged_ and clf.p_values_ is None


@pytest.mark.parametrize("solver", SOLVERS)
def test_non_converged_fits_have_no_statistics(madlib, conn, solver):
    with psycopg.connect(madlib) as outside, pytest.warns(UserWarning, match="did not converge"):
        training.train(outside, "patients", "second_attack", ["treatment", "trait_anxiety"],
                       "patients_short", solver=solver, max_epochs=1, tol=0.0)
    assert _metrics(conn, "patients_short")["converged"] is False
    got = _coefficients(conn, "patients_short")
    assert np.isnan(got["std_err"]).all() and np.isnan(got["p_value"]).all()
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    _train(conn, "patients", "second_attack", ["treatment", "trait_anxiety"],
           "patients_short", solver=solver, max_epochs=1, tol=0.0)
    conn.commit()
    assert any("did not converge" in m for m in notices), notices


def test_float32_data_is_said_and_recorded(madlib, conn):
    """Exact fits of float32 blocks warn that the data were rounded and record the blocks' real
    dtype (a bismarck.pack table's, not the dtype parameter's default)."""
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    _train(conn, "patients", "second_attack", ["treatment", "trait_anxiety"], "p32",
           solver="newton", dtype="float32")
    conn.commit()
    assert any("fitted float32 blocks" in m for m in notices), notices
    conn.execute("DROP TABLE IF EXISTS patients_p32")
    conn.execute("SELECT * FROM bismarck.pack('patients', 'second_attack', "
                 "ARRAY['treatment', 'trait_anxiety'], 'patients_p32', dtype => 'float32')")
    conn.commit()
    notices.clear()
    _train(conn, "patients_p32", "second_attack", ["treatment", "trait_anxiety"], "p32",
           solver="lbfgs")
    conn.commit()
    assert any("fitted float32 blocks" in m for m in notices), notices
    row = conn.execute("SELECT params, metrics FROM bismarck.models WHERE model_name = 'p32' "
                       "ORDER BY version DESC LIMIT 1").fetchone()
    assert row[0]["dtype"] == "float32" and row[1]["block_dtype"] == "float32"
    conn.execute("DROP TABLE patients_p32")
    conn.commit()
