"""training_history.learning_rate is the rate of each epoch's steps, per schedule.

Each schedule is checked against its own formula, not against the engine's Schedule class:
invscaling ``eta0 / k^power_t`` (k: the epoch, from 1) for mini-batches and ``eta0 /
t^power_t`` (t: steps since training began) for per-row steps, constant ``eta0``, adaptive
``eta0 / 5^floor((k - 2) / n_iter_no_change)`` when no epoch after the first is ``tol`` better,
bold_driver x1.05 after an epoch no worse than the last accepted one, /2 otherwise. Both the
server's loop (SQL ``train_glm``) and the client's (``training.train``, behind the CLI and the
estimators) write the history.
"""

from __future__ import annotations

import math

import numpy as np
import psycopg
import pytest

from bismarck_controller import training

N = 37  # rows; a prime, so batch sizes never divide it


@pytest.fixture(scope="module")
def rate_table(dsn: str) -> str:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(N, 2))
    y = 2.0 * x[:, 0] - x[:, 1] + 0.3 * rng.normal(size=N)
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE rate_src (a float8, b float8, y float8)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO rate_src VALUES (%s, %s, %s)",
                            [(float(a), float(b), float(v)) for (a, b), v in zip(x, y)])
        conn.execute("SELECT bismarck.pack('rate_src', 'y', ARRAY['a', 'b'], 'rate_packed', "
                     "block_size => 8, seed => 1)")
    return "rate_src"


def _train(dsn: str, front: str, source: str, name: str, **params) -> list[tuple]:
    """Train through one front door; the run's (epoch, train_loss, learning_rate) rows."""
    with psycopg.connect(dsn) as conn:
        if front == "sql":
            args = ", ".join(f"{k} => %s" for k in params)
            conn.execute(f"SELECT * FROM bismarck.train_glm(%s, 'y', ARRAY['a', 'b'], %s, "
                         f"loss => 'squared', {args})", [source, name, *params.values()])
            conn.commit()
        else:
            training.train(conn, source, "y", ["a", "b"], name, loss="squared", **params)
        return conn.execute("SELECT epoch, train_loss, learning_rate FROM "
                            "bismarck.training_history WHERE model_name = %s ORDER BY epoch",
                            [name]).fetchall()


def _fitted_t(dsn: str, name: str) -> float:
    with psycopg.connect(dsn) as conn:
        return float(conn.execute("SELECT (fitted->>'t')::float8 FROM bismarck.models "
                                  "WHERE model_name = %s", [name]).fetchone()[0])


@pytest.mark.parametrize("front", ["sql", "client"])
@pytest.mark.parametrize(("source", "batch_size"), [
    ("rate_src", 1), ("rate_src", 5), ("rate_src", 0), ("rate_packed", 1), ("rate_packed", 4)])
def test_invscaling_records_the_decayed_rate(dsn: str, rate_table: str, front: str,
                                             source: str, batch_size: int) -> None:
    name = f"rate_inv_{front}_{source}_{batch_size}"
    eta0, power_t, epochs = 0.05, 0.3, 4
    rows = _train(dsn, front, source, name, learning_rate="invscaling", eta0=eta0,
                  power_t=power_t, batch_size=batch_size, max_epochs=epochs, tol=None,
                  parallel=0)
    assert [r[0] for r in rows] == list(range(1, epochs + 1))
    # Steps per epoch: one per row, one per batch (the last one partial) or one per epoch.
    per_epoch = {1: N, 5: math.ceil(N / 5), 0: 1}.get(batch_size)
    total = _fitted_t(dsn, name)
    if per_epoch is None:  # packed mini-batches: whatever the blocks give, the same each epoch
        per_epoch = total / epochs
        assert per_epoch == int(per_epoch) and per_epoch >= math.ceil(N / batch_size)
    assert total == per_epoch * epochs
    if batch_size == 1:  # per-row steps: the rate of the epoch's last step
        expected = [eta0 / (k * per_epoch) ** power_t for k in range(1, epochs + 1)]
    elif batch_size == 0:  # full-batch steps: exact gradients, no decay (eta0 every epoch)
        expected = [eta0] * epochs
    else:  # mini-batch steps: the epoch's rate
        expected = [eta0 / k ** power_t for k in range(1, epochs + 1)]
    np.testing.assert_allclose([r[2] for r in rows], expected, rtol=1e-14)
    if batch_size != 0:
        assert rows[-1][2] < eta0  # the bug: eta0 every epoch


@pytest.mark.parametrize("front", ["sql", "client"])
def test_constant_records_eta0(dsn: str, rate_table: str, front: str) -> None:
    rows = _train(dsn, front, "rate_src", f"rate_const_{front}", learning_rate="constant",
                  eta0=0.01, max_epochs=3, tol=None)
    assert [r[2] for r in rows] == [0.01] * 3


@pytest.mark.parametrize("front", ["sql", "client"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_adaptive_records_each_division_by_five(dsn: str, rate_table: str, front: str,
                                                n: int) -> None:
    # tol = 1e6: after the first epoch (which sets the best score) no epoch improves by tol, so
    # every n-th epoch after it ends a plateau and the next epoch runs at a fifth of the rate.
    rows = _train(dsn, front, "rate_src", f"rate_adapt_{front}_{n}", learning_rate="adaptive",
                  eta0=0.01, tol=1e6, n_iter_no_change=n, max_epochs=7)
    assert len(rows) == 7
    expected = [0.01 / 5 ** max(0, (k - 2) // n) for k in range(1, 8)]
    np.testing.assert_allclose([r[2] for r in rows], expected, rtol=1e-14)


@pytest.mark.parametrize("front", ["sql", "client"])
def test_bold_driver_records_growth_and_halving(dsn: str, rate_table: str, front: str) -> None:
    # eta0 = 1.5 on standardised features: some epochs overshoot, so both branches show.
    rows = _train(dsn, front, "rate_src", f"rate_bold_{front}", learning_rate="bold_driver",
                  eta0=1.5, batch_size=0, max_epochs=25, tol=None)
    rate, best = 1.5, math.inf
    expected = []
    for _, loss, _ in rows:
        expected.append(rate)
        if loss > best:
            rate *= 0.5
        else:
            rate *= 1.05
            best = loss
    np.testing.assert_allclose([r[2] for r in rows], expected, rtol=1e-12)
    assert len(set(expected)) > 2


def test_a_run_from_sql_finishes_after_it_starts(dsn: str, rate_table: str) -> None:
    """One SQL call is one transaction: its end is stamped by the clock, not by now() (the
    transaction's start, which came before the run's own clock-stamped start)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT * FROM bismarck.train_glm('rate_src', 'y', ARRAY['a', 'b'], "
                     "'rate_clock', loss => 'squared', max_epochs => 2)")
        started, finished = conn.execute(
            "SELECT started_at, finished_at FROM bismarck._training_run "
            "WHERE model_name = 'rate_clock' ORDER BY run_id DESC LIMIT 1").fetchone()
        assert finished >= started
