"""Domain errors that carry a PostgreSQL SQLSTATE, detail and hint.

Raised by the engine; the server entry points turn them into ``plpy.error`` and the controller
turns them into one-paragraph CLI errors.
"""

from __future__ import annotations


class BismarckError(Exception):
    """A user-facing error: short lower-case message, full-sentence detail and hint."""

    sqlstate = "XX000"
    #: True when the error was raised inside the server (by an aggregate, through SQL): the
    #: transaction that ran it has failed, so no more SQL runs in it.
    server = False

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None,
                 sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint
        if sqlstate is not None:
            self.sqlstate = sqlstate

    def __str__(self) -> str:
        return paragraph(self.message, self.detail, self.hint)


def paragraph(message: str, detail: str | None = None, hint: str | None = None) -> str:
    """An error as users read it: the message, then the detail, then ``Hint: ...``."""
    return "\n".join([message, *([detail] if detail else []),
                      *(["Hint: " + hint] if hint else [])])


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun`` in agreement: ``1 epoch``, ``2 epochs`` (``pass``: ``passes``)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


class InvalidParameter(BismarckError):
    """A hyper-parameter or option outside its declared range (22023 invalid_parameter_value)."""

    sqlstate = "22023"


class InvalidData(BismarckError):
    """The training or scoring data cannot be used as given (22000 data_exception)."""

    sqlstate = "22000"


class Separated(InvalidData):
    """The classes are (quasi-)separated: the maximum-likelihood estimate does not exist.

    ``columns`` names the columns that separate them (the intercept alone: one class only).
    """

    def __init__(self, message: str, *, columns: list[str], detail: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, detail=detail, hint=hint)
        self.columns = list(columns)


class UndefinedObject(BismarckError):
    """A table, column or model that does not exist (42P01 / 42703 / 42704)."""

    sqlstate = "42704"


class InsufficientPrivilege(BismarckError):
    """An action the current role may not take, or should not take for another (42501)."""

    sqlstate = "42501"


class Diverged(BismarckError):
    """Training diverged: the loss became NaN/inf or grew past its bound (22003)."""

    sqlstate = "22003"


class ShardUnavailable(BismarckError):
    """A shard (a foreign partition's server) does not answer (08006 connection_failure)."""

    sqlstate = "08006"


class Cancelled(BismarckError):
    """A run stopped by a cancel: ``statement_timeout``, ``pg_cancel_backend`` (57014
    query_canceled)."""

    sqlstate = "57014"


def cancelled_run(exc: BaseException, what: str = "training") -> Cancelled | None:
    """The error to report for a run that ``exc`` cancelled (None: ``exc`` is no cancel).

    The server's own error names only the cancel; its CONTEXT may repeat the statement and,
    with ``log_parameter_max_length_on_error`` set, its parameters (model states); this one
    says what became of the run and holds neither."""
    if getattr(exc, "sqlstate", None) != Cancelled.sqlstate or isinstance(exc, Cancelled):
        return None
    diag = getattr(exc, "diag", None)
    reason = (getattr(diag, "message_primary", None)
              or (str(exc.args[0]) if exc.args else "") or "canceling statement")
    reason = reason.strip().splitlines()[0].removeprefix("plpy.SPIError: ")
    if "statement timeout" in reason:
        hint = ("statement_timeout ends a statement that runs longer, and a run is one "
                "statement from SQL (one per epoch from the bismarck CLI or Python): raise it "
                "for the run (SET statement_timeout = 0 turns it off) or lower max_epochs.")
    else:
        hint = "Another session or the server cancelled it (pg_cancel_backend); run it again."
    return Cancelled(f"{what} was cancelled; no model version was stored",
                     detail=f"PostgreSQL: {reason}.", hint=hint)


class TooLarge(BismarckError):
    """A model whose training state would exceed :data:`MAX_STATE_BYTES` (54000
    program_limit_exceeded)."""

    sqlstate = "54000"


#: Largest epoch state a kind may allocate: 256 MiB of float64 values. The state travels as one
#: ``bytea`` (PostgreSQL's limit is 1 GB) and a transition holds a few copies of it at once.
MAX_STATE_BYTES = 256 * 2**20


def check_state_size(n_values: int, what: str, hint: str) -> None:
    """Refuse a training state of ``n_values`` float64 values above :data:`MAX_STATE_BYTES`.

    ``what`` describes the model (e.g. its layer sizes); raises :class:`TooLarge` naming the
    size, so a too-big model fails before any allocation rather than with a MemoryError.
    """
    size = 8 * int(n_values)
    if size > MAX_STATE_BYTES:
        raise TooLarge(
            "the model's training state is too large",
            detail=f"{what} needs a state of {int(n_values):,} float64 values "
                   f"({size / 2**20:,.0f} MiB); the limit is {MAX_STATE_BYTES // 2**20} MiB.",
            hint=hint)
