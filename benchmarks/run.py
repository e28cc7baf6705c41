#!/usr/bin/env python
"""bismarckpy benchmarks: in-database SGD paths side by side with export + in-memory training.

One command generates (or reuses) a synthetic logistic table ``bench_<rows>_<features>`` and
measures, on that same data: the row path, the packed path, the parallel path, scikit-learn's
SGDClassifier (one epoch), a numpy mini-batch floor, the export paths (binary COPY into numpy,
pandas.read_sql), packing, and end to end (table to a model within 1% of the best validation
loss) for in-database training versus export + SGDClassifier / LogisticRegression (lbfgs).

    python benchmarks/run.py                      # quick (20k x 100), well under a minute
    python benchmarks/run.py --rows 1000000       # for the record
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg
from psycopg import sql

from bismarck_controller import connection, extension, training
from bismarck_controller.session import PsycopgSession, qualified
from bismarckpy import loop
from bismarckpy.kinds import glm
from bismarckpy.params import GLM_PARAMS
from bismarckpy.source import resolve

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgcopy  # noqa: E402
import report  # noqa: E402

PATHS = ("row", "packed", "parallel", "packing", "sklearn", "numpy", "export", "pandas", "e2e")
E2E_DEFAULT = "{}"  # the in-database end to end runs with the defaults
GENERATOR = "v1"  # bump when the data generator changes: tables are rebuilt
MB = 2**20


# ----------------------------------------------------------------------------- measurement
def private_mb(info: Any) -> float:
    """A server process's own memory in MB: its RSS without shared pages (psutil's ``shared``:
    the pages of ``shared_buffers`` it has touched, which every backend of the server shares,
    and mapped files such as libraries), i.e. ``RssAnon`` on Linux."""
    return max(0, info.rss - getattr(info, "shared", 0)) / MB


class RssSampler(threading.Thread):
    """Samples memory peaks per phase: this controller's RSS, its own server backends' and
    the other ones' private memory (:func:`private_mb`), and its own backends' whole RSS.

    "Own" backends are this run's connections and their parallel workers; the server may be
    shared, so every other server process is reported apart.
    """

    def __init__(self, backend_pid: int | None, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.phase = "setup"
        self.peaks: dict[str, dict[str, float]] = {}
        self.own: set[int] = {backend_pid} if backend_pid else set()
        self._stop = threading.Event()
        self._me = psutil.Process()
        self._postmaster = _postmaster(backend_pid)

    def run(self) -> None:  # noqa: D102
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Take one sample now."""
        peak = self.peaks.setdefault(self.phase, {"controller_mb": 0.0, "backend_mb": 0.0,
                                                  "backend_rss_mb": 0.0,
                                                  "other_server_mb": 0.0})
        with contextlib.suppress(psutil.Error):
            peak["controller_mb"] = max(peak["controller_mb"], self._me.memory_info().rss / MB)
        if self._postmaster is None:
            return
        try:
            children = self._postmaster.children()
        except psutil.Error:
            return
        own = set(self.own)
        for proc in children:
            try:
                mine = proc.pid in own or any(
                    f"parallel worker for PID {pid}" in " ".join(proc.cmdline()) for pid in own)
                key = "backend_mb" if mine else "other_server_mb"
                info = proc.memory_info()
                peak[key] = max(peak[key], private_mb(info))
                if mine:
                    peak["backend_rss_mb"] = max(peak["backend_rss_mb"], info.rss / MB)
            except psutil.Error:
                continue

    def enter(self, phase: str) -> None:
        """Start a new phase, sampling at the boundary so short phases are seen too."""
        self.sample()
        self.phase = phase
        self.sample()

    def stop(self) -> None:
        """Stop sampling (after one last sample)."""
        self.sample()
        self._stop.set()

    @property
    def observes_server(self) -> bool:
        """Whether the server's processes are on this machine and visible."""
        return self._postmaster is not None


def _postmaster(backend_pid: int | None) -> psutil.Process | None:
    """The postmaster of a local backend, or None for a remote or hidden server."""
    if backend_pid is None:
        return None
    try:
        proc = psutil.Process(backend_pid)
        if "postgres" not in " ".join(proc.cmdline() or [proc.name()]):
            return None
        parent = proc.parent()
        return parent if parent and "postgres" in parent.name() + " ".join(parent.cmdline()) \
            else None
    except psutil.Error:
        return None


# Statement kinds of a training run, by a piece of their SQL (first match wins)
STATEMENT_KINDS = (
    ("packing", "_pack_block("), ("packing", "_pack_buffer("),
    ("first epoch (blocks: checks and counts folded in)", "_epoch_scan_first("),
    ("epochs", "_epoch_scan("), ("epochs", "_epoch_packed("),
    ("create copies", "CREATE UNLOGGED TABLE bismarck._train"),
    ("create copies", "CREATE UNLOGGED TABLE bismarck._valid"), ("epochs", "_glm_epoch"),
    ("moments", "_moments"), ("checks and counts", "count(*)"),
    ("checks and counts", "cardinality("), ("label classes", "SELECT DISTINCT"),
    ("store model", "_store_model("),
)


class TimedSession(PsycopgSession):
    """The controller's session, also timing each statement and each epoch's end."""

    def __init__(self, conn: psycopg.Connection) -> None:
        super().__init__(conn, None)
        self.log: list[tuple[str, float]] = []
        self.epoch_marks: list[float] = []

    def query(self, text: str, params: Any = ()) -> list[tuple]:
        """Run and time one statement."""
        t = time.perf_counter()
        try:
            return super().query(text, params)
        finally:
            self.log.append((text, time.perf_counter() - t))

    def on_epoch(self, record: loop.EpochRecord) -> None:
        """Remember when each epoch was recorded."""
        self.epoch_marks.append(time.perf_counter())


@dataclass
class Run:
    """One in-database training run, timed."""

    total: float
    prep: float
    packing: float
    copy_rows: float
    epochs: list[float]
    curve: list[tuple[float, float | None]]  # (seconds since start, validation loss) per epoch
    store: float
    n_train: int
    breakdown: dict[str, float]
    result: loop.TrainResult = field(repr=False)


def train_timed(conn: psycopg.Connection, table: str, model: str, **params: Any) -> Run:
    """``training.train`` with a timing session: preparation, packing, epochs, curve."""
    session = TimedSession(conn)
    t0 = time.perf_counter()
    result = loop.train_glm(session, source=qualified(conn, table), label="y", features="x",
                            model_name=model,
                            **params)
    total = time.perf_counter() - t0
    marks = session.epoch_marks
    first = result.history[0].seconds if result.history else 0.0
    prep = (marks[0] - t0 - first) if marks else total
    packing = sum(s for text, s in session.log if "_pack_block(" in text
                  or "_pack_buffer(" in text)
    copy_rows = sum(s for text, s in session.log
                    if text.startswith("CREATE UNLOGGED TABLE") and " AS SELECT" in text)
    store = total - (marks[-1] - t0) if marks else 0.0
    curve = [(m - t0, r.validation_loss) for m, r in zip(marks, result.history)]
    breakdown: dict[str, float] = {}
    for text, s in session.log:
        kind = next((k for k, needle in STATEMENT_KINDS if needle in text), "other")
        breakdown[kind] = breakdown.get(kind, 0.0) + s
    return Run(total=total, prep=prep, packing=packing, copy_rows=copy_rows,
               epochs=[r.seconds for r in result.history], curve=curve, store=store,
               n_train=result.rows, breakdown=breakdown, result=result)


def _median_breakdown(runs: list[Run]) -> dict[str, float]:
    """Median seconds per statement kind over runs."""
    kinds = {k for r in runs for k in r.breakdown}
    return {k: median([r.breakdown.get(k, 0.0) for r in runs]) for k in sorted(kinds)}


def median(xs: list[float]) -> float:
    """Median, NaN for an empty list."""
    return statistics.median(xs) if xs else math.nan


# ----------------------------------------------------------------------------- data
def table_name(rows: int, features: int) -> str:
    """The benchmark table for a size."""
    return f"bench_{rows}_{features}"


def true_model(features: int, seed: int) -> tuple[np.ndarray, float]:
    """The fixed weight vector and intercept the labels come from (logit sd about 2)."""
    rng = np.random.default_rng([seed, 1])
    return rng.normal(size=features) * math.sqrt(12.0 / features), 0.25


def chunks(rows: int, features: int, seed: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Synthetic rows in chunks of a few MB: x ~ U(-1, 1), y ~ Bernoulli(sigmoid(x·w + b))."""
    w, b = true_model(features, seed)
    rng = np.random.default_rng([seed, 2])
    step = max(1000, (8 * MB) // (8 * features))
    for start in range(0, rows, step):
        m = min(step, rows - start)
        X = rng.uniform(-1.0, 1.0, size=(m, features))
        p = 1.0 / (1.0 + np.exp(-(X @ w + b)))
        y = (rng.random(m) < p).astype(np.int32)
        yield np.arange(start + 1, start + m + 1, dtype=np.int32), X, y


def ensure_table(dsn: str | None, rows: int, features: int, seed: int) -> tuple[str, float]:
    """Create and fill the table unless it exists with the same size and seed.

    Returns the table name and the seconds spent building it (0 when reused).
    """
    name = table_name(rows, features)
    tag = f"bismarckpy benchmark data {GENERATOR} rows={rows} features={features} seed={seed}"
    with connection.connect(dsn, autocommit=True, ensure_extension=False) as conn:
        row = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')",
                           [name]).fetchone()
        if row and row[0] == tag:
            return name, 0.0
        t0 = time.perf_counter()
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
        conn.execute(sql.SQL("CREATE TABLE {} (id int, x float8[], y int)").format(ident))
        with conn.transaction():
            n = pgcopy.copy_in(conn, name, chunks(rows, features, seed))
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(ident, sql.Literal(tag)))
        assert n == rows
        conn.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(ident))
        return name, time.perf_counter() - t0


def holdout_expr(conn: psycopg.Connection, table: str, rows: int, seed: int,
                 fraction: float) -> sql.Composable:
    """The training loop's own validation split of ``table`` (every row usable), as a column.

    The engine's ``loop._holdout`` over ``source.resolve``: the export paths validate on
    exactly the rows the in-database run holds out.
    """
    session = PsycopgSession(conn, None)
    src = resolve(session, qualified(conn, table), "y", "x")
    predicate, _ = loop._holdout(session, src, seed, fraction, rows)
    conn.rollback()
    return sql.SQL(predicate)


def export_query(conn: psycopg.Connection, table: str, rows: int, seed: int,
                 fraction: float) -> sql.Composable:
    """x, y and the holdout flag of every row, for the export paths."""
    return sql.SQL("SELECT s.x, s.y, {} AS holdout FROM {} AS s").format(
        holdout_expr(conn, table, rows, seed, fraction), sql.Identifier(table))


def estimated_rows(conn: psycopg.Connection, table: str) -> int:
    """The planner's row estimate (what an exporter knows without counting)."""
    row = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                       [table]).fetchone()
    conn.rollback()
    return max(int(row[0]) if row else 0, 1024)


# ----------------------------------------------------------------------------- in memory
def numpy_epoch(X: np.ndarray, y: np.ndarray, batch: int = 512, eta: float = 0.5,
                alpha: float = 1e-4) -> tuple[np.ndarray, float]:
    """One epoch of mini-batch logistic SGD over ``X`` in its given (pre-shuffled) order."""
    n, d = X.shape
    w = np.zeros(d, dtype=X.dtype)
    b = 0.0
    yf = y.astype(X.dtype)
    for start in range(0, n, batch):
        Xb = X[start:start + batch]
        z = Xb @ w + b
        r = 1.0 / (1.0 + np.exp(-z)) - yf[start:start + batch]
        w -= eta * (Xb.T @ r / len(r) + alpha * w)
        b -= eta * float(r.mean())
    return w, b


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean logistic loss of probabilities ``p`` for 0/1 labels ``y``."""
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def split_in_place(X: np.ndarray, y: np.ndarray, v: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training rows moved to the front of ``X`` (chunk by chunk, no full copy); validation copied.

    ``X`` and ``y`` are overwritten: the training part is a view of their first rows.
    """
    Xv, yv = X[v], y[v]
    idx = np.flatnonzero(~v)
    step = 65536
    for i in range(0, len(idx), step):  # idx[k] >= k: sources are never overwritten first
        j = idx[i:i + step]
        X[i:i + len(j)] = X[j]
        y[i:i + len(j)] = y[j]
    return X[:len(idx)], y[:len(idx)], Xv, yv


def time_to_target(curve: list[tuple[float, float | None]], rel: float
                   ) -> tuple[float, float, int]:
    """First (seconds, loss, epoch) within ``rel`` of the best loss on the curve."""
    losses = [v for _, v in curve if v is not None and math.isfinite(v)]
    if not losses:
        return math.nan, math.nan, 0
    best = min(losses)
    for i, (t, v) in enumerate(curve, 1):
        if v is not None and v <= best * (1 + rel):
            return t, best, i
    return math.nan, best, 0


# ----------------------------------------------------------------------------- machine
def _version(dist: str) -> str:
    """An installed distribution's version without importing it (keeps the RSS honest)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(conn: psycopg.Connection) -> dict[str, Any]:
    """CPU, cores, RAM, OS, PostgreSQL and library versions, server settings."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(), "python": platform.python_version(),
        "client_numpy": np.__version__, "client_sklearn": _version("scikit-learn"),
        "client_pandas": _version("pandas"), "psycopg": psycopg.__version__,
        "load_average_start": list(os.getloadavg()),
    }
    info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    try:
        info["server_numpy"] = extension.check_server(conn)
    except Exception as exc:  # a report without it is still useful
        info["server_numpy"] = f"unknown ({exc})"
    settings = {}
    for name in ("shared_buffers", "work_mem", "max_parallel_workers",
                 "max_parallel_workers_per_gather", "jit", "synchronous_commit"):
        settings[name] = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))
                                      ).fetchone()[0]  # type: ignore[index]
    info["server_settings"] = settings
    conn.rollback()
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src",
                                "sql", "controller"], capture_output=True, text=True
                               ).stdout.strip()
        info["commit"] = commit + (" (+ uncommitted engine changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = "unknown"
    return info


# ----------------------------------------------------------------------------- the run
class Bench:
    """Runs the selected paths and collects everything the report needs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.skip = set(args.skip)
        self.paths: dict[str, dict[str, Any]] = {}
        self.e2e: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.models: list[str] = []
        self.packed_available = "packed" in {p.name for p in GLM_PARAMS}
        self.conn: psycopg.Connection
        self.sampler: RssSampler

    def log(self, text: str) -> None:
        """Progress on stderr."""
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def add(self, key: str, label: str, seconds: list[float], rows: int, **extra: Any) -> None:
        """Record a path's repeated timings."""
        med = median(seconds)
        self.paths[key] = {"label": label, "seconds": seconds, "median": med, "rows": rows,
                           "rows_per_s": rows / med if med and med > 0 else None, **extra}
        self.log(f"{label}: median {med:.4g} s ({len(seconds)} samples)")

    def unavailable(self, key: str, label: str, why: str) -> None:
        """Record a path that could not run."""
        self.paths[key] = {"label": label, "seconds": [], "median": None, "rows": None,
                           "rows_per_s": None, "unavailable": why}
        self.log(f"{label}: not available ({why})")

    def model(self, kind: str) -> str:
        """A model name for this run (deleted at the end)."""
        name = f"bench_{kind}_{os.getpid()}"
        if name not in self.models:
            self.models.append(name)
        return name

    def run(self) -> dict[str, Any]:
        """Everything, in an order that keeps the in-database memory peaks readable."""
        a = self.args
        self.log(f"table {table_name(a.rows, a.features)}")
        table, build_s = ensure_table(a.dsn, a.rows, a.features, a.seed)
        self.log(f"built in {build_s:.1f} s" if build_s else "reused")
        conn = self.conn = connection.connect(a.dsn)
        sampler = self.sampler = RssSampler(conn.info.backend_pid)
        sampler.start()
        started = time.perf_counter()
        try:
            info = machine(conn)
            base = {"loss": "logistic", "max_epochs": a.epochs, "tol": None, "seed": a.seed,
                    "shuffle": "once", "validation_fraction": 0.0}
            sampler.enter("in-database")
            self.in_database(table, base)
            sampler.enter("in-database end to end")
            if "e2e" not in self.skip:
                self.e2e_in_database(table)
            self.memory_guard()
            X, y, v = self.exports(self.conn, table)
            self.in_memory(X, y)
            if "e2e" not in self.skip and X is not None:
                self.e2e_export(X, y, v)
        finally:
            sampler.stop()
            conn = self.conn
            for name in self.models:
                try:
                    training.delete_model(conn, name)
                except psycopg.Error:
                    conn.rollback()
            conn.close()
        info["load_average_end"] = list(os.getloadavg())
        if a.drop:
            with connection.connect(a.dsn, autocommit=True, ensure_extension=False) as c:
                c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        return {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "rows": a.rows, "features": a.features, "epochs": a.epochs, "repeats": a.repeats,
            "seed": a.seed, "within": a.within, "table": table, "table_build_seconds": build_s,
            "wall_seconds": time.perf_counter() - started,
            "machine": info, "paths": self.paths, "end_to_end": self.e2e,
            "memory": sampler.peaks, "memory_observes_server": sampler.observes_server,
            "notes": self.notes, "skipped": sorted(self.skip),
        }

    # -- in-database epochs -------------------------------------------------------------
    def train(self, table: str, kind: str, **params: Any) -> Run:
        """One timed training run; retried once on a fresh connection after a server error.

        The embedded database is shared: someone reinstalling the extension mid-run leaves this
        backend with stale function OIDs ("cache lookup failed").
        """
        try:
            return train_timed(self.conn, table, self.model(kind), **params)
        except psycopg.Error as exc:
            msg = str(exc).splitlines()[0]
            self.log(f"{kind}: server error ({msg}); retrying on a new connection")
            self.notes.append(f"{kind}: one run retried on a new connection after: {msg}")
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            self.conn = connection.connect(self.args.dsn)
            self.sampler.own.add(self.conn.info.backend_pid)
            return train_timed(self.conn, table, self.model(kind), **params)

    def in_database(self, table: str, base: dict[str, Any]) -> None:
        """Row, packed and parallel paths: per-epoch seconds from the history."""
        a = self.args
        if "row" not in self.skip:
            runs = [self.train(table, "row", batch_size=1, parallel=0,
                                **({"packed": False} if self.packed_available else {}), **base)
                    for _ in range(a.repeats)]
            self.add("row", "in-database row path, epoch (batch 1)",
                     [s for r in runs for s in r.epochs], a.rows,
                     preparation=median([r.prep for r in runs]),
                     statements=_median_breakdown(runs),
                     shuffled_copy=median([r.copy_rows for r in runs]))
        if "row" not in self.skip:
            self.row_floor(self.conn, table)
        packed_opts = {"packed": True, "batch_size": a.batch, "block_size": a.batch,
                       "dtype": "float32"}
        variants = [("packed", 0), ("parallel", a.workers)]
        if a.workers > 1:  # one worker alone shows the per-epoch cost of starting workers
            variants.append(("parallel_1", 1))
        for key, workers in variants:
            label = (f"in-database packed path, epoch (batch {a.batch}, float32)" if not workers
                     else f"in-database packed path, {workers} parallel worker"
                     f"{'s' if workers > 1 else ''} (the leader merges), epoch")
            if "packed" in self.skip or (key != "packed" and "parallel" in self.skip):
                continue
            if not self.packed_available:
                self.unavailable(key, label, "this engine has no 'packed' parameter")
                continue
            runs = [self.train(table, key, parallel=workers,
                                **packed_opts, **base) for _ in range(a.repeats)]
            merged = [getattr(h, "workers", None) for r in runs for h in r.result.history]
            self.add(key, label, [s for r in runs for s in r.epochs], a.rows,
                     preparation=median([r.prep for r in runs]), workers=workers,
                     statements=_median_breakdown(runs),
                     workers_merged=median([m for m in merged if m is not None]))
            if key == "packed":
                self.add("packing", "packing (shuffled float32 blocks, training copy)",
                         [r.packing for r in runs], a.rows,
                         preparation=median([r.prep for r in runs]))

        if "packing" not in self.skip:
            self.pack_call(self.conn, table)

    def row_floor(self, conn: psycopg.Connection, table: str) -> None:
        """A do-nothing PL/Python aggregate of the row path's shape: the per-row call floor.

        It takes ``(x float8[], y float8, state bytea)`` and returns a state of the engine's
        size unchanged, so it pays the call, the array-to-list conversion and the state copy.
        Created in a transaction that is rolled back.
        """
        a = self.args
        state = glm.initialize(a.features, loss="logistic")
        times = []
        try:
            conn.execute("CREATE FUNCTION pg_temp.bench_noop(s bytea, x float8[], y float8, "
                         "init bytea) RETURNS bytea LANGUAGE plpython3u AS "
                         "$$\nreturn init if s is None else s\n$$")
            conn.execute("CREATE AGGREGATE pg_temp.bench_noop_agg(float8[], float8, bytea) "
                         "(SFUNC = pg_temp.bench_noop, STYPE = bytea)")
            query = sql.SQL("SELECT length(pg_temp.bench_noop_agg(x, y::float8, %s)) "
                            "FROM {}").format(sql.Identifier(table))
            conn.execute(query, [state])  # warm: PL/Python started in this backend
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                conn.execute(query, [state])
                times.append(time.perf_counter() - t0)
        except psycopg.Error as exc:
            conn.rollback()
            self.unavailable("row_floor", "row path floor", str(exc).splitlines()[0])
            return
        conn.rollback()
        self.add("row_floor", "row path floor: do-nothing PL/Python aggregate, float8[] + "
                 f"{len(state)}-byte state per row", times, a.rows)

    def pack_call(self, conn: psycopg.Connection, table: str) -> None:
        """``bismarck.pack``: a reusable packed copy of the whole table, the whole SQL call."""
        a = self.args
        label = "bismarck.pack: reusable packed table (whole call, float32)"
        have = conn.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_proc AS p JOIN "
                            "pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace "
                            "WHERE n.nspname = 'bismarck' AND p.proname = 'pack')"
                            ).fetchone()  # any signature (source became regclass)
        conn.rollback()
        if not have or not have[0]:
            self.unavailable("pack", label, "this engine has no bismarck.pack")
            return
        target = f"bench_packed_{os.getpid()}"
        times = []
        for i in range(a.repeats):
            t0 = time.perf_counter()
            conn.execute("SELECT * FROM bismarck.pack(source => %s, label => 'y', "
                         "features => ARRAY['x'], packed_table => %s, block_size => %s, "
                         "dtype => 'float32', seed => %s)", [table, target, a.batch, a.seed + i])
            conn.commit()
            times.append(time.perf_counter() - t0)
            # dropping the table is enough: the registry forgets packed tables that are gone
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(target)))
            conn.commit()
        self.add("pack", label, times, a.rows)

    def e2e_in_database(self, table: str) -> None:
        """Table to model with the defaults: validation loss after each epoch, the whole call.

        Only what the held-out curve needs is set (validation_fraction, seed, max_epochs);
        everything else, the convergence check included, is the default.
        """
        a = self.args
        params: dict[str, Any] = {
            "loss": "logistic", "max_epochs": a.e2e_epochs, "seed": a.seed,
            "validation_fraction": a.validation, "alpha": a.alpha}
        params.update(json.loads(a.e2e_params))
        runs = [self.train(table, "e2e", **params)
                for _ in range(a.e2e_repeats)]
        ttts = []
        for r in runs:
            t, best, epoch = time_to_target(r.curve, a.within)
            ttts.append((t + r.store, best, epoch))
        r = runs[0]
        used = self.conn.execute("SELECT params FROM bismarck.models WHERE model_name = %s "
                                 "ORDER BY version DESC LIMIT 1", [self.model("e2e")]).fetchone()
        self.conn.rollback()
        resolved = {k: (used[0] or {}).get(k) for k in ("batch_size", "eta0", "learning_rate",
                                                         "parallel", "packed", "shuffle")
                    } if used else {}
        self.e2e["in-database"] = {
            "label": "in-database, defaults",
            "seconds_to_target": median([t for t, _, _ in ttts]),
            "samples": [t for t, _, _ in ttts],
            "best_validation_loss": ttts[0][1], "epochs_to_target": ttts[0][2],
            "preparation": median([x.prep for x in runs]),
            "whole_call_seconds": median([x.total for x in runs]),
            "epochs_run": median([len(x.epochs) for x in runs]),
            "statements": _median_breakdown(runs), "curve": r.curve, "params": params,
            "curves": [x.curve for x in runs], "stores": [x.store for x in runs],
            "resolved_params": resolved, "store_seconds": r.store,
            "train_rows": r.n_train,
        }
        self.log(f"end to end in-database: {self.e2e['in-database']['seconds_to_target']:.3g} s")

    # -- export --------------------------------------------------------------------------
    def memory_guard(self) -> None:
        """Skip the export paths this machine's free memory cannot hold (10M rows and up)."""
        a = self.args
        free = psutil.virtual_memory().available
        values = a.rows * a.features
        # float64 array + float32 shuffled copy + validation copy; pandas: ~75 B per value
        for paths, need in (({"export", "sklearn", "numpy", "e2e"}, values * 8 * 1.7),
                            ({"pandas"}, values * 75.0)):
            if need > 0.8 * free and not paths <= self.skip:
                self.skip |= paths
                self.notes.append(
                    f"skipped {', '.join(sorted(paths))}: needs about {need / 2**30:.0f} GB of "
                    f"memory, {free / 2**30:.0f} GB available")
                for key in sorted(paths & {"export", "sklearn", "numpy", "pandas"}):
                    self.unavailable(key, key, f"needs about {need / 2**30:.0f} GB of memory")

    def exports(self, conn: psycopg.Connection, table: str
                ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Binary COPY into numpy (kept for the in-memory paths), then pandas.read_sql."""
        a = self.args
        query = export_query(conn, table, a.rows, a.seed, a.validation)
        X = y = v = None
        need = {"sklearn", "numpy", "export", "e2e"} - self.skip
        if need:
            self.sampler.enter("export: binary COPY")
            cap = estimated_rows(conn, table)
            times = []
            for _ in range(a.repeats if "export" not in self.skip else 1):
                X = y = v = None
                t0 = time.perf_counter()
                X, y, v = pgcopy.export(conn, query, a.features, cap)
                times.append(time.perf_counter() - t0)
            assert X is not None and len(X) == a.rows
            self.add("export", "export: psycopg binary COPY into numpy (float64)", times, a.rows)
        if "pandas" not in self.skip:
            self.sampler.enter("export: pandas.read_sql")
            import pandas as pd
            import sqlalchemy

            dsn = connection.resolve_dsn(a.dsn)
            def connect() -> psycopg.Connection:
                c = psycopg.connect(dsn)
                self.sampler.own.add(c.info.backend_pid)
                return c

            engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=connect)
            text = export_query(conn, table, a.rows, a.seed, a.validation).as_string(conn)
            reps = a.repeats if a.rows * a.features < 20_000_000 else 1
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                df = pd.read_sql(text, engine)
                Xp = np.array(df["x"].tolist(), dtype=np.float64)
                times.append(time.perf_counter() - t0)
                assert Xp.shape == (a.rows, a.features)
                del df, Xp
            engine.dispose()
            self.add("pandas", "export: pandas.read_sql into numpy", times, a.rows)
        return X, y, v

    # -- in memory -----------------------------------------------------------------------
    def in_memory(self, X: np.ndarray | None, y: np.ndarray | None) -> None:
        """scikit-learn SGDClassifier one epoch; numpy mini-batch floor."""
        a = self.args
        if X is None or y is None:
            return
        self.sampler.enter("in-memory training")
        if "sklearn" not in self.skip:
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.linear_model import SGDClassifier

            times = []
            for i in range(a.repeats):
                clf = SGDClassifier(loss="log_loss", max_iter=1, tol=None, alpha=a.alpha,
                                    random_state=a.seed + i)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    t0 = time.perf_counter()
                    clf.fit(X, y)
                    times.append(time.perf_counter() - t0)
            self.add("sklearn", "scikit-learn SGDClassifier, one epoch (in memory)", times,
                     a.rows)
        if "numpy" not in self.skip:
            rng = np.random.default_rng(a.seed)
            perm = rng.permutation(len(X))
            Xs = np.empty(X.shape, dtype=np.float32)
            step = 65536
            for i in range(0, len(X), step):  # no full-size float64 temporary
                Xs[i:i + step] = X[perm[i:i + step]]
            ys = y[perm]
            numpy_epoch(Xs[: 4 * a.batch], ys[: 4 * a.batch], a.batch)  # warm up
            times = []
            for _ in range(max(a.repeats, 5)):
                t0 = time.perf_counter()
                numpy_epoch(Xs, ys, a.batch)
                times.append(time.perf_counter() - t0)
            del Xs
            self.add("numpy", f"numpy mini-batch floor, one epoch (batch {a.batch}, float32, "
                     "pre-shuffled, in memory)", times, a.rows)

    def e2e_export(self, X: np.ndarray, y: np.ndarray, v: np.ndarray) -> None:
        """Export + SGDClassifier (epoch by epoch) and export + LogisticRegression (lbfgs)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression, SGDClassifier

        a = self.args
        t0 = time.perf_counter()
        Xt, yt, Xv, yv = split_in_place(X, y, v)
        split_s = time.perf_counter() - t0
        export_s = self.paths["export"]["median"] + split_s
        sgd_samples, sgd_info = [], {}
        for i in range(a.e2e_repeats):
            t0 = time.perf_counter()
            clf = SGDClassifier(loss="log_loss", alpha=a.alpha, random_state=a.seed + i)
            curve = []
            for _ in range(a.e2e_epochs):
                clf.partial_fit(Xt, yt, classes=np.array([0, 1]))
                vl = log_loss(clf.predict_proba(Xv)[:, 1], yv)
                curve.append((export_s + time.perf_counter() - t0, vl))
            t, best, epoch = time_to_target(curve, a.within)
            sgd_samples.append(t)
            if not sgd_info:
                sgd_info = {"best_validation_loss": best, "epochs_to_target": epoch,
                            "curve": curve}
        self.e2e["export+sgd"] = {
            "label": "binary COPY export + SGDClassifier (epoch by epoch, same validation)",
            "seconds_to_target": median(sgd_samples), "samples": sgd_samples,
            "export_seconds": export_s - split_s, "split_seconds": split_s, **sgd_info}
        lr_samples, lr_info = [], {}
        for _ in range(a.e2e_repeats):
            t0 = time.perf_counter()
            clf = LogisticRegression(C=1.0 / (a.alpha * len(yt)), max_iter=1000)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(Xt, yt)
            vl = log_loss(clf.predict_proba(Xv)[:, 1], yv)
            lr_samples.append(export_s + time.perf_counter() - t0)
            lr_info = {"best_validation_loss": vl, "epochs_to_target": None,
                       "iterations": int(clf.n_iter_[0])}
        self.e2e["export+lbfgs"] = {
            "label": "binary COPY export + LogisticRegression (lbfgs)",
            "seconds_to_target": median(lr_samples), "samples": lr_samples,
            "export_seconds": export_s - split_s, "split_seconds": split_s, **lr_info}
        self.e2e["validation_rows"] = {"export": int(v.sum()),
                                       "in_database": self._valid_rows()}
        self._overall_best()
        self._to_lbfgs_quality()
        self.log(f"end to end export: sgd {self.e2e['export+sgd']['seconds_to_target']:.3g} s, "
                 f"lbfgs {self.e2e['export+lbfgs']['seconds_to_target']:.3g} s")

    def _overall_best(self) -> None:
        """Also time each trainer to within ``within`` of the best loss any trainer reached."""
        trainers = {k: e for k, e in self.e2e.items() if "label" in e}
        best = min((e["best_validation_loss"] for e in trainers.values()
                    if e.get("best_validation_loss") is not None), default=math.nan)
        for e in trainers.values():
            curve = e.get("curve") or [(e["seconds_to_target"], e["best_validation_loss"])]
            goal = best * (1 + self.args.within)
            hit = [t for t, v in curve if v is not None and v <= goal]
            extra = e.get("store_seconds", 0.0)
            e["seconds_to_overall_best"] = hit[0] + extra if hit else None
        self.e2e["overall_best_validation_loss"] = {"value": best}

    def _to_lbfgs_quality(self) -> None:
        """Seconds each trainer takes to within ``within`` of lbfgs's validation loss (issue 11).

        lbfgs reaches its own loss when it returns; the others from their per-epoch curves.
        """
        ref = self.e2e.get("export+lbfgs", {}).get("best_validation_loss")
        if ref is None:
            return
        goal = ref * (1 + self.args.within)
        for key, e in self.e2e.items():
            if not isinstance(e, dict) or "label" not in e:
                continue
            if key == "export+lbfgs":
                e["seconds_to_quality"] = e["seconds_to_target"]
                continue
            curves = e.get("curves") or [e.get("curve") or []]
            stores = e.get("stores") or [e.get("store_seconds", 0.0)] * len(curves)
            hits = [next((t + st for t, v in c if v is not None and v <= goal), math.inf)
                    for c, st in zip(curves, stores)]
            q = median(hits)  # a run that never reached the goal counts as infinitely slow
            e["seconds_to_quality"] = q if math.isfinite(q) else None
            e["quality_samples"] = [h if math.isfinite(h) else None for h in hits]
        self.e2e["quality_goal"] = {"value": goal, "lbfgs_validation_loss": ref}

    def _valid_rows(self) -> int | None:
        rec = self.e2e.get("in-database")
        if not rec:
            return None
        return self.args.rows - int(rec["train_rows"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000, help="rows in the synthetic table")
    ap.add_argument("--features", type=int, default=100, help="features per row")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per in-database run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per path (medians quoted)")
    ap.add_argument("--e2e-epochs", type=int, default=15, help="epochs of the end-to-end runs")
    ap.add_argument("--e2e-repeats", type=int, default=1, help="end-to-end runs per trainer")
    ap.add_argument("--e2e-params", default=E2E_DEFAULT,
                    help="JSON of extra train_glm parameters for the in-database end to end")
    ap.add_argument("--within", type=float, default=0.01,
                    help="end to end: relative distance to the trainer's best validation loss")
    ap.add_argument("--validation", type=float, default=0.1, help="validation fraction (e2e)")
    ap.add_argument("--alpha", type=float, default=1e-4, help="L2 strength for every trainer")
    ap.add_argument("--batch", type=int, default=512, help="packed block and mini-batch size")
    ap.add_argument("--workers", type=int, default=2, help="parallel workers (parallel path)")
    ap.add_argument("--seed", type=int, default=42, help="data and shuffling seed")
    ap.add_argument("--dsn", default=None,
                    help="PostgreSQL DSN (default: $BISMARCK_DSN or the embedded database)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="directory for the JSON, Markdown and PNG results")
    ap.add_argument("--skip", default="", type=lambda s: [p for p in s.split(",") if p],
                    help="comma-separated paths to skip: " + ",".join(PATHS))
    ap.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    ap.add_argument("--drop", action="store_true", help="drop the benchmark table afterwards")
    args = ap.parse_args(argv)
    bad = set(args.skip) - set(PATHS)
    if bad:
        ap.error(f"unknown path(s) in --skip: {', '.join(sorted(bad))}")
    return args


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    """Run the benchmarks, write the results, print the ratios."""
    args = parse_args(argv)
    results = Bench(args).run()
    results["targets"] = report.targets(results)
    paths = report.write(results, args.out, draw_chart=not args.no_chart)
    out(report.summary(results))
    for p in paths:
        out(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
