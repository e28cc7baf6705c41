#!/usr/bin/env python
"""Two builds of the engine, packed epochs serial and with workers, interleaved in one run.

On a shared machine the load moves between two runs, so this compares an earlier build (its
source tree ``--before``, e.g. ``git archive <commit> | tar -x -C /tmp/before``) with the
current one on the same packed table of the same database: each round installs one build
(``bismarck install`` with that tree's ``src`` and ``controller`` first on PYTHONPATH), runs
one warm-up epoch of each mode, then ``--repeat`` epochs of each mode, alternating: serial,
``--workers`` parallel workers beside a backend that only merges (the loop's parallel epoch
until 2026-12-01, ``execution.parallel_settings``), and the backend with ``--workers`` - 1
workers (the loop's since, ``execution.averaging_settings``); the next round installs the
other build. The epoch query and model (logistic, zero start, eta 0.5) are those of
``benchmarks/epochs.py``.

Besides wall seconds it records CPU seconds (user + system, from /proc, so only for a server
on this machine): the leader's, and each parallel worker's (sampled every 10 ms until it
exits, so a worker's last 10 ms may be missed). Under load, wall time mostly measures the
other processes; CPU seconds show what the work itself costs and how it is divided.

    python benchmarks/parallel_ab.py --packed bench_1000000_100_p512 --before /tmp/before
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bismarck_controller import connection
from bismarckpy import execution
from bismarckpy.kinds import glm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (None: gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def workers_of(leader: int) -> list[int]:
    """Process ids of the parallel workers of backend ``leader``."""
    found = []
    tag = f"parallel worker for PID {leader}".encode()
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if tag in Path(path).read_bytes():
                found.append(int(path.split("/")[2]))
        except OSError:
            pass
    return found


def epoch(conn: psycopg.Connection, settings: dict[str, str], query: str,
          init: bytes) -> dict[str, Any]:
    """One epoch: wall seconds, the leader's CPU seconds, each worker's CPU seconds."""
    for name, value in settings.items():
        conn.execute(f"SET {name} = {value}")
    leader = conn.info.backend_pid
    seen: dict[int, float] = {}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for pid in workers_of(leader):
                cpu = cpu_seconds(pid)
                if cpu is not None:
                    seen[pid] = cpu
            time.sleep(0.01)

    thread = threading.Thread(target=poll)
    thread.start()
    c0, t0 = cpu_seconds(leader), time.perf_counter()
    conn.execute(query, [init]).fetchall()
    wall, c1 = time.perf_counter() - t0, cpu_seconds(leader)
    done.set()
    thread.join()
    return {"wall": wall, "leader_cpu": (c1 or 0.0) - (c0 or 0.0),
            "worker_cpu": sorted(seen.values(), reverse=True)}


def install(tree: Path | None, dsn: str | None) -> None:
    """``bismarck install`` of the build in ``tree`` (None: the current one)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), str(tree / "controller")])
    cmd = [sys.executable, "-m", "bismarck_controller.cli", "install"]
    if dsn:
        cmd += ["--dsn", dsn]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packed", required=True, help="a packed table (bismarck.pack)")
    ap.add_argument("--before", required=True, type=Path, help="the earlier build's tree")
    ap.add_argument("--before-label", default="before")
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=4, help="rounds (builds alternate)")
    ap.add_argument("--repeat", type=int, default=2, help="epochs of each mode per round")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--label", default="")
    ap.add_argument("--dsn")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args(argv)
    conn = psycopg.connect(connection.resolve_dsn(a.dsn), autocommit=True)
    conn.prepare_threshold = None  # a prepared generic plan may drop the parallel plan
    info = bench.machine(conn)
    rows = conn.execute(f"SELECT sum(n)::bigint FROM {a.packed}").fetchone()[0]  # noqa: S608
    init = glm.initialize(a.features, loss="logistic", batch_size=512,
                          eta=0.5, itemsize=4, y_coding=(glm.Y_CLASS01, 1.0, 0.0, 1.0))
    query = execution.Scan(a.packed, True, "0, NULL").sql()
    # the earlier loop's parallel epoch (workers only, the leader merges) and the current one
    # (the backend and workers - 1 workers, execution.averaging_settings)
    modes = {"serial": execution.parallel_settings(0),
             f"{a.workers} workers": execution.parallel_settings(a.workers),
             f"backend + {a.workers - 1} workers": execution.averaging_settings(a.workers)}
    builds = {a.before_label: a.before, "after": None}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        b: {m: [] for m in modes} for b in builds}
    loads = []
    for r in range(a.rounds):
        build = list(builds)[r % 2]
        install(builds[build], a.dsn)
        conn.close()
        conn = psycopg.connect(connection.resolve_dsn(a.dsn), autocommit=True)
        conn.prepare_threshold = None
        for settings in modes.values():  # warm: this backend's engine, the caches
            epoch(conn, settings, query, init)
        for _ in range(a.repeat):
            for mode, settings in modes.items():
                runs[build][mode].append(epoch(conn, settings, query, init))
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}/{a.rounds} ({build}): " + ", ".join(
            f"{m} {runs[build][m][-1]['wall']:.2f} s" for m in modes), flush=True)
    install(None, a.dsn)  # leave the current build installed
    summary: dict[str, dict[str, Any]] = {}
    for build, by_mode in runs.items():
        s: dict[str, Any] = {}
        for mode, eps in by_mode.items():
            s[mode] = {
                "wall_median": statistics.median(e["wall"] for e in eps),
                "cpu_median": statistics.median(e["leader_cpu"] + sum(e["worker_cpu"])
                                                for e in eps),
                "busiest_process_cpu_median": statistics.median(
                    max([e["leader_cpu"], *e["worker_cpu"]]) for e in eps),
                "workers_launched": sorted({len(e["worker_cpu"]) for e in eps})}
        ser = s["serial"]
        for mode in list(modes)[1:]:
            # wall: serial over parallel medians; cpu: what the ratio would be with a core
            # per process, the serial CPU over the busiest participant's CPU (medians)
            s[f"wall_ratio {mode}"] = ser["wall_median"] / s[mode]["wall_median"]
            s[f"cpu_ratio {mode}"] = ser["cpu_median"] / s[mode]["busiest_process_cpu_median"]
        summary[build] = s
    info["load_average_end"] = list(os.getloadavg())
    result = {"packed": a.packed, "rows": rows, "features": a.features, "rounds": a.rounds,
              "repeat": a.repeat, "workers": a.workers, "label": a.label, "machine": info,
              "summary": summary, "runs": runs, "load_1min_per_round": loads,
              "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    suffix = f"-{a.label}" if a.label else ""
    out = Path(a.out) / f"{dt.date.today().isoformat()}-parallel-{rows}x{a.features}{suffix}.json"
    out.write_text(json.dumps(result, indent=1))
    for build, s in summary.items():
        print(f"{build}: " + "; ".join(
            f"{m} wall {v['wall_median']:.3f} s cpu {v['cpu_median']:.3f} s busiest "
            f"{v['busiest_process_cpu_median']:.3f} s workers {v['workers_launched']}"
            for m, v in s.items() if isinstance(v, dict)))
        print("    " + "; ".join(f"{k} {v:.2f}x" for k, v in s.items()
                                 if not isinstance(v, dict)))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
