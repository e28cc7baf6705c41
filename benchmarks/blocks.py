#!/usr/bin/env python
"""Block-shuffled epochs without a copy (``shuffle => 'blocks'``) against the packed copy.

On the benchmark table ``bench_<rows>_<features>`` (random row order) and a copy physically
sorted by label (``..._sorted``, the clustered case): preparation time of each path against a
binary COPY export of the same table, the time of each epoch, and the validation log-loss after
each epoch (validation_fraction 0.1) and, at the end, on a fixed held-out table (rows
generated apart, same model). Medians over
``--repeat`` runs; the machine is shared, so read the spread too.

    python benchmarks/blocks.py                       # quick: 20k x 100
    python benchmarks/blocks.py --rows 1000000        # for the record
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
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from bismarck_controller import connection, training

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgcopy  # noqa: E402
import run as bench  # noqa: E402


def ensure_sorted(conn: psycopg.Connection, table: str) -> str:
    """A copy of ``table`` physically sorted by label (all 0s, then all 1s)."""
    name = f"{table}_sorted"
    tag = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')",
                       [table]).fetchone()[0]
    have = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')",
                        [name]).fetchone()
    if have and have[0] == tag:
        return name
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM {} ORDER BY y, id").format(
        sql.Identifier(name), sql.Identifier(table)))
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(name),
                                                             sql.Literal(tag)))
    conn.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(sql.Identifier(name)))
    return name


def ensure_heldout(conn: psycopg.Connection, features: int, seed: int, rows: int) -> str:
    """Rows from the same model as the benchmark table (another random stream)."""
    name = f"bench_heldout_{features}"
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, x float8[], y int)").format(
        sql.Identifier(name)))
    w, b = bench.true_model(features, seed)
    rng = np.random.default_rng([seed, 99])
    X = rng.uniform(-1.0, 1.0, size=(rows, features))
    y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-(X @ w + b)))).astype(np.int32)
    pgcopy.copy_in(conn, name, iter([(np.arange(1, rows + 1, dtype=np.int32), X, y)]))
    return name


def export_seconds(dsn: str | None, table: str, features: int, rows: int) -> float:
    """Binary COPY of x and y into numpy (no hold-out column work beyond the export's own)."""
    with connection.connect(dsn, ensure_extension=False) as conn:
        t0 = time.perf_counter()
        pgcopy.export(conn, bench.export_query(conn, table, rows, 1, 0.0), features, rows)
        return time.perf_counter() - t0


def scan_seconds(dsn: str | None, table: str) -> float:
    """A plain serial scan reading every feature array: the floor of any epoch."""
    with connection.connect(dsn, autocommit=True, ensure_extension=False) as conn:
        conn.execute("SET max_parallel_workers_per_gather = 0")
        t0 = time.perf_counter()
        conn.execute(sql.SQL("SELECT count(x) FROM {}").format(sql.Identifier(table)))
        return time.perf_counter() - t0


def run_once(dsn: str | None, table: str, heldout: str, shuffle: str, epochs: int,
             batch: int, seed: int) -> dict[str, Any]:
    """One training run: preparation seconds, per-epoch seconds and validation log-loss."""
    model = f"bench_blocks_{shuffle}"
    records: list[Any] = []
    marks: dict[str, float] = {}
    started = time.perf_counter()

    class Progress:
        def __call__(self, rec: Any) -> None:
            records.append(rec)
            marks.setdefault("first_epoch_end", time.perf_counter())

    with connection.connect(dsn) as conn:
        result = training.train(conn, table, "y", "x", model, on_epoch=Progress(),
                                shuffle=shuffle, max_epochs=epochs, tol=None,
                                batch_size=batch, seed=seed, validation_fraction=0.1)
    total = time.perf_counter() - started
    epoch_s = [r.seconds for r in records]
    prep = marks["first_epoch_end"] - started - epoch_s[0]
    with connection.connect(dsn) as conn:
        loss = training.evaluate(conn, model, heldout, result.version)["log_loss"]
    return {"prep": prep, "epochs": epoch_s, "total": total, "final_log_loss": loss,
            "train_loss": [r.train_loss for r in records],
            "validation_loss": [r.validation_loss for r in records]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1,
                    help="data seed (run.py's default, 42, reuses its table)")
    ap.add_argument("--label", default="", help="a name for this run in the output file")
    ap.add_argument("--dsn")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    table, _ = bench.ensure_table(args.dsn, args.rows, args.features, args.seed)
    with connection.connect(args.dsn, autocommit=True, ensure_extension=False) as conn:
        sorted_table = ensure_sorted(conn, table)
        heldout = ensure_heldout(conn, args.features, args.seed, 20000)
        info = bench.machine(conn)
    results: dict[str, Any] = {"rows": args.rows, "features": args.features,
                               "batch_size": args.batch_size, "epochs": args.epochs,
                               "repeat": args.repeat, "seed": args.seed, "machine": info,
                               "paths": {}}
    for name, t in (("random", table), ("sorted", sorted_table)):
        export = [export_seconds(args.dsn, t, args.features, args.rows)
                  for _ in range(args.repeat)]
        scan = [scan_seconds(args.dsn, t) for _ in range(args.repeat)]
        results["paths"][f"{name}/export"] = {"seconds": export}
        results["paths"][f"{name}/scan"] = {"seconds": scan}
        for shuffle in ("once", "blocks"):
            runs = [run_once(args.dsn, t, heldout, shuffle, args.epochs, args.batch_size, 7)
                    for _ in range(args.repeat)]
            results["paths"][f"{name}/{shuffle}"] = {
                "prep": [r["prep"] for r in runs],
                "epoch": [statistics.median(r["epochs"]) for r in runs],
                "first_epoch": [r["epochs"][0] for r in runs],
                "later_epochs": [statistics.median(r["epochs"][1:] or r["epochs"]) for r in runs],
                "final_log_loss": runs[0]["final_log_loss"],
                "validation_curve": runs[0]["validation_loss"],
            }
            print(name, shuffle, results["paths"][f"{name}/{shuffle}"], flush=True)
        if name == "sorted":  # table order on the clustered table: what shuffling buys
            r = run_once(args.dsn, t, heldout, "never", args.epochs, args.batch_size, 7)
            results["paths"]["sorted/never"] = {"final_log_loss": r["final_log_loss"],
                                                "validation_curve": r["validation_loss"],
                                                "epoch": [statistics.median(r["epochs"])]}
            print("sorted never", results["paths"]["sorted/never"], flush=True)
    info["load_average_end"] = list(os.getloadavg())
    stamp = dt.date.today().isoformat()
    suffix = f"-{args.label}" if args.label else ""
    out = Path(args.out) / f"{stamp}-blocks-{args.rows}x{args.features}{suffix}.json"
    out.write_text(json.dumps(results, indent=1))
    print(out)
    med = statistics.median
    for name in ("random", "sorted"):
        p = results["paths"]
        print(f"{name}: export {med(p[name + '/export']['seconds']):.2f} s, scan "
              f"{med(p[name + '/scan']['seconds']):.2f} s")
        for shuffle in ("once", "blocks"):
            r = p[f"{name}/{shuffle}"]
            print(f"  {shuffle}: prep {med(r['prep']):.2f} s, epoch {med(r['epoch']):.2f} s "
                  f"(first {med(r['first_epoch']):.2f} s, later {med(r['later_epochs']):.2f} s), "
                  f"held-out log-loss {r['final_log_loss']:.4f}, validation by epoch "
                  + ", ".join(f"{v:.4f}" for v in r["validation_curve"]))
    print("load average", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
