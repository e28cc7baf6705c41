"""Scoring through every front door: kept columns of any type, the score's column name, packed
tables, versions that never existed, listings, and finite inputs that overflow float8.

Each test is a table of cases over a kind of input; SQL, the CLI and the estimators meet the
same cases. Expected values come from exact arithmetic in Python (``decimal``), not from the
code under test.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal, getcontext

import numpy as np
import psycopg
import pytest
from cases import cases, diagonal
from click.testing import CliRunner

from bismarck_controller import extension
from bismarck_controller.cli import main
from bismarck_controller.cli_models import _features_cell
from bismarck_controller.estimators import SGDClassifier, SGDRegressor
from bismarck_controller.plots import plot_history
from bismarckpy.errors import BismarckError

getcontext().prec = 50
FLOAT_MAX = Decimal(np.finfo(float).max)


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def sk(dsn: str) -> dict[str, tuple[list[float], float]]:
    """sk_rows: features a, b and columns of many types; two models on it; their coefs."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(80, 2))
    y = (X @ [1.0, -1.0] > 0).astype(int)
    out = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE sk_rows (id int, a float8, b float8, y int, name text, "
                     "ts timestamptz, tags text[], doc jsonb, raw bytea, d date, "
                     "\"Odd Name\" varchar(10))")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO sk_rows VALUES (%s, %s, %s, %s, %s, "
                "'2024-01-01'::timestamptz + %s * interval '1 hour', %s, %s, %s, "
                "'2024-01-01'::date + %s, %s)",
                [(i, float(r[0]), float(r[1]), int(v), f"n{i:03d}", i, [f"t{i}"],
                  json.dumps({"i": i}), bytes([i]), i, f"o{i:03d}")
                 for i, (r, v) in enumerate(zip(X, y))])
        for loss, name in (("logistic", "sk_clf"), ("squared", "sk_reg"), ("hinge", "sk_svm")):
            conn.execute("SELECT bismarck.train_glm('sk_rows', 'y', ARRAY['a', 'b'], %s, "
                         "loss => %s, max_epochs => 5, seed => 1)", [name, loss])
            coef, b = conn.execute("SELECT coef, intercept FROM bismarck.models "
                                   "WHERE model_name = %s", [name]).fetchone()
            out[loss] = (coef, b)
    return out


# --- 1. kept and ordering columns may have any type ------------------------------------------

KEPT = ["name", "ts", "tags", "doc", "raw", "d", "Odd Name", "y"]


@pytest.mark.parametrize("col", KEPT)
def test_cli_keeps_columns_of_any_type(dsn: str, conn, sk, col: str) -> None:
    out_name = f"sk_kept_{KEPT.index(col)}"
    code, out = _run("predict", "sk_clf", "sk_rows", "--columns", f"id,{col}", "--output",
                     out_name, "--dsn", dsn)
    assert code == 0, out
    cols = [r[0] for r in conn.execute(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "ORDER BY attnum", [out_name]).fetchall()]
    assert cols == ["id", col, "prediction"]
    same = conn.execute(f'SELECT count(*) FROM {out_name} o JOIN sk_rows s USING (id) '
                        f'WHERE o."{col}" IS NOT DISTINCT FROM s."{col}"').fetchone()[0]
    assert same == 80
    code, out = _run("predict", "sk_clf", "sk_rows", "--columns", f"id,{col}", "--limit", "3",
                     "--dsn", dsn)
    assert code == 0 and "has type" not in out, out


ORDER_COLUMNS = ["name", "ts", "tags", "doc", "raw", "d", "Odd Name"]
SCORING = ["predict", "predict_proba", "decision_function"]


# By default each column type once, the scoring methods in turn; all 21 run slow.
@pytest.mark.parametrize("col, method", cases(ORDER_COLUMNS, SCORING,
                                              default=diagonal(ORDER_COLUMNS, SCORING)))
def test_estimators_order_by_columns_of_any_type(dsn: str, conn, sk, col: str,
                                                 method: str) -> None:
    ids = [r[0] for r in conn.execute(f'SELECT id FROM sk_rows ORDER BY "{col}"').fetchall()]
    if method == "predict":
        expected = np.array([r[0] for r in conn.execute(
            "SELECT bismarck.predict('sk_reg', ARRAY[a, b]) FROM sk_rows WHERE id = ANY(%s) "
            "ORDER BY array_position(%s, id)", [ids, ids]).fetchall()])
        reg = SGDRegressor.from_model(dsn, "sk_reg")
        np.testing.assert_allclose(reg.predict(dsn, "sk_rows", order_by=col), expected,
                                   rtol=1e-12)
        return
    X = np.array(conn.execute("SELECT a, b FROM sk_rows WHERE id = ANY(%s) "
                              "ORDER BY array_position(%s, id)", [ids, ids]).fetchall())
    coef, intercept = sk["logistic"]  # sk_clf's
    margins = X @ np.array(coef) + intercept
    clf = SGDClassifier.from_model(dsn, "sk_clf")
    got = getattr(clf, method)(dsn, "sk_rows", order_by=col)
    if method == "predict_proba":
        assert got.shape == (80, 2)
        np.testing.assert_allclose(got[:, 1], 1 / (1 + np.exp(-margins)), rtol=1e-12)
    else:
        assert got.shape == (80,)
        np.testing.assert_allclose(got, margins, rtol=1e-12)


@pytest.mark.parametrize(("columns", "order_by"), [("nope", None), ("id,nope", None),
                                                  ("", "nope")])
def test_missing_kept_or_ordering_column_is_named(dsn: str, sk, columns: str,
                                                  order_by: str | None) -> None:
    if order_by is None:
        code, out = _run("predict", "sk_clf", "sk_rows", "--columns", columns, "--dsn", dsn)
        assert code != 0 and 'column "nope" does not exist' in out and "Available" in out, out
    else:
        clf = SGDClassifier.from_model(dsn, "sk_clf")
        with pytest.raises(BismarckError, match='column "nope" does not exist') as e:
            clf.predict(dsn, "sk_rows", order_by=order_by)
        assert e.value.sqlstate == "42703"


def test_features_are_still_checked(dsn: str, sk) -> None:
    code, out = _run("train", "sk_rows", "--label", "y", "--features", "a,name", "--dsn", dsn)
    assert code != 0 and 'feature column "name" has type text' in out


# --- 4. --columns '' keeps none ----------------------------------------------------------------

@pytest.mark.parametrize("columns", ["", " ", ",", " , "])
def test_empty_columns_keep_only_the_prediction(dsn: str, conn, sk, columns: str) -> None:
    out_name = f"sk_none_{len(columns)}_{columns.count(',')}"
    code, out = _run("predict", "sk_clf", "sk_rows", "--columns", columns, "--output",
                     out_name, "--dsn", dsn)
    assert code == 0, out
    cols = conn.execute(f"SELECT * FROM {out_name} LIMIT 0").description
    assert [c.name for c in cols] == ["prediction"]
    code, out = _run("predict", "sk_clf", "sk_rows", "--columns", columns, "--limit", "2",
                     "--dsn", dsn)
    assert code == 0 and "prediction" in out and "n000" not in out and "id" not in out, out


# --- 3. a source with a column named like the score --------------------------------------------

def test_a_prediction_column_in_the_source(dsn: str, conn, sk) -> None:
    code, out = _run("predict", "sk_clf", "sk_rows", "--output", "sk_scored1", "--dsn", dsn)
    assert code == 0, out
    for args in (["--output", "sk_scored2"], ["--limit", "2"], ["--columns", "id,prediction"]):
        code, out = _run("predict", "sk_clf", "sk_scored1", *args, "--dsn", dsn)
        assert code != 0 and 'column "prediction" specified more than once' in out, out
        assert "--prediction-column" in out and "Traceback" not in out
    assert conn.execute("SELECT to_regclass('sk_scored2')").fetchone()[0] is None
    clf = SGDClassifier.from_model(dsn, "sk_clf")
    with pytest.raises(BismarckError, match="more than once") as e:
        clf.predict(dsn, "sk_scored1", output="sk_scored3")
    assert e.value.sqlstate == "42701" and "prediction_column=" in (e.value.hint or "")
    # Ways out: another name for the score, or leave the old column out.
    code, out = _run("predict", "sk_clf", "sk_scored1", "--output", "sk_scored2",
                     "--prediction-column", "p2", "--classes", "--dsn", dsn)
    assert code == 0, out
    assert clf.predict(dsn, "sk_scored1", output="sk_scored3", prediction_column="p3") == 80
    code, out = _run("predict", "sk_clf", "sk_scored1", "--columns", "id", "--limit", "2",
                     "--dsn", dsn)
    assert code == 0, out
    agree = conn.execute(
        "SELECT count(*) FROM sk_scored2 s2 JOIN sk_scored3 s3 USING (id) "
        "WHERE s2.p2 = (s2.prediction >= 0.5)::int AND s3.p3 = s2.p2 "
        "AND s3.prediction = s2.prediction").fetchone()[0]
    assert agree == 80
    # The original scores arrive unchanged as a kept column, and in the estimators' arrays.
    np.testing.assert_array_equal(clf.predict(dsn, "sk_scored1", order_by="id"),
                                  [r[0] for r in conn.execute(
                                      "SELECT p2 FROM sk_scored2 ORDER BY id").fetchall()])


# --- 2. finite inputs that overflow float8 ---------------------------------------------------

HUGE = [  # feature vectors: finite, and their products or sums beyond float8
    [1e308, 1e308], [-1e308, -1e308], [1e308, -1e308], [1e308, 1e308 / 3],
    [1.7976931348623157e308, 1.7976931348623157e308], [1e200, 1e200], [-1e200, 1e-200],
    [1e-200, 1e-200], [-1e-300, 1e-300], [5e-324, 1.0], [1e155, -1e155], [0.5, -2.0],
]


def _exact_margin(coef: list[float], b: float, x: list[float]) -> Decimal:
    return Decimal(repr(b)) + sum(Decimal(repr(c)) * Decimal(repr(v)) for c, v in zip(coef, x))


def _as_float(z: Decimal) -> float:
    if z > FLOAT_MAX:
        return math.inf
    if z < -FLOAT_MAX:
        return -math.inf
    return float(z)


@pytest.mark.parametrize("x", HUGE, ids=[str(x) for x in HUGE])
@pytest.mark.parametrize("loss", ["logistic", "squared", "hinge"])
def test_sql_scores_any_finite_vector(conn, sk, loss: str, x: list[float]) -> None:
    coef, b = sk[loss]
    name = {"logistic": "sk_clf", "squared": "sk_reg", "hinge": "sk_svm"}[loss]
    z_exact = _exact_margin(coef, b, x)
    z = _as_float(z_exact)
    pred, margin = conn.execute(
        "SELECT bismarck.predict(%s, %s::float8[]), bismarck._margin(bismarck._model(%s), "
        "%s::float8[])", [name, x, name, x]).fetchone()
    if abs(z_exact) >= Decimal("1e-300"):
        assert margin == pytest.approx(z, rel=1e-12) or margin == z
    assert (margin > 0) == (z_exact > 0) and (margin < 0) == (z_exact < 0)
    if loss == "logistic":
        assert pred == pytest.approx(1 / (1 + math.exp(-max(min(z, 700), -700))), rel=1e-12)
    else:
        assert pred == margin
    if loss != "squared":
        cls = conn.execute("SELECT bismarck.predict_class(%s, %s::float8[])",
                           [name, x]).fetchone()[0]
        assert cls == (1.0 if z_exact >= 0 else 0.0)  # both trained on 0/1 labels


@pytest.fixture(scope="module")
def huge_table(dsn: str, sk) -> str:
    """sk_huge: sk_rows plus rows whose features overflow any float8 sum of products."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE sk_huge AS SELECT id, a, b, y FROM sk_rows")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO sk_huge VALUES (%s, %s, %s, %s)",
                            [(100 + i, x[0], x[1], i % 2) for i, x in enumerate(HUGE)])
    return "sk_huge"


def test_every_front_door_scores_huge_rows(dsn: str, conn, sk, huge_table: str) -> None:
    ids = [r[0] for r in conn.execute("SELECT id FROM sk_huge ORDER BY id").fetchall()]
    rows = {r[0]: r[1:] for r in conn.execute("SELECT id, a, b, y FROM sk_huge").fetchall()}
    coef, b = sk["logistic"]
    z = np.array([_as_float(_exact_margin(coef, b, rows[i][:2])) for i in ids])
    clf = SGDClassifier.from_model(dsn, "sk_clf")
    np.testing.assert_array_equal(clf.predict(dsn, "sk_huge", order_by="id"),
                                  (z >= 0).astype(float))
    p = clf.predict_proba(dsn, "sk_huge", order_by="id")[:, 1]
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-np.clip(z, -700, 700))), rtol=1e-12)
    np.testing.assert_allclose(clf.decision_function(dsn, "sk_huge", order_by="id"), z,
                               rtol=1e-12)
    code, out = _run("predict", "sk_clf", "sk_huge", "--output", "sk_huge_scored", "--dsn", dsn)
    assert code == 0, out
    assert conn.execute("SELECT count(prediction) FROM sk_huge_scored").fetchone()[0] == len(ids)
    code, out = _run("evaluate", "sk_clf", "sk_huge", "--json", "--dsn", dsn)
    assert code == 0, out


def _exact_metrics(sk, loss: str, rows: list[tuple]) -> dict[str, float]:
    coef, b = sk[loss]
    z = [_exact_margin(coef, b, r[:2]) for r in rows]
    y = [Decimal(r[2]) for r in rows]
    n = len(rows)
    if loss == "squared":
        sse = sum((zi - yi) ** 2 for zi, yi in zip(z, y))
        sae = sum(abs(zi - yi) for zi, yi in zip(z, y))
        mean = sum(y) / n
        sst = sum((yi - mean) ** 2 for yi in y)
        return {"rmse": _as_float((sse / n).sqrt()), "mae": _as_float(sae / n),
                "r2": _as_float(1 - sse / sst)}
    ll = Decimal(0)
    for zi, yi in zip(z, y):
        u = -zi if yi == 1 else zi  # softplus(u) = max(u, 0) + log1p(exp(-|u|))
        ll += max(u, Decimal(0)) + Decimal(math.log1p(math.exp(-min(float(abs(u)), 700))))
    return {"log_loss": _as_float(ll / n)}


HUGE_ROWS = {"none": [], "1e200": [(1e200, 1e200, 0)], "1e308": [(1e308, 1e308, 0)],
             "both": [(1e308, -1e308, 1), (-1e308, 1e308, 0)],
             "1e160x3": [(1e160, -1e160, 1)] * 3}


# By default each set of rows once, the losses in turn; all 10 run slow.
@pytest.mark.parametrize("rows_added, loss", cases(
    list(HUGE_ROWS), ["squared", "logistic"],
    default=diagonal(list(HUGE_ROWS), ["squared", "logistic"])))
def test_evaluate_metrics_of_huge_rows(dsn: str, conn, sk, loss: str, rows_added: str) -> None:
    extra = HUGE_ROWS[rows_added]
    table = f"sk_ev_{loss}_{abs(hash(str(extra))) % 10**6}"
    conn.execute(f"CREATE TABLE {table} AS SELECT a, b, y FROM sk_rows")
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", extra)
    rows = conn.execute(f"SELECT a, b, y FROM {table}").fetchall()
    name = "sk_reg" if loss == "squared" else "sk_clf"
    got = dict(conn.execute("SELECT * FROM bismarck.evaluate(%s, %s)",
                            [name, table]).fetchall())
    for metric, want in _exact_metrics(sk, loss, rows).items():
        assert got[metric] == pytest.approx(want, rel=1e-9), metric
    est = (SGDRegressor if loss == "squared" else SGDClassifier).from_model(dsn, name)
    assert est.evaluate(dsn, table) == pytest.approx(got, rel=1e-12)


# --- 5. a packed table names its source ---------------------------------------------------------

def test_scoring_a_packed_table_names_its_source(dsn: str, conn, sk) -> None:
    conn.execute("SELECT bismarck.pack('sk_rows', 'y', ARRAY['a', 'b'], 'sk_packed', seed => 1)")
    conn.execute("SELECT bismarck.train_glm('sk_packed', 'y', ARRAY['a', 'b'], 'sk_from_packed', "
                 "max_epochs => 3, seed => 1)")
    with pytest.raises(psycopg.errors.WrongObjectType) as e:
        conn.execute("SELECT * FROM bismarck.evaluate('sk_from_packed', 'sk_packed')")
    assert "packed table" in str(e.value) and "sk_rows" in e.value.diag.message_hint
    for args in (["predict", "sk_from_packed", "sk_packed"],
                 ["evaluate", "sk_from_packed", "sk_packed"],
                 ["predict", "sk_from_packed", "sk_packed", "--output", "sk_packed_out"]):
        code, out = _run(*args, "--dsn", dsn)
        assert code != 0 and "packed table" in out and "sk_rows instead" in out, out
    clf = SGDClassifier.from_model(dsn, "sk_from_packed")
    for call in (lambda: clf.predict(dsn, "sk_packed"), lambda: clf.score(dsn, "sk_packed")):
        with pytest.raises(BismarckError, match="packed table") as err:
            call()
        assert err.value.sqlstate == "42809" and "sk_rows" in (err.value.hint or "")
    # Its source scores.
    assert clf.predict(dsn, "sk_rows").shape == (80,)


# --- 6. a version that never existed -----------------------------------------------------------

@pytest.mark.parametrize("command", ["plot", "history"])
@pytest.mark.parametrize("version", ["3", "0", "-1"])
def test_cli_says_a_version_does_not_exist(dsn: str, sk, tmp_path, command: str,
                                           version: str) -> None:
    extra = ["-o", str(tmp_path / "x.png")] if command == "plot" else []
    code, out = _run(command, "sk_clf", "--version", version, *extra, "--dsn", dsn)
    assert code != 0 and f"has no version {version}" in out and "versions are 1" in out, out
    assert "deleted" not in out


def test_plot_history_says_a_version_does_not_exist(dsn: str, sk) -> None:
    with pytest.raises(BismarckError, match="has no version 5") as e:
        plot_history(dsn, [("sk_clf", 5)])
    assert "1" in (e.value.hint or "")
    with pytest.raises(BismarckError, match="does not exist"):
        plot_history(dsn, ["sk_never_trained"])


# --- 7. evaluate's hints speak of evaluating ---------------------------------------------------

def test_evaluate_hint_for_multi_dimensional_arrays(dsn: str, conn) -> None:
    conn.execute("CREATE TABLE sk_arr (x float8[], y int)")
    conn.execute("INSERT INTO sk_arr SELECT ARRAY[i, -i]::float8[], (i > 5)::int "
                 "FROM generate_series(1, 10) i")
    conn.execute("SELECT bismarck.train_glm('sk_arr', 'y', ARRAY['x'], 'sk_arr', "
                 "max_epochs => 2)")
    conn.execute("INSERT INTO sk_arr VALUES (ARRAY[[1, 2]]::float8[], 1)")
    with pytest.raises(psycopg.errors.DataException) as e:
        conn.execute("SELECT * FROM bismarck.evaluate('sk_arr', 'sk_arr')")
    hint = e.value.diag.message_hint or ""
    assert "one dimension" in hint and "train" not in hint


# --- 8. one line per model version ----------------------------------------------------------

def test_models_lists_one_line_per_version(dsn: str, conn) -> None:
    cols = [f"feature_number_{i}" for i in range(30)]
    conn.execute("CREATE TABLE sk_wide (" + ", ".join(f"{c} float8" for c in cols) + ", y int)")
    conn.execute("INSERT INTO sk_wide SELECT " + ", ".join("random()" for _ in cols)
                 + ", (i % 2) FROM generate_series(1, 40) i")
    for _ in range(2):
        conn.execute("SELECT bismarck.train_glm('sk_wide', 'y', %s, 'sk_wide', max_epochs => 2)",
                     [cols])
    code, out = _run("models", "--dsn", dsn)
    assert code == 0, out
    lines = [ln for ln in out.splitlines() if "sk_wide" in ln or "feature_number" in ln]
    assert len(lines) == 2, out
    assert "feature_number_29" not in out  # 80 columns here: the cell may shrink to "3…"
    assert _features_cell(cols, 30) == "30:feature_number_0,featur…"
    assert _features_cell(["x"], 30) == "30:x[1:30]"
    code, out = _run("models", "--dsn", dsn, "show", "sk_wide")
    assert code == 0 and "feature_number_29" in out


# --- 9. the CLI installs the extension in the embedded cluster's databases only ----------------

def test_cli_installs_the_extension_only_in_the_embedded_cluster(make_database) -> None:
    other = make_database("_other")
    with psycopg.connect(other) as c:
        embedded = extension.is_embedded(c)
    code, out = _run("models", "--dsn", other)
    with psycopg.connect(other) as c:
        installed = extension.installed_version(c)
    if embedded:  # any database of the embedded cluster gets it created there
        assert code == 0 and installed == extension.version(), out
    else:  # a user's own server: nothing installed, a message saying how
        assert code != 0 and "bismarck install" in out and installed is None, out
