"""``parallel => 2`` from SQL really runs the epochs with two workers (an outside tester found
them serial: a plan prepared through SPI never runs in parallel), for the packed copy, the
rows, 'blocks' and shared-memory SGD; the history records the workers whose states were
merged."""

from __future__ import annotations

import re

import pytest


@pytest.fixture
def wide(conn) -> str:
    conn.execute("DROP TABLE IF EXISTS par_sql")
    conn.execute("CREATE TABLE par_sql AS SELECT random() AS x1, random() AS x2, "
                 "(random() > 0.5)::int::float8 AS y FROM generate_series(1, 60000)")
    conn.execute("ANALYZE par_sql")
    return "par_sql"


@pytest.mark.parametrize("opts", [
    "shuffle => 'once'",
    "shuffle => 'never'",
    "shuffle => 'once', parallel_mode => 'shared'",
])
def test_two_workers_from_sql(conn, wide: str, opts: str) -> None:
    name = f"par_sql_{abs(hash(opts)) % 10**6}"
    conn.execute(f"SELECT * FROM bismarck.train_glm(%s, 'y', ARRAY['x1', 'x2'], %s, "
                 f"batch_size => 32, max_epochs => 2, tol => NULL, parallel => 2, {opts})",
                 [wide, name])
    workers = [r[0] for r in conn.execute(
        "SELECT workers FROM bismarck.training_history WHERE model_name = %s ORDER BY epoch",
        [name])]
    assert workers == [2, 2], workers


def test_an_averaging_epoch_of_two_is_the_backend_and_one_worker(conn, wide: str) -> None:
    """parallel => 2 in an averaging epoch: one parallel worker (a new process every epoch,
    which pays PL/Python, numpy and the engine before its first block) and the backend, which
    has them and takes part; both partial states are merged (the history's [2, 2] above)."""
    from bismarckpy import execution
    from bismarckpy.kinds import glm

    conn.execute("DROP TABLE IF EXISTS par_sql_p")
    conn.execute("SELECT * FROM bismarck.pack(source => %s, label => 'y', "
                 "features => ARRAY['x1', 'x2'], packed_table => 'par_sql_p', "
                 "block_size => 64, seed => 1)", [wide])
    init = glm.initialize(2, loss="logistic", batch_size=64, eta=0.1, itemsize=4,
                          y_coding=(glm.Y_CLASS01, 1.0, 0.0, 1.0))
    blocks = conn.execute("SELECT count(*) FROM par_sql_p").fetchone()[0]
    with conn.transaction():
        for name, value in execution.averaging_settings(2).items():
            conn.execute("SELECT set_config(%s, %s, true)", [name, value])
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) "
            + execution.Scan("par_sql_p", True, "0, NULL").sql(), [init], prepare=False))
    assert "Workers Planned: 1" in plan and "Workers Launched: 1" in plan, plan
    # the scan's rows over both participants, then the worker's own: the backend took part
    scan = plan[plan.index("Parallel Seq Scan"):]
    total = int(re.search(r"rows=(\d+) loops=2", scan).group(1)) * 2
    worker = int(re.search(r"Worker 0: .*rows=(\d+) loops=1", scan).group(1))
    assert abs(total - blocks) <= 1  # the per-loop average is rounded
    assert worker < blocks, plan
