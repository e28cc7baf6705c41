"""Classifiers on labels of any type (text, varchar, char, an enum, boolean), end to end.

The classes are coded as indexes in SQL; the model records the label's type and its class
values, and predict_class(model, x, NULL::type), predict_label, classes, evaluate, the CLI and
the estimators answer in the label's own values. The reference for accuracy is scikit-learn's
LogisticRegression (multinomial) on the same iris split.
"""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

IRIS_FIT = "seed => 1, validation_fraction => 0"


@pytest.fixture(scope="module")
def iris(dsn: str) -> dict[str, object]:
    """Iris split 70/30 (seeded) into iris_train and iris_test: x float8[], the species as
    text, varchar, char(12) and an enum declared in the reverse order, a boolean 'wide'."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    data = load_iris()
    names = [str(n) for n in data.target_names]
    Xtr, Xte, ytr, yte = train_test_split(data.data, data.target, test_size=0.3,
                                          random_state=0, stratify=data.target)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TYPE IF EXISTS iris_species CASCADE")
        c.execute("CREATE TYPE iris_species AS ENUM ('virginica', 'versicolor', 'setosa')")
        for table, X, y in (("iris_train", Xtr, ytr), ("iris_test", Xte, yte)):
            c.execute(f"DROP TABLE IF EXISTS {table}")
            c.execute(f"CREATE TABLE {table} (id int, x float8[], species text, "
                      "sv varchar(20), sc char(12), se iris_species, wide boolean)")
            with c.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(i, [float(v) for v in X[i]], names[y[i]], names[y[i]], names[y[i]],
                      names[y[i]], bool(X[i][3] > 1.0)) for i in range(len(y))])
    return {"Xtr": Xtr, "Xte": Xte, "ytr": np.array(names)[ytr],
            "yte": np.array(names)[yte]}


def _matches(conn: psycopg.Connection, model: str, table: str, column: str,
             cast: str) -> tuple[int, int]:
    """(rows whose typed predicted class equals the label, rows)."""
    return conn.execute(
        f"SELECT count(*) FILTER (WHERE bismarck.predict_class(%s, x, NULL::{cast}) = {column}), "
        f"count(*) FROM {table}", [model]).fetchone()


def test_softmax_on_text_species_is_close_to_scikit_learn(conn: psycopg.Connection,
                                                          iris: dict) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    conn.execute("SELECT * FROM bismarck.train_glm('iris_train', 'species', ARRAY['x'], "
                 f"'iris_text', loss => 'softmax', {IRIS_FIT})")
    stored = conn.execute("SELECT stored, classes FROM bismarck.models "
                          "WHERE model_name = 'iris_text'").fetchone()
    assert stored[0]["label_type"] == "text"
    assert stored[0]["class_labels"] == ["setosa", "versicolor", "virginica"]
    assert stored[1] == [0.0, 1.0, 2.0]
    assert conn.execute("SELECT bismarck.classes('iris_text')").fetchone()[0] == [
        "setosa", "versicolor", "virginica"]
    right, n = _matches(conn, "iris_text", "iris_test", "species", "text")
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    ref.fit(iris["Xtr"], iris["ytr"])
    assert list(ref.classes_) == ["setosa", "versicolor", "virginica"]
    sk = float((ref.predict(iris["Xte"]) == iris["yte"]).mean())
    assert right / n >= sk - 0.05, (right / n, sk)
    # predict_label and the typed form agree; the probabilities follow bismarck.classes
    agree, argmax = conn.execute(
        "SELECT count(*) FILTER (WHERE bismarck.predict_label('iris_text', x) = "
        "bismarck.predict_class('iris_text', x, NULL::text)), count(*) FILTER (WHERE "
        "(bismarck.classes('iris_text'))[(SELECT u.i FROM unnest(bismarck.predict_proba("
        "'iris_text', x)) WITH ORDINALITY AS u(p, i) ORDER BY u.p DESC LIMIT 1)] = "
        "bismarck.predict_label('iris_text', x)) FROM iris_test").fetchone()
    assert agree == n and argmax == n
    metrics = dict(conn.execute("SELECT * FROM bismarck.evaluate('iris_text', 'iris_test')"))
    assert metrics["accuracy"] == pytest.approx(right / n)
    assert 0 < metrics["log_loss"] < 0.5 and 0 < metrics["f1_macro"] <= 1


@pytest.mark.parametrize("column, cast, options", [
    ("sv", "varchar", "shuffle => 'blocks'"),
    ("sc", "char(12)", "shuffle => 'always'"),
    ("se", "iris_species", "shuffle => 'once'"),
])
def test_softmax_on_varchar_char_and_enum_labels(conn: psycopg.Connection, iris: dict,
                                                 column: str, cast: str, options: str) -> None:
    name = f"iris_{column}"
    conn.execute(f"SELECT * FROM bismarck.train_glm('iris_train', %s, ARRAY['x'], %s, "
                 f"loss => 'softmax', {IRIS_FIT}, {options})", [column, name])
    right, n = _matches(conn, name, "iris_test", column, cast)
    assert right / n >= 0.85
    classes = conn.execute("SELECT bismarck.classes(%s)", [name]).fetchone()[0]
    # an enum's classes in its declared order, strings in byte order
    assert classes == (["virginica", "versicolor", "setosa"] if column == "se"
                       else ["setosa", "versicolor", "virginica"])
    typed = conn.execute(f"SELECT pg_typeof(bismarck.predict_class(%s, x, NULL::{cast}))::text "
                         "FROM iris_test LIMIT 1", [name]).fetchone()[0]
    assert typed == {"sv": "character varying", "sc": "character",
                     "se": "iris_species"}[column]


@pytest.mark.parametrize("loss, options", [
    ("logistic", ""), ("hinge", ", shuffle => 'blocks'"),
    ("logistic", ", solver => 'newton', penalty => 'l2', alpha => 0.01")])
def test_binary_losses_on_text_and_boolean_labels(conn: psycopg.Connection, iris: dict,
                                                  loss: str, options: str) -> None:
    conn.execute("CREATE TEMP TABLE two AS SELECT * FROM iris_train WHERE species <> 'setosa'")
    conn.execute("SELECT * FROM bismarck.train_glm('two', 'species', ARRAY['x'], 'two_text', "
                 f"loss => %s, seed => 1{options})", [loss])
    assert conn.execute("SELECT bismarck.classes('two_text')").fetchone()[0] == [
        "versicolor", "virginica"]
    right, n = _matches(conn, "two_text", "two", "species", "text")
    assert right / n >= 0.85
    conn.execute("SELECT * FROM bismarck.train_glm('iris_train', 'wide', ARRAY['x'], "
                 f"'wide_bool', loss => %s, seed => 1{options})", [loss])
    assert conn.execute("SELECT bismarck.classes('wide_bool')").fetchone()[0] == [
        "false", "true"]
    right, n = _matches(conn, "wide_bool", "iris_test", "wide", "boolean")
    assert right / n >= 0.9
    got = conn.execute("SELECT bismarck.predict_class('wide_bool', x, NULL::boolean) "
                       "FROM iris_test ORDER BY id LIMIT 1").fetchone()[0]
    assert isinstance(got, bool)
    metrics = dict(conn.execute("SELECT * FROM bismarck.evaluate('wide_bool', 'iris_test')"))
    assert metrics["accuracy"] == pytest.approx(right / n)
    conn.execute("DROP TABLE two")


def test_mlp_on_a_text_label(conn: psycopg.Connection, iris: dict) -> None:
    conn.execute("SELECT * FROM bismarck.train_mlp('iris_train', 'species', ARRAY['x'], "
                 "'iris_mlp_text', hidden => ARRAY[16], learning_rate_init => 0.01, "
                 "seed => 0, validation_fraction => 0)")
    right, n = _matches(conn, "iris_mlp_text", "iris_test", "species", "text")
    assert right / n >= 0.85
    metrics = dict(conn.execute("SELECT * FROM bismarck.evaluate('iris_mlp_text', 'iris_test')"))
    assert metrics["accuracy"] == pytest.approx(right / n)
    proba = conn.execute("SELECT bismarck.predict_proba('iris_mlp_text', x) FROM iris_test "
                         "LIMIT 1").fetchone()[0]
    assert len(proba) == 3 and sum(proba) == pytest.approx(1.0)


def test_the_float8_form_refuses_a_class_label_and_names_the_typed_one(
        conn: psycopg.Connection, iris: dict) -> None:
    conn.execute("SELECT * FROM bismarck.train_glm('iris_train', 'species', ARRAY['x'], "
                 "'iris_refuse', loss => 'softmax', max_epochs => 2, seed => 1)")
    with pytest.raises(psycopg.errors.DatatypeMismatch) as err:
        conn.execute("SELECT bismarck.predict_class('iris_refuse', ARRAY[1, 2, 3, 4]::float8[])")
    assert "NULL::text" in err.value.diag.message_hint
    with pytest.raises(psycopg.errors.DatatypeMismatch, match="type text, not boolean"):
        conn.execute("SELECT bismarck.predict_class('iris_refuse', ARRAY[1, 2, 3, 4]::float8[], "
                     "NULL::boolean)")
    with pytest.raises(psycopg.errors.DataException, match="3 elements but model"):
        conn.execute("SELECT bismarck.predict_class('iris_refuse', ARRAY[1, 2, 3]::float8[], "
                     "NULL::text)")
    assert conn.execute("SELECT bismarck.predict_class('iris_refuse', NULL::float8[], NULL::text), "
                        "bismarck.predict_label('iris_refuse', ARRAY[1, NULL, 3, 4]::float8[])"
                        ).fetchone() == (None, None)
    # a numeric label keeps the float8 form and also answers in a numeric type or as text
    conn.execute("CREATE TEMP TABLE num AS SELECT x, (array_position(ARRAY['setosa', "
                 "'versicolor', 'virginica'], species) * 10)::bigint AS y FROM iris_train")
    conn.execute("SELECT * FROM bismarck.train_glm('num', 'y', ARRAY['x'], 'iris_num', "
                 "loss => 'softmax', max_epochs => 5, seed => 1)")
    row = conn.execute("SELECT bismarck.predict_class('iris_num', x), "
                       "bismarck.predict_class('iris_num', x, NULL::bigint), "
                       "bismarck.predict_label('iris_num', x) FROM num LIMIT 1").fetchone()
    assert row[0] in (10.0, 20.0, 30.0) and row[1] == int(row[0]) and row[2] == str(row[1])
    stored = conn.execute("SELECT stored FROM bismarck.models WHERE model_name = 'iris_num'"
                          ).fetchone()[0]
    assert "label_type" not in stored and "class_labels" not in stored
    conn.execute("DROP TABLE num")


@pytest.mark.parametrize("setup, call, sqlstate, message", [
    ("CREATE TEMP TABLE bad AS SELECT ARRAY[i::float8] AS x, CASE WHEN i > 3 THEN 'a' END AS y "
     "FROM generate_series(1, 20) i", "loss => 'softmax'", "22000", "one class only"),
    ("CREATE TEMP TABLE bad AS SELECT ARRAY[i::float8] AS x, 'c' || i AS y "
     "FROM generate_series(1, 1001) i", "loss => 'softmax'", "22000", "too many classes"),
    ("CREATE TEMP TABLE bad AS SELECT ARRAY[i::float8] AS x, 'c' || (i % 3) AS y "
     "FROM generate_series(1, 30) i", "loss => 'logistic'", "22000", "not binary"),
    ("CREATE TEMP TABLE bad AS SELECT ARRAY[i::float8] AS x, 'c' || (i % 3) AS y "
     "FROM generate_series(1, 30) i", "loss => 'squared'", "42804", "has type text"),
])
def test_bad_class_labels_are_clear_errors_and_store_nothing(
        conn: psycopg.Connection, setup: str, call: str, sqlstate: str, message: str) -> None:
    conn.execute(setup)
    with pytest.raises(psycopg.Error, match=message) as err:
        conn.execute(f"SELECT * FROM bismarck.train_glm('bad', 'y', ARRAY['x'], 'bad', {call})")
    assert err.value.sqlstate == sqlstate and err.value.diag.message_hint
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = 'bad'"
                        ).fetchone() == (0,)
    conn.execute("DROP TABLE bad")


def test_mlp_refuses_too_many_text_classes_and_regression_on_text(
        conn: psycopg.Connection) -> None:
    conn.execute("CREATE TEMP TABLE many AS SELECT ARRAY[i::float8] AS x, 'c' || i AS y "
                 "FROM generate_series(1, 1001) i")
    for options, message in (("", "too many classes"), (", task => 'regression'", "type text")):
        with pytest.raises(psycopg.Error, match=message):
            conn.execute("SELECT * FROM bismarck.train_mlp('many', 'y', ARRAY['x'], 'many'"
                         f"{options})")
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = 'many'"
                        ).fetchone() == (0,)


def test_null_labels_are_skipped_and_unknown_classes_refused_at_evaluate(
        conn: psycopg.Connection, iris: dict) -> None:
    conn.execute("CREATE TEMP TABLE holes AS SELECT x, CASE WHEN id % 7 = 0 THEN NULL "
                 "ELSE species END AS species FROM iris_train")
    nulls = conn.execute("SELECT count(*) FROM holes WHERE species IS NULL").fetchone()[0]
    conn.execute("SELECT * FROM bismarck.train_glm('holes', 'species', ARRAY['x'], "
                 "'iris_holes', loss => 'softmax', max_epochs => 5, seed => 1)")
    metrics = conn.execute("SELECT metrics FROM bismarck.models WHERE model_name = "
                           "'iris_holes'").fetchone()[0]
    assert metrics["skipped_rows"] == nulls > 0
    conn.execute("CREATE TEMP TABLE renamed AS SELECT x, CASE WHEN species = 'setosa' "
                 "THEN 'rose' ELSE species END AS species FROM iris_test")
    for model in ("iris_holes", "iris_mlp_unknown", "two_unknown"):
        if model == "iris_mlp_unknown":
            conn.execute("SELECT * FROM bismarck.train_mlp('iris_train', 'species', "
                         "ARRAY['x'], 'iris_mlp_unknown', hidden => ARRAY[4], max_epochs => 2)")
        if model == "two_unknown":
            conn.execute("CREATE TEMP TABLE two AS SELECT * FROM iris_train "
                         "WHERE species <> 'virginica'")
            conn.execute("SELECT * FROM bismarck.train_glm('two', 'species', ARRAY['x'], "
                         "'two_unknown', max_epochs => 2)")
        with pytest.raises(psycopg.Error, match="outside the model's classes") as err:
            conn.execute("SELECT * FROM bismarck.evaluate(%s, 'renamed')", [model])
        assert "'versicolor'" in err.value.diag.message_detail


def test_cli_trains_on_a_text_label_and_prints_labels(dsn: str, conn: psycopg.Connection,
                                                      iris: dict) -> None:
    from click.testing import CliRunner

    from bismarck_controller.cli import main

    runner = CliRunner()
    got = runner.invoke(main, ["train", "iris_train", "--label", "species", "--features", "x",
                               "--loss", "softmax", "--model", "iris_cli", "--seed", "1",
                               "--dsn", dsn])
    assert got.exit_code == 0, got.output
    got = runner.invoke(main, ["predict", "iris_cli", "iris_test", "--classes", "--columns",
                               "species", "--limit", "200", "--dsn", dsn])
    assert got.exit_code == 0, got.output
    assert "setosa" in got.output and "versicolor" in got.output
    got = runner.invoke(main, ["predict", "iris_cli", "iris_test", "--classes", "--columns",
                               "id,se", "--output", "iris_cli_out", "--dsn", dsn])
    assert got.exit_code == 0, got.output
    kind, right, n = conn.execute(
        "SELECT pg_typeof(prediction)::text, count(*) FILTER (WHERE prediction = t.species), "
        "count(*) FROM iris_cli_out JOIN iris_test AS t USING (id) GROUP BY 1").fetchone()
    assert kind == "text" and right / n >= 0.85


def test_estimators_give_classes_and_predictions_in_the_label_type(
        dsn: str, conn: psycopg.Connection, iris: dict) -> None:
    from bismarck_controller.estimators import MLPClassifier, SGDClassifier

    clf = SGDClassifier(loss="softmax", random_state=1, model_name="iris_est")
    clf.fit(dsn, "iris_train", "species", "x")
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    assert clf.coef_.shape == (3, 4) and clf.intercept_.shape == (3,)
    pred = clf.predict(dsn, "iris_test", order_by="id")
    truth = [r[0] for r in conn.execute("SELECT species FROM iris_test ORDER BY id")]
    assert (pred == np.array(truth, dtype=object)).mean() >= 0.85
    assert clf.predict_proba(dsn, "iris_test").shape == (len(truth), 3)
    assert clf.score(dsn, "iris_test") == pytest.approx((pred == np.array(truth)).mean())
    assert list(SGDClassifier.from_model(dsn, "iris_est").classes_) == list(clf.classes_)
    with pytest.raises(AttributeError, match="predict_proba"):
        clf.decision_function(dsn, "iris_test")
    b = SGDClassifier(random_state=1, model_name="wide_est").fit(dsn, "iris_train", "wide", "x")
    assert b.classes_.dtype == bool and list(b.classes_) == [False, True]
    wide = b.predict(dsn, "iris_test", order_by="id")
    assert wide.dtype == bool
    mlp = MLPClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.01, random_state=0,
                        model_name="iris_mlp_est").fit(dsn, "iris_train", "se", "x")
    assert list(mlp.classes_) == ["virginica", "versicolor", "setosa"]
    assert set(mlp.predict(dsn, "iris_test")) <= set(mlp.classes_)


def test_class_weight_names_text_classes_by_their_values(conn: psycopg.Connection,
                                                         iris: dict) -> None:
    conn.execute("CREATE TEMP TABLE two AS SELECT * FROM iris_train WHERE species <> 'setosa'")
    conn.execute("SELECT * FROM bismarck.train_glm('two', 'species', ARRAY['x'], 'two_w', "
                 "class_weight => '{\"virginica\": 3}', max_epochs => 3, seed => 1)")
    metrics = conn.execute("SELECT metrics FROM bismarck.models WHERE model_name = 'two_w'"
                           ).fetchone()[0]
    assert metrics["class_weight"] == {"versicolor": 1.0, "virginica": 3.0}
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="'rose'"):
        conn.execute("SELECT * FROM bismarck.train_glm('two', 'species', ARRAY['x'], 'two_w', "
                     "class_weight => '{\"rose\": 3}', max_epochs => 3)")


def test_softmax_trains_on_packed_blocks_unless_they_would_round_its_classes(
        conn: psycopg.Connection, iris: dict) -> None:
    runs = {}
    for label, name in (("species", "iris_packed_text"), ("se", "iris_packed_enum")):
        runs[name] = conn.execute(
            "SELECT train_loss FROM bismarck.train_glm('iris_train', %s, ARRAY['x'], %s, "
            "loss => 'softmax', max_epochs => 5, tol => NULL, seed => 1)", [label, name]
        ).fetchone()[0]
        assert conn.execute("SELECT params->>'packed' FROM bismarck.models WHERE "
                            "model_name = %s", [name]).fetchone() == ("true",)
    # the same rows and shuffle: the enum's classes are the text's in another order
    assert runs["iris_packed_enum"] == pytest.approx(runs["iris_packed_text"], rel=1e-6)
    right, n = _matches(conn, "iris_packed_text", "iris_test", "species", "text")
    assert right / n >= 0.8
    # numeric classes that a float32 block could round train on a row copy, with a note
    conn.execute("CREATE TEMP TABLE tenths AS SELECT x, array_position(ARRAY['setosa', "
                 "'versicolor', 'virginica'], species) * 0.1 AS y FROM iris_train")
    conn.execute("SELECT * FROM bismarck.train_glm('tenths', 'y', ARRAY['x'], 'tenths', "
                 "loss => 'softmax', max_epochs => 5, seed => 1)")
    packed, skipped = conn.execute("SELECT params->>'packed', metrics->>'skipped_rows' FROM "
                                   "bismarck.models WHERE model_name = 'tenths'").fetchone()
    assert packed == "false" and skipped == "0"
    assert conn.execute("SELECT bismarck.classes('tenths')").fetchone()[0] == [
        "0.1", "0.2", "0.3"]


# -- issue 12: class labels end to end -------------------------------------------------------


@pytest.mark.parametrize("train, label, typed", [
    ("train_glm('iris_train', 'species', ARRAY['x'], 'p_text', loss => 'softmax', "
     "max_epochs => 3, seed => 1)", "species", "text"),
    ("train_glm('iris_train', 'se', ARRAY['x'], 'p_enum', loss => 'softmax', max_epochs => 3, "
     "seed => 1)", "se", "iris_species"),
    ("train_glm('iris_train', 'wide', ARRAY['x'], 'p_bool', loss => 'softmax', "
     "max_epochs => 3, seed => 1)", "wide", "boolean"),
    ("train_mlp('iris_train', 'species', ARRAY['x'], 'p_mlp', hidden => ARRAY[4], "
     "max_epochs => 3, seed => 1)", "species", "text"),
    ("train_mlp('iris_train', 'wide', ARRAY['x'], 'p_mlp_bool', hidden => ARRAY[4], "
     "max_epochs => 3, seed => 1)", "wide", "boolean"),
], ids=["softmax-text", "softmax-enum", "softmax-boolean", "mlp-text", "mlp-boolean"])
def test_predict_refuses_a_class_index_for_a_label_that_is_not_a_number(
        dsn: str, conn: psycopg.Connection, iris: dict, train: str, label: str,
        typed: str) -> None:
    """A softmax or MLP classifier's predict is its class: for a text, enum or boolean label
    its models.classes are indexes, which predict must never return in the class's place."""
    name = conn.execute(f"SELECT model_name FROM bismarck.{train}").fetchone()[0]
    with pytest.raises(psycopg.errors.DatatypeMismatch, match="not numbers") as err:
        conn.execute("SELECT bismarck.predict(%s, x) FROM iris_test", [name])
    hint = err.value.diag.message_hint
    assert (f"NULL::{typed}" in hint or f"NULL::public.{typed}" in hint) \
        and "predict_label" in hint
    # NULL features do not hide the refusal: the model, not the row, decides
    with pytest.raises(psycopg.errors.DatatypeMismatch):
        conn.execute("SELECT bismarck.predict(%s, NULL::float8[])", [name])
    # the typed form and predict_label answer; the CLI and Python print the label's values
    right, n = _matches(conn, name, "iris_test", label, typed)
    assert n > 0 and right >= 0
    from bismarck_controller import training

    with psycopg.connect(dsn) as own:  # the library's calls take a transaction of their own
        rows = training.predict(own, name, "iris_test", columns=["id"], order_by="id")
    assert isinstance(rows, list)
    want = [r[0] for r in conn.execute(
        f"SELECT bismarck.predict_class(%s, x, NULL::{typed}) FROM iris_test ORDER BY id",
        [name])]
    assert [r["prediction"] for r in rows] == want
    kinds = {type(v) for v in want}
    assert kinds == ({bool} if typed == "boolean" else {str})


def test_predict_of_binary_and_numeric_classifiers_is_unchanged(
        dsn: str, conn: psycopg.Connection, iris: dict) -> None:
    """A binary GLM's predict is P(second class) whatever the label's type; a softmax on a
    numeric label predicts the class's value."""
    conn.execute("SELECT * FROM bismarck.train_glm('iris_train', 'wide', ARRAY['x'], "
                 "'p_logistic_bool', max_epochs => 3, seed => 1)")
    rows = conn.execute("SELECT bismarck.predict('p_logistic_bool', x), "
                        "bismarck.predict_proba('p_logistic_bool', x) FROM iris_test").fetchall()
    assert all(0 < p < 1 and p == pytest.approx(proba[1]) for p, proba in rows)
    conn.execute("CREATE TEMP TABLE num3 AS SELECT x, array_position(ARRAY['setosa', "
                 "'versicolor', 'virginica'], species) * 7 AS y FROM iris_train")
    conn.execute("SELECT * FROM bismarck.train_glm('num3', 'y', ARRAY['x'], 'p_num', "
                 "loss => 'softmax', max_epochs => 3, seed => 1)")
    same = conn.execute("SELECT count(*) FILTER (WHERE bismarck.predict('p_num', x) = "
                        "bismarck.predict_class('p_num', x)), count(*) FROM iris_test").fetchone()
    assert same[0] == same[1] > 0
    from click.testing import CliRunner

    from bismarck_controller.cli import main

    got = CliRunner().invoke(main, ["predict", "p_logistic_bool", "iris_test", "--columns", "",
                                    "--limit", "3", "--dsn", dsn])
    assert got.exit_code == 0, got.output
    assert "0." in got.output and "true" not in got.output.lower()
    conn.execute("DROP TABLE num3")


def test_cli_predict_prints_the_classes_of_a_text_softmax_without_classes_flag(
        dsn: str, conn: psycopg.Connection, iris: dict) -> None:
    from click.testing import CliRunner

    from bismarck_controller.cli import main

    conn.execute("SELECT * FROM bismarck.train_glm('iris_train', 'species', ARRAY['x'], "
                 f"'p_cli', loss => 'softmax', {IRIS_FIT})")
    got = CliRunner().invoke(main, ["predict", "p_cli", "iris_test", "--columns", "species",
                                    "--limit", "200", "--dsn", dsn])
    assert got.exit_code == 0, got.output
    assert "setosa" in got.output and "virginica" in got.output
    got = CliRunner().invoke(main, ["predict", "p_cli", "iris_test", "--columns", "id",
                                    "--output", "p_cli_out", "--dsn", dsn])
    assert got.exit_code == 0, got.output
    kind, right, n = conn.execute(
        "SELECT pg_typeof(prediction)::text, count(*) FILTER (WHERE prediction = t.species), "
        "count(*) FROM p_cli_out JOIN iris_test AS t USING (id) GROUP BY 1").fetchone()
    assert kind == "text" and right / n >= 0.85


P53 = 2**53


_INEXACT = {
    "bigint-merged": ([P53, P53 + 1, P53 + 2], "bigint", [f"{P53}", f"{P53 + 1}"]),
    "numeric-merged": (["0.1", "0.10000000000000000001"], "numeric",
                       ["0.1", "0.10000000000000000001"]),
    "bigint-odd-beyond-2**53": ([0, P53 + 1], "bigint", [f"{P53 + 1}", f"{P53}"]),
    "bigint-binary": ([P53, P53 + 1], "bigint", [f"{P53}", f"{P53 + 1}"]),
    "numeric-22-digits": (["0", "0.3333333333333333333333"], "numeric",
                          ["0.3333333333333333333333"]),
}
_TRAINS = {
    "softmax": "train_glm('exact', 'y', ARRAY['x'], 'exact', loss => 'softmax', "
               "max_epochs => 2)",
    "mlp": "train_mlp('exact', 'y', ARRAY['x'], 'exact', hidden => ARRAY[2], max_epochs => 2)",
    "logistic": "train_glm('exact', 'y', ARRAY['x'], 'exact', loss => 'logistic', "
                "max_epochs => 2)",
}


@pytest.mark.parametrize("values, column_type, shown, train", [
    pytest.param(*case, call, id=f"{how}-{name}")
    for name, case in _INEXACT.items() for how, call in _TRAINS.items()
    if how != "logistic" or len(case[0]) == 2])  # a binary loss: two classes
def test_numeric_classes_that_float8_does_not_hold_are_refused_before_training(
        conn: psycopg.Connection, values: list, column_type: str, shown: list[str],
        train: str) -> None:
    conn.execute(f"CREATE TEMP TABLE exact (x float8[], y {column_type})")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO exact VALUES (%s, %s::" + column_type + ")",
                        [([float(i % 7), float(i % 3)], str(values[i % len(values)]))
                         for i in range(60)])
    with pytest.raises(psycopg.errors.DataException) as err:
        conn.execute(f"SELECT * FROM bismarck.{train}")
    text = err.value.diag.message_primary + " " + (err.value.diag.message_detail or "")
    assert "double precision" in text
    for value in shown:  # written exactly, never 9.0072e+15
        assert value in text, text
    assert "e+15" not in text
    assert "::text" in err.value.diag.message_hint
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = 'exact'"
                        ).fetchone() == (0,)
    # the fix the hint gives: the label as text keeps every class exactly
    conn.execute("CREATE TEMP VIEW exact_text AS SELECT x, y::text AS y FROM exact")
    conn.execute("SELECT * FROM bismarck." + train.replace("'exact', 'y'", "'exact_text', 'y'"))
    classes = conn.execute("SELECT bismarck.classes('exact')").fetchone()[0]
    assert sorted(classes) == sorted({str(v) for v in values})
    conn.execute("DROP VIEW exact_text")
    conn.execute("DROP TABLE exact")
    conn.execute("SELECT bismarck.delete_model('exact')")


def test_typed_numeric_classes_cast_or_say_why_not(dsn: str, conn: psycopg.Connection) -> None:
    """Integral classes are written in digits (1000000000000000, not 1e+15) so they cast to
    bigint and numeric; a class the asked type cannot hold is a clear error (22003)."""
    conn.execute("CREATE TABLE big3 AS SELECT ARRAY[(i % 3)::float8, (i % 5)::float8] AS x, "
                 "((i % 3 + 1) * 1000000000000000)::bigint AS y, (i % 3)::smallint AS s, "
                 "(i % 3 + 0.5)::float8 AS h FROM generate_series(1, 90) i")
    for label, name in (("y", "big3"), ("s", "small3"), ("h", "half3")):
        conn.execute("SELECT * FROM bismarck.train_glm('big3', %s, ARRAY['x'], %s, "
                     "loss => 'softmax', max_epochs => 5, seed => 1)", [label, name])
    got = conn.execute(
        "SELECT bismarck.predict_class('big3', x, NULL::bigint), "
        "bismarck.predict_class('big3', x, NULL::numeric), bismarck.predict_label('big3', x), "
        "bismarck.predict_class('big3', x) FROM big3").fetchall()
    assert {r[0] for r in got} <= {10**15, 2 * 10**15, 3 * 10**15}
    assert all(r[0] == r[1] == int(r[3]) and r[2] == str(r[0]) for r in got)
    assert conn.execute("SELECT bismarck.classes('big3')").fetchone()[0] == [
        "1000000000000000", "2000000000000000", "3000000000000000"]
    # NULL::integer is predict_class's version argument: the float8 form answers
    assert conn.execute("SELECT pg_typeof(bismarck.predict_class('big3', ARRAY[1, 2]::float8[], "
                        "NULL::integer))::text").fetchone() == ("double precision",)
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match="smallint") as err:
        conn.execute("SELECT bismarck.predict_class('big3', ARRAY[1, 2]::float8[], "
                     "NULL::smallint)")
    assert "3000000000000000" in err.value.diag.message_detail
    assert "NULL::numeric" in err.value.diag.message_hint
    # NULL::smallint is not ambiguous: its own overload answers in smallint
    small = conn.execute("SELECT bismarck.predict_class('small3', x, NULL::smallint), "
                         "pg_typeof(bismarck.predict_class('small3', x, NULL::smallint))::text "
                         "FROM big3 LIMIT 5").fetchall()
    assert all(v in (0, 1, 2) and t == "smallint" for v, t in small)
    # a class that is not an integer, asked as one
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match="bigint"):
        conn.execute("SELECT bismarck.predict_class('half3', x, NULL::bigint) FROM big3")
    halves = {r[0] for r in conn.execute(
        "SELECT bismarck.predict_class('half3', x, NULL::numeric) FROM big3")}
    assert {float(v) for v in halves} <= {0.5, 1.5, 2.5}
    # the CLI prints a class exactly, never rounded to 6 digits (2e+15)
    from click.testing import CliRunner

    from bismarck_controller.cli import main

    for flags in ([], ["--classes"]):
        got = CliRunner().invoke(main, ["predict", "big3", "big3", "--columns", "", "--limit",
                                        "90", "--dsn", dsn, *flags])
        assert got.exit_code == 0, got.output
        assert "000000000000000" in got.output and "e+15" not in got.output, got.output
    conn.execute("DROP TABLE big3")


def test_numeric_classes_beyond_2_53_that_float8_holds_are_kept_exactly(
        conn: psycopg.Connection) -> None:
    conn.execute("CREATE TEMP TABLE even AS SELECT ARRAY[(i % 2)::float8] AS x, "
                 "(9007199254740994 + 2 * (i % 2))::bigint AS y FROM generate_series(1, 40) i")
    conn.execute("SELECT * FROM bismarck.train_glm('even', 'y', ARRAY['x'], 'even', "
                 "loss => 'softmax', max_epochs => 30, seed => 1)")
    right, n = conn.execute("SELECT count(*) FILTER (WHERE bismarck.predict_class('even', x, "
                            "NULL::bigint) = y), count(*) FROM even").fetchone()
    assert right == n == 40
    conn.execute("DROP TABLE even")


def test_evaluate_names_a_label_of_another_type_than_the_model_s(
        conn: psycopg.Connection, iris: dict) -> None:
    conn.execute("CREATE TEMP TABLE ints AS SELECT x, array_position(ARRAY['setosa', "
                 "'versicolor', 'virginica'], species) AS y, wide FROM iris_train")
    conn.execute("CREATE TEMP TABLE texts AS SELECT x, y::text AS y, wide::text AS wide "
                 "FROM ints")
    conn.execute("SELECT * FROM bismarck.train_glm('ints', 'y', ARRAY['x'], 'ev_int', "
                 "loss => 'softmax', max_epochs => 2, seed => 1)")
    conn.execute("SELECT * FROM bismarck.train_glm('ints', 'wide', ARRAY['x'], 'ev_bool', "
                 "max_epochs => 2, seed => 1)")
    conn.execute("SELECT * FROM bismarck.train_mlp('ints', 'y', ARRAY['x'], 'ev_mlp', "
                 "hidden => ARRAY[2], max_epochs => 2, seed => 1)")
    for model, trained in (("ev_int", "a numeric label"), ("ev_bool", "type boolean"),
                           ("ev_mlp", "a numeric label")):
        with pytest.raises(psycopg.errors.DatatypeMismatch) as err:
            conn.execute("SELECT * FROM bismarck.evaluate(%s, 'texts')", [model])
        message = err.value.diag.message_primary
        assert "has type text" in message and trained in message and model in message
        assert "train" not in err.value.diag.message_hint
    conn.execute("DROP TABLE ints, texts")
