#!/usr/bin/env python
"""Two builds of the engine side by side: ``shuffle => 'blocks'`` epoch queries, interleaved.

On a shared machine the load moves between two runs, so this compares two engines in one run:
the current one in the database of ``--dsn`` (default: the embedded one) and an earlier one
installed in another database ``--before-dsn`` of the same cluster (same table, same pages).
The earlier build's queries come from ``--before-sql``, a JSON file with its ``train`` and
``valid`` epoch SQL, ``mu`` and ``sd`` (written by that build's ``blockscan.epoch_sql`` and
``blockscan.prepare`` on the same table, validation fraction 0.1, split seed 99). Round-robin,
medians of ``--repeat``: ``count(x)`` and each build's training and validation pass.

    # the earlier build's engine and SQL (its sources unpacked in /tmp/before):
    PYTHONPATH=/tmp/before/src bismarck install --dsn "$BEFORE"
    PYTHONPATH=/tmp/before/src python make_sql.py > before.json   # see the docstring above
    python benchmarks/epochs_ab.py --before-dsn "$BEFORE" --before-sql before.json
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--dsn")
    ap.add_argument("--before-dsn", required=True)
    ap.add_argument("--before-sql", required=True)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args(argv)
    table = bench.table_name(a.rows, a.features)
    before = json.loads(Path(a.before_sql).read_text())
    dsn = connection.resolve_dsn(a.dsn)
    c = psycopg.connect(dsn)
    s = PsycopgSession(c)
    src = resolve(s, f"public.{table}", "y", "x")
    lay = blockscan.layout(s, src, None, a.batch_size)
    got = blockscan.prepare(s, src, lay, a.features, 0.1, 99)
    c.commit()
    assert got.counts.tolist() == before["counts"], "the two databases' tables differ"
    d = a.features

    def init(mu: list[float], sd: list[float], evaluate: bool = False) -> bytes:
        return glm.initialize(d, loss="logistic", batch_size=glm.EVALUATE if evaluate
                              else a.batch_size, eta=0.5, mu=np.asarray(mu),
                              sd=np.maximum(np.asarray(sd), 1e-6), itemsize=8,
                              y_coding=(glm.Y_CLASS01, 1.0, 0.0, 1.0))

    train = blockscan.epoch_sql(src, lay, got, blockscan.TRAIN, 99, shuffled=True, d=a.features)
    valid = blockscan.epoch_sql(src, lay, got, blockscan.VALID, 99, shuffled=False, d=a.features)
    settings = execution.epoch_settings(execution.Scan(table, template=train), 0)
    now = psycopg.connect(dsn, autocommit=True)
    then = psycopg.connect(a.before_dsn, autocommit=True)
    for conn, extra in ((now, settings), (then, settings)):  # the same for both builds
        for k, v in extra.items():
            conn.execute(f"SET {k} = {v}")
    mu, sd = got.stats.mean[1:].tolist(), got.stats.sd[1:].tolist()
    runs = {
        "count(x)": (now, f"SELECT count(x) FROM {table}", None),
        "before: training pass": (then, before["train"], init(before["mu"], before["sd"])),
        "after: training pass": (now, train, init(mu, sd)),
        "before: validation pass": (then, before["valid"],
                                    init(before["mu"], before["sd"], True)),
        "after: validation pass": (now, valid, init(mu, sd, True)),
    }
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for rnd in range(a.repeat + 1):  # the first round warms the caches and the engines
        for name, (conn, q, state) in runs.items():
            text = q.replace(execution.AGGREGATE, execution.SGD.scan)
            conn.execute("SELECT setseed(0.25)")
            t0 = time.perf_counter()
            conn.execute(text, [state] if state is not None else []).fetchall()
            if rnd:
                seconds[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    result = {"rows": a.rows, "features": a.features, "batch_size": a.batch_size,
              "repeat": a.repeat, "machine": bench.machine(c), "seconds": seconds,
              "median": med, "load_average_end": list(os.getloadavg()),
              "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    out = Path(a.out) / f"{dt.date.today().isoformat()}-epochs-ab-{a.rows}x{a.features}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"load {result['machine']['load_average_start']} -> {result['load_average_end']}")
    for k, v in med.items():
        print(f"  {k:26s} {v:7.3f}   {' '.join(f'{x:.3f}' for x in seconds[k])}")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
