"""Entry points of the matrix-factorisation SQL functions (``bismarck.train_mf``, ``predict_mf``,
``recommend_mf``, the ``_mf_*`` aggregate and run functions); reached as ``B.mf.<name>`` from
their PL/Python bodies (``B`` is :mod:`bismarckpy.server`).

The per-backend store of :mod:`bismarckpy.factorization` is :data:`STORE`
(:data:`bismarckpy.kinds.scratch`), which lives as long as the backend's engine in ``GD``.
Stored models read for prediction are cached there too, by name, version and creation time, so
scoring row after row decodes a model once, not per call.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import factorization as mf
from .errors import InsufficientPrivilege, InvalidData, UndefinedObject
from .kinds import scratch

#: Arrays of training runs (factorization's store) and decoded models (key ``_CACHE``): the
#: kinds' per-backend scratch dict.
STORE: dict[Any, Any] = scratch
_CACHE = "bismarck_mf_models"
_CACHE_SIZE = 4


def _guard(plpy: Any, fn, *args: Any) -> Any:
    """:func:`bismarckpy.server._guard`: every error becomes a clean ``plpy.error`` with its
    SQLSTATE, detail and hint (no such model, no privilege, a damaged handle): never a Python
    traceback of an unexpected exception."""
    from .server import _guard as guard

    return guard(plpy, fn, *args)


def train_mf(plpy: Any, args: dict[str, Any]) -> str:
    """``bismarck.train_mf``: run the loop in this backend; JSON envelope of the result."""
    from . import server

    def run() -> dict[str, Any]:
        from . import loop, mf_loop

        a = dict(args)
        result = mf_loop.train_mf(server.PlpySession(plpy), source=a.pop("source"),
                                  row_col=a.pop("row_col"), col_col=a.pop("col_col"),
                                  value_col=a.pop("value_col"), model_name=a.pop("model_name"),
                                  **{k: v for k, v in a.items() if v is not None})
        return loop.result_row(result)
    return server._envelope(plpy, run, "training")


def begin(plpy: Any, model: bytes) -> bytes:
    """``bismarck._mf_begin``: hold a serialised model in this backend; returns its handle."""
    return _guard(plpy, lambda: mf.begin(STORE, mf.loads(model).copy()))


def transition_block(plpy: Any, state: bytes | None, us, is_, vs, init: bytes) -> bytes:
    """SFUNC of ``bismarck._mf_epoch``."""
    return _guard(plpy, mf.transition_block, state, us, is_, vs, init, STORE)


def finalize(plpy: Any, state: bytes | None) -> bytes:
    """FINALFUNC of ``bismarck._mf_epoch`` (the state is the epoch's init: it names the run)."""
    return _guard(plpy, mf.finalize, state, state, STORE)


def export(plpy: Any, handle: bytes) -> bytes:
    """``bismarck._mf_export``: the run's model in stored form."""
    return _guard(plpy, mf.export, STORE, bytes(handle))


def release(plpy: Any, handle: bytes) -> bool:
    """``bismarck._mf_release``: forget the run's arrays."""
    return _guard(plpy, lambda: mf.release(STORE, bytes(handle)) or True)


# -- scoring --------------------------------------------------------------------------------------

_QUERIES = {
    "facts": ("SELECT m.model_name, m.version, m.kind, m.created_at::text AS created, m.source, "
              "m.features, m.label FROM bismarck.models AS m WHERE m.model_name = $1 "
              "AND ($2::integer IS NULL OR m.version = $2) ORDER BY m.version DESC LIMIT 1"),
    "state": ("SELECT m.state FROM bismarck.models AS m WHERE m.model_name = $1 AND "
              "m.version = $2"),
}


def _plan(plpy: Any, name: str) -> Any:
    """A prepared plan of :data:`_QUERIES`, kept for the backend's lifetime (the view filters
    by the current role when it runs, not when it is planned)."""
    plans = STORE.setdefault("bismarck_mf_plans", {})
    plan = plans.get(name)
    if plan is None:
        plan = plans[name] = plpy.prepare(_QUERIES[name], ["text", "integer"])
    return plan


def _model(plpy: Any, model: str, version: int | None) -> tuple[mf.Factors, dict[str, Any]]:
    """The stored factorisation (cached) and its registry facts; clear errors otherwise."""
    # Not through bismarck._model: PL/pgSQL would detoast the whole row (the model's bytes)
    # into its variable on every call; here the bytes are read only when the cache misses.
    found = plpy.execute(_plan(plpy, "facts"), [model, version])
    if not found:  # bismarck._model raises the clear error (no such model, or version)
        plpy.execute(plpy.prepare("SELECT 1 FROM bismarck._model($1, $2)",
                                  ["text", "integer"]), [model, version])
    row = found[0]
    if row["kind"] != "mf":
        raise InvalidData(f'model "{model}" is not a matrix factorisation', sqlstate="22023",
                          detail=f"It is a {row['kind']} model.",
                          hint="Use bismarck.predict for generalized linear models.")
    key = (row["model_name"], row["version"], row["created"])
    cache = STORE.setdefault(_CACHE, {})
    f = cache.get(key)
    if f is None:
        blob = plpy.execute(_plan(plpy, "state"), [row["model_name"], row["version"]])
        f = mf.loads(bytes(blob[0]["state"]))
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = f
    facts = {"name": row["model_name"], "version": row["version"], "source": row["source"],
             "row_col": row["features"][0], "col_col": row["features"][1],
             "value_col": row["label"]}
    return f, facts


def predict(plpy: Any, model: str, row_id: int | None, col_id: int | None,
            unknown: str | None, version: int | None) -> str:
    """``bismarck.predict_mf``: a JSON envelope (the plpgsql wrapper raises its error cleanly)
    of the prediction; null for a NULL id. See :func:`factorization.predict`."""
    from .server import _envelope

    def run() -> float | None:
        f, _ = _model(plpy, model, version)
        if unknown not in (None, *mf.UNKNOWN):
            mf.predict(f, [], [], unknown)  # raises the error naming the choices
        if row_id is None or col_id is None:
            return None
        v = float(mf.predict(f, [row_id], [col_id], unknown or "error")[0])
        return None if math.isnan(v) else v
    return _envelope(plpy, run)


def predict_many(plpy: Any, model: str, row_ids: list | None, col_ids: list | None,
                 unknown: str | None, version: int | None) -> str:
    """``bismarck.predict_mf`` over arrays: a JSON envelope of one prediction per pair (null
    where an id is NULL, or unknown with ``unknown => 'null'``); one call for many pairs."""
    from .server import _envelope

    def run() -> list[float | None] | None:
        f, _ = _model(plpy, model, version)
        if unknown not in (None, *mf.UNKNOWN):
            mf.predict(f, [], [], unknown)  # raises the error naming the choices
        if row_ids is None or col_ids is None:
            return None
        if len(row_ids) != len(col_ids):
            raise InvalidData("row_ids and col_ids differ in length",
                              detail=f"{len(row_ids)} row ids, {len(col_ids)} column ids.")
        ok = [a is not None and b is not None for a, b in zip(row_ids, col_ids)]
        rows = [a for a, g in zip(row_ids, ok) if g]
        cols = [b for b, g in zip(col_ids, ok) if g]
        pred = iter(mf.predict(f, rows, cols, unknown or "error").tolist())
        out = [next(pred) if g else None for g in ok]
        return [None if v is None or math.isnan(v) else v for v in out]
    return _envelope(plpy, run)


def recommend(plpy: Any, model: str, row_id: int | None, k: int | None,
              exclude_rated: bool | None, version: int | None) -> str:
    """``bismarck.recommend_mf``: a JSON envelope of the ``k`` best ``{"col_id", "score"}``
    for ``row_id``, best first; with ``exclude_rated`` (default) leaving out those the
    training source holds for that row."""
    from .server import _envelope

    def run() -> list[dict[str, Any]]:
        f, facts = _model(plpy, model, version)
        if row_id is None:
            return []
        exclude: list[int] = []
        if exclude_rated is None or exclude_rated:
            exclude = _rated(plpy, facts, row_id)
        ids, scores = mf.recommend(f, row_id, 10 if k is None else int(k), exclude)
        return [{"col_id": int(i), "score": float(s)} for i, s in zip(ids, scores)]
    return _envelope(plpy, run)


def _rated(plpy: Any, facts: dict[str, Any], row_id: int) -> list[int]:
    """Column ids the training source holds for ``row_id`` (read as the caller, and only when
    the caller owns that source or trained the model: :func:`_check_trusted`)."""
    _check_trusted(plpy, facts)
    exists = plpy.execute(plpy.prepare("SELECT to_regclass($1) IS NOT NULL AS ok", ["text"]),
                          [facts["source"]])[0]["ok"]
    if not exists:
        raise UndefinedObject(
            f"the training source {facts['source']} of model \"{facts['name']}\" no longer "
            "exists", sqlstate="42P01",
            detail="recommend_mf reads it to leave out the columns a row already has.",
            hint="Pass exclude_rated => false to rank every column.")
    q = plpy.quote_ident
    rows = plpy.execute(plpy.prepare(
        f"SELECT DISTINCT {q(facts['col_col'])}::bigint AS c FROM "
        f"{_relation(plpy, facts['source'])} WHERE {q(facts['row_col'])} = $1 "
        f"AND {q(facts['col_col'])} IS NOT NULL", ["bigint"]), [row_id])
    return [r["c"] for r in rows]


def _check_trusted(plpy: Any, facts: dict[str, Any]) -> None:
    """Refuse to read a training source that neither the caller nor the caller's model chose.

    Reading a relation runs code its owner chose (a view's functions, row-level security
    policies, casts of its column types) with the privileges of the role that reads it. The
    caller names the model, not its source: so the source is read only when the caller owns
    it, or trained the model (and so named the source themselves). Membership does not count
    (a superuser is a member of every role). Raises :class:`InsufficientPrivilege` otherwise.
    """
    row = plpy.execute(plpy.prepare(
        "SELECT c.relowner = r.oid AS owns_source, m.owner::oid = r.oid AS owns_model, "
        "c.relowner::regrole::text AS source_owner, m.owner::text AS model_owner "
        "FROM pg_catalog.pg_class AS c "
        "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
        "CROSS JOIN pg_catalog.pg_roles AS r CROSS JOIN bismarck.models AS m "
        "WHERE ARRAY[n.nspname::text, c.relname::text] = pg_catalog.parse_ident($1) "
        "AND r.rolname = current_user AND m.model_name = $2 AND m.version = $3",
        ["text", "text", "integer"]),
        [facts["source"], facts["name"], facts["version"]])
    if not row:
        raise UndefinedObject(
            f"the training source {facts['source']} of model \"{facts['name']}\" no longer "
            "exists", sqlstate="42P01",
            detail="recommend_mf reads it to leave out the columns a row already has.",
            hint="Pass exclude_rated => false to rank every column.")
    if row[0]["owns_source"] or row[0]["owns_model"]:
        return
    owner, model_owner = row[0]["source_owner"], row[0]["model_owner"]
    raise InsufficientPrivilege(
        f"recommend_mf does not read the training source {facts['source']} of model "
        f"\"{facts['name']}\" for you", sqlstate="42501",
        detail=f"The model was trained by {model_owner} and its source belongs to {owner}. "
               "Leaving out rated columns reads that source, and reading a relation runs "
               "code its owner chose (a view's functions, row-level security policies) with "
               "your privileges.",
        hint="Pass exclude_rated => false (CLI: --include-rated) and leave out the rated "
             "columns yourself, from a "
             "table you trust: SELECT * FROM bismarck.recommend_mf(model, row_id, k + n, "
             "exclude_rated => false) WHERE col_id NOT IN (SELECT ...).")


def _relation(plpy: Any, name: str) -> str:
    """The stored source name, resolved to its OID and printed back quoted by PostgreSQL."""
    return plpy.execute(plpy.prepare("SELECT to_regclass($1)::regclass::text AS t", ["text"]),
                        [name])[0]["t"]


def evaluate(session: Any, m: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    """RMSE and MAE of a stored factorisation on ``relation``'s triples (same column names).

    Pairs with an id the model never saw are scored by the baseline (mean + known biases) and
    counted as ``unknown_pairs``; rows with a NULL id or a NULL/non-finite value are skipped and
    counted as ``skipped_rows``.
    """
    from .mf_loop import _columns

    names = {"row_col": m["features"][0], "col_col": m["features"][1],
             "value_col": m["label"]}
    _, qualified, _ = _columns(session, relation, names)
    q = session.ident
    r, c, v = q(names["row_col"]), q(names["col_col"]), q(names["value_col"])
    src = qualified.replace("%", "%%")
    ok = (f"{r} IS NOT NULL AND {c} IS NOT NULL AND {v} IS NOT NULL AND "
          f"{v}::float8 NOT IN ('NaN', 'Infinity', '-Infinity')")
    rows, cols, vals, skipped = session.query(
        f"SELECT coalesce(array_agg({r}::bigint) FILTER (WHERE {ok}), '{{}}') AS r, "
        f"coalesce(array_agg({c}::bigint) FILTER (WHERE {ok}), '{{}}') AS c, "
        f"coalesce(array_agg({v}::float8) FILTER (WHERE {ok}), '{{}}') AS v, "
        f"count(*) FILTER (WHERE NOT ({ok})) AS skipped FROM {src}")[0]
    if not vals:
        raise InvalidData(f"{qualified} has no usable triples to evaluate",
                          hint="Evaluate on a table with non-NULL ids and finite values.")
    f = mf.loads(m["state"])
    pred = mf.predict(f, rows, cols, "baseline")
    _, ku = mf.dense(f.row_ids, rows)
    _, ki = mf.dense(f.col_ids, cols)
    err = pred - np.asarray(vals, dtype=np.float64)
    return [{"metric": "rmse", "value": float(np.sqrt(np.mean(err * err)))},
            {"metric": "mae", "value": float(np.mean(np.abs(err)))},
            {"metric": "rows", "value": float(len(vals))},
            {"metric": "unknown_pairs", "value": float(np.count_nonzero(~(ku & ki)))},
            {"metric": "skipped_rows", "value": float(skipped)}]
