"""Training a matrix factorisation: check and map the triples, run the epochs, store the model.

:func:`train_mf` is ``bismarck.train_mf`` (inside the server, over ``plpy``) and ``bismarck
train-mf`` (outside, over psycopg); both drive the same session interface as the GLM loop
(:class:`bismarckpy.loop.TrainingSession`) and use its run bookkeeping (claim the name, begin
the run, record epochs, store, end the run, drop the working schema) with tickets.

Preparation (one pass over the source per step, all in SQL): the id columns must be integer
typed and the value numeric; a NULL id or a NULL, NaN or infinite value is refused with the
count of such rows (nothing is skipped silently). The distinct row and column ids, sorted,
become the dense indices 0..n-1 (``rowmap``/``colmap`` in the run's working schema), and the
training triples are copied once as ``(u integer, i integer, v float8)`` in a seeded random
order. The validation share holds out (row id, column id) pairs by a seeded hash.

Each epoch is one query of ``bismarck._mf_epoch``: the triples are cut into blocks of
``block_size`` by a fresh random key (``setseed`` from the run seed and the epoch) and the
blocks are fed in random order; inside a block the triples keep the copy's shuffled order. The
factors stay in the backend between epochs (:mod:`bismarckpy.factorization`): the run puts
them there once (``bismarck._mf_begin``), each epoch passes a 52-byte handle, and the model is
serialised once at the end (``bismarck._mf_export``). Epochs run serially: the handle names
arrays of this backend, which a parallel worker cannot reach.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any

import numpy as np

from . import factorization as mf
from .errors import Diverged, InvalidData, InvalidParameter, UndefinedObject, cancelled_run
from .execution import epoch_seed
from .kinds.mf import validate
from .loop import (
    WORSE_THAN_ZERO,
    EpochRecord,
    TrainingSession,
    TrainResult,
    _clean_interrupted,
    _drop_work,
    _finite,
    _forget_work,
    _Work,
    note_failure,
    record_epoch,
    trivial_verdict,
)
from .packing import settings_for_transaction
from .schedule import Schedule
from .source import BASE_TYPES_SQL, require_arguments

INTEGER_TYPES = ("smallint", "integer", "bigint")
NUMERIC_TYPES = ("smallint", "integer", "bigint", "real", "double precision", "numeric")


def _columns(session: TrainingSession, source: str, names: dict[str, str]
             ) -> tuple[int, str, dict[str, str]]:
    """The source's oid, its name as PostgreSQL prints it, and the types of the named columns;
    clear errors for a missing relation or column, ids that are not integers and a value that
    is not numeric."""
    oid, qualified = session.query(
        "SELECT to_regclass(%s)::oid AS oid, to_regclass(%s)::text AS name",
        [source, source])[0]
    if oid is None:
        raise UndefinedObject(f'relation "{source}" does not exist', sqlstate="42P01")
    cols = dict(session.query(
        "SELECT attname::text AS name, format_type(atttypid, NULL) AS type FROM pg_attribute "
        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", [oid]))
    bases = dict(session.query(BASE_TYPES_SQL, [oid]))  # a domain as the type it is over
    given = list(names.values())
    if len(set(given)) != len(given):
        raise InvalidData("row_col, col_col and value_col must be three different columns",
                          sqlstate="22023", detail=f"Got {given}.")
    for role, name in names.items():
        if not isinstance(name, str) or name not in cols:
            raise UndefinedObject(
                f'column "{name}" does not exist in {qualified}', sqlstate="42703",
                hint="Available columns: " + ", ".join(cols) + ".")
        t, base = cols[name], bases.get(name, cols[name])
        if role in ("row_col", "col_col") and base not in INTEGER_TYPES:
            raise InvalidData(
                f'{role} "{name}" has type {t}', sqlstate="42804",
                detail="Row and column ids must be integers (smallint, integer or bigint).",
                hint="Map other ids to integers first, e.g. with dense_rank() OVER (ORDER BY "
                     "id) in a view.")
        if role == "value_col" and base not in NUMERIC_TYPES:
            raise InvalidData(f'value_col "{name}" has type {t}', sqlstate="42804",
                              hint="The value must be numeric (a rating, a count, ...).")
    return oid, qualified, {k: cols[v] for k, v in names.items()}


def train_mf(session: TrainingSession, *, source: str, row_col: str, col_col: str,
             value_col: str, model_name: str, **options: Any) -> TrainResult:
    """Train a factorisation of ``source``'s triples; store it as the next version of
    ``model_name``. Raises :class:`~bismarckpy.errors.BismarckError` subclasses on bad input;
    nothing is stored then."""
    started = time.monotonic()
    require_arguments("train_mf", source=source, row_col=row_col, col_col=col_col,
                      value_col=value_col)
    averaging = options.pop("averaging", None)
    if averaging not in (None, "global"):
        raise InvalidParameter(
            "matrix factorisation cannot average partitions",
            detail=f"averaging => {averaging!r}: a factorisation's row and column factors live "
                   "in one backend during a run; there are no per-partition models to average.",
            hint="Leave averaging out (or 'global'), and train on the whole table.")
    p = validate(options)
    if not model_name or not isinstance(model_name, str):
        raise InvalidData("model_name must be a non-empty string", sqlstate="22023",
                          hint="Pass model_name => 'my_model'.")
    if not source or not isinstance(source, str):
        raise UndefinedObject("no source table given", sqlstate="42P01")
    names = {"row_col": row_col, "col_col": col_col, "value_col": value_col}
    _, qualified, _types = _columns(session, source, names)
    if p["seed"] is None:
        p["seed"] = int(np.random.default_rng().integers(0, 2**31))
    p["kind"] = "mf"
    session.query("SELECT bismarck._claim_model(bismarck._ticket(), %s) AS claimed", [model_name])
    _clean_interrupted(session)
    run_id, schema = session.query(
        "SELECT r.run_id, r.work_schema "
        "FROM bismarck._begin_run(bismarck._ticket(), %s, %s, %s::jsonb, true) AS r",
        [model_name, qualified, json.dumps(p)])[0]
    session.checkpoint()
    work = _Work(schema)
    handle = None
    try:
        prep = _prepare(session, qualified, names, p, work)
        handle = bytes(session.query("SELECT bismarck._mf_begin(%s) AS h",
                                     [mf.dumps(prep.start)])[0][0])
        result = _epochs(session, prep, p, handle, model_name, run_id, started, qualified,
                         names)
        _drop_work(session, work)
        session.query("SELECT bismarck._end_run(bismarck._ticket(), %s, 'succeeded', "
                      "%s::integer, NULL) AS ended", [run_id, result.version])
        session.checkpoint()
        return result
    except BaseException as exc:
        stopped = cancelled_run(exc)
        session.on_failure(run_id, stopped or exc)
        note_failure(session, run_id, stopped or exc)
        if stopped is not None:
            raise stopped from None  # not the server's error: its CONTEXT may hold states
        raise
    finally:
        if handle is not None:
            # In an aborted transaction this fails: the next run's _mf_begin frees the arrays.
            with contextlib.suppress(Exception):
                session.query("SELECT bismarck._mf_release(%s) AS released", [handle])
        if work.schema is not None:
            _drop_work(session, work, quiet=True)
            _forget_work(session, run_id)
            session.checkpoint()


class _Prep:
    """The working copies and what preparing them found."""

    def __init__(self, train: str, valid: str | None, n_train: int, n_valid: int,
                 start: mf.Factors) -> None:
        self.train, self.valid = train, valid
        self.n_train, self.n_valid = n_train, n_valid
        self.start = start


def _prepare(session: TrainingSession, relation: str, names: dict[str, str], p: dict,
             work: _Work) -> _Prep:
    """Refuse NULL/non-finite triples, build the id maps and the shuffled triple copies."""
    q = session.ident
    src = relation.replace("%", "%%")
    r, c = q(names["row_col"]), q(names["col_col"])
    v = f"({q(names['value_col'])})::float8"
    total, null_ids, bad_values = session.query(
        f"SELECT count(*) AS n, count(*) FILTER (WHERE {r} IS NULL OR {c} IS NULL) AS ids, "
        f"count(*) FILTER (WHERE {q(names['value_col'])} IS NULL OR "
        f"{q(names['value_col'])}::float8 IN ('NaN', 'Infinity', '-Infinity')) AS vals "
        f"FROM {src}")[0]
    if total == 0:
        raise InvalidData(f"{relation} has no rows", hint="Train on a table with triples.")
    if null_ids or bad_values:
        raise InvalidData(
            f"{relation} has rows without a usable triple",
            detail=f"{null_ids} rows have a NULL {names['row_col']} or {names['col_col']}; "
                   f"{bad_values} rows have a NULL, NaN or infinite {names['value_col']}.",
            hint="Filter them out in a view (WHERE ... IS NOT NULL) and train on the view.")
    rowmap, colmap = work.table(session, "rowmap"), work.table(session, "colmap")
    for table, col in ((rowmap, r), (colmap, c)):
        session.query(f"CREATE UNLOGGED TABLE {table} AS SELECT id, "
                      f"(row_number() OVER (ORDER BY id) - 1)::integer AS idx "
                      f"FROM (SELECT DISTINCT ({col})::bigint AS id FROM {src}) AS d")
        session.query(f"CREATE UNIQUE INDEX ON {table} (id)")
    row_ids = np.array(session.query(f"SELECT coalesce(array_agg(id ORDER BY id), '{{}}') "
                                     f"AS ids FROM {rowmap}")[0][0], dtype=np.int64)
    col_ids = np.array(session.query(f"SELECT coalesce(array_agg(id ORDER BY id), '{{}}') "
                                     f"AS ids FROM {colmap}")[0][0], dtype=np.int64)
    mf.check_params(p["rank"], row_ids.size, col_ids.size, alpha=p["alpha"],
                    alpha_bias=p["alpha_bias"], eta0=p["eta0"], init_std=p["init_std"])
    seed = int(p["seed"])
    pair = f"hashtextextended(({r})::text || ',' || ({c})::text, {seed})"
    frac = float(p["validation_fraction"])
    # The hash is uniform over bigint: hold out the pairs below the fraction's quantile.
    cut = int(-2**63 + frac * 2**64) if frac > 0 else None
    holdout = f"({pair} < {cut})" if cut is not None else "false"
    base = (f"SELECT rm.idx AS u, cm.idx AS i, {v} AS v FROM {src} AS s "
            f"JOIN {rowmap} AS rm ON rm.id = s.{r} JOIN {colmap} AS cm ON cm.id = s.{c}")
    train, valid = work.table(session, "train"), work.table(session, "valid")
    with settings_for_transaction(session, {"synchronize_seqscans": "off"}):
        session.query(f"CREATE UNLOGGED TABLE {train} AS {base} WHERE NOT {holdout} "
                      f"ORDER BY hashtextextended(s.ctid::text || {pair}::text, {seed + 1})"
                      if _has_ctid(session, relation) else
                      f"CREATE UNLOGGED TABLE {train} AS {base} WHERE NOT {holdout} "
                      f"ORDER BY hashtextextended({pair}::text || ({v})::text, {seed + 1})")
        if cut is not None:
            session.query(f"CREATE UNLOGGED TABLE {valid} AS {base} WHERE {holdout}")
    n_train, mean = session.query(f"SELECT count(*) AS n, avg(v) AS m FROM {train}")[0]
    n_valid = (session.query(f"SELECT count(*) AS n FROM {valid}")[0][0]
               if cut is not None else 0)
    if n_train == 0:
        raise InvalidData("no training triples left after the validation split",
                          hint="Lower validation_fraction.")
    start = mf.init_factors(row_ids, col_ids, float(mean), p["rank"], seed=seed,
                            init_std=p["init_std"])
    return _Prep(train, valid if cut is not None else None, int(n_train), int(n_valid), start)


def _has_ctid(session: TrainingSession, relation: str) -> bool:
    """Plain and partitioned tables and materialized views have a ctid; views do not."""
    return session.query("SELECT relkind::text IN ('r', 'm', 'p') AS t FROM pg_class "
                         "WHERE oid = to_regclass(%s)", [relation])[0][0]


def _epoch_sql(table: str, block_size: int, n: int) -> str:
    """One epoch over ``table``: random blocks of about ``block_size`` triples, random order."""
    blocks = max(1, math.ceil(n / block_size))
    return ("SELECT bismarck._mf_epoch(b.us, b.is_, b.vs, %s) FROM ("
            "SELECT array_agg(t.u) AS us, array_agg(t.i) AS is_, array_agg(t.v) AS vs "
            f"FROM (SELECT u, i, v, floor(random() * {blocks})::integer AS k FROM {table}) AS t "
            "GROUP BY t.k ORDER BY random()) AS b")


def _advice(p: dict) -> str:
    """What to change when MF training diverges, in train_mf's own options."""
    return (f"Lower eta0 (try {p['eta0'] / 10:g})"
            + (", or use learning_rate => 'invscaling'" if p["learning_rate"] == "constant"
               else "") + ", or raise alpha.")


def _check_not_worse_than_mean(session: TrainingSession, prep: _Prep, p: dict,
                               train_mse: float) -> str | None:
    """Raise :class:`Diverged` when the final training MSE is more than
    :data:`bismarckpy.loop.WORSE_THAN_ZERO` times that of the trivial model (every factor and
    bias 0: each value predicted by the training mean, its MSE the values' variance);
    otherwise return the warning for a run that ended more than
    :data:`bismarckpy.loop.WORSE_THAN_START` times above it (worse than predicting the mean:
    not converged), or None.

    A run that blew up in its first epoch and then stayed high never trips the schedule's
    bound on the loss's growth since epoch 1; this check refuses it before anything is stored.
    One below that bound but above the mean's MSE (``eta0 => 0.4`` held constant on values
    with no structure ends at about twice the variance, its loss settled) is no model of the
    data either.
    """
    if not math.isfinite(train_mse):
        return None
    var = session.query(f"SELECT var_pop(v) AS var FROM {prep.train}")[0][0]
    verdict = trivial_verdict(train_mse, None if var is None else float(var))
    if verdict is None:
        return None
    if verdict == "overshoot":
        return (f"the final training MSE {train_mse:.6g} is above that of predicting the mean "
                f"({float(var):.6g}): the steps overshoot, so the model is worse than the mean "
                f"and is not reported as converged. " + _advice(p))
    raise Diverged(
        "training diverged",
        detail=f"The final training MSE {train_mse:.6g} is more than {WORSE_THAN_ZERO:g} "
               f"times that of predicting the mean ({float(var):.6g}) with learning_rate => "
               f"'{p['learning_rate']}' and eta0 => {p['eta0']:g}.",
        hint=_advice(p) + " No model was stored.")


def _epochs(session: TrainingSession, prep: _Prep, p: dict, handle: bytes, model_name: str,
            run_id: int, started: float, relation: str, names: dict[str, str]) -> TrainResult:
    """Run the epochs, record them, export and store the model."""
    sched = Schedule(p["learning_rate"], p["eta0"], p["tol"], p["n_iter_no_change"],
                     p["power_t"], advice=_advice(p))
    history: list[EpochRecord] = []
    train_sql = _epoch_sql(prep.train, p["block_size"], prep.n_train)
    valid_sql = None
    if prep.valid:  # blocks of the validation copy: a plain scan, cut by row number
        valid_sql = (f"SELECT bismarck._mf_epoch(b.us, b.is_, b.vs, %s) FROM (SELECT "
                     f"array_agg(t.u) AS us, array_agg(t.i) AS is_, array_agg(t.v) AS vs "
                     f"FROM (SELECT u, i, v, (row_number() OVER ()) / "
                     f"{int(p['block_size'])} AS k FROM {prep.valid}) AS t GROUP BY t.k) AS b")
    converged = False
    train_mse = valid_mse = float("nan")
    serial = {"max_parallel_workers_per_gather": "0"}
    for epoch in range(1, p["max_epochs"] + 1):
        t0 = time.monotonic()
        eta = sched.eta
        init = mf.init_state(handle, mf.Hyper(eta, p["alpha"], p["alpha_bias"],
                                              p["batch_size"]))
        session.query("SELECT setseed(%s) AS s", [epoch_seed(p["seed"], epoch)])
        with settings_for_transaction(session, serial):
            stats = mf.read_stats(session.query(train_sql, [init])[0][0])
            train_mse = stats.mse
            valid_mse = None
            if valid_sql:
                check = mf.init_state(handle, mf.Hyper(0.0, 0.0, 0.0, -1))
                valid_mse = mf.read_stats(session.query(valid_sql, [check])[0][0]).mse
        rec = EpochRecord(epoch, train_mse, valid_mse, eta, stats.rows,
                          time.monotonic() - t0, p["max_epochs"], 0)
        history.append(rec)
        record_epoch(session, run_id, rec)
        session.checkpoint()
        session.on_epoch(rec)
        decision = sched.after_epoch(epoch, train_mse,
                                     valid_mse if valid_mse is not None else train_mse)
        if decision.stop:
            converged = decision.converged
            break
    notes = []
    if not converged and p["tol"] is not None:
        notes.append(f"train_mf stopped at max_epochs = {p['max_epochs']} without converging "
                     "(tol); raise max_epochs or tol")
    overshoot = _check_not_worse_than_mean(session, prep, p, train_mse)
    if overshoot is not None:
        converged = False
        notes.append(overshoot)
    blob = bytes(session.query("SELECT bismarck._mf_export(%s) AS m", [handle])[0][0])
    model = mf.loads(blob)
    if not (np.isfinite(model.P).all() and np.isfinite(model.Q).all()):
        raise Diverged("training diverged: the factors are not finite",
                       hint=_advice(p) + " No model was stored.")
    seconds = time.monotonic() - started
    metrics = {"train_loss": train_mse, "train_rmse": math.sqrt(train_mse),
               "validation_loss": valid_mse,
               "validation_rmse": math.sqrt(valid_mse) if valid_mse is not None else None,
               "epochs": len(history), "converged": converged, "rows": prep.n_train,
               "validation_rows": prep.n_valid, "n_rows": int(model.row_ids.size),
               "n_cols": int(model.col_ids.size), "mean": model.mean, "seconds": seconds}
    for note in notes:
        session.warn(note)
    version = store_factorization(session, model_name, relation, names, p, model, blob,
                                  metrics)
    return TrainResult(model_name=model_name, version=version, epochs=len(history),
                       converged=converged, train_loss=train_mse, validation_loss=valid_mse,
                       seconds=seconds, rows=prep.n_train, skipped=0, history=history,
                       warnings=notes)


def store_factorization(session: TrainingSession, model_name: str, relation: str,
                        names: dict[str, str], p: dict, model: mf.Factors, blob: bytes,
                        metrics: dict) -> int:
    """Store the model as the next version of ``model_name`` through the registry's one
    bookkeeping function ``bismarck._store_model``; returns the version.

    The row is of kind ``'mf'``: ``stored`` holds the rank, mean and shape (as
    :func:`bismarckpy.kinds.mf.export`), ``state`` the ids, biases and factors
    (:func:`bismarckpy.factorization.dumps`); ``label`` is the value column, ``features`` the
    two id columns, ``intercept`` the mean, ``loss`` squared; ``coef`` and ``classes`` are NULL.
    """
    stored = {"rank": int(model.rank), "mean": float(model.mean),
              "n_rows": int(model.row_ids.size), "n_cols": int(model.col_ids.size)}
    return int(session.query(
        "SELECT bismarck._store_model(bismarck._ticket(), %s, %s, %s, 'squared', %s::text[], "
        "false, NULL::float8[], %s::float8, NULL::float8[], %s::jsonb, %s::jsonb, '{}'::jsonb, "
        "'mf', %s::jsonb, %s::bytea)",
        [model_name, relation, names["value_col"], [names["row_col"], names["col_col"]],
         float(model.mean), json.dumps(_finite(p)), json.dumps(_finite(metrics)),
         json.dumps(_finite(stored)), blob])[0][0])
