#!/usr/bin/env python
"""Block-shuffled passes on two servers side by side: glibc's default malloc against fixed
thresholds (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` in the postmaster's
environment), counting each backend's minor page faults (``/proc/<pid>/stat``; the servers must
run on this machine).

Each buffer's ``array_agg`` and its bytes are allocations of a few MB that glibc maps afresh
and hands back on every call, so every page of them faults once per buffer; with fixed
thresholds a backend keeps that memory. Arguments: the two DSNs (default malloc first) and the
rows of run.py's table present in both; ``REPS`` rounds (default 5), interleaved.

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=134217728 \
        BISMARCK_DATA=/tmp/other bismarck db start      # the second server
    python benchmarks/malloc_ab.py "$(bismarck db url)" "$OTHER_URL" 200000
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
import psycopg

from bismarck_controller.session import PsycopgSession
from bismarckpy import blockscan, execution, source
from bismarckpy.kinds import glm


def faults(pid: int) -> int:
    """Minor page faults of process ``pid`` so far."""
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[7])


def passes(s: PsycopgSession, table: str, d: int) -> dict[str, tuple[str, list]]:
    """count(x), a first epoch in one statement, a training and a validation pass."""
    src = source.resolve(s, table, "y", "x")
    lay = blockscan.layout(s, src, None, 512)
    got = blockscan.prepare(s, src, lay, d, 0.1, 99)
    assert got.stats is not None
    scale = {"mu": got.stats.mean[1:], "sd": np.maximum(got.stats.sd[1:], 1e-6),
             "itemsize": 8, "y_coding": (glm.Y_CLASS01, 1.0, 0.0, 1.0)}
    kinit = glm.initialize(d, loss="logistic", batch_size=512, eta=0.5, **scale)
    ev = glm.initialize(d, loss="logistic", batch_size=glm.EVALUATE, eta=0.5, **scale)
    finit = blockscan.first_init(d, 0.1, [0.0, 1.0], 1e300, 1e300, [], kinit)
    order = np.random.default_rng(1).permutation(lay.groups)
    groups = "{" + ",".join(map(str, order)) + "}"

    def scan(part: int, shuffled: bool) -> str:
        return blockscan.epoch_sql(src, lay, got, part, 99, shuffled=shuffled, d=d).replace(
            execution.AGGREGATE, execution.SGD.scan)

    return {"count(x)": (f"SELECT count(x) FROM {table}", []),
            "first epoch": (blockscan.first_sql(src, lay, d), [99, 7, finit, groups]),
            "training pass": (scan(blockscan.TRAIN, True), [kinit]),
            "validation pass": (scan(blockscan.VALID, False), [ev])}


def main() -> int:
    dsns = {"default malloc": sys.argv[1], "MALLOC thresholds": sys.argv[2]}
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 200_000
    table, d = f"public.bench_{rows}_100", 100
    setups = {}
    for name, dsn in dsns.items():
        conn = psycopg.connect(dsn)
        s = PsycopgSession(conn)
        runs = passes(s, table, d)
        conn.commit()
        s.query("SET enable_memoize = off")
        s.query("SET max_parallel_workers_per_gather = 0")
        setups[name] = (s, conn, int(s.query("SELECT pg_backend_pid() AS p")[0][0]), runs)
    sec: dict[tuple[str, str], list[float]] = {}
    flt: dict[tuple[str, str], list[int]] = {}
    for rnd in range(int(os.environ.get("REPS", "5")) + 1):  # round 0 warms up
        for q in ("count(x)", "first epoch", "training pass", "validation pass"):
            for name, (s, _, pid, runs) in setups.items():
                text, params = runs[q]
                s.query("SELECT setseed(0.25)")
                f0, t0 = faults(pid), time.perf_counter()
                s.query(text, params)
                dt, f1 = time.perf_counter() - t0, faults(pid)
                if rnd:
                    sec.setdefault((q, name), []).append(dt)
                    flt.setdefault((q, name), []).append(f1 - f0)
        for _, conn, _, _ in setups.values():
            conn.commit()
    print("load", os.getloadavg())
    for (q, name), v in sec.items():
        print(f"{q:16s} {name:18s} {statistics.median(v):7.3f} s  faults "
              f"{int(statistics.median(flt[(q, name)])):7d}   "
              + " ".join(f"{x:.2f}" for x in v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
