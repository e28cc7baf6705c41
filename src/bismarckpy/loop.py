"""The training loop, written once: runs inside the server (over plpy) and outside (over psycopg).

It validates, prepares a shuffled working copy, runs one aggregate query per epoch, applies the
schedule, records per-epoch history and finally stores a new model version. It talks to the
database only through a :class:`TrainingSession`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from . import glm, penalties
from .errors import InvalidData, InvalidParameter
from .losses import CLASSIFIERS
from .pack import DTYPE_CODES
from .params import validate
from .schedule import Schedule
from .source import Source, resolve

MAX_SEED = 2**62


class TrainingSession(Protocol):
    """The database side of the loop; ``checkpoint`` commits where the caller allows it."""

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """Run SQL with ``%s`` placeholders; return all rows."""

    def ident(self, name: str) -> str:
        """Quote an identifier."""

    def checkpoint(self) -> None:
        """Make the history so far visible to other sessions (commit), if possible."""

    def on_epoch(self, record: EpochRecord) -> None:
        """Report progress of one finished epoch."""

    def on_failure(self, run_id: int, exc: BaseException) -> None:
        """Record that the run failed (outside: roll back, mark the run, commit)."""


@dataclass
class EpochRecord:
    """One row of ``bismarck.training_history``."""

    epoch: int
    train_loss: float
    validation_loss: float | None
    learning_rate: float
    rows: int
    seconds: float
    max_epochs: int = 0


@dataclass
class TrainResult:
    """What ``train_glm`` returns."""

    model_name: str
    version: int
    epochs: int
    converged: bool
    train_loss: float
    validation_loss: float | None
    seconds: float
    rows: int = 0
    skipped: int = 0
    history: list[EpochRecord] = field(default_factory=list)


@dataclass
class _Prepared:
    """The working tables and the facts learned while preparing them."""

    train: str
    valid: str | None
    d: int
    n_train: int
    n_valid: int
    n_total: int
    skipped: int
    classes: list[float] | None
    mu: np.ndarray | None
    sd: np.ndarray | None
    y_mean: float
    y_sd: float
    packed: bool = False
    itemsize: int = 8


def train_glm(session: TrainingSession, *, source: str, label: str,
              features: Sequence[str] | str, model_name: str,
              **options: Any) -> TrainResult:
    """Train a GLM on ``source`` and store it as the next version of ``model_name``."""
    started = time.monotonic()
    p = validate(options)
    if not model_name or not isinstance(model_name, str):
        raise InvalidData("model_name must be a non-empty string", sqlstate="22023",
                          hint="Pass model_name => 'my_model'.")
    src = resolve(session, source, label, features)
    if p["packed"] is None:
        p["packed"] = p["shuffle"] == "once"
    elif p["packed"] and p["shuffle"] != "once":
        raise InvalidParameter(
            "packed => true needs shuffle => 'once'",
            detail="A packed copy is one shuffle, scanned in the same order every epoch.",
            hint="Use shuffle => 'once' (the default), or packed => false to reshuffle rows.")
    if p["seed"] is None:
        p["seed"] = int(np.random.default_rng().integers(0, 2**31))
    seed = p["seed"]
    _clean_interrupted(session)
    run_id = session.query(
        "INSERT INTO bismarck._training_run (model_name, source, params) "
        "VALUES (%s, %s, %s::jsonb) RETURNING run_id",
        [model_name, src.name, json.dumps(p)])[0][0]
    session.checkpoint()
    prepared = None
    try:
        prepared = _prepare(session, src, p, seed, run_id)
        result = _epochs(session, src, p, prepared, model_name, run_id, started)
        _drop_work(session, prepared)
        prepared = None
        session.query("UPDATE bismarck._training_run SET status = 'succeeded', version = %s, "
                      "finished_at = now() WHERE run_id = %s", [result.version, run_id])
        session.checkpoint()
        return result
    except BaseException as exc:
        session.on_failure(run_id, exc)
        raise
    finally:
        if prepared is not None:
            _drop_work(session, prepared, quiet=True)
            session.checkpoint()


def _prepare(session: TrainingSession, src: Source, p: dict, seed: int,
             run_id: int) -> _Prepared:
    """Count and check rows, encode labels, materialise the (shuffled) train/validation copies."""
    n_total, n_valid_rows = session.query(
        f"SELECT count(*) AS n, count(*) FILTER (WHERE {src.valid_expr}) AS ok "
        f"FROM {src.relation}")[0]
    if n_total == 0:
        raise InvalidData(f"table {src.name} is empty",
                          hint="Load rows into the table before training.")
    if src.array_feature:
        col = session.ident(src.features[0])
        nd = session.query(f"SELECT count(*) AS n FROM {src.relation} "
                           f"WHERE array_ndims({col}) > 1")[0][0]
        if nd:
            raise InvalidData(
                f'feature column "{src.features[0]}" holds multi-dimensional arrays',
                detail=f"{nd} rows have arrays of more than one dimension.",
                hint="Flatten them to one dimension (for example in a view) and train again.")
    if n_valid_rows == 0:
        raise InvalidData(
            f"no usable rows in {src.name}",
            detail=f"All {n_total} rows have a NULL, NaN or infinite label or feature.",
            hint="Fill or filter the missing values (for example in a view) and train again.")
    lo, hi = session.query(
        f"SELECT min(cardinality({src.x_expr})) AS lo, max(cardinality({src.x_expr})) AS hi "
        f"FROM {src.relation} WHERE {src.valid_expr}")[0]
    if lo != hi or lo == 0:
        raise InvalidData(
            "feature arrays have different lengths",
            detail=f"Lengths range from {lo} to {hi} in {src.name}.",
            hint="Every row's feature array must have the same number of elements.")
    d = int(lo)
    y_expr, classes = _encode_label(session, src, p["loss"])
    fraction = p["validation_fraction"]
    holdout = (f"(hashtextextended({src.row_key}, {int(seed)}) & 1023) < "
               f"{int(round(fraction * 1024))}")
    order = {"once": f"ORDER BY hashtextextended({src.row_key}, {int(seed) + 1})",
             "always": "", "never": ""}[p["shuffle"]]
    train = f"bismarck._train_{int(run_id)}"
    valid = f"bismarck._valid_{int(run_id)}" if fraction > 0 else None
    y_mean, y_sd = 0.0, 1.0
    if p["standardize"] and p["loss"] == "squared":
        y_mean, y_sd = session.query(
            f"SELECT avg({y_expr}) AS m, coalesce(stddev_pop({y_expr}), 0) AS s "
            f"FROM {src.relation} AS s WHERE {src.valid_expr} AND NOT ({holdout})")[0]
        y_mean = float(y_mean or 0.0)
        y_sd = float(y_sd) if y_sd and y_sd > 0 else 1.0
        y_expr = f"(({y_expr}) - {y_mean!r}) / {y_sd!r}"
    # A synchronized scan may start mid-table: keep 'never' in table order.
    session.query("SELECT set_config('synchronize_seqscans', 'off', true) AS off")
    base = (f"SELECT {src.x_expr} AS x, {y_expr} AS y FROM {src.relation} AS s "
            f"WHERE {src.valid_expr}")
    itemsize = DTYPE_CODES[p["dtype"]] if p["packed"] else 8
    if p["packed"]:
        hashed = (f"SELECT {src.x_expr} AS x, {y_expr} AS y, "
                  f"hashtextextended({src.row_key}, {int(seed) + 3}) AS h "
                  f"FROM {src.relation} AS s WHERE {src.valid_expr}")
        expected = n_valid_rows * (1.0 - fraction)
        n_train = _pack(session, f"{hashed} AND NOT ({holdout})", train, d, expected, p, seed)
        n_valid = (_pack(session, f"{hashed} AND ({holdout})", valid, d,
                         n_valid_rows * fraction, p, seed + 5) if valid else 0)
    else:
        session.query(f"CREATE UNLOGGED TABLE {train} AS {base} AND NOT ({holdout}) {order}")
        if valid:
            session.query(f"CREATE UNLOGGED TABLE {valid} AS {base} AND ({holdout})")
        n_train = session.query(f"SELECT count(*) AS n FROM {train}")[0][0]
        n_valid = session.query(f"SELECT count(*) AS n FROM {valid}")[0][0] if valid else 0
    if n_train == 0:
        raise InvalidData("no training rows left after the validation split",
                          detail=f"{n_valid} usable rows all went to validation.",
                          hint="Lower validation_fraction or add rows.")
    mu = sd = None
    if p["standardize"]:
        moments = (f"SELECT bismarck._moments_packed(data, {d}, {itemsize}) FROM {train}"
                   if p["packed"] else f"SELECT bismarck._moments(x) FROM {train}")
        mu, sd = _moments(session.query(moments)[0][0])
    return _Prepared(train=train, valid=valid, d=d, n_train=n_train, n_valid=n_valid,
                     n_total=n_total, skipped=n_total - n_valid_rows, classes=classes,
                     mu=mu, sd=sd, y_mean=float(y_mean), y_sd=float(y_sd),
                     packed=bool(p["packed"]), itemsize=itemsize)


HASH_AGGREGATE_BYTES = 256 * 2**20  # above this, pack with a sort: bounded backend memory


def _pack(session: TrainingSession, rows_sql: str, table: str, d: int, expected_rows: float,
          p: dict, seed: int) -> int:
    """Write ``rows_sql`` (columns x, y, h: a row hash) into ``table`` as packed blocks.

    Each row goes to the block its seeded hash picks, so every block is a uniformly random
    subset, without a global sort. Small inputs use a hash aggregate; large ones sort on the
    block number so the backend holds one block at a time. Returns the number of rows packed.
    """
    blocks = max(1, math.ceil(expected_rows / p["block_size"]))
    size = expected_rows * (8 * d + 40)
    if size <= HASH_AGGREGATE_BYTES:
        settings = {"work_mem": f"{max(64, int(4 * size / 2**20))}MB", "enable_sort": "off"}
    else:
        settings = {"work_mem": "256MB", "enable_hashagg": "off"}
    session.query(f"CREATE UNLOGGED TABLE {table} (block integer, n integer, data bytea)")
    session.query(f"ALTER TABLE {table} ALTER COLUMN data SET STORAGE EXTERNAL")
    with _settings(session, settings):
        session.query(
            f"INSERT INTO {table} SELECT q.blk, count(*), bismarck._pack_block("
            "string_agg(bismarck._float8_array_bytes(q.x), ''::bytea), "
            "bismarck._float8_array_bytes(array_agg(q.y)), %s::int, %s::text, %s::int8 + q.blk) "
            "FROM (SELECT r.x, r.y, ((r.h & 9223372036854775807) %% %s)::int AS blk "
            f"FROM ({rows_sql}) AS r) AS q GROUP BY q.blk",
            [d, p["dtype"], int(seed), blocks])
    return int(session.query(f"SELECT coalesce(sum(n), 0) AS n FROM {table}")[0][0])


@contextmanager
def _settings(session: TrainingSession, values: dict[str, str]) -> Iterator[None]:
    """Set server settings for this transaction and put the previous values back after."""
    names = list(values)
    before = session.query("SELECT " + ", ".join(
        f"current_setting(%s) AS s{i}" for i in range(len(names))), names)[0]
    for name, value in values.items():
        session.query("SELECT set_config(%s, %s, true) AS v", [name, value])
    try:
        yield
    finally:
        for name, value in zip(names, before):
            session.query("SELECT set_config(%s, %s, true) AS v", [name, value])


def _encode_label(session: TrainingSession, src: Source, loss: str
                  ) -> tuple[str, list[float] | None]:
    """The label expression as the loss expects it, and the two classes of a classifier."""
    assert src.label_expr is not None
    if loss not in CLASSIFIERS:
        return src.label_expr, None
    values = [r[0] for r in session.query(
        f"SELECT DISTINCT {src.label_expr} FROM {src.relation} WHERE {src.valid_expr} "
        "ORDER BY 1 LIMIT 3")]
    shown = ", ".join(f"{v:g}" for v in values)
    if len(values) != 2 or values not in ([0.0, 1.0], [-1.0, 1.0]):
        raise InvalidData(
            f'label "{src.label}" is not binary',
            detail=f"loss => '{loss}' needs two classes coded 0/1, -1/+1 or false/true; "
                   f"found {shown}{' …' if len(values) > 2 else ''}.",
            hint="Recode the label in a view (for example (label = 'yes')::int), or use "
                 "loss => 'squared' for a numeric target.")
    pos = values[1]
    if loss == "logistic":
        return f"({src.label_expr} = {pos:g})::int::float8", values
    return f"CASE WHEN {src.label_expr} = {pos:g} THEN 1.0 ELSE -1.0 END", values


def _moments(state: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Decode the moments aggregate: means and standard deviations (zeros become ones)."""
    from .moments import decode

    _, mean, var = decode(state)
    sd = np.sqrt(np.maximum(var, 0.0))
    sd[sd == 0] = 1.0
    return mean, sd


def _epochs(session: TrainingSession, src: Source, p: dict, prep: _Prepared, model_name: str,
            run_id: int, started: float) -> TrainResult:
    """Run epochs until convergence, divergence or max_epochs; store the model."""
    sched = Schedule(p["learning_rate"], p["eta0"], p["tol"], p["n_iter_no_change"])
    l1, l2 = penalties.mix(p["penalty"], p["l1_ratio"])
    alpha = p["alpha"] if p["penalty"] != "none" else 0.0
    w = np.zeros(prep.d)
    b = 0.0
    t = 0.0
    previous_start = (w, b, t)  # where the last accepted epoch began (bold_driver undoes to it)
    loss_scale = prep.y_sd ** 2  # squared loss is fitted on y / y_sd
    train_sql = _epoch_sql(prep.train, p["shuffle"], prep.packed)
    valid_sql = _epoch_sql(prep.valid, "never", prep.packed) if prep.valid else None
    history: list[EpochRecord] = []
    converged = False
    train_loss = math.nan
    valid_loss: float | None = None
    epoch = 0
    for epoch in range(1, p["max_epochs"] + 1):
        t0 = time.monotonic()
        init = glm.initialize(prep.d, loss=p["loss"], alpha=alpha, l1=l1, l2=l2, eta=sched.eta,
                              invscaling=sched.per_step, power_t=p["power_t"], t=t,
                              batch_size=p["batch_size"], fit_intercept=p["fit_intercept"],
                              w=w, b=b, mu=prep.mu, sd=prep.sd, itemsize=prep.itemsize)
        if p["shuffle"] == "always":
            session.query("SELECT setseed(%s)", [_epoch_seed(p["seed"], epoch)])
        if p["parallel"] is not None:
            _set_parallel(session, p["parallel"])
        state = session.query(train_sql, [init])[0][0]
        m = glm.decode(state)
        train_loss = m.mean_loss * loss_scale
        if valid_sql:
            ev = glm.initialize(prep.d, loss=p["loss"], batch_size=glm.EVALUATE, w=m.w, b=m.b,
                                mu=prep.mu, sd=prep.sd, itemsize=prep.itemsize)
            vm = glm.decode(session.query(valid_sql, [ev])[0][0])
            valid_loss = vm.data_loss * loss_scale
        rate = sched.eta
        decision = sched.after_epoch(epoch, train_loss,
                                     valid_loss if valid_loss is not None else train_loss)
        # An epoch's loss is measured along the way from its starting model, so a worse loss
        # condemns the step that produced that start: bold_driver goes back one more epoch.
        if decision.accept:
            previous_start = (w, b, t)
            w, b, t = m.w, m.b, m.t
        else:
            w, b, t = previous_start
        rec = EpochRecord(epoch, train_loss, valid_loss, rate, m.rows, time.monotonic() - t0,
                          p["max_epochs"])
        history.append(rec)
        session.query(
            "INSERT INTO bismarck._training_epoch (run_id, epoch, train_loss, validation_loss, "
            "learning_rate, rows, seconds) VALUES (%s, %s, %s::float8, %s::float8, %s::float8, %s, "
            "%s::float8)",
            [run_id, epoch, rec.train_loss, rec.validation_loss, rec.learning_rate, rec.rows,
             rec.seconds])
        session.checkpoint()
        session.on_epoch(rec)
        if decision.stop:
            converged = decision.converged
            break
    if prep.mu is not None and prep.sd is not None:
        coef, intercept = glm.unstandardize(w, b, prep.mu, prep.sd, prep.y_mean, prep.y_sd)
    else:
        coef, intercept = w, b
    seconds = time.monotonic() - started
    metrics = {"train_loss": train_loss, "validation_loss": valid_loss, "epochs": epoch,
               "converged": converged, "rows": prep.n_train, "validation_rows": prep.n_valid,
               "skipped_rows": prep.skipped, "seconds": seconds}
    fitted = {"mu": None if prep.mu is None else prep.mu.tolist(),
              "sd": None if prep.sd is None else prep.sd.tolist(),
              "y_mean": prep.y_mean, "y_sd": prep.y_sd, "coef_standardized": w.tolist(),
              "intercept_standardized": b, "t": t}
    version = session.query(
        "SELECT bismarck._store_model(%s, %s, %s, %s, %s::text[], %s, %s::float8[], %s, "
        "%s::float8[], %s::jsonb, "
        "%s::jsonb, %s::jsonb)",
        [model_name, src.name, src.label, p["loss"], list(src.features),
         src.array_feature, [float(c) for c in coef], float(intercept),
         prep.classes, json.dumps(p), json.dumps(_finite(metrics)),
         json.dumps(_finite(fitted))])[0][0]
    return TrainResult(model_name=model_name, version=int(version), epochs=epoch,
                       converged=converged, train_loss=train_loss, validation_loss=valid_loss,
                       seconds=seconds, rows=prep.n_train, skipped=prep.skipped,
                       history=history)


def _epoch_sql(table: str, shuffle: str, packed: bool) -> str:
    """One epoch: the GLM aggregate over the working table (a shuffled scan for 'always')."""
    if packed:
        return f"SELECT bismarck._glm_epoch_packed(data, %s) FROM {table}"
    if shuffle == "always":
        return (f"SELECT bismarck._glm_epoch(x, y, %s) FROM "
                f"(SELECT x, y FROM {table} ORDER BY random()) AS shuffled")
    return f"SELECT bismarck._glm_epoch(x, y, %s) FROM {table}"


def _set_parallel(session: TrainingSession, workers: int) -> None:
    """Ask for ``workers`` parallel workers in this transaction (0: a serial plan).

    Parallel costs are lowered so the planner picks a Partial Aggregate even for small tables;
    each worker's partial state is merged by the aggregate's combine function.
    """
    session.query(
        "SELECT set_config('max_parallel_workers_per_gather', %s, true) AS a, "
        "set_config('parallel_setup_cost', '0', true) AS b, "
        "set_config('parallel_tuple_cost', '0', true) AS c, "
        "set_config('min_parallel_table_scan_size', '0', true) AS d",
        [str(int(workers))])


def _epoch_seed(seed: int | None, epoch: int) -> float:
    """A setseed() argument in [-1, 1] derived from the run seed and the epoch."""
    rng = np.random.default_rng([int(seed or 0) & (2**63 - 1), epoch])
    return float(rng.uniform(-1.0, 1.0))


def _drop_work(session: TrainingSession, prep: _Prepared, *, quiet: bool = False) -> None:
    """Drop the working copies; when ``quiet``, ignore errors (aborted transaction, gone)."""
    for table in (prep.train, prep.valid):
        if not table:
            continue
        try:
            session.query(f"DROP TABLE IF EXISTS {table}")
        except Exception:
            if not quiet:
                raise


def _clean_interrupted(session: TrainingSession) -> None:
    """Drop the working copies of runs whose backend is gone (killed clients, crashes)."""
    stale = session.query(
        "UPDATE bismarck._training_run SET status = 'interrupted', finished_at = now() "
        "WHERE status = 'running' AND NOT EXISTS "
        "(SELECT 1 FROM pg_stat_activity a WHERE a.pid = backend_pid) RETURNING run_id")
    for (run_id,) in stale:
        for kind in ("train", "valid"):
            session.query(f"DROP TABLE IF EXISTS bismarck._{kind}_{int(run_id)}")
    if stale:
        session.checkpoint()


def _finite(d: dict) -> dict:
    """JSON cannot hold NaN/inf: store them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}


def result_row(r: TrainResult) -> dict[str, Any]:
    """The SQL-facing columns of a result."""
    d = asdict(r)
    d.pop("history")
    return d
