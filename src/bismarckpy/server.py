"""Entry points called by the extension's PL/Python bodies, and the loop's session over ``plpy``.

Each PL/Python body is one call into this module. Public entry points never let a Python
exception escape (PL/Python would print a traceback): they return a JSON envelope that the
plpgsql wrapper in ``sql/bismarck.sql`` turns into a clean ``RAISE`` with SQLSTATE, detail, hint.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import struct
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import kinds, moments, pack, shared_model
from .errors import BismarckError, Cancelled, Diverged, InvalidData, cancelled_run
from .runlock import HOLD_IN_TRANSACTION

if TYPE_CHECKING:
    from .loop import EpochRecord


def __getattr__(name: str) -> Any:
    """``B.mf`` (the matrix-factorisation entry points) and ``B.exact``, imported on first use.

    Every backend, and every parallel worker of every epoch, loads the engine from the sources
    in the function body (compiled, no bytecode cache); an epoch of SGD needs neither module,
    so they are not compiled until a call asks for them (PEP 562)."""
    if name == "mf":
        from . import mf_server as module
    elif name == "exact":
        from . import exact as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = module  # later lookups find it without this function
    return module


# The training loop, packing and evaluation run only in the backend a user calls; they are
# imported there, on first use, so that parallel workers (which only run the aggregates) load
# less code at every epoch.

np.seterr(all="ignore")  # overflow shows up as inf/NaN losses, which the loop reports

_PLACEHOLDER = re.compile(r"%([%s])")
NOTICE_EVERY = 5.0  # seconds between progress notices of train_glm


class PlpySession:
    """The training loop's session inside the server: SPI through ``plpy`` with cached plans."""

    def __init__(self, plpy: Any) -> None:
        self.plpy = plpy
        self._plans: dict[tuple, Any] = {}
        self._last_notice = time.monotonic()
        self._epochs = 0  # epochs finished (recorded in the history)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """Run SQL with ``%s`` placeholders (rewritten to ``$n``); return rows as tuples."""
        params = list(params)
        types = tuple(_pg_type(v) for v in params)
        key = (sql, types)
        plan = self._plans.get(key)
        if plan is None:
            counter = iter(range(1, len(params) + 1))
            text = _PLACEHOLDER.sub(
                lambda m: "%" if m.group(1) == "%" else f"${next(counter)}", sql)
            plan = self.plpy.prepare(text, list(types))
            self._plans[key] = plan
        result = self.plpy.execute(plan, params)
        try:
            cols = result.colnames()
        except Exception:  # utility statements have no columns
            return []
        if cols is None:
            return []
        if len(set(cols)) != len(cols):
            raise AssertionError(f"query has duplicate column names {cols}: alias them")
        return [tuple(r[c] for c in cols) for r in result]

    def query_parallel(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """:meth:`query` for an epoch statement that may use parallel workers: one row of one
        bytea column, ``sql`` with one ``%s`` for one bytea parameter (the init state).

        A plan prepared through SPI (``plpy.prepare``) never runs in parallel (SPI_prepare
        gives no CURSOR_OPT_PARALLEL_OK), but PL/pgSQL's ``EXECUTE ... USING`` plans its
        statement with the parameter bound and parallel workers allowed:
        ``bismarck._epoch_query`` runs it so. The state (model weights, a shared-mode key)
        stays a bound parameter: it is in no statement text, which parallel workers show in
        ``pg_stat_activity.query`` and errors' CONTEXT lines repeat.
        """
        if (len(params) != 1 or not isinstance(params[0], (bytes, bytearray, memoryview))
                or [m for m in _PLACEHOLDER.findall(sql) if m == "s"] != ["s"]):
            raise TypeError("query_parallel binds one bytea parameter, written %s once")
        text = _PLACEHOLDER.sub(lambda m: "%" if m.group(1) == "%" else "$1", sql)
        plan = self._plans.get(("bismarck._epoch_query",))
        if plan is None:
            plan = self.plpy.prepare("SELECT bismarck._epoch_query($1, $2) AS state",
                                     ["text", "bytea"])
            self._plans[("bismarck._epoch_query",)] = plan
        return [(r["state"],) for r in self.plpy.execute(plan, [text, bytes(params[0])])]

    def ident(self, name: str) -> str:
        """Quote an identifier with the server's own rules (``%`` doubled, see Session)."""
        return self.plpy.quote_ident(name).replace("%", "%%")

    def checkpoint(self) -> None:
        """Inside one SQL call there is one transaction: nothing to commit."""

    def subtransaction(self) -> Any:
        """A subtransaction (``plpy.subtransaction()``): an error inside rolls back to here."""
        return self.plpy.subtransaction()

    def on_epoch(self, record: EpochRecord) -> None:
        """Progress of a long run: a NOTICE at most every few seconds, every epoch at DEBUG1.

        Other sessions cannot see the history of a run inside one transaction until it commits,
        so the client that started it is told as it goes.
        """
        text = (f"bismarck: epoch {record.epoch}/{record.max_epochs}, train loss "
                f"{record.train_loss:.6g}"
                + (f", validation loss {record.validation_loss:.6g}"
                   if record.validation_loss is not None else "")
                + f", {record.rows / max(record.seconds, 1e-9):,.0f} rows/s")
        self._epochs += 1
        now = time.monotonic()
        if now - self._last_notice >= NOTICE_EVERY:
            self.plpy.notice(text)
            self._last_notice = now
        else:
            self.plpy.debug(text)

    def on_progress(self, text: str) -> None:
        """Progress of preparation: a NOTICE (``bismarck: preparing: 40% of pages``)."""
        self.plpy.notice("bismarck: " + text)
        self._last_notice = time.monotonic()

    def on_failure(self, run_id: int, exc: BaseException) -> None:
        """The caller's transaction rolls back as a whole: the run leaves no trace."""

    def failure_note(self, run_id: int, exc: BaseException) -> str | None:
        """What the error of a run that failed in its epochs adds: that nothing of it was
        kept (its history is written in the call's transaction, which the error rolls back).
        None for an error before the epochs (a bad name or table): nothing had begun."""
        if not (self._epochs or isinstance(exc, (Diverged, Cancelled))):
            return None
        return ("Nothing of the run was kept: from SQL a run is one transaction, which the "
                "error rolls back with its history (bismarck.training_history).")

    def warn(self, message: str) -> None:
        """A WARNING to the client."""
        self.plpy.warning("bismarck: " + message)


def _pg_type(v: object) -> str:
    """PostgreSQL type for a Python parameter (None is text; SQL casts it where needed)."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "bigint"
    if isinstance(v, float):
        return "double precision"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "bytea"
    if isinstance(v, (list, tuple)):
        if any(isinstance(e, str) for e in v):
            return "text[]"
        return "double precision[]"
    return "text"


# -- public entry points (wrapped by plpgsql) ---------------------------------------------------

def train(plpy: Any, kind: str, args: dict[str, Any]) -> str:
    """``bismarck._train``: train a model of ``kind`` with the loop in this backend (the
    ``bismarck.train_<kind>`` wrappers call it); JSON envelope of the result."""
    def run() -> dict[str, Any]:
        from . import loop

        a = dict(args)
        result = loop.train(PlpySession(plpy), source=a.pop("source"), label=a.pop("label"),
                            features=a.pop("features"), model_name=a.pop("model_name"),
                            kind=kind, **{k: v for k, v in a.items() if v is not None})
        return loop.result_row(result)
    return _envelope(plpy, run, "training")


def train_glm(plpy: Any, args: dict[str, Any]) -> str:
    """``bismarck._train_glm`` of extension versions before 0.3.0: :func:`train` of a GLM."""
    return train(plpy, "glm", args)


def pack_table(plpy: Any, args: dict[str, Any]) -> str:
    """``bismarck.pack``: a reusable packed copy of a table; JSON envelope of the result."""
    from . import packing

    return _envelope(plpy, lambda: packing.pack_table(PlpySession(plpy), **args))


def evaluate(plpy: Any, model: str, relation: str, version: int | None) -> str:
    """``bismarck.evaluate``: metrics of a stored model on a table or view."""
    from . import evaluate as _evaluate

    def metrics() -> list[dict[str, Any]]:  # JSON has no infinity: float8's input reads text
        rows = _evaluate.evaluate(PlpySession(plpy), model, relation, version)
        return [{**r, "value": str(r["value"]).replace("inf", "Infinity")}
                if r["value"] is not None and math.isinf(r["value"]) else r for r in rows]

    return _envelope(plpy, metrics)


def _envelope(plpy: Any, fn: Callable[[], Any], run: str | None = None) -> str:
    """Run ``fn``, holding :data:`bismarckpy.runlock.RUN_LOCK` shared (no install replaces
    the functions under the call: :mod:`bismarckpy.runlock`); return ``{"ok": result}`` or
    ``{"error": {...}}`` as JSON text. ``run`` ('training'): a cancel, wherever it lands, is
    reported as that run's (:func:`bismarckpy.errors.cancelled_run`)."""
    try:
        plpy.execute(HOLD_IN_TRANSACTION)
        return json.dumps({"ok": _dropping_kept_rows(fn)}, allow_nan=False, default=_jsonable)
    except BismarckError as e:
        err = {"message": e.message, "detail": e.detail, "hint": e.hint, "sqlstate": e.sqlstate}
    except plpy.SPIError as e:
        stopped = cancelled_run(e, run) if run is not None else None
        err = spi_error(e) if stopped is None else {
            "message": stopped.message, "detail": stopped.detail, "hint": stopped.hint,
            "sqlstate": stopped.sqlstate}
    except Exception as e:  # a bug: report it without a traceback, but keep the cause
        err = {"message": "internal error in bismarck", "sqlstate": "XX000",
               "detail": f"{type(e).__name__}: {e}",
               "hint": "Please report this with the statement that caused it."}
    return json.dumps({"error": err})


def spi_error(e: Any) -> dict[str, Any]:
    """Message, SQLSTATE, detail and hint of an error raised by a nested SQL statement."""
    message = str(e.args[0]) if e.args else str(e)
    message = re.sub(r"^(plpy\.Error|plpy\.SPIError|[A-Za-z_.]+Error): ", "", message)
    data = getattr(e, "spidata", None) or ()
    detail = data[1] if len(data) > 1 else None
    hint = data[2] if len(data) > 2 else None
    return {"message": message, "sqlstate": getattr(e, "sqlstate", None) or "XX000",
            "detail": detail, "hint": hint}


def _jsonable(v: object) -> object:
    """numpy scalars and arrays in results become plain JSON values."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def predict_kind(plpy: Any, kind: str, stored: str, state: bytes | None,
                 x: Sequence[float | None] | None) -> float | None:
    """``bismarck._predict_kind``: one row's prediction by the kind's ``predict``.

    NULL when ``x`` is NULL or holds a NULL, NaN or infinite value (as for GLMs).
    """
    def run() -> float | None:
        if _unscorable(x):
            return None
        model = kinds.get(kind)
        form = kinds.Stored(kind, json.loads(stored), state)
        with _stored_input(kind):
            v = float(model.predict(form, np.asarray([x], dtype=np.float64))[0])
        return v if math.isfinite(v) else None  # no finite score (features far out of range)
    return _guard(plpy, run)


@contextlib.contextmanager
def _stored_input(kind: str) -> Iterator[None]:
    """Turn a stored form or state that a kind cannot read (a missing key, a wrong type or
    length) into :class:`InvalidData`: the private scoring functions take them as arguments."""
    try:
        yield
    except BismarckError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise InvalidData(f"not a stored model of kind {kind!r}",
                          detail=f"Its stored form or state cannot be read "
                                 f"({type(e).__name__}: {e}).",
                          hint="Pass the stored, state and kind columns of one row of "
                               "bismarck.models, or train the model again.") from None


def _unscorable(x: Sequence[Any] | None) -> bool:
    """True for a feature vector with no score (NULL, or a NULL, NaN or infinite element);
    :class:`InvalidData` for an array of more than one dimension."""
    if x is None:
        return True
    if any(isinstance(v, (list, tuple)) for v in x):
        raise InvalidData("feature vector is a multi-dimensional array",
                          hint="Pass one row's features as a 1-D array, e.g. ARRAY[x1, x2].")
    return any(v is None or not math.isfinite(v) for v in x)


def predict_proba_kind(plpy: Any, kind: str, stored: str, state: bytes | None,
                       x: Sequence[float | None] | None) -> list[float] | None:
    """``bismarck._predict_proba_kind``: one row's class probabilities by the kind's
    ``predict_proba``; NULL for a NULL, NaN or infinite feature."""
    def run() -> list[float] | None:
        if _unscorable(x):
            return None
        model = kinds.get(kind)
        if model.predict_proba is None:
            raise BismarckError(f"models of kind {kind!r} do not give probabilities",
                                sqlstate="22023", hint="Use bismarck.predict.")
        form = kinds.Stored(kind, json.loads(stored), state)
        with _stored_input(kind):
            p = [float(v) for v in model.predict_proba(form, np.asarray([x], np.float64))[0]]
        return p if all(math.isfinite(v) for v in p) else None  # no finite probabilities
    return _guard(plpy, run)


# -- aggregate support functions (called per row by the executor) -------------------------------

def _dropping_kept_rows(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; on any error the validation rows a training pass kept in this backend
    (:mod:`.heldrows`, up to 512 MB) are dropped rather than left until its next run."""
    try:
        return fn(*args)
    except BaseException:
        from . import heldrows

        heldrows.drop()
        raise


def _guard(plpy: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)`` for a PL/Python entry point that returns a value (not an envelope):
    every error leaves as ``plpy.error`` with a SQLSTATE, never a bare Python exception.

    A domain error keeps its SQLSTATE, detail and hint; an error of a nested SQL statement its
    own; anything else (a bug, or input no check foresaw) is an internal error (XX000) whose
    detail names the cause. Every entry point of this module and :mod:`.mf_server` that is not
    an :func:`_envelope` goes through here.
    """
    try:
        return _dropping_kept_rows(fn, *args)
    except BismarckError as e:
        raise_error(plpy, e.message, e.detail, e.hint, e.sqlstate)
    except plpy.SPIError as e:
        err = spi_error(e)
        raise_error(plpy, err["message"], err["detail"], err["hint"], err["sqlstate"])
    except plpy.Error:
        raise  # already a clean plpy.error
    except _UNREADABLE as e:  # bytes or JSON the engine did not make (a private function's)
        raise_error(plpy, "invalid input to a bismarck function",
                    f"A state, block or stored model passed to it cannot be read "
                    f"({type(e).__name__}: {e}).",
                    "The private bismarck._* functions take what the engine made: train and "
                    "score through the public functions (bismarck.train_*, predict, evaluate).",
                    InvalidData.sqlstate)
    except Exception as e:
        raise_error(plpy, "internal error in bismarck", f"{type(e).__name__}: {e}",
                    "Please report this with the statement that caused it.", "XX000")


#: Exceptions that reading malformed bytes or JSON raises (a truncated state, a missing key, an
#: array of the wrong shape): a private entry point given such input reports InvalidData.
_UNREADABLE = (ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error)


def raise_error(plpy: Any, message: str, detail: str | None, hint: str | None,
                sqlstate: str | None) -> None:
    """``plpy.error`` with only the fields that are set (``detail=None`` would print "None")."""
    extra = {k: v for k, v in (("detail", detail), ("hint", hint), ("sqlstate", sqlstate))
             if v is not None}
    plpy.error(message, **extra)


def engine_version() -> str:
    """``bismarck._engine_version``: this engine's version (the extension's)."""
    from . import __version__

    return __version__


def _runner(state: bytes) -> Any:
    """Who runs an epoch state's functions: shared mode (:mod:`.shared_model`) or its kind."""
    return shared_model if shared_model.is_shared(state) else kinds.for_state(state)


def epoch_transition(plpy: Any, state: bytes | None, x: Any, y: float | None,
                     init: bytes) -> bytes:
    """SFUNC of ``bismarck._epoch``: one row, by the kind whose magic opens ``init``."""
    return _guard(plpy, lambda: _runner(init).transition(state, x, y, init))


def epoch_merge(plpy: Any, a: bytes | None, b: bytes | None) -> bytes | None:
    """COMBINEFUNC of the epoch aggregates: the kind's merge of two partial states."""
    if a is None or b is None:
        return a if b is None else b
    return _guard(plpy, lambda: _runner(a).merge(a, b))


def epoch_finalize(plpy: Any, state: bytes | None) -> bytes | None:
    """FINALFUNC of the epoch aggregates: the kind's finalize."""
    if state is None:
        return None
    return _guard(plpy, lambda: _runner(state).finalize(state))


def shared_create(plpy: Any, init: bytes) -> bytes:
    """``bismarck._shared_create``: this epoch's shared-model segment; the shared init."""
    return _guard(plpy, shared_model.create, init)


def shared_drop(plpy: Any, init: bytes) -> bool:
    """``bismarck._shared_drop``: remove the segment a shared init names."""
    return _guard(plpy, shared_model.drop, init)


def shared_leftovers(plpy: Any) -> list[str]:
    """``bismarck._shared_segments``: names of the shared-model segments on this server."""
    return _guard(plpy, shared_model.leftovers)


def moments_transition(plpy: Any, state: bytes | None, x: Any) -> bytes | None:
    """SFUNC of ``bismarck._moments``."""
    return _guard(plpy, moments.transition, state, x)


def moments_merge(plpy: Any, a: bytes | None, b: bytes | None) -> bytes | None:
    """COMBINEFUNC of ``bismarck._moments``."""
    return _guard(plpy, moments.merge, a, b)


def epoch_transition_block(plpy: Any, state: bytes | None, block: bytes | None,
                           init: bytes, first: int | None = 0, stop: int | None = None) -> bytes:
    """SFUNC of ``bismarck._epoch_packed``: rows ``first:stop`` of one packed block."""
    return _guard(plpy, lambda: _runner(init).transition_block(
        state, block, init, first or 0, stop))


def moments_transition_block(plpy: Any, state: bytes | None, block: bytes | None, d: int,
                             itemsize: int, first: int | None = 0,
                             stop: int | None = None) -> bytes | None:
    """SFUNC of ``bismarck._moments_packed``: rows ``first:stop`` of one packed block."""
    return _guard(plpy, moments.transition_block, state, block, d, itemsize, first or 0, stop)


def pack_block(plpy: Any, rows: bytes, labels: bytes, d: int, dtype: str, seed: int) -> bytes:
    """``bismarck._pack_block``: concatenated raw rows and labels → one packed block."""
    return _guard(plpy, pack.build_block, rows, labels, d, dtype, seed)


def exact_transition(plpy: Any, state: bytes | None, x: Any, y: float | None,
                     init: bytes) -> bytes:
    """SFUNC of ``bismarck._exact_pass``."""
    from . import exact

    return _guard(plpy, exact.transition, state, x, y, init)


def exact_transition_block(plpy: Any, state: bytes | None, block: bytes | None,
                           init: bytes, first: int | None = 0,
                           stop: int | None = None) -> bytes:
    """SFUNC of ``bismarck._exact_pass_packed``: rows ``first:stop`` of one packed block."""
    from . import exact

    return _guard(plpy, exact.transition_block, state, block, init, first or 0, stop)


def exact_merge(plpy: Any, a: bytes | None, b: bytes | None) -> bytes | None:
    """COMBINEFUNC of the exact passes: an exact sum."""
    from . import exact

    return _guard(plpy, exact.merge, a, b)


def epoch_transition_scan(plpy: Any, state: bytes | None, xs: bytes | None,
                          ys: bytes | None, groups: list | None, counts: list | None,
                          holds: list | None, part: int, split_seed: int,
                          shuffle_seed: int | None, init: bytes) -> bytes:
    """SFUNC of ``bismarck._epoch_scan``: one buffer of page groups, by the kind whose magic
    opens ``init``."""
    from . import blockscan

    return _guard(plpy, lambda: blockscan.epoch_step(
        _runner(init).transition_block, state, xs, ys, groups, counts, holds, part,
        split_seed, shuffle_seed, init))


def _role(plpy: Any) -> int:
    """The current role's oid (whose rows :mod:`bismarckpy.heldrows` keeps)."""
    return int(plpy.execute("SELECT r.oid FROM pg_catalog.pg_roles AS r "
                            "WHERE r.rolname = current_user")[0]["oid"])


def held_clear(plpy: Any, rows: int, width: int) -> bool:
    """``bismarck._held_clear``: before a training pass, forget the validation rows kept in
    this backend; the pass keeps its own (about ``rows`` of ``width`` features) for the
    current role (:mod:`.heldrows`)."""
    from . import heldrows

    return _guard(plpy, lambda: heldrows.clear(_role(plpy), rows, width) or True)


def held_evaluate(plpy: Any, init: bytes, holds: list | None, split_seed: int) -> bytes | None:
    """``bismarck._held_evaluate``: the validation pass over the rows the last training pass
    kept (:func:`bismarckpy.blockscan.held_evaluate`); NULL when the SQL pass must run."""
    from . import blockscan

    def run() -> bytes | None:
        runner = _runner(init)
        return blockscan.held_evaluate(runner.transition_block, runner.finalize, init, holds,
                                       split_seed, _role(plpy))

    return _guard(plpy, run)


def epoch_transition_scan_first(plpy: Any, state: bytes | None, xs: bytes | None,
                                ys: bytes | None, js: bytes | None, shape: list | None,
                                groups: list | None, split_seed: int,
                                shuffle_seed: int | None, init: bytes) -> bytes:
    """SFUNC of ``bismarck._epoch_scan_first``: one buffer of a first epoch's page groups
    (:func:`bismarckpy.blockscan.first_step`), by the kind whose init travels in the state."""
    from . import blockscan

    def kernel(kstate: bytes | None, block: bytearray, kinit: bytes) -> bytes:
        return _runner(kinit).transition_block(kstate, block, kinit)

    return _guard(plpy, blockscan.first_step, kernel, state, xs, ys, js, shape, groups,
                  split_seed, shuffle_seed, init)


def exact_transition_scan(plpy: Any, state: bytes | None, xs: bytes | None, ys: bytes | None,
                          groups: list | None, counts: list | None, holds: list | None,
                          part: int, split_seed: int, shuffle_seed: int | None,
                          init: bytes) -> bytes:
    """SFUNC of ``bismarck._exact_pass_scan``: one buffer of page groups."""
    from . import blockscan, exact

    return _guard(plpy, blockscan.epoch_step, exact.transition_block, state, xs, ys, groups,
                  counts, holds, part, split_seed, shuffle_seed, init)


def scan_prepare(plpy: Any, state: bytes | None, xs: bytes | None, ys: bytes | None,
                 group: int, shape: list | None, init: bytes, seed: int) -> bytes:
    """SFUNC of ``bismarck._scan_prepare``: one page group, in physical order."""
    from . import blockscan

    return _guard(plpy, blockscan.prepare_step, state, xs, ys, group, shape, init, seed)


def pack_buffer(plpy: Any, xs: bytes | None, ys: bytes | None, d: int, block_size: int,
                dtype: str, seed: int) -> list[tuple[int, bytes]]:
    """``bismarck._pack_buffer``: one buffer of page groups → shuffled packed blocks."""
    from . import blockscan

    return _guard(plpy, blockscan.pack_buffer, xs, ys, d, block_size, dtype, seed) or []
