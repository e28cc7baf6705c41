"""``parallel => 2`` from SQL really runs the epochs with two workers (an outside tester found
them serial: a plan prepared through SPI never runs in parallel), for the packed copy, the
rows, 'blocks' and shared-memory SGD; the history records the workers whose states were
merged."""

from __future__ import annotations

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
