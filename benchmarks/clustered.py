#!/usr/bin/env python
"""Tables stored in label order: what each shuffle gives, and what it costs.

For each prevalence of the positive class, the same rows (``--rows`` × 2 features, logistic)
are stored twice, sorted by label and in random order, and trained with the defaults on

* the packed copy as the engine now writes it (``'once'``: a full shuffle when the table is
  judged stored in label order, :mod:`bismarckpy.clustering`),
* the packed copy from buffers of eight page groups, whatever the order (the path before the
  check, forced here by raising its thresholds in this process's engine),
* ``shuffle => 'blocks'`` (eight page groups per buffer, each epoch),

``--seeds`` seeds each; log-loss on all rows against the exact fit (``solver => 'newton'``),
seconds (preparation included), and the label's ``F`` and class spread that the check uses.
The engine runs in this process (the CLI's and Python's path), so the forcing applies.

    python benchmarks/clustered.py                    # 200k rows, prevalences 1%..50%
    python benchmarks/clustered.py --rows 1000000 --prevalence 0.01 0.3

Writes ``benchmarks/results/<date>-clustered-<rows>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

from bismarck_controller import connection, extension, training
from bismarck_controller.session import PsycopgSession
from bismarckpy import clustering, packing
from bismarckpy.source import resolve

OUT = Path(__file__).resolve().parent / "results"
FEATURES = ["x1", "x2"]


def load(conn: psycopg.Connection, name: str, rows: int, prevalence: float, seed: int) -> float:
    """Tables ``<name>_sorted`` (positives last) and ``<name>_random``; returns the share of
    positives. The intercept is set so that about ``prevalence`` of the rows are positive."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 2))
    z = X[:, 0] - 0.5 * X[:, 1]
    b = -np.quantile(z + rng.logistic(size=rows), 1 - prevalence)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(z + b)))).astype(float)
    for suffix, order in (("sorted", np.argsort(y, kind="stable")),
                          ("random", rng.permutation(rows))):
        table = sql.Identifier(f"{name}_{suffix}")
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.execute(sql.SQL("CREATE TABLE {} (x1 float8, x2 float8, y float8)").format(table))
        with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(table)) as cp:
            for i in order:
                cp.write_row((float(X[i, 0]), float(X[i, 1]), float(y[i])))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table))
    return float(y.mean())


def log_loss(conn: psycopg.Connection, model: str, table: str) -> float:
    return dict(conn.execute("SELECT * FROM bismarck.evaluate(%s, %s)",
                             [model, table]).fetchall())["log_loss"]


def train(dsn: str, table: str, model: str, **params) -> float:
    """Seconds of one run through the in-process engine."""
    t0 = time.perf_counter()
    with psycopg.connect(dsn) as c, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        training.train(c, table, "y", FEATURES, model, **params)
        c.commit()
    return time.perf_counter() - t0


def judged(dsn: str, table: str) -> tuple[float, float]:
    """The label's F over page groups and its class spread eta2 / (p (1 - p))."""
    with psycopg.connect(dsn) as c:
        s = PsycopgSession(c)
        src = resolve(s, f"public.{table}", "y", FEATURES)
        got = packing.survey_table(s, src, 512, 0.0, 1)[2]
        c.rollback()
    assert got.order is not None and got.stats is not None
    f, n = float(got.order[0]), got.stats.n
    groups = int(((got.counts - got.holds) > 0).sum())
    ratio = f * (groups - 1) / (n - groups)
    eta2 = 1.0 if not math.isfinite(ratio) else ratio / (1 + ratio)
    p = float(got.stats.mean[0])
    return f, eta2 / (p * (1 - p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--prevalence", type=float, nargs="+",
                    default=[0.01, 0.05, 0.1, 0.25, 0.5])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--dsn", default=None)
    a = ap.parse_args()
    dsn = a.dsn or connection.resolve_dsn(None)
    extension.install(dsn)
    results = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for prevalence in a.prevalence:
            name = f"bench_clu_{round(prevalence * 1000)}"
            share = load(conn, name, a.rows, prevalence, 7)
            train(dsn, f"{name}_random", f"{name}_exact", solver="newton")
            exact = log_loss(conn, f"{name}_exact", f"{name}_random")
            f, spread = judged(dsn, f"{name}_sorted")
            row = {"prevalence": share, "F": f, "class_spread": spread, "exact": exact}
            for case, table, params, force in (
                    ("sorted, copy (now)", "sorted", {"shuffle": "once"}, False),
                    ("sorted, copy from page groups", "sorted", {"shuffle": "once"}, True),
                    ("sorted, blocks", "sorted", {"shuffle": "blocks"}, True),
                    ("random, copy", "random", {"shuffle": "once"}, False),
                    ("random, blocks", "random", {"shuffle": "blocks"}, False)):
                saved = clustering.CLUSTERED_F
                if force:
                    clustering.CLUSTERED_F = math.inf
                try:
                    runs = [(train(dsn, f"{name}_{table}", f"{name}_m", seed=seed, **params),
                             log_loss(conn, f"{name}_m", f"{name}_random") / exact)
                            for seed in range(1, a.seeds + 1)]
                finally:
                    clustering.CLUSTERED_F = saved
                row[case] = {"seconds": statistics.median(r[0] for r in runs),
                             "ratios": [r[1] for r in runs]}
            results.append(row)
            print(json.dumps(row), flush=True)
    load_avg = os.getloadavg()
    stamp = dt.date.today().isoformat()
    name = f"{stamp}-clustered-{a.rows}"
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(
        {"rows": a.rows, "seeds": a.seeds, "machine": platform.platform(),
         "cpus": os.cpu_count(), "load_average": load_avg, "results": results}, indent=2))
    cases = [k for k in results[0] if isinstance(results[0][k], dict)]
    lines = [f"# Tables stored in label order: {a.rows} rows x 2 features, logistic, defaults",
             "", f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
             f"{load_avg[0]:.2f} / {load_avg[1]:.2f} / {load_avg[2]:.2f} (shared, noisy). "
             f"Log-loss on all rows over the exact fit's (each of {a.seeds} seeds), and the "
             "median seconds of a run (preparation included). F and the class spread are the "
             "sorted table's, as `bismarckpy.clustering` judges them (clustered: F > "
             f"{clustering.CLUSTERED_F:g} and, for classes, spread > "
             f"{clustering.CLASS_SPREAD:g}).", "",
             "| positives | F | spread | " + " | ".join(cases) + " |",
             "|---:|---:|---:|" + "---:|" * len(cases)]
    for r in results:
        cells = [" ".join(f"{x:.4f}" for x in r[c]["ratios"]) + f" ({r[c]['seconds']:.1f} s)"
                 for c in cases]
        lines.append(f"| {r['prevalence']:.3f} | {r['F']:,.0f} | {r['class_spread']:.1f} | "
                     + " | ".join(cells) + " |")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
