"""``bismarck doctor``: checks that the server can run bismarck, each miss with what to do.

Checks: server reachable and PostgreSQL 15 or newer, plpython3u available, numpy importable in
the server's Python, the extension installed at this client's version with current engine code,
and schema bismarck holding only the extension's own objects, with nobody else able to create
there (a look-alike function in it could run in place of the extension's own).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg
from rich.console import Console
from rich.table import Table

from bismarck_controller import connection, embedded, extension
from bismarck_controller.cli_text import cell
from bismarck_controller.errors import SetupError

OK, WARN, FAIL = "ok", "warn", "fail"
_MARKS = {OK: "[green]✓[/]", WARN: "[yellow]![/]", FAIL: "[red]✗[/]"}


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table: what was checked, the outcome, details and the fix."""

    name: str
    state: str
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        """Whether this check makes ``bismarck doctor`` exit with status 1."""
        return self.state == FAIL


def run_checks(dsn: str | None = None) -> list[Check]:
    """Run every check against ``dsn`` (default: $BISMARCK_DSN or the embedded cluster)."""
    checks: list[Check] = []
    use_embedded = not dsn and not os.environ.get(connection.ENV_DSN)
    if use_embedded:
        try:
            status = embedded.ensure_running()
        except SetupError as exc:
            return [Check("embedded database", FAIL, exc.message, exc.hint or "")]
        checks.append(Check("embedded database", OK, f"running on port {status.port}, data "
                            f"root {status.root}" + (f"; {status.message}" if status.message
                                                     else "")))
    try:
        conn = connection.connect(dsn, autocommit=True, ensure_extension=False)
    except SetupError as exc:
        return checks + [Check("server reachable", FAIL, exc.message, exc.hint or "")]
    with conn:
        checks += _server_checks(conn, dsn)
    return checks


def _server_checks(conn: psycopg.Connection, dsn: str | None) -> list[Check]:
    checks = []
    major = extension.server_major(conn)
    version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    if major < embedded.MIN_MAJOR:
        checks.append(Check("server reachable", FAIL, f"PostgreSQL {version} at {where}",
                            f"bismarck needs PostgreSQL {embedded.MIN_MAJOR} or newer."))
        return checks
    checks.append(Check("server reachable", OK, f"PostgreSQL {version} at {where}"))
    has_plpython = "plpython3u" in extension.available_extensions(conn)
    if not has_plpython:
        err = extension.plpython_error(major)
        checks.append(Check("plpython3u", FAIL, err.message, err.hint or ""))
        checks.append(Check("numpy in the server", FAIL, "not checked: needs plpython3u",
                            err.hint or ""))
    else:
        checks.append(Check("plpython3u", OK, "available"))
        try:
            numpy_version = extension.check_server(conn)
        except SetupError as exc:
            checks.append(Check("numpy in the server", FAIL, exc.message, exc.hint or ""))
        else:
            checks.append(Check("numpy in the server", OK, f"numpy {numpy_version}"))
    checks += _extension_checks(conn, dsn)
    return checks


def _extension_checks(conn: psycopg.Connection, dsn: str | None) -> list[Check]:
    current = extension.version()
    installed = extension.installed_version(conn)
    run = "bismarck install" + (f" --dsn '{connection.redact(dsn)}'" if dsn else "")
    if installed is None:
        files = current in extension.available_versions(conn)
        where = "the server has its files" if files else "the server lacks its files"
        return [Check("bismarck extension", FAIL, f"not installed ({where})",
                      f"Run `{run}`." + ("" if files else " On a server of your own, first run "
                                         "`bismarck install --files` as root on its host."))]
    if installed != current:
        fix = (f"Run `{run}` to upgrade it (data stays)."
               if extension.version_key(installed) < extension.version_key(current)
               else "Upgrade this client (`pip install -U bismarckpy`).")
        return [Check("bismarck extension", FAIL,
                      f"version {installed} installed, client is {current}", fix)]
    checks = [Check("bismarck extension", OK, f"version {installed}")]
    if extension.installed_build(conn) != extension.build_digest():
        checks.append(Check("engine code", WARN, "the installed code differs from this client's "
                            "sql/bismarck.sql and src/bismarckpy (same version, edited sources)",
                            f"Run `{run}` to bring it in step."))
    else:
        checks.append(Check("engine code", OK, "same as this client's bismarckpy"))
    return checks + schema_checks(conn) + registry_checks(conn)


# Objects that live in a schema, by catalog: (catalog, namespace column, owner column).
_SCHEMA_OBJECTS = (("pg_class", "relnamespace", "relowner"),
                   ("pg_proc", "pronamespace", "proowner"),
                   ("pg_type", "typnamespace", "typowner"),
                   ("pg_operator", "oprnamespace", "oprowner"),
                   ("pg_collation", "collnamespace", "collowner"),
                   ("pg_conversion", "connamespace", "conowner"),
                   ("pg_opclass", "opcnamespace", "opcowner"),
                   ("pg_opfamily", "opfnamespace", "opfowner"),
                   ("pg_ts_config", "cfgnamespace", "cfgowner"),
                   ("pg_ts_dict", "dictnamespace", "dictowner"),
                   ("pg_statistic_ext", "stxnamespace", "stxowner"))

_STRANGERS = """
WITH RECURSIVE ext AS (SELECT e.oid, e.extowner, e.extnamespace AS nsp FROM pg_extension e
                        WHERE e.extname = 'bismarck'),
objs AS ({objects}),
-- an object belongs to the extension if it is a member, or part of one (a table's row type,
-- index, constraint or sequence), following internal and automatic dependencies upwards
up(classid, objid, refclassid, refobjid, depth) AS (
    SELECT o.classid, o.objid, o.classid, o.objid, 0 FROM objs o
    UNION ALL
    SELECT u.classid, u.objid, d.refclassid, d.refobjid, u.depth + 1
      FROM up u JOIN pg_depend d ON d.classid = u.refclassid AND d.objid = u.refobjid
     WHERE d.deptype IN ('i', 'a') AND u.depth < 4)
SELECT pg_describe_object(o.classid, o.objid, 0) AS what, o.owner::regrole::text AS owner,
       EXISTS (SELECT 1 FROM up u JOIN pg_depend m ON m.classid = u.refclassid
                      AND m.objid = u.refobjid AND m.deptype = 'e'
                      AND m.refclassid = 'pg_extension'::regclass
                      AND m.refobjid = (SELECT oid FROM ext)
                WHERE u.classid = o.classid AND u.objid = o.objid) AS member,
       o.owner = (SELECT extowner FROM ext) AS owned
  FROM objs o ORDER BY 1
"""


def schema_checks(conn: psycopg.Connection) -> list[Check]:
    """Who may create objects in schema bismarck, and objects there that are not the extension's.

    Fails for a role (other than the extension's owner and superusers) with CREATE on the schema
    and for an object in it that is not part of the extension (pg_depend deptype 'e', or part of
    such a member); warns for extension objects or the schema owned by another role.
    """
    objects = " UNION ALL ".join(
        f"SELECT '{cat}'::regclass AS classid, x.oid AS objid, x.{owner} AS owner FROM {cat} x "
        f"WHERE x.{nsp} = (SELECT nsp FROM ext)" for cat, nsp, owner in _SCHEMA_OBJECTS)
    rows = conn.execute(_STRANGERS.format(objects=objects)).fetchall()
    creators = [r[0] for r in conn.execute(
        "SELECT 'PUBLIC' FROM pg_namespace n JOIN pg_extension e ON e.extnamespace = n.oid "
        "AND e.extname = 'bismarck', aclexplode(n.nspacl) a "
        "WHERE a.grantee = 0 AND a.privilege_type = 'CREATE' "
        "UNION SELECT quote_ident(r.rolname) FROM pg_roles r, pg_namespace n "
        "JOIN pg_extension e ON e.extnamespace = n.oid AND e.extname = 'bismarck' "
        "WHERE r.oid <> e.extowner AND NOT r.rolsuper "
        "AND has_schema_privilege(r.oid, n.oid, 'CREATE') ORDER BY 1")]
    schema_owner = conn.execute(
        "SELECT n.nspowner <> e.extowner, n.nspowner::regrole::text FROM pg_namespace n "
        "JOIN pg_extension e ON e.extnamespace = n.oid AND e.extname = 'bismarck'").fetchone()
    checks = []
    strangers = [f"{what} (owner {owner})" for what, owner, member, _ in rows if not member]
    checks.append(_findings(
        "schema bismarck: who may create", FAIL, creators, "only the extension's owner (and "
        "superusers)", "roles that may create objects in schema bismarck: ",
        "As a superuser: REVOKE CREATE ON SCHEMA bismarck FROM " + ", ".join(creators)
        + " CASCADE.", sep=", "))
    checks.append(_findings(
        "schema bismarck: objects", FAIL, strangers, "only the extension's own",
        "not part of the extension: ", "Another role's object in schema bismarck may run in "
        "place of the extension's own: drop it (e.g. DROP FUNCTION ...)."))
    foreign = [f"{what} (owner {owner})" for what, owner, member, owned in rows
               if member and not owned]
    if schema_owner and schema_owner[0]:
        foreign.insert(0, f"the schema itself (owner {schema_owner[1]})")
    if foreign:
        checks.append(_findings("schema bismarck: owners", WARN, foreign, "",
                                "not owned by the extension's owner: ",
                                "ALTER ... OWNER TO the extension's owner."))
    return checks


# Policies the extension script creates on its registry tables (policies are not extension
# members in pg_depend, so they are named here; sql/bismarck.sql and the migrations make them).
EXTENSION_POLICIES = {
    ("_models", "use_model"), ("_models", "delete_model"), ("_models", "store_model"),
    ("model_names", "own_name"), ("model_grants", "see_grant"), ("model_grants", "give_grant"),
    ("model_grants", "take_grant"), ("_training_run", "own_run"),
    ("_training_epoch", "own_epoch"), ("_packed_tables", "see_packed"),
    ("_packed_tables", "register_packed"), ("_tickets", "issue_ticket"),
}
# What the extension grants on its relations to roles other than their owner (the privilege
# block of sql/bismarck.sql): (relation, column or None, privilege) to bismarck_user; EXECUTE on
# its functions to bismarck_user; nothing to anyone else.
EXTENSION_GRANTS = {
    *((rel, None, "SELECT") for rel in ("models", "training_history", "packed_tables",
                                        "model_names", "model_grants", "_training_run",
                                        "_training_epoch")),
    *(("_models", col, "SELECT") for col in ("model_name", "version", "owner")),
    ("_tickets", None, "INSERT"),
}

_MEMBER_RELATIONS = """
SELECT c.oid, c.relname::text, c.relkind::text, c.relowner
  FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
 WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'
   AND d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT e.oid FROM pg_extension e WHERE e.extname = 'bismarck')
"""


def registry_checks(conn: psycopg.Connection) -> list[Check]:
    """Privileges on the extension's tables, views, sequences and functions beyond its own
    grants, and triggers, policies, rules and indexes on its tables that it did not create.

    A leftover ``GRANT TRIGGER, UPDATE ON bismarck._training_run TO carol`` lets carol forge
    rows or run code as the registry's owner; each such finding fails, with the statement that
    removes it (``bismarck install`` re-applies the extension's privileges).
    """
    acl = conn.execute(f"""
        WITH rel AS ({_MEMBER_RELATIONS})
        SELECT r.relname, NULL::text AS col, coalesce(g.rolname, 'PUBLIC'), a.privilege_type
          FROM rel r, aclexplode(
                   (SELECT c.relacl FROM pg_class c WHERE c.oid = r.oid)) a
          LEFT JOIN pg_roles g ON g.oid = a.grantee
         WHERE a.grantee <> r.relowner
        UNION ALL
        SELECT r.relname, t.attname::text, coalesce(g.rolname, 'PUBLIC'), a.privilege_type
          FROM rel r JOIN pg_attribute t ON t.attrelid = r.oid, aclexplode(t.attacl) a
          LEFT JOIN pg_roles g ON g.oid = a.grantee
         WHERE a.grantee <> r.relowner
        UNION ALL
        SELECT p.oid::regprocedure::text, NULL, coalesce(g.rolname, 'PUBLIC'),
               a.privilege_type
          FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid, aclexplode(p.proacl) a
          LEFT JOIN pg_roles g ON g.oid = a.grantee
         WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
           AND d.refobjid = (SELECT e.oid FROM pg_extension e WHERE e.extname = 'bismarck')
           AND a.grantee <> p.proowner
        ORDER BY 1, 2, 3, 4""").fetchall()
    extra = []
    for rel, col, grantee, priv in acl:
        if grantee == "bismarck_user" and ((rel, col, priv) in EXTENSION_GRANTS
                                           or (priv == "EXECUTE" and "(" in rel)):
            continue
        extra.append(f"{priv} on {rel if '(' in rel else 'bismarck.' + rel}"
                     f"{f' ({col})' if col else ''} to {grantee}")
    objects = conn.execute(f"""
        WITH rel AS ({_MEMBER_RELATIONS})
        SELECT 'trigger ' || t.tgname || ' on bismarck.' || r.relname, NULL
          FROM rel r JOIN pg_trigger t ON t.tgrelid = r.oid WHERE NOT t.tgisinternal
        UNION ALL
        SELECT 'rule ' || w.rulename || ' on bismarck.' || r.relname, NULL
          FROM rel r JOIN pg_rewrite w ON w.ev_class = r.oid WHERE r.relkind <> 'v'
        UNION ALL
        SELECT 'index ' || i.indexrelid::regclass::text || ' on bismarck.' || r.relname, NULL
          FROM rel r JOIN pg_index i ON i.indrelid = r.oid
         WHERE NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
        UNION ALL
        SELECT p.polname::text, r.relname
          FROM rel r JOIN pg_policy p ON p.polrelid = r.oid
        ORDER BY 1""").fetchall()
    planted = [what if table is None else f"policy {what} on bismarck.{table}"
               for what, table in objects
               if table is None or (table, what) not in EXTENSION_POLICIES]
    return [
        _findings("registry privileges", FAIL, extra,
                  "members of bismarck_user read; nobody else holds anything",
                  "granted beyond the extension's own: ",
                  "Run `bismarck install` (it re-applies the extension's privileges), or as a "
                  "superuser REVOKE each of them."),
        _findings("registry tables: triggers, policies, rules, indexes", FAIL, planted,
                  "only the extension's own", "not created by the extension: ",
                  "They run (or decide) as the registry's owner: as a superuser, DROP TRIGGER "
                  "/ DROP POLICY / DROP RULE / DROP INDEX each."),
    ]


def _findings(name: str, status: str, found: list[str], ok_detail: str, prefix: str,
              fix: str, *, sep: str = "; ") -> Check:
    """A check that lists what it found (with ``status`` and ``fix``), or passes."""
    if not found:
        return Check(name, OK, ok_detail)
    return Check(name, status, prefix + sep.join(found), fix)


def render(checks: list[Check], console: Console | None = None) -> None:
    """Print the checks as a table; names, details and fixes literally (they quote server
    settings, roles and objects found in the database)."""
    table = Table(title="bismarck doctor", show_lines=False)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result", overflow="fold")
    table.add_column("what to do", overflow="fold")
    for check in checks:
        table.add_row(_MARKS[check.state], cell(check.name), cell(check.detail), cell(check.fix))
    (console or Console()).print(table)
