"""Library calls for matrix factorisations: train (the engine's loop over psycopg), predict and
recommend (in SQL, so the model stays in the server). Evaluate with
:func:`bismarck_controller.training.evaluate` (RMSE and MAE for a factorisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import psycopg

from bismarck_controller.session import PsycopgSession, cancels_as_runs, qualified, running
from bismarckpy import loop, mf_loop


def train_mf(conn: psycopg.Connection, source: str, row_col: str, col_col: str, value_col: str,
             model_name: str | None = None,
             on_epoch: Callable[[loop.EpochRecord], None] | None = None,
             **params: Any) -> loop.TrainResult:
    """Train a factorisation of ``source``'s (row id, column id, value) triples and store it as
    the next version of ``model_name`` (default: the table's name).

    ``params`` are the names of :data:`bismarckpy.kinds.mf.MF_PARAMS` (``rank``, ``alpha``,
    ``eta0``, ...). The epochs run in the connection's backend, which holds the factors.
    """
    session = PsycopgSession(conn, on_epoch)
    with running(conn), cancels_as_runs():
        return mf_loop.train_mf(session, source=qualified(conn, source), row_col=row_col,
                                col_col=col_col, value_col=value_col,
                                model_name=model_name or source, **params)


def predict_mf(conn: psycopg.Connection, model: str, row_ids: Sequence[int],
               col_ids: Sequence[int], *, unknown: str = "error",
               version: int | None = None) -> list[float | None]:
    """``bismarck.predict_mf`` for each (row id, column id) pair, in order."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT bismarck.predict_mf(%s, %s::bigint[], %s::bigint[], %s, "
                        "%s::int)", [model, list(map(int, row_ids)), list(map(int, col_ids)),
                                     unknown, version])
            row = cur.fetchone()
            return list(row[0]) if row and row[0] is not None else []
    finally:
        conn.rollback()


def recommend(conn: psycopg.Connection, model: str, row_id: int, k: int = 10, *,
              exclude_rated: bool = True, version: int | None = None
              ) -> list[tuple[int, float]]:
    """``bismarck.recommend_mf``: (column id, score) pairs, best first."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT col_id, score FROM bismarck.recommend_mf(%s, %s, %s, %s, "
                        "%s::int)", [model, row_id, k, exclude_rated, version])
            return [(int(c), float(s)) for c, s in cur.fetchall()]
    finally:
        conn.rollback()
