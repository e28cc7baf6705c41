"""The multi-layer perceptron end to end on a real server: SQL, controller, bad input.

Accuracy references are scikit-learn's MLPs with the same layers, fitted here in the test.
"""

from __future__ import annotations

import warnings

import numpy as np
import psycopg
import pytest
from reference_data import load_array_table, load_table

from bismarck_controller import training
from bismarckpy.errors import BismarckError


def _digits(conn: psycopg.Connection):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    load_array_table(conn, "digits_train", Xtr, ytr)
    load_array_table(conn, "digits_test", Xte, yte)
    conn.commit()
    return Xtr, Xte, ytr, yte


def _scaled(Xtr, Xte):
    mu, sd = Xtr.mean(0), Xtr.std(0)
    sd[sd == 0] = 1.0
    return (Xtr - mu) / sd, (Xte - mu) / sd


def test_digits_from_sql_close_to_sklearn(conn: psycopg.Connection) -> None:
    from sklearn.neural_network import MLPClassifier

    Xtr, Xte, ytr, yte = _digits(conn)
    row = conn.execute(
        "SELECT version, epochs, validation_loss FROM bismarck.train_mlp('digits_train', 'y', "
        "ARRAY['x'], 'digits_mlp', hidden => ARRAY[64, 32], max_epochs => 60, seed => 0)"
    ).fetchone()
    assert row is not None and row[0] == 1 and row[2] is not None
    kind, stored_classes, sizes = conn.execute(
        "SELECT kind, classes, stored -> 'sizes' FROM bismarck.models "
        "WHERE model_name = 'digits_mlp'").fetchone()
    assert kind == "mlp" and stored_classes == [float(c) for c in range(10)]
    assert sizes == [64, 64, 32, 10]
    pred = np.array([r[0] for r in conn.execute(
        "SELECT bismarck.predict_class('digits_mlp', x) FROM digits_test ORDER BY id")])
    ours = float((pred == yte).mean())
    a, b = _scaled(Xtr, Xte)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=60, random_state=0,
                            early_stopping=True, n_iter_no_change=10).fit(a, ytr)
    assert ours >= ref.score(b, yte) - 0.03, (ours, ref.score(b, yte))
    proba = conn.execute("SELECT bismarck.predict_proba('digits_mlp', x), "
                         "bismarck.predict_class('digits_mlp', x), "
                         "bismarck.predict('digits_mlp', x) FROM digits_test LIMIT 5").fetchall()
    for p, c, v in proba:
        assert len(p) == 10 and abs(sum(p) - 1) < 1e-9 and float(np.argmax(p)) == c == v
    metrics = dict(conn.execute(
        "SELECT metric, value FROM bismarck.evaluate('digits_mlp', 'digits_test')").fetchall())
    assert metrics["accuracy"] == pytest.approx(ours)
    history = conn.execute("SELECT count(*) FROM bismarck.training_history "
                           "WHERE model_name = 'digits_mlp'").fetchone()
    assert history[0] >= 1


def test_diabetes_from_controller_close_to_sklearn(dsn: str, conn: psycopg.Connection) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPRegressor

    X, y = load_diabetes(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)
    names = [f"f{i}" for i in range(X.shape[1])]
    load_table(conn, "diab_train", names, Xtr, ytr)
    load_table(conn, "diab_test", names, Xte, yte)
    with psycopg.connect(dsn) as c:
        result = training.train(c, "diab_train", "y", names, "diab_mlp", kind="mlp",
                                hidden=[64, 32], task="regression", max_epochs=100, seed=0,
                                learning_rate_init=0.01)
    assert result.version == 1
    cols = ", ".join(names)
    pred = np.array([r[0] for r in conn.execute(
        f"SELECT bismarck.predict('diab_mlp', ARRAY[{cols}]) FROM diab_test ORDER BY id")])
    ours = r2_score(yte, pred)
    a, b = _scaled(Xtr, Xte)
    ym, ys = ytr.mean(), ytr.std()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=100, random_state=0,
                           learning_rate_init=0.01, early_stopping=True,
                           n_iter_no_change=10).fit(a, (ytr - ym) / ys)
    theirs = r2_score(yte, ref.predict(b) * ys + ym)
    assert ours >= theirs - 0.05, (ours, theirs)
    metrics = dict(conn.execute(
        "SELECT metric, value FROM bismarck.evaluate('diab_mlp', 'diab_test')").fetchall())
    assert metrics["r2"] == pytest.approx(ours, abs=1e-9)


def _small(conn: psycopg.Connection, name: str = "mlp_small", n: int = 60) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] > 0).astype(float) + (X[:, 1] > 0.5)
    load_array_table(conn, name, X, y)
    conn.commit()


def _models(conn: psycopg.Connection, name: str) -> int:
    return conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = %s",
                        [name]).fetchone()[0]


@pytest.mark.parametrize("call,sqlstate,match", [
    ("hidden => ARRAY[4, 0]", "22023", "hidden"),
    ("hidden => ARRAY[]::int[]", None, None),  # allowed: a softmax model without hidden layers
    ("activation => 'softplus'", "22023", "activation"),
    ("task => 'ranking'", "22023", "task"),
    ("solver => 'lbfgs'", "22023", "solver"),
    ("learning_rate_init => 0", "22023", "learning_rate_init"),
    ("beta_2 => 1", "22023", "beta_2"),
])
def test_bad_parameters_are_refused(conn: psycopg.Connection, call, sqlstate, match) -> None:
    _small(conn)
    name = f"bad_mlp_{abs(hash(call))}"
    sql = (f"SELECT version FROM bismarck.train_mlp('mlp_small', 'y', ARRAY['x'], '{name}', "
           f"{call}, max_epochs => 2, seed => 1)")
    if sqlstate is None:
        assert conn.execute(sql).fetchone() == (1,)
        return
    with pytest.raises(psycopg.Error) as err:
        conn.execute(sql)
    assert err.value.sqlstate == sqlstate
    assert match in str(err.value)
    assert _models(conn, name) == 0


def test_diverging_mlp_stores_nothing(conn: psycopg.Connection) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)) * 100
    load_array_table(conn, "mlp_wild", X, X @ [1e3, -2e3, 5e2])
    conn.commit()
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT * FROM bismarck.train_mlp('mlp_wild', 'y', ARRAY['x'], 'wild', "
                     "task => 'regression', solver => 'sgd', learning_rate_init => 1e4, "
                     "momentum => 0.99, standardize => false, max_epochs => 50, seed => 1)")
    assert err.value.sqlstate == "22003"
    assert "diverged" in str(err.value) and "learning_rate_init" in str(err.value)
    assert _models(conn, "wild") == 0


def test_one_class_and_feature_length_mismatch(conn: psycopg.Connection) -> None:
    load_array_table(conn, "mlp_one", np.random.default_rng(0).normal(size=(20, 2)),
                     np.ones(20))
    conn.commit()
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT * FROM bismarck.train_mlp('mlp_one', 'y', ARRAY['x'], 'one', "
                     "seed => 1)")
    assert err.value.sqlstate == "22000" and "one class" in str(err.value)
    assert _models(conn, "one") == 0
    _small(conn)
    conn.execute("SELECT * FROM bismarck.train_mlp('mlp_small', 'y', ARRAY['x'], 'small_mlp', "
                 "hidden => ARRAY[4], max_epochs => 3, seed => 1)")
    conn.commit()
    for fn in ("predict", "predict_class", "predict_proba"):
        with pytest.raises(psycopg.Error) as err:
            conn.execute(f"SELECT bismarck.{fn}('small_mlp', ARRAY[1, 2, 3, 4]::float8[])")
            assert err.value.sqlstate == "22000" and "wrong length" in str(err.value), fn
    assert conn.execute("SELECT bismarck.predict_class('small_mlp', "
                        "ARRAY[1, NULL, 3]::float8[])").fetchone() == (None,)


def test_unknown_class_at_evaluate_and_regression_has_no_proba(conn) -> None:
    _small(conn)
    conn.execute("SELECT * FROM bismarck.train_mlp('mlp_small', 'y', ARRAY['x'], 'small2', "
                 "hidden => ARRAY[4], max_epochs => 3, seed => 1)")
    conn.execute("SELECT * FROM bismarck.train_mlp('mlp_small', 'y', ARRAY['x'], 'small_reg', "
                 "hidden => ARRAY[4], task => 'regression', max_epochs => 3, seed => 1)")
    conn.commit()
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT bismarck.predict_proba('small_reg', ARRAY[1, 2, 3]::float8[])")
    assert err.value.sqlstate == "22023"
    rng = np.random.default_rng(5)
    load_array_table(conn, "mlp_unknown", rng.normal(size=(10, 3)), np.full(10, 7.0))
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT * FROM bismarck.evaluate('small2', 'mlp_unknown')")
    assert err.value.sqlstate == "22000" and "outside the model's classes" in str(err.value)
    load_array_table(conn, "mlp_many", rng.normal(size=(1100, 2)), np.arange(1100.0))
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT * FROM bismarck.train_mlp('mlp_many', 'y', ARRAY['x'], 'many', "
                     "seed => 1)")
    assert err.value.sqlstate == "22000" and "too many classes" in str(err.value)
    assert "task => 'regression'" in str(err.value) and _models(conn, "many") == 0


def test_versions_and_warm_registry(conn: psycopg.Connection) -> None:
    """A second training is version 2; the seed makes a run reproducible."""
    _small(conn)
    q = ("SELECT version, train_loss FROM bismarck.train_mlp('mlp_small', 'y', ARRAY['x'], "
         "'again', hidden => ARRAY[5], max_epochs => 4, seed => 3)")
    v1, loss1 = conn.execute(q).fetchone()
    v2, loss2 = conn.execute(q).fetchone()
    conn.commit()
    assert (v1, v2) == (1, 2) and loss1 == loss2


def test_controller_errors_are_domain_errors(dsn: str, conn: psycopg.Connection) -> None:
    _small(conn)
    with psycopg.connect(dsn) as c, pytest.raises(BismarckError, match="hidden"):
        training.train(c, "mlp_small", "y", ["x"], "bad2", kind="mlp", hidden=[0])


def test_cli_trains_shows_evaluates_and_predicts_an_mlp(dsn: str, conn) -> None:
    from click.testing import CliRunner

    from bismarck_controller.cli import main

    def run(*args: str, group: bool = False) -> tuple[int, str]:
        argv = [args[0], "--dsn", dsn, *args[1:]] if group else [*args, "--dsn", dsn]
        result = CliRunner().invoke(main, argv, catch_exceptions=False)
        return result.exit_code, result.output

    _small(conn, "cli_mlp_data", n=80)
    code, out = run("train", "cli_mlp_data", "--label", "y", "--features", "x", "--kind", "mlp",
                    "--model", "cli_mlp", "--hidden", "8,4", "--solver", "sgd",
                    "--activation", "tanh", "--max-epochs", "5", "--seed", "2")
    assert code == 0, out
    assert "model cli_mlp version 1" in out
    stored = conn.execute("SELECT kind, stored -> 'sizes', params ->> 'solver' FROM "
                          "bismarck.models WHERE model_name = 'cli_mlp'").fetchone()
    assert stored == ("mlp", [3, 8, 4, 3], "sgd")
    code, out = run("models", "show", "cli_mlp", group=True)
    assert code == 0 and "kind mlp" in out and "classes: [0.0, 1.0, 2.0]" in out, out
    # the stored form's small arrays by value (not their lengths), the weights by their shape
    flat = "".join(out.split())  # rich wraps long lines
    assert '"hidden":[8,4]' in flat and '"sizes":[3,8,4,3]' in flat, out
    code, out = run("train", "cli_mlp_data", "--label", "y", "--features", "x", "--kind", "mlp",
                    "--model", "cli_mlp_none", "--hidden", "", "--max-epochs", "1")
    assert code != 0 and "hidden" in out and "'[]'" in out, out  # blank: refused, not []
    code, out = run("models", group=True)
    assert code == 0 and "cli_mlp" in out, out  # listing a model without coefficients
    code, out = run("evaluate", "cli_mlp", "cli_mlp_data", "--json")
    assert code == 0 and '"accuracy"' in out and '"f1_macro"' in out, out
    code, out = run("predict", "cli_mlp", "cli_mlp_data", "--output", "cli_mlp_scores")
    assert code == 0 and "wrote 80 rows" in out, out
    code, out = run("train", "cli_mlp_data", "--label", "y", "--features", "x", "--kind",
                    "mlp", "--model", "cli_mlp_bad", "--hidden", "8,0")
    assert code != 0 and "hidden" in out and "Traceback" not in out


def test_estimators_fit_predict_score_and_reload(dsn: str, conn) -> None:
    from bismarck_controller.estimators import MLPClassifier, MLPRegressor

    _small(conn, "est_mlp", n=120)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=1,
                        learning_rate_init=0.01, model_name="est_clf")
    assert "hidden_layer_sizes=(8,)" in repr(clf)
    with psycopg.connect(dsn) as c:
        clf.fit(c, "est_mlp", "y", "x")
        proba = clf.predict_proba(c, "est_mlp", order_by="id")
        pred = clf.predict(c, "est_mlp", order_by="id")
        score = clf.score(c, "est_mlp")
        again = MLPClassifier.from_model(c, "est_clf")
        with pytest.raises(BismarckError, match="not an MLP"):
            MLPRegressor.from_model(c, "est_clf")
    assert list(clf.classes_) == [0.0, 1.0, 2.0] and clf.n_layers_ == 3
    assert proba.shape == (120, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], pred)
    assert 0.6 < score <= 1.0 and len(clf.history_) == clf.n_iter_
    import matplotlib

    matplotlib.use("Agg")
    ax = clf.plot_history()  # the loss curves of this fit, train and validation
    assert len(ax.lines) == 2 and len(ax.lines[0].get_xdata()) == clf.n_iter_
    assert again.get_params() == clf.get_params() | {"model_name": "est_clf", "batch_size": 200}
    reg = MLPRegressor(hidden_layer_sizes=[6], max_iter=10, random_state=1, model_name="est_reg")
    with psycopg.connect(dsn) as c:
        reg.fit(c, "est_mlp", "y", "x")
        values = reg.predict(c, "est_mlp")
        assert not hasattr(reg, "classes_") and values.shape == (120,)
        with pytest.raises(Exception, match="hidden"):
            MLPRegressor(hidden_layer_sizes=(4, 0)).fit(c, "est_mlp", "y", "x")


@pytest.mark.parametrize("options", [
    "packed => false, shuffle => 'always'",  # the row path: one transition per row
    "packed => false, shuffle => 'never', batch_size => 7",
    "parallel => 2, block_size => 2",  # partial states of workers merged by averaging
    "dtype => 'float64', batch_size => 0",  # full batch: one step per epoch
])
def test_every_execution_path_learns(conn: psycopg.Connection, options: str) -> None:
    _small(conn, "paths_mlp", n=150)
    name = f"paths_{abs(hash(options))}"
    row = conn.execute(
        f"SELECT epochs FROM bismarck.train_mlp('paths_mlp', 'y', ARRAY['x'], '{name}', "
        f"hidden => ARRAY[8], learning_rate_init => 0.05, max_epochs => 15, "
        f"validation_fraction => 0, seed => 4, {options})").fetchone()
    assert row is not None
    losses = [r[0] for r in conn.execute(
        "SELECT train_loss FROM bismarck.training_history WHERE model_name = %s "
        "ORDER BY epoch", [name])]
    assert len(losses) == row[0] and losses[-1] < losses[0]
    acc = dict(conn.execute(f"SELECT metric, value FROM bismarck.evaluate('{name}', "
                            "'paths_mlp')").fetchall())["accuracy"]
    assert acc > 0.6
    if "parallel" in options:
        workers = conn.execute("SELECT max(workers) FROM bismarck.training_history "
                               "WHERE model_name = %s", [name]).fetchone()[0]
        assert workers >= 1  # partial networks of workers were merged


def test_too_large_network_is_refused_before_any_work(conn) -> None:
    """A state beyond 256 MiB (here 1.6 TB of float64) is a 54000 error naming its size, not
    an internal MemoryError; no model is stored."""
    _small(conn, "mlp_huge", n=20)
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="too large") as err:
        conn.execute("SELECT * FROM bismarck.train_mlp('mlp_huge', 'y', ARRAY['x'], "
                     "'mlp_too_large', hidden => ARRAY[100000, 100000])")
    assert "MiB" in err.value.diag.message_detail
    assert conn.execute("SELECT count(*) FROM bismarck.models "
                        "WHERE model_name = 'mlp_too_large'").fetchone() == (0,)


def test_packed_multiclass_message_says_what_is_recorded(conn) -> None:
    _small(conn, "mlp_pk_src", n=60)
    conn.execute("SELECT * FROM bismarck.pack('mlp_pk_src', 'y', ARRAY['x'], 'mlp_pk')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="classes are not recorded"
                       ) as err:
        conn.execute("SELECT * FROM bismarck.train_mlp('mlp_pk', 'y', ARRAY['x'], 'pk', "
                     "hidden => ARRAY[4])")
    detail = err.value.diag.message_detail
    assert "only for a binary label" in detail and "at most three" not in detail, detail


def _diabetes(conn: psycopg.Connection) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    X, y = load_diabetes(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)
    load_array_table(conn, "diab_train", Xtr, ytr)
    load_array_table(conn, "diab_test", Xte, yte)
    conn.commit()


@pytest.mark.parametrize("table, task", [("diab_train", "regression"),
                                         ("digits_train", "classification")])
def test_a_run_far_worse_than_the_trivial_model_is_refused(conn, table, task) -> None:
    """The loss explodes in epoch 1 (6e9 for diabetes, 3e5 for digits) and stays there, so the
    bound on growth since epoch 1 never fires: the check against the trivial model's loss (the
    label's mean; uniform probabilities) refuses it, and nothing is stored."""
    _diabetes(conn) if table == "diab_train" else _digits(conn)
    rate = 5 if task == "regression" else 50
    with pytest.raises(psycopg.errors.NumericValueOutOfRange) as err:
        conn.execute(f"SELECT * FROM bismarck.train_mlp('{table}', 'y', ARRAY['x'], 'absurd', "
                     f"task => '{task}', learning_rate_init => {rate}, max_epochs => 20, "
                     "seed => 1)")
    assert "trivial model" in (err.value.diag.message_detail or "")
    assert "Lower learning_rate_init (try" in (err.value.diag.message_hint or "")
    assert _models(conn, "absurd") == 0
    if task == "regression":  # unstandardised: the label's mean, from its moments (not 0)
        with pytest.raises(psycopg.errors.NumericValueOutOfRange) as err:
            conn.execute(f"SELECT * FROM bismarck.train_mlp('{table}', 'y', ARRAY['x'], "
                         "'absurd', task => 'regression', standardize => false, solver => 'sgd', "
                         "learning_rate_init => 1, max_epochs => 20, seed => 1)")
        assert "predicting the label's mean" in err.value.diag.message_detail
        assert "use standardize => true" in err.value.diag.message_hint
        assert _models(conn, "absurd") == 0
    # the same data at the default rate trains (the check refuses no ordinary run)
    conn.execute(f"SELECT * FROM bismarck.train_mlp('{table}', 'y', ARRAY['x'], 'fine_{task}', "
                 f"task => '{task}', hidden => ARRAY[16], max_epochs => 5, seed => 1)")
    assert _models(conn, f"fine_{task}") == 1


def test_f1_macro_is_sklearns_on_rows_missing_classes(conn: psycopg.Connection) -> None:
    """Evaluated on digits with y < 5, the classes 5-9 are neither true nor (mostly) predicted:
    f1_macro is scikit-learn's f1_score(average='macro') over the labels that occur."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    _digits(conn)
    conn.execute("CREATE VIEW digits_low AS SELECT * FROM digits_test WHERE y < 5")
    conn.execute("SELECT * FROM bismarck.train_mlp('digits_train', 'y', ARRAY['x'], 'f1_mlp', "
                 "hidden => ARRAY[8], max_epochs => 3, seed => 0)")
    rows = conn.execute("SELECT y, bismarck.predict_class('f1_mlp', x), "
                        "bismarck.predict_proba('f1_mlp', x) FROM digits_low").fetchall()
    y = np.array([r[0] for r in rows])
    pred = np.array([r[1] for r in rows])
    proba = np.array([r[2] for r in rows])
    assert set(pred) - set(y), "the check needs a predicted class that is not a true one"
    metrics = dict(conn.execute("SELECT * FROM bismarck.evaluate('f1_mlp', 'digits_low')"))
    assert metrics["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert metrics["log_loss"] == pytest.approx(log_loss(y, proba, labels=range(10)), rel=1e-9)


def test_extreme_finite_features_are_null_not_nan(conn: psycopg.Connection) -> None:
    """Features of 1e307-1e308 on a model whose features have a spread of 1e-3 overflow its
    standardisation and hidden layers (inf - inf): predictions are NULL (as for NaN
    features), never NaN, and evaluate counts such rows as skipped instead of scoring them.
    Where the outputs only reach ±inf, the probabilities are the limit (one class 1)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    load_array_table(conn, "mlp_tiny", X * 1e-3, (X[:, 0] > 0) + (X[:, 1] > 0.5))
    for name, task in (("big_c", "classification"), ("big_r", "regression")):
        conn.execute(f"SELECT * FROM bismarck.train_mlp('mlp_tiny', 'y', ARRAY['x'], '{name}', "
                     f"hidden => ARRAY[4], task => '{task}', max_epochs => 3, seed => 1)")
    for x in ("ARRAY[1e308, -1e308, 1e308]", "ARRAY[1e307, 1e307, -1e307]"):
        assert conn.execute(f"SELECT bismarck.predict_proba('big_c', {x}), "
                            f"bismarck.predict_class('big_c', {x}), "
                            f"bismarck.predict('big_r', {x})").fetchone() == (None, None, None)
    before = dict(conn.execute("SELECT * FROM bismarck.evaluate('big_c', 'mlp_tiny')"))
    before_r = dict(conn.execute("SELECT * FROM bismarck.evaluate('big_r', 'mlp_tiny')"))
    conn.execute("INSERT INTO mlp_tiny (id, x, y) VALUES (1000, ARRAY[1e308, -1e308, 1e308], 1)")
    after = dict(conn.execute("SELECT * FROM bismarck.evaluate('big_c', 'mlp_tiny')"))
    after_r = dict(conn.execute("SELECT * FROM bismarck.evaluate('big_r', 'mlp_tiny')"))
    for b, a in ((before, after), (before_r, after_r)):
        assert a["skipped_rows"] == b["skipped_rows"] + 1 and a["rows"] == b["rows"]
        assert {k: v for k, v in a.items() if k != "skipped_rows"} == pytest.approx(
            {k: v for k, v in b.items() if k != "skipped_rows"})
    assert after["log_loss"] is not None and after["log_loss"] > 0
    # the model of unit-spread features gives the limit: finite probabilities summing to 1
    _small(conn)
    conn.execute("SELECT * FROM bismarck.train_mlp('mlp_small', 'y', ARRAY['x'], 'big_u', "
                 "hidden => ARRAY[4], max_epochs => 3, seed => 1)")
    p, c = conn.execute("SELECT bismarck.predict_proba('big_u', ARRAY[1e308, -1e308, 1e308]), "
                        "bismarck.predict_class('big_u', ARRAY[1e308, -1e308, 1e308])"
                        ).fetchone()
    assert p is None or (sum(p) == pytest.approx(1.0) and float(np.argmax(p)) == c)


def test_errors_of_scoring_functions_are_clean(conn: psycopg.Connection) -> None:
    """A public function's error has no Python traceback; a private one's bad stored input is
    an InvalidData error that says what it is, not a KeyError."""
    _small(conn)
    conn.execute("SELECT * FROM bismarck.train_mlp('mlp_small', 'y', ARRAY['x'], 'clean_r', "
                 "hidden => ARRAY[4], task => 'regression', max_epochs => 2, seed => 1)")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        conn.execute("SELECT bismarck.predict_proba('clean_r', ARRAY[1, 2, 3]::float8[])")
    assert str(err.value).startswith('model "clean_r" does not give probabilities')
    assert "Traceback" not in (err.value.diag.context or "")
    assert err.value.diag.message_hint == "Use bismarck.predict for its predictions."
    for call in ("bismarck._predict_kind('mlp', '{}', NULL, ARRAY[1.0])",
                 "bismarck._predict_proba_kind('softmax', '{\"coef\": 1}', NULL, ARRAY[1.0])"):
        with pytest.raises(psycopg.errors.DataException) as err:
            conn.execute(f"SELECT {call}")
        assert "not a stored model of kind" in str(err.value)
        assert "KeyError" not in str(err.value).split("\n")[0]
    # states the engine did not make: truncated or garbage after a kind's magic
    from bismarckpy import nn
    from bismarckpy.kinds import softmax

    for magic in (2012.0, nn.MAGIC, softmax.MAGIC):
        for tail in (b"\x00" * 7, np.array([1e9, 5, 3]).tobytes(), np.full(40, 3.0).tobytes()):
            state = np.array([magic]).tobytes() + tail
            for call in ("bismarck._epoch_final(%s)", "bismarck._epoch_merge(%s, %s)",
                         "bismarck._exact_step(NULL, NULL, 1.0, %s)",
                         "bismarck._moments_step(%s, %s)"):
                try:
                    conn.execute(f"SELECT {call}", [state] * call.count("%s"))
                except psycopg.errors.InternalError as e:  # XX000: a bare Python exception
                    pytest.fail(f"{call} on {state!r}: {e}")
                except psycopg.errors.DataException:
                    pass
    with pytest.raises(psycopg.errors.DataException) as err:
        conn.execute("SELECT bismarck._mf_export('\\x00')")
    assert err.value.diag.message_detail not in (None, "None")
    assert err.value.diag.message_hint not in (None, "None")


def test_adam_trains_on_huge_standardised_values_and_on_blocks(conn) -> None:
    """Values above 1e150 are refused only for the exact GLM solvers (whose Hessian sums their
    squares): Adam, like SGD, trains on their standardised values; shuffle => 'blocks' is
    open to Adam as to SGD."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2)) * [1e200, 1.0]
    load_array_table(conn, "mlp_huge", X, (X[:, 0] > 0).astype(float))
    for solver in ("adam", "sgd"):
        conn.execute("SELECT * FROM bismarck.train_mlp('mlp_huge', 'y', ARRAY['x'], "
                     f"'huge_{solver}', hidden => ARRAY[4], solver => '{solver}', "
                     "learning_rate_init => 0.05, max_epochs => 20, seed => 1)")
        acc = dict(conn.execute(f"SELECT * FROM bismarck.evaluate('huge_{solver}', "
                                "'mlp_huge')"))["accuracy"]
        assert acc > 0.9, solver
    _small(conn)
    row = conn.execute("SELECT epochs FROM bismarck.train_mlp('mlp_small', 'y', ARRAY['x'], "
                       "'blocks_adam', hidden => ARRAY[4], shuffle => 'blocks', "
                       "max_epochs => 3, seed => 1)").fetchone()
    assert row is not None and _models(conn, "blocks_adam") == 1


def test_constant_features_are_reported_by_every_generic_kind(conn) -> None:
    """A constant column is listed in metrics->'constant_features' by MLPs and softmax models as
    by GLMs; an MLP stores its sd as null (infinite scale), as a GLM's fitted sd."""
    from reference_data import load_table

    rng = np.random.default_rng(0)
    X = np.c_[rng.normal(size=(100, 2)), np.full(100, 3.0)]
    load_table(conn, "const_cols", ["a", "b", "k"], X, (X[:, 0] > 0) + (X[:, 1] > 0.5))
    cols = "ARRAY['a', 'b', 'k']"
    conn.execute(f"SELECT * FROM bismarck.train_mlp('const_cols', 'y', {cols}, 'const_mlp', "
                 "hidden => ARRAY[3], max_epochs => 3, seed => 1)")
    conn.execute(f"SELECT * FROM bismarck.train_glm('const_cols', 'y', {cols}, 'const_sm', "
                 "loss => 'softmax', max_epochs => 3, seed => 1)")
    for name in ("const_mlp", "const_sm"):
        assert conn.execute("SELECT metrics -> 'constant_features' FROM bismarck.models "
                            "WHERE model_name = %s", [name]).fetchone() == (["k"],)
    assert conn.execute("SELECT stored -> 'sd' -> 2 FROM bismarck.models "
                        "WHERE model_name = 'const_mlp'").fetchone() == (None,)
