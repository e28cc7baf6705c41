#!/usr/bin/env python
"""The two paths of a table side by side, whole calls interleaved: what the default ``shuffle``
should pick.

``train_glm`` with the end-to-end defaults of ``run.py`` (loss, alpha, seed,
validation_fraction, max_epochs; the convergence check on) and ``shuffle => 'once'`` (the packed
copy) or ``'blocks'`` (no copy), alternating, ``--repeat`` times each, so both see the same load
on a shared machine. Per path, medians of: the whole call, preparation (before the first
epoch), the first epoch, the later epochs, and the epochs run. From them, the costs the path
rule of :mod:`bismarckpy.schedule` is written in (packed epochs): writing the packed copy, a
block-shuffled epoch, and a block-shuffled run's preparation plus first epoch.

    python benchmarks/paths.py --rows 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bismarck_controller import connection

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15, help="max_epochs (run.py's e2e default)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--label", default="")
    ap.add_argument("--dsn")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args(argv)
    table, _ = bench.ensure_table(a.dsn, a.rows, a.features, a.seed)
    runs: dict[str, list[dict[str, Any]]] = {"once": [], "blocks": []}
    loads = []
    with connection.connect(a.dsn) as conn:
        info = bench.machine(conn)
        conn.rollback()
        for _ in range(a.repeat):
            for shuffle in runs:
                r = bench.train_timed(conn, table, f"bench_paths_{shuffle}", loss="logistic",
                                      alpha=1e-4, seed=a.seed, validation_fraction=0.1,
                                      max_epochs=a.epochs, shuffle=shuffle)
                conn.commit()
                runs[shuffle].append({"total": r.total, "prep": r.prep, "epochs": r.epochs,
                                      "breakdown": r.breakdown,
                                      "curve": r.curve})
                print(shuffle, f"total {r.total:.2f} s, prep {r.prep:.2f} s, epochs "
                      + " ".join(f"{e:.2f}" for e in r.epochs), flush=True)
                loads.append(os.getloadavg()[0])
    med = statistics.median
    summary: dict[str, dict[str, float]] = {}
    for shuffle, rs in runs.items():
        summary[shuffle] = {
            "total": med([r["total"] for r in rs]), "prep": med([r["prep"] for r in rs]),
            "first_epoch": med([r["epochs"][0] for r in rs]),
            "later_epoch": med([med(r["epochs"][1:]) for r in rs if len(r["epochs"]) > 1]),
            "epochs_run": med([len(r["epochs"]) for r in rs])}
    o, b = summary["once"], summary["blocks"]
    unit = o["later_epoch"]
    costs = {"PACK_EPOCHS": (o["prep"] + o["first_epoch"] - unit) / unit,
             "BLOCK_EPOCH": b["later_epoch"] / unit,
             "FIRST_EPOCH": (b["prep"] + b["first_epoch"]) / unit}
    info["load_average_end"] = list(os.getloadavg())
    result = {"rows": a.rows, "features": a.features, "repeat": a.repeat,
              "max_epochs": a.epochs, "machine": info, "runs": runs, "median": summary,
              "costs_in_packed_epochs": costs, "load_1min_per_run": loads,
              "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    suffix = f"-{a.label}" if a.label else ""
    out = Path(a.out) / f"{dt.date.today().isoformat()}-paths-{a.rows}x{a.features}{suffix}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    for shuffle, s in summary.items():
        print(f"{shuffle:6s} " + ", ".join(f"{k} {v:.2f}" for k, v in s.items()))
    print("costs in packed epochs:", ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))
    print("load", info["load_average_start"], "->", info["load_average_end"])
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
