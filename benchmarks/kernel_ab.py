#!/usr/bin/env python
"""Two builds of the engine's epoch kernels in one backend, interleaved: packed and blocks epochs.

On a shared machine the load moves between runs, so this swaps kernels inside one backend
instead of comparing two runs: the installed engine ("after") and an earlier build's package
("before", ``--before-src``: a directory holding that build's ``bismarckpy`` package copied
under the name ``bismarckold``, readable by the server's user) imported next to it. A DO
block points the engine's entry points ``epoch_transition_block`` (packed epochs) and
``epoch_transition_scan`` (``shuffle => 'blocks'``) at one build or the other before each
query. Round-robin over ``--repeat`` rounds, it reports medians of the wall time and of the
backend's CPU time (``/proc/<pid>/stat``: less sensitive to other processes than wall time)::

    git archive <commit> src | tar -x -C /tmp/old && mkdir -p /tmp/old2 &&
        cp -r /tmp/old/src/bismarckpy /tmp/old2/bismarckold && chmod -R a+rX /tmp/old2
    python benchmarks/kernel_ab.py --before-src /tmp/old2 --packed bench_1000000_100_p512

The server must run on this machine (the CPU time is read from ``/proc``).
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

import numpy as np
import psycopg

from bismarck_controller import connection
from bismarck_controller.session import PsycopgSession
from bismarckpy import blockscan, execution
from bismarckpy.kinds import glm
from bismarckpy.source import resolve

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

SWAP = """DO $$
import sys
eng = [v for k, v in GD.items() if str(k).startswith("bismarck-engine-")][0]
ab = GD.get("kernel_ab")
if ab is None:
    sys.path.insert(0, %(src)s)
    import bismarckold.server as old
    ab = GD["kernel_ab"] = {
        "after": (eng.epoch_transition_block, eng.epoch_transition_scan),
        "before": (old.epoch_transition_block, old.epoch_transition_scan)}
eng.epoch_transition_block, eng.epoch_transition_scan = ab[%(build)s]
$$ LANGUAGE plpython3u"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--before-src", required=True)
    ap.add_argument("--packed", action="append", default=[],
                    help="a packed table of the benchmark table (float32); repeatable")
    ap.add_argument("--label", default="kernel-ab")
    ap.add_argument("--dsn")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args(argv)
    table = bench.table_name(a.rows, a.features)
    d = a.features
    dsn = connection.resolve_dsn(a.dsn)
    conn = psycopg.connect(dsn, autocommit=True)
    conn.prepare_threshold = None
    info = bench.machine(conn)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    def cpu() -> float:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    s = PsycopgSession(psycopg.connect(dsn))
    src = resolve(s, f"public.{table}", "y", "x")
    lay = blockscan.layout(s, src, None, a.batch_size)
    got = blockscan.prepare(s, src, lay, d, 0.1, 99)
    s.conn.commit()
    assert got.stats is not None
    mu, sd = got.stats.mean[1:], np.maximum(got.stats.sd[1:], 1e-6)

    def init(itemsize: int, evaluate: bool = False, **kw: object) -> bytes:
        return glm.initialize(d, loss="logistic", batch_size=glm.EVALUATE if evaluate
                              else a.batch_size, eta=0.5, itemsize=itemsize,
                              y_coding=(glm.Y_CLASS01, 1.0, 0.0, 1.0), **kw)

    train = blockscan.epoch_sql(src, lay, got, blockscan.TRAIN, 99, shuffled=True, d=d)
    valid = blockscan.epoch_sql(src, lay, got, blockscan.VALID, 99, shuffled=False, d=d)
    blocks = "; ".join(f"SET {k} = {v}" for k, v in execution.epoch_settings(
        execution.Scan(table, template=train), 0).items())
    serial = "; ".join(f"SET {k} = {v}" for k, v in execution.parallel_settings(0).items())
    serial += "; SET enable_memoize = on"
    queries: dict[str, tuple[str, str, list[object]]] = {
        "blocks train pass": (blocks, train.replace(execution.AGGREGATE, execution.SGD.scan),
                              [init(8, mu=mu, sd=sd)]),
        "blocks validation pass": (blocks, valid.replace(execution.AGGREGATE,
                                                         execution.SGD.scan),
                                   [init(8, True, mu=mu, sd=sd)]),
    }
    for p in a.packed:
        queries[f"packed epoch {p}"] = (serial, execution.Scan(p, True, "0, NULL").sql(),
                                        [init(4)])
    conn.execute("SELECT bismarck._epoch_step_block(NULL, NULL, %s, 0, NULL)",
                 [init(4)])  # loads the engine into this backend
    wall: dict[str, list[float]] = {}
    busy: dict[str, list[float]] = {}
    states: dict[str, bytes] = {}
    for rnd in range(a.repeat + 1):  # round 0 warms caches and both builds
        for name, (settings, text, params) in queries.items():
            for build in ("before", "after"):
                conn.execute(SWAP % {"src": repr(a.before_src), "build": repr(build)})
                conn.execute(settings)
                conn.execute("SELECT setseed(0.25)")
                c0, t0 = cpu(), time.perf_counter()
                row = conn.execute(text, params).fetchone()
                t, c = time.perf_counter() - t0, cpu() - c0
                key = f"{name} [{build}]"
                if rnd == 0:
                    states[key] = bytes(row[0])
                    continue
                wall.setdefault(key, []).append(t)
                busy.setdefault(key, []).append(c)
    conn.execute(SWAP % {"src": repr(a.before_src), "build": "'after'"})
    same = {}
    for name in queries:
        m0 = glm.decode(states[f"{name} [before]"])
        m1 = glm.decode(states[f"{name} [after]"])
        same[name] = {"max_abs_w_diff": float(np.abs(m0.w - m1.w).max()),
                      "b_diff": abs(m0.b - m1.b), "loss_rel_diff":
                      abs(m0.loss_sum - m1.loss_sum) / max(abs(m0.loss_sum), 1e-300),
                      "steps": [m0.steps, m1.steps], "rows": [m0.rows, m1.rows]}
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in busy.items()}
    info["load_average_end"] = list(os.getloadavg())
    result = {"rows": a.rows, "features": a.features, "batch_size": a.batch_size,
              "repeat": a.repeat, "label": a.label, "before_src": a.before_src,
              "machine": info, "wall_s": wall, "backend_cpu_s": busy, "median_wall": med,
              "median_backend_cpu": med_cpu, "before_vs_after_models": same,
              "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    out = Path(a.out) / f"{dt.date.today().isoformat()}-epochs-{a.rows}x{a.features}-{a.label}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"{a.rows:,} x {a.features}, medians of {a.repeat}: wall s | backend CPU s; load "
          f"{info['load_average_start']} -> {info['load_average_end']}")
    for k in med:
        print(f"  {k:52s} {med[k]:7.3f} | {med_cpu[k]:7.3f}")
    for k, v in same.items():
        print(f"  {k}: {v}")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
