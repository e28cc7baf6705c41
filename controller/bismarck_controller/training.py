"""Library calls behind the CLI and the Python API: train, predict, evaluate, models, history.

Training runs the engine's loop (``bismarckpy.loop``) from this process over psycopg; predict
and evaluate run in SQL so the rows stay in the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from bismarck_controller.session import PsycopgSession, cancels_as_runs, qualified, running
from bismarckpy import evaluate as engine_evaluate
from bismarckpy import loop, packing
from bismarckpy.errors import InsufficientPrivilege, InvalidData, UndefinedObject


def train(conn: psycopg.Connection, source: str, label: str, features: Sequence[str] | str,
          model_name: str | None = None,
          on_epoch: Callable[[loop.EpochRecord], None] | None = None, *, kind: str = "glm",
          **params: Any) -> loop.TrainResult:
    """Train a model of ``kind`` on ``source``; store it as the next version of ``model_name``.

    ``params`` are the names of the kind's parameters (:attr:`bismarckpy.kinds.ModelKind.params`;
    for a GLM :data:`bismarckpy.params.GLM_PARAMS`: ``loss``, ``alpha``, ...).
    """
    session = PsycopgSession(conn, on_epoch)
    with running(conn), cancels_as_runs():
        return loop.train(session, source=qualified(conn, source), label=label,
                          features=features, model_name=model_name or source, kind=kind,
                          **params)


def pack(conn: psycopg.Connection, source: str, label: str, features: Sequence[str] | str,
         packed_table: str, *, block_size: int | None = None, dtype: str | None = None,
         seed: int | None = None) -> dict[str, Any]:
    """Write a reusable packed copy of ``source`` (see ``bismarck.pack``) and commit it."""
    source = qualified(conn, source)
    try:
        # Read as CREATE TABLE would (the caller's current schema), before the session pins.
        target = new_table(conn, packed_table).as_string(conn)
        with running(conn):
            result = packing.pack_table(PsycopgSession(conn), source=source, label=label,
                                        features=features, packed_table=target,
                                        block_size=block_size, dtype=dtype, seed=seed)
            conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return result


def evaluate(conn: psycopg.Connection, model: str, source: str,
             version: int | None = None) -> dict[str, float | None]:
    """Metrics of a stored model on a table or view, computed in the server."""
    session = PsycopgSession(conn)
    source = qualified(conn, source)
    try:
        with running(conn):
            rows = engine_evaluate.evaluate(session, model, source, version)
    finally:
        conn.rollback()
    return {r["metric"]: r["value"] for r in rows}


def predict(conn: psycopg.Connection, model: str, source: str, *, version: int | None = None,
            output: str | None = None, limit: int | None = None, classes: bool = False,
            columns: Sequence[str] | None = None, order_by: str | None = None,
            margin: bool = False, proba: bool = False,
            prediction_column: str = "prediction") -> list[dict[str, Any]] | int:
    """Score every row of ``source`` in the server.

    The score, named ``prediction_column``, is ``bismarck.predict`` (``predict_class`` with
    ``classes``, and without for a softmax or MLP classifier whose label is not a number: the
    class in the label's own type, where ``bismarck.predict`` would refuse a class index;
    ``predict_proba``'s array of class probabilities with ``proba``; the linear
    score x·coef + intercept with ``margin``): NULL for a row with a
    NULL, NaN or infinite feature. Keeps ``source``'s columns (all when ``columns`` is None,
    none when it is empty) beside it; kept and ``order_by`` columns may have any type, only the
    model's features must be numeric. With ``output``, writes them into a new table and returns
    its row count; otherwise returns up to ``limit`` rows as dicts, in ``order_by`` order.

    Raises UndefinedObject (42703) for a kept or ordering column that does not exist,
    InvalidData (42701) when a kept column is named like ``prediction_column``, and (42809)
    for a packed table (score its source instead).
    """
    source = qualified(conn, source)
    session = PsycopgSession(conn)
    try:
        # The output name is read in the caller's context, before the session pins its path.
        created = new_table(conn, output) if output is not None else None
        m = engine_evaluate.load_model(session, model, version)
        src = engine_evaluate.resolve_scored(session, source, None, m["features"])
        available = _column_names(conn, src.name)
        for c in [*(columns or []), *([order_by] if order_by else [])]:
            if c not in available:
                raise UndefinedObject(f'column "{c}" does not exist in {src.name}',
                                      sqlstate="42703",
                                      hint="Available columns: " + ", ".join(available) + ".")
        kept = available if columns is None else list(columns)
        _require_readable(conn, src.name, kept, order_by, all_kept=columns is None)
        if not prediction_column:
            raise InvalidData("the prediction column needs a name", sqlstate="42602",
                              hint="Pass a non-empty name, e.g. --prediction-column score.")
        if prediction_column in kept:
            raise InvalidData(
                f'column "{prediction_column}" specified more than once', sqlstate="42701",
                detail=f'{src.name} has a column "{prediction_column}" already, and the '
                       "scores would be written under the same name.",
                hint="Name the scores otherwise (--prediction-column in the CLI, "
                     "prediction_column= in Python), or leave that column out with --columns "
                     "(columns= in Python).")
        keep = (sql.SQL("s.*, ") if columns is None else
                sql.SQL("").join(sql.SQL("{}, ").format(sql.Identifier("s", c)) for c in columns))
        x = sql.SQL(src.x_expr.replace("%%", "%"))
        name, version = sql.Literal(m["model_name"]), sql.Literal(m["version"])
        if margin:
            score = sql.SQL("bismarck._margin(bismarck._model({}, {}), {})").format(
                name, version, x)
        elif engine_evaluate.label_type(m) is not None and not proba and (
                classes or engine_evaluate.predicts_class(m)):
            # the label's own values: bismarck.predict refuses a class index in their place
            score = _typed_class(conn, engine_evaluate.label_type(m), name, x, version)
        else:
            func = "predict_proba" if proba else "predict_class" if classes else "predict"
            score = sql.SQL("bismarck.{}({}, {}, {})").format(
                sql.Identifier(func), name, x, version)
        select = sql.SQL("SELECT {}{} AS {} FROM {} AS s").format(
            keep, score, sql.Identifier(prediction_column), sql.SQL(src.name))
        if order_by:
            select = sql.SQL("{} ORDER BY {}").format(select, sql.Identifier("s", order_by))
        if created is not None:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE TABLE {} AS {}").format(created, select))
                n = cur.rowcount
            conn.commit()
            return n
        if limit is not None:
            select = sql.SQL("{} LIMIT {}").format(select, sql.Literal(int(limit)))
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(select)
            rows = cur.fetchall()
        conn.rollback()  # read only: end the transaction
        return rows
    except BaseException:
        conn.rollback()
        raise


def _typed_class(conn: psycopg.Connection, label_type: str | None, name: sql.Composable,
                 x: sql.Composable, version: sql.Composable) -> sql.Composable:
    """The class of a model whose label is not a number, in the label's own type
    (``bismarck.predict_class(model, x, NULL::type)``), or as text (``predict_label``) when the
    type is gone. The type's name is the server's own text of a ``regtype``."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_catalog.to_regtype(%s)::pg_catalog.text", [label_type])
        row = cur.fetchone()
    if row is None or row[0] is None:
        return sql.SQL("bismarck.predict_label({}, {}, {})").format(name, x, version)
    return sql.SQL("bismarck.predict_class({}, {}, NULL::{}, {})").format(
        name, x, sql.SQL(row[0]), version)


def _require_readable(conn: psycopg.Connection, relation: str, kept: Sequence[str],
                      order_by: str | None, *, all_kept: bool) -> None:
    """Refuse kept or ordering columns the role may not SELECT (it holds privileges on some
    columns only), naming them, with the columns it may read for ``--columns``."""
    with conn.cursor() as cur:
        cur.execute("SELECT a.attname::text, pg_catalog.quote_ident(a.attname), "
                    "pg_catalog.has_column_privilege(a.attrelid, a.attnum, 'SELECT') "
                    "FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = "
                    "pg_catalog.to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
                    "ORDER BY a.attnum", [relation])
        rows = cur.fetchall()
        may = {name: ok for name, _, ok in rows}
        quoted = {name: q for name, q, _ in rows}
        cur.execute("SELECT pg_catalog.quote_ident(current_user::text)")
        role = cur.fetchone()[0]
    missing = [c for c in dict.fromkeys([*kept, *([order_by] if order_by else [])])
               if not may.get(c, True)]
    if not missing or not any(may.values()):  # no column at all: PostgreSQL's own error
        return
    readable = [c for c, ok in may.items() if ok]
    names = ", ".join(quoted[c] for c in missing)
    raise InsufficientPrivilege(
        f"permission denied for column{'s' if len(missing) > 1 else ''} {names} of {relation}",
        sqlstate="42501",
        detail=("Without --columns every column of the table is kept beside the prediction. "
                if all_kept else "") + "You may read "
               + ", ".join(readable) + ".",
        hint="Keep only columns you may read: --columns " + ",".join(readable)
             + " (columns= in Python; '' keeps none), or ask the owner of "
             f"{relation} to run GRANT SELECT ({names}) ON {relation} TO {role}.")


def _column_names(conn: psycopg.Connection, relation: str) -> list[str]:
    """The columns of ``relation`` (a name as PostgreSQL prints it), in table order."""
    with conn.cursor() as cur:
        cur.execute("SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", [relation])
        return [r[0] for r in cur.fetchall()]


def new_table(conn: psycopg.Connection, name: str) -> sql.Identifier:
    """The identifier of a table to create, from a name written as in SQL.

    The server's ``parse_ident`` splits it, so it reads as every source name does (those go
    through ``to_regclass``): ``Sales.Scored`` is ``sales.scored``, ``"Sales"."Scored"`` keeps
    its case, ``"a.b"`` is one name with a dot. Raises InvalidData (42602) for a malformed
    name and UndefinedObject (42P07) when the relation exists already. A name without a schema
    gets the caller's ``current_schema()``, where ``CREATE TABLE`` would put it (call this in the
    caller's context, before a session pins the search path).
    """
    try:  # an error aborts the transaction: the caller rolls back
        with conn.cursor() as cur:
            cur.execute("SELECT pg_catalog.parse_ident(%s::pg_catalog.text), "
                        "pg_catalog.to_regclass(%s::pg_catalog.text)::pg_catalog.text, "
                        "pg_catalog.current_schema()::pg_catalog.text", [name, name])
            parts, existing, schema = cur.fetchone() or (None, None, None)
    except psycopg.Error as exc:
        raise InvalidData(f'invalid table name "{name}"', sqlstate="42602",
                          detail=exc.diag.message_primary,
                          hint='Use name or schema.name; quote names with capitals or dots, '
                               'e.g. \'"Sales"."Scored"\'.') from None
    if existing is not None:
        raise UndefinedObject(f'relation "{existing}" already exists', sqlstate="42P07",
                              hint="Drop it first or choose another output name.")
    if len(parts) == 1 and schema is not None:
        parts = [schema, *parts]
    return sql.Identifier(*parts)


def models(conn: psycopg.Connection, name: str | None = None) -> list[dict[str, Any]]:
    """Registry rows, newest first; all models or the versions of one."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT model_name, version, loss, source, label, features, coef, intercept, "
            "classes, params, metrics, created_at, kind, stored FROM bismarck.models "
            "WHERE %s::text IS NULL OR model_name = %s "
            "ORDER BY model_name, version DESC", [name, name])
        rows = cur.fetchall()
    conn.rollback()
    return rows


def model(conn: psycopg.Connection, name: str, version: int | None = None) -> dict[str, Any]:
    """One registry row (latest version unless given); a clear error when it does not exist."""
    with conn.cursor(row_factory=dict_row) as cur:
        try:
            cur.execute("SELECT * FROM bismarck._model(%s, %s::int)", [name, version])
            row = cur.fetchone()
        finally:
            conn.rollback()
    assert row is not None
    return row


def coefficients(conn: psycopg.Connection, name: str,
                 version: int | None = None) -> list[dict[str, Any]]:
    """``bismarck.coefficients``: per coefficient, its value, standard error, statistic, p-value."""
    with conn.cursor(row_factory=dict_row) as cur:
        try:
            cur.execute("SELECT feature, coef, std_err, statistic, p_value "
                        "FROM bismarck.coefficients(%s, %s::int)", [name, version])
            rows = cur.fetchall()
        finally:
            conn.rollback()
    return rows


def delete_model(conn: psycopg.Connection, name: str, version: int | None = None) -> int:
    """Delete one version (or all versions) of a model; returns how many rows went."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT bismarck.delete_model(%s, %s::int)", [name, version])
            row = cur.fetchone()
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    assert row is not None
    return int(row[0])


def versions(conn: psycopg.Connection, name: str, version: int | None = None) -> list[int]:
    """The stored versions of model ``name``, newest first, after checking ``version`` is one.

    Raises UndefinedObject (42704) when the model has no versions, or none numbered
    ``version``; the hint lists the versions there are.
    """
    found = [int(r["version"]) for r in models(conn, name)]
    if not found:
        raise UndefinedObject(
            f"model {name!r} does not exist", sqlstate="42704",
            hint="List models with `bismarck models` or SELECT model_name, version FROM "
                 "bismarck.models.")
    if version is not None and version not in found:
        raise UndefinedObject(
            f"model {name!r} has no version {version}", sqlstate="42704",
            hint=f"Its versions are {', '.join(map(str, sorted(found)))}.")
    return found


def history(conn: psycopg.Connection, name: str, version: int | None = None,
            after: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Per-epoch history of a model's runs (one version, or all), oldest first.

    ``after=(run_id, epoch)`` returns only newer rows, for following a live run.
    """
    run, epoch = after or (0, 0)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT model_name, version, run_id, status, epoch, train_loss, validation_loss, "
            "learning_rate, rows, seconds, workers FROM bismarck.training_history "
            "WHERE model_name = %s AND (%s::int IS NULL OR version = %s) "
            "AND (run_id, epoch) > (%s, %s) ORDER BY run_id, epoch",
            [name, version, version, run, epoch])
        rows = cur.fetchall()
    conn.rollback()
    return rows
