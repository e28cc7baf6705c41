#!/usr/bin/env python
"""The pieces of an epoch under two ``shared_buffers`` sizes, interleaved in one run.

On the embedded cluster (its superuser), each round sets ``shared_buffers`` by ``ALTER SYSTEM``
and restarts the server, then times, by the backend's CPU seconds (user + system from /proc, so
only for a server on this machine: under load wall seconds mostly measure other processes),
medians of ``--repeat``:

- ``SELECT count(x)``, serial: the floor of any read of the table;
- a ``'blocks'`` training pass (:func:`bismarckpy.blockscan.epoch_sql`, the loop's query): its
  SQL alone (TID range scans, ``array_agg``, the bytes: ``sum(length(...))``), the same with a
  PL/Python aggregate that returns its init (the call and the bytes handed to Python), and the
  real pass;
- the packed copy (``bismarck.pack``, float32 blocks of 512): detoasting every block
  (``sum(get_byte(data, 0))``) and one epoch.

The sizes alternate (A, B, A, B, ...) so that both see the same load. ``ALTER SYSTEM RESET``
puts the cluster back at the end.

    python benchmarks/buffers_ab.py --rows 1000000 --sizes 128MB,4GB --rounds 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bismarck_controller import connection, embedded
from bismarck_controller.session import PsycopgSession
from bismarckpy import blockscan, execution
from bismarckpy.kinds import glm
from bismarckpy.source import resolve

sys.path.insert(0, str(Path(__file__).resolve().parent))
import epochs  # noqa: E402
import run as bench  # noqa: E402

NOOP = ("CREATE FUNCTION pg_temp.noop(s bytea, xs bytea, ys bytea, g int[], n int[], h int[], "
        "p int, a int8, b int8, init bytea) RETURNS bytea LANGUAGE plpython3u AS "
        "$$\nreturn init\n$$")
NOOP_AGG = ("CREATE AGGREGATE pg_temp.noop_agg(bytea, bytea, int[], int[], int[], int, int8, "
            "int8, bytea) (SFUNC = pg_temp.noop, STYPE = bytea)")


def backend_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def restart_with(size: str) -> None:
    """``shared_buffers = size`` on the embedded cluster, restarted."""
    with connection.connect(autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET shared_buffers = '{size}'")
    embedded.stop()
    embedded.start()


def pieces(table: str, packed: str, d: int) -> dict[str, tuple[str, list[Any] | None]]:
    """The statements to time: name -> (SQL, parameters)."""
    with psycopg.connect(connection.resolve_dsn(None)) as conn:
        s = PsycopgSession(conn)
        src = resolve(s, f"public.{table}", "y", "x")
        lay = blockscan.layout(s, src, None, 512)
        got = blockscan.prepare(s, src, lay, d, 0.1, 99)
    assert got.stats is not None
    mu, sd = got.stats.mean[1:], np.maximum(got.stats.sd[1:], 1e-6)
    coding = (glm.Y_CLASS01, 1.0, 0.0, 1.0)
    init8 = glm.initialize(d, loss="logistic", batch_size=512, eta=0.5, mu=mu, sd=sd,
                           itemsize=8, y_coding=coding)
    init4 = glm.initialize(d, loss="logistic", batch_size=512, eta=0.5, itemsize=4,
                           y_coding=coding)
    train = blockscan.epoch_sql(src, lay, got, blockscan.TRAIN, 99, shuffled=True)
    lengths = re.sub(r"SELECT \{aggregate\}\(.*?, %s\) AS state",
                     "SELECT sum(length(bismarck._float8_array_bytes(z.xs)) + "
                     "length(bismarck._float8_array_bytes(z.ys))) AS state", train, count=1,
                     flags=re.S)
    return {
        "count(x)": (f"SELECT count(x) FROM {table}", None),
        "blocks pass: SQL only": (lengths, None),
        "blocks pass: SQL + no-op PL/Python": (
            train.replace(execution.AGGREGATE, "pg_temp.noop_agg"), [init8]),
        "blocks pass": (train.replace(execution.AGGREGATE, execution.SGD.scan), [init8]),
        "packed: detoast every block": (f"SELECT sum(get_byte(data, 0)) FROM {packed}", None),
        "packed epoch": (execution.Scan(packed, True, "0, NULL").sql(), [init4]),
    }


def one_round(table: str, packed: str, d: int, repeat: int) -> dict[str, list[float]]:
    """CPU seconds of every piece, ``repeat`` times each, round-robin, after a warm-up."""
    todo = pieces(table, packed, d)
    with connection.connect(autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute(NOOP)
        conn.execute(NOOP_AGG)
        for k, v in execution.parallel_settings(0).items():
            conn.execute(f"SET {k} = {v}")
        out: dict[str, list[float]] = {name: [] for name in todo}
        for r in range(repeat + 1):
            for name, (text, params) in todo.items():
                conn.execute("SELECT setseed(0.25)")
                c0 = backend_cpu(pid)
                conn.execute(text, params).fetchall()
                if r:  # the first round warms the pool and the backend
                    out[name].append(backend_cpu(pid) - c0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--sizes", default="128MB,4GB", help="two shared_buffers values")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args(argv)
    if os.environ.get(connection.ENV_DSN):
        ap.error("runs on the embedded cluster only (it restarts the server)")
    sizes = a.sizes.split(",")
    table, _ = bench.ensure_table(None, a.rows, a.features, epochs.SEED)
    with connection.connect(autocommit=True) as conn:
        packed = epochs.packed_table(conn, table, 512)
    load = [os.getloadavg()]
    runs: dict[str, dict[str, list[float]]] = {size: {} for size in sizes}
    try:
        for r in range(a.rounds):
            for size in sizes:
                restart_with(size)
                for name, got in one_round(table, packed, a.features, a.repeat).items():
                    runs[size].setdefault(name, []).extend(got)
                print(f"round {r + 1} {size}: " + ", ".join(
                    f"{k} {statistics.median(v):.3f}" for k, v in runs[size].items()),
                      file=sys.stderr)
    finally:
        with connection.connect(autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET shared_buffers")
        embedded.stop()
        embedded.start()
    load.append(os.getloadavg())
    med = {size: {k: statistics.median(v) for k, v in got.items()} for size, got in runs.items()}
    lines = [f"# shared_buffers {sizes[0]} against {sizes[1]}, {a.rows:,} x {a.features}, "
             f"{dt.date.today()}", "",
             f"Backend CPU seconds, medians of {a.rounds} x {a.repeat} (interleaved rounds; "
             f"load average {load[0][0]:.1f} at start, {load[1][0]:.1f} at end; "
             f"{os.cpu_count()} cores).", "",
             f"| piece | {sizes[0]} | {sizes[1]} | ratio |", "|---|---:|---:|---:|"]
    for name in med[sizes[0]]:
        x, y = med[sizes[0]][name], med[sizes[1]][name]
        lines.append(f"| {name} | {x:.3f} | {y:.3f} | {x / y if y else float('nan'):.2f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    stem = Path(a.out) / (f"{dt.date.today()}-shared-buffers-{sizes[0]}-{sizes[1]}-"
                          f"{a.rows}x{a.features}")
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"sizes": sizes, "runs": runs,
                                                     "load": load}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
