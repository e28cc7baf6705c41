"""Shared-memory parallel SGD: the workers of one epoch update ONE model (Hogwild!-style).

Bismarck's shared-memory UDA (Feng et al., SIGMOD 2012, §3.3) and Hogwild! (Niu, Recht, Ré,
Wright, NIPS 2011): instead of each parallel worker training its own copy and the combine
function averaging them at the end (``parallel_mode => 'average'``), every worker reads the
current model from a shared segment before each SGD step and adds its step back into it, without
locks (``parallel_mode => 'shared'``). Concurrent additions to the same coefficient may lose one
of them; Hogwild!'s analysis shows that for sparse-ish gradients this costs little, and the tests
compare the result with averaging and with serial SGD.

The segment
-----------
PL/Python cannot use PostgreSQL's dynamic shared memory, and parallel workers are forked by the
postmaster, not by the leader, so they inherit no file descriptor from it. The segment is a file
mapped with ``mmap(MAP_SHARED)`` that every participant opens by the name carried in the
aggregate's init state::

    <data directory>/base/pgsql_tmp/pgsql_tmpbismarck.<creator pid>.<64 random bits, hex>

    bytes 0:16   key: 128 random bits, also carried in init (checked before any access)
    bytes 16:24  n: number of float64 slots (little-endian int64)
    bytes 24:    n float64: the shared slots of the kind's state (a GLM: w, b and the step
                 counter t, so the learning-rate schedule counts every worker's steps)

Lifetime (no segment outlives its query):

* :func:`create` and :func:`drop` are called by :func:`run_epoch` around the one epoch query
  (SQL ``bismarck._shared_create`` / ``bismarck._shared_drop`` in the backend that runs it); the
  drop is in a ``finally``, after rolling back to a savepoint when the epoch failed or was
  cancelled (a cancel arrives as an error: ``plpy.SPIError`` in the server, a psycopg error
  outside), so errors, cancels and Ctrl-C remove it.
* A backend that is killed (SIGKILL, a crash) makes the postmaster reinitialise, and PostgreSQL
  removes every file whose name begins with ``pgsql_tmp`` under ``base/pgsql_tmp`` at postmaster
  start and, with ``remove_temp_files_after_crash = on`` (the default since PostgreSQL 14),
  after a crash restart: the name is chosen for that.
* A backend that ends without a crash in the middle of an epoch (``pg_terminate_backend``, a
  client that vanished) runs no Python ``finally``; the next :func:`create` on the server
  removes every segment whose creating backend no longer exists (the pid in the name).

Access: the file is created ``O_EXCL`` with mode 0600 by the server's OS user in the data
directory (0700), so only server processes can open it; within the server, SQL roles cannot list
it except superusers and ``pg_monitor`` members (``pg_ls_tmpdir``), and even they cannot use it:
every open compares the 128-bit key carried in the init state (never in a file name, a listing
or a query text: it travels as a bound parameter) with the file's key.

Which kinds: a kind opts in with ``extra["shared"]`` = :class:`Layout` (which slots of its
float64 state are the shared model, how many rows make its next step, how many rows a packed
block has). A kind whose states cannot be merged (``merge_rule == "none"``: it keeps the model
in the backend, where a parallel worker cannot see it) or that declares no layout is refused
with :class:`~bismarckpy.errors.InvalidParameter`.
"""

from __future__ import annotations

import contextlib
import hmac
import mmap
import os
import re
import secrets
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import kinds
from .errors import InvalidData, InvalidParameter

MAGIC = b"BSHMv001"  # the first 8 bytes of a shared-mode init or state
_HEAD = struct.Struct("<8sqQ16s")  # magic, creator pid, segment id, key
HEADER = _HEAD.size  # 40 bytes, then the kind's own state
_SEG = struct.Struct("<16sq")  # key, number of slots
PREFIX = "pgsql_tmpbismarck"  # PostgreSQL removes pgsql_tmp* files after a crash restart
TEMP_DIR = os.path.join("base", "pgsql_tmp")  # relative to the data directory (a backend's cwd)
_NAME = re.compile(rf"^{PREFIX}\.(\d+)\.([0-9a-f]{{16}})$")
_F8 = np.dtype("<f8")


@dataclass(frozen=True)
class Layout:
    """How a kind's float64 state vector shares its model (``kind.extra["shared"]``).

    ``slots(s)``: indices of ``s`` (the state as float64) forming the shared model; their
    values at any instant are the model. ``rows_to_step(s)``: rows until the state's next SGD
    step (the shared model is read before and written after every step). ``block_rows(s,
    block)``: rows in a packed block. ``refuse(p)``: a reason the parameters cannot run shared
    (None: they can).
    """

    slots: Callable[[np.ndarray], np.ndarray]
    rows_to_step: Callable[[np.ndarray], int]
    block_rows: Callable[[np.ndarray, bytes], int]
    refuse: Callable[[dict[str, Any]], str | None] = lambda p: None


def layout_of(kind: kinds.ModelKind) -> Layout | None:
    """The kind's shared-memory layout, or None when it cannot train in shared mode."""
    if kind.merge_rule == "none":
        return None
    layout = kind.extra.get("shared")
    return layout if isinstance(layout, Layout) else None


def check_supported(kind: kinds.ModelKind, p: dict[str, Any]) -> None:
    """Raise :class:`InvalidParameter` unless ``kind`` with parameters ``p`` can run shared."""
    layout = layout_of(kind)
    if layout is None:
        why = ("keeps its model in the backend between calls, where parallel workers cannot "
               "see it" if kind.merge_rule == "none" else "declares no shared-memory layout")
        raise InvalidParameter(
            f"parallel_mode => 'shared' is not available for model kind {kind.name!r}",
            detail=f"The {kind.name} kind {why}.",
            hint="Use parallel_mode => 'average' (the default).")
    reason = layout.refuse(p)
    if reason:
        raise InvalidParameter("parallel_mode => 'shared' cannot run with these parameters",
                               detail=reason, hint="Use parallel_mode => 'average'.")


# -- the segment --------------------------------------------------------------------------------


def _path(pid: int, seg: int) -> str:
    return os.path.join(TEMP_DIR, f"{PREFIX}.{pid}.{seg:016x}")


def create(init: bytes) -> bytes:
    """Create a segment holding ``init``'s shared slots; the shared-mode init state (bytes).

    Runs in the backend that will run the epoch query (SQL ``bismarck._shared_create``); first
    removes segments left by backends that no longer exist (:func:`sweep`).
    """
    kind = kinds.for_state(init)
    layout = layout_of(kind)
    if layout is None:
        check_supported(kind, {})
    assert layout is not None
    s = np.frombuffer(init, dtype=_F8)
    values = np.ascontiguousarray(s[layout.slots(s)], dtype=_F8)
    sweep()
    os.makedirs(TEMP_DIR, mode=0o700, exist_ok=True)
    pid, seg, key = os.getpid(), secrets.randbits(64), secrets.token_bytes(16)
    fd = os.open(_path(pid, seg), os.O_CREAT | os.O_EXCL | os.O_RDWR | getattr(os, "O_CLOEXEC", 0),
                 0o600)
    try:
        os.write(fd, _SEG.pack(key, values.size) + values.tobytes())
    finally:
        os.close(fd)
    return _HEAD.pack(MAGIC, pid, seg, key) + bytes(init)


def _head(init: bytes) -> tuple[int, int, bytes]:
    """(creator pid, segment id, key) of a shared-mode init or state; InvalidData otherwise."""
    if len(init) < HEADER or not is_shared(init):
        raise InvalidData("not a shared-mode epoch state",
                          detail="parallel_mode => 'shared' states begin with "
                                 f"{MAGIC.decode()} and a {HEADER}-byte header.")
    _, pid, seg, key = _HEAD.unpack_from(init)
    return pid, seg, key


def drop(init: bytes) -> bool:
    """Remove the segment named by a shared-mode init (its key must match); True if removed."""
    pid, seg, key = _head(init)
    path = _path(pid, seg)
    _forget(path)
    try:
        with open(path, "rb") as f:
            if not hmac.compare_digest(f.read(16), key):
                return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def sweep() -> list[str]:
    """Remove segments whose creating backend is gone (a terminated backend, a lost client),
    and this backend's own earlier ones: a backend runs one epoch query at a time, so when it
    creates a segment any other of its own is stale (at most one per live backend).

    A pid reused by another process keeps its segment until that process ends too.
    """
    removed = []
    try:
        names = os.listdir(TEMP_DIR)
    except FileNotFoundError:
        return removed
    for name in names:
        m = _NAME.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _alive(pid):
            continue
        _forget(os.path.join(TEMP_DIR, name))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(TEMP_DIR, name))
            removed.append(name)
    return removed


def leftovers() -> list[str]:
    """Names of the segments on this server now (for tests and ``bismarck doctor``)."""
    try:
        return sorted(n for n in os.listdir(TEMP_DIR) if _NAME.match(n))
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: not one of ours, but alive
        return True
    return True


_OPEN: dict[str, tuple[bytes, mmap.mmap, np.ndarray]] = {}  # per process: path -> (key, map, slots)


def _forget(path: str) -> None:
    entry = _OPEN.pop(path, None)
    if entry is not None:
        del entry  # the ndarray view goes first; the map closes when unreferenced


def _slots(init: bytes) -> np.ndarray:
    """The shared slots (a float64 view of the mapped file) named by a shared-mode init."""
    pid, seg, key = _head(init)
    path = _path(pid, seg)
    entry = _OPEN.get(path)
    if entry is not None and hmac.compare_digest(entry[0], key):
        return entry[2]
    gone = InvalidData("the shared model of this epoch does not exist",
                       detail="parallel_mode => 'shared' segments live for one epoch query; "
                              "this state names one that is gone or not this query's.",
                       hint="Run training through bismarck.train_glm or the bismarck CLI.")
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise gone from None
    try:
        size = os.fstat(fd).st_size
        if size < _SEG.size:
            raise gone
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    seg_key, n = _SEG.unpack_from(mm)
    if not hmac.compare_digest(seg_key, key) or size != _SEG.size + 8 * n:
        mm.close()
        raise gone
    view = np.frombuffer(mm, dtype=_F8, count=n, offset=_SEG.size)
    _OPEN[path] = (key, mm, view)
    return view


# -- the aggregate's functions in shared mode ---------------------------------------------------


def is_shared(state: bytes | None) -> bool:
    """Whether an aggregate state or init is a shared-mode one."""
    return state is not None and bytes(state[:8]) == MAGIC


def _parts(init: bytes) -> tuple[kinds.ModelKind, Layout, bytes, bytes]:
    _head(init)
    inner = bytes(init[HEADER:])
    kind = kinds.for_state(inner)
    layout = layout_of(kind)
    if layout is None:
        check_supported(kind, {})
    assert layout is not None
    return kind, layout, bytes(init[:HEADER]), inner


def _step(layout: Layout, shared: np.ndarray, inner: bytes,
          run: Callable[[bytes], bytes], idx: np.ndarray | None = None) -> bytes:
    """Run ``run`` on ``inner`` holding the current shared model; add its change to the model.

    The read and the addition are not atomic (Hogwild!): another worker's step between them is
    kept (we add a difference, never overwrite), but two additions to one slot at the same
    instant may lose one. ``idx``: the layout's slots of this state, if known.
    """
    s = np.frombuffer(inner, dtype=_F8).copy()
    if idx is None:
        idx = layout.slots(s)
    start = shared.copy()
    s[idx] = start
    out = run(s.tobytes())
    o = np.frombuffer(out, dtype=_F8)
    shared += o[idx] - start
    return out


def transition(state: bytes | None, x: Any, y: Any, init: bytes) -> bytes:
    """SFUNC over rows in shared mode: one row, the model read from and added to the segment."""
    kind, layout, head, inner_init = _parts(init)
    shared = _slots(init)
    inner = state[HEADER:] if state is not None else inner_init
    out = _step(layout, shared, bytes(inner), lambda st: kind.transition(st, x, y, inner_init))
    return head + out


def transition_block(state: bytes | None, block: bytes | None, init: bytes, first: int = 0,
                     stop: int | None = None) -> bytes:
    """SFUNC over packed blocks in shared mode: rows ``first:stop``, one shared step at a time."""
    kind, layout, head, inner_init = _parts(init)
    inner = bytes(state[HEADER:]) if state is not None else inner_init
    if block is None:
        return head + inner
    shared = _slots(init)
    s = np.frombuffer(inner, dtype=_F8)
    n = layout.block_rows(s, block)
    idx = layout.slots(s)
    pos, end = max(first or 0, 0), n if stop is None else min(stop, n)
    while pos < end:
        take = max(1, min(end - pos, layout.rows_to_step(np.frombuffer(inner, dtype=_F8))))
        lo, hi = pos, pos + take
        inner = _step(layout, shared, inner,
                      lambda st, lo=lo, hi=hi: kind.transition_block(st, block, inner_init,
                                                                      lo, hi), idx)
        pos = hi
    return head + inner


def _settle(kind: kinds.ModelKind, layout: Layout, shared: np.ndarray, inner: bytes) -> bytes:
    """Apply a state's pending partial step to the shared model; the state holding that model."""
    out = _step(layout, shared, inner, kind.finalize)
    s = np.frombuffer(out, dtype=_F8).copy()
    s[layout.slots(s)] = shared
    return s.tobytes()


def merge(a: bytes | None, b: bytes | None) -> bytes | None:
    """COMBINEFUNC in shared mode: settle both sides into the shared model, add statistics.

    Both sides then hold the same (shared) model, so the kind's own merge keeps it and sums
    the statistics (rows, losses, steps, parts).
    """
    if a is None or b is None:
        return a if b is None else b
    kind, layout, head, _ = _parts(a)
    shared = _slots(a)
    sa = _settle(kind, layout, shared, bytes(a[HEADER:]))
    sb = _settle(kind, layout, shared, bytes(b[HEADER:]))
    merged = np.frombuffer(kind.merge(sa, sb), dtype=_F8).copy()
    merged[layout.slots(merged)] = shared
    return head + merged.tobytes()


def finalize(state: bytes | None) -> bytes | None:
    """FINALFUNC in shared mode: the kind's own final state, holding the shared model.

    The result starts with the kind's magic, so the loop decodes it as any epoch's.
    """
    if state is None:
        return None
    kind, layout, _, _ = _parts(state)
    return _settle(kind, layout, _slots(state), bytes(state[HEADER:]))


# -- the training loop's side -------------------------------------------------------------------


@contextlib.contextmanager
def segment(session: Any, init: bytes) -> Iterator[bytes]:
    """Create the epoch's segment on the server; yield the shared init; always drop it.

    The caller runs the epoch in a subtransaction (a savepoint outside the server), so after an
    error or a cancel the drop still runs in the same transaction. The drop has its own
    subtransaction and a second try: a cancel that lands on the drop itself is honoured (raised
    once the segment is gone) instead of leaving the segment behind.
    """
    shared_init = bytes(session.query("SELECT bismarck._shared_create(%s) AS init", [init])[0][0])
    try:
        yield shared_init
    except BaseException:
        _drop(session, shared_init)
        raise
    failure = _drop(session, shared_init)
    if failure is not None:
        raise failure


def _drop(session: Any, shared_init: bytes) -> BaseException | None:
    """Drop the segment (two tries); the first failure, or None. A connection that is gone
    cannot drop it: its backend's end (a restart's temp-file cleanup, or the next sweep) does.
    """
    first = None
    for _ in range(2):
        try:
            with subtransaction(session):
                session.query("SELECT bismarck._shared_drop(%s) AS dropped", [shared_init])
            return first
        except Exception as e:  # noqa: PERF203 (a retry loop)
            first = first or e
    return first


def subtransaction(session: Any) -> contextlib.AbstractContextManager:
    """The session's subtransaction (savepoint), or a no-op for sessions without one."""
    sub = getattr(session, "subtransaction", None)
    return sub() if sub is not None else contextlib.nullcontext()
