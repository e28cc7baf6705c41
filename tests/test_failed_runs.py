"""Runs that end without a model say what became of them.

A run cancelled from outside (statement_timeout, pg_cancel_backend) says so, and that nothing
was stored, from SQL and from the client; its error never carries the epoch's statement
parameters (model states), even with ``log_parameter_max_length_on_error`` set, under which
PostgreSQL's own error repeats them in its CONTEXT. A failed run's error says that from SQL
nothing of it was kept, and from the client which run of the history holds it.
"""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest

from bismarck_controller import training
from bismarckpy.errors import BismarckError, cancelled_run

#: What a state or array in an error looks like: a bytea literal or a long run of hex digits.
LEAK = re.compile(r"\\x|[0-9a-f]{32,}|\{[0-9,.e+-]{200,}\}", re.IGNORECASE)
ENDLESS = dict(max_epochs=100000, tol=None, batch_size=1, seed=1)


@pytest.fixture(scope="module")
def cancel_table(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS cancel_t")
        c.execute("CREATE TABLE cancel_t AS SELECT (random() < 0.5)::int AS y, "
                  "ARRAY(SELECT random() + g * 0 FROM generate_series(1, 20)) AS x "
                  "FROM generate_series(1, 3000) AS g")
    return "cancel_t"


def _told(exc: BaseException) -> str:
    """Everything the error shows: its text, its diagnostics and any chained error's."""
    parts = []
    while exc is not None:
        parts.append(str(exc))
        diag = getattr(exc, "diag", None)
        if diag is not None:
            parts += [v for v in (diag.message_detail, diag.message_hint, diag.context) if v]
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return "\n".join(parts)


class _Canceller:
    """Cancels backend ``pid`` every 20 ms once ``ready()`` holds, until stopped: a cancel
    that reaches the backend between two statements cancels nothing, so it is repeated."""

    def __init__(self, dsn: str, pid: int, ready: str) -> None:
        self.dsn, self.pid, self.ready = dsn, pid, ready
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as watch:
            while not self.stop.is_set():
                if watch.execute(self.ready, [self.pid]).fetchone()[0]:
                    watch.execute("SELECT pg_cancel_backend(%s)", [self.pid])
                time.sleep(0.02)

    def __enter__(self) -> _Canceller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_a_cancel_from_sql_says_the_run_was_cancelled(dsn: str, conn, cancel_table: str) -> None:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.execute("SET log_parameter_max_length_on_error = -1")
    running = ("SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
               "AND query LIKE '%%train_glm%%' AND now() - query_start > interval '0.3 s'")
    with _Canceller(dsn, pid, running), pytest.raises(psycopg.errors.QueryCanceled) as err:
        conn.execute("SELECT * FROM bismarck.train_glm('cancel_t', 'y', ARRAY['x'], "
                     "'cancel_sql', max_epochs => 10000, n_iter_no_change => 10000, "
                     "batch_size => 1)")
    d = err.value.diag
    assert d.message_primary == "training was cancelled; no model version was stored"
    assert d.message_detail.startswith("PostgreSQL: canceling statement due to user request.")
    assert "pg_cancel_backend" in d.message_hint
    assert not LEAK.search(_told(err.value)), _told(err.value)
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = 'cancel_sql'"
                        ).fetchone() == (0,)


def test_a_statement_timeout_is_named_with_the_setting_to_change() -> None:
    class Timeout(Exception):
        sqlstate = "57014"

    stopped = cancelled_run(Timeout("canceling statement due to statement timeout"))
    assert stopped is not None and stopped.sqlstate == "57014"
    assert stopped.detail == "PostgreSQL: canceling statement due to statement timeout."
    assert "SET statement_timeout = 0" in stopped.hint
    assert cancelled_run(ValueError("x")) is None


def test_a_cancel_mid_epoch_from_the_client_shows_no_state(dsn: str, conn,
                                                           cancel_table: str) -> None:
    """The run's epochs bind the model state as $1: cancelled in one, PostgreSQL's error
    would print it (log_parameter_max_length_on_error = -1)."""
    epochs = ("SELECT count(*) >= 2 FROM bismarck.training_history WHERE model_name = "
              "'cancel_client' AND %s IS NOT NULL")
    with psycopg.connect(dsn, options="-c log_parameter_max_length_on_error=-1") as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        c.commit()
        with _Canceller(dsn, pid, epochs), pytest.raises(psycopg.errors.QueryCanceled) as err:
            training.train(c, cancel_table, "y", "x", "cancel_client", **ENDLESS)
    assert isinstance(err.value, BismarckError)
    assert err.value.message == "training was cancelled; no model version was stored"
    assert "canceling statement due to user request" in err.value.detail
    assert not LEAK.search(_told(err.value)), _told(err.value)
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = "
                        "'cancel_client'").fetchone() == (0,)


@pytest.fixture(scope="module")
def diverging(dsn: str) -> str:
    """A table on which constant-rate SGD without standardization diverges in its first
    epoch (the loss becomes NaN)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS diverge_t")
        c.execute("CREATE TABLE diverge_t AS SELECT ARRAY[(i % 17) * 10.0, 1]::float8[] AS x, "
                  "(i % 17) * 3.0 AS y FROM generate_series(1, 500) AS i")
    return "diverge_t"


DIVERGE = dict(loss="squared", standardize=False, eta0=0.01, learning_rate="constant",
               max_epochs=50, shuffle="always", seed=1)


def test_a_run_failing_from_sql_says_nothing_of_it_was_kept(conn, diverging: str) -> None:
    """Tester: a run failing from SQL left no training_history row. By design (one
    transaction, rolled back by the error); the error says so."""
    options = ", ".join(f"{k} => %s" for k in DIVERGE)
    with pytest.raises(psycopg.errors.NumericValueOutOfRange) as err:
        conn.execute(f"SELECT * FROM bismarck.train_glm('diverge_t', 'y', ARRAY['x'], "
                     f"'diverge_sql', {options})", list(DIVERGE.values()))
    assert err.value.diag.message_primary == "training diverged"
    assert "Nothing of the run was kept: from SQL a run is one transaction" in \
        err.value.diag.message_detail
    assert conn.execute("SELECT count(*) FROM bismarck._training_run WHERE model_name = "
                        "'diverge_sql'").fetchone() == (0,)


def test_a_run_failing_from_the_client_names_its_kept_run(dsn: str, conn,
                                                          diverging: str) -> None:
    with psycopg.connect(dsn) as c, pytest.raises(BismarckError) as err:
        training.train(c, diverging, "y", "x", "diverge_client", **DIVERGE)
    found = re.search(r"bismarck.training_history \(run_id (\d+)\), marked failed",
                      err.value.detail)
    assert found, err.value.detail
    status, message = conn.execute("SELECT status, message FROM bismarck._training_run "
                                   "WHERE run_id = %s", [int(found.group(1))]).fetchone()
    assert status == "failed" and message.startswith("training diverged"), message
