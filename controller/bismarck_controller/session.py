"""The training loop's session outside the server: psycopg 3, one commit per epoch.

Committing each epoch's history row lets another session (``bismarck history --follow`` or a
plain SQL query) watch the run; the model itself is written in the run's last transaction.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Callable

import psycopg
from psycopg import sql

from bismarckpy.errors import BismarckError, paragraph
from bismarckpy.loop import EpochRecord


class BismarckWarning(UserWarning):
    """A model was stored but needs attention (separation, a validation share off, ...)."""


class PsycopgSession:
    """A :class:`bismarckpy.loop.TrainingSession` over a non-autocommit psycopg connection."""

    def __init__(self, conn: psycopg.Connection,
                 on_epoch: Callable[[EpochRecord], None] | None = None) -> None:
        if conn.autocommit:
            raise ValueError("the training session needs a connection with autocommit off")
        self.conn = conn
        self._on_epoch = on_epoch

    def query(self, text: str, params: Sequence[object] = ()) -> list[tuple]:
        """Run SQL with ``%s`` placeholders (``%%`` for a literal percent sign)."""
        with self.conn.cursor() as cur:
            cur.execute(text.encode(), list(params))  # bytes: trusted SQL built by the engine
            return cur.fetchall() if cur.description else []

    def ident(self, name: str) -> str:
        """Quote an identifier with psycopg's rules, ``%`` doubled."""
        return sql.Identifier(name).as_string(self.conn).replace("%", "%%")

    def checkpoint(self) -> None:
        """Commit, so the history so far is visible to other sessions."""
        self.conn.commit()

    def on_epoch(self, record: EpochRecord) -> None:
        """Forward progress to the caller's callback (a progress bar, a notebook)."""
        if self._on_epoch is not None:
            self._on_epoch(record)

    def warn(self, message: str) -> None:
        """A Python warning (:class:`BismarckWarning`) the caller can filter or turn to errors."""
        warnings.warn("bismarck: " + message, BismarckWarning, stacklevel=2)

    def on_failure(self, run_id: int, exc: BaseException) -> None:
        """Roll back the failed epoch and mark the run failed or interrupted, then commit."""
        if self.conn.closed:
            return
        self.conn.rollback()
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        with self.conn.cursor() as cur:
            cur.execute("UPDATE bismarck._training_run SET status = %s, message = %s, "
                        "finished_at = now() WHERE run_id = %s",
                        [status, describe(exc), run_id])
        self.conn.commit()


def describe(exc: BaseException) -> str:
    """One paragraph for an error: message, detail and hint, from the engine or the server."""
    if isinstance(exc, BismarckError):
        return str(exc)
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        d = exc.diag
        return paragraph(d.message_primary, d.message_detail, d.message_hint)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user"
    return f"{type(exc).__name__}: {exc}"
