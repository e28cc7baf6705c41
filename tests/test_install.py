"""The extension: its generated scripts, install, idempotence, upgrades that keep user data."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from bismarck_controller import connection, embedded, extension
from bismarck_controller.embed import digest as engine_digest
from bismarck_controller.errors import SetupError

MEMBERS_SQL = """
SELECT pg_describe_object(classid, objid, 0) FROM pg_depend
WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bismarck')
ORDER BY 1
"""


def members(conn: psycopg.Connection) -> list[str]:
    """Descriptions of every object that belongs to the extension, schema-qualified."""
    with conn.transaction():
        conn.execute("SET LOCAL search_path TO pg_catalog")
        return [r[0] for r in conn.execute(MEMBERS_SQL)]


@pytest.fixture
def ext_dir(conn: psycopg.Connection) -> Path:
    """The server's extension directory, when this client may write to it."""
    target = extension.writable_extension_dir(conn)
    if target is None:
        pytest.skip("the test server's extension directory is not writable from here")
    return target


@pytest.fixture
def scratch_files(ext_dir: Path) -> Iterator[dict[str, str]]:
    """Extra extension files for a test (name -> content), written now and removed after."""
    files: dict[str, str] = {}
    yield files
    for name in files:
        (ext_dir / name).unlink(missing_ok=True)


def write(ext_dir: Path, files: dict[str, str], name: str, content: str) -> None:
    files[name] = content
    (ext_dir / name).write_text(content)


def older_version(ext_dir: Path, files: dict[str, str], old: str, extra_sql: str = "") -> str:
    """Offer version ``old`` (today's script plus ``extra_sql``) and its upgrade to the current."""
    current = extension.version()
    write(ext_dir, files, f"bismarck--{old}.sql", extension.build_install_script() + extra_sql)
    write(ext_dir, files, f"bismarck--{old}--{current}.sql",
          extension.build_upgrade_script(old, [old]))
    return current


def test_installed_at_client_version(conn: psycopg.Connection) -> None:
    assert extension.installed_version(conn) == extension.version()
    key = "bismarck-engine-" + engine_digest(extension.engine_modules())
    bodies = [r[0] for r in conn.execute(
        "SELECT prosrc FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
        "WHERE l.lanname = 'plpython3u' AND p.pronamespace = 'bismarck'::regnamespace")]
    assert len(bodies) >= 5
    assert all(key in body for body in bodies)  # every PL/Python body carries this engine
    assert extension.installed_build(conn) == extension.build_digest()


def test_install_twice_changes_nothing(dsn: str, conn: psycopg.Connection) -> None:
    before = members(conn)
    assert "is installed" in extension.install(dsn)
    assert "is installed and current" in extension.install(dsn)
    assert members(conn) == before


def test_a_current_database_is_not_rebuilt_on_connect(dsn: str, monkeypatch) -> None:
    """Connecting to an embedded database already at this client's build does not build the
    extension files again (0.4-1 s a connection: every CLI command paid it)."""
    from bismarck_controller import build

    def refuse(*args, **kwargs):
        raise AssertionError("extension files built for a current database")

    assert "is installed and current" in extension.install(dsn)
    monkeypatch.setattr(extension, "install_files", refuse)
    monkeypatch.setattr(build, "install_files", refuse)
    assert "is installed and current" in extension.install(dsn)
    connection.connect(dsn).close()


def test_connect_reapplies_privileges_only_after_a_change(dsn: str, conn: psycopg.Connection,
                                                          monkeypatch) -> None:
    """A connection to the embedded cluster skips the privilege block (0.1-0.3 s) while the
    privileges are as the block left them, and runs it again after any grant since."""
    if not extension.is_embedded(conn):
        pytest.skip("connect() installs only on the embedded cluster")
    role = f"bismarck_grantee_{os.getpid()}"
    runs: list[int] = []
    reapply = extension.reapply_privileges

    def counted(c: psycopg.Connection) -> bool:
        runs.append(1)
        return reapply(c)

    monkeypatch.setattr(extension, "reapply_privileges", counted)
    assert "(privileges re-applied)" in extension.install(dsn)  # explicit: always
    assert len(runs) == 1
    connection.connect(dsn).close()
    assert len(runs) == 1  # unchanged since: skipped
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        for grant in ("GRANT SELECT ON bismarck._tickets TO {}",
                      "GRANT SELECT (fitted) ON bismarck._models TO {}",
                      "GRANT EXECUTE ON FUNCTION bismarck._redeem(uuid) TO {}",
                      "GRANT CREATE ON SCHEMA bismarck TO {}"):
            conn.execute(sql.SQL(grant).format(sql.Identifier(role)))
            connection.connect(dsn).close()
            assert conn.execute(
                "SELECT has_table_privilege(%(r)s, 'bismarck._tickets', 'SELECT') "
                "OR has_column_privilege(%(r)s, 'bismarck._models', 'fitted', 'SELECT') "
                "OR has_function_privilege(%(r)s, 'bismarck._redeem(uuid)', 'EXECUTE') "
                "OR has_schema_privilege(%(r)s, 'bismarck', 'CREATE')",
                {"r": role}).fetchone() == (False,), grant
        connection.connect(dsn).close()
        assert len(runs) == 5  # once per grant, not for the connection after
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_version_matches_control() -> None:
    control = (extension.sql_dir() / "bismarck.control").read_text()
    assert f"default_version = '{extension.version()}'" in control


def test_split_statements_respects_quotes_and_comments() -> None:
    script = """\\echo Use CREATE EXTENSION \\quit
-- a comment; with a semicolon
CREATE TABLE t (a text DEFAULT 'x;y');
CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $fn$ SELECT ';' $fn$;
/* block ; /* nested ; */ */ COMMENT ON FUNCTION f() IS 'it''s; fine';
CREATE VIEW v AS SELECT E'\\';' AS c;
COMMENT ON COLUMN v.c IS 'view column';
COMMENT ON COLUMN t.a IS 'table column';
"""
    statements = extension.split_statements(script)
    assert len(statements) == 6
    views = {"v"}
    kinds = [s.is_code(views) for s in statements]
    assert kinds == [False, True, True, True, True, False]
    assert statements[0].upgrade_text(views).lstrip().startswith(
        "-- a comment; with a semicolon\nCREATE TABLE IF NOT EXISTS t")


def test_upgrade_keeps_user_data_and_replaces_code(
        make_database, ext_dir: Path, scratch_files: dict[str, str]) -> None:
    current = older_version(
        ext_dir, scratch_files, "0.0.1",
        "\nCREATE FUNCTION bismarck.obsolete() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n")
    fresh_dsn = make_database("_fresh")
    extension.install(fresh_dsn)
    with psycopg.connect(fresh_dsn) as fresh:
        expected_members = members(fresh)
    with psycopg.connect(make_database("_upgrade"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bismarck VERSION '0.0.1' CASCADE")
        assert "function bismarck.obsolete()" in members(conn)
        conn.execute("CREATE TABLE bismarck.user_notes (note text)")
        conn.execute("INSERT INTO bismarck.user_notes VALUES ('keep me')")
        conn.execute("CREATE TABLE public.user_rows AS SELECT 42 AS answer")
        registry = _registry_tables(conn)

        message = extension.install(conn)

        assert message == f"Upgraded extension bismarck 0.0.1 -> {current}."
        assert extension.installed_version(conn) == current
        assert members(conn) == expected_members
        assert extension.installed_build(conn) == extension.build_digest()
        assert conn.execute("SELECT note FROM bismarck.user_notes").fetchall() == [("keep me",)]
        assert conn.execute("SELECT answer FROM public.user_rows").fetchall() == [(42,)]
        assert _registry_tables(conn) == registry


def _registry_tables(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute("""
        SELECT format('%I.%I', n.nspname, c.relname)
        FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e' AND c.relkind = 'r'
          AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bismarck')
        ORDER BY 1""").fetchall()
    return [r[0] for r in rows]


def test_upgrade_keeps_registry_tables_untouched(
        make_database, ext_dir: Path, scratch_files: dict[str, str]) -> None:
    """Registry tables are neither re-created nor rewritten: same oid and relfilenode."""
    current = older_version(ext_dir, scratch_files, "0.0.2")
    query = """
        SELECT c.relname, c.oid, c.relfilenode FROM pg_depend d
        JOIN pg_class c ON c.oid = d.objid
        WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e' AND c.relkind = 'r'
          AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bismarck')
        ORDER BY 1"""
    with psycopg.connect(make_database("_registry"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bismarck VERSION '0.0.2' CASCADE")
        before = conn.execute(query).fetchall()
        extension.install(conn)
        assert extension.installed_version(conn) == current
        assert conn.execute(query).fetchall() == before
    script = extension.build_upgrade_script("0.0.2", ["0.0.2"])
    starts = [" ".join(s.words[:3]) for s in extension.split_statements(script)]
    assert not [w for w in starts if w.startswith(("DROP TABLE", "TRUNCATE", "ALTER TABLE"))]
    assert not [w for w in starts if w.startswith("DELETE")]


def test_upgrade_stops_at_user_objects_that_depend_on_code(
        make_database, ext_dir: Path, scratch_files: dict[str, str]) -> None:
    older_version(ext_dir, scratch_files, "0.0.3")
    with psycopg.connect(make_database("_blocked"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bismarck VERSION '0.0.3' CASCADE")
        conn.execute("CREATE VIEW public.uses_bismarck AS SELECT bismarck._link('squared', 1)")
        with pytest.raises(SetupError, match="objects outside it depend on its code") as err:
            extension.install(conn)
        assert "Drop the dependent objects" in str(err.value)
        assert extension.installed_version(conn) == "0.0.3"
        conn.execute("DROP VIEW public.uses_bismarck")
        assert "Upgraded" in extension.install(conn)


def test_newer_installed_version_is_refused(
        make_database, ext_dir: Path, scratch_files: dict[str, str]) -> None:
    write(ext_dir, scratch_files, "bismarck--99.0.0.sql", extension.build_install_script())
    with psycopg.connect(make_database("_newer"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION bismarck VERSION '99.0.0' CASCADE")
        with pytest.raises(SetupError, match="newer than this client"):
            extension.install(conn)


def test_changed_sql_at_same_version_is_recreated(make_database, ext_dir: Path) -> None:
    with psycopg.connect(make_database("_refresh"), autocommit=True) as conn:
        extension.install(conn)
        before = members(conn)
        conn.execute("CREATE OR REPLACE FUNCTION bismarck._build() RETURNS text LANGUAGE sql "
                     "AS $$ SELECT 'older'::text $$")
        assert "re-created its functions" in extension.install(conn)
        assert extension.installed_build(conn) == extension.build_digest()
        assert members(conn) == before
        assert "is installed and current" in extension.install(conn)
        assert not list(ext_dir.glob("*refresh*"))


def test_server_has_plpython_and_numpy(conn: psycopg.Connection) -> None:
    assert re.match(r"\d+\.\d+", extension.check_server(conn))


def test_install_files_writes_control_and_scripts(tmp_path: Path) -> None:
    written = {p.name for p in extension.install_files(tmp_path)}
    assert written >= {"bismarck.control", f"bismarck--{extension.version()}.sql"}
    again = {p.name for p in extension.install_files(tmp_path)}
    assert again == written


def test_install_files_into_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="is not a directory"):
        extension.install_files(tmp_path / "missing")


def test_connect_with_a_bad_dsn_says_what_to_do() -> None:
    with pytest.raises(SetupError, match="Cannot connect to PostgreSQL") as err:
        connection.connect("postgresql://bismarck:secret@127.0.0.1:1/nowhere")
    text = str(err.value)
    assert "secret" not in text and "BISMARCK_DSN" in text and "\n" not in text


def test_connect_checks_the_extension(dsn: str) -> None:
    with connection.connect(dsn) as conn:
        assert not conn.autocommit
        assert extension.installed_version(conn) == extension.version()


def test_resolve_dsn_order(monkeypatch: pytest.MonkeyPatch, dsn: str) -> None:
    monkeypatch.setenv("BISMARCK_DSN", "postgresql://from-env/db")
    assert connection.resolve_dsn("postgresql://explicit/db") == "postgresql://explicit/db"
    assert connection.resolve_dsn(None) == "postgresql://from-env/db"
    monkeypatch.delenv("BISMARCK_DSN")
    if os.environ.get("BISMARCK_TEST_DSN") is None:
        assert connection.resolve_dsn(None) == embedded.url()
