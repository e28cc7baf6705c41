"""parallel_mode => 'shared' on a real server: model quality, and no segment outlives its query.

Shared-memory SGD (bismarckpy.shared_model) makes the parallel workers of an epoch step one
model in a file-backed shared mapping. These tests check the model against the exact optimum
(scikit-learn), that the step counter counts every worker's steps, and that a cancelled or
failing epoch leaves no segment behind (``bismarck._shared_segments()`` lists them).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psycopg
import pytest
from reference_data import load_table

from bismarck_controller import training
from bismarckpy.errors import InvalidData

N, D, ALPHA = 12_000, 8, 1e-3


@pytest.fixture(scope="module")
def shm_data(dsn: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A logistic problem with train (id % 4 <> 0) and test (id % 4 = 0) views."""
    rng = np.random.default_rng(2012)
    X = rng.normal(size=(N, D)) * rng.uniform(0.5, 3.0, size=D) + rng.normal(size=D)
    z = (X - X.mean(0)) @ rng.normal(size=D) * 0.7 + 0.4
    y = (rng.uniform(size=N) < 1.0 / (1.0 + np.exp(-z))).astype(int)
    names = [f"f{i}" for i in range(D)]
    with psycopg.connect(dsn) as conn:
        load_table(conn, "shm", names, X, y, label_type="int")
        conn.execute("CREATE VIEW shm_train AS SELECT * FROM shm WHERE id % 4 <> 0")
        conn.execute("CREATE VIEW shm_test AS SELECT * FROM shm WHERE id % 4 = 0")
    return X, y, np.arange(N) % 4 != 0


def _segments(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT * FROM bismarck._shared_segments()")]


def _exact_test_log_loss(X: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    """Test log-loss at the unique minimiser of mean log-loss + alpha/2 |w|² (standardised)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    mu, sd = X[train].mean(0), X[train].std(0)
    Z = (X - mu) / sd
    ref = LogisticRegression(C=1.0 / (ALPHA * train.sum()), tol=1e-10, max_iter=10_000)
    ref.fit(Z[train], y[train])
    return float(log_loss(y[~train], ref.predict_proba(Z[~train])[:, 1]))


def test_shared_mode_trains_as_well_as_averaging(dsn: str, conn, shm_data) -> None:
    """Both modes reach the exact optimum's test log-loss within 1%, so each other's within 2%.

    With an L2 penalty the objective is strongly convex: one minimiser w*, which SGD with
    averaged workers (Zinkevich et al. 2010) and lock-free shared SGD (Niu et al. 2011) both
    approach. The right value is therefore the test loss at w* (scikit-learn's exact fit), and
    each mode is held to it: within 1% (the issue's 2% between two models follows). The
    step counter shows the modes really differ: shared workers count every step (serial SGD's
    total), averaged ones keep the larger of their own counts.
    """
    X, y, train = shm_data
    best = _exact_test_log_loss(X, y, train)
    names = [f"f{i}" for i in range(D)]
    opts = dict(penalty="l2", alpha=ALPHA, batch_size=32, block_size=64, seed=5,
                max_epochs=40, eta0=0.1, learning_rate="adaptive", tol=1e-4)
    got, steps, workers = {}, {}, {}
    with psycopg.connect(dsn) as c:
        for mode, par in (("serial", 0), ("average", 2), ("shared", 2)):
            name = f"shm_{mode}"
            r = training.train(c, "shm_train", "y", names, name, parallel=par,
                               parallel_mode="average" if mode == "serial" else mode, **opts)
            got[mode] = training.evaluate(c, name, "shm_test")["log_loss"]
            workers[mode] = max(h.workers for h in r.history)
            steps[mode] = float(c.execute(
                "SELECT (fitted->>'t')::float8 FROM bismarck.models WHERE model_name = %s",
                [name]).fetchone()[0]) / r.epochs
    print(f"exact {best:.5f}; " + ", ".join(f"{m} {v:.5f}" for m, v in got.items())
          + f"; steps per epoch {steps}; workers {workers}")
    for mode, value in got.items():
        assert abs(value - best) <= 0.01 * best, (mode, value, best)
    assert abs(got["shared"] - got["average"]) <= 0.02 * best
    assert _segments(conn) == []
    if workers["shared"] == 2:
        assert steps["shared"] >= 0.97 * steps["serial"], steps
    if workers["average"] == 2:  # the counter of the worker that took more steps
        assert steps["average"] < steps["serial"], steps


@pytest.mark.parametrize("path", ["packed", "rows"])
def test_shared_mode_from_sql_and_refusals(conn, shm_data, path: str) -> None:
    """Packed blocks and row copies (one step per row: batch_size 1) train shared (the
    block-shuffled scan without a copy runs serially and refuses workers: test_blockscan)."""
    names = [f"f{i}" for i in range(D)]
    name = f"shm_sql_{path}"
    row = conn.execute(
        "SELECT epochs, validation_loss FROM bismarck.train_glm(%s, 'y', %s, %s, "
        "penalty => 'l2', alpha => %s, batch_size => %s, block_size => 64, packed => %s, "
        "shuffle => %s, parallel => 2, parallel_mode => 'shared', max_epochs => 3, "
        "validation_fraction => 0.2, seed => 1)",
        ["shm" if path == "blocks" else "shm_train",  # blocks read a table's pages
         names, name, ALPHA, 1 if path == "rows" else 32, path == "packed",
         "blocks" if path == "blocks" else "once"]).fetchone()
    # three epochs of the default schedule: better than the best constant model (the base
    # rate's entropy); quality against the exact optimum is the test above
    p = shm_data[1].mean()
    assert row[0] == 3 and row[1] < -(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert conn.execute("SELECT params->>'parallel_mode', (metrics->>'epochs')::int "
                        "FROM bismarck.models WHERE model_name = %s",
                        [name]).fetchone() == ("shared", 3)
    cases = [("parallel_mode => 'shared', batch_size => 0", "batch_size >= 1"),
             ("parallel_mode => 'shared', solver => 'newton'", "needs solver => 'sgd'"),
             ("parallel_mode => 'shared', parallel => 0", "needs parallel workers"),
             ("parallel_mode => 'hogwild'", "average")]
    for options, text in cases:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            conn.execute("SELECT * FROM bismarck.train_glm('shm_train', 'y', %s, 'shm_bad', "
                         f"{options})", [names])
        diag = e.value.diag
        assert text in " ".join(filter(None, (diag.message_primary, diag.message_detail,
                                              diag.message_hint))), options
    assert _segments(conn) == []


@pytest.fixture(scope="module")
def big_table(dsn: str) -> str:
    """Large enough that a shared-mode epoch runs for a while (a cancel lands mid-epoch)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE shm_big AS SELECT (random() < 0.5)::int AS y, "
                     "ARRAY(SELECT random() + g * 0 FROM generate_series(1, 20)) AS x "
                     "FROM generate_series(1, 120000) AS g")
    return "shm_big"


def _signal_when_segment(dsn: str, pid: int, action: str, seen: list[str],
                         stop: threading.Event) -> None:
    """Signal the backend while a segment exists. A cancel that reaches the backend between
    two statements (idle in transaction) cancels nothing, so it is repeated until it lands."""
    with psycopg.connect(dsn, autocommit=True) as watch:
        while not stop.is_set():
            names = _segments(watch)
            if names:
                seen.extend(names)
                watch.execute(f"SELECT pg_{action}_backend(%s)", [pid])
                if action == "terminate":
                    return
            time.sleep(0.02)


def _train_until_signalled(dsn: str, table: str, name: str, front: str, action: str,
                           error: type[Exception]) -> list[str]:
    """Start a long shared-mode run; cancel or terminate it once a segment exists."""
    seen: list[str] = []
    stop = threading.Event()
    with psycopg.connect(dsn) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        c.commit()
        watcher = threading.Thread(target=_signal_when_segment,
                                   args=(dsn, pid, action, seen, stop))
        watcher.start()
        try:
            with pytest.raises(error):
                if front == "sql":
                    c.execute("SELECT * FROM bismarck.train_glm(%s, 'y', ARRAY['x'], %s, "
                              "batch_size => 32, parallel => 2, parallel_mode => 'shared', "
                              "max_epochs => 200, tol => NULL)", [table, name])
                else:
                    training.train(c, table, "y", "x", name, batch_size=32, parallel=2,
                                   parallel_mode="shared", max_epochs=200, tol=None)
        finally:
            stop.set()
            watcher.join()
    assert seen, "no segment was ever seen: the signal did not land mid-epoch"
    return seen


@pytest.mark.parametrize("front", ["sql", "client"])
def test_cancel_mid_epoch_leaves_no_segment(dsn: str, conn, big_table: str, front: str) -> None:
    name = f"shm_cancel_{front}"
    _train_until_signalled(dsn, big_table, name, front, "cancel", psycopg.errors.QueryCanceled)
    assert _segments(conn) == []
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = %s",
                        [name]).fetchone() == (0,)


def test_terminated_backend_segment_is_swept_by_the_next_run(dsn: str, conn, big_table: str,
                                                             shm_data) -> None:
    """pg_terminate_backend ends the backend without running Python's finally (FATAL): its
    segment, named by its pid, is removed by the next shared-mode epoch on the server."""
    seen = _train_until_signalled(dsn, big_table, "shm_terminated", "client", "terminate",
                                  psycopg.OperationalError)
    left = _segments(conn)
    print('left by the terminated backend:', left)
    assert set(left) <= set(seen)
    names = [f"f{i}" for i in range(D)]
    conn.execute("SELECT * FROM bismarck.train_glm('shm_train', 'y', %s, 'shm_after', "
                 "parallel => 2, parallel_mode => 'shared', batch_size => 32, max_epochs => 1)",
                 [names])
    assert _segments(conn) == []


def test_error_mid_epoch_leaves_no_segment(dsn: str, conn, shm_data) -> None:
    """A packed table damaged between epochs: the next epoch fails in a worker, cleanly."""
    names = [f"f{i}" for i in range(D)]
    conn.execute("SELECT * FROM bismarck.pack('shm_train', 'y', %s, 'shm_packed', "
                 "block_size => 32, seed => 3)", [names])

    def damage(record) -> None:
        if record.epoch == 1:
            with psycopg.connect(dsn, autocommit=True) as other:
                other.execute("UPDATE shm_packed SET data = '\\x00'::bytea "
                              "WHERE ctid IN (SELECT ctid FROM shm_packed OFFSET 100 LIMIT 3)")

    with psycopg.connect(dsn) as c, pytest.raises(InvalidData, match="earlier block format"):
        training.train(c, "shm_packed", "y", names, "shm_damaged", batch_size=16,
                       parallel=2, parallel_mode="shared", max_epochs=5, tol=None,
                       on_epoch=damage)
    assert _segments(conn) == []
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = "
                        "'shm_damaged'").fetchone() == (0,)


@pytest.mark.slow
def test_killed_backend_segment_is_removed_by_the_crash_restart(scratch_cluster) -> None:
    """SIGKILL of the backend mid-epoch: the postmaster's crash restart removes the segment.

    What this relies on (PostgreSQL 14 and later): after a crash, with
    ``remove_temp_files_after_crash = on`` (the default), every ``pgsql_tmp*`` file under
    ``base/pgsql_tmp`` is removed before the server accepts connections again.
    """
    from bismarck_controller import extension

    dsn = scratch_cluster.url()
    extension.install(dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("SHOW remove_temp_files_after_crash").fetchone() == ("on",)
        c.execute("CREATE TABLE shm_big AS SELECT (random() < 0.5)::int AS y, "
                  "ARRAY(SELECT random() + g * 0 FROM generate_series(1, 20)) AS x "
                  "FROM generate_series(1, 120000) AS g")
    temp_dir = scratch_cluster.pgdata / "base" / "pgsql_tmp"
    seen: list[str] = []

    def kill_when_segment(pid: int) -> None:
        for _ in range(3000):
            names = [p.name for p in temp_dir.glob("pgsql_tmpbismarck.*")] \
                if temp_dir.exists() else []
            if names:
                seen.extend(names)
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    with psycopg.connect(dsn) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        c.commit()
        killer = threading.Thread(target=kill_when_segment, args=(pid,))
        killer.start()
        try:
            with pytest.raises(psycopg.OperationalError):
                training.train(c, "shm_big", "y", "x", "shm_killed", batch_size=32, parallel=2,
                               parallel_mode="shared", max_epochs=200, tol=None)
        finally:
            killer.join()
    assert seen
    for _ in range(300):  # the crash restart: wait until the server accepts connections
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                assert _segments(c) == []
                break
        except psycopg.OperationalError:
            time.sleep(0.2)
    else:
        pytest.fail("the server did not come back after the crash restart")
    assert list(temp_dir.glob("pgsql_tmpbismarck.*")) == []


def test_mlp_trains_shared(conn, shm_data) -> None:
    """The MLP kind declares a shared layout too: its workers step one set of weights."""
    names = [f"f{i}" for i in range(D)]
    row = conn.execute(
        "SELECT epochs, validation_loss FROM bismarck.train_mlp('shm_train', 'y', %s, "
        "'shm_mlp', hidden => ARRAY[8], batch_size => 32, block_size => 64, parallel => 2, "
        "parallel_mode => 'shared', max_epochs => 3, tol => NULL, validation_fraction => 0.2, "
        "seed => 1)", [names]).fetchone()
    p = shm_data[1].mean()
    assert row[0] == 3 and row[1] < -(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert conn.execute("SELECT params->>'parallel_mode' FROM bismarck.models "
                        "WHERE model_name = 'shm_mlp'").fetchone() == ("shared",)
    assert _segments(conn) == []
