"""Block-shuffled scans without a copy (``shuffle => 'blocks'``, CorgiPile-style).

CorgiPile (Xu et al., SIGMOD 2022) showed that reading a table's pages in a random order of
*blocks* and shuffling tuples inside a buffer of several blocks converges like a full shuffle at
the cost of a plain scan. Here, without patching PostgreSQL: the heap is cut into page groups of
``pages`` consecutive pages (about ``block_size`` rows each); one epoch is one aggregate over the
groups in a seeded random order, ``BUFFER_BLOCKS`` groups per call, each group read by a TID
range scan (``ctid >= '(p,0)' AND ctid < '(q,0)'``, PostgreSQL 14+). ``array_agg`` builds one
2-D ``float8[]`` per buffer in C and the transition reads its in-memory bytes
(:func:`read_matrix`), shuffles the buffer's rows (seeded, new each epoch) and hands them to the
model kind's block kernel as one packed block (:mod:`bismarckpy.pack`).

The validation rows are chosen without a copy and without counting first: each usable row of
group ``g`` is held out when its uniform draw from a stream seeded by (seed, g), rows in
physical order (:func:`draws`), is below the fraction; ``h_g`` of the ``n_g`` usable rows, the
same rows in every epoch. A full preparation (:func:`prepare_step`) reads every group once in
physical order to learn ``n_g``, ``h_g`` and the training rows' moments; a run prepared from a
sample (:func:`sample`) learns them in its first epoch instead (:func:`first_step`, which
checks and counts every row as preparation does). Every later epoch checks ``n_g`` again, so a
table that changed under a run is an error, never a silently different split.

Errors: :class:`~bismarckpy.errors.InvalidData` for arrays that are not 2-D float8 without
NULLs of the expected width, and for a source whose rows changed since preparation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import clustering, heldrows, moments
from .errors import InvalidData, InvalidParameter
from .pack import HEADER_BYTES, MAGIC, rows_as_records
from .source import Session, Source

#: Page groups per buffer: the tuple shuffle mixes rows of this many random groups.
BUFFER_BLOCKS = 8
#: Preparation reads the groups in this many statements (one progress notice after each).
PREPARE_CHUNKS = 10
_FLOAT8OID = 701
_F8 = np.dtype("<f8")
# Parts of a group an epoch reads.
ALL, TRAIN, VALID = 0, 1, 2


def _maxalign(n: int) -> int:
    return (n + 7) & ~7


def read_matrix(raw: bytes | None, width: int | None = None,
                nulls: bool = False) -> np.ndarray:
    """The values of a ``float8[]``'s in-memory form (``bismarck._float8_array_bytes``).

    A 1-D array gives an ``n``-vector, a 2-D one an ``n × d`` matrix (a view of ``raw``, no
    copy); ``width`` checks ``d``. The layout is PostgreSQL's ``ArrayType`` without its varlena
    length: ndim, data offset (0: no NULL bitmap), element type, then ``ndim`` dimensions and
    lower bounds, then the values from ``MAXALIGN(16 + 8·ndim) - 4``. Raises
    :class:`InvalidData` for NULL elements, another element type, more than two dimensions or
    a size that does not match the header.
    """
    if raw is None:
        return np.empty((0, width or 0)) if width is not None else np.empty(0)
    head = np.frombuffer(raw, dtype="<i4", count=3) if len(raw) >= 12 else None
    if head is None:
        raise InvalidData("a block of rows is not an array", detail=f"{len(raw)} bytes.")
    ndim, dataoffset, elemtype = (int(v) for v in head)
    if ndim not in (1, 2) or len(raw) < 12 + 8 * ndim:
        raise InvalidData("a block of rows is not a 1-D or 2-D array",
                          detail=f"It has {ndim} dimensions.",
                          hint="Feature arrays must be one-dimensional.")
    if dataoffset != 0 and nulls and ndim in (1, 2):
        return _read_with_nulls(raw, ndim, dataoffset, width)
    if dataoffset != 0:
        raise InvalidData("a block of rows holds NULL elements",
                          detail="Rows with a NULL label or feature element should have been "
                                 "filtered out.",
                          hint="Fill or filter the missing values in a view.")
    if elemtype != _FLOAT8OID:
        raise InvalidData("a block of rows is not float8",
                          detail=f"Its element type has oid {elemtype}, not {_FLOAT8OID}.")
    dims = [int(v) for v in np.frombuffer(raw, dtype="<i4", count=ndim, offset=12)]
    start = _maxalign(16 + 8 * ndim) - 4
    if len(raw) != start + 8 * int(np.prod(dims)):
        raise InvalidData("a block of rows has an unexpected size",
                          detail=f"{len(raw)} bytes for an array of dimensions {dims}.")
    values = np.frombuffer(raw, dtype=_F8, offset=start)
    return _shaped(values, dims, width)


def _shaped(values: np.ndarray, dims: list[int], width: int | None) -> np.ndarray:
    """An array's values in its dimensions (1-D or n × d); ``width`` checks ``d``."""
    if len(dims) == 1:
        return values
    if width is not None and dims[1] != width:
        raise InvalidData("feature vector has the wrong length",
                          detail=f"The model has {width} features but rows have {dims[1]}.",
                          hint="Make every feature array the same length, or filter the odd "
                               "rows out.")
    return values.reshape(dims)


def _read_with_nulls(raw: bytes, ndim: int, dataoffset: int,
                     width: int | None) -> np.ndarray:
    """:func:`read_matrix` of an array with a NULL bitmap: NULL elements read as NaN (a row
    with one is then skipped as a missing value, as NaN is). The bitmap follows the dimensions
    and lower bounds, one bit per element (set: present, least significant bit first); the
    present values start at ``dataoffset`` (counted from the varlena header, which the bytes
    lack)."""
    dims = [int(v) for v in np.frombuffer(raw, dtype="<i4", count=ndim, offset=12)]
    n = int(np.prod(dims))
    start = 12 + 8 * ndim
    if len(raw) < start + (n + 7) // 8 or dataoffset - 4 < start + (n + 7) // 8:
        raise InvalidData("a block of rows has an unexpected size",
                          detail=f"{len(raw)} bytes for an array of dimensions {dims}.")
    present = np.unpackbits(np.frombuffer(raw, dtype=np.uint8, count=(n + 7) // 8,
                                          offset=start), bitorder="little")[:n].astype(bool)
    k = int(present.sum())
    if len(raw) != dataoffset - 4 + 8 * k:
        raise InvalidData("a block of rows has an unexpected size",
                          detail=f"{len(raw)} bytes for an array of dimensions {dims}.")
    values = np.full(n, np.nan)
    values[present] = np.frombuffer(raw, dtype=_F8, count=k, offset=dataoffset - 4)
    return _shaped(values, dims, width)


def draws(seed: int, group: int, n: int) -> np.ndarray:
    """One seeded uniform draw in [0, 1) per usable row of a group (physical order), the same
    in every epoch of a run: a row is a validation row when its draw is below the fraction."""
    return np.random.default_rng([int(seed) & (2**63 - 1), int(group)]).random(n)


def held_mask(seed: int, group: int, n: int, held: int) -> np.ndarray:
    """Which of a group's ``n`` usable rows (in physical order) are validation rows: the
    ``held`` rows with the smallest :func:`draws`, which are exactly those whose draw is below
    the fraction when ``held`` is their number (:func:`held_count`)."""
    mask = np.zeros(n, dtype=bool)
    if held >= n:
        mask[:] = held > 0
    elif held > 0:
        mask[np.argpartition(draws(seed, group, n), held - 1)[:held]] = True
    return mask


def held_count(seed: int, group: int, n: int, fraction: float) -> int:
    """Validation rows of a group of ``n`` usable rows: each is held out with probability
    ``fraction`` by its seeded draw (a Bernoulli sample, not an exact share: no count of the
    whole table is needed first)."""
    if fraction <= 0 or n <= 0:
        return 0
    return int((draws(seed, group, n) < fraction).sum())


def finite_rows(X: np.ndarray, y: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows whose label and features are all finite (NaN and ±inf are missing values, as on
    every path), and how many were dropped. The SQL filter leaves this test to numpy: a
    vectorised pass costs far less than comparing every array element in SQL."""
    X = X.reshape(-1, d)
    ok = finite_mask(X, y)
    if ok is None:
        return X, y, 0
    return X[ok], y[ok], int((~ok).sum())


def finite_mask(X: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """Which rows are finite (None: all of them). One cheap pass first: a row sum is finite
    when every value is (a sum can also overflow, so rows whose sum is not are checked
    value by value)."""
    with np.errstate(over="ignore", invalid="ignore"):
        sums = X.sum(axis=1) + y
    bad = ~np.isfinite(sums)
    if not bad.any():
        return None
    ok = ~bad
    rows = np.flatnonzero(bad)
    ok[rows] = np.isfinite(y[rows]) & np.isfinite(X[rows]).all(axis=1)
    return None if ok.all() else ok


@dataclass
class Buffer:
    """The rows of one buffer an epoch keeps: rows ``rows`` (None: all) of features ``X``
    (n × d) and raw labels ``y`` (views of the arrays' bytes: nothing copied yet).

    ``checked`` is False when the rows' finiteness was not tested row by row because their
    number already matched preparation's count of usable rows: :func:`as_block` then checks
    the rows it copies (one reduction instead of a pass over every row's values)."""

    X: np.ndarray
    y: np.ndarray
    rows: np.ndarray | None = None
    checked: bool = True

    def __len__(self) -> int:
        return len(self.y) if self.rows is None else len(self.rows)

    def taken(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept rows as arrays (copies unless all rows are kept)."""
        if self.rows is None:
            return self.X, self.y
        return self.X[self.rows], self.y[self.rows]


#: Cached validation positions of page groups, keyed by (seed, group, rows, held): every epoch
#: reads every group again, and drawing a group's permutation costs more than the lookup.
_held: dict[tuple[int, int, int, int], np.ndarray] = {}
#: At most this many cached positions (4 bytes each): 16M, 64 MB.
HELD_CACHE_POSITIONS = 1 << 24
_held_size = [0]


def held_positions(seed: int, group: int, n: int, held: int) -> np.ndarray:
    """The positions (in physical order, among the group's ``n`` usable rows) of a group's
    validation rows: the ``True`` entries of :func:`held_mask`, cached per backend."""
    key = (int(seed), int(group), int(n), int(held))
    got = _held.get(key)
    if got is None:
        got = np.flatnonzero(held_mask(seed, group, n, held)).astype(np.int32)
        if _held_size[0] + len(got) > HELD_CACHE_POSITIONS:
            _held.clear()
            _held_size[0] = 0
        _held[key] = got
        _held_size[0] += len(got)
    return got


def select_rows(xs: bytes | None, ys: bytes | None, d: int | None, groups: list | None,
                counts: list | None, holds: list | None, part: int,
                split_seed: int) -> Buffer:
    """The rows of a buffer an epoch reads (``part``: ALL, TRAIN or VALID), physical order.

    ``groups``, ``counts`` and ``holds`` list the buffer's page groups in the order their rows
    arrive, with the usable rows and validation rows preparation found in each; ``d`` (None:
    the array's own width) checks the number of features. Raises
    :class:`InvalidData` when the rows that arrive do not add up to ``counts`` (the source
    changed since preparation).

    When as many rows arrive as preparation counted usable rows (the usual case), they are
    taken as usable without a pass over their values; the returned buffer says so
    (``checked`` False) and :func:`as_block` checks the rows it copies.
    """
    X, y = _matrix(xs, ys, d)
    return select_matrix(X, y, groups, counts, holds, part, split_seed)


def _matrix(xs: bytes | None, ys: bytes | None, d: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Features (n × d) and labels of one ``array_agg`` pair (views of the bytes)."""
    X = read_matrix(xs, d, nulls=True)  # NULL elements: NaN, skipped as missing values
    y = read_matrix(ys)
    if X.ndim != 2:
        X = X.reshape(len(y), -1) if len(y) else X.reshape(0, d or 0)
    if X.shape[0] != len(y):
        raise InvalidData("a block's labels do not match its rows",
                          detail=f"{X.shape[0]} feature rows, {len(y)} labels.")
    return X, y


def select_matrix(X: np.ndarray, y: np.ndarray, groups: list | None, counts: list | None,
                  holds: list | None, part: int, split_seed: int) -> Buffer:
    """:func:`select_rows` of a buffer's rows already read: features ``X`` (n × d) and raw
    labels ``y``, the rows of ``groups`` in order."""
    n = len(y)
    gs = [g for g in (groups or []) if g is not None]
    ns = [int(c) for c in (counts or [])[:len(gs)]]
    checked = sum(ns) != n
    usable = None
    if checked:  # rows that are not usable arrived (or the table changed): test each row
        # (on an aligned copy: numpy's reductions over unaligned float64 are slow)
        ok = finite_mask(X if X.flags.aligned else X.copy(), y)
        usable = None if ok is None else np.flatnonzero(ok)
        n = len(y) if usable is None else len(usable)
        if sum(ns) != n:
            raise changed(n, sum(ns))
    if part == ALL or not any(holds or []):
        if part == VALID:
            return Buffer(X, y, np.zeros(0, dtype=np.int64), checked)
        return Buffer(X, y, usable, checked)
    mask = np.zeros(n, dtype=bool)
    at = 0
    for g, c, h in zip(gs, ns, holds or []):
        if h:
            pos = at + held_positions(split_seed, g, c, int(h))
            mask[pos] = True
            if part == TRAIN:  # read anyway: kept for the validation pass (heldrows)
                heldrows.keep(split_seed, g, X, y, pos if usable is None else usable[pos])
        at += c
    keep = np.flatnonzero(mask if part == VALID else ~mask)
    return Buffer(X, y, keep if usable is None else usable[keep], checked)


def changed(got: int, expected: int, what: str = "A group of pages") -> InvalidData:
    """The error for a source whose rows changed while a run read it (``what`` held ``got``
    usable rows where preparation counted ``expected``)."""
    return InvalidData(
        "the source table changed during training",
        detail=f"{what} held {got} usable rows; preparation counted {expected}.",
        hint="Train again when the table is not being written, or train on a snapshot "
             "(CREATE TABLE ... AS) of it.")


def storage(session: Session, relation: str, names: Sequence[str] | None = None
            ) -> tuple[int | None, str | None]:
    """The file that holds ``relation``'s rows (``pg_relation_filenode``; None when empty) and
    its columns (number, name, type, type modifier of each; only those ``names``, the run's
    label and features, when given: :func:`columns`).

    CLUSTER, VACUUM FULL and other rewrites give the table a new file, and with it another
    physical order, which moves rows between page groups (and so between training and
    validation) without changing a row version. Renaming columns changes no row or file
    either, but the run's next epoch reads features by name: two columns whose names were
    swapped would train one model on both."""
    row = session.query(f"SELECT pg_catalog.pg_relation_filenode(s.tableoid)::int8 AS f "
                        f"FROM {relation} AS s LIMIT 1")
    return (int(row[0][0]) if row and row[0][0] is not None else None,
            columns(session, relation, names))


def run_columns(src: Source) -> list[str]:
    """The columns a run reads: its label (if any) and its features."""
    return [*([src.label] if src.label is not None else []), *src.features]


def columns(session: Session, relation: str, names: Sequence[str] | None = None
            ) -> str | None:
    """``relation``'s columns as text: number, name, type and type modifier of each (one
    catalog lookup). With ``names`` (a run's label and features) only those: a column added
    or dropped beside them changes nothing a run reads, one of them renamed, retyped, dropped
    or re-added (another number) changes the text."""
    cols = session.query(
        "SELECT pg_catalog.string_agg(a.attnum::text || ' ' || pg_catalog.quote_ident("
        "a.attname) || ' ' || a.atttypid::text || ' ' || a.atttypmod::text, ',' ORDER BY "
        "a.attnum) AS c FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = "
        "%s::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped"
        + (" AND a.attname = ANY(%s::text[])" if names is not None else ""),
        [relation, *([list(names)] if names is not None else [])])
    return cols[0][0] if cols else None


def write_mark(session: Session, relation: str, names: Sequence[str] | None = None
               ) -> tuple[int, int, tuple[int | None, str | None]]:
    """A fingerprint of ``relation``'s row versions and their file: ``(rows, sum of their
    xmin, file)``.

    Every INSERT or UPDATE writes a row version whose ``xmin`` (the writing transaction's id)
    is newer than every version already there, and a DELETE removes one, so any write after
    the mark changes the count or raises the sum (short of the 32-bit transaction counter
    wrapping around during a run); rows the caller's own transaction wrote before the mark
    count in both fingerprints. A rewrite (CLUSTER, VACUUM FULL) keeps the versions but changes
    the file, a column renamed keeps both but changes the columns (:func:`storage`). One scan
    of the table."""
    row = session.query(f"SELECT count(*)::int8 AS n, coalesce(sum(s.xmin::text::int8), 0)::int8 "
                        f"AS xmins FROM {relation} AS s")[0]
    return int(row[0]), int(row[1]), storage(session, relation, names)


def check_unwritten(session: Session, relation: str,
                    mark: tuple[int, int, tuple[int | None, str | None]],
                    names: Sequence[str] | None = None) -> None:
    """Raise InvalidData ("the source table changed during training") when ``relation``'s
    fingerprint (:func:`write_mark`) is no longer ``mark``: rows were inserted, updated (also
    in place) or deleted since, and the model would mix two versions of the data."""
    if write_mark(session, relation, names) != mark:
        raise InvalidData(
            "the source table changed during training",
            detail="Rows were inserted, updated or deleted (or the table was rewritten, by "
                   "CLUSTER or VACUUM FULL, or its label or feature columns renamed or "
                   "retyped) after the run "
                   "first read the table; the model "
                   "would mix two versions of the data, or its validation rows would have "
                   "changed, so it was not stored.",
            hint="Train again when the table is not being written, or train on a snapshot "
                 "(CREATE TABLE ... AS) of it.")


def check_columns(session: Session, relation: str,
                  mark: tuple[int | None, str | None] | None,
                  names: Sequence[str] | None = None) -> None:
    """Raise InvalidData ("the source table changed during training") when ``relation``'s
    columns are no longer those of ``mark`` (:func:`storage`, taken when the run first
    read it): each epoch reads the features by name, so a column renamed and renamed back
    between two checks at the start and the end would have trained some epochs on another
    column. One catalog lookup, run before each later epoch."""
    if mark is None or mark[1] is None:
        return
    if columns(session, relation, names) != mark[1]:
        raise InvalidData(
            "the source table changed during training",
            detail="Its label or feature columns were renamed, retyped or dropped after the "
                   "run first read the table; later epochs would read other columns under "
                   "their names, so no model was stored. (Other columns may change.)",
            hint="Train again when those columns are not being changed.")


@contextlib.contextmanager
def unwritten_around(session: Session, relation: str | None,
                     names: Sequence[str] | None = None) -> Iterator[None]:
    """Hold ``relation``'s fingerprint (:func:`write_mark`) from before the body to after it
    (None: nothing to check). A body that fails after a write (a copy that read rows the
    checks never saw: a value too large for its block, say) fails with "the source table
    changed during training" instead: the write is what the user must hear about. Any error
    counts (inside the server a nested call's error arrives as PL/Python's ``SPIError``, not
    a :class:`~bismarckpy.errors.BismarckError`); when the check cannot run, the body's
    error stands."""
    if relation is None:
        yield
        return
    mark = write_mark(session, relation, names)
    try:
        # a savepoint, so that the check can still run after the body failed
        sub = getattr(session, "subtransaction", None)
        with sub() if sub is not None else contextlib.nullcontext():
            yield
    except Exception as exc:
        try:
            check_unwritten(session, relation, mark, names)
        except InvalidData as changed_error:
            raise changed_error from exc
        except Exception:  # noqa: BLE001 - the check could not run: report the original
            pass
        raise
    check_unwritten(session, relation, mark, names)


_scratch: dict[int, bytearray] = {}


def aligned(X: np.ndarray) -> np.ndarray:
    """``X`` (an ``n × d`` C-ordered float64 matrix) when it is 8-byte aligned, else an aligned
    copy made by gathering its rows as records (:func:`rows_as_records`)."""
    if X.flags.aligned or X.shape[1] == 0 or not X.flags.c_contiguous:
        return X if X.flags.aligned else X.copy()
    out = np.empty(X.shape, dtype=_F8)
    rows_as_records(out)[:] = rows_as_records(X)
    return out


def as_block(buf: Buffer, shuffle_seed: int | None) -> bytearray | None:
    """The buffer's rows (shuffled when ``shuffle_seed`` is given) as one float64 packed block
    (:mod:`bismarckpy.pack`) whose offsets are all zero: the residuals are the values.

    The block never leaves this process and holds float64, so offsets at the column minimum
    would buy no precision (``x - min`` rounds at the scale of ``x`` just as the kernels' own
    products do) and cost two passes over the rows (the minimum, the subtraction).

    The block is written into a scratch buffer reused from call to call (a fresh 3 MB buffer
    per call costs more in page faults than the copy itself): it is valid until the next call.
    Raises :class:`InvalidData` (the table changed) when the buffer was not checked row by row
    (:class:`Buffer`) and a copied value is not finite.
    """
    n, d = len(buf), buf.X.shape[1]
    if n == 0:
        return None
    start = HEADER_BYTES + 8 * (1 + d)
    size = start + 8 * n * (1 + d)
    block = _scratch.get(size)
    if block is None:
        _scratch.clear()
        block = _scratch[size] = bytearray(size)
    block[:HEADER_BYTES] = MAGIC + np.array([d, 8], dtype="<i4").tobytes()
    offsets = np.frombuffer(block, dtype=_F8, count=1 + d, offset=HEADER_BYTES)
    values = np.frombuffer(block, dtype=_F8, offset=start).reshape(n, 1 + d)
    offsets[:] = 0.0
    order = buf.rows
    if shuffle_seed is not None:
        perm = np.random.default_rng(int(shuffle_seed) & (2**63 - 1)).permutation(n)
        order = perm if order is None else order[perm]
    values[:, 0] = buf.y if order is None else buf.y[order]
    if d:  # whole rows gathered as records into the block's feature columns
        rows = np.frombuffer(block, dtype=np.uint8, offset=start).reshape(n, 8 * (1 + d))
        target = rows[:, 8:].view(np.dtype((np.void, 8 * d)))[:, 0]
        source = rows_as_records(buf.X) if buf.X.flags.c_contiguous else None
        if source is None:
            values[:, 1:] = buf.X if order is None else buf.X[order]
        else:
            target[:] = source if order is None else source[order]
    if not buf.checked:
        bad = nonfinite_rows(values)
        if bad:
            raise changed(n - bad, n)
    return block


def nonfinite_rows(values: np.ndarray) -> int:
    """How many rows of ``values`` (``n × k`` float64, aligned) hold a NaN or ±inf.

    One pass in the usual case: column sums are finite when every value is (a sum of finite
    values can also overflow, so only then is each value tested)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(values.sum(axis=0)).all():
            return 0
    return int((~np.isfinite(values).all(axis=1)).sum())


@dataclass
class _Assembly:
    """The rows of the buffer being assembled, one page group per call (see
    :func:`epoch_step`): the rows the epoch keeps, contiguous and aligned, in a matrix reused
    from buffer to buffer; ``checked`` False when some were not tested row by row."""

    X: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    y: np.ndarray = field(default_factory=lambda: np.empty(0))
    n: int = 0
    groups: list[int] = field(default_factory=list)
    checked: bool = True
    key: tuple = ()  # (part, split seed, shuffle seed, counts) of the buffer


_assembly = _Assembly()  # one per backend: an epoch's aggregate runs one buffer at a time


def _collect(xs: bytes | None, ys: bytes | None, groups: list, counts: list,
             holds: list | None, part: int, split_seed: int) -> None:
    """Append the rows of one page group (``groups[-1]``, after ``groups[:-1]``) that the
    epoch reads (``part``) to the buffer being assembled; its first group starts a new one.

    The same rows, in the same order, as :func:`select_rows` keeps of the whole buffer.
    Raises :class:`InvalidData` for a group whose usable rows are not the ``counts`` entry
    preparation found (the table changed) and for a group that does not follow the ones
    collected (never mixes two buffers)."""
    a = _assembly
    if len(groups) == 1:
        a.n, a.groups, a.checked = 0, [], True
    elif a.groups != groups[:-1]:
        raise InvalidData("the page groups of a buffer arrived out of order",
                          detail=f"Group {groups[-1]} follows {a.groups}, not {groups[:-1]}.",
                          hint="This is a bug in the epoch's query plan; please report it.")
    a.groups = list(groups)
    j = len(groups) - 1
    c, h = int(counts[j]), int((holds or [0] * len(counts))[j] or 0)
    if xs is None:
        if c:
            raise changed(0, c)
        return
    X, y = _matrix(xs, ys, a.X.shape[1] if a.n else None)
    m, d = X.shape
    rows = None  # all of them
    if m != c:  # rows that are not usable arrived (or the table changed): test each row
        ok = finite_mask(X if X.flags.aligned else X.copy(), y)
        rows = None if ok is None else np.flatnonzero(ok)
        if (m if rows is None else len(rows)) != c:
            raise changed(m if rows is None else len(rows), c)
    else:
        a.checked = False  # as_block tests the rows it copies
    if part == VALID:
        pick = held_positions(split_seed, groups[j], c, h) if h else np.zeros(0, np.int32)
    elif part == TRAIN and h:
        keep = np.ones(c, dtype=bool)
        held = held_positions(split_seed, groups[j], c, h)
        keep[held] = False
        pick = np.flatnonzero(keep)
        heldrows.keep(split_seed, groups[j], X, y, held if rows is None else rows[held])
    else:
        pick = None
    if pick is not None:
        rows = pick if rows is None else rows[pick]
    k = m if rows is None else len(rows)
    if a.n + k > len(a.y) or a.X.shape[1] != d:
        size = max(a.n + k, 2 * len(a.y), 4096)
        X2, y2 = np.empty((size, d)), np.empty(size)
        if a.n:
            X2[:a.n] = a.X[:a.n]
            y2[:a.n] = a.y[:a.n]
        a.X, a.y = X2, y2
    if k and d:  # whole rows as records: the source sits off an 8-byte boundary
        source = rows_as_records(X)
        rows_as_records(a.X)[a.n:a.n + k] = source if rows is None else source[rows]
    a.y[a.n:a.n + k] = y if rows is None else y[rows]
    a.n += k


def epoch_step(kernel, state: bytes | None, xs: bytes | None, ys: bytes | None,
               groups: list | None, counts: list | None, holds: list | None, part: int,
               split_seed: int, shuffle_seed: int | None, init: bytes) -> bytes:
    """One call of an epoch (:func:`epoch_sql`): a whole buffer of page groups, or one group.

    ``counts`` and ``holds`` describe the whole buffer, ``groups`` its groups up to the ones
    whose rows ``xs``/``ys`` hold. Delivered one group per call (the validation pass), each
    group's rows of ``part`` are collected (copied into one aligned matrix while they are still
    in the processor's cache: for the validation pass only its validation rows) until the last
    group completes the buffer. The buffer's rows are then shuffled and handed to ``kernel`` (a
    model kind's ``transition_block(state, block, init)``, which checks the block's width
    against its state) as one block: either way the block :func:`select_rows` and
    :func:`as_block` make of the whole buffer's rows at once.
    """
    gs, ns = list(groups or []), list(counts or [])
    a = _assembly
    key = (part, split_seed, shuffle_seed, ns)
    if len(gs) < len(ns) or (len(gs) > 1 and a.groups == gs[:-1] and a.key == key):
        _collect(xs, ys, gs, ns, holds, part, split_seed)
        a.key = key
        if len(gs) < len(ns):
            return state if state is not None else init
        a.groups = []  # complete: a whole buffer in one call never continues it
        buf = Buffer(a.X[:a.n], a.y[:a.n], None, a.checked)
    else:  # the whole buffer in this call
        buf = select_rows(xs, ys, None, gs, ns, holds, part, split_seed)
    block = as_block(buf, shuffle_seed)
    if block is None:
        return state if state is not None else init
    return kernel(state, block, init)


def held_evaluate(kernel: Callable, finalize: Callable, init: bytes, holds: list | None,
                  split_seed: int, role: object,
                  buffer_blocks: int = BUFFER_BLOCKS) -> bytes | None:
    """The validation pass of an epoch over the validation rows its training pass kept in
    this backend (:mod:`bismarckpy.heldrows`): the finalized state of ``kernel`` (a kind's
    ``transition_block``) from ``init`` over them, ``finalize`` applied; None when the store
    cannot stand in for the pass (not kept by ``role`` under ``split_seed``, or not exactly
    ``holds[g]`` rows of every group ``g``). The store is emptied either way.

    The blocks are those of the SQL pass (:func:`epoch_sql` with ``part`` VALID): groups in
    physical order, ``buffer_blocks`` groups with validation rows per block, rows in physical
    order, checked as that pass checks them (:func:`as_block`): the same state bit for bit
    (unless the store kept float32 features, then to float32's rounding of the features).
    """
    got = heldrows.take(role, split_seed, np.asarray(holds or [], dtype=np.int64))
    if got is None:
        return None
    state = None
    for start in range(0, len(got), int(buffer_blocks)):
        part = got[start:start + int(buffer_blocks)]
        X = np.concatenate([x for x, _ in part]) if len(part) > 1 else part[0][0]
        y = np.concatenate([v for _, v in part]) if len(part) > 1 else part[0][1]
        X = X.astype(_F8, copy=False)  # kept in float32 when large (heldrows.FLOAT64_BYTES)
        block = as_block(Buffer(X, y, None, checked=False), None)
        if block is not None:
            state = kernel(state, block, init)
    return None if state is None else finalize(state)


def held_sql(holds: np.ndarray, split_seed: int) -> str:
    """The call of :func:`held_evaluate` for a run's split, with one ``%s`` for the init."""
    return (f"SELECT bismarck._held_evaluate(%s, {_int_array(holds)}, "
            f"{int(split_seed)}::int8) AS state")


# -- preparation: one read of every group, in physical order ------------------------------------

(_P_D, _P_F, _P_SEEN, _P_GROUPS, _P_TOTAL, _P_MULTI, _P_EMPTY, _P_RAGGED, _P_LEN_LO, _P_LEN_HI,
 _P_Y_MIN, _P_Y_MAX, _P_ALL01, _P_ALLPM1, _P_AX, _P_AY, _P_MX, _P_MY) = range(18)
_P_HEAD = 18


def split_count(fraction: float, n: int) -> int:
    """``ceil(fraction · n)`` immune to the product's float error (the training loop's
    ``validation_count``): the validation rows of the copies, whose count is known first."""
    if fraction <= 0 or n <= 0:
        return 0
    return min(n, int(np.ceil(fraction * n - 1e-9)))


def prepare_init(d: int, fraction: float, seen: int) -> bytes:
    """The state a chunk of the preparation starts from: ``seen`` usable rows before it."""
    head = np.zeros(_P_HEAD, dtype=_F8)
    head[_P_D], head[_P_F], head[_P_SEEN] = d, fraction, seen
    head[[_P_LEN_LO, _P_Y_MIN, _P_MX, _P_MY]] = np.inf
    head[[_P_LEN_HI, _P_Y_MAX]] = -np.inf
    head[[_P_ALL01, _P_ALLPM1]] = 1.0
    fresh = moments._new(1 + d).tobytes()  # noqa: SLF001 (same package)
    return head.tobytes() + fresh + fresh  # the rows' moments, the groups' (collapsed)


def prepare_step(state: bytes | None, xs: bytes | None, ys: bytes | None, group: int,
                 shape: list | None, init: bytes, seed: int) -> bytes:  # noqa: PLR0913
    """Read one group: check and count its rows, choose its validation rows, add the training
    rows (label first) to the moments.

    ``xs``/``ys`` hold the rows SQL found complete (no NULL, one dimension, the expected
    length); NaN and ±inf are told apart here. ``shape`` is SQL's count of the group's rows,
    of multi-dimensional and of empty arrays, of arrays of another length, and the smallest
    and largest such length. The state is the head (counts, ranges, label facts), the moments,
    the moments of the groups' training rows collapsed to their means (the spread between
    groups: :mod:`bismarckpy.clustering`), then one ``(group, n_g, h_g)`` triple per group read.
    """
    s = np.frombuffer(state if state is not None else init, dtype=_F8)
    d, fraction = int(s[_P_D]), float(s[_P_F])
    m_len = 1 + 4 * (1 + d)
    head = s[:_P_HEAD].copy()
    n_all, multi, empty, ragged, len_lo, len_hi = ([int(v or 0) for v in shape[:4]]
                                                   + [shape[4], shape[5]]) if shape else (
        0, 0, 0, 0, None, None)
    head[_P_TOTAL] += n_all
    head[_P_MULTI] += multi
    head[_P_EMPTY] += empty
    head[_P_RAGGED] += ragged
    if len_lo is not None:
        head[_P_LEN_LO] = min(head[_P_LEN_LO], len_lo)
        head[_P_LEN_HI] = max(head[_P_LEN_HI], len_hi)
    X = read_matrix(xs, d)
    y = read_matrix(ys)
    if X.reshape(-1, d).shape[0] != len(y):
        raise InvalidData("a block's labels do not match its rows")
    X, y, _ = finite_rows(X, y, d)
    n = len(y)
    mom = s[_P_HEAD:_P_HEAD + m_len].copy()
    btw = s[_P_HEAD + m_len:_P_HEAD + 2 * m_len].copy()
    held = held_count(seed, group, n, fraction)
    if n:
        head[_P_AX] = max(head[_P_AX], float(X.max()), -float(X.min()))
        head[_P_MX] = min(head[_P_MX], _smallest_nonzero(X))
        ay = np.abs(y)
        head[_P_AY] = max(head[_P_AY], float(ay.max()))
        head[_P_MY] = min(head[_P_MY], _smallest_nonzero(y))
        head[_P_Y_MIN] = min(head[_P_Y_MIN], float(y.min()))
        head[_P_Y_MAX] = max(head[_P_Y_MAX], float(y.max()))
        head[_P_ALL01] = float(bool(head[_P_ALL01]) and bool(((y == 0) | (y == 1)).all()))
        head[_P_ALLPM1] = float(bool(head[_P_ALLPM1]) and bool(((y == -1) | (y == 1)).all()))
        if held:
            keep = ~held_mask(seed, group, n, held)
            X, y = X[keep], y[keep]
        if len(y):
            part = moments.stack(moments.of_rows(y[:, None]), moments.of_rows(X))
            mom = moments._merge_into(mom, part)  # noqa: SLF001 (same package)
            btw = moments._merge_into(btw, moments.collapsed(part))  # noqa: SLF001
    head[_P_SEEN] += n
    head[_P_GROUPS] += 1
    return (head.tobytes() + mom.tobytes() + btw.tobytes()
            + s[_P_HEAD + 2 * m_len:].tobytes()
            + np.array([group, n, held], dtype=_F8).tobytes())


def _smallest_nonzero(v: np.ndarray) -> float:
    """The smallest non-zero magnitude in ``v`` (inf: all zero); a copy only when zeros."""
    a = np.abs(v)
    m = float(a.min())
    if m > 0:
        return m
    nz = a[a > 0]
    return float(nz.min()) if nz.size else np.inf


@dataclass
class Survey:
    """What one read of every group says about the rows (see ``packing.Checked``)."""

    n_total: int
    n_usable: int
    multi: int
    empty: int
    ragged: int
    len_lo: int | None
    len_hi: int | None
    y_min: float | None
    y_max: float | None
    all01: bool
    allpm1: bool
    max_abs_x: float
    max_abs_y: float
    min_abs_x: float
    min_abs_y: float


@dataclass
class Prepared:
    """What preparation learned: usable and validation rows of every group, the moments of
    the training rows (column 0 is the label), and the survey of all rows."""

    counts: np.ndarray
    holds: np.ndarray
    stats: moments.Moments | None
    survey: Survey | None = None
    #: Per column (the label first): how far the page groups' means spread beyond what rows
    #: in random order give (:func:`bismarckpy.clustering.order_ratios`); None: not measured.
    order: np.ndarray | None = None

    def clustered(self, averaged: bool = False) -> float | None:
        """The label's ``F`` when the table's rows are stored in an order that follows it
        (:func:`bismarckpy.clustering.label_clustered`; ``averaged``: the run averages its
        iterates), else None."""
        return clustering.label_clustered(self.order,
                                          int(((self.counts - self.holds) > 0).sum()),
                                          self.stats, averaged)


def prepare_decode(states: list[bytes], groups: int, d: int) -> Prepared:
    """Combine the chunks' final states (any order) into per-group counts, one moments and
    one survey."""
    counts = np.zeros(groups, dtype=np.int64)
    holds = np.zeros(groups, dtype=np.int64)
    m_len = 1 + 4 * (1 + d)
    total: np.ndarray | None = None
    between: np.ndarray | None = None
    head = np.frombuffer(prepare_init(d, 0.0, 0), dtype=_F8, count=_P_HEAD).copy()
    for raw in states:
        if raw is None:
            continue
        s = np.frombuffer(raw, dtype=_F8)
        h = s[:_P_HEAD]
        for slot in (_P_TOTAL, _P_MULTI, _P_EMPTY, _P_RAGGED):
            head[slot] += h[slot]
        for slot in (_P_LEN_LO, _P_Y_MIN, _P_MX, _P_MY):
            head[slot] = min(head[slot], h[slot])
        for slot in (_P_LEN_HI, _P_Y_MAX, _P_AX, _P_AY):
            head[slot] = max(head[slot], h[slot])
        head[_P_ALL01] = min(head[_P_ALL01], h[_P_ALL01])
        head[_P_ALLPM1] = min(head[_P_ALLPM1], h[_P_ALLPM1])
        mom = s[_P_HEAD:_P_HEAD + m_len].copy()
        total = mom if total is None else moments._merge_into(total, mom)  # noqa: SLF001
        btw = s[_P_HEAD + m_len:_P_HEAD + 2 * m_len].copy()
        between = btw if between is None else moments._merge_into(between, btw)  # noqa: SLF001
        triples = s[_P_HEAD + 2 * m_len:].reshape(-1, 3).astype(np.int64)
        counts[triples[:, 0]] = triples[:, 1]
        holds[triples[:, 0]] = triples[:, 2]
    stats = moments.decode(total.tobytes()) if total is not None and total[0] > 0 else None
    order = None if stats is None or between is None else clustering.order_ratios(
        stats, moments.decode(between.tobytes()), int(((counts - holds) > 0).sum()))

    def finite(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    lo, hi = finite(head[_P_LEN_LO]), finite(head[_P_LEN_HI])
    survey = Survey(int(head[_P_TOTAL]), int(counts.sum()), int(head[_P_MULTI]),
                    int(head[_P_EMPTY]), int(head[_P_RAGGED]),
                    None if lo is None else int(lo), None if hi is None else int(hi),
                    finite(head[_P_Y_MIN]), finite(head[_P_Y_MAX]), bool(head[_P_ALL01]),
                    bool(head[_P_ALLPM1]), float(head[_P_AX]), float(head[_P_AY]),
                    float(head[_P_MX]), float(head[_P_MY]))
    return Prepared(counts, holds, stats, survey, order)


# -- SQL: the layout of a table's pages and the statements that read them -----------------------

@dataclass
class Layout:
    """How a table's heap is cut into page groups."""

    relation: str  # SQL text of the table (``%`` doubled)
    pages: int  # heap pages when the run started
    per_group: int  # pages per group
    groups: int


def refuse_unless_heap(src: Source) -> None:
    """``shuffle => 'blocks'`` reads pages by physical position: a table or materialized view
    the caller may read whole. Anything else is refused with what to use instead."""
    if src.inheritance_parent:
        raise InvalidParameter(
            f"shuffle => 'blocks' cannot read {src.name}",
            detail=f"{src.name} has inheritance children: its scans read their rows too, "
                   "whose physical positions (ctid) repeat its own, and block shuffling "
                   "reads groups of pages by position.",
            hint="Use shuffle => 'once' (a shuffled copy of the parent's and the children's "
                 "rows) or 'always', or train on the child tables themselves.")
    if src.row_key != "s.ctid::text":
        raise InvalidParameter(
            f"shuffle => 'blocks' cannot read {src.name}",
            detail="Block shuffling reads groups of a table's pages by their physical position "
                   "(ctid); views, foreign and partitioned tables have none, a table with "
                   "inheritance children shares its positions with theirs, and reading them "
                   "needs SELECT on the whole table.",
            hint="Use shuffle => 'once' (a shuffled copy) or 'always', or train on a table (for "
                 "example CREATE TABLE ... AS SELECT from the view).")


def layout(session: Session, src: Source, n_rows: int | None, block_size: int) -> Layout:
    """Page groups of about ``block_size`` rows, from the heap's size and ``n_rows`` rows
    (None: the rows of the first pages, counted)."""
    refuse_unless_heap(src)
    pages = int(session.query(
        "SELECT (pg_relation_size(%s::regclass) / current_setting('block_size')::int8)::int8 "
        "AS pages", [src.name])[0][0])
    if n_rows is None:
        probe = min(pages, 32)
        n_rows = int(session.query(
            f"SELECT count(*) AS n FROM {src.relation} AS s WHERE s.ctid < '({probe},0)'::tid"
        )[0][0]) * pages / max(probe, 1)
    per_page = n_rows / max(pages, 1)
    # At most the whole heap per group (an empty heap: no group at all).
    per_group = max(1, min(max(pages, 1), round(block_size / max(per_page, 1e-9))))
    return Layout(src.relation, pages, per_group, -(-pages // per_group))


def estimate_rows(session: Session, src: Source) -> float:
    """The table's rows, estimated from its heap size and the rows of its first pages (one
    short scan: no count of the whole table), or from the statistics of its last VACUUM or
    ANALYZE scaled to its size (as the planner does), whichever is larger: after a bulk
    UPDATE and VACUUM the first pages can be empty."""
    pages, tuples, relpages = session.query(
        "SELECT (pg_relation_size(c.oid) / current_setting('block_size')::int8)::int8 "
        "AS pages, c.reltuples::float8 AS tuples, c.relpages::int8 AS relpages "
        "FROM pg_catalog.pg_class AS c WHERE c.oid = %s::regclass", [src.name])[0]
    pages = int(pages)
    probe = min(pages, 32)
    if probe == 0:
        return 0.0
    planner = float(tuples) / int(relpages) * pages if tuples > 0 and relpages > 0 else 0.0
    return max(planner, int(session.query(
        f"SELECT count(*) AS n FROM {src.relation} AS s WHERE s.ctid < '({probe},0)'::tid"
    )[0][0]) * pages / probe)


def _tid(group: str, layout: Layout, plus: int = 0) -> str:
    """SQL for the first TID of page group ``group`` (+ ``plus``); NULL when group is NULL."""
    return (f"('(' || (({group})::int8 + {plus}) * {layout.per_group} || ',0)')::pg_catalog.tid")


def _group_rows(src: Source, layout: Layout, group: str, d: int, also: str = "") -> str:
    """The usable rows (features, raw label) of one page group, by a TID range scan: an
    array feature of ``d`` elements (preparation skipped and counted a row of another length
    with a NULL element, and refused one without; ``array_agg`` cannot hold both lengths), and
    ``also`` (SQL on ``s``: e.g. :func:`bismarckpy.source.label_among`), when given."""
    length = (f" AND cardinality({src.array_column}) = {int(d)}"
              if src.array_feature and src.array_column else "")
    extra = f" AND ({also})" if also else ""
    return (f"SELECT {src.x_expr} AS x, {src.label_expr} AS y FROM {layout.relation} AS s "
            f"WHERE s.ctid >= {_tid(group, layout)} AND s.ctid < {_tid(group, layout, 1)} "
            f"AND {src.epoch_valid_expr or src.scan_valid_expr}{length}{extra}")


def _int_array(values: np.ndarray | list[int]) -> str:
    return "'{" + ",".join(str(int(v)) for v in values) + "}'::int4[]"


def epoch_sql(src: Source, layout: Layout, prepared: Prepared, part: int, split_seed: int,
              shuffled: bool, buffer_blocks: int = BUFFER_BLOCKS,
              aggregate: str = "{aggregate}", per_group: bool | None = None, *,
              d: int) -> str:
    """One pass of ``aggregate`` (``bismarck._epoch_scan`` or ``_exact_pass_scan``; by default
    the placeholder of :attr:`bismarckpy.execution.Scan.template`) over the groups, in buffers
    of ``buffer_blocks``; its one parameter is the kernel's init state.

    ``per_group`` (None: for the validation pass) makes each page group one call (one TID
    range scan, one ``array_agg`` of a few hundred rows, small enough that the copies on the
    way into PL/Python stay in the processor's cache), with the whole buffer's counts and the
    buffer's groups up to this one, the transition assembling the buffer from the rows it
    keeps (:func:`epoch_step`): that pays where a pass keeps few of the rows it reads. Else a
    buffer is one call: its groups' TID range scans appended under one ``array_agg``.

    ``shuffled``: groups in a random order and rows shuffled in each buffer, both drawn with
    ``random()`` (the caller seeds it with ``setseed``); otherwise physical order. Groups with
    no usable row (or no row of ``part``) are not read. ``d``: the number of features, which
    an array feature's rows must have (:func:`_group_rows`).
    """
    if per_group is None:
        per_group = part == VALID
    counts, holds = prepared.counts, prepared.holds
    wanted = {ALL: counts, TRAIN: counts - holds, VALID: holds}[part]
    order = "random()" if shuffled else "c.g"
    seed = "(random() * 4503599627370496)::int8" if shuffled else "NULL::int8"
    groups = (f"SELECT (c.g - 1)::int4 AS g, c.n, c.h, "
              f"row_number() OVER (ORDER BY {order}) - 1 AS pos, {seed} AS r "
              f"FROM unnest({_int_array(counts)}, {_int_array(holds)}, "
              f"{_int_array(wanted)}) WITH ORDINALITY AS c(n, h, w, g) WHERE c.w > 0")
    buffers = (f"SELECT q.pos / {int(buffer_blocks)} AS buf, array_agg(q.g ORDER BY q.pos) AS gs, "
               "array_agg(q.n ORDER BY q.pos) AS ns, array_agg(q.h ORDER BY q.pos) AS hs, "
               f"min(q.r) AS r FROM ({groups}) AS q GROUP BY 1 ORDER BY 1")
    if not per_group:  # one call per buffer: its groups' reads appended
        branches = " UNION ALL ".join(_group_rows(src, layout, f"o.gs[{j + 1}]", d)
                                      for j in range(int(buffer_blocks)))
        return (f"SELECT {aggregate}(bismarck._float8_array_bytes(z.xs), "
                "bismarck._float8_array_bytes(z.ys), o.gs, o.ns, o.hs, "
                f"{int(part)}, {int(split_seed)}::int8, o.r, %s) AS state FROM ({buffers}) AS o "
                f"CROSS JOIN LATERAL (SELECT array_agg(u.x) AS xs, array_agg(u.y) AS ys "
                f"FROM ({branches}) AS u) AS z")
    return (f"SELECT {aggregate}(bismarck._float8_array_bytes(z.xs), "
            "bismarck._float8_array_bytes(z.ys), o.gs[1:m.j::int4], o.ns, o.hs, "
            f"{int(part)}, {int(split_seed)}::int8, o.r, %s) AS state FROM ({buffers}) AS o "
            "CROSS JOIN LATERAL unnest(o.gs) WITH ORDINALITY AS m(g, j) "
            f"CROSS JOIN LATERAL (SELECT array_agg(u.x) AS xs, array_agg(u.y) AS ys "
            f"FROM ({_group_rows(src, layout, 'm.g', d)}) AS u) AS z")


def _row_facts(src: Source, d: int) -> str:
    """Per-row SQL columns of a group's read: the features ``x`` and raw label ``y``, ``v``
    (label and every feature present, one dimension), ``multi`` (more than one dimension),
    ``empty`` (no element) and ``len`` (the number of elements). Each is computed once per
    row when the read is not flattened into its aggregate (see :func:`_facts`)."""
    x = src.x_expr
    if not src.array_feature:
        return (f"{x} AS x, {src.label_expr} AS y, ({src.scan_valid_expr}) AS v, "
                f"false AS multi, false AS empty, {int(d)} AS len")
    return (f"{x} AS x, {src.label_expr} AS y, ({src.scan_valid_expr}) AS v, "
            f"coalesce(array_ndims({x}) > 1, false) AS multi, "
            f"coalesce(cardinality({x}) = 0, false) AS empty, "
            f"cardinality({x}) AS len")


def _facts(d: int) -> tuple[str, str]:
    """SQL over :func:`_row_facts`' columns ``u``: a complete row (present, one dimension,
    ``d`` elements) and an odd one (present, of another non-zero length)."""
    return f"(u.v AND u.len = {int(d)})", f"(u.v AND u.len NOT IN (0, {int(d)}))"


def prepare_sql(src: Source, layout: Layout, d: int, split_seed: int,
                listed: bool = False) -> str:
    """Preparation of the groups ``%s`` to ``%s`` in physical order (init state first), or
    (``listed``) of the groups of the ``int4[]`` ``%s``: the complete rows as two arrays, and
    the group's shape counts, per group."""
    ok, odd = _facts(d)
    # OFFSET 0 keeps the subquery: each row's facts are computed once, not once per FILTER.
    counts = (f"SELECT array_agg(u.x) FILTER (WHERE {ok}) AS xs, "
              f"array_agg(u.y) FILTER (WHERE {ok}) AS ys, ARRAY[count(*), "
              "count(*) FILTER (WHERE u.multi), count(*) FILTER (WHERE u.empty), "
              f"count(*) FILTER (WHERE {odd}), min(u.len) FILTER (WHERE u.v AND u.len <> 0), "
              "max(u.len) FILTER (WHERE u.v AND u.len <> 0)]::int8[] AS shape "
              f"FROM (SELECT {_row_facts(src, d)} FROM {layout.relation} AS s "
              f"WHERE s.ctid >= {_tid('o.g', layout)} AND s.ctid < {_tid('o.g', layout, 1)} "
              "OFFSET 0) AS u")
    return ("SELECT bismarck._scan_prepare(bismarck._float8_array_bytes(z.xs), "
            "bismarck._float8_array_bytes(z.ys), o.g, z.shape, %s, "
            f"{int(split_seed)}::int8) AS state "
            "FROM (SELECT g::int4 AS g FROM "
            + ("unnest(%s::int4[]) AS g " if listed else
               "generate_series(%s::int4, %s::int4) AS g ")
            + f"ORDER BY 1) AS o CROSS JOIN LATERAL ({counts}) AS z")


#: At most this many groups per preparation statement: its state grows by one triple a group.
GROUPS_PER_STATEMENT = 128


def prepare(session: Session, src: Source, layout: Layout, d: int, fraction: float,
            split_seed: int, progress: Callable[[str], None] | None = None) -> Prepared:
    """Read every group once, in order: check and count the rows (:class:`Survey`), choose
    the validation rows (``fraction`` of the usable rows, exact) and sum the training rows'
    moments. A progress report after each tenth of the pages."""
    sql = prepare_sql(src, layout, d, split_seed)
    chunk = max(1, min(GROUPS_PER_STATEMENT, -(-layout.groups // PREPARE_CHUNKS)))
    states, seen, told = [], 0, 0
    for start in range(0, layout.groups, chunk):
        stop = min(layout.groups, start + chunk)
        state = session.query(sql, [prepare_init(d, fraction, seen), start, stop - 1])[0][0]
        if state is not None:
            states.append(bytes(state))
            seen = int(np.frombuffer(state, dtype=_F8, count=_P_HEAD)[_P_SEEN])
        tenth = 10 * stop // layout.groups
        if progress is not None and tenth > told:
            told = tenth
            progress(f"preparing: {10 * tenth}% of pages")
    return prepare_decode(states, layout.groups, d)


def first_length(session: Session, src: Source) -> int | None:
    """The number of features of the first complete row (None: no such row)."""
    if not src.array_feature:
        return len(src.features)
    rows = session.query(f"SELECT cardinality({src.x_expr}) AS d FROM {src.relation} AS s "
                         f"WHERE {src.scan_valid_expr} AND cardinality({src.x_expr}) > 0 "
                         "LIMIT 1")
    return int(rows[0][0]) if rows else None


def sample(session: Session, src: Source, layout: Layout, d: int, groups: int,
           seed: int) -> tuple[Prepared, np.ndarray]:
    """Read ``groups`` page groups drawn at random (seeded), in physical order, as preparation
    reads every group (:func:`prepare_step`, nothing held out): their survey and moments,
    and which groups they were. What a run learns before its first epoch without reading
    the whole table."""
    k = max(1, min(int(groups), layout.groups))
    chosen = np.sort(np.random.default_rng([int(seed) & (2**63 - 1), 17]).choice(
        layout.groups, size=k, replace=False)) if layout.groups else np.zeros(0, np.int64)
    state = session.query(prepare_sql(src, layout, d, 0, listed=True),
                          [prepare_init(d, 0.0, 0), "{" + ",".join(map(str, chosen)) + "}"]
                          )[0][0] if len(chosen) else None
    got = prepare_decode([bytes(state)] if state is not None else [], layout.groups, d)
    return got, chosen


# -- the first epoch of a run prepared from a sample: checks and counts folded in ---------------

#: Opens the state of :func:`first_step` (the kernel's state travels inside it).
FIRST_MAGIC = b"BSMFRST1"
(_F_D, _F_F, _F_C0, _F_C1, _F_XLIM, _F_YLIM, _F_TOTAL, _F_USABLE, _F_MULTI, _F_EMPTY,
 _F_RAGGED, _F_LEN_LO, _F_LEN_HI, _F_Y_MIN, _F_Y_MAX, _F_ALL01, _F_ALLPM1, _F_AX, _F_AY,
 _F_TRAIN, _F_VALID, _F_POS, _F_XMINS, _F_STOP) = range(24)
#: The training rows' label moments (:mod:`bismarckpy.moments`, one column), and the same
#: collapsed to each group's mean: how far the groups' labels differ (:mod:`bismarckpy.clustering`).
_F_YM, _F_YB = slice(24, 29), slice(29, 34)
_F_HEAD = 34


@dataclass
class First:
    """The state of a first epoch between its statements (:func:`first_step`).

    ``head`` holds the checks' counts and ranges over every row read so far and the limits
    the rows must keep (``_F_*`` slots); ``cols`` the columns (-1: the label) the sample found
    constant, with their range over the rows read (``lo``, ``hi``); ``kinit`` and ``kstate``
    the model kind's init and state; ``triples`` one ``(group, usable, held)`` per group
    read by this statement."""

    head: np.ndarray
    cols: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    kinit: bytes
    kstate: bytes | None
    triples: np.ndarray
    # every feature's smallest and largest value over the usable rows read so far
    xlo: np.ndarray = field(default_factory=lambda: np.zeros(0))
    xhi: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def encode(self) -> bytes:
        """The state as bytes (see :func:`first_decode`)."""
        k = len(self.cols)
        sizes = np.array([_F_HEAD, k, len(self.kinit), -1 if self.kstate is None
                          else len(self.kstate), len(self.triples) // 3, len(self.xlo)],
                         dtype="<i8")
        return (FIRST_MAGIC + sizes.tobytes() + self.head.astype(_F8).tobytes()
                + np.concatenate([self.cols, self.lo, self.hi]).astype(_F8).tobytes()
                + self.kinit + (self.kstate or b"") + self.triples.astype(_F8).tobytes()
                + np.concatenate([self.xlo, self.xhi]).astype(_F8).tobytes())


def first_decode(raw: bytes) -> First:
    """The :class:`First` of bytes written by :meth:`First.encode`."""
    raw = bytes(raw)
    if raw[:8] != FIRST_MAGIC:
        raise InvalidData("not the state of a first epoch")
    n_head, k, n_init, n_state, n_trip, n_x = (int(v) for v in np.frombuffer(raw, "<i8", 6, 8))
    at = 56
    head = np.frombuffer(raw, _F8, n_head, at).copy()
    at += 8 * n_head
    cl = np.frombuffer(raw, _F8, 3 * k, at).copy()
    at += 24 * k
    kinit = raw[at:at + n_init]
    at += n_init
    kstate = None if n_state < 0 else raw[at:at + n_state]
    at += max(n_state, 0)
    triples = np.frombuffer(raw, _F8, 3 * n_trip, at).copy()
    at += 24 * n_trip
    xr = np.frombuffer(raw, _F8, 2 * n_x, at).copy()
    return First(head, cl[:k], cl[k:2 * k], cl[2 * k:], kinit, kstate, triples, xr[:n_x],
                 xr[n_x:])


def first_init(d: int, fraction: float, classes: list[float] | None, x_limit: float,
               y_limit: float, constant: list[int], kinit: bytes) -> bytes:
    """The state a first epoch starts from: ``d`` features, the validation ``fraction``, the
    two classes the sample found (None: regression), the magnitudes features and label must
    stay within, the columns the sample found constant (-1: the label) and the kind's init."""
    head = np.zeros(_F_HEAD, dtype=_F8)
    head[_F_D], head[_F_F], head[_F_XLIM], head[_F_YLIM] = d, fraction, x_limit, y_limit
    head[_F_C0], head[_F_C1] = (classes[0], classes[1]) if classes else (np.nan, np.nan)
    head[[_F_LEN_LO, _F_Y_MIN]] = np.inf
    head[[_F_LEN_HI, _F_Y_MAX]] = -np.inf
    head[[_F_ALL01, _F_ALLPM1]] = 1.0
    head[_F_YM] = head[_F_YB] = moments._new(1)  # noqa: SLF001 (same package)
    k = len(constant)
    return First(head, np.array(constant, dtype=_F8), np.full(k, np.inf), np.full(k, -np.inf),
                 bytes(kinit), None, np.zeros(0), np.full(d, np.inf),
                 np.full(d, -np.inf)).encode()


def first_step(kernel: Callable, state: bytes | None, xs: bytes | None, ys: bytes | None,
               js: bytes | None, shape: list | None, groups: list | None, split_seed: int,
               shuffle_seed: int | None, init: bytes) -> bytes:  # noqa: PLR0913
    """One buffer of a first epoch: check and count every row of its groups as preparation
    does (:func:`prepare_step`), choose each group's validation rows (:func:`held_count`),
    then step ``kernel`` (a kind's ``transition_block``) through the shuffled training rows.

    ``xs``/``ys`` hold the rows SQL found complete, ``js`` the position in ``groups`` of each
    one's group; ``shape`` is SQL's count of the buffer's rows, of multi-dimensional, empty and
    odd-length arrays, their smallest and largest length, and the sum of the rows' ``xmin``.
    Once a row breaks what the sample promised (a shape, a class, a magnitude, a constant
    column that varies) the kernel stops stepping (``_F_STOP``); counting goes on, so the
    error the loop then raises (:func:`first_survey`) is the one a full preparation gives.
    """
    f = first_decode(state if state is not None else init)
    h = f.head
    d, fraction = int(h[_F_D]), float(h[_F_F])
    total, multi, empty, odd, len_lo, len_hi, xmins = (
        [int(v or 0) for v in shape[:4]] + [shape[4], shape[5], int(shape[6] or 0)]
        if shape else (0, 0, 0, 0, None, None, 0))
    h[_F_TOTAL] += total
    h[_F_MULTI] += multi
    h[_F_EMPTY] += empty
    h[_F_RAGGED] += odd
    h[_F_XMINS] += xmins
    if len_lo is not None:
        h[_F_LEN_LO] = min(h[_F_LEN_LO], len_lo)
        h[_F_LEN_HI] = max(h[_F_LEN_HI], len_hi)
    # Aligned copies first (one memcpy per row): every check below reduces over the values,
    # which numpy does slowly where PL/Python's arrays sit, 4 bytes off an 8-byte boundary.
    X = aligned(read_matrix(xs, d).reshape(-1, d))
    y = read_matrix(ys).copy()
    j = read_matrix(js).astype(np.int64)
    if X.shape[0] != len(y) or len(j) != len(y):
        raise InvalidData("a block's labels do not match its rows")
    ok = finite_mask(X, y)
    usable = np.arange(len(y)) if ok is None else np.flatnonzero(ok)
    gs = [int(g) for g in (groups or []) if g is not None]
    per = np.bincount(j[usable], minlength=len(gs))[:len(gs)]
    held = np.zeros(len(usable), dtype=bool)
    trip = []
    at = 0
    for pos, g in enumerate(gs):  # rows arrive group by group, each in physical order
        c = int(per[pos])
        m = draws(split_seed, g, c) < fraction if fraction > 0 else np.zeros(c, dtype=bool)
        held[at:at + c] = m
        trip.append((g, c, int(m.sum())))
        if m.any():  # kept for the validation pass (heldrows)
            heldrows.keep(split_seed, g, X, y, usable[at:at + c][m])
        if c > m.sum():  # the group's training labels: their spread, and its mean's
            part = moments.of_rows(y[usable[at:at + c][~m]][:, None])
            h[_F_YM] = moments._merge_into(h[_F_YM].copy(), part)  # noqa: SLF001
            h[_F_YB] = moments._merge_into(h[_F_YB].copy(),  # noqa: SLF001
                                           moments.collapsed(part))
        at += c
    n = len(usable)
    h[_F_USABLE] += n
    stop = bool(multi or empty or odd or (len_lo is not None and len_lo != d))
    if n:
        Xu = X if ok is None else X[usable]
        yu = y if ok is None else y[usable]
        col_hi, col_lo = Xu.max(axis=0), Xu.min(axis=0)  # per column: the same two passes
        if len(f.xhi) == len(col_hi):
            f.xhi, f.xlo = np.maximum(f.xhi, col_hi), np.minimum(f.xlo, col_lo)
        x_hi = float(col_hi.max()) if len(col_hi) else 0.0
        x_lo = float(col_lo.min()) if len(col_lo) else 0.0
        h[_F_AX] = max(h[_F_AX], x_hi, -x_lo)
        h[_F_AY] = max(h[_F_AY], float(np.abs(yu).max()))
        h[_F_Y_MIN] = min(h[_F_Y_MIN], float(yu.min()))
        h[_F_Y_MAX] = max(h[_F_Y_MAX], float(yu.max()))
        h[_F_ALL01] = float(bool(h[_F_ALL01]) and bool(((yu == 0) | (yu == 1)).all()))
        h[_F_ALLPM1] = float(bool(h[_F_ALLPM1]) and bool(((yu == -1) | (yu == 1)).all()))
        if len(f.cols):
            idx = f.cols.astype(np.int64)
            V = np.column_stack([yu if c < 0 else Xu[:, c] for c in idx])
            f.lo = np.minimum(f.lo, V.min(axis=0))
            f.hi = np.maximum(f.hi, V.max(axis=0))
            stop = stop or bool((f.hi > f.lo).any())
        if not np.isnan(h[_F_C0]):
            stop = stop or not bool(((yu == h[_F_C0]) | (yu == h[_F_C1])).all())
        stop = stop or h[_F_AX] > h[_F_XLIM] or h[_F_AY] > h[_F_YLIM]
        train = usable[~held]
        h[_F_TRAIN] += len(train)
        h[_F_VALID] += n - len(train)
        if not np.isnan(h[_F_C1]):
            h[_F_POS] += int((y[train] == h[_F_C1]).sum())
        h[_F_STOP] = max(h[_F_STOP], float(stop))
        if not h[_F_STOP] and len(train):
            block = as_block(Buffer(X, y, train if ok is not None or held.any() else None),
                             shuffle_seed)
            if block is not None:
                f.kstate = bytes(kernel(f.kstate, block, f.kinit))
    h[_F_STOP] = max(h[_F_STOP], float(stop))
    f.triples = np.concatenate([f.triples, np.array(trip, dtype=_F8).ravel()])
    return f.encode()


def first_sql(src: Source, layout: Layout, d: int, buffer_blocks: int = BUFFER_BLOCKS) -> str:
    """One statement of a first epoch (``bismarck._epoch_scan_first``); its parameters: the
    split seed, the shuffle seed ``s`` (buffer ``b`` is shuffled with ``s + b``), the state to
    go on from (:func:`first_init`) and the ``int4[]`` of groups in the order to read them,
    ``buffer_blocks`` per buffer. Every row of each group is read: the complete ones reach
    the transition, the others are counted."""
    buffers = (f"SELECT (t.k - 1) / {int(buffer_blocks)} AS buf, array_agg(t.g ORDER BY t.k) "
               "AS gs FROM unnest(%s::int4[]) WITH ORDINALITY AS t(g, k) GROUP BY 1 ORDER BY 1")
    branches = " UNION ALL ".join(
        f"SELECT {j}::float8 AS j, s.xmin::text::int8 AS xm, {_row_facts(src, d)} "
        f"FROM {layout.relation} AS s WHERE s.ctid >= {_tid(f'o.gs[{j + 1}]', layout)} "
        f"AND s.ctid < {_tid(f'o.gs[{j + 1}]', layout, 1)}" for j in range(int(buffer_blocks)))
    ok, odd = _facts(d)
    facts = (f"SELECT array_agg(u.x) FILTER (WHERE {ok}) AS xs, "
             f"array_agg(u.y) FILTER (WHERE {ok}) AS ys, "
             f"array_agg(u.j) FILTER (WHERE {ok}) AS js, ARRAY[count(*), "
             "count(*) FILTER (WHERE u.multi), count(*) FILTER (WHERE u.empty), "
             f"count(*) FILTER (WHERE {odd}), min(u.len) FILTER (WHERE u.v AND u.len <> 0), "
             "max(u.len) FILTER (WHERE u.v AND u.len <> 0), coalesce(sum(u.xm), 0)]::int8[] "
             f"AS shape FROM ({branches}) AS u")
    return ("SELECT bismarck._epoch_scan_first(bismarck._float8_array_bytes(z.xs), "
            "bismarck._float8_array_bytes(z.ys), bismarck._float8_array_bytes(z.js), z.shape, "
            "o.gs, %s::int8, %s::int8 + o.buf, %s) AS state "
            f"FROM ({buffers}) AS o CROSS JOIN LATERAL ({facts}) AS z")


def first_epoch(session: Session, src: Source, layout: Layout, d: int, init: bytes,
                split_seed: int, seed: int,
                progress: Callable[[str], None] | None = None) -> tuple[First, np.ndarray,
                                                                       np.ndarray]:
    """Run a first epoch over every group, in a seeded random order, in statements of at most
    :data:`GROUPS_PER_STATEMENT` groups (:func:`statement_cuts`: a progress report after each
    tenth of the pages).
    Returns the final :class:`First` and every group's usable and validation rows."""
    order = np.random.default_rng([int(seed) & (2**63 - 1), 1]).permutation(layout.groups)
    sql = first_sql(src, layout, d)
    counts = np.zeros(layout.groups, dtype=np.int64)
    holds = np.zeros(layout.groups, dtype=np.int64)
    state, told = init, 0
    base = int(np.random.default_rng([int(seed) & (2**63 - 1), 2]).integers(0, 2**52))
    cuts = statement_cuts(layout.groups)
    for start, stop in zip([0, *cuts], cuts):
        part = order[start:stop]
        got = session.query(sql, [int(split_seed), base + start // BUFFER_BLOCKS, state,
                                  "{" + ",".join(map(str, part)) + "}"])[0][0]
        f = first_decode(got if got is not None else state)
        t = f.triples.reshape(-1, 3).astype(np.int64)
        counts[t[:, 0]], holds[t[:, 0]] = t[:, 1], t[:, 2]
        f.triples = np.zeros(0)
        state = f.encode()
        tenth = 10 * stop // max(layout.groups, 1)
        if progress is not None and tenth > told:
            told = tenth
            progress(f"first epoch: {10 * tenth}% of pages")
    return first_decode(state), counts, holds


def statement_cuts(groups: int, buffer_blocks: int = BUFFER_BLOCKS) -> list[int]:
    """Where a first epoch's statements end (whole buffers, at most
    :data:`GROUPS_PER_STATEMENT` groups each): at the first buffer's end past each tenth of
    the ``groups``, so that each tenth gets its progress report (statements of a fixed size
    skipped some: 80% and then 100%), and in between as the size limit asks."""
    step = max(buffer_blocks, GROUPS_PER_STATEMENT // buffer_blocks * buffer_blocks)
    cuts: list[int] = []
    last = 0
    for k in range(1, PREPARE_CHUNKS + 1):
        end = min(groups, -(-groups * k // (PREPARE_CHUNKS * buffer_blocks)) * buffer_blocks)
        while end - last > step:
            last += step
            cuts.append(last)
        if end > last:
            cuts.append(end)
            last = end
    return cuts


def first_order(f: First, counts: np.ndarray, holds: np.ndarray) -> Prepared:
    """What a first epoch read of every page group (``counts``/``holds``: each one's usable
    and validation rows): the counts, the training rows' label moments (``stats``, the label
    only) and its analysis-of-variance ``F`` over the groups (``order``,
    :func:`bismarckpy.clustering.order_ratios`)."""
    h = f.head
    label = moments.decode(h[_F_YM].tobytes())
    return Prepared(counts, holds, label, order=clustering.order_ratios(
        label, moments.decode(h[_F_YB].tobytes()), int(((counts - holds) > 0).sum())))


def first_survey(f: First) -> Survey:
    """What a first epoch learned of every row, as a full preparation's :class:`Survey`
    (the smallest magnitudes are left to the sample's checks: inf)."""
    h = f.head

    def finite(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    lo, hi = finite(h[_F_LEN_LO]), finite(h[_F_LEN_HI])
    return Survey(int(h[_F_TOTAL]), int(h[_F_USABLE]), int(h[_F_MULTI]), int(h[_F_EMPTY]),
                  int(h[_F_RAGGED]), None if lo is None else int(lo),
                  None if hi is None else int(hi), finite(h[_F_Y_MIN]), finite(h[_F_Y_MAX]),
                  bool(h[_F_ALL01]), bool(h[_F_ALLPM1]), float(h[_F_AX]), float(h[_F_AY]),
                  np.inf, np.inf)


# -- packed copies in one read: buffers of page groups, shuffled, cut into blocks ---------------

def pack_buffer(xs: bytes | None, ys: bytes | None, d: int, block_size: int, dtype: str,
                seed: int) -> list[tuple[int, bytes]]:
    """One buffer of page groups → packed blocks (:mod:`bismarckpy.pack`) of its usable rows,
    shuffled (seeded) across the whole buffer and cut into blocks of about ``block_size``
    rows. Returns ``(rows, block)`` pairs. Raises :class:`InvalidData` for a value the block
    ``dtype`` cannot hold (the caller picks float64 for those)."""
    from .pack import encode  # noqa: PLC0415 (pack imports nothing of this module)

    X = read_matrix(xs, d, nulls=True)  # NULL elements: NaN, dropped with the other misses
    y = read_matrix(ys)
    if X.reshape(-1, d).shape[0] != len(y):
        raise InvalidData("a block's labels do not match its rows")
    X, y, _ = finite_rows(X, y, d)
    n = len(y)
    if n == 0:
        return []
    order = np.random.default_rng(int(seed) & (2**63 - 1)).permutation(n)
    values = np.empty((n, 1 + d), dtype=_F8)
    np.take(y, order, out=values[:, 0], mode="clip")
    np.take(X, order, axis=0, out=values[:, 1:], mode="clip")
    parts = max(1, round(n / max(int(block_size), 1)))
    return [(len(part), encode(part, dtype)) for part in np.array_split(values, parts)]


def pack_sql(src: Source, layout: Layout, table: str, d: int, block_size: int, dtype: str,
             seed: int, buffer_blocks: int = BUFFER_BLOCKS, also: str = "") -> str:
    """``INSERT`` into ``table`` (block, n, data) the packed blocks of buffers from the second
    ``%s`` to the third, numbering blocks from the first: groups in a seeded random order,
    ``buffer_blocks`` at a time, each buffer shuffled and cut into blocks. Over all buffers,
    one read of the source; the backend holds one buffer at a time (no sort, no hash table).
    Only rows that also satisfy ``also`` (:func:`_group_rows`) are packed."""
    groups = (f"SELECT g::int4 AS g, row_number() OVER (ORDER BY hashint4extended(g::int4, "
              f"{int(seed)}::int8), g) - 1 AS pos FROM generate_series(0, {layout.groups - 1}) "
              "AS g")
    buffers = (f"SELECT q.pos / {int(buffer_blocks)} AS buf, array_agg(q.g ORDER BY q.pos) AS gs "
               f"FROM ({groups}) AS q WHERE q.pos / {int(buffer_blocks)} BETWEEN %s::int8 "
               "AND %s::int8 GROUP BY 1 ORDER BY 1")
    branches = " UNION ALL ".join(_group_rows(src, layout, f"o.gs[{j + 1}]", d, also)
                                  for j in range(int(buffer_blocks)))
    blocks = ("SELECT b.n, b.data FROM (" + buffers + ") AS o "
              "CROSS JOIN LATERAL (SELECT array_agg(u.x) AS xs, array_agg(u.y) AS ys "
              f"FROM ({branches}) AS u) AS z CROSS JOIN LATERAL bismarck._pack_buffer("
              "bismarck._float8_array_bytes(z.xs), bismarck._float8_array_bytes(z.ys), "
              f"{int(d)}, {int(block_size)}, {_text(dtype)}, "
              f"{int(seed)}::int8 + o.buf) AS b")
    return (f"INSERT INTO {table} (block, n, data) SELECT (row_number() OVER ())::int4 - 1 "
            f"+ %s::int4, k.n, k.data FROM ({blocks}) AS k")


def pack(session: Session, src: Source, table: str, n_rows: int, d: int, block_size: int,
         dtype: str, seed: int, progress: Callable[[str], None] | None = None,
         also: str = "") -> int:
    """Fill packed table ``table`` from ``src`` in one read (:func:`pack_sql`; only rows that
    also satisfy ``also``), in :data:`PREPARE_CHUNKS` statements with a progress report after
    each. Returns the rows."""
    lay = layout(session, src, n_rows, block_size)
    buffers = -(-lay.groups // BUFFER_BLOCKS)
    sql = pack_sql(src, lay, table, d, block_size, dtype, seed, also=also)
    chunk = max(1, -(-buffers // PREPARE_CHUNKS))
    blocks = 0
    for start in range(0, buffers, chunk):
        stop = min(buffers, start + chunk)
        session.query(sql, [blocks, start, stop - 1])  # in the order of the placeholders
        blocks = int(session.query(f"SELECT count(*) AS n FROM {table}")[0][0])
        if progress is not None:
            progress(f"packing: {100 * stop // buffers}% of pages")
    return int(session.query(f"SELECT coalesce(sum(n), 0) AS n FROM {table}")[0][0])


def _text(value: str) -> str:
    """A dtype name as an SQL literal (only the two names :mod:`bismarckpy.pack` knows)."""
    if value not in ("float32", "float64"):
        raise InvalidParameter(f"unknown block dtype {value!r}")
    return f"'{value}'::text"
