#!/usr/bin/env python
"""Exact logistic fits, table → fitted model: in-database newton and lbfgs versus export.

On the synthetic table of ``benchmarks/run.py`` (``bench_<rows>_<features>``, reused when it
exists), with no penalty, side by side in one run:

- in-database ``solver='newton'`` and ``solver='lbfgs'``: wall time of ``train_glm`` from the
  table (input checks, packed float64 working copy, moments, passes, storing the model), serial
  and with 2 parallel workers; passes and seconds per pass from the training history; and the
  same fits from a table packed beforehand by ``bismarck.pack`` (the passes alone, nearly);
- export: binary COPY into numpy (``pgcopy.export``), then statsmodels ``Logit`` (Newton) or
  scikit-learn ``LogisticRegression(penalty=None, solver='lbfgs')``;
- the SGD packed epoch serial and with 2 workers, for the parallel speed-up of model averaging.

Every fit's log-likelihood is compared with the best one (relative difference). Medians of
``--repeats`` runs (the machine is shared); results go to ``benchmarks/results/`` as
``<date>-exact-<rows>x<features>.json`` and ``.md``.

    python benchmarks/exact.py --rows 200000      # a few minutes
    python benchmarks/exact.py --rows 1000000     # the record
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psycopg

from bismarck_controller import connection, training

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgcopy  # noqa: E402
import run as bench  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def log_likelihood(X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: float) -> float:
    """Σ y z − log(1 + eᶻ) of a logistic model on in-memory data."""
    z = X @ coef + intercept
    return float(np.sum(y * z - np.logaddexp(0.0, z)))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def in_database(dsn: str | None, source: str, solver: str, workers: int,
                name: str) -> dict[str, Any]:
    """One exact fit through the controller; wall seconds, passes, seconds per pass, metrics."""
    with connection.connect(dsn) as conn:
        seconds, result = timed(lambda: training.train(
            conn, source, "y", "x", name, solver=solver, parallel=workers))
        m = training.model(conn, name, result.version)
        conn.execute("DELETE FROM bismarck.models WHERE model_name = %s", [name])
        conn.commit()
    passes = [h.seconds for h in result.history]
    return {"seconds": seconds, "passes": len(passes),
            "seconds_per_pass": statistics.median(passes), "pass_seconds": passes,
            "workers": max(h.workers for h in result.history),
            "log_likelihood": m["metrics"].get("log_likelihood"),
            "coef": m["coef"], "intercept": m["intercept"], "converged": result.converged}


def sgd_epoch(dsn: str | None, source: str, workers: int, name: str) -> float:
    """Median seconds of a packed SGD epoch (mini-batches of 512) with ``workers``."""
    with connection.connect(dsn) as conn:
        result = training.train(conn, source, "y", "x", name, batch_size=512, max_epochs=3,
                                tol=None, parallel=workers, seed=1)
        conn.execute("DELETE FROM bismarck.models WHERE model_name = %s", [name])
        conn.commit()
    return statistics.median(h.seconds for h in result.history)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dsn")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    table, built = bench.ensure_table(a.dsn, a.rows, a.features, a.seed)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    log(f"table {table} ({f'built in {built:.0f} s' if built else 'reused'})")
    packed = f"{table}_packed64"
    with connection.connect(a.dsn) as conn:
        drop_packed(conn, packed)
        pack_s, _ = timed(lambda: training.pack(conn, table, "y", "x", packed, dtype="float64",
                                                block_size=512, seed=1))
    samples: dict[str, list[dict[str, Any]]] = {}
    runs = [(f"{solver}, {label}", solver, workers, src)
            for solver in ("newton", "lbfgs")
            for label, workers, src in (("serial", 0, table), ("2 workers", 2, table),
                                        ("packed table, serial", 0, packed),
                                        ("packed table, 2 workers", 2, packed))]
    X = y = None
    for r in range(a.repeats):
        for key, solver, workers, src in runs:
            log(f"[{r + 1}/{a.repeats}] {key}")
            samples.setdefault(key, []).append(
                in_database(a.dsn, src, solver, workers, f"bench_exact_{solver}"))
        log(f"[{r + 1}/{a.repeats}] export")
        X = y = None
        with connection.connect(a.dsn) as conn:
            export_s, (X, y, _) = timed(lambda: pgcopy.export(
                conn, bench.export_query(conn, table, a.rows, a.seed, 0.0), a.features,
                bench.estimated_rows(conn, table)))
        samples.setdefault("export", []).append({"seconds": export_s})
        log(f"[{r + 1}/{a.repeats}] statsmodels Logit")
        import statsmodels.api as sm
        from sklearn.linear_model import LogisticRegression

        def sm_fit(X: np.ndarray = X, y: np.ndarray = y) -> Any:
            return sm.Logit(y, sm.add_constant(X, has_constant="add")).fit(disp=0,
                                                                         method="newton")

        def sk_fit(X: np.ndarray = X, y: np.ndarray = y) -> Any:
            return LogisticRegression(penalty=None, solver="lbfgs", tol=1e-6,
                                      max_iter=1000).fit(X, y)
        fit_s, res = timed(sm_fit)
        samples.setdefault("statsmodels Logit (newton)", []).append(
            {"seconds": export_s + fit_s, "fit_seconds": fit_s, "passes": int(
                res.mle_retvals["iterations"]), "log_likelihood": float(res.llf)})
        log(f"[{r + 1}/{a.repeats}] scikit-learn LogisticRegression")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_s, clf = timed(sk_fit)
        samples.setdefault("scikit-learn LogisticRegression (lbfgs)", []).append(
            {"seconds": export_s + fit_s, "fit_seconds": fit_s, "passes": int(clf.n_iter_[0]),
             "log_likelihood": log_likelihood(X, y, clf.coef_[0], float(clf.intercept_[0]))})
        for workers in (0, 2):
            samples.setdefault(f"SGD packed epoch, {workers or 'no'} workers", []).append(
                {"seconds": sgd_epoch(a.dsn, table, workers, "bench_exact_sgd")})
    assert X is not None and y is not None
    for runs_ in samples.values():  # the in-database models' log-likelihood on the data
        for s in runs_:
            if "coef" in s:
                s["log_likelihood"] = log_likelihood(X, y, np.asarray(s.pop("coef")),
                                                     s.pop("intercept"))
    summary = {k: {f: statistics.median(s[f] for s in v) for f in v[0]
                   if isinstance(v[0][f], (int, float)) and not isinstance(v[0][f], bool)}
               for k, v in samples.items()}
    best_ll = max(s["log_likelihood"] for s in summary.values() if "log_likelihood" in s)
    export_fast = min(summary["statsmodels Logit (newton)"]["seconds"],
                      summary["scikit-learn LogisticRegression (lbfgs)"]["seconds"])
    lines = [f"# Exact logistic fits, {a.rows:,} × {a.features} (no penalty)", "",
             f"Medians of {a.repeats} runs; `bismarck.pack` of the table (float64) took "
             f"{pack_s:.1f} s once. Ratio: seconds / the faster export path "
             f"({export_fast:.1f} s). Δ log-lik: relative to the best fit.", "",
             "| path | seconds | ratio | passes | s / pass | workers | Δ log-lik |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k, s in summary.items():
        ll = s.get("log_likelihood")
        lines.append(
            f"| {k} | {s['seconds']:.2f} | {s['seconds'] / export_fast:.2f} | "
            f"{s.get('passes', ''):} | "
            f"{_fmt(s.get('seconds_per_pass'), '.2f')} | "
            f"{int(s['workers']) if 'workers' in s else ''} | "
            f"{_fmt(None if ll is None else (best_ll - ll) / abs(best_ll), '.1e')} |")
    speed = {solver: summary[f"{solver}, packed table, serial"]["seconds_per_pass"]
             / summary[f"{solver}, packed table, 2 workers"]["seconds_per_pass"]
             for solver in ("newton", "lbfgs")}
    sgd = (summary["SGD packed epoch, no workers"]["seconds"]
           / summary["SGD packed epoch, 2 workers"]["seconds"])
    lines += ["", "Parallel speed-up per pass with 2 workers (packed table): "
              + ", ".join(f"{k} {v:.2f}×" for k, v in speed.items())
              + f"; SGD packed epoch (model averaging) {sgd:.2f}×."]
    text = "\n".join(lines) + "\n"
    print(text)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"{dt.date.today().isoformat()}-exact-{a.rows}x{a.features}"
    stem.with_suffix(".md").write_text(text)
    with connection.connect(a.dsn) as conn:
        machine = bench.machine(conn)
        drop_packed(conn, packed)
    stem.with_suffix(".json").write_text(json.dumps(
        {"rows": a.rows, "features": a.features, "repeats": a.repeats, "pack_seconds": pack_s,
         "samples": samples, "summary": summary, "machine": machine}, indent=1, default=str))
    return 0


def _fmt(v: float | None, spec: str) -> str:
    """A table cell: the number formatted, or empty."""
    return "" if v is None else format(v, spec)


def drop_packed(conn: psycopg.Connection, name: str) -> None:
    """Unregister and drop a packed table, if it exists."""
    conn.execute("DELETE FROM bismarck.packed_tables WHERE packed_table = to_regclass(%s)",
                 [name])
    conn.execute("DROP TABLE IF EXISTS " + name)
    conn.commit()


if __name__ == "__main__":
    sys.exit(main())
