"""Model averaging across partitions and shards: ``averaging => 'partition'``.

When the source is a partitioned table, each epoch runs one aggregate per partition, where the
partition's rows are, and the training loop merges the partitions' states by the model kind's
rule (for SGD kinds: models averaged weighted by rows; Zinkevich et al., "Parallelized
Stochastic Gradient Descent", NIPS 2010; Bismarck's "master averages the workers' models").
The partitions may be local tables or foreign tables on other PostgreSQL servers (shards,
attached through ``postgres_fdw``): the same query serves both, because PostgreSQL ships an
aggregate grouped by the partition key to each foreign partition when

* ``enable_partitionwise_aggregate`` is on (set for the epoch's transaction),
* the query groups by the partition key (a LIST key, one value per partition),
* the foreign server lists ``extensions 'bismarck'`` (so ``bismarck._epoch_partial`` and
  ``bismarck._float8_array_bytes`` are shippable; every expression of the query is immutable),
* and nothing in the query is volatile or a system column (``ctid``/``tableoid`` are not
  shippable): the split and the shuffle hash the row's values (``hash_array_extended``).

With ``async_capable 'true'`` on the servers the shards run concurrently. Nothing is copied:
the epochs read the partitions in place (no working copy, no packed blocks), rows in a seeded
hash order inside each partition (``shuffle => 'once'``) or in table order (``'never'``).

Preparation: the row checks (counts, shapes, ranges) and the label's scale read the source as
one relation, so for foreign partitions those passes bring rows to the coordinator; the
held-out cut (each partition's k smallest hashes, ORDER BY ... LIMIT), the per-partition
counts and the standardisation moments run on the shards. The epochs never move rows.

After each epoch's merge the loop scores the averaged model on the training rows with one
evaluate-only pass of the same per-partition query (:func:`bismarckpy.loop._run_epochs`): that,
not the mean of the partitions' own losses along their epochs, is the training loss reported,
stored and tested for convergence. Because the epochs re-read the partitions, each leaf is
fingerprinted before the first read and before the model is stored (:func:`write_marks`); a
write in between refuses the model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import (
    BismarckError,
    InsufficientPrivilege,
    InvalidData,
    InvalidParameter,
    ShardUnavailable,
)
from .moments import decode as moments_decode
from .moments import merge as moments_merge
from .packing import check_ranges, check_rows
from .params import EXACT_SOLVERS
from .shared_model import subtransaction
from .source import BASE_TYPES_SQL, Source, escape_percent

if TYPE_CHECKING:
    from .loop import TrainingSession, _Prepared
    from .packing import PackedTable


#: Groups rows by their partition under any partitioning (but never pushed down to a shard,
#: nor run as a Parallel Append of whole aggregates: PostgreSQL does both only for GROUP BY
#: the partition key).
BY_TABLEOID = "s.tableoid::regclass::text"


@dataclass(frozen=True)
class Partition:
    """A leaf partition: its name (regclass text) and foreign server (None: a local table)."""

    name: str
    server: str | None = None


@dataclass
class Layout:
    """A partitioned source: its leaves and the SQL that names a row's partition.

    ``group`` is an expression over ``s`` (the source's rows): the partition key column when
    any partition is foreign (what postgres_fdw can push down), else ``tableoid`` (any
    partitioning, any depth).
    """

    parent: str
    group: str
    partitions: list[Partition]
    key: str | None = None  # the quoted key column when grouping by it
    names: dict[Any, str] = field(default_factory=dict)  # group value -> partition name

    @property
    def shards(self) -> list[Partition]:
        """The foreign partitions."""
        return [p for p in self.partitions if p.server]

    def name_of(self, value: Any) -> str:
        """The partition a group value belongs to (for the history and messages)."""
        return self.names.get(value, str(value))


def check_options(p: dict[str, Any], table: PackedTable | None) -> None:
    """Refuse the options ``averaging => 'partition'`` cannot honour, before any work."""
    def refuse(message: str, detail: str, hint: str) -> InvalidParameter:
        return InvalidParameter(message, detail=detail, hint=hint)

    if table is not None:
        raise refuse("averaging => 'partition' needs a partitioned source table",
                     f"{table.name} is a packed table (one shuffled copy, not partitions).",
                     "Train on its partitioned source table, or use averaging => 'global'.")
    if p.get("solver") in EXACT_SOLVERS:
        raise refuse("averaging => 'partition' applies to SGD epochs",
                     f"solver => '{p['solver']}' sums exact passes over all rows, which "
                     "averaging would not change.", "Use solver => 'sgd', or averaging "
                     "=> 'global'.")
    if p["packed"]:
        raise refuse("averaging => 'partition' reads the partitions in place",
                     "Packed blocks are a copy in one place; the partitions' rows stay where "
                     "they are (on their shards).", "Leave packed unset (or false).")
    if p["shuffle"] == "blocks":
        raise refuse("averaging => 'partition' has its own copy-free scan",
                     "shuffle => 'blocks' reads a table's page groups through ctid, which "
                     "PostgreSQL does not ship to a shard; partitions are read in place anyway.",
                     "Use shuffle => 'once' (a seeded hash order inside each partition) or "
                     "'never' (table order).")
    if p["shuffle"] == "always":
        raise refuse("averaging => 'partition' cannot reshuffle every epoch",
                     "A new random order per epoch is volatile, so PostgreSQL would not run "
                     "the epoch on the shards.",
                     "Use shuffle => 'once' (a seeded hash order inside each partition) or "
                     "'never' (table order).")
    p["packed"] = False


def layout(session: TrainingSession, src: Source) -> Layout:
    """The partitions of ``src`` and how an epoch groups by them; a clear error otherwise."""
    rows = session.query(
        "SELECT c.relkind::text AS kind, pt.partstrat::text AS strategy, "
        "pt.partattrs::int2[]::int[] AS attrs "
        "FROM pg_catalog.pg_class c "
        "LEFT JOIN pg_catalog.pg_partitioned_table pt ON pt.partrelid = c.oid "
        "WHERE c.oid = pg_catalog.to_regclass(%s)::oid", [src.name])
    kind, strategy, attrs = rows[0] if rows else (None, None, None)
    if kind != "p":
        what = {"r": "a table", "v": "a view", "m": "a materialized view",
                "f": "a foreign table"}.get(kind or "", "not a partitioned table")
        raise InvalidParameter(
            "averaging => 'partition' needs a partitioned source table",
            detail=f"{src.name} is {what}.",
            hint="Partition it (CREATE TABLE ... PARTITION BY LIST (shard)) or attach shards "
                 "with `bismarck shards add`; or use averaging => 'global'.")
    leaves = [Partition(name, server) for name, server, _ in session.query(
        "SELECT t.relid::regclass::text AS name, fs.srvname::text AS server, t.level "
        "FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass(%s)) AS t "
        "LEFT JOIN pg_catalog.pg_foreign_table ft ON ft.ftrelid = t.relid "
        "LEFT JOIN pg_catalog.pg_foreign_server fs ON fs.oid = ft.ftserver "
        "WHERE t.isleaf ORDER BY 1", [src.name])]
    if not leaves:
        raise InvalidData(f"{src.name} has no partitions",
                          hint="Attach partitions, or use averaging => 'global'.")
    foreign = [leaf for leaf in leaves if leaf.server]
    depth = session.query(
        "SELECT max(t.level) AS depth FROM pg_catalog.pg_partition_tree("
        "pg_catalog.to_regclass(%s)) AS t", [src.name])[0][0]
    by_key = strategy == "l" and len(attrs or []) == 1 and attrs[0] != 0 and depth == 1
    if not foreign and not by_key:
        return Layout(src.name, BY_TABLEOID, leaves)
    if not by_key:
        raise InvalidParameter(
            "foreign partitions need LIST partitioning on one column",
            detail=f"{src.name} has foreign partitions ({foreign[0].name} on server "
                   f"{foreign[0].server}) but is not partitioned BY LIST of one column, one "
                   "level deep: PostgreSQL runs the epoch on the shards only when it groups by "
                   "the partition key.",
            hint="Create the parent as PARTITION BY LIST (shard) with one value per shard "
                 "(`bismarck shards add` does).")
    key = session.query(
        "SELECT attname::text AS name FROM pg_catalog.pg_attribute "
        "WHERE attrelid = pg_catalog.to_regclass(%s) AND attnum = %s", [src.name, attrs[0]])[0][0]
    column = session.ident(key)
    return Layout(src.name, f"s.{column}", leaves, key=column)


def check_shard_versions(session: TrainingSession, lay: Layout) -> None:
    """Refuse shards whose bismarck version differs from this one's, naming both.

    ``bismarck._engine_version`` over an aggregate of the foreign partition is evaluated on
    the shard (postgres_fdw ships it); a shard without it has an older bismarck.
    """
    from . import __version__

    check_shard_pushdown(session, lay)
    for leaf in lay.shards:
        try:
            theirs = session.query("SELECT bismarck._engine_version(count(*)) AS v "
                                   f"FROM {escape_percent(leaf.name)} AS s")[0][0]
        except BismarckError:
            raise
        except Exception as exc:
            theirs = None
            if "_engine_version" not in _reason(exc):
                raise shard_failure(exc, leaf) from None
        if theirs != __version__:
            raise InvalidData(
                f"shard server {leaf.server} has another bismarck version",
                detail=f"Partition {leaf.name} is on a server with bismarck "
                       f"{theirs or 'older than 0.3'}; this server has {__version__}. An "
                       "epoch must run the same code on every shard.",
                hint="Install this version on the shard (`bismarck install --dsn ...`), then "
                     "`bismarck shards check`.")


def _reason(exc: BaseException) -> str:
    """The first line of an error's message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _detail(exc: BaseException) -> str:
    """An error's DETAIL, from PL/Python's SPIError or psycopg's diagnostics ('' if none)."""
    diag = getattr(exc, "diag", None)
    data = getattr(exc, "spidata", None) or ()  # PL/Python: (sqlstate, detail, hint, ...)
    text = (data[1] if len(data) > 1 else None) or getattr(exc, "detail", None) or (
        diag.message_detail if diag is not None else None)
    return " ".join(str(text or "").split())


def _leaf_failure(exc: BaseException, leaf: Partition) -> BismarckError | None:
    """The engine's error for a failed read of a partition by name (None: keep ``exc``)."""
    if leaf.server:
        return shard_failure(exc, leaf)
    if (getattr(exc, "sqlstate", None) or "") == "42501":
        return InsufficientPrivilege(
            f"permission denied for partition {leaf.name}",
            detail=f"{_reason(exc)}. averaging => 'partition' reads each partition by name "
                   "(its counts and its row fingerprint), so SELECT on the parent table is "
                   "not enough.",
            hint=f"GRANT SELECT ON {leaf.name} (and every other partition) TO the role that "
                 "trains, or use averaging => 'global'.")
    return None


def shard_failure(exc: BaseException, leaf: Partition) -> BismarckError:
    """The engine's error for a failed query on a foreign partition, by the cause's SQLSTATE.

    Only a lost or refused connection says the shard does not answer; a missing user mapping
    or password, a missing table on the shard and a missing privilege say so, with the way out.
    """
    state = getattr(exc, "sqlstate", None) or ""
    reason = _reason(exc)
    where = f"(partition {leaf.name} on shard server {leaf.server})"
    said = f"{reason} {_detail(exc)}"
    if "authentication failed" in said or 'role "' in said and "does not exist" in said:
        return BismarckError(
            f"shard server {leaf.server} refused the login of the user mapping",
            detail=f"{reason}: {_detail(exc)} {where}.", sqlstate="28000",
            hint=f"Correct the user or password: ALTER USER MAPPING FOR CURRENT_USER SERVER "
                 f"{leaf.server} OPTIONS (SET password '...'), then rerun.")
    if state.startswith("08") or state in ("57P01", "57P02", "57P03"):
        return ShardUnavailable(
            f"shard server {leaf.server} does not answer",
            detail=f"{reason} {where}.",
            hint="Start the shard (`bismarck shards check` tests every shard) and rerun the "
                 "training.")
    if "user mapping not found" in reason:
        return BismarckError(
            f"no user mapping for this role on shard server {leaf.server}",
            detail=f"{reason} {where}. postgres_fdw connects to a shard as the user mapping "
                   "of the role that trains names.", sqlstate=state or "42704",
            hint=f"Create one: CREATE USER MAPPING FOR CURRENT_USER SERVER {leaf.server} "
                 "OPTIONS (user '...', password '...'), then rerun.")
    if state == "2F003" or "password is required" in reason:
        return BismarckError(
            f"the user mapping for shard server {leaf.server} has no password",
            detail=f"{reason} {where}. postgres_fdw lets a role other than a superuser "
                   "connect only with a password in its user mapping.",
            sqlstate=state or "2F003",
            hint=f"Add one: ALTER USER MAPPING FOR CURRENT_USER SERVER {leaf.server} OPTIONS "
                 "(ADD password '...') (the shard must ask for it), then rerun.")
    if state == "42P01":
        return InvalidData(
            f"the table of partition {leaf.name} is missing on shard server {leaf.server}",
            detail=f"{reason} {where}.", sqlstate=state,
            hint="Create the table on the shard (with the coordinator's columns), or detach "
                 "the partition (ALTER TABLE ... DETACH PARTITION); `bismarck shards check` "
                 "tests every shard.")
    if state == "42501":
        return BismarckError(
            f"permission denied on partition {leaf.name}",
            detail=f"{reason} {where}.", sqlstate=state,
            hint="averaging => 'partition' reads each partition directly: grant SELECT on "
                 "every partition (and on the shard's table to the mapped user), then rerun.")
    return BismarckError(f"a query on shard server {leaf.server} failed",
                         detail=f"{reason} {where}.", sqlstate=state or BismarckError.sqlstate,
                         hint="`bismarck shards check` tests every shard.")


def _mistyped_column(session: TrainingSession, src: Source, leaf: Partition) -> str | None:
    """The first label or feature column the shard cannot read as the coordinator's type
    (None: none found alone). Each column's part of the epoch's row test, alone in a WHERE
    clause the shard parses with its own column types; LIMIT 0 reads no row."""
    wanted = [*([src.label] if src.label is not None and not src.class_labels else []),
              *src.features]
    oid = session.query("SELECT pg_catalog.to_regclass(%s)::oid AS oid", [leaf.name])[0][0]
    rows = session.query(BASE_TYPES_SQL, [oid])  # a domain as its base type (boolean, ...)
    for name, typ in rows:
        if name not in wanted:
            continue
        col = session.ident(name)
        if typ.endswith("[]"):
            test = f"NOT (({col})::float8[] && '{{NaN}}'::float8[])"
        elif typ == "boolean":
            test = f"({col})::int::float8 <> 'NaN'::float8"
        else:
            test = f"({col})::float8 <> 'NaN'::float8"
        try:
            with subtransaction(session):
                session.query(f"SELECT 1 AS one FROM {escape_percent(leaf.name)} AS s "
                              f"WHERE {test} LIMIT 0")
        except BismarckError:
            raise
        except Exception:  # noqa: BLE001 - the shard refused this column's test alone
            return name
    return None


def check_shard_pushdown(session: TrainingSession, lay: Layout) -> None:
    """Refuse foreign partitions on a server that does not list ``extensions 'bismarck'``.

    postgres_fdw ships a function to the remote server only when its extension is listed in
    the server's ``extensions`` option; otherwise it fetches every row and runs the epoch
    (and the version check) here, on the coordinator: the shard would neither train nor be
    checked. ``bismarck shards add`` sets the option; a partition attached by hand may lack it.
    """
    for leaf in lay.shards:
        rows = session.query(
            "SELECT coalesce(o.option_value, '') AS extensions FROM pg_catalog.pg_foreign_server "
            "AS fs LEFT JOIN LATERAL pg_catalog.pg_options_to_table(fs.srvoptions) AS o "
            "ON o.option_name = 'extensions' WHERE fs.srvname = %s", [leaf.server])
        listed = rows[0][0] if rows else ""
        if "bismarck" not in [e.strip() for e in (listed or "").split(",")]:
            raise InvalidParameter(
                f"shard server {leaf.server} does not list extensions 'bismarck'",
                detail=f"Partition {leaf.name} is on it: postgres_fdw would bring every row "
                       "to this server each epoch instead of running the epoch on the shard.",
                hint=f"ALTER SERVER {session.ident(leaf.server).replace('%%', '%')} OPTIONS "
                     f"({'SET' if listed else 'ADD'} extensions "
                     f"'{(listed + ',') if listed else ''}bismarck'); then rerun.")


def check_shard_columns(session: TrainingSession, src: Source, lay: Layout) -> None:
    """Refuse, before any row is read, a shard whose table lacks the label or a feature.

    One query per shard that names the label and feature columns and fetches no row; the
    shard parses it, so a column the coordinator has and the shard's table lacks (dropped or
    renamed there after ``bismarck shards add``) fails here, named by the shard's own message.
    """
    for leaf in lay.shards:
        try:
            # The WHERE clause is the epoch's (shipped to the shard, which parses it with its
            # own column types); LIMIT 0 reads no row.
            with subtransaction(session):  # the transaction goes on to find the column
                session.query(f"SELECT {src.label_expr or 'NULL'} AS y, {src.x_expr} AS x "
                              f"FROM {escape_percent(leaf.name)} AS s WHERE {src.valid_expr} "
                              "LIMIT 0")
        except BismarckError:
            raise
        except Exception as exc:
            state = getattr(exc, "sqlstate", None) or ""
            reason = _reason(exc)
            if state not in ("42703", "42883", "42804", "42846", "22P02"):
                raise shard_failure(exc, leaf) from None
            column = _mistyped_column(session, src, leaf) if state != "42703" else None
            if column is not None:
                raise InvalidData(
                    f"column {column} has another type on shard server {leaf.server}",
                    detail=f"{reason} (partition {leaf.name}). The epoch compares and reads "
                           f"{column} as the coordinator's table declares it; the shard's "
                           "table must have the same type.",
                    hint=f"Give {column} the coordinator's type on the shard (ALTER TABLE ... "
                         "ALTER COLUMN ... TYPE), then `bismarck shards check` and rerun."
                ) from None
            raise InvalidData(
                f"shard server {leaf.server} has a table without the coordinator's columns",
                detail=f"{reason} (partition {leaf.name}). Every shard's table needs the "
                       "label and feature columns of the coordinator's table.",
                hint="`bismarck shards check` names every difference; give the shard's table "
                     "the coordinator's columns and types, then rerun.") from None


def write_marks(session: TrainingSession, src: Source, lay: Layout) -> list[tuple[int, int]]:
    """A fingerprint of each leaf's rows, one aggregate per leaf (a shard computes its own).

    A local partition gives ``(rows, sum of their xmin)`` (:func:`bismarckpy.blockscan.write_mark`:
    any INSERT, UPDATE or DELETE changes it). postgres_fdw reads no ``xmin`` of a foreign
    table, so a shard gives ``(rows, sum of a hash of each row's label and features)``: any
    insert or delete, and any update of a column the model reads, changes it (short of a hash
    collision); an update of other columns, or one that writes the same values, does not, and
    changes nothing the model sees.
    """
    assert src.label_expr is not None
    marks = []
    for leaf in lay.partitions:
        if leaf.server:
            what = (f"coalesce(sum(hash_array_extended(ARRAY[{src.label_expr}] || {src.x_expr}, "
                    "0)), 0)::text")  # a numeric sum: beyond int8
        else:
            what = "coalesce(sum(s.xmin::text::int8), 0)::text"
        try:
            n, h = session.query(f"SELECT count(*)::int8 AS n, {what} AS h "
                                 f"FROM {escape_percent(leaf.name)} AS s")[0]
        except BismarckError:
            raise
        except Exception as exc:
            raised = _leaf_failure(exc, leaf)
            if raised is None:
                raise
            raise raised from None
        marks.append((int(n), int(h)))
    return marks


def check_unwritten(session: TrainingSession, *, src: Source, lay: Layout,
                    marks: list[tuple[int, int]]) -> None:
    """Raise InvalidData ("the source table changed during training") naming the partitions
    whose fingerprint (:func:`write_marks`) is no longer the one taken before any row was read:
    the epochs read the partitions in place, so the model would mix two versions of the data."""
    now = write_marks(session, src, lay)
    changed = [leaf.name for leaf, a, b in zip(lay.partitions, marks, now) if a != b]
    if changed:
        raise InvalidData(
            "the source table changed during training",
            detail=f"Rows of partition(s) {', '.join(changed)} were inserted, updated or deleted "
                   "after the run first read them; averaging => 'partition' reads the "
                   "partitions in place each epoch, so the model would mix two versions of the "
                   "data. It was not stored.",
            hint="Train again when the table is not being written, or train on a snapshot of "
                 "it (CREATE TABLE ... AS, or averaging => 'global', which trains on a copy).")


def prepare(session: TrainingSession, src: Source, p: dict[str, Any],
            seed: int) -> tuple[_Prepared, Layout]:
    """Checks, split, label coding and scaling for epochs that read the partitions in place.

    Returns the prepared data, whose ``train``/``valid`` are FROM items with columns ``part``
    (the partition), ``x`` (features as ``_float8_array_bytes``), ``y`` (the coded label) and
    ``h`` (the shuffle's hash), and the layout. Partitions without training rows are skipped
    and named in the notes.
    """
    from . import loop

    lay = layout(session, src)
    if lay.shards and p["shuffle"] == "never":
        raise InvalidParameter(
            "shuffle => 'never' is not reproducible on shards",
            detail="A shard may scan its table with parallel workers, in an order that varies "
                   "from run to run.",
            hint="Use shuffle => 'once' (the default): a seeded hash order inside each shard.")
    check_shard_versions(session, lay)  # before anything reads the shards' rows
    check_shard_columns(session, src, lay)
    marks = write_marks(session, src, lay)  # before the first read of the rows
    checked = check_rows(session, src)
    check_ranges(session, src, checked, dtype=None, standardize=p["standardize"],
                 squared=p["loss"] == "squared", packing=False, solver=p["solver"])
    classes = loop._label_classes(session, src, p["loss"], checked.label_values)
    y_expr = loop._label_sql(src, p["loss"], classes)

    def row_hash(salt: int) -> str:
        # The row's values, hashed: immutable and shippable (ctid and tableoid are not).
        assert src.label_expr is not None
        return f"hash_array_extended(ARRAY[{src.label_expr}] || {src.x_expr}, {int(salt)})"

    k = loop.validation_count(p["validation_fraction"], checked.n_usable)
    holdout = "false"
    if k and lay.shards:
        # The k-th smallest hash of all rows is the k-th smallest of each partition's k
        # smallest: each branch is one partition's ORDER BY ... LIMIT, which postgres_fdw
        # runs on the shard (k rows per shard travel, not all), then one sort here.
        branches = " UNION ALL ".join(
            f"(SELECT {row_hash(seed)} AS h FROM {escape_percent(leaf.name)} AS s "
            f"WHERE {src.valid_expr} ORDER BY 1 LIMIT {int(k)})"  # a constant: shipped
            for leaf in lay.partitions)
        cut = session.query(f"SELECT h FROM ({branches}) AS b ORDER BY 1 OFFSET %s LIMIT 1",
                            [k - 1])[0][0]
        holdout = f"({row_hash(seed)} <= {int(cut)})"
    elif k:
        cut = session.query(f"SELECT {row_hash(seed)} AS h FROM {src.relation} AS s "
                            f"WHERE {src.valid_expr} ORDER BY 1 OFFSET %s LIMIT 1", [k - 1])[0][0]
        holdout = f"({row_hash(seed)} <= {int(cut)})"
    y_mean, y_sd = 0.0, 1.0
    y_stats = None  # unstandardised: measured after training if needed (loop._trivial_glm)
    if p["standardize"] and p["loss"] == "squared":
        y_mean, y_sd, *y_stats = loop._label_scale(session, src, y_expr, holdout,
                                                   checked.max_abs_y, p["fit_intercept"])
        y_expr = f"(({y_expr}) - {y_mean!r}) / {y_sd!r}"
    order = row_hash(seed + 1) if p["shuffle"] == "once" else "0"

    def relation(where: str) -> str:
        return (f"(SELECT {lay.group} AS part, bismarck._float8_array_bytes({src.x_expr}) AS x, "
                f"{y_expr} AS y, {order} AS h FROM {src.relation} AS s "
                f"WHERE {src.valid_expr} AND {where}) AS t")

    notes: list[str] = []
    n_train = n_valid = n_pos = 0
    empty = []
    key = lay.key or "NULL::text"
    for leaf in lay.partitions:  # one aggregate per leaf: pushed down whole to a shard
        # The key's distinct values, NULL counted as one of its own, and one of them (mode():
        # any LIST key has a btree order, though boolean and uuid have no min/max). Every
        # aggregate here is one postgres_fdw ships, so a shard sends back one row.
        tr, va, pos, lo, keys = session.query(
            f"SELECT count(*) FILTER (WHERE NOT {holdout}) AS train, "
            f"count(*) FILTER (WHERE {holdout}) AS valid, "
            f"count(*) FILTER (WHERE NOT {holdout} AND {y_expr} > 0) AS pos, "
            f"mode() WITHIN GROUP (ORDER BY {key}) AS lo, "
            f"count(DISTINCT {key}) + coalesce(bool_or({key} IS NULL)::int, 0) AS keys "
            f"FROM {escape_percent(leaf.name)} AS s WHERE {src.valid_expr}")[0]
        several = (keys or 0) > 1
        n_train, n_valid, n_pos = n_train + tr, n_valid + va, n_pos + pos
        if lay.key is not None and several and not lay.shards:
            lay.group, lay.key, lay.names = BY_TABLEOID, None, {}  # LIST (1, 2): by table
            key = "NULL::text"
        elif lay.key is not None and several:
            raise InvalidData(
                f"partition {leaf.name} holds several values of the partition key",
                detail=f"Its key {lay.key} takes more than one value; an epoch groups by the "
                       "key, so each partition (shard) must hold one value.",
                hint="List one value per partition (FOR VALUES IN (...)).")
        if lay.key is not None and tr + va:
            lay.names[lo] = leaf.name
        if not tr:
            empty.append(leaf.name)
    if empty:
        notes.append(f"averaging => 'partition' skipped {len(empty)} partition(s) without "
                     f"training rows: {', '.join(empty)}")
    loop._require_training_rows(n_train, n_valid)
    mu = sd = None
    constant: list[int] = []
    train = relation(f"NOT {holdout}")
    if p["standardize"]:
        state = None
        for _, part in session.query(f"SELECT part, bismarck._moments(x) AS m FROM {train} "
                                     "GROUP BY part"):
            state = moments_merge(state, bytes(part))
        assert state is not None
        mu, sd, constant = loop._scaling(moments_decode(state), p["fit_intercept"])
    prep = loop._Prepared(
        train=train, valid=relation(holdout) if n_valid else None, d=checked.d,
        n_train=n_train, n_valid=n_valid, skipped=checked.n_total - checked.n_usable,
        classes=classes, mu=mu, sd=sd, y_mean=y_mean, y_sd=y_sd, constant=constant,
        n_pos=int(n_pos) if classes is not None else 0, notes=notes, layout=lay,
        order="h" if p["shuffle"] == "once" else None,
        y_stats=None if y_stats is None else (y_stats[0], y_stats[1]),
        y_max_abs=checked.max_abs_y)
    prep.unwritten = functools.partial(check_unwritten, src=src, lay=lay, marks=marks)
    return prep, lay
