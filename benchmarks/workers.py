#!/usr/bin/env python
"""What a parallel worker costs per epoch, and where it goes (PostgreSQL 15, issue 11 item 4).

PostgreSQL starts the parallel workers of a query when its Gather node first runs and stops them
when it ends; a worker never outlives its query. One epoch is one aggregate query, so every
epoch with ``parallel => n`` starts n fresh processes, and each of them starts PL/Python,
imports numpy and loads the engine before its first block. This script measures, on a small
table where that start dominates, medians of ``--repeats`` queries each:

- ``count(*)`` serial / with 1 and 2 workers: starting a worker process alone;
- a trivial PL/Python function over the rows, and one that imports numpy: PL/Python's and
  numpy's start in each worker;
- the real packed epoch (the training loop's epoch query) serial / 1 / 2 workers: the whole
  per-epoch price, the engine's load included;
- the engine load in isolation: compiling the modules a worker imports (in this process).

    python benchmarks/workers.py                 # about a minute
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from bismarck_controller import connection
from bismarckpy.execution import Scan
from bismarckpy.kinds import glm

PARALLEL = ("SET max_parallel_workers_per_gather = {w}; SET parallel_setup_cost = 0; "
            "SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; "
            "SET parallel_leader_participation = {lp}")


def timed(conn: psycopg.Connection, query: str, params: tuple = (), repeats: int = 9) -> float:
    """Median seconds of ``query``."""
    xs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        conn.execute(query, params)
        xs.append(time.perf_counter() - t0)
    return statistics.median(xs)


def engine_compile_seconds() -> tuple[float, int]:
    """Seconds to compile the engine modules ``bismarckpy.server`` imports, and their count.

    A worker loads them from the sources embedded in the function body, with no bytecode cache.
    """
    files = subprocess.run(
        [sys.executable, "-c", "import sys, bismarckpy.server; print('\\n'.join("
         "m.__file__ for n, m in sys.modules.items() if n.startswith('bismarckpy')))"],
        capture_output=True, text=True, check=True).stdout.split()
    t0 = time.perf_counter()
    for f in files:
        compile(Path(f).read_text(), f, "exec")
    return time.perf_counter() - t0, len(files)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--dsn", default=None)
    a = ap.parse_args(argv)
    conn = psycopg.connect(connection.resolve_dsn(a.dsn), autocommit=True)
    conn.prepare_threshold = None  # a prepared generic plan may drop the parallel plan
    conn.execute("DROP TABLE IF EXISTS bench_workers; DROP TABLE IF EXISTS bench_workers_p")
    conn.execute("CREATE TABLE bench_workers AS SELECT g AS id, (g %% 2)::float8 AS y, "
                 "array_fill(g::float8 / %s, ARRAY[10]) AS x FROM generate_series(1, %s) g",
                 [a.rows, a.rows])
    conn.execute("SELECT * FROM bismarck.pack('bench_workers', 'y', ARRAY['x'], "
                 "'bench_workers_p', block_size => 512, seed => 1)")
    conn.execute("CREATE FUNCTION pg_temp.w_py(v float8) RETURNS float8 LANGUAGE plpython3u "
                 "PARALLEL SAFE AS $$\nreturn v\n$$")
    conn.execute("CREATE FUNCTION pg_temp.w_np(v float8) RETURNS float8 LANGUAGE plpython3u "
                 "PARALLEL SAFE AS $$\nimport numpy\nreturn v\n$$")
    init = glm.initialize(10, loss="logistic", batch_size=512, eta=0.1,
                          y_coding=(glm.Y_CLASS01, 1.0, 0.0, 1.0), itemsize=4)
    epoch = Scan("bench_workers_p", True, "0, NULL").sql()  # the loop's own epoch query
    rows = []
    for w in (0, 1, 2):
        conn.execute(PARALLEL.format(w=w, lp="off" if w else "on"))
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN (ANALYZE, FORMAT TEXT) " + epoch, (init,)).fetchall())
        launched = re.search(r"Workers Launched: (\d+)", plan)
        rows.append((w, int(launched.group(1)) if launched else 0,
                     timed(conn, "SELECT count(*) FROM bench_workers", repeats=a.repeats),
                     timed(conn, "SELECT sum(pg_temp.w_py(y)) FROM bench_workers",
                           repeats=a.repeats),
                     timed(conn, "SELECT sum(pg_temp.w_np(y)) FROM bench_workers",
                           repeats=a.repeats),
                     timed(conn, epoch, (init,), repeats=a.repeats)))
    conn.execute("DROP TABLE bench_workers_p; DROP TABLE bench_workers")
    print(f"{a.rows:,} rows × 10 features, medians of {a.repeats} (ms)")
    print("workers | launched (epoch) | count(*) | PL/Python fn | + numpy import | packed epoch")
    for w, par, c, py, np_, ep in rows:
        print(f"{w:7} | {par:15} | {c * 1e3:8.1f} | {py * 1e3:12.1f} | {np_ * 1e3:14.1f} |"
              f" {ep * 1e3:12.1f}")
    base = rows[0][5]
    for w, *_, ep in rows[1:]:
        print(f"per-epoch price of {w} worker(s) over serial: {(ep - base) * 1e3:.0f} ms")
    seconds, n = engine_compile_seconds()
    print(f"compiling the {n} engine modules a worker loads: {seconds * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
