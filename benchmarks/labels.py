#!/usr/bin/env python
"""The cost of a label of class values: the same rows with an integer label and a text label.

A text (or enum, varchar...) label is coded in SQL as its class's index
(``array_position(classes, label::text) - 1``) wherever the label is read. This measures the
seconds of a training run (preparation and ``--epochs`` epochs, ``tol => NULL`` so every run
does them all) of

* softmax over K classes (the packed copy, the default; a row copy, ``packed => false``; and
  ``shuffle => 'blocks'``),
* binary logistic (the packed copy, the default, and ``shuffle => 'blocks'``),

each with the integer label and with the same classes as text, ``--repeats`` times in turns;
medians and the text/integer ratio.

    python benchmarks/labels.py                        # 100k x 20, 3 classes
    python benchmarks/labels.py --rows 400000 --classes 10

Writes ``benchmarks/results/<date>-labels-<rows>x<features>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import psycopg

from bismarck_controller import connection, extension

OUT = Path(__file__).resolve().parent / "results"


def load(conn: psycopg.Connection, n: int, d: int, k: int, seed: int) -> None:
    """Table ``bench_labels(x float8[], yi int, yt text)``: K Gaussian blobs, yt = 'class_<yi>'."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    centres = rng.normal(scale=2.0, size=(k, d))
    x = centres[y] + rng.normal(size=(n, d))
    conn.execute("DROP TABLE IF EXISTS bench_labels, bench_two_t CASCADE")
    conn.execute("CREATE TABLE bench_labels (x float8[], yi int, yt text)")
    with conn.cursor().copy("COPY bench_labels (x, yi, yt) FROM STDIN") as cp:
        for i in range(n):
            cp.write_row(([float(v) for v in x[i]], int(y[i]), f"class_{y[i]}"))
    conn.execute("VACUUM ANALYZE bench_labels")


def run(conn: psycopg.Connection, label: str, loss: str, shuffle: str, epochs: int) -> float:
    """Seconds of one training run (shuffle 'rows': once, on a row copy)."""
    t0 = time.perf_counter()
    packed = None if shuffle != "rows" else False
    conn.execute("SELECT * FROM bismarck.train_glm('bench_labels', %s, ARRAY['x'], "
                 "'bench_labels_m', loss => %s, shuffle => %s, max_epochs => %s, tol => NULL, "
                 "batch_size => 64, seed => 1, validation_fraction => 0, packed => %s)",
                 [label, loss, "once" if shuffle == "rows" else shuffle, epochs, packed])
    seconds = time.perf_counter() - t0
    conn.execute("SELECT bismarck.delete_model('bench_labels_m')")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dsn", default=None)
    a = ap.parse_args()
    dsn = a.dsn or connection.resolve_dsn(None)
    extension.install(dsn)
    cases = [("softmax", "once"), ("softmax", "rows"), ("softmax", "blocks"), ("logistic", "once"),
             ("logistic", "blocks")]
    times: dict[str, list[float]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        load(conn, a.rows, a.features, a.classes, 0)
        for _ in range(a.repeats):
            for loss, shuffle in cases:
                if loss == "logistic":  # two classes: the rows of classes 0 and 1
                    conn.execute("CREATE OR REPLACE VIEW bench_two AS SELECT * FROM "
                                 "bench_labels WHERE yi < 2")
                for label in ("yi", "yt"):
                    key = f"{loss} {shuffle} {label}"
                    times.setdefault(key, []).append(run(conn, label, loss, shuffle, a.epochs)
                                                     if loss == "softmax" else
                                                     _binary(conn, label, shuffle, a.epochs))
    load_avg = os.getloadavg()
    rows = []
    for loss, shuffle in cases:
        mi = statistics.median(times[f"{loss} {shuffle} yi"])
        mt = statistics.median(times[f"{loss} {shuffle} yt"])
        rows.append({"loss": loss, "shuffle": shuffle, "integer_s": mi, "text_s": mt,
                     "ratio": mt / mi})
    stamp = dt.date.today().isoformat()
    name = f"{stamp}-labels-{a.rows}x{a.features}"
    meta = {"rows": a.rows, "features": a.features, "classes": a.classes, "epochs": a.epochs,
            "repeats": a.repeats, "machine": platform.platform(), "cpus": os.cpu_count(),
            "load_average": load_avg, "times": times, "results": rows}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=2))
    lines = [f"# Integer versus text labels: {a.rows} rows x {a.features} features, "
             f"{a.classes} classes (softmax), {a.epochs} epochs",
             "", f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
             f"{load_avg[0]:.2f} / {load_avg[1]:.2f} / {load_avg[2]:.2f} (shared, noisy). "
             f"Medians of {a.repeats} runs in turns (preparation included).", "",
             "(shuffle 'once' is the packed copy; 'rows' is once on a row copy, packed => false.)",
             "", "| loss | shuffle | integer label (s) | text label (s) | text / integer |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['loss']} | {r['shuffle']} | {r['integer_s']:.2f} | {r['text_s']:.2f} | "
              f"{r['ratio']:.2f} |" for r in rows]
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _binary(conn: psycopg.Connection, label: str, shuffle: str, epochs: int) -> float:
    """Seconds of one binary logistic run on the view of two classes (shuffle 'once' packs it;
    'blocks' needs a table: the two-class rows are copied once per label)."""
    table = "bench_two" if shuffle == "once" else "bench_two_t"
    if shuffle == "blocks":
        conn.execute("CREATE TABLE IF NOT EXISTS bench_two_t AS SELECT * FROM bench_two")
    t0 = time.perf_counter()
    conn.execute("SELECT * FROM bismarck.train_glm(%s, %s, ARRAY['x'], 'bench_labels_m', "
                 "loss => 'logistic', shuffle => %s, max_epochs => %s, tol => NULL, "
                 "batch_size => 64, seed => 1, validation_fraction => 0)",
                 [table, label, shuffle, epochs])
    seconds = time.perf_counter() - t0
    conn.execute("SELECT bismarck.delete_model('bench_labels_m')")
    return seconds


if __name__ == "__main__":
    main()
