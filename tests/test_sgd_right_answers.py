"""Right answers on the SGD path, by kind, on a real server (issue 9, outside tester's follow-up).

Tables of cases over: separated data (complete and quasi-complete, every way of asking for no
penalty), tiny values (normal float64 below float32's range, subnormal spreads), runs whose
final loss is far worse than the all-zero model's, numeric values beyond float8, tiny labels
in ``evaluate`` and out-of-range validation shares. Expectations come from numpy (least
squares, R²) and scipy's linear program (whether the classes are separable).
"""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from cases import cases
from reference_data import load_array_table, load_table
from server_notices import collect
from test_right_answers import _linearly_separable, metric, train

from bismarckpy.errors import Diverged
from bismarckpy.loop import _check_finite, zero_model_loss

# --- 1. separation of the data, not of the SGD model -------------------------------------------

NO_PENALTY = {
    "none": dict(penalty="none"),
    "l2 alpha 0": dict(penalty="l2", alpha=0.0),
    "elasticnet alpha 0": dict(penalty="elasticnet", alpha=0.0),
    "none, validation 0.2": dict(penalty="none", validation_fraction=0.2),
    "none, packed float32": dict(penalty="none", packed=True, dtype="float32"),
    "none, no standardize": dict(penalty="none", standardize=False),
    "none, blocks": dict(penalty="none", shuffle="blocks", block_size=16),
    "none, blocks, no standardize, validation 0.2": dict(
        penalty="none", shuffle="blocks", block_size=16, standardize=False,
        validation_fraction=0.2),
}


def _separable(n: int = 400, quasi: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(n, 2))
    if quasi:  # ties at x0 = 0 carry both classes: quasi-complete separation
        X[:, 0] = np.round(X[:, 0])
        y = (X[:, 0] > 0).astype(float)
        ties = np.flatnonzero(X[:, 0] == 0)
        y[ties[::2]] = 1.0
        return X, y
    return X, (X[:, 0] > 0).astype(float)


@pytest.mark.parametrize("case", NO_PENALTY)
def test_separated_data_are_reported_whatever_the_sgd_model(conn, case: str) -> None:
    X, y = _separable()
    assert _linearly_separable(X, y)  # scipy's LP: the reference
    load_table(conn, "sep400", ["x0", "x1"], X, y)
    notices = collect(conn)
    row = train(conn, "sep400", "y", ["x0", "x1"], "sep400", seed=1, **NO_PENALTY[case])
    assert row["metrics"]["separation"] is True and row["metrics"]["converged"] is False
    # by x0 (a short Newton run names the column), or by the data when the stored model
    # itself separates every row (its own certificate)
    assert any(n.startswith("WARNING") and "penalty => 'l2'" in n
               and ("separated by x0" in n or "separated by the data" in n)
               for n in notices), notices


@pytest.mark.parametrize("case", ["none", "l2 alpha 0"])
def test_quasi_separated_data_are_reported(conn, case: str) -> None:
    X, y = _separable(quasi=True)
    assert not _linearly_separable(X, y)  # not completely separable: ties on x0 = 0
    load_table(conn, "qsep", ["x0", "x1"], X, y)
    row = train(conn, "qsep", "y", ["x0", "x1"], "qsep", seed=1, **NO_PENALTY[case])
    assert row["metrics"]["separation"] is True and row["metrics"]["converged"] is False


@pytest.mark.parametrize("case", ["none", "none, validation 0.2", "none, packed float32"])
def test_overlapping_data_are_not_called_separated(conn, case: str) -> None:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(400, 2))
    y = (X[:, 0] + rng.logistic(size=400) > 0).astype(float)
    assert not _linearly_separable(X, y)
    load_table(conn, "overlap", ["x0", "x1"], X, y)
    row = train(conn, "overlap", "y", ["x0", "x1"], "overlap", seed=1, **NO_PENALTY[case])
    assert row["metrics"]["separation"] is False


# --- 2./3. tiny values: float64 working copy, refused subnormal spreads -------------------------

TINY = [1e-50, 1e-150, 1e-300]
TINY_PATHS = {"packed float32": dict(packed=True, dtype="float32"),
              "rows": dict(packed=False), "blocks": dict(shuffle="blocks", block_size=16)}


def _line(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    z = rng.normal(size=n)
    return z, 2.0 * z + 1.0 + 0.1 * rng.normal(size=n)


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """numpy's least squares: slope, intercept, R²."""
    A = np.column_stack([x, np.ones_like(x)])
    (slope, icpt), *_ = np.linalg.lstsq(A, y, rcond=None)
    r = y - A @ np.array([slope, icpt])
    return slope, icpt, 1.0 - float(r @ r) / float(((y - y.mean()) ** 2).sum())


# By default each scale on each path once, the feature and the label both tiny on float32
# blocks (the path that must widen them) and in turn on the others; all 18 run slow.
@pytest.mark.parametrize("where, scale, path", cases(
    ["feature", "label"], TINY, list(TINY_PATHS),
    default=[("feature", 1e-300, "packed float32"), ("label", 1e-150, "packed float32"),
             ("feature", 1e-50, "rows"), ("label", 1e-300, "blocks")]))
def test_tiny_values_keep_their_digits(conn, scale: float, path: str, where: str) -> None:
    z, y = _line()
    sx, sy = (scale, 1.0) if where == "feature" else (1.0, scale)
    slope, icpt, r2 = _ols(z, y)  # on unit-scale data: the fit of (sx·z, sy·y) follows
    slope, icpt = slope * sy / sx, icpt * sy
    x, y = z * sx, y * sy
    load_table(conn, "tiny", ["x"], x[:, None], y)
    notices = collect(conn)
    row = train(conn, "tiny", "y", ["x"], "tiny", loss="squared", penalty="none",
                batch_size=0, learning_rate="bold_driver", eta0=1.0, tol=1e-12,
                n_iter_no_change=30, max_epochs=400, **TINY_PATHS[path])
    assert row["metrics"]["constant_features"] == []
    assert row["coef"][0] == pytest.approx(slope, rel=1e-3)
    assert row["intercept"] == pytest.approx(icpt, rel=1e-3, abs=1e-3 * abs(slope))
    assert metric(conn, "tiny", "tiny", "r2") == pytest.approx(r2, abs=1e-4)
    if path == "packed float32":
        assert row["metrics"]["block_dtype"] == "float64"
        assert any(n.startswith("WARNING") and "float32" in n for n in notices), notices


@pytest.mark.parametrize("scale", TINY)
@pytest.mark.parametrize("where", ["feature", "label"])
def test_pack_float32_refuses_tiny_values_naming_the_column(conn, scale: float,
                                                            where: str) -> None:
    z, y = _line()
    x = z * scale if where == "feature" else z
    y = y * scale if where == "label" else y
    load_table(conn, "tiny_pack", ["x"], x[:, None], y)
    conn.execute("DROP TABLE IF EXISTS tiny_packed")
    with pytest.raises(psycopg.errors.DataException) as exc:
        conn.execute("SELECT * FROM bismarck.pack('tiny_pack', 'y', ARRAY['x'], 'tiny_packed', "
                     "dtype => 'float32')")
    name = 'feature "x"' if where == "feature" else 'label "y"'
    assert exc.value.diag.message_primary == f"{name} is too small for float32 blocks"
    assert "float64" in exc.value.diag.message_hint


SUBNORMAL_PATHS = {"rows": dict(packed=False), "packed": dict(packed=True),
                   "rows, no standardize": dict(packed=False, standardize=False),
                   "newton": dict(solver="newton", penalty="none"),
                   "blocks": dict(shuffle="blocks")}


@pytest.mark.parametrize("path", SUBNORMAL_PATHS)
@pytest.mark.parametrize("layout", ["columns", "array"])
def test_subnormal_spreads_are_refused_naming_the_column(conn, path: str, layout: str) -> None:
    z, y = _line()
    X = np.column_stack([z, 1e-310 * z])
    if layout == "columns":
        load_table(conn, "subn", ["a", "b"], X, y)
        features, name = ["a", "b"], 'feature "b"'
    else:
        load_array_table(conn, "subn", X, y)
        features, name = ["x"], 'element 2 of feature "x"'
    with pytest.raises(psycopg.errors.DataException) as exc:
        train(conn, "subn", "y", features, "subn", loss="squared", **SUBNORMAL_PATHS[path])
    assert exc.value.diag.message_primary.startswith(f"{name} has a spread too small")
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = 'subn'"
                        ).fetchone()[0] == 0


def test_non_finite_coefficients_are_never_stored() -> None:
    for coef, intercept, loss, what in [
            (np.array([1.0, np.inf]), 0.0, 1.0, "the coefficients of b"),
            (np.array([np.nan, 1.0]), 0.0, 1.0, "the coefficients of a"),
            (np.array([1.0, 2.0]), np.inf, 1.0, "the intercept"),
            (np.array([1.0, 2.0]), 0.0, np.nan, "the training loss")]:
        with pytest.raises(Diverged) as exc:
            _check_finite(coef, intercept, loss, ["a", "b"], False)
        assert exc.value.message == f"training gave a non-finite value for {what}"
    _check_finite(np.array([1.0, 2.0]), 0.5, 0.1, ["a", "b"], False)  # finite: no error


# --- 4. a final loss far worse than the all-zero model's is never "converged" ------------------

def test_zero_model_loss_of_classifiers() -> None:
    assert zero_model_loss("logistic", (1.0, 1.0), 10, 3) == pytest.approx(np.log(2))
    assert zero_model_loss("hinge", (1.0, 1.0), 10, 3) == 1.0
    assert zero_model_loss("logistic", (1.0, 4.0), 10, 5) == pytest.approx(2.5 * np.log(2))
    assert zero_model_loss("squared", (1.0, 1.0), 10, 0) is None


@pytest.mark.parametrize("loss", ["logistic", "hinge", "squared"])
def test_huge_unstandardised_constant_column_is_not_converged_and_said_why(conn,
                                                                          loss: str) -> None:
    """Unstandardised, a constant column of -3e6 beside one of scale 1: the measured eta0
    (sized for the large column, 4e-13) leaves the other barely moving. Before, the model
    ended at its trivial loss, stored as converged without a word (and before the defaults
    measured eta0, per-row steps at 0.1 diverged)."""
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=400)
    X = np.column_stack([x0, np.full(400, -3e6)])
    load_table(conn, "hugeconst", ["x0", "x1"], X, (x0 > 0).astype(float))
    notices = collect(conn)
    row = train(conn, "hugeconst", "y", ["x0", "x1"], "hugeconst", loss=loss, penalty="none",
                standardize=False, seed=1)
    assert row["metrics"]["converged"] is False
    assert any(n.startswith("WARNING") and "standardize => true" in n
               and "sized for feature 2" in n for n in notices), notices
    notices.clear()
    train(conn, "hugeconst", "y", ["x0", "x1"], "hugeconst_std", loss=loss,
          penalty="none" if loss != "logistic" else "l2", seed=1)
    assert not any("sized for" in n for n in notices), notices
    assert metric(conn, "hugeconst_std", "hugeconst",
                  "r2" if loss == "squared" else "accuracy") > 0.5


def test_a_feature_offset_by_a_thousand_unstandardised_is_not_converged(conn) -> None:
    """Tester: x1 = N(0, 1) + 1000 beside x2 = N(0, 1), standardize => false: eta0 4e-6, the
    model stayed at the class priors' log-loss (0.641 against Newton's 0.455), stored as
    converged without a word; the warning fired only beyond a 10,000-fold difference."""
    rng = np.random.default_rng(30)
    Z = rng.normal(size=(3000, 2))
    y = (rng.random(3000) < 1 / (1 + np.exp(-(-1 + 1.5 * Z[:, 0] - Z[:, 1])))).astype(float)
    load_table(conn, "offset1000", ["x1", "x2"], Z + [1000.0, 0.0], y)
    notices = collect(conn)
    row = train(conn, "offset1000", "y", ["x1", "x2"], "offset1000", standardize=False)
    assert row["metrics"]["converged"] is False
    assert any(n.startswith("WARNING") and "sized for feature 1" in n
               and "standardize => true" in n for n in notices), notices


@pytest.mark.parametrize("loss", ["logistic", "hinge"])
def test_a_run_ending_worse_than_where_it_started_is_not_converged(conn, loss: str) -> None:
    """A constant rate far too large: the loss settles (so the tolerance test passes) well
    above the all-zero model's, below the divergence bound. Stored, but never as converged,
    and said why; the same data at the default rate converges below the zero model's loss."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(2000, 5))
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) + rng.normal(size=2000) > 0).astype(float)
    load_table(conn, "overshoot", [f"x{i}" for i in range(5)], X, y)
    feats = [f"x{i}" for i in range(5)]
    notices = collect(conn)
    got = train(conn, "overshoot", "y", feats, "overshoot_hot", loss=loss, eta0=30.0,
                learning_rate="constant", max_epochs=20)
    zero = zero_model_loss(loss, (1.0, 1.0), 2000, int(y.sum()))
    assert got["metrics"]["train_loss"] > 1.05 * zero
    assert got["metrics"]["converged"] is False
    assert any("steps overshoot" in n for n in notices), notices
    calm = train(conn, "overshoot", "y", feats, "overshoot_calm", loss=loss)
    assert calm["metrics"]["train_loss"] < zero and calm["metrics"]["converged"] is True


# --- 6. numeric values beyond float8 are named, never skipped -----------------------------------

BEYOND = ["1e400", "-1e400", "1e-400"]


# By default every call × column (each front door on each kind of column), the value in turn;
# all 27 run slow.
@pytest.mark.parametrize("call, column, value", cases(
    ["train", "pack", "evaluate"], ["x", "y", "arr"], BEYOND,
    default=[(call, column, BEYOND[(i + j) % 3])
             for i, call in enumerate(["train", "pack", "evaluate"])
             for j, column in enumerate(["x", "y", "arr"])]))
def test_numeric_beyond_float8_names_the_column(conn, value: str, column: str,
                                                call: str) -> None:
    conn.execute("DROP TABLE IF EXISTS huge_num")
    conn.execute("CREATE TABLE huge_num (x numeric, arr numeric[], y numeric)")
    conn.execute("INSERT INTO huge_num SELECT g, ARRAY[g, 1], g % 2 FROM generate_series(1, 50) g")
    if call == "evaluate":
        conn.execute("SELECT * FROM bismarck.train_glm('huge_num', 'y', "
                     + ("ARRAY['arr']" if column == "arr" else "ARRAY['x']")
                     + ", 'huge_num_m', max_epochs => 2)")
    target = {"x": "x", "y": "y", "arr": "arr"}[column]
    conn.execute(f"UPDATE huge_num SET {target} = "
                 + (f"ARRAY[{value}::numeric, 1]" if column == "arr" else f"{value}::numeric")
                 + " WHERE x = 7 OR arr[1] = 7")
    features = "ARRAY['arr']" if column == "arr" else "ARRAY['x']"
    query = {"train": f"SELECT * FROM bismarck.train_glm('huge_num', 'y', {features}, "
                      "'huge_num_m2', loss => 'squared')",
             "pack": f"SELECT * FROM bismarck.pack('huge_num', 'y', {features}, 'huge_num_p')",
             "evaluate": "SELECT * FROM bismarck.evaluate('huge_num_m', 'huge_num')"}[call]
    with pytest.raises(psycopg.errors.NumericValueOutOfRange) as exc:
        conn.execute(query)
    assert exc.value.diag.message_primary == (
        f'column "{target}" has values beyond the float8 range')
    assert "400" not in exc.value.diag.message_primary + (exc.value.diag.message_detail or "")


# --- 8. validation shares beyond the allowed range say the range and why ------------------------

@pytest.mark.parametrize("fraction", [0.999, 1.0, 0.95, -0.1])
def test_validation_fraction_out_of_range_says_why(conn, fraction: float) -> None:
    load_table(conn, "vf", ["x"], np.arange(10.0)[:, None], np.arange(10.0) % 2)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as exc:
        train(conn, "vf", "y", ["x"], "vf", validation_fraction=fraction)
    detail = exc.value.diag.message_detail
    assert "0 <= x <= 0.9" in detail and "tenth of the rows" in detail


def test_sgd_stopping_at_max_epochs_warns_everywhere(conn, dsn: str) -> None:
    """A run that ends at max_epochs without meeting tol says so (scikit-learn's
    ConvergenceWarning): a WARNING in SQL, a BismarckWarning in Python; converged is false."""
    from bismarck_controller.estimators import SGDRegressor
    from bismarck_controller.session import BismarckWarning

    rng = np.random.default_rng(5)
    x0, x1 = rng.normal(1000, 1, 500), rng.normal(5, 1, 500)
    y = 2 * x0 - 3 * x1 + rng.normal(size=500)
    conn.execute("DROP TABLE IF EXISTS stop_early")
    conn.execute("CREATE TABLE stop_early (x0 float8, x1 float8, y float8)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO stop_early VALUES (%s, %s, %s)",
                        [tuple(map(float, r)) for r in zip(x0, x1, y)])
    notices = collect(conn)
    converged = conn.execute(
        "SELECT converged FROM bismarck.train_glm('stop_early', 'y', ARRAY['x0', 'x1'], "
        "'stop_early_m', loss => 'squared', max_epochs => 2, seed => 1)").fetchone()[0]
    assert converged is False
    assert any(n.startswith("WARNING") and "without converging" in n for n in notices), notices
    with pytest.warns(BismarckWarning, match="without converging"):
        SGDRegressor(max_iter=2, random_state=1).fit(dsn, table="stop_early", label="y",
                                                     features=["x0", "x1"])
