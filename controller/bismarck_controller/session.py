"""The training loop's session outside the server: psycopg 3, one commit per epoch.

Committing each epoch's history row lets another session (``bismarck history --follow`` or a
plain SQL query) watch the run; the model itself is written in the run's last transaction.

Like the extension's functions, the engine's SQL runs with ``search_path = pg_catalog, pg_temp``
(set for each transaction it starts), so no object a user created can stand in for a built-in;
user names are resolved in the caller's own context first (:func:`qualified`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from bismarckpy.errors import (
    BismarckError,
    Cancelled,
    Diverged,
    InvalidData,
    InvalidParameter,
    ShardUnavailable,
    TooLarge,
    UndefinedObject,
    cancelled_run,
    paragraph,
)
from bismarckpy.loop import EpochRecord
from bismarckpy.runlock import HOLD_IN_SESSION, RELEASE

PIN_SEARCH_PATH = "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)"
#: Each transaction of the engine's also keeps its statements' parameters (model states, a
#: shared-mode key) out of its errors' CONTEXT and the server log, whatever the session's
#: ``log_parameter_max_length_on_error``: an epoch that is cancelled would print them.
PIN_SESSION = (PIN_SEARCH_PATH + ", pg_catalog.set_config("
               "'log_parameter_max_length_on_error', '0', true)")


def qualified(conn: psycopg.Connection, name: str) -> str:
    """A relation name resolved in the caller's search_path, schema-qualified for the engine.

    Returns ``name`` unchanged when it does not resolve (the engine then reports it). Ends the
    connection's transaction.
    """
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_catalog.to_regclass(%s::pg_catalog.text)::pg_catalog.oid",
                        [name])
            row = cur.fetchone()
            if row is None or row[0] is None:
                return name
            cur.execute(PIN_SEARCH_PATH)
            cur.execute("SELECT %s::pg_catalog.oid::pg_catalog.regclass::pg_catalog.text",
                        [row[0]])
            found = cur.fetchone()
            return found[0] if found else name
    except psycopg.Error:
        return name
    finally:
        conn.rollback()


@contextlib.contextmanager
def running(conn: psycopg.Connection) -> Iterator[None]:
    """Hold :data:`bismarckpy.runlock.RUN_LOCK` shared for a run driven from here (across its
    commits), as the extension's calls do in the server: no ``bismarck install`` replaces the
    functions under it. Leaves the connection's transaction as the run left it."""
    status = conn.info.transaction_status
    conn.execute(HOLD_IN_SESSION)
    if status == TransactionStatus.IDLE:
        conn.rollback()  # the lock outlives the transaction that took it
    try:
        yield
    finally:
        if conn.info.transaction_status == TransactionStatus.INERROR:
            conn.rollback()  # nothing of a failed transaction can be kept
        idle = conn.info.transaction_status == TransactionStatus.IDLE
        with contextlib.suppress(psycopg.Error):
            conn.execute(RELEASE)
            if idle:
                conn.rollback()


class BismarckWarning(UserWarning):
    """A model was stored but needs attention (separation, a validation share off, ...)."""


class RunCancelled(Cancelled, psycopg.errors.QueryCanceled):
    """A run cancelled from outside (``statement_timeout``, ``pg_cancel_backend``): the
    engine's :class:`~bismarckpy.errors.Cancelled`, which callers also catch as psycopg's
    ``QueryCanceled``."""


@contextlib.contextmanager
def cancels_as_runs() -> Iterator[None]:
    """Re-raise the engine's :class:`~bismarckpy.errors.Cancelled`, or a cancel that landed
    before the run began, as :class:`RunCancelled`."""
    try:
        yield
    except RunCancelled:
        raise
    except (Cancelled, psycopg.errors.QueryCanceled) as exc:
        stopped = exc if isinstance(exc, Cancelled) else cancelled_run(exc)
        if stopped is None:
            raise
        raise RunCancelled(stopped.message, detail=stopped.detail, hint=stopped.hint) from None


class PsycopgSession:
    """A :class:`bismarckpy.loop.TrainingSession` over a non-autocommit psycopg connection."""

    def __init__(self, conn: psycopg.Connection,
                 on_epoch: Callable[[EpochRecord], None] | None = None,
                 on_progress: Callable[[str], None] | None = None) -> None:
        if conn.autocommit:
            raise ValueError("the training session needs a connection with autocommit off")
        self.conn = conn
        self._on_epoch = on_epoch
        # A progress bar's ``preparing(text)`` when it has one (the CLI's does).
        self._on_progress = on_progress or getattr(on_epoch, "preparing", None)
        self._pinned = False
        self._epochs = 0  # epochs finished (recorded in the history)

    def query(self, text: str, params: Sequence[object] = ()) -> list[tuple]:
        """Run SQL with ``%s`` placeholders (``%%`` for a literal percent sign).

        The first statement of each transaction pins the search path for that transaction.
        """
        with self.conn.cursor() as cur:
            if not self._pinned or self.conn.info.transaction_status == TransactionStatus.IDLE:
                cur.execute(PIN_SESSION)
                self._pinned = True
            try:
                cur.execute(text.encode(), list(params))  # bytes: trusted SQL built by the engine
            except psycopg.Error as exc:
                raised = engine_error(exc)
                if raised is None:
                    raise
                raise raised from None
            return cur.fetchall() if cur.description else []

    def ident(self, name: str) -> str:
        """Quote an identifier with psycopg's rules, ``%`` doubled."""
        return sql.Identifier(name).as_string(self.conn).replace("%", "%%")

    def checkpoint(self) -> None:
        """Commit, so the history so far is visible to other sessions."""
        self.conn.commit()

    def rollback(self) -> None:
        """Roll back the current transaction (after a failed statement, to run another)."""
        self.conn.rollback()

    def subtransaction(self) -> Any:
        """A savepoint (``conn.transaction()`` inside the open transaction): an error inside
        rolls back to it, so the transaction can go on (e.g. to clean up) before failing."""
        return self.conn.transaction()

    def on_epoch(self, record: EpochRecord) -> None:
        """Forward progress to the caller's callback (a progress bar, a notebook)."""
        self._epochs += 1
        if self._on_epoch is not None:
            self._on_epoch(record)

    def on_progress(self, text: str) -> None:
        """Forward progress of preparation (``preparing: 40% of pages``) to the caller."""
        if self._on_progress is not None:
            self._on_progress(text)

    def warn(self, message: str) -> None:
        """A Python warning (:class:`BismarckWarning`) the caller can filter or turn to errors."""
        warnings.warn("bismarck: " + message, BismarckWarning, stacklevel=2)

    def failure_note(self, run_id: int, exc: BaseException) -> str | None:
        """What the error of a run that failed in its epochs adds: where its history stays
        (:meth:`on_failure` marks the run failed). None for an error before the epochs."""
        if not (self._epochs or isinstance(exc, (Diverged, Cancelled))):
            return None
        return (f"The epochs it finished stay in bismarck.training_history (run_id {run_id}), "
                "marked failed.")

    def on_failure(self, run_id: int, exc: BaseException) -> None:
        """Roll back the failed epoch and mark the run failed or interrupted, then commit."""
        if self.conn.closed:
            return
        self.conn.rollback()
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        self.query("SELECT bismarck._end_run(bismarck._ticket(), %s::bigint, %s::text, "
                   "NULL::integer, %s::text) "
                   "AS ended",
                   [run_id, status, describe(exc)])
        self.conn.commit()


#: The prefix PL/Python puts before the message of an error raised with ``plpy.error``.
PLPY_PREFIX = "plpy.Error: "
#: The engine's error types by SQLSTATE (the rest: InvalidData for data and name classes 22
#: and 42, BismarckError otherwise, each keeping the server's SQLSTATE).
ENGINE_ERRORS: dict[str, type[BismarckError]] = {
    cls.sqlstate: cls for cls in (InvalidParameter, InvalidData, Diverged, ShardUnavailable,
                                  TooLarge, UndefinedObject)}


def engine_error(exc: psycopg.Error) -> BismarckError | None:
    """The engine's own error for one that a bismarck aggregate raised inside the server.

    An epoch or scoring aggregate reports a domain error with ``plpy.error`` (message, detail,
    hint, SQLSTATE); psycopg hands it over as, e.g., ``DataException("plpy.Error: ...")`` with
    PL/Python's traceback as its context. This gives the same error the engine raises outside
    the server (:mod:`bismarckpy.errors`, by SQLSTATE), without the prefix and the traceback,
    with ``server = True``: the transaction it happened in has failed. Other errors: None.
    """
    d = exc.diag
    message = d.message_primary or ""
    if not message.startswith(PLPY_PREFIX):
        return None
    state = d.sqlstate or BismarckError.sqlstate
    cls = ENGINE_ERRORS.get(state) or (InvalidData if state[:2] in ("22", "42")
                                       else BismarckError)
    err = cls(message[len(PLPY_PREFIX):], detail=d.message_detail, hint=d.message_hint,
              sqlstate=state)
    err.server = True
    return err


def describe(exc: BaseException) -> str:
    """One paragraph for an error: message, detail and hint, from the engine or the server."""
    if isinstance(exc, BismarckError):
        return str(exc)
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        d = exc.diag
        return paragraph(d.message_primary.removeprefix(PLPY_PREFIX), d.message_detail,
                         d.message_hint)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user"
    return f"{type(exc).__name__}: {exc}"
