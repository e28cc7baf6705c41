"""Shards: tables on other PostgreSQL servers attached to a coordinator as foreign partitions.

PostgreSQL's own distribution (``postgres_fdw``), not a home-made cluster. A sharded source is
a table ``PARTITION BY LIST (key)`` on the coordinator whose partitions are foreign tables, one
per shard, each holding one value of the key. ``train_glm(..., averaging => 'partition')`` then
runs each epoch's aggregate on the shards, concurrently (see ``bismarckpy.partitioned``).

:func:`add` creates, in one transaction, the foreign server (``extensions 'bismarck'`` so the
aggregate is shipped, ``async_capable 'true'`` so shards work concurrently), the caller's user
mapping (where PostgreSQL keeps the shard's password; it is never written anywhere else) and
the foreign partition, then checks the shard (:func:`check`) and commits only if it passes.
:func:`check` asks each shard, through the coordinator's own user mappings, for its bismarck
version and the remote table's columns, and refuses any difference by name. Every statement
is composed with :mod:`psycopg.sql` (identifiers quoted, values as literals or parameters);
the user mapping's options (a password) are bound, never in a statement's text
(:func:`create_user_mapping`).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from bismarck_controller.errors import SetupError

#: libpq options that belong in the user mapping; the rest go to the foreign server.
MAPPING_OPTIONS = ("user", "password", "sslpassword", "sslcert", "sslkey")
#: libpq options a postgres_fdw server may not carry.
REFUSED_OPTIONS = ("client_encoding", "fallback_application_name")
#: The rows of an epoch never travel: a large per-row transfer cost makes the planner ship the
#: aggregate (postgres_fdw's default is 0.01; the estimate only steers the plan).
FDW_TUPLE_COST = "100"


@dataclass
class Shard:
    """One foreign partition of a sharded table."""

    server: str
    partition: str  # regclass text
    parent: str
    value: str  # the partition's key value (its bound, as PostgreSQL prints it)
    options: dict[str, str] = field(default_factory=dict)  # server options (no password)


@dataclass
class Finding:
    """One shard's check: ``problems`` empty means fine."""

    shard: Shard
    version: str | None = None
    problems: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # the way out of each kind of problem

    def problem(self, text: str, hint: str) -> None:
        """Add a problem and, once per kind, its hint."""
        self.problems.append(text)
        if hint not in self.hints:
            self.hints.append(hint)

    @property
    def ok(self) -> bool:
        """Whether the shard passed."""
        return not self.problems


def add(conn: psycopg.Connection, parent: str, dsn: str, value: str, *,
        server: str | None = None, remote_table: str | None = None) -> Shard:
    """Attach the table ``remote_table`` (default: the parent's schema and name) of the server
    at ``dsn`` as the partition of ``parent`` for key ``value``; check it; commit.

    Raises :class:`SetupError` naming what differs (extension version, columns, key values) or
    what is wrong with the arguments; nothing is left behind then.
    """
    try:
        params = {k: v for k, v in conninfo_to_dict(dsn).items() if v not in (None, "")}
    except psycopg.ProgrammingError as exc:
        raise SetupError(f"Cannot parse the shard's DSN: {exc}", "Pass a libpq DSN, e.g. "
                         "postgresql://user:password@host:5432/db.") from None
    bad = sorted(set(params) & set(REFUSED_OPTIONS))
    if bad:
        raise SetupError(f"The shard's DSN sets {', '.join(bad)}, which postgres_fdw manages.",
                         "Leave it out of the DSN.")
    with conn.transaction():
        info = _parent(conn, parent)  # resolved on the caller's search path
        conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        schema, table = (remote_table.split(".", 1) if remote_table and "." in remote_table
                         else (info["schema"], remote_table or info["table"]))
        name = server or _free_server_name(conn, f"bismarck_shard_{info['table']}_{value}")
        partition = f"{info['table']}_{re.sub(r'[^a-zA-Z0-9_]', '_', value)}"
        _refuse_duplicates(conn, info, name, partition, value)
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgres_fdw")
        server_opts = {k: v for k, v in params.items() if k not in MAPPING_OPTIONS}
        server_opts.update({"extensions": "bismarck", "async_capable": "true",
                            "fdw_tuple_cost": FDW_TUPLE_COST})
        conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({})")
                     .format(sql.Identifier(name), _options(server_opts)))
        mapping = {k: params[k] for k in MAPPING_OPTIONS if k in params}
        create_user_mapping(conn, name, mapping)
        conn.execute(sql.SQL(
            "CREATE FOREIGN TABLE {}.{} PARTITION OF {}.{} FOR VALUES IN ({}) SERVER {} "
            "OPTIONS (schema_name {}, table_name {})").format(
            sql.Identifier(info["schema"]), sql.Identifier(partition),
            sql.Identifier(info["schema"]), sql.Identifier(info["table"]), sql.Literal(value),
            sql.Identifier(name), sql.Literal(schema), sql.Literal(table)))
        shard = next(s for s in list_shards(conn, info["regclass"]) if s.server == name)
        finding = check_one(conn, shard)
        if not finding.ok:
            raise SetupError(f"Shard {name} ({_where(shard)}) was not attached: "
                             + "; ".join(finding.problems) + ".",
                             " ".join(finding.hints) + " Then add it again.")
        # Statistics make the planner ship the epoch's aggregate to the shard.
        conn.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(info["schema"]),
                                                     sql.Identifier(partition)))
    return shard


def list_shards(conn: psycopg.Connection, parent: str | None = None) -> list[Shard]:
    """Foreign partitions on postgres_fdw servers (of ``parent`` only, when given).

    Raises :class:`SetupError` when ``parent`` names no table on this server.
    """
    if parent is not None and conn.execute("SELECT pg_catalog.to_regclass(%s)",
                                           [parent]).fetchone()[0] is None:
        raise SetupError(f'Table "{parent}" does not exist on the coordinator.',
                         "Name the partitioned table the shards are attached to (`bismarck "
                         "shards list` shows every sharded table).")
    rows = conn.execute(
        "SELECT fs.srvname::text, pg_catalog.format('%%I.%%I', n.nspname, c.relname), "
        "(SELECT pg_catalog.format('%%I.%%I', pn.nspname, p.relname) "
        " FROM pg_catalog.pg_class p JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace "
        " WHERE p.oid = i.inhparent), "
        "pg_catalog.pg_get_expr(c.relpartbound, c.oid), "
        "coalesce(fs.srvoptions, '{}'::text[]) "
        "FROM pg_catalog.pg_foreign_table ft "
        "JOIN pg_catalog.pg_class c ON c.oid = ft.ftrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_catalog.pg_inherits i ON i.inhrelid = c.oid "
        "JOIN pg_catalog.pg_foreign_server fs ON fs.oid = ft.ftserver "
        "JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = fs.srvfdw "
        "WHERE w.fdwname = 'postgres_fdw' "
        "AND (%s::text IS NULL OR i.inhparent = pg_catalog.to_regclass(%s)) "
        "ORDER BY 3, 2", [parent, parent]).fetchall()
    out = []
    for server, partition, par, bound, options in rows:
        m = re.fullmatch(r"FOR VALUES IN \((.*)\)", bound or "")
        opts = dict(o.split("=", 1) for o in options)
        out.append(Shard(server, partition, par, m.group(1) if m else (bound or ""), opts))
    return out


def check(conn: psycopg.Connection, parent: str | None = None) -> list[Finding]:
    """Check every shard (of ``parent``): reachable, same bismarck version as here, the
    parent's columns with the same types, and only its own key value."""
    return [check_one(conn, s) for s in list_shards(conn, parent)]


def check_one(conn: psycopg.Connection, shard: Shard) -> Finding:
    """One shard's :class:`Finding`; runs in a savepoint that is always rolled back."""
    finding = Finding(shard)
    listed = [e.strip() for e in shard.options.get("extensions", "").split(",")]
    if "bismarck" not in listed:
        finding.problems.append(
            f"server {shard.server} does not list extensions 'bismarck' (epochs would fetch "
            f"its rows instead of running there): ALTER SERVER "
            f"{sql.Identifier(shard.server).as_string(conn)} OPTIONS "
            f"(ADD extensions 'bismarck')")
    local = conn.execute("SELECT extversion FROM pg_catalog.pg_extension "
                         "WHERE extname = 'bismarck'").fetchone()
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
            # a fresh name: a schema someone created under a fixed one would block every check
            probe = sql.Identifier(f"bismarck_shard_check_{secrets.token_hex(8)}")
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(probe))
            server = sql.Identifier(shard.server)
            conn.execute(sql.SQL(
                "CREATE FOREIGN TABLE {}.ext (extname name, extversion text) SERVER {} "
                "OPTIONS (schema_name 'pg_catalog', table_name 'pg_extension')").format(
                probe, server))
            conn.execute(sql.SQL(
                "CREATE FOREIGN TABLE {}.cols (attrelid oid, attname name, atttypid oid, "
                "attnum int2, attisdropped bool) SERVER {} "
                "OPTIONS (schema_name 'pg_catalog', table_name 'pg_attribute')").format(
                probe, server))
            row = conn.execute(sql.SQL("SELECT extversion FROM {}.ext WHERE extname = 'bismarck'")
                               .format(probe)).fetchone()
            finding.version = row[0] if row else None
            if finding.version is None:
                finding.problem("the shard has no bismarck extension", VERSION_HINT)
            elif local and finding.version != local[0]:
                finding.problem(f"the shard has bismarck {finding.version}, the "
                                f"coordinator {local[0]}", VERSION_HINT)
            schema, table = _remote_name(conn, shard)
            remote = dict(conn.execute(sql.SQL(
                "SELECT attname::text, atttypid FROM {}.cols WHERE attrelid = %s::regclass "
                "AND attnum > 0 AND NOT attisdropped").format(probe),
                [_remote_regclass(conn, shard, schema, table, probe)]).fetchall())
            mine = conn.execute(
                "SELECT attname::text, atttypid, format_type(atttypid, atttypmod) "
                "FROM pg_catalog.pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum", [shard.parent]).fetchall()
            for name, typ, shown in mine:
                if name not in remote:
                    finding.problem(f"{schema}.{table} on the shard has no column {name}",
                                    COLUMNS_HINT)
                elif remote[name] != typ:
                    finding.problem(f"column {name} has another type on the shard "
                                    f"(the coordinator's is {shown})", COLUMNS_HINT)
            if not finding.problems:
                key = conn.execute(
                    "SELECT a.attname::text FROM pg_catalog.pg_partitioned_table pt "
                    "JOIN pg_catalog.pg_attribute a ON a.attrelid = pt.partrelid "
                    "AND a.attnum = pt.partattrs[0] WHERE pt.partrelid = %s::regclass",
                    [shard.parent]).fetchone()
                if key:
                    # The partition's name and bound come from the catalog as PostgreSQL
                    # quoted them (format('%I.%I'), pg_get_expr): SQL text, not user input.
                    others = conn.execute(sql.SQL(
                        "SELECT count(*) FROM {} WHERE {} IS DISTINCT FROM {}").format(
                        sql.SQL(shard.partition), sql.Identifier(key[0]),
                        sql.SQL(shard.value))).fetchone()[0]
                    if others:
                        finding.problem(
                            f"{others} rows of the shard's table have {key[0]} other than "
                            f"{shard.value}",
                            f"Remove the stray rows on the shard (DELETE FROM {schema}.{table} "
                            f"WHERE {key[0]} IS DISTINCT FROM {shard.value}, run there), or "
                            "attach the table under another key value.")
    except psycopg.Error as exc:
        finding.problem(*_failure(exc, shard))
    return finding


VERSION_HINT = "Install this bismarck version on the shard (`bismarck install --dsn ...`)."
COLUMNS_HINT = ("Give the shard's table the parent's columns with the same types (ALTER TABLE "
                "on the shard).")


def _failure(exc: psycopg.Error, shard: Shard) -> tuple[str, str]:
    """A failed check's problem and hint, by the cause's SQLSTATE and message."""
    state = exc.sqlstate or ""
    reason = " ".join(f"{exc} {exc.diag.message_detail or ''}".split())
    if "authentication failed" in reason or 'role "' in reason and "does not exist" in reason:
        return ("the shard refused the login: " + reason,
                "Correct the user or password (in the DSN given to `bismarck shards add`, or "
                f"ALTER USER MAPPING FOR CURRENT_USER SERVER {shard.server} OPTIONS (SET "
                "password '...')).")
    if state.startswith("08") or state in ("57P01", "57P02", "57P03"):
        return ("the shard does not answer: " + reason,
                "Start the shard server, or correct its address (the DSN).")
    if "user mapping not found" in reason:
        return ("no user mapping for this role: " + reason,
                f"Create one: CREATE USER MAPPING FOR CURRENT_USER SERVER {shard.server} "
                "OPTIONS (user '...', password '...').")
    if state == "2F003" or "password is required" in reason:
        return ("the user mapping has no password: " + reason,
                f"Add one: ALTER USER MAPPING FOR CURRENT_USER SERVER {shard.server} OPTIONS "
                "(ADD password '...'); the shard must ask for it.")
    if state == "42P01":
        return ("the shard's table is missing: " + reason,
                "Create the table on the shard with the parent's columns, or name the right "
                "one (--remote-table).")
    return ("checking the shard failed: " + reason,
            "`bismarck shards check` tests every shard; see the shard's server log.")


def _remote_name(conn: psycopg.Connection, shard: Shard) -> tuple[str, str]:
    """The remote schema and table of a foreign partition (postgres_fdw's defaults apply)."""
    opts = dict(o.split("=", 1) for o in conn.execute(
        "SELECT coalesce(ftoptions, '{}'::text[]) FROM pg_catalog.pg_foreign_table "
        "WHERE ftrelid = %s::regclass", [shard.partition]).fetchone()[0])
    schema, _, table = shard.partition.rpartition(".")
    return opts.get("schema_name", schema or "public"), opts.get("table_name", table)


def _remote_regclass(conn: psycopg.Connection, shard: Shard, schema: str, table: str,
                     probe: sql.Identifier) -> int:
    """The remote table's oid, read through probe foreign tables (in schema ``probe``) on the
    remote pg_class and pg_namespace."""
    conn.execute(sql.SQL(
        "CREATE FOREIGN TABLE {}.rel (oid oid, relname name, "
        "relnamespace oid) SERVER {} OPTIONS (schema_name 'pg_catalog', "
        "table_name 'pg_class')").format(probe, sql.Identifier(shard.server)))
    conn.execute(sql.SQL(
        "CREATE FOREIGN TABLE {}.ns (oid oid, nspname name) SERVER {} "
        "OPTIONS (schema_name 'pg_catalog', table_name 'pg_namespace')").format(
        probe, sql.Identifier(shard.server)))
    row = conn.execute(sql.SQL(
        "SELECT r.oid FROM {}.rel r JOIN {}.ns n "
        "ON n.oid = r.relnamespace WHERE r.relname = %s AND n.nspname = %s").format(probe, probe),
        [table, schema]).fetchone()
    if row is None:
        raise psycopg.errors.UndefinedTable(f'table "{schema}.{table}" does not exist')
    return int(row[0])


def _parent(conn: psycopg.Connection, parent: str) -> dict[str, str]:
    """The sharded parent's schema and name; refuse anything but PARTITION BY LIST (column)."""
    row = conn.execute(
        "SELECT n.nspname::text, c.relname::text, c.oid::regclass::text, pt.partstrat::text, "
        "array_length(pt.partattrs::int2[], 1), pt.partattrs[0] "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_catalog.pg_partitioned_table pt ON pt.partrelid = c.oid "
        "WHERE c.oid = pg_catalog.to_regclass(%s)", [parent]).fetchone()
    if row is None:
        raise SetupError(f'Table "{parent}" does not exist on the coordinator.',
                         "Create it with the shards' columns: CREATE TABLE t (shard int, ...) "
                         "PARTITION BY LIST (shard).")
    schema, table, _, strategy, nkeys, attnum = row
    if strategy != "l" or nkeys != 1 or not attnum:
        raise SetupError(f"{schema}.{table} is not PARTITION BY LIST of one column.",
                         "Create the parent as CREATE TABLE t (shard int, ...) PARTITION BY "
                         "LIST (shard): each shard holds one value of the key.")
    return {"schema": schema, "table": table,
            "regclass": sql.Identifier(schema, table).as_string(conn)}


def _refuse_duplicates(conn: psycopg.Connection, info: dict[str, str], server: str,
                       partition: str, value: str) -> None:
    """Refuse, naming what exists and how to remove it, a shard whose foreign server name,
    partition name or key value is taken already (rather than PostgreSQL's bare "already
    exists" or "would overlap")."""
    parent = f"{info['schema']}.{info['table']}"

    def removal(srv: str | None, part: str) -> str:
        if srv:
            return (f"To replace it, remove it first: DROP SERVER "
                    f"{sql.Identifier(srv).as_string(conn)} CASCADE (drops its foreign "
                    "partition and user mappings), then add the shard again.")
        return (f"To replace it, detach it first: ALTER TABLE {info['regclass']} DETACH "
                f"PARTITION {part}, then add the shard again.")

    if conn.execute("SELECT 1 FROM pg_catalog.pg_foreign_server WHERE srvname = %s",
                    [server]).fetchone():
        serves = ", ".join(s.partition for s in list_shards(conn) if s.server == server)
        raise SetupError(f"A foreign server named {server} exists already"
                         + (f" (it serves {serves})" if serves else "") + ".",
                         "Pass another --server name, or remove that server first with DROP "
                         f"SERVER {sql.Identifier(server).as_string(conn)} CASCADE (drops its "
                         "foreign tables and user mappings), then add the shard again.")
    ident = sql.Identifier(info["schema"], partition).as_string(conn)
    taken = _partition_for(conn, info, value, ident)
    if taken:
        part, srv = taken
        raise SetupError(f"{parent} already has a partition for {value}: {part}"
                         + (f" on server {srv}" if srv else " (a local table)") + ".",
                         removal(srv, part) + " `bismarck shards list` shows the shards.")
    if conn.execute("SELECT pg_catalog.to_regclass(%s)", [ident]).fetchone()[0] is not None:
        raise SetupError(f"A table named {ident} exists already (the partition name for "
                         f"{value}).", f"Rename or drop {ident}, then add the shard again.")


def _partition_for(conn: psycopg.Connection, info: dict[str, str], value: str,
                   name: str) -> tuple[str, str | None] | None:
    """The parent's partition named ``name`` or holding key ``value`` (its regclass text and
    foreign server), if any: each partition's constraint (PostgreSQL's own text, from
    ``pg_get_partition_constraintdef``) is evaluated on the value, so ``1`` and ``'01'`` match
    as the key's type compares them. A default partition is not counted (it yields)."""
    key, typ = conn.execute(
        "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) "
        "FROM pg_catalog.pg_partitioned_table pt JOIN pg_catalog.pg_attribute a "
        "ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0] "
        "WHERE pt.partrelid = %s::regclass", [info["regclass"]]).fetchone()
    parts = conn.execute(
        "SELECT c.oid::regclass::text, fs.srvname::text, "
        "pg_catalog.pg_get_partition_constraintdef(c.oid), "
        "c.oid = pg_catalog.to_regclass(%s), c.relpartbound IS NOT NULL AND "
        "pg_catalog.pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' "
        "FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid "
        "LEFT JOIN pg_catalog.pg_foreign_table ft ON ft.ftrelid = c.oid "
        "LEFT JOIN pg_catalog.pg_foreign_server fs ON fs.oid = ft.ftserver "
        "WHERE i.inhparent = %s::regclass ORDER BY 1", [name, info["regclass"]]).fetchall()
    for part, srv, constraint, same_name, default in parts:
        if same_name:
            return part, srv
        if default or not constraint:
            continue
        try:
            with conn.transaction():
                # The type and constraint are catalog text; the value is a literal.
                hit = conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM (SELECT {}::{} AS {}) "
                                           "AS t WHERE {})").format(
                    sql.Literal(value), sql.SQL(typ), sql.Identifier(key),
                    sql.SQL(constraint))).fetchone()[0]
        except psycopg.Error:
            return None  # not a value of the key's type: CREATE ... PARTITION OF says so
        if hit:
            return part, srv
    return None


def _free_server_name(conn: psycopg.Connection, base: str) -> str:
    """``base`` (cut to a valid identifier), or with a number if a server has that name."""
    base = re.sub(r"[^a-zA-Z0-9_]", "_", base)[:55]
    names = {r[0] for r in conn.execute("SELECT srvname::text FROM pg_catalog.pg_foreign_server")}
    n, name = 1, base
    while name in names:
        n += 1
        name = f"{base}_{n}"
    return name


#: ``CREATE USER MAPPING`` takes its options only as literals in its own text, which
#: ``pg_stat_activity`` shows (to members of ``pg_monitor`` too), ``log_statement = 'ddl'`` logs
#: and an error's ``STATEMENT:`` or ``CONTEXT:`` line repeats. So the options (the shard's
#: password) are bound into a transaction-local setting, read back by this block, which runs
#: the statement itself and re-raises an error without the CONTEXT line quoting it.
_MAPPING_BLOCK = """DO $mapping$
DECLARE
    o jsonb := current_setting('bismarck.user_mapping')::jsonb;
    message text; detail text; hint text; state text;
BEGIN
    PERFORM set_config('bismarck.user_mapping', '', true);
    EXECUTE format('CREATE USER MAPPING FOR CURRENT_USER SERVER %I', o->>'server')
        || coalesce((SELECT ' OPTIONS (' || string_agg(format('%I %L', e.key, e.value), ', ')
                     || ')' FROM jsonb_each_text(o->'options') AS e), '');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL,
                            hint = PG_EXCEPTION_HINT, state = RETURNED_SQLSTATE;
    RAISE EXCEPTION USING MESSAGE = message, DETAIL = detail, HINT = hint, ERRCODE = state;
END
$mapping$"""


def create_user_mapping(conn: psycopg.Connection, server: str, options: dict[str, str]) -> None:
    """``CREATE USER MAPPING FOR CURRENT_USER SERVER server OPTIONS (...)`` with no option value
    (a password) in any statement text: the options travel as a bound parameter.

    Runs in the caller's open transaction. Raises psycopg's error of the statement (e.g.
    ``DuplicateObject`` for an existing mapping), its message, detail and hint kept.
    """
    conn.execute("SELECT pg_catalog.set_config('bismarck.user_mapping', %s::text, true)",
                 [json.dumps({"server": server, "options": options})])
    conn.execute(_MAPPING_BLOCK)


def _options(options: dict[str, str]) -> sql.Composed:
    """``name 'value', ...`` for an OPTIONS clause (names quoted, values as literals)."""
    return sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(str(v)))
                              for k, v in options.items())


def _where(shard: Shard) -> str:
    """host:port/dbname of a shard, for messages."""
    o = shard.options
    return f"{o.get('host', 'localhost')}:{o.get('port', '5432')}/{o.get('dbname', '')}"
