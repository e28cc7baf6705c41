"""The training loop, written once: runs inside the server (over plpy) and outside (over psycopg).

It validates, prepares a shuffled working copy, runs one aggregate query per epoch, applies the
schedule, records per-epoch history and finally stores a new model version. It talks to the
database only through a :class:`TrainingSession`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from . import blockscan, clustering, execution, kinds, losses, penalties
from .errors import BismarckError, Diverged, InvalidData, InvalidParameter, cancelled_run, counted
from .exact import LOSS_CODES as EXACT_LOSSES
from .kinds import glm
from .kinds.glm import class_weights
from .losses import CLASSIFIERS
from .moments import Moments
from .moments import decode as moments_decode
from .moments import select as moments_select
from .pack import DTYPE_CODES, parse_block, stale_format
from .pack import MAGIC as PACK_MAGIC
from .packing import (
    MAX_ABS,
    SQUARE_SAFE,
    Checked,
    PackedTable,
    check_casts,
    check_ranges,
    check_rows,
    create_packed,
    judge,
    label_values,
    pack_into,
    registered,
    settings_for_transaction,
    survey_table,
)
from .params import EXACT_SOLVERS, refuse_unused, validate
from .schedule import (
    ROW_ETA0,
    SAMPLE_ROWS,
    Schedule,
    auto_batch_size,
    auto_eta0,
    default_power_t,
    expected_epochs,
    prefer_blocks,
)
from .separation import data_separated
from .source import (
    Source,
    distinct_labels,
    exact_number,
    inexact_classes,
    label_among,
    require_arguments,
    resolve,
    with_classes,
)

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

    def warn(self, message: str) -> None:
        """Tell the user about a model that was stored but needs attention (a WARNING)."""


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
    workers: int = 0  # parallel workers (or partitions) whose models were merged (0: serial)
    detail: dict[str, Any] | None = None  # per-partition rows and losses (averaging partition)
    #: The epoch's model in its stored form (:class:`bismarckpy.kinds.Stored`), exported on
    #: demand; not recorded in the history. For callers that score every epoch's model on rows
    #: of their own (``benchmarks/compare_averaging.py``). None where a loop does not offer it.
    snapshot: Callable[[], kinds.Stored] | None = field(default=None, repr=False,
                                                         compare=False)


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
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Prepared:
    """Where the epochs read (FROM clauses) and the facts learned while preparing them."""

    train: str
    valid: str | None
    d: int
    n_train: int
    n_valid: int
    skipped: int
    classes: list[float] | None
    mu: np.ndarray | None
    sd: np.ndarray | None
    y_mean: float
    y_sd: float
    packed: bool = False
    itemsize: int = 8
    y_coding: tuple[int, float, float, float] | None = None
    # Rows of each packed block an epoch reads: SQL for the aggregate's first and stop
    # arguments (a registered packed table holds the validation rows at the head of a block).
    train_rows: str = "0, NULL"
    valid_rows: str = "0, NULL"
    constant: list[int] = field(default_factory=list)  # constant (zero-variance) features
    n_pos: int = 0  # training rows of the positive class (classifiers)
    notes: list[str] = field(default_factory=list)  # warnings for the caller
    # The epochs read the rows in an order that follows the label (bismarckpy.clustering:
    # 'never', or block shuffles the averaging makes harmless): the loss measured along the
    # way tracks each run of one class, so the stored model's is measured instead.
    in_label_order: bool = False
    # steps sized for a column far larger than others (standardize => false): not converged,
    # and the advice that leads every failure's or warning's hint (:func:`_note_unscaled`)
    unscaled: str | None = None
    # averaging => 'partition': the source's partitions (partitioned.Layout; train and valid
    # are then FROM items with a ``part`` column) and the column ordering a partition's rows.
    layout: Any = None
    order: str | None = None
    # shuffle => 'blocks': the scans of the table's page groups that a training epoch and a
    # validation pass read, instead of FROM clauses of copies.
    train_scan: execution.Scan | None = None
    valid_scan: execution.Scan | None = None
    # Runs that read the source in place (shuffle => 'blocks', averaging => 'partition'): a
    # check, given the session, that the source still has the row versions it had before it
    # was first read (blockscan.check_unwritten, partitioned.check_unwritten); it raises
    # InvalidData otherwise, and runs before the model is stored.
    unwritten: Callable[[Any], None] | None = None
    # the same run: a check before each later epoch that the table's columns are the ones
    # the run first read (blockscan.check_columns: a rename and a rename back between the
    # start and the end would escape the check at the end)
    columns_unchanged: Callable[[Any], None] | None = None
    # blocks prepared from a sample: the table's file and columns when the sample was read
    # (blockscan.storage), part of the fingerprint the run checks before storing the model
    storage: tuple[int | None, str | None] | None = None
    # The features' centre and scale even when the model is not standardised (blocks: read
    # off the preparation's moments; the separation check needs them).
    scaling: tuple[np.ndarray, np.ndarray] | None = None
    # blocks: a sample of usable rows' features (_float8_array_bytes), LIMIT %s (no copy to
    # take the first rows of)
    sample_sql: str | None = None
    # A label of class values that are not numbers: those values, in class order (the
    # classes are their indexes); class_weight names them.
    class_labels: list[str] | None = None
    # blocks prepared from a sample: runs the first epoch from the kind's init with the checks
    # and counts of every row folded in (:func:`_first_epoch`); its finalized state. The
    # facts above that came from the sample (counts, scans) are exact once it has run.
    first: Any = None
    # Squared loss: the raw label's mean and population standard deviation on the training
    # rows, when preparation measured them (the best constant model's loss is sd²/2; see
    # :func:`trivial_glm_loss`); ``y_stats_exact`` False when they come from a sample of the
    # table. None: not measured (an unstandardised partition's ``y`` column is read for them
    # if needed, scaled by ``y_max_abs``, the largest label magnitude of the checks).
    y_stats: tuple[float, float] | None = None
    y_stats_exact: bool = True
    y_max_abs: float = 0.0


def train_glm(session: TrainingSession, *, source: str, label: str,
              features: Sequence[str] | str, model_name: str,
              **options: Any) -> TrainResult:
    """Train a GLM on ``source`` and store it as the next version of ``model_name``."""
    return train(session, source=source, label=label, features=features,
                 model_name=model_name, kind="glm", **options)


def train(session: TrainingSession, *, source: str, label: str, features: Sequence[str] | str,
          model_name: str, kind: str = "glm", **options: Any) -> TrainResult:
    """Train a model of ``kind`` (:mod:`bismarckpy.kinds`) on ``source``; store it as the next
    version of ``model_name``. ``options`` are the kind's parameters (its own and the common)."""
    started = time.monotonic()
    model_kind = kinds.get(kind)
    where = model_kind.sql_train.rpartition(".")[2] or kind
    require_arguments(where, source=source, label=label, features=features)
    if (kind != "glm" and options.get("loss") is None and model_kind.losses
            and any(q.name == "loss" for q in model_kind.params)):
        # A kind named for its loss (--kind softmax) fits that loss, not the GLM's default.
        options = {**options, "loss": model_kind.losses[0]}
    p = validate(options, where=where, params=model_kind.params)
    loss = losses.REGISTRY.get(p.get("loss", ""))
    if loss is not None and loss.kind != model_kind.name and kind != "glm":
        raise InvalidParameter(
            f"loss '{loss.name}' is not a loss of kind {kind}",
            detail=f"Models of kind {kind} fit loss "
                   + " or ".join(f"'{n}'" for n in model_kind.losses) + ".",
            hint=f"Drop the loss (kind {kind} sets it), or train kind glm with loss => "
                 f"'{loss.name}'.")
    if loss is not None and loss.kind != model_kind.name:  # e.g. loss 'softmax' of train_glm
        ours = {q.name for q in model_kind.params}  # others: validate's "unknown parameter"
        refuse_unused({k: v for k, v in options.items() if k in ours},
                      kinds.get(loss.kind).params, loss.name, loss.kind)
        model_kind = kinds.get(loss.kind)
        p = validate(options, where=where, params=model_kind.params)
    if model_kind.check_options is not None:
        model_kind.check_options(p)
    if not model_kind.packed:
        if p.get("packed"):
            raise InvalidParameter(
                f"packed => true is not supported with {model_kind.name} models",
                detail=f"A {model_kind.name} model trains on a row copy.",
                hint="Leave packed unset (or false).")
        if p.get("shuffle") == "blocks":  # page groups reach the kind as blocks
            raise InvalidParameter(
                f"shuffle => 'blocks' is not supported with {model_kind.name} models",
                detail=f"A {model_kind.name} model trains on a row copy; 'blocks' hands the "
                       "rows of page groups to the kind's block transition.",
                hint="Use shuffle => 'once' (the default) or 'always'.")
        p["packed"] = False
    p.setdefault("solver", "sgd")
    # A kind may name the loop's settings after its own parameters (the MLP's loss follows its
    # task, its eta0 is learning_rate_init); they are stored with the run's parameters.
    loop_params = model_kind.extra.get("loop_params")
    if loop_params is not None:
        p.update(loop_params(p))
    if p["solver"] in EXACT_SOLVERS:
        from . import exact_loop

        refuse_unused(options, model_kind.params, p["loss"], model_kind.name,
                      solver=p["solver"])
        exact_loop.check_options(p)
    if not model_name or not isinstance(model_name, str):
        raise InvalidData("model_name must be a non-empty string", sqlstate="22023",
                          hint="Pass model_name => 'my_model'.")
    table = registered(session, source)
    if table and not model_kind.packed:
        raise InvalidParameter(
            f"{table.name} is a packed table, which {model_kind.name} models cannot train on",
            detail=f"A {model_kind.name} model trains on a row copy of a table or view.",
            hint=f"Train on its source table {table.source}.")
    src = None if table else resolve(session, source, label, features, categorical=True)
    if src is not None and src.categorical:
        src = _code_classes(session, src, p["loss"])
    if table:
        _check_packed_columns(table, label, features)
        if p["solver"] in EXACT_SOLVERS:
            from . import exact_loop

            exact_loop.check_packed_table(table, p)
    if p["averaging"] == "partition":
        from . import partitioned

        partitioned.check_options(p, table)
    auto_shuffle = p["shuffle"] is None
    if auto_shuffle:
        p["shuffle"] = _choose_shuffle(session, src, p, model_kind.name)
    if p["shuffle"] == "blocks":
        if p["solver"] in EXACT_SOLVERS:
            raise InvalidParameter(
                f"shuffle => 'blocks' needs solver => 'sgd' (not '{p['solver']}')",
                detail="The exact solvers read every row in each pass; the order does not "
                       "matter to them.",
                hint="Drop shuffle, or use solver => 'sgd'.")
        if src is not None:
            blockscan.refuse_unless_heap(src)
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
    # Refused at once (never after the epochs) when another role owns the name or another
    # uncommitted transaction trains it.
    session.query("SELECT bismarck._claim_model(bismarck._ticket(), %s) AS claimed", [model_name])
    _clean_interrupted(session)
    # Working copies go to a new schema of the caller's own, out of other users' reach; the
    # run's row (written only by bismarck's bookkeeping functions) records it for clean-up.
    run_id, schema = session.query(
        "SELECT r.run_id, r.work_schema "
        "FROM bismarck._begin_run(bismarck._ticket(), %s, %s, %s::jsonb, %s) AS r",
        [model_name, (table or src).name, json.dumps(p), table is None])[0]
    session.checkpoint()
    work = _Work(schema)
    try:
        if p["averaging"] == "partition":
            from . import partitioned

            prepared = partitioned.prepare(session, src, p, seed)[0]
        elif table:
            prepared = _prepare_packed_table(session, table, p, seed)
        elif p["shuffle"] == "blocks":
            try:
                prepared = _prepare_blocks(session, src, p, seed,
                                           sampled=model_kind.name == "glm", auto=auto_shuffle)
            except _Clustered:
                prepared = _prepare_copy_instead(session, src, p, seed, work)
        else:
            prepared = _prepare(session, src, p, seed, work)
        if src is not None:
            prepared.class_labels = src.class_labels
        with _changes_named_first(session, prepared):
            if model_kind.after_prepare is not None:
                model_kind.after_prepare(session, p, prepared)
            if model_kind.name != "glm":
                _resolve_defaults(session, p, prepared, _feature_names(table or src, prepared))
                result = _finish(session, model_kind, table or src, p, prepared, model_name,
                                 _run_epochs(session, model_kind, p, prepared, run_id), started)
            elif p["solver"] == "sgd":
                asked = dict(p)
                try:
                    result = _epochs(session, table or src, p, prepared, model_name, run_id,
                                     started)
                except (_SampleFellShort, _Clustered) as again:
                    # the first epoch saw what the sample missed (rare: a constant column of
                    # the sample that varies in the table), or the table in label order
                    p.clear()
                    p.update(asked)
                    prepared = _prepare_again(session, src, p, seed, work, auto_shuffle,
                                              isinstance(again, _Clustered))
                    with _changes_named_first(session, prepared):
                        result = _epochs(session, table or src, p, prepared, model_name,
                                         run_id, started)
            else:
                from . import exact_loop

                result = exact_loop.run(session, table or src, p, prepared, model_name, run_id,
                                        started)
        _drop_work(session, work)
        session.query("SELECT bismarck._end_run(bismarck._ticket(), %s, 'succeeded', %s::integer, "
                      "NULL) AS ended",
                      [run_id, result.version])
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
        if work.schema is not None:
            _drop_work(session, work, quiet=True)
            _forget_work(session, run_id)
            session.checkpoint()


def note_failure(session: TrainingSession, run_id: int, exc: BaseException) -> None:
    """Add to the error of a run that failed in its epochs what became of the run: the
    session's ``failure_note(run_id, exc)`` (inside the server: nothing of it is kept;
    outside: its rows in the history, marked failed), once."""
    note = getattr(session, "failure_note", None)
    text = note(run_id, exc) if note is not None else None
    if text and isinstance(exc, BismarckError) and text not in (exc.detail or ""):
        exc.detail = f"{exc.detail} {text}" if exc.detail else text


@contextlib.contextmanager
def _changes_named_first(session: TrainingSession, prep: _Prepared) -> Iterator[None]:
    """On a run without a copy (``prep.unwritten`` set), let "the source table changed during
    training" replace any error of the epochs: rows written mid-run (say, updated to extreme
    values) can make training diverge or fail a check, and the write, not the symptom, is what
    the user must hear about. When the table is unchanged, or the check itself cannot run
    (the transaction already failed), the original error stands."""
    try:
        yield
    except BismarckError as exc:
        if prep.unwritten is None:
            raise
        try:
            prep.unwritten(session)
        except InvalidData as changed:
            raise changed from exc
        except Exception:  # noqa: BLE001 - the check could not run: report the original
            pass
        raise


@dataclass
class _Work:
    """The run's private schema for its working copies (None: no copies, or already dropped)."""

    schema: str | None

    def table(self, session: TrainingSession, name: str) -> str:
        """The quoted name of a working table in the run's schema."""
        assert self.schema is not None
        return f"{session.ident(self.schema)}.{session.ident(name)}"


def _prepare(session: TrainingSession, src: Source, p: dict, seed: int,
             work: _Work) -> _Prepared:
    """Check rows, code labels, write the (shuffled or packed) train/validation copies.

    The checks and the copy read the source in separate statements (separate snapshots): a
    table's fingerprint (:func:`bismarckpy.blockscan.write_mark`: rows, their ``xmin``, file
    and columns) taken before the checks must still hold after the copy, else the copy may
    hold rows the checks never saw ("the source table changed during training"). Views have
    no row versions to fingerprint; their copy is still checked against the checks' counts
    and classes."""
    table = src.row_key == "s.ctid::text"  # a table or materialized view, read whole
    with blockscan.unwritten_around(session, src.relation if table else None,
                                    blockscan.run_columns(src)):
        return _prepare_copies(session, src, p, seed, work)


def _prepare_copies(session: TrainingSession, src: Source, p: dict, seed: int,
                    work: _Work) -> _Prepared:
    """:func:`_prepare`'s checks and copies."""
    clustered = None
    if p["packed"] and src.row_key == "s.ctid::text":  # a table: its checks in one read
        checked, _, surveyed = _survey(session, src, p, 0.0, seed)
        clustered = surveyed.clustered(bool(p.get("average")))
    else:
        _progress(session, "preparing: checking rows")
        checked = check_rows(session, src)
    d = checked.d
    dtype = check_ranges(session, src, checked, dtype=p["dtype"] if p["packed"] else None,
                         standardize=p["standardize"], squared=p["loss"] == "squared",
                         packing=False, solver=p["solver"])
    notes = []
    if p["packed"] and dtype != p["dtype"]:
        notes.append(f"values outside float32's normal range (beyond 1.7e38 or non-zero below "
                     f"1.2e-38): the working copy uses {dtype} blocks")
    classes = _label_classes(session, src, p["loss"], checked.label_values)
    if p["packed"] and _multiclass(p["loss"]) and not _exact_in_blocks(classes):
        p["packed"] = False
        notes.append("the label's classes are not all integers below 2**24 in magnitude, which "
                     "packed blocks might round: the working copy holds rows (packed => false)")
    if clustered is not None:  # buffers of page groups would keep the order: hash the rows
        notes.append(clustering.describe(src.name, src.label or "", clustered)
                     + "; the packed copy shuffles every row (slower to write than a copy "
                       "built from page groups, which would keep that order)")
    elif p["packed"] and src.row_key == "s.ctid::text":  # a table: packed in one read
        assert dtype is not None
        prep = _prepare_packed_pages(session, src, p, seed, work, checked, dtype, classes,
                                     notes)
        prep.in_label_order = surveyed.clustered() is not None  # F alone: see the field
        return prep
    holdout, n_holdout = _holdout(session, src, seed, p["validation_fraction"],
                                  checked.n_usable)
    train = work.table(session, "train")
    valid = work.table(session, "valid") if n_holdout > 0 else None
    _progress(session, "preparing: writing the " + ("packed" if p["packed"] else "row")
              + " copy")
    # The copy reads the source again (another snapshot than the checks'): it keeps only rows
    # of the classes found, and every usable row must arrive (else the table changed).
    among = label_among(src, classes) or "true"
    if p["packed"]:
        args = (p["block_size"], dtype)
        n_train = pack_into(session, src, train, d, f"NOT ({holdout}) AND {among}",
                            checked.n_usable - n_holdout, *args, seed + 1)
        n_valid = (pack_into(session, src, valid, d, f"({holdout}) AND {among}", n_holdout,
                             *args, seed + 2) if valid else 0)
        if n_train + n_valid != checked.n_usable:
            raise blockscan.changed(n_train + n_valid, checked.n_usable, "The packed copy")
        prep = _finish_packed(session, p, train, valid, d, DTYPE_CODES[dtype],
                              n_train, n_valid, checked.n_total - checked.n_usable, classes)
        prep.notes[:0] = notes
        return prep
    y_expr = _label_sql(src, p["loss"], classes)
    y_mean, y_sd = 0.0, 1.0
    y_stats: list[float] | None = None
    if p["standardize"] and p["loss"] == "squared" and p["solver"] not in EXACT_SOLVERS:
        y_mean, y_sd, *y_stats = _label_scale(session, src, y_expr, holdout,
                                              checked.max_abs_y, p["fit_intercept"])
        y_expr = f"(({y_expr}) - {y_mean!r}) / {y_sd!r}"
    order = {"once": f"ORDER BY hashtextextended({src.row_key}, {int(seed) + 1})",
             "always": "", "never": ""}[p["shuffle"]]
    # The row copy keeps each feature array in its in-memory form: the epoch reads it as bytes
    # (np.frombuffer) instead of converting a float8[] to a Python list on every call.
    base = (f"SELECT bismarck._float8_array_bytes({src.x_expr}) AS x, {y_expr} AS y "
            f"FROM {src.keyed} AS s WHERE {src.valid_expr} AND {among}")
    # A synchronized scan may start mid-table: keep 'never' in table order.
    with settings_for_transaction(session, {"synchronize_seqscans": "off"}):
        session.query(f"CREATE UNLOGGED TABLE {train} AS {base} AND NOT ({holdout}) {order}")
        if valid:
            session.query(f"CREATE UNLOGGED TABLE {valid} AS {base} AND ({holdout})")
    # squared loss: the raw label's moments read along (the trivial model's loss)
    raw_moments = p["loss"] == "squared" and y_stats is None
    select, unit = _label_moments_sql("y", checked.max_abs_y) if raw_moments else ("", 1.0)
    n_train, n_pos, *got = session.query(
        "SELECT count(*) AS n, count(*) FILTER (WHERE y > 0) AS pos"
        + (f", {select}" if raw_moments else "") + f" FROM {train}")[0]
    if raw_moments:
        y_stats = [float(got[0] or 0.0) * unit, float(got[1] or 0.0) * unit]
    n_valid = session.query(f"SELECT count(*) AS n FROM {valid}")[0][0] if valid else 0
    if n_train + n_valid != checked.n_usable:
        raise blockscan.changed(n_train + n_valid, checked.n_usable, "The copy of the rows")
    _require_training_rows(n_train, n_valid)
    in_label_order = False
    if p["shuffle"] == "never":
        groups = session.query(clustering.rows_sql(train))
        in_label_order = clustering.rows_clustered(groups) is not None
        in_order = clustering.rows_clustered(groups, bool(p.get("average")))
        if in_order is not None:
            notes.append(clustering.describe(src.name, src.label or "", in_order)
                         + "; shuffle => 'never' steps through the rows in that order every "
                           "epoch, which biases the model toward the last ones. Use shuffle "
                           "=> 'once' (the default) or 'always'")
    mu = sd = None
    constant: list[int] = []
    if p["standardize"]:
        stats = moments_decode(session.query(f"SELECT bismarck._moments(x) FROM {train}")[0][0])
        mu, sd, constant = _scaling(stats, p["fit_intercept"])
    return _Prepared(train=train, valid=valid, d=d, n_train=n_train,
                     n_valid=n_valid, skipped=checked.n_total - checked.n_usable,
                     classes=classes, mu=mu, sd=sd, y_mean=y_mean, y_sd=y_sd,
                     constant=constant, n_pos=int(n_pos), notes=notes,
                     y_stats=None if y_stats is None else (y_stats[0], y_stats[1]),
                     in_label_order=in_label_order)


def _choose_shuffle(session: TrainingSession, src: Source | None, p: dict, kind: str) -> str:
    """``shuffle`` left NULL: ``'blocks'`` (no copy) when it is expected to finish the run
    sooner than the packed copy (:func:`bismarckpy.schedule.prefer_blocks`, from the expected
    epochs and the measured costs), else ``'once'``. Only a GLM trained by SGD on a table
    that blocks can read, without parallel workers, averaging or ``packed => true``, and of
    at least :data:`bismarckpy.schedule.BLOCKS_MIN_ROWS` rows (estimated from its size)."""
    if (src is None or kind != "glm" or p["solver"] != "sgd" or p["packed"]
            or p["averaging"] != "global" or p["parallel"]
            or p.get("parallel_mode") not in (None, "average")
            or src.row_key != "s.ctid::text"):
        return "once"
    rows = blockscan.estimate_rows(session, src)
    n_train = int(rows * (1 - p["validation_fraction"]))
    batch = p["batch_size"] if p["batch_size"] is not None else auto_batch_size(
        n_train, p["block_size"])
    epochs = expected_epochs(p["max_epochs"], p["tol"], p["n_iter_no_change"])
    return "blocks" if prefer_blocks(rows, epochs, batch) else "once"


def _progress(session: TrainingSession, text: str) -> None:
    """Tell the user how preparation goes (a NOTICE inside the server, the CLI's status line
    outside), when the session can."""
    report = getattr(session, "on_progress", None)
    if report is not None:
        report(text)


def _survey(session: TrainingSession, src: Source, p: dict, fraction: float,
            split_seed: int) -> tuple[Checked, blockscan.Layout, blockscan.Prepared]:
    """The checks of :func:`check_rows` read off one read of a table's page groups
    (:func:`bismarckpy.packing.survey_table`), with progress reports."""
    _progress(session, "preparing: checking rows")
    return survey_table(session, src, p["block_size"], fraction, split_seed,
                        lambda text: _progress(session, text))


class _SampleFellShort(Exception):
    """The sample a 'blocks' run was prepared from does not describe the table well enough to
    go on from (too few rows, a class or an error it cannot tell exactly, a constant column
    that varies): prepare from every row instead."""


#: Page groups a 'blocks' run reads before its first epoch (about 64 x block_size rows).
SAMPLE_GROUPS = 64
#: Usable rows below which a sample is not trusted (the whole table is read first instead).
MIN_SAMPLE_ROWS = 256
#: Losses whose first epoch can take over the checks (the GLM's; others read every row first).
_FIRST_EPOCH_LOSSES = ("logistic", "hinge", "squared")


def _prepare_copy_instead(session: TrainingSession, src: Source, p: dict, seed: int,
                          work: _Work) -> _Prepared:
    """A run whose defaults chose ``'blocks'`` on a table stored in label order
    (:class:`_Clustered`): the packed copy instead, which shuffles every row of such a table
    (:func:`_prepare`, which says so)."""
    p["shuffle"], p["packed"] = "once", True
    return _prepare(session, src, p, seed, work)


def _prepare_again(session: TrainingSession, src: Source, p: dict, seed: int, work: _Work,
                   auto: bool, clustered: bool) -> _Prepared:
    """A ``'blocks'`` run whose first epoch stopped it: prepared from every row, or (the table
    stored in label order, ``clustered``) on the packed copy."""
    if not clustered:
        try:
            return _prepare_blocks_full(session, src, p, seed, auto=auto)
        except _Clustered:
            pass
    return _prepare_copy_instead(session, src, p, seed, work)


class _Clustered(Exception):
    """A ``'blocks'`` run that the defaults chose found the table's rows stored in an order
    that follows the label (:mod:`bismarckpy.clustering`): it trains on a shuffled copy."""


def _judge_order(src: Source, got: blockscan.Prepared, auto: bool, prep: _Prepared,
                 averaged: bool) -> bool:
    """A ``'blocks'`` run on a table stored in label order: raise :class:`_Clustered` when the
    defaults chose 'blocks' (``auto``), else add to ``prep.notes`` that the blocks keep that
    order. Sets ``prep.in_label_order`` (by ``F`` alone). Returns whether the table counts as
    so stored for this run (``averaged``: the two-class rule of
    :func:`bismarckpy.clustering.label_clustered`)."""
    prep.in_label_order = got.clustered() is not None  # F alone: see the field
    f = got.clustered(averaged)
    if f is None:
        return False
    if auto:
        raise _Clustered
    prep.notes.append(clustering.describe(src.name, src.label or "", f)
                      + f"; shuffle => 'blocks' mixes {blockscan.BUFFER_BLOCKS} page groups "
                        "at a time and keeps much of that order, which can bias the model "
                        "(measured: 2-9% above a full shuffle's loss with 1-10% positives "
                        "stored last). Use shuffle => 'once', a copy that shuffles every row")
    return True


def _prepare_blocks(session: TrainingSession, src: Source, p: dict, seed: int, *,
                    sampled: bool = True, auto: bool = False) -> _Prepared:
    """``shuffle => 'blocks'``: no copy. A GLM (without ``class_weight => 'balanced'``, whose
    weights need the exact class counts first) is prepared from a sample of page groups and
    its first epoch checks and counts every row (:func:`_prepare_blocks_sampled`); otherwise,
    or when the sample falls short, one read of every row first (:func:`_prepare_blocks_full`).
    """
    if (sampled and p["loss"] in _FIRST_EPOCH_LOSSES and p["class_weight"] != "balanced"
            and p["solver"] == "sgd"):
        try:
            return _prepare_blocks_sampled(session, src, p, seed, auto=auto)
        except _SampleFellShort:
            pass
    return _prepare_blocks_full(session, src, p, seed, auto=auto)


def _split_seed(seed: int) -> int:
    return (int(seed) + 3) & (2**62 - 1)


def _limits(p: dict) -> tuple[float, float]:
    """The largest feature and label magnitudes :func:`check_ranges` lets a run keep."""
    x_limit = MAX_ABS if p["standardize"] else min(MAX_ABS, SQUARE_SAFE)
    y_limit = SQUARE_SAFE if p["loss"] == "squared" else MAX_ABS
    return x_limit, y_limit


def _prepare_blocks_sampled(session: TrainingSession, src: Source, p: dict,
                            seed: int, *, auto: bool = False) -> _Prepared:
    """``shuffle => 'blocks'`` without reading the table first: width, label classes,
    standardisation, the batch size's row count and the sample behind ``eta0`` come from
    :data:`SAMPLE_GROUPS` page groups drawn at random (seeded); the checks of every row, the
    exact counts and the validation split are folded into the first epoch
    (:func:`_first_epoch`). Raises :class:`_SampleFellShort` when the sample cannot stand in
    for the table (the caller then reads every row first: the same errors as ever)."""
    _progress(session, "preparing: checking rows")
    check_casts(session, src)
    d = blockscan.first_length(session, src)
    if d is None:
        raise _SampleFellShort
    storage = blockscan.storage(session, src.relation,  # before the layout is read
                                blockscan.run_columns(src))
    lay = blockscan.layout(session, src, None, p["block_size"])
    got, chosen = blockscan.sample(session, src, lay, d, SAMPLE_GROUPS, seed)
    sv = got.survey
    if sv is None or got.stats is None or sv.n_usable < min(MIN_SAMPLE_ROWS, 1 + sv.n_total):
        raise _SampleFellShort
    if len(chosen) == lay.groups:  # the sample is the table: nothing to gain
        raise _SampleFellShort
    try:
        lo, hi = (sv.len_lo, sv.len_hi) if sv.ragged else (d, d)
        checked = judge(src, sv.n_total, sv.n_usable, lo, hi, sv.multi, sv.empty, sv.y_min,
                        sv.y_max, sv.all01, sv.allpm1, sv.max_abs_x, sv.max_abs_y,
                        sv.min_abs_x, sv.min_abs_y)
        check_ranges(session, src, checked, dtype=None, standardize=p["standardize"],
                     squared=p["loss"] == "squared", packing=False, solver=p["solver"])
        if p["loss"] in CLASSIFIERS and checked.label_values is None:
            raise _SampleFellShort
        classes = _check_classes(checked.label_values or [], p["loss"], src.label or "")
    except InvalidData:  # the full read gives the error with the table's own counts
        raise _SampleFellShort from None
    stats = got.stats
    coding = _coding(p, stats, classes)
    fraction = p["validation_fraction"]
    usable = sv.n_usable / len(chosen) * lay.groups
    n_valid = int(round(usable * fraction))
    n_train = max(1, int(round(usable)) - n_valid)
    scaled = _scaling(moments_select(stats, slice(1, None)), p["fit_intercept"])
    constant = [int(i) for i in np.flatnonzero(moments_select(stats, slice(1, None)).constant)]
    if p["loss"] == "squared" and bool(moments_select(stats, slice(0, 1)).constant[0]):
        constant.append(-1)  # a label constant in the sample: the table's must be too
    prep = _Prepared(train=src.relation, valid=None, d=d, n_train=n_train, n_valid=n_valid,
                     skipped=0, classes=classes, mu=coding.mu, sd=coding.sd,
                     y_mean=coding.y_mean, y_sd=coding.y_sd, packed=False, itemsize=8,
                     y_coding=coding.y_coding, constant=coding.constant,
                     n_pos=int(round(coding.n_pos * n_train / max(stats.n, 1))),
                     y_stats=_raw_label_stats(p, stats), y_stats_exact=False)
    prep.scaling = (scaled[0], scaled[1])
    prep.storage = storage
    share = min(100.0, 100.0 * 4 * SAMPLE_ROWS / max(usable, 1))
    prep.sample_sql = (f"SELECT bismarck._float8_array_bytes({src.x_expr}) AS x "
                       f"FROM {src.relation} AS s TABLESAMPLE SYSTEM ({share!r}) "
                       f"REPEATABLE ({int(seed) % 2**31}) WHERE {src.valid_expr} LIMIT %s")

    # else the first epoch judges every row
    judged = _judge_order(src, got, auto, prep, bool(p.get("average")))

    def first(session: TrainingSession, init: bytes) -> bytes | None:
        return _first_epoch(session, src, p, prep, lay, classes, constant, init, seed,
                            None if judged else auto)

    prep.first = first
    return prep


def _first_epoch(session: TrainingSession, src: Source, p: dict, prep: _Prepared,
                 lay: blockscan.Layout, classes: list[float] | None, constant: list[int],
                 init: bytes, seed: int, auto: bool | None = False) -> bytes | None:
    """The first epoch of a run prepared from a sample: every row read, checked and counted
    (:func:`bismarckpy.blockscan.first_epoch`), the same errors as a full preparation
    (:func:`judge`, :func:`check_ranges`, the label's classes) before any model is stored,
    and ``prep``'s counts, split and later epochs' scans made exact. Returns the epoch's
    finalized state (None: no training row). Raises :class:`_SampleFellShort` when a column
    the sample found constant varies."""
    split_seed = _split_seed(seed)
    x_limit, y_limit = _limits(p)
    state = blockscan.first_init(prep.d, p["validation_fraction"], classes, x_limit, y_limit,
                                 constant, init)
    with settings_for_transaction(session, execution.BLOCK_SCAN):  # as the later epochs
        f, counts, holds = blockscan.first_epoch(session, src, lay, prep.d, state, split_seed,
                                                 seed, lambda text: _progress(session, text))
    sv = blockscan.first_survey(f)
    lo, hi = (sv.len_lo, sv.len_hi) if sv.ragged else (prep.d, prep.d)
    checked = judge(src, sv.n_total, sv.n_usable, lo, hi, sv.multi, sv.empty, sv.y_min,
                    sv.y_max, sv.all01, sv.allpm1, sv.max_abs_x, sv.max_abs_y,
                    sv.min_abs_x, sv.min_abs_y)
    check_ranges(session, src, checked, dtype=None, standardize=p["standardize"],
                 squared=p["loss"] == "squared", packing=False, solver=p["solver"])
    if _label_classes(session, src, p["loss"], checked.label_values) != classes:
        raise _SampleFellShort
    if (f.hi > f.lo).any() or f.head[blockscan._F_STOP]:  # noqa: SLF001 (the engine's own)
        raise _SampleFellShort
    if _sample_missed_a_range(f, prep, sv, p["loss"] == "squared"):
        raise _SampleFellShort
    h = f.head
    prep.n_train, prep.n_valid = int(h[blockscan._F_TRAIN]), int(h[blockscan._F_VALID])  # noqa: SLF001
    prep.skipped = sv.n_total - sv.n_usable
    prep.n_pos = int(h[blockscan._F_POS])  # noqa: SLF001
    _require_training_rows(prep.n_train, prep.n_valid)
    own = blockscan.run_columns(src)  # the columns the run reads: others may change
    prep.unwritten = functools.partial(
        blockscan.check_unwritten, relation=src.relation,
        mark=(sv.n_total, int(h[blockscan._F_XMINS]), prep.storage), names=own)  # noqa: SLF001
    prep.columns_unchanged = functools.partial(blockscan.check_columns, relation=src.relation,
                                               mark=prep.storage, names=own)
    split_seed = _split_seed(seed)
    read = blockscan.first_order(f, counts, holds)
    if auto is not None:  # None: the sample found the order already
        _judge_order(src, read, auto, prep, bool(p.get("average")))
    _page_group_scans(prep, src, lay, read, split_seed)
    return None if f.kstate is None else kinds.for_state(f.kstate).finalize(f.kstate)


#: A first epoch that finds a feature (or a squared loss's label) further than this many of the
#: sample's standard deviations from the sample's mean shows that the sample's standardisation
#: and ``eta0`` do not describe the table (one extreme row the 64 page groups missed can make
#: the steps diverge, or store a model worse than none): the run is prepared from every row.
#: Gaussian data of 10M rows stays within 6; heavy tails far beyond 100 are prepared in full.
SAMPLE_Z = 100.0


def _sample_missed_a_range(f: blockscan.First, prep: _Prepared, sv: blockscan.Survey,
                           squared: bool) -> bool:
    """Whether the first epoch's ranges (``f.xlo``/``f.xhi`` per feature, ``sv``'s label
    range) reach beyond :data:`SAMPLE_Z` sample standard deviations of the sample's means."""
    if prep.mu is not None and prep.sd is not None and len(f.xhi) == len(prep.mu):
        mu, sd = np.asarray(prep.mu, dtype=float), np.asarray(prep.sd, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.maximum(np.abs(f.xhi - mu), np.abs(f.xlo - mu)) / np.where(sd > 0, sd,
                                                                              np.inf)
        if bool((z > SAMPLE_Z).any()):
            return True
    if squared and sv.y_min is not None and sv.y_max is not None and prep.y_sd:
        far = max(abs(sv.y_max - prep.y_mean), abs(sv.y_min - prep.y_mean))
        return bool(far > SAMPLE_Z * prep.y_sd)
    return False


def _prepare_blocks_full(session: TrainingSession, src: Source, p: dict,
                         seed: int, *, auto: bool = False) -> _Prepared:
    """``shuffle => 'blocks'`` prepared from every row: no copy, one read of the table
    (:func:`_survey`): every page group's rows checked and counted, its validation rows drawn,
    the training rows' moments summed."""
    split_seed = _split_seed(seed)
    own = blockscan.run_columns(src)  # the columns the run reads: others may change
    mark = blockscan.write_mark(session, src.relation, own)
    checked, lay, got = _survey(session, src, p, p["validation_fraction"], split_seed)
    check_ranges(session, src, checked, dtype=None, standardize=p["standardize"],
                 squared=p["loss"] == "squared", packing=False, solver=p["solver"])
    classes = _label_classes(session, src, p["loss"], checked.label_values)
    n_valid = int(got.holds.sum())
    n_train = checked.n_usable - n_valid
    _require_training_rows(n_train, n_valid)
    assert got.stats is not None
    coding = _coding(p, got.stats, classes)
    prep = _Prepared(train=src.relation, valid=None, d=checked.d, n_train=n_train,
                     n_valid=n_valid, skipped=checked.n_total - checked.n_usable,
                     classes=classes, mu=coding.mu, sd=coding.sd, y_mean=coding.y_mean,
                     y_sd=coding.y_sd, packed=False, itemsize=8, y_coding=coding.y_coding,
                     constant=coding.constant, n_pos=coding.n_pos,
                     y_stats=_raw_label_stats(p, got.stats))
    prep.unwritten = functools.partial(blockscan.check_unwritten, relation=src.relation,
                                       mark=mark, names=own)
    prep.columns_unchanged = functools.partial(blockscan.check_columns, relation=src.relation,
                                               mark=mark[2], names=own)
    mu, sd, _ = _scaling(moments_select(got.stats, slice(1, None)), p["fit_intercept"])
    prep.scaling = (mu, sd)
    share = min(100.0, 100.0 * 4 * SAMPLE_ROWS / max(checked.n_total, 1))
    prep.sample_sql = (f"SELECT bismarck._float8_array_bytes({src.x_expr}) AS x "
                       f"FROM {src.relation} AS s TABLESAMPLE SYSTEM ({share!r}) "
                       f"REPEATABLE ({int(seed) % 2**31}) WHERE {src.valid_expr} LIMIT %s")
    _judge_order(src, got, auto, prep, bool(p.get("average")))
    _page_group_scans(prep, src, lay, got, split_seed)
    return prep


def _page_group_scans(prep: _Prepared, src: Source, lay: blockscan.Layout,
                      got: blockscan.Prepared, split_seed: int) -> None:
    """``prep``'s epochs over the table's page groups: the training pass (groups and rows
    reshuffled each epoch) and, with validation rows, the validation pass, tried first on the
    rows the training pass kept in the backend (:func:`bismarckpy.blockscan.held_sql`)."""
    part = blockscan.TRAIN if prep.n_valid else blockscan.ALL
    prep.train_scan = execution.Scan(src.relation, template=blockscan.epoch_sql(
        src, lay, got, part, split_seed, shuffled=True, d=prep.d), reshuffle=True)
    if prep.n_valid:
        prep.valid = src.relation
        prep.valid_scan = execution.Scan(src.relation, template=blockscan.epoch_sql(
            src, lay, got, blockscan.VALID, split_seed, shuffled=False, d=prep.d),
            held=blockscan.held_sql(got.holds, split_seed))


def _prepare_packed_pages(session: TrainingSession, src: Source, p: dict, seed: int,
                          work: _Work, checked: Checked, dtype: str,
                          classes: list[float] | None, notes: list[str]) -> _Prepared:
    """The run's packed copy of a table in one read of the source (no sort, no hash table:
    :func:`bismarckpy.blockscan.pack`): page groups in a seeded random order, eight at a time,
    their rows shuffled together and cut into blocks. The validation rows are the first rows
    of every block, as for a table made by ``bismarck.pack``."""
    train = work.table(session, "train")
    create_packed(session, train)
    rows = blockscan.pack(session, src, train, checked.n_total, checked.d, p["block_size"],
                          dtype, seed + 1, lambda text: _progress(session, "preparing: " + text),
                          also=label_among(src, classes))
    if rows != checked.n_usable:
        raise blockscan.changed(rows, checked.n_usable, "The packed copy")
    _require_training_rows(rows, 0)
    blocks = session.query(f"SELECT p.block, p.n FROM {train} AS p ORDER BY p.block")
    k = validation_count(p["validation_fraction"], rows)
    prep = _finish_head_split(session, p, train, blocks, k, checked.d, DTYPE_CODES[dtype],
                              checked.n_total - checked.n_usable, classes)
    prep.notes[:0] = notes
    return prep


def validation_count(fraction: float, n: int) -> int:
    """Rows to hold out: ``fraction`` of ``n``, rounded up (scikit-learn's ``ceil(f * n)``)
    but immune to the float error of the product (0.3 * 10 is 3, not 4); 0 when fraction is 0.
    """
    if fraction <= 0 or n <= 0:
        return 0
    return min(n, math.ceil(fraction * n - 1e-9))


def _holdout(session: TrainingSession, src: Source, seed: int, fraction: float,
             n_usable: int) -> tuple[str, int]:
    """The validation rows as a predicate on ``s``, and how many rows it selects.

    Rows are ranked by a seeded hash of their identity and the lowest ``validation_count``
    are held out, so the share is exact (rows of a view identical in every column share a
    hash and fall on the same side, which can add a few).
    """
    k = validation_count(fraction, n_usable)
    h = f"hashtextextended({src.row_key}, {int(seed)})"
    if k == 0:
        return "false", 0
    cut = session.query(f"SELECT {h} AS h FROM {src.keyed} AS s WHERE {src.valid_expr} "
                        "ORDER BY 1 OFFSET %s LIMIT 1", [k - 1])[0][0]
    return f"({h} <= {int(cut)})", k


def _label_scale(session: TrainingSession, src: Source, y_expr: str, holdout: str,
                 max_abs_y: float, fit_intercept: bool) -> tuple[float, float, float, float]:
    """Centre and scale of a regression label on the training rows, without overflow, then
    the label's mean and population standard deviation.

    With an intercept, the mean and population standard deviation; without, 0 and the root
    mean square (regression through the origin must not move the label).
    """
    m, sd = _label_moments(session, f"{src.keyed} AS s",
                           f"{src.valid_expr} AND NOT ({holdout})", y_expr, max_abs_y)
    centre, scale = (m, sd) if fit_intercept else (0.0, math.hypot(m, sd))
    return centre, scale if scale > 0 and math.isfinite(scale) else 1.0, m, sd


def _label_moments_sql(y_expr: str, max_abs_y: float) -> tuple[str, float]:
    """A select list ``m, s`` of the mean and population standard deviation of ``y_expr``
    scaled into [-1, 1] by a power of two (exact), and the unit to multiply them back by.

    Scaled, squares of labels near 1e300 stay finite; there is no square in SQL at all
    (float8 products that round to zero raise "underflow" in PostgreSQL: a label of 1e-200
    next to 1). Scaling down (labels beyond 1) would round labels below 1e-250 to zero, which
    PostgreSQL's product refuses; next to a label of magnitude >= 1 they weigh nothing.
    """
    e = math.frexp(max_abs_y)[1] if max_abs_y > 0 and math.isfinite(max_abs_y) else 0
    k = f"{math.ldexp(1.0, -e)!r}"
    y_k = (f"(CASE WHEN abs({y_expr}) < 1e-250 THEN 0::float8 ELSE ({y_expr}) * {k} END)"
           if e > 0 else f"(({y_expr}) * {k})")
    return (f"avg({y_k}) AS m, coalesce(stddev_pop({y_k}), 0) AS s", math.ldexp(1.0, e))


def _label_moments(session: TrainingSession, from_sql: str, where: str, y_expr: str,
                   max_abs_y: float) -> tuple[float, float]:
    """Mean and population standard deviation of ``y_expr`` over ``from_sql`` rows that
    satisfy ``where`` (:func:`_label_moments_sql`; 0 and 0 for no rows)."""
    select, unit = _label_moments_sql(y_expr, max_abs_y)
    m, sd = session.query(f"SELECT {select} FROM {from_sql} WHERE {where}")[0]
    return float(m or 0.0) * unit, float(sd or 0.0) * unit


def _prepare_packed_table(session: TrainingSession, table: PackedTable, p: dict,
                          seed: int) -> _Prepared:
    """Train on a table written by ``bismarck.pack``: hold out the head rows of every block.

    Rows inside a block are in random order, so the first ``h`` rows of a block are a random
    sample of it; ``h`` is the block's share of ``validation_count`` with the rounding carried
    from block to block, so the held-out share is exact.
    """
    if p["packed"] is False or p["shuffle"] != "once":
        raise InvalidParameter(
            f"{table.name} is a packed table", detail="Its blocks are one fixed shuffle.",
            hint="Train on it with shuffle => 'once' (the default), or on its source table "
                 f"{table.source} to reshuffle rows.")
    if _multiclass(p["loss"]) and len(table.label_values) > 2:
        raise InvalidParameter(
            f"{table.name} is a packed table whose classes are not recorded",
            detail="bismarck.pack records the label's values only for a binary label (it keeps "
                   "the first three it finds, enough to tell two classes from more); the label "
                   f"of {table.name} has more than two classes, and a multi-class model needs "
                   "the list of all of them.",
            hint=f"Train on its source table {table.source}.")
    classes = _check_classes(table.label_values, p["loss"], table.label)
    blocks = session.query(f"SELECT p.block, p.n FROM {table.relation} AS p ORDER BY p.block")
    if not blocks:
        raise InvalidData(f"packed table {table.name} is empty",
                          hint=f"Pack it again: SELECT * FROM bismarck.pack('{table.source}', "
                               "...). An unlogged table is emptied by a server crash.")
    head = session.query(f"SELECT substring(p.data FROM 1 FOR 8) AS m FROM {table.relation} "
                         "AS p LIMIT 1")[0][0]
    if bytes(head) != PACK_MAGIC:
        raise stale_format()
    total = sum(int(n) for _, n in blocks)
    k = validation_count(p["validation_fraction"], total)
    # the rows bismarck.pack skipped (missing values) are the model's skipped rows too
    return _finish_head_split(session, p, table.relation, blocks, k, table.d, table.itemsize,
                              table.skipped_rows, classes)


def _finish_head_split(session: TrainingSession, p: dict, relation: str,
                       blocks: list[tuple], k: int, d: int, itemsize: int, skipped: int,
                       classes: list[float] | None) -> _Prepared:
    """Hold out the first rows of every packed block (rows inside a block are in random
    order, so they are a random sample of it): ``k`` in all, each block's share with the
    rounding carried from block to block, so the held-out count is exact."""
    total = sum(int(n) for _, n in blocks)
    held = [0] * (max(int(b) for b, _ in blocks) + 1)
    seen = 0
    for block, n in blocks:  # carried rounding: the first c rows in block order hold k·c/N
        before = (2 * k * seen + total) // (2 * total)
        seen += int(n)
        held[int(block)] = (2 * k * seen + total) // (2 * total) - before
    heads = "('{" + ",".join(map(str, held)) + "}'::int[])"
    prep = _finish_packed(session, p, relation + " AS p", None, d, itemsize, total - k, k,
                          skipped, classes, train_rows=f"{heads}[p.block + 1], NULL")
    if k:
        prep.valid = f"{relation} AS p WHERE {heads}[p.block + 1] > 0"
        prep.valid_rows = f"0, {heads}[p.block + 1]"
    return prep


def _finish_packed(session: TrainingSession, p: dict, train: str, valid: str | None,
                   d: int, itemsize: int, n_train: int, n_valid: int,
                   skipped: int, classes: list[float] | None,
                   train_rows: str = "0, NULL") -> _Prepared:
    """Statistics of packed training blocks and how each epoch codes their raw labels."""
    _require_training_rows(n_train, n_valid)
    state = session.query(f"SELECT bismarck._moments_packed(data, {int(d)}, {int(itemsize)}, "
                          f"{train_rows}) FROM {train}")[0][0]
    stats = moments_decode(state)  # column 0 is the label
    c = _coding(p, stats, classes)
    y_mean, y_sd, coding, n_pos, mu, sd, constant = (c.y_mean, c.y_sd, c.y_coding, c.n_pos,
                                                     c.mu, c.sd, c.constant)
    return _Prepared(train=train, valid=valid, d=d, n_train=n_train,
                     n_valid=n_valid, skipped=skipped, classes=classes, mu=mu, sd=sd,
                     y_mean=y_mean, y_sd=y_sd, packed=True, itemsize=itemsize, y_coding=coding,
                     train_rows=train_rows, constant=constant, n_pos=n_pos,
                     y_stats=_raw_label_stats(p, stats))


def _raw_label_stats(p: dict, stats: Moments) -> tuple[float, float] | None:
    """A regression label's mean and population standard deviation from moments whose column
    0 is the raw label (None for a classifier)."""
    if p["loss"] != "squared" or stats.n == 0:
        return None
    return float(stats.mean[0]), float(stats.sd[0])


@dataclass
class _Coding:
    """How an epoch codes raw labels and scales features, from the training rows' moments."""

    y_mean: float
    y_sd: float
    y_coding: tuple[int, float, float, float]
    n_pos: int
    mu: np.ndarray | None
    sd: np.ndarray | None
    constant: list[int]


def _coding(p: dict, stats: Moments, classes: list[float] | None) -> _Coding:
    """Label coding, label scale and feature standardisation from moments whose column 0 is
    the raw label (packed blocks and block-shuffled scans)."""
    y_mean, y_sd = 0.0, 1.0
    n_pos = 0
    if p["loss"] == "squared":
        if p["standardize"]:
            y_mean = float(stats.mean[0]) if p["fit_intercept"] else 0.0
            y_sd = float(stats.sd[0] if p["fit_intercept"] else stats.rms[0])
            y_sd = y_sd if y_sd > 0 and math.isfinite(y_sd) else 1.0
        coding = (glm.Y_AFFINE, 0.0, y_mean, y_sd)
    elif _multiclass(p["loss"]):  # blocks keep raw labels, as rows do; the kind codes them
        assert classes is not None
        coding = (glm.Y_AS_IS, 0.0, 0.0, 1.0)
    else:
        assert classes is not None
        mode = glm.Y_CLASS01 if p["loss"] == "logistic" else glm.Y_CLASS_PM1
        coding = (mode, classes[1], 0.0, 1.0)
        share = (float(stats.mean[0]) - classes[0]) / (classes[1] - classes[0])
        n_pos = int(round(share * stats.n))
    mu = sd = None
    constant: list[int] = []
    if p["standardize"]:
        mu, sd, constant = _scaling(moments_select(stats, slice(1, None)), p["fit_intercept"])
    return _Coding(y_mean, y_sd, coding, n_pos, mu, sd, constant)


def _require_training_rows(n_train: int, n_valid: int) -> None:
    """Refuse a split that left nothing to train on."""
    if n_train == 0:
        raise InvalidData("no training rows left after the validation split",
                          detail=f"{n_valid} usable rows all went to validation.",
                          hint="Lower validation_fraction or add rows.")


#: A label with more distinct values than this is not a set of classes.
MAX_CLASSES = 1000


def _label_classes(session: TrainingSession, src: Source, loss: str,
                   binary: list[float] | None) -> list[float] | None:
    """The classes of a classifier's label, checked; None for regression.

    A label of class values (text, ...) is coded 0..K-1 already: its classes are those codes.
    """
    if src.class_labels is not None and (_multiclass(loss) or loss in CLASSIFIERS):
        return _check_classes([float(i) for i in range(len(src.class_labels))], loss,
                              src.label or "")
    if _multiclass(loss) or loss in CLASSIFIERS:
        inexact = inexact_classes(session, src, MAX_CLASSES + 1)
        if inexact is not None:
            raise InvalidData(
                inexact[0], detail=inexact[1] + " A model's classes are double precision.",
                hint="Keep the classes exact as text: train on a view with the label cast, "
                     f"({src.label})::text, and ask predict_class(model, x, NULL::text); or "
                     "recode the classes as small integers.")
    if _multiclass(loss):
        values = [float(r[0]) for r in session.query(
            f"SELECT DISTINCT {src.label_expr} AS v FROM {src.relation} AS s "
            f"WHERE {src.valid_expr} ORDER BY 1 LIMIT {MAX_CLASSES + 1}")]
        return _check_classes(values, loss, src.label or "")
    if loss not in CLASSIFIERS:
        return None
    return _check_classes(binary or label_values(session, src), loss, src.label or "")


#: The loop's loss of a classifier kind with K >= 2 classes that codes raw labels itself (the
#: MLP's softmax output): the classes are found here, over all usable rows, before any split.
MULTICLASS = "cross_entropy"


def _exact_in_blocks(classes: list[float] | None) -> bool:
    """Whether packed blocks keep every class value exactly: integers below 2**24 in magnitude
    (float32 residuals from a float64 offset; a text label's class indexes always are). A
    multi-class kind matches each row's label to its classes exactly."""
    return classes is None or all(float(c).is_integer() and abs(c) < 2**24 for c in classes)


def _multiclass(loss: str) -> bool:
    """Whether ``loss`` fits K >= 2 classes from raw labels (the MLP's and softmax's)."""
    return loss in (MULTICLASS, "softmax")


def _code_classes(session: TrainingSession, src: Source, loss: str) -> Source:
    """A label of class values that are not numbers (text, varchar, an enum...) coded as
    each row's class index 0..K-1 (the classes in :func:`bismarckpy.source.distinct_labels`
    order); a clear error for a loss that is not a classifier's, or for a label whose
    usable rows have one class only, more than :data:`MAX_CLASSES`, or (binary losses) a
    number of classes other than two."""
    multi = _multiclass(loss)
    if not multi and loss not in CLASSIFIERS:
        raise InvalidData(
            f'label column "{src.label}" has type {src.label_type}', sqlstate="42804",
            detail=f"A regression (loss '{loss}') fits a numeric target; this label holds "
                   "classes.",
            hint="Train a classifier: loss => 'softmax' (or 'logistic'/'hinge' for two "
                 "classes), train_mlp with task => 'classification'; or cast the label to a "
                 "number in a view.")
    values = distinct_labels(session, src, MAX_CLASSES + 1)
    shown = ", ".join(repr(v) for v in values[:10]) + (" …" if len(values) > 10 else "")
    if len(values) < 2:
        raise InvalidData(
            f'label "{src.label}" has one class only' if values else
            f'label "{src.label}" has no usable value',
            detail=f"A classifier needs two or more classes; found {shown or 'none'} among "
                   "the rows with a label and usable features.",
            hint="Train on rows of two or more classes.")
    if len(values) > MAX_CLASSES:
        raise InvalidData(
            f'label "{src.label}" has too many classes',
            detail=f"More than {MAX_CLASSES} distinct values of {src.label_type}: a model keeps "
                   "a weight row per class.",
            hint="Is the label a class? Group rare values in a view, or predict a number.")
    if not multi and len(values) != 2:
        raise InvalidData(
            f'label "{src.label}" is not binary',
            detail=f"loss => '{loss}' needs two classes; found {len(values)}: {shown}.",
            hint="Use loss => 'softmax' for more than two classes.")
    return with_classes(session, src, values)


def _check_classes(values: list[float], loss: str, label: str) -> list[float] | None:
    """Two classes coded 0/1 or -1/+1 (booleans arrive as 0/1), or K >= 2 classes of any
    numeric values for :data:`MULTICLASS`; a clear error otherwise."""
    if _multiclass(loss):
        if len(values) < 2 or len(values) > MAX_CLASSES:
            few = len(values) < 2
            raise InvalidData(
                f'label "{label}" has {"one class only" if few else "too many classes"}',
                detail=(f"A classifier needs two or more classes; found "
                        f"{', '.join(exact_number(v) for v in values) or 'none'}." if few else
                        f"More than {MAX_CLASSES} distinct values: it looks like a number."),
                hint="Train on rows of two or more classes." if few else
                     "Use task => 'regression' for a numeric target.")
        return values
    if loss not in CLASSIFIERS:
        return None
    shown = ", ".join(exact_number(v) for v in values)
    if len(values) != 2 or values not in ([0.0, 1.0], [-1.0, 1.0]):
        raise InvalidData(
            f'label "{label}" is not binary',
            detail=f"loss => '{loss}' needs two classes coded 0/1, -1/+1 or false/true; "
                   f"found {shown}{' …' if len(values) > 2 else ''}.",
            hint="Recode the label in a view (for example (label = 'yes')::int), or use "
                 "loss => 'squared' for a numeric target.")
    return values


def _label_sql(src: Source, loss: str, classes: list[float] | None) -> str:
    """The row path's label expression, coded as the loss expects it."""
    assert src.label_expr is not None
    if classes is None or _multiclass(loss):  # raw labels (the kind codes K classes)
        return src.label_expr
    pos = classes[1]
    if loss == "logistic":
        return f"({src.label_expr} = {pos:g})::int::float8"
    return f"CASE WHEN {src.label_expr} = {pos:g} THEN 1.0 ELSE -1.0 END"


def _scaling(stats: Moments, fit_intercept: bool) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Centre and scale of each feature for standardisation, and the constant features.

    With an intercept: the mean and population standard deviation; a constant column (zero
    variance relative to its magnitude, :attr:`Moments.constant`) gets scale ``inf``, so its
    standardised value is 0 and its coefficient stays 0 (the intercept carries it). Without an
    intercept, features are scaled but not centred (regression through the origin is not
    shifted): the scale is the root mean square, and only all-zero columns are constant.
    """
    if fit_intercept:
        constant = stats.constant
        mu, sd = stats.mean.copy(), stats.sd.copy()
    else:
        sd = stats.rms
        constant = ~(sd > 0)
        mu = np.zeros_like(sd)
    sd = np.where(constant, np.inf, sd)
    return mu, sd, [int(i) for i in np.flatnonzero(constant)]


def _resolve_defaults(session: TrainingSession, p: dict, prep: _Prepared,
                      names: Sequence[str] = ()) -> None:
    """Fill ``batch_size``, ``power_t`` and ``eta0`` left NULL (the model records the values).

    See :func:`bismarckpy.schedule.auto_batch_size` and :func:`bismarckpy.schedule.auto_eta0`;
    per-row steps keep ``eta0`` 0.1. Unstandardised, the columns' scales are measured whoever
    chose ``eta0`` (:func:`_note_unscaled`; ``names``: the features', for its advice).
    """
    if p["batch_size"] is None:
        p["batch_size"] = auto_batch_size(prep.n_train, p["block_size"])
    if p.get("power_t", 0.5) is None:
        p["power_t"] = default_power_t(p.get("loss"), p["batch_size"])
    if not {"loss", "penalty", "alpha", "fit_intercept"} <= p.keys():
        if p["eta0"] is None:
            p["eta0"] = ROW_ETA0  # a kind without a GLM's parameters: the per-row default
        return
    sample, given = None, p["eta0"] is not None
    if p["eta0"] is None:
        if p["batch_size"] == 1:
            p["eta0"] = ROW_ETA0
        else:
            _, l2 = penalties.mix(p["penalty"], p["l1_ratio"])
            alpha = p["alpha"] if p["penalty"] != "none" else 0.0
            sample = _sample_rows(session, prep, p["fit_intercept"])
            p["eta0"] = auto_eta0(p["loss"], sample, p["batch_size"], alpha * l2)
    if not p.get("standardize", True):
        if sample is None:
            sample = _sample_rows(session, prep, p["fit_intercept"])
        _note_unscaled(p, prep, sample, names, given=given)


#: Columns (with the intercept's column of ones) whose root mean squares differ by more than
#: this factor leave the unstandardised steps, sized for the largest, too small for the rest.
UNSCALED_RATIO = 30.0


def _note_unscaled(p: dict, prep: _Prepared, sample: np.ndarray, names: Sequence[str] = (),
                   *, given: bool = False) -> None:
    """Warn, and keep the run from counting as converged, when ``standardize => false`` and
    the sample's columns differ in scale by more than :data:`UNSCALED_RATIO`; keep the advice
    (``prep.unscaled``) that then leads every failure's and warning's hint.

    ``eta0`` = 1 / L is sized for the largest column (L grows with its square), so a column
    30 times smaller moves 900 times slower: on 400 rows beside a constant column of -3e6,
    eta0 came out at 4e-13, and on 3,000 rows with one feature offset by 1,000 (rms 1,000
    against the intercept's 1) at 4e-6; both ended at the class priors' loss, stored as
    converged (offsets from 100 to 9,000 did the same). An ``eta0`` the caller gives is no
    better: one small enough for the largest column leaves the others as still, a larger one
    diverges (tester: logistic, 3,000 rows, columns scaled 1, 1 and 3,000: eta0 6.4e-7
    stored as converged at 0.714 against Newton's 0.532; 'adaptive' and 1,000 epochs did no
    better), so the advice is standardize => true, never another eta0 or learning_rate.
    """
    rms = np.sqrt(np.mean(np.square(sample), axis=0)) if len(sample) else np.zeros(0)
    used = rms[rms > 0]
    if len(used) < 2 or not used.max() > UNSCALED_RATIO * used.min():
        return
    big = int(np.argmax(rms))
    small = int(np.flatnonzero(rms == used.min())[0])

    def column(i: int) -> str:
        if i >= prep.d:
            return "the intercept's column of ones"
        return f"feature {i + 1}" + (f" ({names[i]})" if i < len(names) else "")

    ratio = used.max() / used.min()
    prep.unscaled = (
        f"Use standardize => true: unstandardised, {column(big)} is {ratio:.3g} times "
        f"the scale of {column(small)} (root mean squares {used.max():.3g} and "
        f"{used.min():.3g}), and steps small enough for the one leave the other barely "
        "moving, whatever eta0, learning_rate or max_epochs (the coefficients are reported "
        "in the original units all the same)")
    rate = f"eta0 => {p['eta0']:.3g}" if given else f"eta0 came out at {p['eta0']:.3g}"
    prep.notes.append(
        f"with standardize => false the steps ({rate}) are sized for {column(big)}: the "
        f"model is not reported as converged. {prep.unscaled}")


def _sample_rows(session: TrainingSession, prep: _Prepared, fit_intercept: bool) -> np.ndarray:
    """Up to SAMPLE_ROWS training rows as the steps see them: standardised, with a ones column.

    The first rows of the training copy (a random sample when it is shuffled). Shape (k, d) or
    (k, d + 1) with the intercept; constant columns (sd = inf) are 0.
    """
    if prep.packed:
        rows, got = [], 0
        for (block,) in session.query(f"SELECT data FROM {prep.train} LIMIT %s",
                                      [max(1, SAMPLE_ROWS // 64)]):
            offsets, M = parse_block(bytes(block), prep.d, prep.itemsize)
            rows.append(M[:, 1:].astype(np.float64) + offsets[1:])
            got += len(M)
            if got >= SAMPLE_ROWS:
                break
        X = np.vstack(rows)[:SAMPLE_ROWS] if rows else np.zeros((0, prep.d))
    else:
        X = np.array([glm.raw_vector(bytes(x), prep.d) for (x,) in session.query(
            prep.sample_sql or f"SELECT x FROM {prep.train} LIMIT %s", [SAMPLE_ROWS])]
                     ).reshape(-1, prep.d)
    if prep.mu is not None and prep.sd is not None:
        X = (X - prep.mu) / prep.sd  # sd = inf (constant column) gives 0
    if fit_intercept:
        X = np.hstack([X, np.ones((len(X), 1))])
    return X


@dataclass
class _Run:
    """What the epochs of any kind produced: the model carried at the end and how it went."""

    model: Any  # the kind's model of the last accepted epoch (None: no epoch accepted)
    history: list[EpochRecord]
    converged: bool
    train_loss: float
    valid_loss: float | None
    epochs: int
    loss_scale: float
    train_sql: str


def _run_epochs(session: TrainingSession, kind: kinds.ModelKind, p: dict, prep: _Prepared,
                run_id: int) -> _Run:
    """Epochs of ``kind`` until convergence, divergence or max_epochs, each through the
    execution layer; the schedule, validation, history and bold_driver's undo are the loop's."""
    sched = Schedule(p["learning_rate"], p["eta0"], p["tol"], p["n_iter_no_change"],
                     p["power_t"], standardize=p.get("standardize", True),
                     rate_name=kind.extra.get("rate_name", "eta0"),
                     advice=prep.unscaled + "." if prep.unscaled else None,
                     per_row=p.get("batch_size") == 1,
                     # gradient descent's exact steps (the GLM's and softmax's: convex)
                     full_batch=p.get("batch_size") == 0
                     and kind.extra.get("rate_name", "eta0") == "eta0",
                     smooth=p.get("loss") != "hinge")
    # Early stopping keeps the epoch with the best validation loss (scikit-learn's MLP with
    # early_stopping restores its best coefficients) when the kind asks for it.
    keep_best = bool(kind.extra.get("restore_best")) and prep.valid is not None
    best: tuple[float, Any, float] | None = None  # validation loss, model, train loss
    model = None  # the kind's model carried from the last accepted epoch (None: zeros)
    previous_start = model  # where the last accepted epoch began (bold_driver undoes to it)
    loss_scale = prep.y_sd ** 2  # squared loss is fitted on y / y_sd
    judged = _judged_units(session, p, prep)  # the convergence test's: free of the label's
    by_partition = prep.layout is not None
    strategy = execution.strategy_for(p, kind)
    if by_partition:
        if strategy.name == "shared":
            raise InvalidParameter(
                "parallel_mode => 'shared' needs averaging => 'global'",
                detail="Shared-memory workers step one model inside one server's epoch; "
                       "averaging => 'partition' runs one aggregate per partition.",
                hint="Drop parallel_mode, or use averaging => 'global'.")
        workers = p["parallel"]
        if workers is None:  # local partitions side by side, one per worker
            workers = min(8, sum(1 for q in prep.layout.partitions if not q.server))
        strategy = execution.Strategy(workers, "partition").for_kind(kind.merge_rule)
    group = "part" if by_partition else None
    shards = tuple((q.server, q.name) for q in prep.layout.shards) if by_partition else ()
    train_scan = prep.train_scan or execution.Scan(
        prep.train, prep.packed, prep.train_rows,
        reshuffle=p["shuffle"] == "always" and not by_partition,
        group=group, order=prep.order, shards=shards)
    valid_scan = prep.valid_scan or (execution.Scan(prep.valid, prep.packed, prep.valid_rows,
                                                    group=group, shards=shards)
                                     if prep.valid else None)
    # averaging => 'partition': the averaged model scored on the training rows each epoch
    # (unordered: an evaluation sums the same losses in any order)
    score_scan = dataclasses.replace(train_scan, order=None) if by_partition else None
    train_sql = train_scan.sql()
    history: list[EpochRecord] = []
    converged = False
    train_loss = math.nan
    valid_loss: float | None = None
    epoch = 0
    for epoch in range(1, p["max_epochs"] + 1):
        t0 = time.monotonic()
        if epoch > 1 and prep.columns_unchanged is not None:
            prep.columns_unchanged(session)
        init = kind.initialize(p, prep, model, eta=sched.eta, per_step=sched.per_step)
        if train_scan.reshuffle:
            session.query("SELECT setseed(%s)", [execution.epoch_seed(p["seed"], epoch)])
        if prep.first is not None or (valid_scan is not None and valid_scan.held):
            session.query("SELECT bismarck._held_clear(%s::int8, %s::int4)",  # the pass keeps
                          [int(prep.n_valid), int(prep.d)])  # its validation rows (heldrows)
        parts: list[tuple[object, bytes]] = []
        if epoch == 1 and prep.first is not None:  # checks and counts folded into epoch 1
            first, prep.first = prep.first, None
            m = kind.decode(first(session, init))
            train_scan, valid_scan = prep.train_scan, prep.valid_scan
            train_sql = train_scan.sql()
        else:
            m = kind.decode(execution.run_epoch(session, train_scan, init, strategy,
                                                parts=parts))
        coded = m.mean_loss  # in the fitted (coded) label's units
        score_parts: list[tuple[object, bytes]] = []
        if score_scan is not None:
            # Each partition's loss along its own epoch is its own model's, not the averaged
            # model's: on partitions that differ in distribution their mean says nothing of
            # the average. One evaluate-only pass scores the averaged model on the training
            # rows, per partition where the rows are; the penalty is the averaged model's.
            ev = kind.initialize(p, prep, m.model, evaluate=True)
            em = kind.decode(execution.run_epoch(session, score_scan, ev, strategy,
                                                 parts=score_parts))
            coded = em.data_loss + m.mean_loss - m.data_loss
        train_loss = coded * loss_scale
        valid_parts: list[tuple[object, bytes]] = []
        if valid_scan:
            ev = kind.initialize(p, prep, m.model, evaluate=True)
            vm = kind.decode(execution.run_epoch(session, valid_scan, ev, strategy,
                                                 parts=valid_parts))
            coded = vm.data_loss
            valid_loss = coded * loss_scale
        rate = sched.rate_in_force(m.t)  # before after_epoch sets the next epoch's rate
        # the validation loss when there is one (else the training loss), in judged units
        decision = sched.after_epoch(epoch, train_loss, coded * judged)
        # An epoch's loss is measured along the way from its starting model, so a worse loss
        # condemns the step that produced that start: bold_driver goes back one more epoch.
        if decision.accept:
            previous_start = model
            model = m.model
            if keep_best and valid_loss is not None and (best is None or valid_loss < best[0]):
                best = (valid_loss, model, train_loss)
        elif not by_partition:
            model = previous_start
        # (averaging => 'partition' measures the loss at the epoch's averaged model, so a
        # worse loss condemns this epoch's step alone: the model stays at the epoch's start.)
        rec = EpochRecord(epoch, train_loss, valid_loss, rate, m.rows, time.monotonic() - t0,
                          p["max_epochs"], len(parts) if by_partition
                          else execution.workers_merged(m.parts, p["parallel"]),
                          _partition_detail(kind, prep, parts, score_parts, valid_parts,
                                            loss_scale)
                          if by_partition else None,
                          functools.partial(kind.export, p, prep, m.model))
        history.append(rec)
        record_epoch(session, run_id, rec)
        session.checkpoint()
        session.on_epoch(rec)
        if decision.stop:
            converged = decision.converged
            break
    if best is not None:
        valid_loss, model, train_loss = best
    return _Run(model, history, converged, train_loss, valid_loss, epoch, loss_scale, train_sql)


def _judged_units(session: TrainingSession, p: dict, prep: _Prepared) -> float:
    """The factor from an epoch's loss in the fitted label's units (squared loss: ``y_sd``²
    times smaller than the reported one) to the units of the convergence test (``tol``,
    ``n_iter_no_change``).

    Squared loss is judged in the standardised label's units, the loss divided by the label's
    variance (its mean square without ``fit_intercept``), so the same data with the label
    multiplied by 1e4 or 1e-3 stop at the same epoch: a label standardised internally is
    judged on the fitted loss as it is (factor 1); an unstandardised one on the loss divided
    by the raw label's variance from the moments preparation measured (read once here for an
    unstandardised partitioned source, where preparation did not; the trivial-model check
    reuses them). The other losses are free of the label's units already (factor 1). The
    reported losses stay in the label's units.
    """
    if p.get("loss") != "squared" or p.get("standardize", True):
        return 1.0
    if prep.y_stats is None and prep.layout is not None:  # y: the raw label
        m, sd = _label_moments(session, prep.train, "true", "y", prep.y_max_abs)
        prep.y_stats, prep.y_stats_exact = (prep.y_mean + prep.y_sd * m, prep.y_sd * sd), True
    if prep.y_stats is None:
        return 1.0
    mean, sd = prep.y_stats
    variance = sd * sd if p.get("fit_intercept", True) else mean * mean + sd * sd
    factor = 1.0 / variance if variance > 0 else 1.0
    return factor if math.isfinite(factor) else 1.0


def _finish(session: TrainingSession, kind: kinds.ModelKind, src: Source | PackedTable,
            p: dict, prep: _Prepared, model_name: str, run: _Run,
            started: float) -> TrainResult:
    """Store the model of a kind other than the GLM (which has :func:`_epochs`' checks)."""
    notes = list(prep.notes)
    if not run.converged and p["tol"] is not None:
        notes.append(f"training stopped after {counted(run.epochs, 'epoch')} without "
                     f"converging (the loss did not settle within tol = {p['tol']:g} for "
                     f"n_iter_no_change = {counted(p['n_iter_no_change'], 'epoch')}). "
                     + (prep.unscaled or "Raise max_epochs"))
    zero, what = _check_not_worse_than_trivial(session, kind, p, prep, run)
    rate = kind.extra.get("rate_name", "eta0")
    # only for kinds whose training starts at the trivial model (an MLP starts at random
    # weights, and its per-epoch loss can sit above the zero network's early on)
    overshoot = (_overshoot_note(run.train_loss, zero, rate, p.get(rate), what,
                                 p.get("standardize", True), advice=prep.unscaled)
                 if kind.extra.get("starts_from_trivial") else None)
    if overshoot is not None:  # after the note above: not "raise max_epochs" for this
        run = dataclasses.replace(run, converged=False)
        notes.append(overshoot)
    if prep.unscaled:  # its note is among prep.notes
        run = dataclasses.replace(run, converged=False)
    share = validation_share(prep, p["validation_fraction"], notes)
    stored = kind.export(p, prep, run.model)
    seconds = time.monotonic() - started
    metrics = {"train_loss": run.train_loss, "validation_loss": run.valid_loss,
               "epochs": run.epochs, "converged": run.converged, "rows": prep.n_train,
               "validation_rows": prep.n_valid, "validation_share": share,
               "skipped_rows": prep.skipped, "seconds": seconds, "n_features": prep.d,
               "constant_features": [_feature_name(src.features, src.array_feature, i)
                                     for i in prep.constant]}
    for note in notes:
        session.warn(note)
    if prep.unwritten is not None:
        prep.unwritten(session)
    version = store_model(session, model_name, src, p, stored, metrics, {})
    return TrainResult(model_name=model_name, version=version, epochs=run.epochs,
                       converged=run.converged, train_loss=run.train_loss,
                       validation_loss=run.valid_loss, seconds=seconds, rows=prep.n_train,
                       skipped=prep.skipped, history=run.history, warnings=notes)


def _epochs(session: TrainingSession, src: Source | PackedTable, p: dict, prep: _Prepared,
            model_name: str, run_id: int, started: float) -> TrainResult:
    """A GLM's epochs, then its checks (divergence, separation, convergence); store it."""
    kind = kinds.get("glm")
    _resolve_defaults(session, p, prep, _feature_names(src, prep))
    run = _run_epochs(session, kind, p, prep, run_id)
    model, history, converged = run.model, run.history, run.converged
    train_loss, valid_loss, epoch = run.train_loss, run.valid_loss, run.epochs
    loss_scale, train_sql = run.loss_scale, run.train_sql
    l1, l2 = penalties.mix(p["penalty"], p["l1_ratio"])
    weights = class_weights(p["class_weight"], prep.classes, prep.n_train, prep.n_pos,
                            prep.class_labels)
    alpha = p["alpha"] if p["penalty"] != "none" else 0.0
    w = np.zeros(prep.d) if model is None else model.w
    b = 0.0 if model is None else model.b
    t = 0.0 if model is None else model.t
    trivial, trivial_what, judged_loss = _check_not_worse_than_trivial_glm(
        session, p, prep, train_sql, train_loss, weights, loss_scale, model)
    if prep.in_label_order or p.get("shuffle") == "never":
        train_loss = judged_loss  # the stored model's: the one along the way tracked the order
    notes = list(prep.notes)
    separated = None
    if p["loss"] == "logistic" and (alpha == 0.0 or l1 + l2 == 0.0):
        # The stored model separating every row is a certificate (one pass); otherwise ask
        # the data with a short Newton run (SGD's model rarely separates every row).
        names = [_feature_name(src.features, src.array_feature, i) for i in range(prep.d)]
        separated = ("the data" if _separated(session, train_sql, prep, w, b)
                     else data_separated(session, prep, p, names))
    if separated:
        converged = False
        notes.append(
            f"the classes are (quasi-)perfectly separated by {separated}: unpenalised "
            "logistic regression has no finite maximum-likelihood estimate, so the stored "
            "coefficients are one separating direction whose size grows with the epochs "
            "(not converged). For a finite answer use penalty => 'l2' with alpha > 0 "
            "(for example alpha => 0.0001)")
    elif not converged and p["tol"] is not None:  # tol None: no convergence test asked
        notes.append(
            f"training stopped after {counted(epoch, 'epoch')} without converging (the loss did "
            f"not settle within tol = {p['tol']:g} for n_iter_no_change = "
            f"{counted(p['n_iter_no_change'], 'epoch')}), so the model may be far from the "
            "optimum. "
            + (prep.unscaled or (_full_batch_advice(p) if p["batch_size"] == 0 else
                                 "Raise max_epochs, or try batch_size => 32 with "
                                 "learning_rate => 'adaptive'"
                                 + (", or an exact fit with solver => 'newton'"
                                    if p["loss"] in EXACT_LOSSES else ""))))
    falling = _still_falling(history)
    overshoot = _overshoot_note(judged_loss, trivial, "eta0", p["eta0"], trivial_what,
                                p["standardize"], falling=falling,
                                advice=prep.unscaled or (_full_batch_advice(p) if falling
                                                         and p["batch_size"] == 0 else None))
    if overshoot is not None:
        converged = False
        notes.append(overshoot)
    if prep.unscaled:
        converged = False
    share = validation_share(prep, p["validation_fraction"], notes)
    stored = kind.export(p, prep, model)
    coef, intercept = np.asarray(stored.model["coef"]), float(stored.model["intercept"])
    features = src.features
    _check_finite(coef, intercept, train_loss, features, src.array_feature, prep.unscaled)
    seconds = time.monotonic() - started
    metrics = {"train_loss": train_loss, "validation_loss": valid_loss, "epochs": epoch,
               "converged": converged, "rows": prep.n_train, "validation_rows": prep.n_valid,
               "validation_share": share, "skipped_rows": prep.skipped, "seconds": seconds,
               "block_dtype": ({4: "float32", 8: "float64"}[prep.itemsize] if prep.packed
                               else None),
               "constant_features": [_feature_name(features, src.array_feature, i)
                                     for i in prep.constant]}
    if p["loss"] == "logistic":
        metrics["separation"] = bool(separated)
    if prep.classes is not None:
        names = prep.class_labels or [f"{c:g}" for c in prep.classes]
        metrics["class_weight"] = {names[0]: weights[0], names[1]: weights[1]}
    for note in notes:
        session.warn(note)
    fitted = {"mu": None if prep.mu is None else prep.mu.tolist(),
              "sd": None if prep.sd is None else prep.sd.tolist(),
              "y_mean": prep.y_mean, "y_sd": prep.y_sd, "coef_standardized": w.tolist(),
              "intercept_standardized": b, "t": t}
    if prep.unwritten is not None:
        prep.unwritten(session)
    version = store_model(session, model_name, src, p, stored, metrics, fitted)
    return TrainResult(model_name=model_name, version=version, epochs=epoch,
                       converged=converged, train_loss=train_loss, validation_loss=valid_loss,
                       seconds=seconds, rows=prep.n_train, skipped=prep.skipped,
                       history=history, warnings=notes)


#: What a full-batch run that did not get there can do instead (not a larger eta0: gradient
#: descent diverges beyond 2 / L, twice the automatic one).
FULL_BATCH_ADVICE = ("Full-batch gradient descent takes one step an epoch: raise max_epochs, "
                     "leave batch_size unset (mini-batches)")


def _full_batch_advice(p: dict) -> str:
    """:data:`FULL_BATCH_ADVICE`, and the exact fit where the loss has one."""
    return FULL_BATCH_ADVICE + (", or an exact fit with solver => 'newton'"
                                if p["loss"] in EXACT_LOSSES else "")


#: A final training loss this many times the trivial model's (:func:`trivial_glm_loss`: the
#: best constant model the run could express) is a run that went astray: it is never stored.
WORSE_THAN_ZERO = 100.0


def zero_model_loss(loss: str, weights: tuple[float, float], n: int, n_pos: int) -> float | None:
    """Mean loss of the all-zero model (w = 0, b = 0) of a classifier, from class counts.

    Every row's margin is 0: the logistic loss is log 2 and the hinge loss 1 per row, times its
    class weight. None for squared loss (it depends on the labels).
    """
    per_row = losses.get(loss).zero_row_loss
    if per_row is None or n <= 0:
        return None
    return per_row * (weights[0] * (n - n_pos) + weights[1] * n_pos) / n


def trivial_glm_loss(loss: str, fit_intercept: bool, *, weights: tuple[float, float] = (1, 1),
                     n: int = 0, n_pos: int = 0, y_mean: float | None = None,
                     y_sd: float | None = None) -> tuple[float | None, str]:
    """Mean loss of the best model without features that a GLM can express, and what it is.

    With an intercept, a constant: the label's mean for squared loss (sd²/2), the class priors
    for logistic loss (their weighted entropy), the majority class for hinge loss (margin ±1,
    the minority's weighted share times 2); without, the all-zero model (½ the label's mean
    square; log 2, 1 per row). A run that ends far above it is worse than ignoring the
    features. None when a squared loss's label moments are not given.
    """
    if loss == "squared":
        if y_mean is None or y_sd is None:
            return None, ""
        if fit_intercept:
            return 0.5 * y_sd * y_sd, "predicting the label's mean"
        return 0.5 * math.hypot(y_mean, y_sd) ** 2, "predicting 0 (fit_intercept is false)"
    zero = zero_model_loss(loss, weights, n, n_pos)
    if zero is None or not fit_intercept:
        return zero, "every weight zero"
    neg, pos = weights[0] * (n - n_pos) / n, weights[1] * n_pos / n  # weighted class shares
    if loss == "hinge":
        return 2.0 * min(neg, pos), "predicting the majority class"
    share = pos / (neg + pos) if neg + pos > 0 else 0.0
    entropy = -sum(w * math.log(q) for w, q in ((neg, 1.0 - share), (pos, share)) if w > 0)
    return entropy, "predicting the class priors"


def trivial_verdict(train_loss: float, trivial: float | None) -> str | None:
    """How a run's final training loss compares with its trivial model's: ``"diverged"`` above
    :data:`WORSE_THAN_ZERO` times it (refused), ``"overshoot"`` above :data:`WORSE_THAN_START`
    times it (stored, not converged, with a warning), else None (also when there is no
    reference: a trivial loss of 0 or unknown, or a loss that is not finite)."""
    if trivial is None or not trivial > 0 or not math.isfinite(train_loss):
        return None
    if train_loss > WORSE_THAN_ZERO * trivial:
        return "diverged"
    if train_loss > WORSE_THAN_START * trivial:
        return "overshoot"
    return None


def _trivial_glm(session: TrainingSession, p: dict, prep: _Prepared, train_sql: str,
                 train_loss: float, weights: tuple[float, float],
                 loss_scale: float) -> tuple[float | None, str]:
    """The GLM's :func:`trivial_glm_loss` in the reported units, and what that model is.

    Classifiers' come from the class counts; squared loss's from the label's moments that
    preparation measured. Moments from a sample of the table (``shuffle => 'blocks'``) are
    only an estimate: when the run's loss is within a factor 2 of it, one loss-only pass of
    the constant model at the sample's mean measures it (an upper bound of the best constant's
    loss, tight for a sample of hundreds of rows). Not measured at all (a partition's rows read
    in place, unstandardised): the training rows' label is read once, then.
    """
    fit = bool(p["fit_intercept"])
    if p["loss"] != "squared":
        return trivial_glm_loss(p["loss"], fit, weights=weights, n=prep.n_train,
                                n_pos=prep.n_pos)
    stats = prep.y_stats
    if stats is None and prep.layout is not None:  # y: the raw label (not standardised)
        m, sd = _label_moments(session, prep.train, "true", "y", prep.y_max_abs)
        stats = (prep.y_mean + prep.y_sd * m, prep.y_sd * sd)
    if stats is not None:
        trivial, what = trivial_glm_loss("squared", fit, y_mean=stats[0], y_sd=stats[1])
        if prep.y_stats_exact or stats is not prep.y_stats or train_loss <= 0.5 * trivial:
            return trivial, what
        centre = (stats[0] - prep.y_mean) / prep.y_sd if fit else 0.0  # in the coded units
    else:
        centre, what = 0.0, "every weight zero"
    init = glm.initialize(prep.d, loss=p["loss"], batch_size=glm.EVALUATE,
                          w=np.zeros(prep.d), b=centre, mu=prep.mu, sd=prep.sd,
                          itemsize=prep.itemsize, y_coding=prep.y_coding)
    return glm.decode(session.query(train_sql, [init])[0][0]).data_loss * loss_scale, what


def _check_not_worse_than_trivial_glm(session: TrainingSession, p: dict, prep: _Prepared,
                                      train_sql: str, train_loss: float,
                                      weights: tuple[float, float], loss_scale: float,
                                      model: glm.Model | None = None
                                      ) -> tuple[float | None, str, float]:
    """Raise :class:`Diverged` when the final loss is far worse than the trivial model's
    (:func:`trivial_verdict`); otherwise return that model's loss, what it is, and the loss
    judged (for :func:`_overshoot_note`).

    The epoch's loss is measured along the way, at the iterates; the stored ``model`` may be
    another point (the mean of the iterates with ``average``, or an iterate past the noisy
    steps). When that loss is suspect, one loss-only pass measures the stored model's, and
    the verdict is on it: on data with no signal, one epoch of steps at a rate held for the
    epoch ran 5% above the class priors along the way while ending near them.

    Such a run oscillates at a loss no model near the data would have (a huge unstandardised
    column with too large a learning rate), or never brought its intercept to an
    unstandardised label far from 0: it must not be stored as converged. The reference is the
    best constant model (the label's mean, the class priors) when the run fits an intercept,
    not the all-zero model where every run starts: on a label of mean 1000 and spread 1 the
    zero model's loss is 500,000 and the mean's 0.5.
    """
    if not math.isfinite(train_loss):
        return None, "", train_loss  # the schedule has raised already
    trivial, what = _trivial_glm(session, p, prep, train_sql, train_loss, weights, loss_scale)
    # In table order (shuffle => 'never'), or on blocks of a table stored in label order
    # (prep.in_label_order), the loss along the way says nothing of the stored model: on a
    # table sorted by label it tracks each run of one class (0.28 reported where the stored
    # model's was 2.04, the class priors' 0.59; 0.428 where the optimum is 0.458).
    if model is not None and (trivial_verdict(train_loss, trivial) is not None
                              or p.get("shuffle") == "never" or prep.in_label_order):
        ev = glm.KIND.initialize(p, prep, model, evaluate=True)
        em = glm.decode(session.query(train_sql, [ev])[0][0])
        # the stored model's data loss on every training row, plus its penalty
        train_loss = dataclasses.replace(model, rows=em.rows, loss_sum=em.loss_sum
                                         ).mean_loss * loss_scale
    if trivial_verdict(train_loss, trivial) == "diverged":
        raise Diverged(
            "training diverged",
            detail=f"The final training loss {train_loss:.6g} is more than "
                   f"{WORSE_THAN_ZERO:g} times the loss of the trivial model ({trivial:.6g}, "
                   f"{what}) with learning_rate => '{p['learning_rate']}' and eta0 => "
                   f"{p['eta0']:g}.",
            hint=(prep.unscaled + "." if prep.unscaled else
                  ("Use standardize => true, or lower eta0" if not p["standardize"]
                   else "Lower eta0") + f" (try {p['eta0'] / 10:g}), or use learning_rate => "
                  "'adaptive' or 'bold_driver'.") + " No model was stored.")
    return trivial, what, train_loss


#: A final training loss above this multiple of the trivial model's (the best constant model
#: the run could express, or the all-zero model training starts from) is a run whose steps
#: overshoot or that never got there: training left the model worse than ignoring the
#: features. Not reported as converged, with a warning. (Above 1 for the noise of SGD's last
#: steps on data with no signal, where a good run ends at the trivial loss.)
WORSE_THAN_START = 1.05


def _still_falling(history: list[EpochRecord]) -> bool:
    """True when every epoch's training loss was below the one before (at least two epochs):
    a run still on its way down, whose steps were too small rather than too large."""
    losses = [r.train_loss for r in history]
    return len(losses) >= 2 and all(b < a for a, b in zip(losses, losses[1:]))


def _overshoot_note(train_loss: float, zero: float | None, rate: str, value: Any,
                    what: str = "every weight zero", standardize: bool = True,
                    falling: bool = False, advice: str | None = None) -> str | None:
    """The warning for a run that ended worse than its trivial model, or None.

    ``falling``: the loss fell every epoch, so the steps were too small (or decayed too
    fast) to get there, and the advice is the other way round: a larger rate or more epochs.
    ``advice``, when given, is the whole advice: no rate helps when the columns' scales differ
    too much (:func:`_note_unscaled`), and a larger one than full-batch steps' 1 / L diverges
    (:data:`FULL_BATCH_ADVICE`).
    """
    if trivial_verdict(train_loss, zero) != "overshoot":
        return None
    if advice:
        return (f"the final training loss {train_loss:.6g} is above the loss of the trivial "
                f"model ({zero:.6g}, {what})" + (" though it fell every epoch" if falling
                                                 else "")
                + ", so the model is worse than ignoring the features and is not reported as "
                f"converged. {advice}")
    why, verb, factor, more = ((" though it fell every epoch: the steps were too small to get "
                                "there", "raise", 10.0, " or max_epochs") if falling else
                               (": the steps overshoot or never got there", "lower", 0.1, ""))
    try_value = (f" (try {value * factor:g})" if isinstance(value, (int, float)) and value
                 else "")
    return (f"the final training loss {train_loss:.6g} is above the loss of the trivial model "
            f"({zero:.6g}, {what}){why}, so the model is worse than ignoring the features and "
            "is not reported as converged. "
            + (f"Use standardize => true, or {verb} " if not standardize
               else verb.capitalize() + " ")
            + f"{rate}{try_value}{more}"
            + (", or use learning_rate => 'adaptive'" if rate == "eta0" else ""))


def _check_not_worse_than_trivial(session: TrainingSession, kind: kinds.ModelKind, p: dict,
                                  prep: _Prepared, run: _Run) -> tuple[float | None, str]:
    """Raise :class:`Diverged` when a kind's final training loss is more than
    :data:`WORSE_THAN_ZERO` times the loss of its trivial model (the GLM's check,
    :func:`_check_not_worse_than_trivial_glm`, for the other kinds); otherwise return that
    loss and what the model is.

    The kind names its trivial model in ``extra["trivial_loss"]``: ``(p, data) -> (loss,
    what)``, the mean loss per row in the epoch's (coded) units, or None when it must be
    measured, then by one loss-only pass of ``extra["trivial_init"](p, data)`` (an evaluation
    state of that model) over the training rows. A cross-entropy's trivial model is the
    all-zero one, as the GLM's without an intercept: its uniform probabilities lose log K per
    row, at least the class priors' entropy (the best constant model), so the bound is never
    tighter than 100 times the priors' loss; a regression's predicts the label's mean (½ per
    row in standardised units, the label's variance over 2 from the moments preparation
    measured otherwise), not 0, which on a label far from 0 would excuse any model. A run this
    far above it blew up in its first epochs (where a bound on the loss's growth since epoch 1
    never fires) or never got near the data: it is refused, and nothing is stored.
    """
    trivial = kind.extra.get("trivial_loss")
    if trivial is None or not math.isfinite(run.train_loss):
        return None, ""
    zero, what = trivial(p, prep)
    if zero is None:
        init = kind.extra["trivial_init"](p, prep)
        zero = kind.decode(session.query(run.train_sql, [init])[0][0]).data_loss
    zero *= run.loss_scale
    if trivial_verdict(run.train_loss, zero) != "diverged":
        return zero, what
    rate = kind.extra.get("rate_name", "eta0")
    value = p.get(rate)
    advice = f"Lower {rate}" + (f" (try {value / 10:g})" if value else "")
    if rate == "eta0":
        advice += ", or use learning_rate => 'adaptive' or 'bold_driver'"
    if not p.get("standardize", True):
        advice += ", or use standardize => true"
    if prep.unscaled:
        advice = prep.unscaled
    raise Diverged(
        "training diverged",
        detail=f"The final training loss {run.train_loss:.6g} is more than "
               f"{WORSE_THAN_ZERO:g} times the loss of the trivial model ({zero:.6g}, {what})"
               + (f" with {rate} => {value:g}" if value else "") + ".",
        hint=advice + ". No model was stored.")


def _check_finite(coef: np.ndarray, intercept: float, train_loss: float,
                  features: Sequence[str], array_feature: bool,
                  unscaled: str | None = None) -> None:
    """Never store a non-finite coefficient, intercept or loss: name what overflowed
    (``unscaled``: :func:`_note_unscaled`'s advice, then the hint)."""
    bad = [_feature_name(features, array_feature, i)
           for i in np.flatnonzero(~np.isfinite(np.asarray(coef, dtype=np.float64)))]
    if not bad and math.isfinite(intercept) and math.isfinite(train_loss):
        return
    what = ("the coefficients of " + ", ".join(bad)) if bad else (
        "the intercept" if not math.isfinite(intercept) else "the training loss")
    raise Diverged(
        f"training gave a non-finite value for {what}",
        detail="A coefficient, the intercept or the loss overflowed float8 (inf or NaN): the "
               "columns' values are too small or too large for the model to be represented. "
               "No model was stored.",
        hint=unscaled + "." if unscaled else
             "Rescale " + (", ".join(bad) if bad else "the columns")
             + " in a view (for example multiply by a power of ten), use standardize => true, "
               "or lower eta0.")


def _drop_work(session: TrainingSession, work: _Work, *, quiet: bool = False) -> None:
    """Drop the run's schema with its working copies; when ``quiet``, ignore errors."""
    try:
        _drop_schema(session, work.schema)
    except Exception as exc:
        if not quiet or cancelled_run(exc) is not None:  # a cancel is never swallowed: it
            raise                                       # would not come again (a timeout)
    work.schema = None


def _drop_schema(session: TrainingSession, schema: str | None) -> None:
    """Drop a working schema and what it holds, silently (no NOTICE to the client)."""
    if schema is None or session.query("SELECT to_regnamespace(%s) IS NULL AS gone",
                                       [session.ident(schema).replace("%%", "%")])[0][0]:
        return
    with settings_for_transaction(session, {"client_min_messages": "warning"}):
        session.query(f"DROP SCHEMA {session.ident(schema)} CASCADE")


def _check_packed_columns(table: PackedTable, label: str, features: Sequence[str] | str) -> None:
    """Training on a packed table must name the label and features it was packed with."""
    given = [features] if isinstance(features, str) else list(features or [])
    if label != table.label or given != table.features:
        raise InvalidData(
            f"{table.name} was packed with other columns",
            detail=f"It holds label {table.label!r} and features {table.features}; the call "
                   f"names label {label!r} and features {given}.",
            hint="Name the packed columns, or pack the source again with the new ones.")


def _clean_interrupted(session: TrainingSession) -> None:
    """Drop the working schemas of the caller's runs whose backend is gone (killed clients).

    ``bismarck._dead_runs`` (a bookkeeping function) marks them interrupted and hands back only
    schemas it made for this very role and that this role still owns; they are dropped here, as
    the caller, and a schema that cannot be dropped never fails the training. Other roles' runs
    are left to them, so clean-up never waits for anyone, and nothing waits for it.
    """
    stale = session.query(
        "SELECT d.run_id, d.work_schema FROM bismarck._dead_runs(bismarck._ticket()) AS d")
    for run_id, schema in stale:
        _drop_work(session, _Work(schema), quiet=True)
        _forget_work(session, run_id)
    if stale:
        session.checkpoint()


def _forget_work(session: TrainingSession, run_id: int) -> None:
    """Clear the run's working schema from its row once the schema is gone."""
    try:
        session.query("SELECT bismarck._forget_work(bismarck._ticket(), %s) AS forgotten", [run_id])
    except Exception as exc:  # a closed connection: the next training cleans up
        if cancelled_run(exc) is not None:
            raise


def record_epoch(session: TrainingSession, run_id: int, rec: EpochRecord) -> None:
    """Append one epoch to the run's history (``bismarck.training_history``)."""
    session.query(
        "SELECT bismarck._record_epoch(bismarck._ticket(), %s, %s::integer, %s::float8, "
        "%s::float8, %s::float8, %s::bigint, %s::float8, %s::integer, %s::jsonb) AS recorded",
        [run_id, rec.epoch, rec.train_loss, rec.validation_loss, rec.learning_rate, rec.rows,
         rec.seconds, rec.workers, None if rec.detail is None else json.dumps(_finite(rec.detail))])


def _partition_detail(kind: kinds.ModelKind, prep: _Prepared,
                      parts: list[tuple[object, bytes]], score_parts: list[tuple[object, bytes]],
                      valid_parts: list[tuple[object, bytes]],
                      loss_scale: float) -> dict[str, Any]:
    """The history's per-partition detail of one epoch: rows and losses of each partition,
    and the partitions skipped for want of rows.

    ``train_loss`` and ``validation_loss`` are the averaged model's mean loss on the
    partition's training and held-out rows (no penalty); ``local_loss`` is the partition's own
    model's loss along its epoch (with its penalty), before averaging.
    """
    score = {k: kind.decode(kind.finalize(s)) for k, s in score_parts}
    valid = {k: kind.decode(kind.finalize(s)) for k, s in valid_parts}
    out = []
    for key, state in parts:
        e = kind.decode(kind.finalize(state))
        t, v = score.get(key), valid.get(key)
        out.append({"partition": prep.layout.name_of(key), "rows": e.rows,
                    "train_loss": None if t is None else t.data_loss * loss_scale,
                    "local_loss": e.mean_loss * loss_scale,
                    "validation_loss": None if v is None else v.data_loss * loss_scale})
    seen = {prep.layout.name_of(k) for k, _ in parts}
    skipped = [q.name for q in prep.layout.partitions if q.name not in seen]
    return {"partitions": out, "skipped": skipped}


def validation_share(prep: _Prepared, asked: float, notes: list[str]) -> float:
    """The share of usable rows held out; a note when it is more than 0.01 off ``asked``."""
    share = prep.n_valid / max(prep.n_train + prep.n_valid, 1)
    if asked > 0 and abs(share - asked) > 0.01:
        notes.append(f"validation_fraction => {asked:g} held out {prep.n_valid} of "
                     f"{prep.n_train + prep.n_valid} rows ({share:.3g}): the table is too "
                     "small for the share asked")
    return share


def store_model(session: TrainingSession, model_name: str, src: Source | PackedTable,
                p: dict, stored: kinds.Stored, metrics: dict, fitted: dict) -> int:
    """Store a trained model of any kind as the next version of ``model_name``; its version.

    ``stored`` is the kind's stored form (:meth:`ModelKind.export`): its ``model`` goes to the
    ``stored`` jsonb column and its ``state`` to the bytea column; a GLM's loss, coefficients
    and intercept also fill their own columns. NaN and infinities in ``p``, ``metrics``,
    ``fitted`` and ``stored.model`` become JSON nulls.
    """
    stored = _with_label_classes(src, stored)
    glm_model = stored.model if stored.kind == "glm" else {}
    coef = glm_model.get("coef")
    intercept = glm_model.get("intercept")
    return int(session.query(
        "SELECT bismarck._store_model(bismarck._ticket(), %s, %s, %s, %s, %s::text[], %s, "
        "%s::float8[], %s::float8, %s::float8[], %s::jsonb, %s::jsonb, %s::jsonb, %s, "
        "%s::jsonb, %s::bytea)",
        [model_name, src.name, src.label, p.get("loss"), list(src.features), src.array_feature,
         None if coef is None else [float(c) for c in coef],
         None if intercept is None else float(intercept), stored.classes,
         json.dumps(_finite(p)), json.dumps(_finite(metrics)), json.dumps(_finite(fitted)),
         stored.kind, json.dumps(_finite(dict(stored.model))), stored.state])[0][0])


def _with_label_classes(src: Source | PackedTable, stored: kinds.Stored) -> kinds.Stored:
    """A classifier's stored form with the label's type and its class values (as text, in
    the order of the classes) when the label is not a number: ``label_type`` and
    ``class_labels`` in ``stored.model``, which predict_class, predict_label, classes and
    evaluate read. Numeric labels' stored forms are unchanged."""
    if stored.classes is None or not isinstance(src, Source):
        return stored
    if src.class_labels is not None:
        labels = list(src.class_labels)
    elif src.label_type == "boolean":
        labels = ["true" if c else "false" for c in stored.classes]
    else:
        return stored
    model = {**stored.model, "label_type": src.label_type, "class_labels": labels}
    return dataclasses.replace(stored, model=model)


def _finite(v: Any) -> Any:
    """JSON cannot hold NaN/inf: store them as null, at any depth of dicts and lists."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _feature_name(features: Sequence[str], array_feature: bool, i: int) -> str:
    """A feature's name for messages: its column, or ``column[i]`` (1-based) of an array."""
    return f"{features[0]}[{i + 1}]" if array_feature else features[i]


def _feature_names(src: Source | PackedTable, prep: _Prepared) -> list[str]:
    """Every feature's :func:`_feature_name`."""
    return [_feature_name(src.features, src.array_feature, i) for i in range(prep.d)]


#: Each row whose margin is not positive adds at least log 2 to the logistic loss.
_LOG2 = math.log(2.0)
#: The scaled margins' size in the separation check: rows separated by a relative margin
#: above ~1e-10 of the coefficients' size contribute exp(-40) or less.
_CERTIFY_SCALE = 1e12


def _separated(session: TrainingSession, train_sql: str, prep: _Prepared, w: np.ndarray,
               b: float) -> bool:
    """Whether the model separates the training rows perfectly (a certificate, not a guess).

    The logistic loss of ``c·(w, b)`` summed over the rows is below log 2 only if every row's
    margin is positive: then the classes are linearly separable and the unpenalised maximum
    likelihood does not exist (statsmodels reports the same as PerfectSeparation). ``c`` makes
    the margins huge, so any separated row adds almost nothing. One evaluation pass.
    """
    size = float(np.abs(w).sum() + abs(b))
    if not size > 0 or not math.isfinite(size):
        return False
    c = _CERTIFY_SCALE / size
    ev = glm.initialize(prep.d, loss="logistic", batch_size=glm.EVALUATE, w=w * c, b=b * c,
                        mu=prep.mu, sd=prep.sd, itemsize=prep.itemsize, y_coding=prep.y_coding)
    m = glm.decode(session.query(train_sql, [ev])[0][0])
    return m.rows > 0 and m.loss_sum < _LOG2


def result_row(r: TrainResult) -> dict[str, Any]:
    """The SQL-facing columns of a result."""
    d = asdict(replace(r, history=[]))  # the records' snapshots are not copied
    d.pop("history")
    return d
