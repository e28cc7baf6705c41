"""Missing inputs score NULL everywhere; malformed arrays are refused (issue 9, item 3).

A NULL, NaN or ±infinite feature, in any position, or a NULL or all-NULL array, has no score:
``bismarck.predict`` and ``predict_class`` return NULL, ``bismarck predict`` writes NULL, the
estimators give NaN, and ``evaluate`` skips the row and counts it in ``skipped_rows``. A 2-D
array, an empty one or one of the wrong length is an error that says so, never flattened.
"""

from __future__ import annotations

import json
import math

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from bismarck_controller.cli import main
from bismarck_controller.estimators import SGDClassifier, SGDRegressor

BAD = ["NULL", "'NaN'", "'Infinity'", "'-Infinity'"]
D = 3
LOSSES = {"logistic": "miss_logistic", "squared": "miss_squared", "hinge": "miss_hinge"}


@pytest.fixture(scope="module")
def models(dsn: str) -> dict[str, tuple[list[float], float]]:
    """Three models on miss_arr (x float8[3], y); their (coef, intercept)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, D))
    y = (X @ [1.0, -2.0, 0.5] + 0.3 * rng.normal(size=60) > 0).astype(float)
    out = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE miss_arr (x float8[], y float8)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO miss_arr VALUES (%s, %s)",
                            [(list(map(float, r)), float(v)) for r, v in zip(X, y)])
        for loss, name in LOSSES.items():
            conn.execute("SELECT bismarck.train_glm('miss_arr', 'y', ARRAY['x'], %s, "
                         "loss => %s, max_epochs => 3, seed => 1)", [name, loss])
            coef, b = conn.execute("SELECT coef, intercept FROM bismarck.models "
                                   "WHERE model_name = %s", [name]).fetchone()
            out[loss] = (coef, b)
    return out


def _arrays() -> list[tuple[str, list[float] | None]]:
    """(SQL array, the finite values or None when the row has no score)."""
    cases: list[tuple[str, list[float] | None]] = [("ARRAY[0.5, -1, 2]::float8[]", [0.5, -1, 2])]
    for pos in range(D):
        for bad in BAD:
            vals = ["0.5", "-1", "2"]
            vals[pos] = bad
            cases.append((f"ARRAY[{', '.join(vals)}]::float8[]", None))
    cases += [("ARRAY[NULL, NULL, NULL]::float8[]", None), ("NULL::float8[]", None),
              ("ARRAY['NaN', 'Infinity', '-Infinity']::float8[]", None),
              ("ARRAY[NULL, 'NaN', 1]::float8[]", None)]
    return cases


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize(("array", "values"), _arrays())
def test_sql_predict_is_null_for_missing_values(conn, models, loss: str, array: str,
                                                values: list[float] | None) -> None:
    name = LOSSES[loss]
    p = conn.execute(f"SELECT bismarck.predict(%s, {array})", [name]).fetchone()[0]
    klass = (conn.execute(f"SELECT bismarck.predict_class(%s, {array})", [name]).fetchone()[0]
             if loss != "squared" else None)
    if values is None:
        assert p is None and klass is None
        return
    coef, b = models[loss]
    z = b + float(np.dot(coef, values))
    expected = 1.0 / (1.0 + math.exp(-z)) if loss == "logistic" else z
    assert p == pytest.approx(expected, rel=1e-12)
    if loss != "squared":  # labels are 0/1, so both classifiers answer in 0/1
        assert klass == (1.0 if z >= 0 else 0.0)


@pytest.mark.parametrize("func", ["predict", "predict_class"])
@pytest.mark.parametrize(("array", "message"), [
    ("ARRAY[[0.5, -1, 2]]::float8[]", "2-dimensional array"),  # 1 x 3: as many elements
    ("ARRAY[[0.5], [-1], [2]]::float8[]", "2-dimensional array"),
    ("ARRAY[[NULL, 1, 2]]::float8[]", "2-dimensional array"),
    ("ARRAY[[[1, 2, 3]]]::float8[]", "3-dimensional array"),
    ("ARRAY[[1, 2], [3, 4]]::float8[]", "2-dimensional array"),
    ("'{}'::float8[]", "has 0 elements"),
    ("ARRAY[1, 2]::float8[]", "has 2 elements"),
    ("ARRAY[1, 2, 3, 4]::float8[]", "has 4 elements"),
    ("ARRAY[NULL, 2]::float8[]", "has 2 elements"),
])
def test_sql_refuses_malformed_arrays(conn, models, func: str, array: str,
                                      message: str) -> None:
    with pytest.raises(psycopg.errors.DataException) as exc:
        conn.execute(f"SELECT bismarck.{func}('miss_logistic', {array})")
    assert message in exc.value.diag.message_primary
    assert exc.value.diag.message_hint


# --- scalar feature columns through the CLI, the estimators and evaluate --------------------

COLS = ("a", "b", "c")  # float8, numeric and real: NULL, NaN and ±infinity in each


@pytest.fixture(scope="module")
def scalar_table(dsn: str) -> tuple[int, int]:
    """miss_rows (id, a float8, b numeric, c real, y int) and two models on it; (clean, bad)."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 3))
    y = (X @ [1.0, 1.0, -1.0] > 0).astype(int)
    rows = [(i, *map(float, r), int(v)) for i, (r, v) in enumerate(zip(X, y))]
    n_bad = 0
    for col in range(3):
        for bad in (None, math.nan, math.inf, -math.inf):
            r = [len(rows), 0.5, -0.5, 1.0, 1]
            r[1 + col] = bad
            rows.append(tuple(r))
            n_bad += 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE miss_rows (id int, a float8, b numeric, c real, y int)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO miss_rows VALUES (%s, %s, %s, %s, %s)", rows)
        for loss, name in (("logistic", "miss_rows_clf"), ("squared", "miss_rows_reg")):
            conn.execute("SELECT bismarck.train_glm('miss_rows', 'y', ARRAY['a', 'b', 'c'], "
                         "%s, loss => %s, max_epochs => 3, seed => 1)", [name, loss])
    return 50, n_bad


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.parametrize("classes", [False, True])
def test_cli_predict_writes_null_for_missing_values(dsn: str, conn, scalar_table,
                                                    classes: bool) -> None:
    clean, bad = scalar_table
    out_name = f"miss_scored_{int(classes)}"
    code, out = _run("predict", "miss_rows_clf", "miss_rows", "--output", out_name,
                     *(["--classes"] if classes else []), "--dsn", dsn)
    assert code == 0, out
    nulls = conn.execute(f"SELECT array_agg(id ORDER BY id) FILTER (WHERE prediction IS NULL), "
                         f"count(prediction) FROM {out_name}").fetchone()
    assert nulls[0] == list(range(clean, clean + bad)) and nulls[1] == clean


def test_estimators_give_nan_for_missing_values(dsn: str, scalar_table) -> None:
    clean, bad = scalar_table
    clf = SGDClassifier.from_model(dsn, "miss_rows_clf")
    reg = SGDRegressor.from_model(dsn, "miss_rows_reg")
    missing = np.arange(clean + bad) >= clean
    results = {
        "predict": clf.predict(dsn, "miss_rows", order_by="id"),
        "decision_function": clf.decision_function(dsn, "miss_rows", order_by="id"),
        "regressor": reg.predict(dsn, "miss_rows", order_by="id"),
    }
    proba = clf.predict_proba(dsn, "miss_rows", order_by="id")
    results["proba0"], results["proba1"] = proba[:, 0], proba[:, 1]
    for what, values in results.items():
        assert np.isnan(values[missing]).all(), what
        assert np.isfinite(values[~missing]).all(), what
    # Consistent with each other: the class is the sign of the score, p its sigmoid.
    z = results["decision_function"][~missing]
    np.testing.assert_array_equal(results["predict"][~missing], (z >= 0).astype(float))
    np.testing.assert_allclose(results["proba1"][~missing], 1 / (1 + np.exp(-z)), rtol=1e-12)


def test_evaluate_skips_and_counts_missing_values(dsn: str, conn, scalar_table) -> None:
    clean, bad = scalar_table
    rows = dict(conn.execute("SELECT * FROM bismarck.evaluate('miss_rows_clf', 'miss_rows')")
                .fetchall())
    assert rows["skipped_rows"] == bad and rows["rows"] == clean
    code, out = _run("evaluate", "miss_rows_reg", "miss_rows", "--json", "--dsn", dsn)
    assert code == 0, out
    metrics = json.loads(out)
    assert metrics["skipped_rows"] == bad and metrics["rows"] == clean
    assert SGDClassifier.from_model(dsn, "miss_rows_clf").evaluate(
        dsn, "miss_rows")["skipped_rows"] == bad


def test_a_two_dimensional_row_is_refused_by_every_front_door(dsn: str, conn, models) -> None:
    conn.execute("CREATE TABLE miss_2d AS SELECT * FROM miss_arr")
    conn.execute("INSERT INTO miss_2d VALUES (ARRAY[[1, 2, 3]]::float8[], 1)")
    code, out = _run("predict", "miss_logistic", "miss_2d", "--output", "miss_2d_out",
                     "--dsn", dsn)
    assert code != 0 and "2-dimensional array" in out and "Traceback" not in out
    assert conn.execute("SELECT to_regclass('miss_2d_out')").fetchone()[0] is None
    clf = SGDClassifier.from_model(dsn, "miss_logistic")
    with pytest.raises(psycopg.errors.DataException, match="2-dimensional array"):
        clf.predict(dsn, "miss_2d")
    code, out = _run("evaluate", "miss_logistic", "miss_2d", "--dsn", dsn)
    assert code != 0 and "multi-dimensional" in out


@pytest.mark.parametrize("call", [
    "SELECT * FROM bismarck.train_glm('miss_empty', 'y', ARRAY['x'], 'miss_empty_m')",
    "SELECT * FROM bismarck.pack('miss_empty', 'y', ARRAY['x'], 'miss_empty_p')",
    "SELECT * FROM bismarck.evaluate('miss_logistic', 'miss_empty')",
    "SELECT bismarck.predict('miss_logistic', x) FROM miss_empty",
])
def test_an_empty_array_is_refused_by_every_call(dsn: str, models, call: str) -> None:
    """An empty feature array is a vector of the wrong length, never a skipped missing value."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS miss_empty")
        conn.execute("CREATE TABLE miss_empty AS SELECT x, y FROM miss_arr")
        conn.execute("INSERT INTO miss_empty VALUES ('{}'::float8[], 1)")
        with pytest.raises(psycopg.errors.DataException) as err:
            conn.execute(call)
    text = f"{err.value.diag.message_primary} {err.value.diag.message_detail}"
    assert "empty" in text or "0 elements" in text, text
    assert "internal error" not in text and "Traceback" not in text


@pytest.mark.parametrize("call, name", [
    ("train_glm(NULL, 'y', ARRAY['x'], 'nul')", "source"),
    ("train_glm('miss_arr', NULL, ARRAY['x'], 'nul')", "label"),
    ("train_glm('miss_arr', 'y', NULL, 'nul')", "features"),
    ("train_glm('miss_arr', 'y', ARRAY['x', NULL], 'nul')", "features"),
    ("train_mlp('miss_arr', NULL, ARRAY['x'], 'nul')", "label"),
    ("train_mlp('miss_arr', 'y', NULL, 'nul')", "features"),
    ("train_mf('miss_arr', NULL, 'x', 'y', 'nul')", "row_col"),
    ("train_mf('miss_arr', 'x', NULL, 'y', 'nul')", "col_col"),
    ("train_mf('miss_arr', 'x', 'y', NULL, 'nul')", "value_col"),
    ("pack('miss_arr', NULL, ARRAY['x'], 'nul_packed')", "label"),
    ("pack('miss_arr', 'y', ARRAY['x'], NULL)", "packed_table"),
])
def test_a_null_required_argument_is_named(conn, models, call: str, name: str) -> None:
    """Never 'column "none" does not exist': the parameter that is NULL is named."""
    with pytest.raises(psycopg.errors.NullValueNotAllowed) as err:
        conn.execute(f"SELECT * FROM bismarck.{call}")
    assert f": {name} " in err.value.diag.message_primary
    assert "none" not in err.value.diag.message_primary.lower().replace("not null", "")
    assert err.value.diag.message_hint.startswith("Pass ")
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = 'nul'"
                        ).fetchone() == (0,)


def test_a_feature_listed_twice_is_named(conn, scalar_table) -> None:
    for features in ("ARRAY['a', 'a']", "ARRAY['a', 'b', 'a']"):
        with pytest.raises(psycopg.errors.DuplicateColumn, match='"a" is listed more than once'):
            conn.execute(f"SELECT * FROM bismarck.train_glm('miss_rows', 'y', {features}, 'dup')")
    with pytest.raises(psycopg.errors.DuplicateColumn, match='"x" is listed'):
        conn.execute("SELECT * FROM bismarck.train_glm('miss_arr', 'y', ARRAY['x', 'x'], 'dup')")
