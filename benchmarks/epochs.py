#!/usr/bin/env python
"""One epoch's query on each path against its floors, side by side in one run.

On the benchmark table ``bench_<rows>_<features>`` (``run.py``'s synthetic logistic data) this
times, round-robin so that every path sees the same load, medians of ``--repeat``:

- ``SELECT count(x)``, a serial scan: the floor of any epoch that reads the table;
- the numpy mini-batch floor: one epoch of logistic SGD at ``--batch-size`` over the same rows
  in memory (float64 and float32), in this process;
- ``shuffle => 'blocks'``: the training pass (page groups in a random order, rows shuffled,
  one mini-batch step per ``--batch-size`` rows), the loop's whole epoch (that pass keeping its
  validation rows, then the validation pass over them in the backend: ``bismarckpy.heldrows``)
  and, for comparison, the SQL validation pass that reads the table again
  (``validation_fraction`` 0.1), each the loop's own query
  (:func:`bismarckpy.blockscan.epoch_sql`);
- the packed copy (``bismarck.pack``, float32 blocks of ``--batch-size`` rows): one epoch query,
  serial and with ``--workers`` parallel workers.

Each ratio is a path over its floor: ``blocks`` over ``count(x)`` + the float64 numpy epoch,
``packed`` over the float32 numpy epoch. The epoch queries are the loop's own; the model starts
at zero every time (the cost of an epoch does not depend on the model).

    python benchmarks/epochs.py                         # 200k x 100, a minute
    python benchmarks/epochs.py --rows 1000000 --repeat 5
    python benchmarks/epochs.py --rows 10000000 --only packed   # parallel at scale
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psycopg
from psycopg import sql

from bismarck_controller import connection
from bismarck_controller.session import PsycopgSession
from bismarckpy import blockscan, execution
from bismarckpy.kinds import glm
from bismarckpy.source import resolve

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

#: The data seed of run.py's and paths.py's tables: one table serves every benchmark.
SEED = 42


def packed_table(conn: psycopg.Connection, table: str, block: int) -> str:
    """``table`` packed (float32, blocks of ``block`` rows), made once per table version."""
    name = f"{table}_p{block}"
    tag = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')",
                       [table]).fetchone()[0]
    have = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')",
                        [name]).fetchone()
    if have and have[0] == tag:
        return name
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    conn.execute("SELECT * FROM bismarck.pack(source => %s, label => 'y', features => "
                 "ARRAY['x'], packed_table => %s, block_size => %s, seed => 1)",
                 [table, name, block])
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(name),
                                                             sql.Literal(tag)))
    conn.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(sql.Identifier(name)))
    return name


def in_memory(rows: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark table's rows, generated again in memory (the same generator and seed)."""
    Xs, ys = [], []
    for _, X, y in bench.chunks(rows, features, SEED):
        Xs.append(X)
        ys.append(y)
    return np.vstack(Xs), np.concatenate(ys).astype(np.float64)


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 (one linear script)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", choices=["all", "packed"], default="all")
    ap.add_argument("--packed", help="an existing packed table of the benchmark table to use")
    ap.add_argument("--label", default="", help="a name for this run in the output file")
    ap.add_argument("--dsn")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args(argv)
    table = bench.table_name(a.rows, a.features)
    if not a.packed or a.only == "all":
        table, _ = bench.ensure_table(a.dsn, a.rows, a.features, SEED)
    conn = psycopg.connect(connection.resolve_dsn(a.dsn), autocommit=True)
    conn.prepare_threshold = None  # a prepared generic plan may drop the parallel plan
    info = bench.machine(conn)
    packed = a.packed or packed_table(conn, table, a.batch_size)
    d = a.features

    def init(itemsize: int, evaluate: bool = False, mu=None, sd=None) -> bytes:
        return glm.initialize(d, loss="logistic", batch_size=glm.EVALUATE if evaluate
                              else a.batch_size, eta=0.5, mu=mu, sd=sd, itemsize=itemsize,
                              y_coding=(glm.Y_CLASS01, 1.0, 0.0, 1.0))

    serial = "; ".join(f"SET {k} = {v}" for k, v in execution.parallel_settings(0).items())
    packed_scan = execution.Scan(packed, True, "0, NULL")
    par = "; ".join(f"SET {k} = {v}" for k, v in  # the loop's own: the backend is one of them
                    execution.epoch_settings(packed_scan, a.workers, leader=True).items())
    packed_sql = packed_scan.sql()
    timers: dict[str, Callable[[], Any]] = {}

    def query(settings: str, text: str, params: list[Any] | None = None,
              seed: bool = False) -> Callable[[], Any]:
        def go() -> Any:
            conn.execute(settings)
            if seed:
                conn.execute("SELECT setseed(0.25)")
            return conn.execute(text, params or []).fetchall()
        return go

    if a.only == "all":
        session_conn = psycopg.connect(connection.resolve_dsn(a.dsn))
        s = PsycopgSession(session_conn)
        src = resolve(s, f"public.{table}", "y", "x")
        lay = blockscan.layout(s, src, None, a.batch_size)
        t0 = time.perf_counter()
        got = blockscan.prepare(s, src, lay, d, 0.1, 99)
        prep_s = time.perf_counter() - t0
        session_conn.commit()
        assert got.stats is not None
        mu, sd = got.stats.mean[1:], np.maximum(got.stats.sd[1:], 1e-6)
        train_sql = blockscan.epoch_sql(src, lay, got, blockscan.TRAIN, 99, shuffled=True, d=d)
        valid_sql = blockscan.epoch_sql(src, lay, got, blockscan.VALID, 99, shuffled=False, d=d)
        timers["count(x)"] = query(serial, sql.SQL("SELECT count(x) FROM {}").format(
            sql.Identifier(table)).as_string(conn))
        blocks = "; ".join(f"SET {k} = {v}" for k, v in execution.epoch_settings(
            execution.Scan(table, template=train_sql), 0).items())  # the loop's own settings
        timers["blocks train pass"] = query(
            blocks, train_sql.replace(execution.AGGREGATE, execution.SGD.scan),
            [init(8, mu=mu, sd=sd)], seed=True)
        timers["blocks validation pass (SQL)"] = query(
            blocks, valid_sql.replace(execution.AGGREGATE, execution.SGD.scan),
            [init(8, True, mu=mu, sd=sd)])
        held_sql = blockscan.held_sql(got.holds, 99)
        n_valid = int(got.holds.sum())

        def blocks_epoch() -> Any:
            """The loop's epoch: the training pass keeps its validation rows, then the
            validation pass evaluates them in the backend (bismarckpy.heldrows)."""
            conn.execute(blocks)
            conn.execute("SELECT setseed(0.25), bismarck._held_clear(%s, %s)", [n_valid, d])
            conn.execute(train_sql.replace(execution.AGGREGATE, execution.SGD.scan),
                         [init(8, mu=mu, sd=sd)]).fetchall()
            got_state = conn.execute(held_sql, [init(8, True, mu=mu, sd=sd)]).fetchone()[0]
            assert got_state is not None, "the kept validation rows were not used"
            return got_state

        timers["blocks epoch (train + kept validation)"] = blocks_epoch
        X, y = in_memory(a.rows, a.features)
        perm = np.random.default_rng(3).permutation(len(y))
        X, y = X[perm], y[perm]
        X32 = X.astype(np.float32)
        timers["numpy epoch float64"] = lambda: bench.numpy_epoch(X, y, a.batch_size)
        timers["numpy epoch float32"] = lambda: bench.numpy_epoch(X32, y, a.batch_size)
    serial += "; SET enable_memoize = on"  # after a blocks query, the default again
    timers["packed epoch"] = query(serial, packed_sql, [init(4)])
    timers[f"packed epoch, {a.workers} workers"] = query(par, packed_sql, [init(4)])
    for fn in timers.values():  # warm: caches, the engine in this backend, the workers' plan
        fn()
    seconds: dict[str, list[float]] = {k: [] for k in timers}
    loads = []
    for _ in range(a.repeat):
        for name, fn in timers.items():
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
        loads.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in seconds.items()}
    ratios: dict[str, float] = {}
    if a.only == "all":
        floor64 = med["count(x)"] + med["numpy epoch float64"]
        ratios["blocks train pass / (count(x) + numpy float64)"] = (
            med["blocks train pass"] / floor64)
        ratios["blocks epoch (train + kept validation) / (count(x) + numpy float64)"] = (
            med["blocks epoch (train + kept validation)"] / floor64)
        ratios["blocks train + SQL validation / (count(x) + numpy float64)"] = (
            (med["blocks train pass"] + med["blocks validation pass (SQL)"]) / floor64)
        ratios["packed epoch / numpy float32"] = med["packed epoch"] / med["numpy epoch float32"]
    ratios[f"packed serial / {a.workers} workers"] = (
        med["packed epoch"] / med[f"packed epoch, {a.workers} workers"])
    info["load_average_end"] = list(os.getloadavg())
    result = {"rows": a.rows, "features": a.features, "batch_size": a.batch_size,
              "repeat": a.repeat, "label": a.label, "machine": info, "seconds": seconds,
              "median": med, "ratios": ratios, "load_1min_per_round": loads,
              "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if a.only == "all":
        result["blocks_preparation_s"] = prep_s
    stamp = dt.date.today().isoformat()
    suffix = f"-{a.label}" if a.label else ""
    out = Path(a.out) / f"{stamp}-epochs-{a.rows}x{a.features}{suffix}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"{a.rows:,} rows x {a.features}, batch {a.batch_size}, medians of {a.repeat} (s); "
          f"commit {info['commit']}; load {info['load_average_start']} -> "
          f"{info['load_average_end']}")
    for k, v in med.items():
        print(f"  {k:40s} {v:8.3f}   {' '.join(f'{x:.3f}' for x in seconds[k])}")
    for k, v in ratios.items():
        print(f"  {k:68s} {v:6.2f}x")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
