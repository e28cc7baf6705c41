#!/usr/bin/env python
"""Serial SGD, model averaging (workers, partitions, shards) and shared-memory SGD, on one table.

One synthetic classification table (``--rows`` training rows, ``--features`` features, a
logistic label with an interaction term a linear model cannot express) and one
held-out set of ``--holdout`` rows drawn the same way. For a GLM (logistic regression) and
for an MLP (``train_mlp``, one hidden layer of ``--hidden`` units, Adam), each trained for
``--epochs`` epochs with ``tol=None``, ``validation_fraction=0``, the same ``batch_size``,
seed and schedule:

* ``serial``: ``parallel => 0`` on the plain table (packed copy, one backend);
* ``avg-2w``: ``parallel => 2`` (two parallel workers, each trains a copy from the epoch's
  start; the combine function averages them weighted by rows);
* ``shared-2w``: ``parallel => 2, parallel_mode => 'shared'`` (two workers step one model in
  shared memory, Hogwild!-style);
* ``part-2`` and ``part-4``: ``averaging => 'partition'`` over the same rows in a table LIST-
  partitioned into 2 and 4 partitions (rows assigned at random);
* ``shards-3``: ``averaging => 'partition'`` over three shards, embedded clusters on loopback
  ports attached as foreign partitions through postgres_fdw (``bismarck shards add``).

Every run is scored on the SAME held-out rows after every epoch: the epoch's model
(``EpochRecord.snapshot``, the stored form the server would keep) goes through the engine's own
``predict`` code in this process, so no training path's own validation split is involved. The
target is the serial run's best held-out log-loss times ``1 + --slack`` (default 1%; a second,
``--tight``, 0.2%); the table gives, per run, the first epoch at or below it, the epoch seconds
(the history's, summed) and wall seconds (from the call, preparation included, scoring
excluded) until then, and the held-out loss after the first and the last epoch.

    .venv/bin/python benchmarks/compare_averaging.py          # 100k x 10, about 10 min on 2 cores
    .venv/bin/python benchmarks/compare_averaging.py --rows 2000 --epochs 2 --no-shards  # smoke

Writes ``benchmarks/results/<date>-compare-averaging-<rows>x<features>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402 (the benchmark suite's machine description)
from averaging import columns, create, load, shard_clusters  # noqa: E402 (shared with averaging.py)

from bismarck_controller import connection, embedded, extension, shards, training  # noqa: E402
from bismarckpy.kinds import glm as kglm  # noqa: E402
from bismarckpy.kinds import mlp as kmlp  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
TABLE = "cmp_avg"

#: label -> (table suffix, options). The table suffix picks the copy of the rows.
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "serial": ("", {"parallel": 0}),
    "avg-2w": ("", {"parallel": 2, "parallel_mode": "average"}),
    "shared-2w": ("", {"parallel": 2, "parallel_mode": "shared"}),
    "part-2": ("_p2", {"averaging": "partition"}),
    "part-4": ("_p4", {"averaging": "partition"}),
    "shards-3": ("_s3", {"averaging": "partition"}),
}
DESCRIBE = {
    "serial": "serial SGD (`parallel => 0`)",
    "avg-2w": "averaging, 2 parallel workers (`parallel => 2`)",
    "shared-2w": "shared memory, 2 workers (`parallel_mode => 'shared'`)",
    "part-2": "averaging, 2 partitions (`averaging => 'partition'`)",
    "part-4": "averaging, 4 partitions",
    "shards-3": "averaging, 3 local shards (postgres_fdw)",
}


def make_rows(n: int, d: int, rng: np.random.Generator, w: np.ndarray) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """x ~ N(0, 1) (n × d); y ~ Bernoulli(sigmoid(x·w + 2 x1 x2)) in {0, 1} (n): a linear part
    and an interaction a GLM cannot express."""
    x = rng.normal(size=(n, d))
    logit = x @ w + 2.0 * x[:, 0] * x[:, 1]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y


def log_loss(kind: str, stored: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Mean log-loss of a stored model on rows ``x`` (n × d) with labels ``y`` in {0, 1}."""
    classes = [int(c) for c in stored.classes]
    if kind == "glm":
        p1 = kglm.predict(stored, x)  # probability of classes[1]
        p = np.where(y == classes[1], p1, 1 - p1)
    else:
        proba = kmlp.predict_proba(stored, x)
        p = proba[np.arange(len(y)), np.searchsorted(classes, y)]
    return float(-np.mean(np.log(np.clip(p, 1e-15, 1.0))))


def one_run(dsn: str, source: str, kind: str, label: str, opts: dict[str, Any],
            a: argparse.Namespace, holdout: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Train once, scoring each epoch's model on the held-out rows; the curve and totals."""
    curve: list[dict[str, Any]] = []
    start = time.monotonic()
    scoring = 0.0  # seconds spent scoring in this process, taken out of the wall clock
    epoch_s = 0.0

    def on_epoch(rec: Any) -> None:
        nonlocal scoring, epoch_s
        wall = time.monotonic() - start - scoring
        t = time.monotonic()
        epoch_s += rec.seconds
        loss = log_loss(kind, rec.snapshot(), *holdout)
        scoring += time.monotonic() - t
        curve.append({"epoch": rec.epoch, "heldout_loss": loss, "train_loss": rec.train_loss,
                      "epoch_s": epoch_s, "wall_s": wall, "workers": rec.workers})

    params: dict[str, Any] = dict(max_epochs=a.epochs, tol=None, validation_fraction=0.0,
                                  seed=a.seed, batch_size=a.batch, alpha=1e-4)
    if kind == "mlp":
        params.update(hidden=(a.hidden,), learning_rate_init=a.mlp_lr)
    else:
        params.update(learning_rate="invscaling", eta0=a.glm_eta0, power_t=0.25)
    params.update(opts)
    name = f"cmp_{kind}_{label.replace('-', '_')}"
    with connection.connect(dsn) as conn:
        training.train(conn, source, "y", columns(a.features), name, on_epoch=on_epoch,
                       kind=kind, **params)
        conn.execute("SELECT bismarck.delete_model(%s)", [name])
        conn.commit()
    return {"run": label, "kind": kind, "options": opts, "curve": curve,
            "total_wall_s": time.monotonic() - start - scoring}


def to_target(curve: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first epoch at or below ``target`` (None: never reached)."""
    return next((c for c in curve if c["heldout_loss"] <= target), None)


def attach_shards(dsn: str, clusters: list[embedded.Cluster], d: int, x: np.ndarray,
                  y: np.ndarray, assign: np.ndarray) -> None:
    """Shard i holds the rows with ``assign % 3 == i`` in ``cmp_avg_s3``; attach them."""
    name = TABLE + "_s3"
    for i, cl in enumerate(clusters):
        with psycopg.connect(cl.url(), autocommit=True) as c:
            create(c, name, d, None)
            keep = assign % len(clusters) == i
            load(c, name, x[keep], y[keep], np.full(int(keep.sum()), i))
    with psycopg.connect(dsn, autocommit=True) as c:
        drop_shards(c)
        create(c, name, d, 0)
    with psycopg.connect(dsn) as c:
        for i, cl in enumerate(clusters):
            shards.add(c, name, cl.url(), str(i))


def drop_shards(conn: psycopg.Connection) -> None:
    """Remove the sharded table and its foreign servers (user mappings and partitions go too)."""
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(TABLE + "_s3")))
    for (srv,) in conn.execute("SELECT srvname::text FROM pg_catalog.pg_foreign_server "
                               "WHERE srvname LIKE %s", [f"bismarck_shard_{TABLE}_s3_%"]):
        conn.execute(sql.SQL("DROP SERVER {} CASCADE").format(sql.Identifier(srv)))


def summarize(runs: list[dict[str, Any]], kind: str, slack: float,
              tight: float) -> dict[str, Any]:
    """The kind's targets (serial's best × (1 + slack), and × (1 + tight)) and one table row
    per run."""
    mine = [r for r in runs if r["kind"] == kind]
    serial = next(r for r in mine if r["run"] == "serial")
    best = min(c["heldout_loss"] for c in serial["curve"])
    target, tight_target = best * (1 + slack), best * (1 + tight)
    rows = []
    for r in mine:
        hit = to_target(r["curve"], target)
        close = to_target(r["curve"], tight_target)
        last = r["curve"][-1]
        rows.append({"run": r["run"], "epochs_to_target": hit and hit["epoch"],
                     "epoch_s_to_target": hit and hit["epoch_s"],
                     "wall_s_to_target": hit and hit["wall_s"],
                     "epochs_to_tight": close and close["epoch"],
                     "wall_s_to_tight": close and close["wall_s"],
                     "s_per_epoch": last["epoch_s"] / last["epoch"],
                     "loss_after_1": r["curve"][0]["heldout_loss"],
                     "best_loss": min(c["heldout_loss"] for c in r["curve"]),
                     "final_loss": last["heldout_loss"],
                     "workers": max(c["workers"] for c in r["curve"])})
    return {"serial_best": best, "target": target, "tight_target": tight_target, "rows": rows}


def chart(runs: list[dict[str, Any]], kinds: list[str], summary: dict[str, Any],
          path: Path, title: str) -> None:
    """Held-out loss vs epoch and vs wall seconds, one row of panels per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 4 * len(kinds)), squeeze=False)
    styles = {"serial": "k-o", "avg-2w": "b--s", "shared-2w": "g-^", "part-2": "c-.v",
              "part-4": "m:D", "shards-3": "r-x"}
    for row, kind in zip(axes, kinds):
        for r in (r for r in runs if r["kind"] == kind):
            ep = [c["epoch"] for c in r["curve"]]
            wall = [c["wall_s"] for c in r["curve"]]
            loss = [c["heldout_loss"] for c in r["curve"]]
            row[0].plot(ep, loss, styles.get(r["run"], "-"), label=r["run"], ms=4)
            row[1].plot(wall, loss, styles.get(r["run"], "-"), label=r["run"], ms=4)
        target = summary[kind]["target"]
        row[1].set_xscale("log")
        for ax, xl in zip(row, ("epoch", "wall seconds (preparation included; log scale)")):
            ax.axhline(target, color="grey", lw=0.8, ls=":")
            ax.set_xlabel(xl)
            ax.set_ylabel("held-out log-loss")
            ax.set_title(f"{kind.upper()}: held-out loss vs {xl.split(' ')[0]}")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(a: argparse.Namespace, info: dict[str, Any], summary: dict[str, Any],
           kinds: list[str], stamp: dt.datetime, load_end: list[float]) -> str:
    """The Markdown table."""
    lines = [f"# Serial SGD vs model averaging vs shared memory: {a.rows:,} rows × "
             f"{a.features} features", "",
             f"{stamp:%Y-%m-%d %H:%M} UTC, `benchmarks/compare_averaging.py --rows {a.rows} "
             f"--features {a.features} --epochs {a.epochs}`. Label: Bernoulli(sigmoid(x·w + "
             "2·x1·x2)), x ~ N(0, 1). Every run trains on the same "
             f"{a.rows:,} rows for {a.epochs} epochs (`tol => NULL`, `validation_fraction => "
             f"0`, `batch_size` {a.batch}, `alpha` 1e-4, seed {a.seed}) and is scored after "
             f"every epoch on the same {a.holdout:,} held-out rows (the epoch's exported "
             "model through the engine's own predict code). GLM: logistic, invscaling eta0 "
             f"{a.glm_eta0:g}, power_t 0.25. MLP: one hidden layer of {a.hidden} (relu), Adam, "
             f"learning_rate_init {a.mlp_lr:g}. Target: the serial run's best held-out "
             f"log-loss + {a.slack:.1%}. Epoch s: the training history's epoch seconds, summed "
             "to the target epoch; wall s: from the call (checks, copies, preparation "
             "included) to the end of that epoch. One run each.", "",
             f"Machine: {info.get('cpu')}, {info.get('cores')} cores, "
             f"{info.get('ram_gb')} GB RAM, PostgreSQL {info.get('postgresql')}; load average "
             f"{' / '.join(f'{x:.2f}' for x in info['load_average_start'])} (1/5/15 min) at "
             f"the start, {' / '.join(f'{x:.2f}' for x in load_end)} at the end; the machine is "
             "shared with other work, so seconds are noisy (epochs and losses are not).", ""]
    for kind in kinds:
        s = summary[kind]
        lines += [f"## {'GLM (logistic regression)' if kind == 'glm' else 'MLP'}", "",
                  f"Target: held-out log-loss ≤ {s['target']:.5f} (serial best "
                  f"{s['serial_best']:.5f} + {a.slack:.1%}); tight target ≤ "
                  f"{s['tight_target']:.5f} (+ {a.tight:.1%}).", "",
                  f"| run | workers / parts | epochs to +{a.slack:.1%} | epoch s | wall s | "
                  f"epochs to +{a.tight:.1%} | wall s | s / epoch | loss after 1 epoch | best | "
                  "final |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in s["rows"]:
            cells = ("not reached | – | –" if r["epochs_to_target"] is None else
                     f"{r['epochs_to_target']} | {r['epoch_s_to_target']:.1f} | "
                     f"{r['wall_s_to_target']:.1f}")
            cells += (" | not reached | –" if r["epochs_to_tight"] is None else
                      f" | {r['epochs_to_tight']} | {r['wall_s_to_tight']:.1f}")
            lines.append(f"| {DESCRIBE.get(r['run'], r['run'])} | {r['workers']} | {cells} | "
                         f"{r['s_per_epoch']:.2f} | {r['loss_after_1']:.5f} | "
                         f"{r['best_loss']:.5f} | {r['final_loss']:.5f} |")
        lines.append("")
        lines += ["Held-out log-loss per epoch:", "",
                  "| run | " + " | ".join(str(i) for i in range(1, a.epochs + 1)) + " |",
                  "|---|" + "---:|" * a.epochs]
        for r in s["curves"]:
            lines.append(f"| {r['run']} | " + " | ".join(f"{v:.4f}" for v in r["losses"]) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="training rows")
    ap.add_argument("--holdout", type=int, default=20_000, help="held-out rows")
    ap.add_argument("--features", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--glm-eta0", type=float, default=0.1)
    ap.add_argument("--mlp-lr", type=float, default=0.001)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--slack", type=float, default=0.01, help="relative, above serial's best")
    ap.add_argument("--tight", type=float, default=0.002, help="a second, tighter target")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kinds", nargs="+", choices=("glm", "mlp"), default=["glm", "mlp"])
    ap.add_argument("--no-shards", action="store_true", help="skip the three-shard runs")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--tag", default="", help="appended to the result files' names")
    ap.add_argument("--dsn", help="the coordinator (default: $BISMARCK_DSN or embedded)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    dsn = connection.resolve_dsn(a.dsn)
    extension.install(dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        info = bench.machine(c)
    n, d = a.rows, a.features
    rng = np.random.default_rng(a.seed)
    w = rng.normal(size=d)
    x, y = make_rows(n, d, rng, w)
    holdout = make_rows(a.holdout, d, rng, w)
    assign = np.random.default_rng(a.seed + 1).integers(0, 12, size=n)  # 12: divisible by 2..4
    with psycopg.connect(dsn, autocommit=True) as c:
        create(c, TABLE, d, None)
        load(c, TABLE, x, y, assign % 1)
        for k in (2, 4):
            create(c, f"{TABLE}_p{k}", d, k)
            load(c, f"{TABLE}_p{k}", x, y, assign % k)
    todo = [r for r in RUNS if not (a.no_shards and r == "shards-3")]
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if not a.no_shards:
            clusters = stack.enter_context(shard_clusters(3))
            attach_shards(dsn, clusters, d, x, y, assign)
        for kind in a.kinds:
            for label in todo:
                suffix, opts = RUNS[label]
                r = one_run(dsn, TABLE + suffix, kind, label, opts, a, holdout)
                print(f"{kind} {label}: {r['total_wall_s']:.1f} s, held-out "
                      f"{[round(c['heldout_loss'], 4) for c in r['curve']]}", file=sys.stderr)
                runs.append(r)
        with psycopg.connect(dsn, autocommit=True) as c:
            drop_shards(c)
            for t in (TABLE, f"{TABLE}_p2", f"{TABLE}_p4"):
                c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(t)))
    load_end = list(os.getloadavg())
    summary = {k: summarize(runs, k, a.slack, a.tight) for k in a.kinds}
    for k in a.kinds:
        summary[k]["curves"] = [{"run": r["run"], "losses": [c["heldout_loss"]
                                                             for c in r["curve"]]}
                                for r in runs if r["kind"] == k]
    stamp = dt.datetime.now(dt.timezone.utc)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / (f"{stamp:%Y-%m-%d}-compare-averaging-{n}x{d}"
                    + (f"-{a.tag}" if a.tag else ""))
    text = report(a, info, summary, a.kinds, stamp, load_end)
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(
        {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
         "machine": info, "load_average_end": load_end, "summary": summary, "runs": runs},
        indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)))
    if not a.no_chart:
        chart(runs, a.kinds, summary, stem.with_suffix(".png"),
              f"{n:,} × {d}, {a.epochs} epochs, held-out {a.holdout:,} rows; load "
              f"{info['load_average_start'][0]:.1f} → {load_end[0]:.1f}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
