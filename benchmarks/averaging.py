#!/usr/bin/env python
"""Model averaging versus serial SGD: epochs and seconds to a target validation loss.

On the same synthetic logistic rows, a GLM trained by

* serial SGD: the same epochs over a table of one partition (so the validation rows, the
  row order within a partition and the code path are the same as in the averaged runs),
* averaging over 2 and over 4 local partitions (``averaging => 'partition'``),
* averaging over 3 local shards (three embedded clusters on loopback ports, attached through
  postgres_fdw with ``bismarck_controller.shards.add``; the shards work concurrently),

each for ``--epochs`` epochs with 20% of the rows held out (the same rows in every run: the
split hashes each row's values). The target is the best validation
loss any run reached, times ``1 + --slack`` (default 0.1%). For each run the table gives the
first epoch whose validation loss is within the target, the seconds spent until then (the sum of the
history's epoch seconds, validation pass included) and the final validation loss.

    python benchmarks/averaging.py                    # 60k x 10, a few minutes on 2 cores
    python benchmarks/averaging.py --rows 200000 --features 20

Writes ``benchmarks/results/<date>-averaging-<rows>x<features>.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

from bismarck_controller import connection, embedded, extension, shards

OUT = Path(__file__).resolve().parent / "results"


def make_rows(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(0, 1), y ~ Bernoulli(sigmoid(x·w)) for a fixed w (n × d, n)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ w)))).astype(int)
    return x, y


def columns(d: int) -> list[str]:
    """Feature column names."""
    return [f"x{i}" for i in range(1, d + 1)]


def create(conn: psycopg.Connection, name: str, d: int, partitions: int | None) -> None:
    """A table ``name(part int, x1..xd float8, y int)``, LIST-partitioned into ``partitions``."""
    cols = sql.SQL(", ").join(sql.SQL("{} float8").format(sql.Identifier(c)) for c in columns(d))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    tail = sql.SQL(" PARTITION BY LIST (part)") if partitions is not None else sql.SQL("")
    conn.execute(sql.SQL("CREATE TABLE {} (part int, {}, y int){}").format(
        sql.Identifier(name), cols, tail))
    for i in range(partitions or 0):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES IN ({})").format(
            sql.Identifier(f"{name}_{i}"), sql.Identifier(name), sql.Literal(i)))


def load(conn: psycopg.Connection, name: str, x: np.ndarray, y: np.ndarray,
         part: np.ndarray) -> None:
    """COPY the rows in, then ANALYZE."""
    with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(name))) as cp:
        for p, xi, yi in zip(part, x, y):
            cp.write_row((int(p), *map(float, xi), int(yi)))
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(name)))


def train(dsn: str, source: str, name: str, d: int, epochs: int, **opts: object) -> list[dict]:
    """Train and return the history (epoch, validation loss, seconds, rows)."""
    base = {"max_epochs": epochs, "tol": None, "seed": 3, "validation_fraction": 0.2,
            "alpha": 1e-4}  # batch_size and eta0: the project's defaults
    base.update(opts)
    args = sql.SQL(", ").join(sql.SQL("{} => {}").format(sql.Identifier(k), sql.Literal(v))
                              for k, v in base.items())
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("DELETE FROM bismarck.models WHERE model_name = {}").format(
            sql.Literal(name)))
        c.execute(sql.SQL("SELECT * FROM bismarck.train_glm({}, 'y', {}, model_name => {}, {})")
                  .format(sql.Literal(source), sql.Literal(columns(d)), sql.Literal(name), args))
        rows = c.execute("SELECT epoch, validation_loss, seconds, rows, workers "
                         "FROM bismarck.training_history WHERE model_name = %s "
                         "AND version = (SELECT max(version) FROM bismarck.models "
                         "WHERE model_name = %s) ORDER BY epoch", [name, name]).fetchall()
    return [{"epoch": e, "validation_loss": v, "seconds": s, "rows": r, "parts": w}
            for e, v, s, r, w in rows]


def to_target(history: list[dict], target: float) -> tuple[int | None, float | None]:
    """First epoch within the target and the seconds until then (None: never)."""
    spent = 0.0
    for h in history:
        spent += h["seconds"]
        if h["validation_loss"] is not None and h["validation_loss"] <= target:
            return h["epoch"], spent
    return None, None


@contextlib.contextmanager
def shard_clusters(count: int) -> Iterator[list[embedded.Cluster]]:
    """``count`` embedded clusters under ``$BISMARCK_DATA-shards-*``, stopped and removed after."""
    base = os.environ.get("BISMARCK_DATA", "/tmp/bismarck").rstrip("/")
    parent = Path(tempfile.mkdtemp(prefix=Path(base).name + "-shards-",
                                   dir=str(Path(base).parent)))
    parent.chmod(0o755)
    clusters = [embedded.Cluster(parent / f"s{i}") for i in range(count)]
    try:
        for c in clusters:
            c.start()
            extension.install(c.url())
        yield clusters
    finally:
        for c in clusters:
            with contextlib.suppress(Exception):
                c.stop()
        shutil.rmtree(parent, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--features", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--slack", type=float, default=0.001)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-shards", action="store_true", help="Skip the three-shard run.")
    ap.add_argument("--dsn", help="The coordinator (default: $BISMARCK_DSN or embedded).")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    dsn = connection.resolve_dsn(a.dsn)
    extension.install(dsn)
    n, d = a.rows, a.features
    x, y = make_rows(n, d, a.seed)
    assign = np.random.default_rng(a.seed + 1).integers(0, 12, size=n)  # random split
    runs: dict[str, list[dict]] = {}
    with psycopg.connect(dsn, autocommit=True) as c:
        create(c, "avg_bench", d, 1)
        load(c, "avg_bench", x, y, assign % 1)
        for k in (2, 4):
            create(c, f"avg_bench_p{k}", d, k)
            load(c, f"avg_bench_p{k}", x, y, assign % k)
    t = time.monotonic()
    print(f"{n} x {d}: serial SGD ...", file=sys.stderr)
    runs["serial SGD (1 partition)"] = train(dsn, "avg_bench", "avg_serial", d, a.epochs,
                                             averaging="partition", parallel=0)
    for k in (2, 4):
        print(f"averaging over {k} partitions ...", file=sys.stderr)
        runs[f"averaging, {k} partitions"] = train(dsn, f"avg_bench_p{k}", f"avg_p{k}", d,
                                                   a.epochs, averaging="partition")
    if not a.no_shards:
        print("averaging over 3 local shards ...", file=sys.stderr)
        with shard_clusters(3) as clusters:
            for i, cl in enumerate(clusters):
                with psycopg.connect(cl.url(), autocommit=True) as c:
                    create(c, "avg_bench_s", d, None)
                    keep = assign % 3 == i
                    load(c, "avg_bench_s", x[keep], y[keep], np.full(keep.sum(), i))
            with psycopg.connect(dsn, autocommit=True) as c:
                create(c, "avg_bench_s", d, 0)  # partitioned, the shards attach below
            with psycopg.connect(dsn) as c:
                for i, cl in enumerate(clusters):
                    shards.add(c, "avg_bench_s", cl.url(), str(i))
            runs["averaging, 3 local shards"] = train(dsn, "avg_bench_s", "avg_s3", d,
                                                      a.epochs, averaging="partition")
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("DROP TABLE avg_bench_s")
                for s in ("0", "1", "2"):
                    c.execute(sql.SQL("DROP SERVER IF EXISTS {} CASCADE").format(
                        sql.Identifier(f"bismarck_shard_avg_bench_s_{s}")))
    best = min(h["validation_loss"] for hist in runs.values() for h in hist
               if h["validation_loss"] is not None)
    target = best * (1 + a.slack)
    table = []
    for label, hist in runs.items():
        epoch, secs = to_target(hist, target)
        per_epoch = sum(h["seconds"] for h in hist) / len(hist)
        table.append({"run": label, "epochs_to_target": epoch, "seconds_to_target": secs,
                      "seconds_per_epoch": per_epoch,
                      "final_validation_loss": hist[-1]["validation_loss"],
                      "best_validation_loss": min(h["validation_loss"] for h in hist)})
    stamp = dt.date.today().isoformat()
    a.out.mkdir(parents=True, exist_ok=True)
    base = a.out / f"{stamp}-averaging-{n}x{d}"
    base.with_suffix(".json").write_text(json.dumps(
        {"rows": n, "features": d, "epochs": a.epochs, "target": target, "best": best,
         "slack": a.slack, "runs": runs, "table": table,
         "wall_seconds": time.monotonic() - t}, indent=1))
    lines = [f"# Model averaging vs serial SGD: {n} rows x {d} features (logistic)", "",
             f"Up to {a.epochs} epochs each (SQL's NULL tol is the default convergence test), "
             "20% held out, alpha 1e-4, default batch_size and eta0, seed 3. "
             f"Target: best validation loss of any run ({best:.5f}) + {a.slack:.1%} = "
             f"{target:.5f}. Seconds: sum of the history's epoch seconds (validation pass "
             "included) until the target epoch. 2-core shared machine; one run each.", "",
             "| run | epochs to target | seconds to target | s / epoch | best val. loss | "
             "final val. loss |", "|---|---|---|---|---|---|"]
    for r in table:
        ep = "not reached" if r["epochs_to_target"] is None else str(r["epochs_to_target"])
        sec = "—" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
        lines.append(f"| {r['run']} | {ep} | {sec} | {r['seconds_per_epoch']:.2f} | "
                     f"{r['best_validation_loss']:.5f} | {r['final_validation_loss']:.5f} |")
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
