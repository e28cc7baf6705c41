"""The validation rows of a ``shuffle => 'blocks'`` run, kept in the backend between passes.

An epoch without a copy reads every row of every page group it trains on, its validation rows
included (SQL cannot tell them apart: they are chosen by seeded draws in numpy,
:func:`bismarckpy.blockscan.held_positions`), and then sets them apart. The validation pass
that follows would read the whole table again to keep a tenth of it. Instead the training pass
copies the rows it sets apart into this store, and the validation pass evaluates the model on
them in memory (:func:`bismarckpy.blockscan.held_evaluate`), in the very order and buffers the
SQL pass reads them (groups in physical order, :data:`~bismarckpy.blockscan.BUFFER_BLOCKS`
groups with validation rows per buffer): the same blocks, so the same losses bit for bit.

The store belongs to one backend and to one pass. The training loop clears it before every
training pass (:func:`clear`, which records the role); the training pass fills it group by
group (:func:`keep`); the validation call consumes it (:func:`take`) and uses it only when it
holds exactly the validation rows the run's split expects of every group (``holds``), for the
same split seed and role; otherwise (a pass that ran elsewhere, groups whose rows are all
validation rows and so never read for training, more than :data:`MAX_BYTES`) the loop runs the
SQL validation pass as before. The store holds copies: nothing in it changes when the table
does, and a table that changed is caught by the run's write check as on every path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .pack import rows_as_records

#: At most this many bytes of validation rows are kept: 512 MB. A larger validation set is
#: read by the SQL validation pass.
MAX_BYTES = 512 << 20
#: Validation rows whose float64 copy would take more than this are kept in float32 (the
#: precision of a packed copy's blocks, ``dtype => 'float32'``): 256 MB, the validation rows of
#: about 3.2M rows of 100 features at ``validation_fraction`` 0.1 (in float32, up to 12.8M).
#: Below it the validation pass is the SQL pass bit for bit.
FLOAT64_BYTES = 256 << 20


@dataclass
class _Store:
    role: object = None  # who cleared it (None: nobody: nothing is kept)
    dtype: type = np.float64  # of the kept features
    split_seed: int | None = None
    groups: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    nbytes: int = 0
    full: bool = False  # rows were dropped for MAX_BYTES: the store cannot serve


_store = _Store()


def clear(role: object, rows: int = 0, width: int = 0) -> None:
    """Forget every kept row; rows kept from now on belong to ``role`` (the caller's). About
    ``rows`` validation rows of ``width`` features are expected: in float32 when their float64
    copy would exceed :data:`FLOAT64_BYTES`."""
    global _store
    big = int(rows) * 8 * (int(width) + 1) > FLOAT64_BYTES
    _store = _Store(role=role, dtype=np.float32 if big else np.float64)


def drop() -> None:
    """Forget every kept row and keep none until the next :func:`clear` (after an error: a
    failed run's rows would otherwise stay in the backend's memory until its next run)."""
    clear(None)


def keep(split_seed: int, group: int, X: np.ndarray, y: np.ndarray, rows: np.ndarray) -> None:
    """Keep copies of rows ``rows`` (indexes, in physical order) of features ``X`` (n × d,
    float64; kept in the store's dtype) and labels ``y`` as page group ``group``'s validation
    rows under ``split_seed``.

    Does nothing unless :func:`clear` opened the store; a second call for the same group, or a
    call under another split seed, marks the store unusable (it can then only be cleared)."""
    s = _store
    if s.role is None or s.full:
        return
    if s.split_seed is None:
        s.split_seed = int(split_seed)
    if s.split_seed != int(split_seed) or int(group) in s.groups:
        s.full = True
        return
    size = len(rows) * (np.dtype(s.dtype).itemsize * X.shape[1] + 8)
    if s.nbytes + size > MAX_BYTES:
        s.full = True
        s.groups.clear()
        return
    out = np.empty((len(rows), X.shape[1]), dtype=s.dtype)
    if len(rows) and X.shape[1]:
        if X.flags.c_contiguous and s.dtype is np.float64:  # a memcpy per row, any alignment
            rows_as_records(out)[:] = rows_as_records(X)[rows]
        else:
            out[:] = X[rows]
    s.groups[int(group)] = (out, np.asarray(y[rows], dtype=np.float64).copy())
    s.nbytes += size


def take(role: object, split_seed: int,
         holds: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The kept rows, empty afterwards: one ``(X, y)`` per group with validation rows, in
    group order, when they are exactly the validation rows a run of ``split_seed`` expects
    (``holds[g]`` rows of group ``g``, for every ``g``) and ``role`` kept them; else None."""
    global _store
    s, _store = _store, _Store()
    holds = np.asarray(holds, dtype=np.int64)
    if (s.role is None or s.role != role or s.full or s.split_seed != int(split_seed)
            or not s.groups):
        return None
    wanted = np.flatnonzero(holds > 0)
    if len(wanted) != len(s.groups):
        return None
    out = []
    for g in wanted:
        got = s.groups.get(int(g))
        if got is None or len(got[1]) != holds[g]:
            return None
        out.append(got)
    return out
