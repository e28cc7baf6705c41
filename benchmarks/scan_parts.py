#!/usr/bin/env python
"""Where a block-shuffled epoch spends its time: each pass's SQL alone against the whole pass.

On ``bench_<rows>_100`` (run.py's table), interleaved, medians of ``--repeat`` after one warm
round: ``count(x)`` (a serial scan), the first epoch of a run prepared from a sample (every
page group in one statement: checks, counts and SGD steps), and a later epoch's training and
validation passes; each also with its PL/Python aggregate replaced by ``sum(length(...))`` over
the same arrays (the SQL alone: the scans, the filters, ``array_agg`` and the arrays' bytes).
The difference is PL/Python's share (the arguments' conversion and the engine's numpy work).

    python benchmarks/scan_parts.py --rows 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

import numpy as np

from bismarck_controller import connection
from bismarck_controller.session import PsycopgSession
from bismarckpy import blockscan, execution, source
from bismarckpy.kinds import glm

_SQL_ONLY = "SELECT sum({lengths} + length(%s)) AS state"


def _sql_only(query: str, aggregate: str, arrays: list[str], extra: str = "") -> str:
    """``query`` with its aggregate call replaced by the summed lengths of its arrays' bytes."""
    lengths = " + ".join(f"length(bismarck._float8_array_bytes(z.{a}))" for a in arrays)
    return re.sub(rf"SELECT bismarck\.{aggregate}\(.*?\) AS state",
                  _SQL_ONLY.format(lengths=lengths + extra), query, count=1, flags=re.S)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dsn")
    a = ap.parse_args()
    d = 100
    table = f"public.bench_{a.rows}_{d}"
    with connection.connect(a.dsn) as conn:
        s = PsycopgSession(conn)
        src = source.resolve(s, table, "y", "x")
        lay = blockscan.layout(s, src, None, 512)
        got = blockscan.prepare(s, src, lay, d, 0.1, 99)
        conn.commit()
        s.query("SET enable_memoize = off")  # as the training loop's epochs
        assert got.stats is not None
        scale = {"mu": got.stats.mean[1:], "sd": np.maximum(got.stats.sd[1:], 1e-6),
                 "itemsize": 8, "y_coding": (glm.Y_CLASS01, 1.0, 0.0, 1.0)}
        kinit = glm.initialize(d, loss="logistic", batch_size=512, eta=0.5, **scale)
        ev = glm.initialize(d, loss="logistic", batch_size=glm.EVALUATE, eta=0.5, **scale)
        finit = blockscan.first_init(d, 0.1, [0.0, 1.0], 1e300, 1e300, [], kinit)
        first = blockscan.first_sql(src, lay, d)
        order = np.random.default_rng(1).permutation(lay.groups)
        groups = "{" + ",".join(map(str, order)) + "}"
        train = blockscan.epoch_sql(src, lay, got, blockscan.TRAIN, 99, shuffled=True, d=d).replace(
            execution.AGGREGATE, execution.SGD.scan)
        valid = blockscan.epoch_sql(src, lay, got, blockscan.VALID, 99, shuffled=False,
                                    d=d).replace(
            execution.AGGREGATE, execution.SGD.scan)
        first_params = [99, 7, finit, groups]
        runs = {
            "count(x)": (f"SELECT count(x) FROM {table}", []),
            "first epoch (one statement)": (first, first_params),
            "first epoch, SQL alone": (_sql_only(first, "_epoch_scan_first", ["xs", "ys", "js"],
                                                 " + %s::int8 + %s::int8"), first_params),
            "training pass": (train, [kinit]),
            "training pass, SQL alone": (_sql_only(train, "_epoch_scan", ["xs", "ys"]), [kinit]),
            "validation pass": (valid, [ev]),
            "validation pass, SQL alone": (_sql_only(valid, "_epoch_scan", ["xs", "ys"]), [ev]),
        }
        seconds: dict[str, list[float]] = {k: [] for k in runs}
        for rnd in range(a.repeat + 1):  # the first round warms the caches and the engine
            for name, (query, params) in runs.items():
                s.query("SELECT setseed(0.25)")
                t0 = time.perf_counter()
                s.query(query, params)
                if rnd:
                    seconds[name].append(time.perf_counter() - t0)
            conn.commit()
    print(f"{a.rows:,} rows x {d}; load average {os.getloadavg()}")
    for name, v in seconds.items():
        print(f"  {name:32s} {statistics.median(v):7.3f}   {' '.join(f'{x:.2f}' for x in v)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
