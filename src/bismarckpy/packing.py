"""Writing packed tables: shuffled blocks of rows as numpy buffers (see :mod:`bismarckpy.pack`).

Used twice: by the training loop for its working copy, and by ``bismarck.pack`` for a packed
table that users keep and reuse across runs and models (registered in ``bismarck.packed_tables``).
Blocks hold the raw label (booleans as 0/1); each epoch codes it for its loss.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from . import blockscan
from .errors import BismarckError, InvalidData, UndefinedObject
from .pack import DTYPE_CODES, FLOAT32_SAFE
from .params import EXACT_SOLVERS, validate
from .source import Session, Source, escape_percent, label_among, require_arguments, resolve

# Above this, pack with a sort on the block number (at 1M x 100 only ~10% slower than the hash
# aggregate, whose table of blocks would hold the whole input: 1.2 GB of backend memory).
HASH_AGGREGATE_BYTES = 256 * 2**20


@dataclass
class Checked:
    """What the checks before packing or training learned about a source, in one scan."""

    n_total: int
    n_usable: int
    d: int
    label_values: list[float] | None  # the two classes when the label looks binary, else None
    max_abs_x: float = 0.0  # largest feature magnitude among usable rows
    max_abs_y: float = 0.0  # largest label magnitude among usable rows
    min_abs_x: float = math.inf  # smallest non-zero feature magnitude among usable rows
    min_abs_y: float = math.inf  # smallest non-zero label magnitude among usable rows


@dataclass
class PackedTable:
    """A registered packed table: where it came from and what its blocks hold."""

    relation: str  # SQL text of the packed table
    name: str  # its name as PostgreSQL prints it
    source: str
    label: str
    features: list[str]
    array_feature: bool
    d: int
    itemsize: int
    rows: int
    label_values: list[float]
    skipped_rows: int = 0  # the rows the pack call skipped (missing values)


def check_casts(session: Session, src: Source) -> None:
    """Refuse numeric values that have no float8 (1e400, 1e-400), naming the column.

    PostgreSQL's own cast error echoes the number without naming its column, and such a row is
    not missing (it holds a value), so it is neither skipped nor cast: it is an error. One scan,
    only when some label or feature column is ``numeric`` or ``numeric[]``.
    """
    if not src.cast_checks:
        return
    counts = session.query("SELECT " + ", ".join(
        f"count(*) FILTER (WHERE {cond}) AS c{i}" for i, (_, cond) in enumerate(src.cast_checks))
        + f" FROM {src.relation} AS s")[0]
    for (name, _), count in zip(src.cast_checks, counts):
        if count:
            raise InvalidData(
                f'column "{name}" has values beyond the float8 range', sqlstate="22003",
                detail=f"{count} rows hold a numeric value whose magnitude is above about "
                       "1.8e308 or, if not zero, below about 2.5e-324: it has no "
                       "double-precision value to compute with.",
                hint="Rescale the column in a view (for example multiply or divide it by a "
                     "power of ten), or filter those rows out.")


def check_rows(session: Session, src: Source) -> Checked:
    """Counts, shape and label checks shared by training and packing, in one scan of the source.

    Clear errors before any work: an empty table, no usable rows, multi-dimensional or ragged
    feature arrays. Whether the label is binary (0/1 or -1/+1) and the largest magnitudes of
    the features and label (for :func:`check_ranges`) are read off the same scan.
    """
    check_casts(session, src)
    col = session.ident(src.features[0]) if src.array_feature else None
    y = src.label_expr or "NULL::float8"
    # OFFSET 0 keeps the subquery: each row's validity is computed once, not once per FILTER.
    (n_total, n_usable, lo, hi, multi, empty, y_min, y_max, all01, allpm1, ax, ay, mx,
     my) = session.query(
        "SELECT count(*) AS n, count(*) FILTER (WHERE ok) AS usable, "
        "min(d) FILTER (WHERE ok) AS lo, max(d) FILTER (WHERE ok) AS hi, "
        "count(*) FILTER (WHERE multi) AS multi, count(*) FILTER (WHERE empty) AS empty, "
        "min(y) FILTER (WHERE ok) AS y_min, max(y) FILTER (WHERE ok) AS y_max, "
        "bool_and(y IN (0, 1)) FILTER (WHERE ok) AS all01, "
        "bool_and(y IN (-1, 1)) FILTER (WHERE ok) AS allpm1, "
        "max(ax) FILTER (WHERE ok) AS ax, max(abs(y)) FILTER (WHERE ok) AS ay, "
        "min(mx) FILTER (WHERE ok) AS mx, min(nullif(abs(y), 0)) FILTER (WHERE ok) AS my "
        f"FROM (SELECT {src.valid_expr} AS ok, cardinality({src.x_expr}) AS d, {y} AS y, "
        f"{src.max_abs_expr} AS ax, {src.min_abs_expr} AS mx, "
        + (f"array_ndims({col}) > 1" if col else "false") + " AS multi, "
        # An empty array is a vector of the wrong length, not a missing value: predict refuses
        # it too, so training and evaluation must not skip it silently.
        + (f"cardinality({col}) = 0" if col else "false") + " AS empty "
        f"FROM {src.relation} AS s OFFSET 0) AS q")[0]
    return judge(src, n_total, n_usable, lo, hi, multi, empty, y_min, y_max, all01, allpm1,
                 ax, ay, mx, my)


def survey_table(session: Session, src: Source, block_size: int, fraction: float,
                 split_seed: int, progress: Callable[[str], None] | None = None,
                 ) -> tuple[Checked, blockscan.Layout, blockscan.Prepared]:
    """The checks of :func:`check_rows` (counts, shapes, label, magnitudes) for a table, read
    off one read of its page groups in numpy (:func:`bismarckpy.blockscan.prepare`), with its
    validation split (``fraction``, seeded by ``split_seed``) and moments; the same errors.
    Much cheaper than :func:`check_rows`' SQL, which tests every array element in SQL."""
    check_casts(session, src)
    d = blockscan.first_length(session, src)
    if d is None:  # no complete row at all: the usual error (empty, or nothing usable)
        check_rows(session, src)
        raise InvalidData(f"no usable rows in {src.name}")
    lay = blockscan.layout(session, src, None, block_size)
    got = blockscan.prepare(session, src, lay, d, fraction, split_seed, progress)
    sv = got.survey
    assert sv is not None
    lo, hi = (sv.len_lo, sv.len_hi) if sv.ragged else (d, d)
    checked = judge(src, sv.n_total, sv.n_usable, lo, hi, sv.multi, sv.empty, sv.y_min,
                    sv.y_max, sv.all01, sv.allpm1, sv.max_abs_x, sv.max_abs_y,
                    sv.min_abs_x, sv.min_abs_y)
    return checked, lay, got


def judge(src: Source, n_total: int, n_usable: int, lo: int | None, hi: int | None,
          multi: int, empty: int, y_min: float | None, y_max: float | None,
          all01: bool | None, allpm1: bool | None, ax: float | None, ay: float | None,
          mx: float | None, my: float | None) -> Checked:
    """The errors and the :class:`Checked` of a source from its counts: rows, usable rows,
    the smallest and largest feature count of usable rows, rows with multi-dimensional or
    empty arrays, the label's range and whether it is 0/1 or -1/+1, and the largest and
    smallest non-zero magnitudes of features and label (read by :func:`check_rows`, or by
    the page groups' one read of :func:`bismarckpy.blockscan.prepare`)."""
    if n_total == 0:
        raise InvalidData(f"table {src.name} is empty", hint="Load rows into it first.")
    if multi:
        raise InvalidData(
            f'feature column "{src.features[0]}" holds multi-dimensional arrays',
            detail=f"{multi} rows have arrays of more than one dimension.",
            hint="Flatten them to one dimension (for example in a view) and use that instead.")
    if empty:
        raise InvalidData(
            f'feature column "{src.features[0]}" holds empty arrays',
            detail=f"{empty} rows have a feature array with no elements.",
            hint="Filter them out or fill them (for example in a view) and use that instead.")
    if n_usable == 0:
        raise InvalidData(
            f"no usable rows in {src.name}",
            detail=f"All {n_total} rows have a NULL, NaN or infinite label or feature.",
            hint="Fill or filter the missing values (for example in a view) and try again.")
    if lo != hi or lo == 0:
        raise InvalidData(
            "feature arrays have different lengths",
            detail=f"Lengths range from {lo} to {hi} in {src.name}.",
            hint="Every row's feature array must have the same number of elements.")
    binary = y_min != y_max and (all01 or allpm1)
    return Checked(int(n_total), int(n_usable), int(lo),
                   [float(y_min), float(y_max)] if binary else None,
                   float(ax or 0.0), float(ay or 0.0),
                   math.inf if mx is None else float(mx), math.inf if my is None else float(my))


#: Largest magnitude the engine computes with: sums of two values and their differences stay
#: finite (moments and residuals are computed without squaring the values themselves).
MAX_ABS = 2.0 ** 1020
#: Without standardisation, squares and products of values beyond this overflow float64.
SQUARE_SAFE = 1e150
#: float64's smallest normal magnitude: a column whose every value is below it has a
#: subnormal spread (1/spread overflows).
FLOAT64_TINY = 2.2250738585072014e-308
#: float32's smallest normal magnitude: smaller values lose digits or become 0 in its blocks.
FLOAT32_TINY = 1.1754943508222875e-38


def check_ranges(session: Session, src: Source, checked: Checked, *, dtype: str | None,
                 standardize: bool, squared: bool, packing: bool,
                 solver: str = "sgd") -> str | None:
    """Refuse values the engine cannot compute with, naming the column; pick the block dtype.

    ``dtype`` is the packed block type asked for (None: rows only). A float32 block that cannot
    hold a value (beyond ~1.7e38 from its column's minimum) is refused by ``bismarck.pack``
    (``packing``) and replaced by float64 for a training run's own working copy. Returns the
    dtype to use. Raises :class:`InvalidData` for values beyond :data:`MAX_ABS`, for a squared
    loss's label beyond :data:`SQUARE_SAFE` (its loss is not a float), and, without
    standardisation or with an exact ``solver`` (whose passes sum products of raw values),
    for features beyond :data:`SQUARE_SAFE`.
    """
    if checked.max_abs_x > MAX_ABS or checked.max_abs_y > MAX_ABS:
        raise _too_large(session, src, MAX_ABS, "is too large to compute with",
                         "Rescale the column (for example divide it by a power of ten) in a "
                         "view.", True)
    if squared and checked.max_abs_y > SQUARE_SAFE:
        raise _too_large(session, src, SQUARE_SAFE, "is too large for the squared loss "
                         "(the square of its errors overflows)",
                         "Rescale the label in a view (for example divide it by 1e100).", True,
                         features=False)
    if solver in EXACT_SOLVERS and checked.max_abs_x > SQUARE_SAFE:
        raise _too_large(session, src, SQUARE_SAFE, f"is too large for solver '{solver}' (the "
                         "Hessian sums its square, which overflows)",
                         "Rescale the column in a view, or use solver => 'sgd'.", False)
    if not standardize and checked.max_abs_x > SQUARE_SAFE:
        raise _too_large(session, src, SQUARE_SAFE, "is too large to train on without "
                         "standardisation (its square overflows)",
                         "Use standardize => true, or rescale the column in a view.", False)
    label_spread = squared or checked.label_values is None
    if checked.min_abs_x < FLOAT64_TINY or (label_spread and checked.min_abs_y < FLOAT64_TINY):
        _refuse_subnormal(session, src, label_spread)
    if dtype == "float32" and max(checked.max_abs_x, checked.max_abs_y) > FLOAT32_SAFE:
        if packing:
            raise _too_large(session, src, FLOAT32_SAFE, "is too large for float32 blocks",
                             "Pack with dtype => 'float64', or rescale the column.", True)
        return "float64"
    if dtype == "float32" and min(checked.min_abs_x, checked.min_abs_y) < FLOAT32_TINY:
        if packing:
            name, smallest = _first_column_below(session, src, FLOAT32_TINY, True)
            raise InvalidData(
                f"{name} is too small for float32 blocks",
                detail=f"Its smallest non-zero magnitude is {smallest:.6g}; float32 holds "
                       f"magnitudes from {FLOAT32_TINY:.6g} (smaller ones lose their digits "
                       "or become 0).",
                hint="Pack with dtype => 'float64', or rescale the column (for example "
                     "multiply it by a power of ten) in a view.")
        return "float64"
    return dtype


def _refuse_subnormal(session: Session, src: Source, label_too: bool) -> None:
    """Refuse a column whose every non-zero value is below float64's normal range.

    Its spread is subnormal: standardising divides by it (1/sd overflows to inf) and without
    standardisation its coefficient would have to exceed float64's range. A column holding
    such values next to ordinary ones is fine (its spread is ordinary). Error path only: one
    scan when some usable value is subnormal.
    """
    found = _first_column(session, src, "max", lambda m: 0 < m < FLOAT64_TINY, label_too)
    if found:
        name, largest = found
        raise InvalidData(
            f"{name} has a spread too small to compute with (all its non-zero values are "
            "subnormal)",
            detail=f"Its largest magnitude is {largest:.6g}, below float8's smallest normal "
                   f"value {FLOAT64_TINY:.6g}: 1/spread overflows and its coefficient would too.",
            hint="Rescale the column (for example multiply it by 1e300) in a view, or drop it.")


def _first_column_below(session: Session, src: Source, limit: float,
                        label_too: bool) -> tuple[str, float]:
    """Which column (or array element) holds a non-zero magnitude below ``limit``, and it."""
    return (_first_column(session, src, "min", lambda m: m < limit, label_too)
            or ("a value", 0.0))


def _too_large(session: Session, src: Source, limit: float, what: str, hint: str,
               label_too: bool, *, features: bool = True) -> InvalidData:
    """The error for the first column holding a magnitude beyond ``limit`` (error path only)."""
    name, largest = (_first_column(session, src, "max", lambda m: m > limit, label_too,
                                   features=features) or ("a value", math.inf))
    return InvalidData(f"{name} {what}", detail=f"Its largest magnitude is {largest:.6g}; "
                                                 f"the limit is {limit:.6g}.", hint=hint)


def _first_column(session: Session, src: Source, extreme: str, test: Callable[[float], bool],
                  label_too: bool, *, features: bool = True) -> tuple[str, float] | None:
    """The first column (the label, then each feature or array element) whose largest
    (``extreme`` "max") or smallest non-zero ("min") magnitude passes ``test``: its name for
    messages and that magnitude; None when none does. Error paths only: one scan per kind.
    """
    where = f"FROM {src.relation} AS s WHERE {src.valid_expr}"

    def magnitude(e: str) -> str:
        return f"{extreme}(abs({e}))" if extreme == "max" else f"min(nullif(abs({e}), 0))"

    if label_too and src.label_expr:
        m = session.query(f"SELECT {magnitude(src.label_expr)} AS m {where}")[0][0]
        if m is not None and test(m):
            return f'label "{src.label}"', float(m)
    if not features:
        return None
    if src.feature_exprs:
        found = session.query("SELECT " + ", ".join(
            f"{magnitude(e)} AS m{i}" for i, e in enumerate(src.feature_exprs)) + f" {where}")[0]
        for name, m in zip(src.features, found):
            if m is not None and test(m):
                return f'feature "{name}"', float(m)
        return None
    rows = session.query(
        f"SELECT u.i, {magnitude('u.v')} AS m FROM (SELECT {src.x_expr} AS x {where}) AS q, "
        "unnest(q.x) WITH ORDINALITY AS u(v, i) GROUP BY u.i ORDER BY u.i")
    for i, m in rows:
        if m is not None and test(m):
            return f'element {int(i)} of feature "{src.features[0]}"', float(m)
    return None


def label_values(session: Session, src: Source) -> list[float]:
    """Up to three distinct usable label values, smallest first (for messages and the registry)."""
    return [r[0] for r in session.query(
        f"SELECT DISTINCT {src.label_expr} AS v FROM {src.relation} AS s "
        f"WHERE {src.valid_expr} ORDER BY 1 LIMIT 3")]


def pack_into(session: Session, src: Source, table: str, d: int, where: str,
              expected_rows: float, block_size: int, dtype: str, seed: int, *,
              create: bool = True) -> int:
    """Create ``table`` and fill it with the usable rows of ``src`` matching ``where``.

    Each row goes to the block a seeded hash of its identity picks, so every block is a
    uniformly random subset, without a global sort; rows are shuffled inside each block too.
    Small inputs use a hash aggregate; large ones sort on the block number, so the backend
    holds one block at a time. Returns the number of rows packed.
    """
    blocks = max(1, math.ceil(expected_rows / block_size))
    size = expected_rows * (8 * d + 40)
    if size <= HASH_AGGREGATE_BYTES:  # all blocks in one hash table: one pass, no sort
        settings = {"work_mem": f"{max(64, int(2 * size / 2**20))}MB", "enable_sort": "off"}
    else:
        settings = {"work_mem": "256MB", "enable_hashagg": "off"}
    # The heap holds only TOAST pointers: at the default fill a few pages hold thousands of
    # blocks, and a parallel scan hands out whole pages. Fillfactor 10 spreads blocks over ten
    # times more pages so the workers share an epoch evenly.
    if create:
        create_packed(session, table)
    rows = (f"SELECT {src.x_expr} AS x, {src.label_expr} AS y, "
            f"((hashtextextended({src.row_key}, {int(seed)}) & 9223372036854775807) "
            f"%% {int(blocks)})::int AS blk FROM {src.keyed} AS s "
            f"WHERE {src.valid_expr} AND ({where})")
    with settings_for_transaction(session, settings):
        session.query(
            f"INSERT INTO {table} SELECT q.blk, count(*), bismarck._pack_block("
            "string_agg(bismarck._float8_array_bytes(q.x), ''::bytea), "
            "bismarck._float8_array_bytes(array_agg(q.y)), %s::int, %s::text, "
            f"%s::int8 + q.blk) FROM ({rows}) AS q GROUP BY q.blk",
            [d, dtype, int(seed)])
    return int(session.query(f"SELECT coalesce(sum(n), 0) AS n FROM {table}")[0][0])


@contextmanager
def settings_for_transaction(session: Session, values: dict[str, str]) -> Iterator[None]:
    """Set server settings for this transaction and put the previous values back after.

    Three statements whatever the number of settings: read them, set them, restore them.
    When the body fails (an error, Ctrl-C), its exception is the one raised: the restore is
    tried, but in a transaction that failed with it (outside the server) it cannot run, and
    the settings end with that transaction anyway.
    """
    if not values:
        yield
        return
    names = list(values)
    before = session.query("SELECT " + ", ".join(
        f"current_setting(%s) AS s{i}" for i in range(len(names))), names)[0]
    _set_all(session, names, list(values.values()))
    try:
        yield
    except BaseException:
        with suppress(Exception):
            _set_all(session, names, list(before))
        raise
    _set_all(session, names, list(before))


def _set_all(session: Session, names: list[str], values: list[str]) -> None:
    """``set_config(name, value, true)`` for every pair, in one statement."""
    session.query("SELECT " + ", ".join(f"set_config(%s, %s, true) AS v{i}"
                                        for i in range(len(names))),
                  [x for pair in zip(names, values) for x in pair])


def pack_table(session: Session, *, source: str, label: str, features: Sequence[str] | str,
               packed_table: str, block_size: int | None = None, dtype: str | None = None,
               seed: int | None = None) -> dict[str, Any]:
    """``bismarck.pack``: write a reusable packed copy of ``source`` and register it."""
    started = time.monotonic()
    require_arguments("pack", source=source, label=label, features=features,
                      packed_table=packed_table)
    block_size = _check("block_size", block_size)
    dtype = _check("dtype", dtype)
    seed = _check("seed", seed)
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    src = resolve(session, source, label, features)
    # the checks and the copy are two reads (two snapshots): a table's fingerprint taken
    # before the checks must still hold after the copy (loop._prepare)
    with blockscan.unwritten_around(session, src.relation if src.row_key == "s.ctid::text"
                                    else None, blockscan.run_columns(src)):
        checked, target, rows = _check_and_copy(session, src, packed_table, block_size,
                                                dtype, seed)
    name, blocks = session.query(
        f"SELECT %s::regclass::text AS name, count(*) AS blocks FROM {target}",
        [target.replace("%%", "%")])[0]
    values = checked.label_values or label_values(session, src)
    session.query(
        "SELECT bismarck._register_packed(bismarck._ticket(), %s::regclass, %s, %s, %s::text[], "
        "%s, %s::integer, "
        "%s, %s::integer, %s::bigint, %s::bigint, %s::float8[], %s::bigint) AS registered",
        [name, src.name, label, list(src.features), src.array_feature, checked.d, dtype,
         block_size, rows, checked.n_total - checked.n_usable, values, seed])
    return {"packed_table": name, "blocks": int(blocks), "rows": rows,
            "skipped_rows": checked.n_total - checked.n_usable,
            "seconds": time.monotonic() - started}


def _check_and_copy(session: Session, src: Source, packed_table: str, block_size: int | None,
                    dtype: str | None, seed: int) -> tuple[Checked, str, int]:
    """:func:`pack_table`'s checks and copy: what the checks found, the new table, its rows."""
    clustered = None
    if src.row_key == "s.ctid::text":  # a table: the checks off one read of its pages
        checked, _, surveyed = survey_table(session, src, block_size, 0.0, seed)
        clustered = surveyed.clustered()
    else:
        checked = check_rows(session, src)
    check_ranges(session, src, checked, dtype=dtype, standardize=True, squared=False,
                 packing=True)
    target = _new_relation(session, packed_table, src)
    _create_target(session, target)
    among = label_among(src, checked.label_values)  # the copy: only the classes checked
    # a table: one read of its pages, no sort; unless its rows are stored in an order that
    # follows the label, which buffers of page groups would keep (bismarckpy.clustering)
    if src.row_key == "s.ctid::text" and clustered is None:
        rows = blockscan.pack(session, src, target, checked.n_total, checked.d, block_size,
                              dtype, seed, also=among)
    else:
        rows = pack_into(session, src, target, checked.d, among or "true", checked.n_usable,
                         block_size, dtype, seed, create=False)
    if rows != checked.n_usable:  # the copy keeps only the labels the checks found
        raise blockscan.changed(rows, checked.n_usable, "The packed table")
    return checked, target, rows


def registered(session: Session, relation: str) -> PackedTable | None:
    """The registry entry of ``relation`` if it is a packed table made by ``bismarck.pack``."""
    try:
        rows = session.query(
            "SELECT p.packed_table::text AS name, p.source, p.label, p.features, "
            "p.array_feature, p.n_features, p.dtype, p.rows, p.label_values, "
            "p.skipped_rows "
            "FROM bismarck.packed_tables p WHERE p.packed_table = to_regclass(%s)", [relation])
    except BismarckError:
        raise
    except Exception:  # an invalid name: resolve() reports it properly
        return None
    if not rows:
        return None
    name, source, label, features, array_feature, d, dtype, n, values, skipped = rows[0]
    return PackedTable(relation=escape_percent(name), name=name, source=source, label=label,
                       features=list(features), array_feature=array_feature, d=int(d),
                       itemsize=DTYPE_CODES[dtype], rows=int(n),
                       label_values=list(values or []), skipped_rows=int(skipped or 0))


def create_packed(session: Session, table: str) -> None:
    """Create an empty packed table (columns block, n, data)."""
    session.query(f"CREATE UNLOGGED TABLE {table} (block integer, n integer, data bytea) "
                  "WITH (fillfactor = 10)")
    session.query(f"ALTER TABLE {table} ALTER COLUMN data SET STORAGE EXTERNAL")


def _create_target(session: Session, table: str) -> None:
    """Create ``pack``'s target; another session creating the same name refuses it within 1 s.

    A bounded wait (lock_timeout) rather than an advisory lock: advisory lock keys can be
    taken by any role, which could then block packs into a name.
    """
    plain = table.replace("%%", "%")
    before = session.query("SELECT current_setting('lock_timeout') AS t")[0][0]
    session.query("SELECT set_config('lock_timeout', '1s', true) AS t")
    try:
        create_packed(session, table)
    except Exception as exc:
        if getattr(exc, "sqlstate", None) != "55P03":
            raise
        raise InvalidData(f'another session is packing into "{plain}"', sqlstate="55P03",
                          hint="Wait for it to finish, or choose another packed_table "
                               "name.") from None
    session.query("SELECT set_config('lock_timeout', %s, true) AS t", [before])


def _new_relation(session: Session, name: str, src: Source) -> str:
    """Quoted, schema-qualified SQL name for a table to create; a clear error if it is taken.

    A name without a schema goes to the source's schema. Two packs into one name: the second
    is refused within a second (see ``_create_target``).
    """
    try:
        parts = session.query("SELECT parse_ident(%s) AS parts", [name])[0][0]
    except BismarckError:
        raise
    except Exception:
        parts = None
    if not parts or len(parts) > 2:
        raise InvalidData(f'invalid table name "{name}"', sqlstate="42602",
                          hint="Use name or schema.name; quote names with capitals.")
    if len(parts) == 1:
        parts = [session.query(
            "SELECT n.nspname::text AS s FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
            [src.name])[0][0], parts[0]]
    target = ".".join(session.ident(p) for p in parts)
    plain = target.replace("%%", "%")
    if session.query("SELECT to_regclass(%s) IS NOT NULL AS e", [plain])[0][0]:
        raise UndefinedObject(f'relation "{plain}" already exists', sqlstate="42P07",
                              hint="Drop it first or choose another packed_table name.")
    return target


def _check(name: str, value: Any) -> Any:
    """Validate one of the packing parameters with the shared declaration."""
    return validate({name: value}, where="pack")[name]
