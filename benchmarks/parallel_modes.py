"""Serial SGD vs model averaging vs shared-memory SGD: epochs and seconds to a validation loss.

The comparison of issue 13 item 5 for shared memory, on one table and one server::

    .venv/bin/python benchmarks/parallel_modes.py                    # 200k × 50, ~5 min
    .venv/bin/python benchmarks/parallel_modes.py --rows 1000000 --features 100

Each configuration trains the same logistic regression (packed float32 blocks, mini-batch SGD,
the same seed, validation split and schedule) for ``--epochs`` epochs with ``tol=None``:

* ``serial``: ``parallel=0`` (one backend scans every block);
* ``average``: ``parallel=2, parallel_mode='average'`` (two workers each train a copy from the
  epoch's start; the combine function averages them, weighted by rows);
* ``shared``: ``parallel=2, parallel_mode='shared'`` (two workers step one model in a shared
  mapping, Hogwild!-style).

The target is ``--target`` (default 1%) above the best validation loss any configuration
reached; for each run, the first epoch at or below it and the seconds until then: the sum of
the epochs' own seconds (``epoch s``, the training history's) and wall time from the call
(``wall s``: checks, packing the copy, moments, epochs and validation passes). Each configuration
runs ``--repeats`` times (default 3); medians are quoted, all samples are kept in the JSON. The
machine is shared and noisy (2 cores, other work running): read differences under ~20% as noise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402 (the benchmark suite's data and machine helpers)

from bismarck_controller import connection, training  # noqa: E402

CONFIGS = {"serial": dict(parallel=0), "average": dict(parallel=2, parallel_mode="average"),
           "shared": dict(parallel=2, parallel_mode="shared")}


def one_run(dsn: str | None, table: str, mode: str, args: argparse.Namespace,
            i: int) -> dict[str, Any]:
    """Train once; the per-epoch curve (wall seconds, epoch seconds, validation loss)."""
    curve: list[dict[str, float]] = []
    start = time.monotonic()
    spent = 0.0

    def on_epoch(rec: Any) -> None:
        nonlocal spent
        spent += rec.seconds
        curve.append({"epoch": rec.epoch, "wall": time.monotonic() - start, "epoch_s": spent,
                      "validation_loss": rec.validation_loss, "train_loss": rec.train_loss,
                      "workers": rec.workers})

    params: dict[str, Any] = dict(batch_size=args.batch, block_size=args.block,
                                  max_epochs=args.epochs, tol=None, validation_fraction=0.1,
                                  seed=args.seed, alpha=args.alpha)
    if args.kind == "mlp":  # Adam (scikit-learn's default), learning_rate_init = --eta0
        params.update(hidden=tuple(args.hidden), learning_rate_init=args.eta0)
    else:
        params.update(learning_rate="invscaling", eta0=args.eta0, power_t=0.25)
    with connection.connect(dsn) as conn:
        training.train(conn, table, "y", "x", f"bench_pm_{mode}_{i}", on_epoch=on_epoch,
                       kind=args.kind, **params, **CONFIGS[mode])
        conn.execute("SELECT bismarck.delete_model(%s)", [f"bench_pm_{mode}_{i}"])
        conn.commit()
    return {"mode": mode, "repeat": i, "total_wall": time.monotonic() - start, "curve": curve}


def to_target(curve: list[dict[str, float]], target: float) -> tuple[int, float, float]:
    """(epoch, epoch seconds, wall seconds) of the first epoch at or below ``target``."""
    for c in curve:
        v = c["validation_loss"]
        if v is not None and v <= target:
            return int(c["epoch"]), c["epoch_s"], c["wall"]
    return 0, math.nan, math.nan


def med(xs: list[float]) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.median(xs) if xs else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--eta0", type=float, default=0.5)
    ap.add_argument("--alpha", type=float, default=1e-4)
    ap.add_argument("--target", type=float, default=0.01, help="relative, above the best")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kind", choices=("glm", "mlp"), default="glm")
    ap.add_argument("--hidden", type=int, nargs="+", default=[32], help="mlp: layer sizes")
    ap.add_argument("--dsn")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)

    table, _ = bench.ensure_table(args.dsn, args.rows, args.features, args.seed)
    runs = []
    for i in range(args.repeats):  # interleaved, so slow phases of the machine hit every mode
        for mode in CONFIGS:
            r = one_run(args.dsn, table, mode, args, i)
            print(f"{mode} #{i}: {r['total_wall']:.1f} s, validation "
                  f"{[round(c['validation_loss'], 5) for c in r['curve']]}", file=sys.stderr)
            runs.append(r)
    best = min(c["validation_loss"] for r in runs for c in r["curve"]
               if c["validation_loss"] is not None)
    target = best * (1 + args.target)
    rows = []
    for mode in CONFIGS:
        mine = [r for r in runs if r["mode"] == mode]
        hits = [to_target(r["curve"], target) for r in mine]
        per_epoch = [c["epoch_s"] / c["epoch"] for r in mine for c in r["curve"][-1:]]
        final = [r["curve"][-1]["validation_loss"] for r in mine]
        first = [r["curve"][0]["validation_loss"] for r in mine]
        rows.append({"mode": mode, "epochs_to_target": med([h[0] or math.nan for h in hits]),
                     "reached": sum(1 for h in hits if h[0]), "runs": len(mine),
                     "epoch_s_to_target": med([h[1] for h in hits]),
                     "wall_s_to_target": med([h[2] for h in hits]),
                     "s_per_epoch": med(per_epoch), "loss_after_1": med(first),
                     "final_loss": med(final),
                     "workers": max(c["workers"] for r in mine for c in r["curve"])})
    with connection.connect(args.dsn) as conn:
        info = bench.machine(conn)
    stamp = dt.datetime.now(dt.timezone.utc)
    stem = args.out / (f"{stamp:%Y-%m-%d}-parallel-modes-{args.kind}-{args.rows}x{args.features}"
                       f"-eta{args.eta0:g}".replace(".", "p"))  # no dot: with_suffix
    args.out.mkdir(parents=True, exist_ok=True)
    head = (f"# Serial vs averaging vs shared-memory SGD ({args.kind}), "
            f"{args.rows:,} × {args.features}\n\n"
            f"{stamp:%Y-%m-%d %H:%M} UTC; "
            + (f"MLP (hidden {args.hidden}, Adam, learning_rate_init {args.eta0})"
               if args.kind == "mlp" else
               f"logistic regression (invscaling eta0 {args.eta0} power_t 0.25)")
            + f", packed float32 blocks of {args.block}, batch_size {args.batch}, alpha "
            f"{args.alpha:g}, {args.epochs} epochs, validation 10%; medians of {args.repeats} "
            f"runs (interleaved). Target: validation log-loss ≤ {target:.5f} (best seen "
            f"{best:.5f} + {args.target:.1%}). Machine: {info.get('cpu')}, {info.get('cores')} "
            f"cores, PostgreSQL {info.get('postgresql')}, load at start "
            f"{info.get('load_average_start')} (shared with other work: noisy).\n\n")
    table_md = ("| mode | epochs to target | epoch s to target | wall s to target | s / epoch "
                "| val. loss after 1 epoch | final val. loss | reached | workers |\n"
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    def show(v: float, fmt: str) -> str:
        return "not reached" if not math.isfinite(v) else format(v, fmt)

    for r in rows:
        table_md += (f"| {r['mode']} | {show(r['epochs_to_target'], 'g')} "
                     f"| {show(r['epoch_s_to_target'], '.2f')} "
                     f"| {show(r['wall_s_to_target'], '.2f')} | {r['s_per_epoch']:.3f} "
                     f"| {r['loss_after_1']:.5f} | {r['final_loss']:.5f} "
                     f"| {r['reached']}/{r['runs']} | {r['workers']} |\n")
    stem.with_suffix(".md").write_text(head + table_md)
    stem.with_suffix(".json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "machine": info, "best": best,
         "target": target, "summary": rows, "runs": runs}, indent=1, default=str))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for mode, colour in zip(CONFIGS, ("C0", "C1", "C2")):
            for k, r in enumerate(x for x in runs if x["mode"] == mode):
                ax.plot([c["epoch_s"] for c in r["curve"]],
                        [c["validation_loss"] for c in r["curve"]], colour, marker="o",
                        ms=3, alpha=0.8, label=mode if k == 0 else None)
        ax.axhline(target, color="grey", ls="--", lw=1, label="target")
        ax.set_xlabel("epoch seconds (cumulative)")
        ax.set_ylabel("validation log-loss")
        ax.set_title(f"{args.rows:,} × {args.features}: serial, averaging, shared memory")
        ax.legend()
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=110)
    except ImportError:
        pass
    print(head + table_md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
