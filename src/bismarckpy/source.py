"""Resolve a user's table, label and feature columns into safe SQL expressions.

Names are looked up in the catalog (``to_regclass`` and ``pg_attribute``) and quoted by the
session, so no user string is ever pasted into SQL. Checks happen here, before any epoch runs.

The engine's SQL runs with ``search_path = pg_catalog, pg_temp`` (pinned by every extension
function, and by the client session outside the server), so relation names reach this module
schema-qualified: as PostgreSQL prints a ``regclass`` under that path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from .errors import (
    BismarckError,
    InsufficientPrivilege,
    InvalidData,
    InvalidParameter,
    UndefinedObject,
)

NUMERIC_TYPES = {"smallint", "integer", "bigint", "real", "double precision", "numeric"}
NUMERIC_ARRAYS = {t + "[]" for t in NUMERIC_TYPES}
#: Each column of the relation ``%s`` (an oid) with its base type as ``format_type`` prints
#: it: a domain resolved to the type it is over (``typbasetype``, through domains of domains),
#: an array of a domain to an array of that base ('double precision[]').
BASE_TYPES_SQL = (
    "WITH RECURSIVE t(n, name, typ, arr, depth) AS ("
    "SELECT a.attnum, a.attname::text, a.atttypid, false, 0 FROM pg_catalog.pg_attribute AS a "
    "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped "
    "UNION SELECT t.n, t.name, CASE WHEN y.typtype = 'd' THEN y.typbasetype "
    "ELSE y.typelem END, t.arr OR y.typtype <> 'd', t.depth + 1 "
    "FROM t JOIN pg_catalog.pg_type AS y ON y.oid = t.typ "
    "WHERE y.typtype = 'd' OR (NOT t.arr AND y.typcategory = 'A' AND EXISTS (SELECT 1 "
    "FROM pg_catalog.pg_type AS e WHERE e.oid = y.typelem AND e.typtype = 'd'))) "
    "SELECT DISTINCT ON (t.n) t.name, pg_catalog.format_type(t.typ, NULL) "
    "|| CASE WHEN t.arr THEN '[]' ELSE '' END AS type FROM t ORDER BY t.n, t.depth DESC")

#: Label types whose classes are ordered as their bytes (``COLLATE "C"``: the order of Python's
#: ``sorted`` and numpy's ``unique`` on the same strings), whatever the database's collation.
STRING_TYPES = ("text", "character varying", "character", "name", "citext")


class Session(Protocol):
    """What the engine needs from a database connection, inside or outside the server.

    SQL text follows psycopg's rules: ``%s`` is a parameter and ``%%`` a literal percent sign,
    so :meth:`ident` doubles any ``%`` in a name.
    """

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """Run SQL with ``%s`` placeholders; return all rows as tuples."""

    def ident(self, name: str) -> str:
        """Quote an identifier (with ``%`` doubled)."""


def escape_percent(sql_fragment: str) -> str:
    """Double ``%`` so a server-quoted name survives placeholder processing."""
    return sql_fragment.replace("%", "%%")


@dataclass
class Source:
    """A resolved training or scoring source."""

    relation: str  # SQL text: quoted, schema-qualified when needed, % doubled
    name: str  # the relation as PostgreSQL prints it (regclass text), for messages and storage
    label: str | None
    label_expr: str | None  # float8 expression of the label (a class's index: class labels)
    label_type: str | None  # as format_type prints it: 'text', 'boolean', 'public.mood', ...
    features: list[str]  # column names as given
    x_expr: str  # float8[] expression
    valid_expr: str  # row has usable label and features
    array_feature: bool
    row_key: str  # text expression identifying a row of ``FROM keyed AS s`` (for hashing)
    keyed: str = ""  # FROM item whose rows ``row_key`` identifies (the relation, or a subquery)
    feature_exprs: list[str] = field(default_factory=list)  # float8 per scalar column ([]: array)
    # valid_expr without the element-by-element NaN/inf test of an array feature (left to
    # numpy by block-shuffled scans): NULLs, dimensions and the label's own tests.
    scan_valid_expr: str = ""
    # What an epoch over page groups asks of SQL (blockscan._group_rows): the label's tests and
    # an array feature's dimension; NULL elements reach numpy as NaN (blockscan.read_matrix)
    # and are skipped there with NaN and infinities (array_position costs a quarter of the
    # pass's SQL).
    epoch_valid_expr: str = ""
    # The quoted array feature column ("" for scalar features): an epoch over page groups
    # also asks its length (blockscan._group_rows), which preparation fixed.
    array_column: str = ""
    # (column name, SQL true when a row's numeric value has no float8: |v| beyond ~1.8e308 or
    # a non-zero |v| below ~2.5e-324), one per numeric or numeric[] column, for check_casts.
    cast_checks: list[tuple[str, str]] = field(default_factory=list)
    # A label of classes that are not numbers (text, varchar, an enum, ...; any type when the
    # model's classes are given): the class values as text, in class order; ``label_expr`` is
    # then each row's class index 0..K-1 (-1: a value that is none of them). None otherwise.
    class_labels: list[str] | None = None
    label_sql: str | None = None  # the quoted label column, for class discovery
    inheritance_parent: bool = False  # a table with inheritance children (read by rows)

    @property
    def categorical(self) -> bool:
        """Whether the label is a class of a type other than a number or a boolean."""
        return self.label_type is not None and self.label_type != "boolean" \
            and self.label_type not in NUMERIC_TYPES

    @property
    def max_abs_expr(self) -> str:
        """The largest magnitude among a row's features (NULL/NaN rows are filtered apart)."""
        if self.feature_exprs:
            return "greatest(" + ", ".join(f"abs({e})" for e in self.feature_exprs) + ")"
        return f"(SELECT max(abs(v)) FROM unnest({self.x_expr}) AS v)"

    @property
    def min_abs_expr(self) -> str:
        """The smallest non-zero magnitude among a row's features (NULL: all zero)."""
        if self.feature_exprs:
            return "least(" + ", ".join(f"nullif(abs({e}), 0)" for e in self.feature_exprs) + ")"
        return f"(SELECT min(abs(v)) FROM unnest({self.x_expr}) AS v WHERE v <> 0)"


#: How to pass each required argument of the train_* functions and pack, for their errors.
_ARGUMENT_HINTS = {
    "source": "source => 'schema.table' (a table or a view)",
    "label": "the label column's name, e.g. label => 'y'",
    "features": "features => ARRAY['col1', 'col2'] or a single float8[] column name",
    "row_col": "the row id column's name, e.g. row_col => 'user_id'",
    "col_col": "the column id column's name, e.g. col_col => 'item_id'",
    "value_col": "the value column's name, e.g. value_col => 'rating'",
    "packed_table": "the name of the table to create, e.g. packed_table => 'my_packed'",
}


def require_arguments(where: str, **values: Any) -> None:
    """Refuse a required argument of ``where`` (``train_glm``...) that is NULL (None), or a
    list of column names holding a NULL, naming the parameter: before any name is looked up,
    so that no error speaks of a column "None"."""
    for name, v in values.items():
        if v is None or (isinstance(v, (list, tuple)) and any(e is None for e in v)):
            raise InvalidParameter(
                f"{where}: {name} must not be NULL" if v is None else
                f"{where}: {name} holds a NULL", sqlstate="22004",
                hint=f"Pass {_ARGUMENT_HINTS.get(name, name)}.")


def resolve(session: Session, relation: str, label: str | None,
            features: Sequence[str] | str, *, classes: Sequence[str] | None = None,
            categorical: bool = False, unknown: int | None = -1,
            scoring: bool = False) -> Source:
    """Check names and types and build the expressions; raise a clear error on any problem.

    ``classes``: the class values (as text, in class order) of a model whose label is not
    numeric: the label, of any type, is coded as its class index (:func:`class_index_sql`).
    ``unknown``: the code of a label value that is none of ``classes`` (-1: scoring sees and
    refuses it; None: a training row that is skipped, as a NULL label).
    ``categorical``: a label of another type (text, varchar, an enum...) is accepted without
    classes (``label_expr`` None until :func:`with_classes` gives them); otherwise refused.
    ``scoring``: the columns are a stored model's (a permission error's hint then offers no
    other features).
    """
    if not relation or not isinstance(relation, str):
        raise UndefinedObject("no source table given", sqlstate="42P01",
                              hint="Pass source => 'schema.table' (a table or a view).")
    try:
        rows = session.query("SELECT to_regclass(%s)::oid AS oid, to_regclass(%s)::text AS name",
                             [relation, relation])
    except (BismarckError, AssertionError):
        raise
    except Exception as exc:  # invalid name syntax, e.g. unbalanced quotes
        raise UndefinedObject(f'invalid relation name "{relation}"', sqlstate="42602",
                              detail=str(exc).splitlines()[0]) from None
    oid, qualified = rows[0]
    if oid is None:
        raise UndefinedObject(
            f'relation "{relation}" does not exist', sqlstate="42P01",
            hint="Check the table name and the search_path; names with capitals need quotes, "
                 "e.g. '\"MyTable\"'.")
    relkind, whole_table, children = session.query(
        "SELECT relkind::text AS kind, has_table_privilege(oid, 'SELECT') AS whole, "
        "EXISTS (SELECT 1 FROM pg_inherits AS i WHERE i.inhparent = c.oid) AS children "
        "FROM pg_class AS c WHERE oid = %s", [oid])[0]
    rows_kind = relkind
    if children and relkind == "r":  # an inheritance parent: its scans read its children's
        relkind = "p"                # rows too, whose ctids repeat the parent's
    cols = dict(session.query(
        "SELECT attname::text AS name, format_type(atttypid, NULL) AS type FROM pg_attribute "
        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", [oid]))
    bases = dict(session.query(BASE_TYPES_SQL, [oid]))
    if isinstance(features, str):
        features = [features]
    features = list(features or [])
    if not features:
        raise InvalidData("no feature columns given", sqlstate="22023",
                          hint="Pass features => ARRAY['col1', 'col2'] or a single float8[] "
                               "column name.")
    for name in [label, *features] if label is not None else features:
        if name not in cols:
            raise UndefinedObject(
                f'column "{name}" does not exist in {qualified}', sqlstate="42703",
                hint="Available columns: " + ", ".join(cols) + ".")
    if not whole_table:
        _require_column_privileges(session, oid, qualified, label, features,
                                   scoring=scoring)
    repeated = [n for n in dict.fromkeys(features) if features.count(n) > 1]
    if repeated:
        raise InvalidData(f'feature column "{repeated[0]}" is listed more than once',
                          sqlstate="42701", hint="List each feature column once.")
    if label is not None and label in features:
        raise InvalidData(f'column "{label}" is both the label and a feature', sqlstate="22023",
                          hint="Remove the label from the feature list.")
    q = session.ident
    label_expr = label_type = None
    valid = []
    if label is not None:
        label_type = cols[label]
        if classes is not None:
            label_expr = class_index_sql(session, q(label), classes, unknown)
        elif label_type == "boolean":
            label_expr = f"({q(label)})::int::float8"
        elif label_type in NUMERIC_TYPES:
            label_expr = f"({q(label)})::float8"
        elif not categorical:
            raise InvalidData(
                f'label column "{label}" has type {label_type}', sqlstate="42804",
                hint="A label of classes (text, an enum...) trains a classifier: train_glm with "
                     "loss => 'softmax' or a binary loss, or train_mlp; a numeric target must "
                     "be a number (cast it in a view).")
        if label_expr is not None:
            valid.append(f"{label_expr} IS NOT NULL AND {label_expr} NOT IN "
                         "('NaN', 'Infinity', '-Infinity')")
    # Features are read as numbers through their base types: a domain over double precision
    # (or over a domain of it, or an array of one) is that type to the casts below.
    ftypes = {n: bases.get(n, cols[n]) for n in features}
    array_feature = len(features) == 1 and ftypes[features[0]] in NUMERIC_ARRAYS
    exprs: list[str] = []
    scan_valid = list(valid)
    epoch_valid = list(valid)
    if array_feature:
        col = q(features[0])
        x_expr = f"({col})::float8[]"
        epoch_valid.append(f"array_ndims({col}) = 1")
        scan_valid.append(f"CASE WHEN array_ndims({col}) = 1 THEN array_position({x_expr}, "
                          "NULL) IS NULL ELSE false END")
        valid.append(f"CASE WHEN array_ndims({col}) = 1 THEN array_position({x_expr}, NULL) "
                     f"IS NULL AND NOT ({x_expr} && '{{NaN,Infinity,-Infinity}}'::float8[]) "
                     "ELSE false END")
    else:
        for name in features:
            t = ftypes[name]
            if t in NUMERIC_ARRAYS:
                raise InvalidData(
                    f'feature column "{name}" is an array', sqlstate="42804",
                    hint="Pass either one array column alone or a list of scalar columns.")
            if t not in NUMERIC_TYPES and t != "boolean":
                raise InvalidData(
                    f'feature column "{name}" has type {cols[name]}'
                + (f" (a domain over {t})" if t != cols[name] else ""), sqlstate="42804",
                    hint="Features must be numeric or boolean; encode categories as 0/1 "
                         "columns (one-hot) in a view first.")
        exprs = [(f"({q(n)})::int::float8" if ftypes[n] == "boolean" else f"({q(n)})::float8")
                 for n in features]
        x_expr = "ARRAY[" + ", ".join(exprs) + "]::float8[]"
        valid.extend(f"{e} IS NOT NULL AND {e} NOT IN ('NaN', 'Infinity', '-Infinity')"
                     for e in exprs)
        scan_valid = valid
    checked = {**({label: cols[label]} if label is not None else {}), **ftypes}
    cast_checks = [(n, _beyond_float8(q(n), t == "numeric[]"))
                   for n, t in checked.items() if t in ("numeric", "numeric[]")]
    relation = escape_percent(qualified)
    row_key, keyed = _row_identity(relation, relkind, whole_table,
                                   [q(n) for n in ([label] if label is not None else [])
                                    + features])
    return Source(relation=relation, name=qualified, label=label,
                  label_expr=label_expr, label_type=label_type, features=features,
                  x_expr=x_expr, valid_expr=" AND ".join(valid),
                  array_feature=array_feature, row_key=row_key, keyed=keyed,
                  feature_exprs=exprs, cast_checks=cast_checks,
                  scan_valid_expr=" AND ".join(scan_valid),
                  epoch_valid_expr=" AND ".join(epoch_valid) or "true",
                  array_column=q(features[0]) if array_feature else "",
                  class_labels=None if classes is None else list(classes),
                  label_sql=None if label is None else q(label),
                  inheritance_parent=bool(children) and rows_kind == "r")


def _require_column_privileges(session: Session, oid: int, qualified: str, label: str | None,
                               features: Sequence[str], *, scoring: bool) -> None:
    """Refuse, before any row is read, a label or feature column the current role may not
    SELECT (it holds privileges on some other columns), naming the columns and the ways out:
    a GRANT of just those columns, or features it may read (when training). A role that may
    read no column gets PostgreSQL's own 'permission denied for table' at the first read."""
    rows = session.query(
        "SELECT a.attname::text AS name, pg_catalog.quote_ident(a.attname) AS quoted, "
        "pg_catalog.has_column_privilege(a.attrelid, a.attnum, 'SELECT') AS may "
        "FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = %s AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum", [oid])
    may = {name: ok for name, _, ok in rows}
    quoted = {name: qn for name, qn, _ in rows}
    needed = [*([label] if label is not None else []), *features]
    missing = [n for n in dict.fromkeys(needed) if n in may and not may[n]]
    if not missing or not any(may.values()):  # no column at all: PostgreSQL's own error
        return
    role = session.query("SELECT pg_catalog.quote_ident(current_user::text) AS r")[0][0]
    readable = [n for n, ok in may.items() if ok]
    noun = "column" if len(missing) == 1 else "columns"
    grant = (f"GRANT SELECT ({', '.join(quoted[n] for n in missing)}) ON {qualified} "
             f"TO {role}")
    if scoring:
        hint = f"Ask the owner of {qualified} to run {grant}; the model reads these columns."
    else:
        hint = (f"Ask the owner of {qualified} to run {grant}, or train on columns you may "
                "read: leave the others out of features => ARRAY[...] (--features in the "
                "bismarck CLI, features= in Python).")
    raise InsufficientPrivilege(
        f"permission denied for {noun} {', '.join(quoted[n] for n in missing)} of {qualified}",
        sqlstate="42501",
        detail=("Reading needs SELECT on the label and every feature column: "
                + ", ".join(quoted[n] for n in dict.fromkeys(needed)) + ". You may read "
                + (", ".join(quoted[n] for n in readable) if readable else "none of its columns")
                + "."),
        hint=hint)


def class_index_sql(session: Session, column: str, classes: Sequence[str],
                    unknown: int | None = -1) -> str:
    """float8 SQL of a row's class index: the position of ``column``'s text among ``classes``
    (0-based), ``unknown`` for a value that is none of them (None: NULL), NULL for NULL.

    The class values are quoted by the server (``quote_literal``), never pasted.
    """
    if not classes:
        raise InvalidData("a model of classes needs at least one class")
    quoted = [r[0] for r in session.query(
        "SELECT quote_literal(v) AS q FROM unnest(%s::text[]) WITH ORDINALITY AS u(v, i) "
        "ORDER BY i", [list(classes)])]
    array = escape_percent("ARRAY[" + ", ".join(quoted) + "]::text[]")
    index = f"array_position({array}, ({column})::text) - 1"
    if unknown is None:
        return f"({index})::float8"
    return (f"(CASE WHEN {column} IS NULL THEN NULL ELSE coalesce({index}, {int(unknown)}) "
            "END)::float8")


def label_among(src: Source, classes: Sequence[float] | None) -> str:
    """SQL on ``s``: the row's label (``src.label_expr``, float8) is one of ``classes`` (""
    when there are none: a regression). A copy of the rows read after their checks (a second
    snapshot) keeps only rows whose label the checks found, so a label changed in between
    makes the copy's row count differ from the checks' (the table changed) instead of
    training silently as another class. Values are written exactly (``repr`` of a double
    reads back as the same double)."""
    if not classes or src.label_expr is None:
        return ""
    values = ",".join(repr(float(c)) for c in classes)
    return f"({src.label_expr}) = ANY('{{{values}}}'::pg_catalog.float8[])"


def exact_number(v: float) -> str:
    """A class value for messages, exactly: integers in digits (9007199254740992, not
    9.0072e+15), others as the shortest text that reads back as the same double (0.1)."""
    v = float(v)
    if v.is_integer() and abs(v) < 1e21:
        return str(int(v))
    return repr(v)


#: The largest magnitude below which double precision holds every integer (2**53).
EXACT_INTEGERS = 2**53


def inexact_classes(session: Session, src: Source, limit: int) -> tuple[str, str] | None:
    """Why a numeric label's classes would not survive their coding as double precision (the
    model's classes, and every row's label in training, are float8): None when they do.

    Only bigint and numeric labels can lose a class (smallint, integer, real and double
    precision are exact in float8): two distinct values with one nearest double (bigint
    9007199254740992 and 9007199254740993; numeric 0.1 and 0.10000000000000000001) would
    merge into one class, and a value without its own double (2**53 + 1, beyond 2**53 in
    magnitude; 0.10000000000000000001) would be stored, and predicted, as another; an
    integer beyond 2**53 that double precision holds (2**53 + 2) is kept. Reads up to
    ``limit`` distinct values (a label with more is not a set of classes: refused elsewhere).
    Returns (message, detail).
    """
    if src.label_type not in ("bigint", "numeric") or src.label_sql is None:
        return None
    values = distinct_labels(session, src, limit)
    if len(values) >= limit:
        return None
    by_double: dict[float, list[str]] = {}
    for t in values:
        by_double.setdefault(float(t), []).append(t)
    merged = [group for group in by_double.values() if len(group) > 1]
    if merged:
        group = merged[0]
        shown = ", ".join(group[:5]) + (" …" if len(group) > 5 else "")
        return (f'label "{src.label}" has classes that double precision cannot tell apart',
                f"The {src.label_type} values {shown} are all the double precision number "
                f"{exact_number(float(group[0]))}: they would train as one class"
                + (f" ({len(merged)} such groups)." if len(merged) > 1 else "."))
    changed = [t for t in values if Decimal(t) != Decimal(exact_number(float(t)))]
    if changed:
        t = changed[0]
        why = (f"Double precision holds integers exactly only up to 2**53 = {EXACT_INTEGERS} "
               "(beyond, every second, fourth... integer); " if Decimal(t) % 1 == 0
               else "It holds about 16 significant digits; ")
        return (f'label "{src.label}" has a class that double precision does not hold exactly',
                why + f"the class {t} would be stored and predicted as "
                f"{exact_number(float(t))}.")
    return None


def with_classes(session: Session, src: Source, classes: Sequence[str]) -> Source:
    """``src`` with its label coded as the index of its value among ``classes`` for training:
    a row whose value is none of them (written since the classes were read) is skipped."""
    assert src.label is not None
    return resolve(session, src.name, src.label, src.features, classes=classes, unknown=None)


def distinct_labels(session: Session, src: Source, limit: int) -> list[str]:
    """Up to ``limit`` distinct label values of the usable rows, as text, in class order: the
    label type's own order (an enum's declaration order, false before true), strings in byte
    order (``COLLATE "C"``, as Python sorts them). NULL labels are not classes."""
    assert src.label_sql is not None
    collate = ' COLLATE "C"' if src.label_type in STRING_TYPES else ""
    where = f"{src.label_sql} IS NOT NULL" + (f" AND {src.valid_expr}" if src.valid_expr else "")
    rows = session.query(
        f"SELECT d.v::text AS t FROM (SELECT DISTINCT {src.label_sql} AS v FROM "
        f"{src.relation} AS s WHERE {where}) AS d ORDER BY d.v{collate} LIMIT {int(limit)}")
    return [r[0] for r in rows]


#: numeric values whose cast to float8 fails: beyond the largest double (rounding up to
#: infinity) or non-zero below half the smallest subnormal (rounding to zero, which
#: PostgreSQL's float8 input refuses as out of range too).
_FLOAT8_HUGE = "1.7976931348623158e308"
_FLOAT8_TINY = "2.4703282292062328e-324"


def _beyond_float8(col: str, array: bool) -> str:
    """SQL true when numeric column ``col`` (a numeric[] when ``array``) holds a value that
    has no float8 (NaN and ±Infinity do: they are missing values, filtered apart)."""
    def one(v: str) -> str:
        return (f"({v} NOT IN ('NaN', 'Infinity', '-Infinity') AND (abs({v}) >= {_FLOAT8_HUGE} "
                f"OR ({v} <> 0 AND abs({v}) < {_FLOAT8_TINY})))")
    if array:
        return f"EXISTS (SELECT 1 FROM unnest({col}) AS v WHERE {one('v')})"
    return f"coalesce({one(col)}, false)"


_DUP = '"bismarck duplicate"'


def _row_identity(relation: str, relkind: str, whole_table: bool,
                  columns: list[str]) -> tuple[str, str]:
    """A text key per row (hashed for the shuffle, the split and the blocks) and its FROM item.

    Tables read with table-level SELECT use the physical row id (``ctid``; with ``tableoid`` for
    partitioned tables). Otherwise (views, foreign tables, or only column-level SELECT on the
    named columns, which is enough to train) the key is the named columns' values plus the
    row's rank among identical rows, so the key needs no other privilege, duplicates spread over
    blocks like distinct rows, and the key does not depend on the order of the scan.
    """
    if whole_table and relkind in ("r", "m"):
        return "s.ctid::text", relation
    if whole_table and relkind == "p":
        return "s.tableoid::text || s.ctid::text", relation
    cols = ", ".join(columns)
    keyed = (f"(SELECT {cols}, row_number() OVER (PARTITION BY {cols}) AS {_DUP} "
             f"FROM {relation})")
    return f"ROW({cols})::text || '#' || s.{_DUP}", keyed
