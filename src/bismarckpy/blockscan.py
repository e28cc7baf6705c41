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

The validation rows are chosen without a copy: group ``g`` holds out ``h_g`` of its ``n_g``
usable rows, the first ``h_g`` of a permutation seeded by (seed, g), with ``h_g`` the group's
share of ``ceil(f·n)`` rounded with the remainder carried from group to group (so the total is
exact). Preparation (:func:`prepare_chunk`) reads every group once in physical order to learn
``n_g``, ``h_g`` and the training rows' moments; every epoch checks ``n_g`` again, so a table
that changed under a run is an error, never a silently different split.

Errors: :class:`~bismarckpy.errors.InvalidData` for arrays that are not 2-D float8 without
NULLs of the expected width, and for a source whose rows changed since preparation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import moments
from .errors import InvalidData, InvalidParameter
from .pack import HEADER_BYTES, MAGIC
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


def read_matrix(raw: bytes | None, width: int | None = None) -> np.ndarray:
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
    if ndim == 1:
        return values
    if width is not None and dims[1] != width:
        raise InvalidData("feature vector has the wrong length",
                          detail=f"The model has {width} features but rows have {dims[1]}.",
                          hint="Make every feature array the same length, or filter the odd "
                               "rows out.")
    return values.reshape(dims)


def carried_holds(counts: np.ndarray | list[int], k: int, total: int,
                  before: int = 0) -> np.ndarray:
    """Rows each group holds out: group ``g``'s share of ``k`` of ``total`` rows.

    With ``S`` the usable rows before the group (``before`` before the first one given), the
    group holds ``r(S + n_g) - r(S)`` with ``r(s) = round(k·s / total)`` (halves up), so the
    shares sum to exactly ``k`` over all groups and differ from ``k·n_g / total`` by < 1.
    """
    c = np.asarray(counts, dtype=np.int64)
    if total <= 0 or k <= 0:
        return np.zeros(len(c), dtype=np.int64)
    ends = before + np.cumsum(c)
    starts = ends - c
    return (2 * k * ends + total) // (2 * total) - (2 * k * starts + total) // (2 * total)


def held_mask(seed: int, group: int, n: int, held: int) -> np.ndarray:
    """Which of a group's ``n`` rows (in physical order) are validation rows: a seeded
    choice of ``held`` of them, the same in every epoch of a run."""
    mask = np.zeros(n, dtype=bool)
    if held > 0:
        rng = np.random.default_rng([int(seed) & (2**63 - 1), int(group)])
        mask[rng.permutation(n)[:held]] = True
    return mask


def finite_rows(X: np.ndarray, y: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows whose label and features are all finite (NaN and ±inf are missing values, as on
    every path), and how many were dropped. The SQL filter leaves this test to numpy: a
    vectorised pass costs far less than comparing every array element in SQL."""
    X = X.reshape(-1, d)
    ok = np.isfinite(y) & np.isfinite(X).all(axis=1)
    if ok.all():
        return X, y, 0
    return X[ok], y[ok], int((~ok).sum())


@dataclass
class Buffer:
    """The rows of one buffer an epoch keeps: features ``X`` (n × d) and raw labels ``y``."""

    X: np.ndarray
    y: np.ndarray


def select_rows(xs: bytes | None, ys: bytes | None, d: int | None, groups: list | None,
                counts: list | None, holds: list | None, part: int,
                split_seed: int) -> Buffer:
    """The rows of a buffer an epoch reads (``part``: ALL, TRAIN or VALID), physical order.

    ``groups``, ``counts`` and ``holds`` list the buffer's page groups in the order their rows
    arrive, with the usable rows and validation rows preparation found in each; ``d`` (None:
    the array's own width) checks the number of features. Raises
    :class:`InvalidData` when the rows that arrive do not add up to ``counts`` (the source
    changed since preparation).
    """
    X = read_matrix(xs, d)
    y = read_matrix(ys)
    if X.ndim != 2:
        X = X.reshape(len(y), -1) if len(y) else X.reshape(0, d or 0)
    d = X.shape[1]
    n = len(y)
    if X.shape[0] != n:
        raise InvalidData("a block's labels do not match its rows",
                          detail=f"{X.shape[0]} feature rows, {n} labels.")
    X, y, _ = finite_rows(X, y, d)
    n = len(y)
    gs = [g for g in (groups or []) if g is not None]
    ns = [int(c) for c in (counts or [])[:len(gs)]]
    if sum(ns) != n:
        raise changed(n, sum(ns))
    if part == ALL or not any(holds or []):
        return Buffer(X, y) if part != VALID else Buffer(X[:0], y[:0])
    mask = np.concatenate([held_mask(split_seed, g, c, int(h))
                           for g, c, h in zip(gs, ns, holds or [])]) if gs else np.zeros(0, bool)
    keep = mask if part == VALID else ~mask
    return Buffer(X[keep], y[keep])


def changed(got: int, expected: int) -> InvalidData:
    """The error for a source whose rows changed while a run read it."""
    return InvalidData(
        "the source table changed during training",
        detail=f"A group of pages held {got} usable rows; preparation counted {expected}.",
        hint="Train again when the table is not being written, or train on a snapshot "
             "(CREATE TABLE ... AS) of it.")


_scratch: dict[int, bytearray] = {}


def as_block(buf: Buffer, shuffle_seed: int | None) -> bytearray | None:
    """The buffer's rows (shuffled when ``shuffle_seed`` is given) as one float64 packed block
    (:mod:`bismarckpy.pack`): per-column offsets at the column minimum, then residuals.

    The block is written into a scratch buffer reused from call to call (a fresh 3 MB buffer
    per call costs more in page faults than the copy itself): it is valid until the next call.
    """
    n, d = buf.X.shape
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
    offsets[0] = buf.y.min()
    offsets[1:] = buf.X.min(axis=0)
    if shuffle_seed is not None:
        order = np.random.default_rng(int(shuffle_seed) & (2**63 - 1)).permutation(n)
        np.take(buf.y, order, out=values[:, 0], mode="clip")
        np.take(buf.X, order, axis=0, out=values[:, 1:], mode="clip")
    else:
        values[:, 0] = buf.y
        values[:, 1:] = buf.X
    values -= offsets
    return block


def epoch_step(kernel, state: bytes | None, xs: bytes | None, ys: bytes | None,
               groups: list | None, counts: list | None, holds: list | None, part: int,
               split_seed: int, shuffle_seed: int | None, init: bytes) -> bytes:
    """One buffer of an epoch: select its rows, shuffle them, run ``kernel`` (a model kind's
    ``transition_block(state, block, init)``, which checks the block's width against its
    state) on them as one block."""
    buf = select_rows(xs, ys, None, groups, counts, holds, part, split_seed)
    block = as_block(buf, shuffle_seed)
    if block is None:
        return state if state is not None else init
    return kernel(state, block, init)


# -- preparation: one read of every group, in physical order ------------------------------------

_P_D, _P_K, _P_TOTAL, _P_SEED, _P_SEEN, _P_GROUPS = range(6)
_P_HEAD = 6


def prepare_init(d: int, k: int, total: int, seen: int) -> bytes:
    """The state a chunk of the preparation starts from: ``seen`` usable rows before it."""
    head = np.array([d, k, total, 0, seen, 0], dtype=_F8)
    return head.tobytes() + moments._new(1 + d).tobytes()  # noqa: SLF001 (same package)


def prepare_step(state: bytes | None, xs: bytes | None, ys: bytes | None, group: int,
                 init: bytes, seed: int) -> bytes:
    """Read one group: count its usable rows, choose its validation rows, add the training
    rows (label first) to the moments. The state is the head, the moments, then one
    ``(group, n_g, h_g)`` triple per group read."""
    s = np.frombuffer(state if state is not None else init, dtype=_F8)
    d, k, total, seen = int(s[_P_D]), int(s[_P_K]), int(s[_P_TOTAL]), int(s[_P_SEEN])
    m_len = 1 + 4 * (1 + d)
    X = read_matrix(xs, d)
    y = read_matrix(ys)
    if X.reshape(-1, d).shape[0] != len(y):
        raise InvalidData("a block's labels do not match its rows")
    X, y, _ = finite_rows(X, y, d)
    n = len(y)
    held = int(carried_holds([n], k, total, seen)[0]) if n else 0
    mom = s[_P_HEAD:_P_HEAD + m_len].copy()
    if n:
        keep = ~held_mask(seed, group, n, held)
        V = np.empty((int(keep.sum()), 1 + d), dtype=_F8)
        V[:, 0] = y[keep]
        V[:, 1:] = X[keep]
        if len(V):
            off = V.min(axis=0)
            part = moments.of_matrix(off, V - off)
            mom = moments._merge_into(mom, part)  # noqa: SLF001 (same package)
    head = s[:_P_HEAD].copy()
    head[_P_SEEN] += n
    head[_P_GROUPS] += 1
    return (head.tobytes() + mom.tobytes() + s[_P_HEAD + m_len:].tobytes()
            + np.array([group, n, held], dtype=_F8).tobytes())


@dataclass
class Prepared:
    """What preparation learned: usable and validation rows of every group, and the
    moments of the training rows (column 0 is the label)."""

    counts: np.ndarray
    holds: np.ndarray
    stats: moments.Moments | None


def prepare_decode(states: list[bytes], groups: int, d: int) -> Prepared:
    """Combine the chunks' final states (any order) into per-group counts and one moments."""
    counts = np.zeros(groups, dtype=np.int64)
    holds = np.zeros(groups, dtype=np.int64)
    m_len = 1 + 4 * (1 + d)
    total: np.ndarray | None = None
    for raw in states:
        if raw is None:
            continue
        s = np.frombuffer(raw, dtype=_F8)
        mom = s[_P_HEAD:_P_HEAD + m_len].copy()
        total = mom if total is None else moments._merge_into(total, mom)  # noqa: SLF001
        triples = s[_P_HEAD + m_len:].reshape(-1, 3).astype(np.int64)
        counts[triples[:, 0]] = triples[:, 1]
        holds[triples[:, 0]] = triples[:, 2]
    stats = moments.decode(total.tobytes()) if total is not None and total[0] > 0 else None
    return Prepared(counts, holds, stats)


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
    if src.row_key != "s.ctid::text":
        raise InvalidParameter(
            f"shuffle => 'blocks' cannot read {src.name}",
            detail="Block shuffling reads groups of a table's pages by their physical position "
                   "(ctid); views, foreign and partitioned tables have none, and reading them "
                   "needs SELECT on the whole table.",
            hint="Use shuffle => 'once' (a shuffled copy) or 'always', or train on a table (for "
                 "example CREATE TABLE ... AS SELECT from the view).")


def layout(session: Session, src: Source, n_rows: int, block_size: int) -> Layout:
    """Page groups of about ``block_size`` rows, from the heap's size and ``n_rows`` rows."""
    refuse_unless_heap(src)
    pages = int(session.query(
        "SELECT (pg_relation_size(%s::regclass) / current_setting('block_size')::int8)::int8 "
        "AS pages", [src.name])[0][0])
    per_page = n_rows / max(pages, 1)
    per_group = max(1, round(block_size / max(per_page, 1e-9)))
    return Layout(src.relation, pages, per_group, max(1, -(-pages // per_group)))


def _tid(group: str, layout: Layout, plus: int = 0) -> str:
    """SQL for the first TID of page group ``group`` (+ ``plus``); NULL when group is NULL."""
    return (f"('(' || (({group})::int8 + {plus}) * {layout.per_group} || ',0)')::pg_catalog.tid")


def _group_rows(src: Source, layout: Layout, group: str) -> str:
    """The usable rows (features, raw label) of one page group, by a TID range scan."""
    return (f"SELECT {src.x_expr} AS x, {src.label_expr} AS y FROM {layout.relation} AS s "
            f"WHERE s.ctid >= {_tid(group, layout)} AND s.ctid < {_tid(group, layout, 1)} "
            f"AND {src.scan_valid_expr}")


def _int_array(values: np.ndarray | list[int]) -> str:
    return "'{" + ",".join(str(int(v)) for v in values) + "}'::int4[]"


def epoch_sql(src: Source, layout: Layout, prepared: Prepared, part: int, split_seed: int,
              shuffled: bool, buffer_blocks: int = BUFFER_BLOCKS,
              aggregate: str = "{aggregate}") -> str:
    """One pass of ``aggregate`` (``bismarck._epoch_scan`` or ``_exact_pass_scan``; by default
    the placeholder of :attr:`bismarckpy.execution.Scan.template`) over the groups,
    ``buffer_blocks`` per call; its one parameter is the kernel's init state.

    ``shuffled``: groups in a random order and rows shuffled in each buffer, both drawn with
    ``random()`` (the caller seeds it with ``setseed``); otherwise physical order. Groups with
    no usable row (or no row of ``part``) are not read.
    """
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
    branches = " UNION ALL ".join(_group_rows(src, layout, f"o.gs[{j + 1}]")
                                  for j in range(int(buffer_blocks)))
    return (f"SELECT {aggregate}(bismarck._float8_array_bytes(z.xs), "
            "bismarck._float8_array_bytes(z.ys), o.gs, o.ns, o.hs, "
            f"{int(part)}, {int(split_seed)}::int8, o.r, %s) AS state FROM ({buffers}) AS o "
            f"CROSS JOIN LATERAL (SELECT array_agg(u.x) AS xs, array_agg(u.y) AS ys "
            f"FROM ({branches}) AS u) AS z")


def prepare_sql(src: Source, layout: Layout, split_seed: int) -> str:
    """Preparation of the groups ``%s`` to ``%s`` in physical order (init state third)."""
    return ("SELECT bismarck._scan_prepare(bismarck._float8_array_bytes(z.xs), "
            "bismarck._float8_array_bytes(z.ys), o.g, %s, "
            f"{int(split_seed)}::int8) AS state "
            "FROM (SELECT g::int4 AS g FROM generate_series(%s::int4, %s::int4) AS g "
            "ORDER BY 1) AS o CROSS JOIN LATERAL (SELECT array_agg(u.x) AS xs, "
            f"array_agg(u.y) AS ys FROM ({_group_rows(src, layout, 'o.g')}) AS u) AS z")


def prepare(session: Session, src: Source, layout: Layout, d: int, k: int, total: int,
            split_seed: int, progress: Callable[[str], None] | None = None) -> Prepared:
    """Read every group once, in :data:`PREPARE_CHUNKS` statements (a progress report after
    each): usable rows, validation rows and training moments per group. Raises
    :class:`InvalidData` when the groups hold another number of usable rows than ``total``."""
    sql = prepare_sql(src, layout, split_seed)
    chunk = max(1, -(-layout.groups // PREPARE_CHUNKS))
    states, seen = [], 0
    for start in range(0, layout.groups, chunk):
        stop = min(layout.groups, start + chunk)
        state = session.query(sql, [prepare_init(d, k, total, seen), start,
                                    stop - 1])[0][0]
        if state is not None:
            states.append(bytes(state))
            seen = int(np.frombuffer(state, dtype=_F8, count=_P_HEAD)[_P_SEEN])
        if progress is not None:
            progress(f"preparing: {100 * stop // layout.groups}% of pages")
    prepared = prepare_decode(states, layout.groups, d)
    if int(prepared.counts.sum()) != total:
        raise changed(int(prepared.counts.sum()), total)
    return prepared


# -- packed copies in one read: buffers of page groups, shuffled, cut into blocks ---------------

def pack_buffer(xs: bytes | None, ys: bytes | None, d: int, block_size: int, dtype: str,
                seed: int) -> list[tuple[int, bytes]]:
    """One buffer of page groups → packed blocks (:mod:`bismarckpy.pack`) of its usable rows,
    shuffled (seeded) across the whole buffer and cut into blocks of about ``block_size``
    rows. Returns ``(rows, block)`` pairs. Raises :class:`InvalidData` for a value the block
    ``dtype`` cannot hold (the caller picks float64 for those)."""
    from .pack import encode  # noqa: PLC0415 (pack imports nothing of this module)

    X = read_matrix(xs, d)
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
             seed: int, buffer_blocks: int = BUFFER_BLOCKS) -> str:
    """``INSERT`` into ``table`` (block, n, data) the packed blocks of buffers from the second
    ``%s`` to the third, numbering blocks from the first: groups in a seeded random order,
    ``buffer_blocks`` at a time, each buffer shuffled and cut into blocks. Over all buffers,
    one read of the source; the backend holds one buffer at a time (no sort, no hash table)."""
    groups = (f"SELECT g::int4 AS g, row_number() OVER (ORDER BY hashint4extended(g::int4, "
              f"{int(seed)}::int8), g) - 1 AS pos FROM generate_series(0, {layout.groups - 1}) "
              "AS g")
    buffers = (f"SELECT q.pos / {int(buffer_blocks)} AS buf, array_agg(q.g ORDER BY q.pos) AS gs "
               f"FROM ({groups}) AS q WHERE q.pos / {int(buffer_blocks)} BETWEEN %s::int8 "
               "AND %s::int8 GROUP BY 1 ORDER BY 1")
    branches = " UNION ALL ".join(_group_rows(src, layout, f"o.gs[{j + 1}]")
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
         dtype: str, seed: int, progress: Callable[[str], None] | None = None) -> int:
    """Fill packed table ``table`` from ``src`` in one read (:func:`pack_sql`), in
    :data:`PREPARE_CHUNKS` statements with a progress report after each. Returns the rows."""
    lay = layout(session, src, n_rows, block_size)
    buffers = -(-lay.groups // BUFFER_BLOCKS)
    sql = pack_sql(src, lay, table, d, block_size, dtype, seed)
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
