"""Installs the bismarck PostgreSQL extension into a database, and checks the server for it.

The extension's files are built by :mod:`bismarck_controller.build` (re-exported here for
callers of ``extension.version()``, ``extension.install_files()`` and the like); this module
creates or upgrades the extension in a database, writing the files first where it can (the
embedded cluster's private tree, or the system's share directory as root).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psycopg
from psycopg import sql

from bismarck_controller import embedded, privileges
from bismarck_controller.build import (  # noqa: F401 (re-exported: the extension's build)
    CODE_OBJECTS,
    NAME,
    Statement,
    build_digest,
    build_install_script,
    build_section,
    build_upgrade_script,
    engine_modules,
    extension_files,
    install_files,
    split_statements,
    sql_dir,
    system_sharedir,
    upgrade_versions,
    version,
    version_key,
)
from bismarck_controller.errors import SetupError
from bismarck_controller.install_locks import files_lock, refuse_while_running

# --- installing into a database ---------------------------------------------------------------


def server_major(conn: psycopg.Connection) -> int:
    """The server's major version, e.g. 15."""
    return int(conn.info.server_version) // 10000


def installed_version(conn: psycopg.Connection) -> str | None:
    """The bismarck version installed in the connected database, or None."""
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = %s",
                       (NAME,)).fetchone()
    return row[0] if row else None


def available_versions(conn: psycopg.Connection, name: str = NAME) -> list[str]:
    """The versions of an extension whose files the server has."""
    rows = conn.execute("SELECT version FROM pg_available_extension_versions WHERE name = %s",
                        (name,)).fetchall()
    return [r[0] for r in rows]


def available_extensions(conn: psycopg.Connection) -> set[str]:
    """Names of the extensions whose files the server has."""
    return {r[0] for r in conn.execute("SELECT name FROM pg_available_extensions")}


def plpython_error(major: int) -> SetupError:
    """The error for a server without PL/Python 3."""
    return SetupError(
        "The PostgreSQL server has no PL/Python 3 (extension plpython3u), which bismarck runs in.",
        f"Install it on the server host with `apt-get install postgresql-plpython3-{major}`, "
        f"then run `bismarck install` again.")


def numpy_error(detail: str) -> SetupError:
    """The error for a server whose Python cannot import numpy."""
    return SetupError(
        f"The server's Python (PL/Python) cannot import numpy: {detail.strip()}.",
        "Install numpy for the server's Python on the server host with `apt-get install "
        "python3-numpy`, then start a new session and run `bismarck install` again.")


def check_server(conn: psycopg.Connection) -> str:
    """Check that plpython3u exists and numpy imports in it; return numpy's version."""
    major = server_major(conn)
    if "plpython3u" not in available_extensions(conn):
        raise plpython_error(major)
    notices: list[str] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        notices.append(diag.message_primary or "")

    conn.add_notice_handler(collect)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
            conn.execute("DO $$\nimport numpy\nplpy.notice('bismarck-numpy ' + "
                         "numpy.__version__)\n$$ LANGUAGE plpython3u")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SetupError(f"Checking PL/Python needs a superuser: {exc.diag.message_primary}.",
                         "Connect as a superuser (for example postgres) to install bismarck.") \
            from None
    except psycopg.Error as exc:
        raise numpy_error(exc.diag.message_primary or str(exc)) from None
    finally:
        conn.remove_notice_handler(collect)
    for note in notices:
        if note.startswith("bismarck-numpy "):
            return note.split(" ", 1)[1]
    return "unknown"


def embedded_cluster(conn: psycopg.Connection) -> embedded.Cluster | None:
    """The embedded cluster on this host that ``conn`` is connected to, if it is one."""
    if not _local_host(conn):
        return None
    # pg_settings hides data_directory from non-superusers instead of raising an error.
    row = conn.execute("SELECT setting FROM pg_settings WHERE name = 'data_directory'").fetchone()
    if not row:
        return None
    pgdata = Path(row[0])
    cluster = embedded.Cluster(pgdata.parent)
    if (pgdata.name == cluster.pgdata.name and cluster.state_file.is_file()
            and cluster.tree.is_dir() and pgdata.is_dir()):
        return cluster
    return None


def embedded_extension_dir(conn: psycopg.Connection) -> Path | None:
    """The private extension directory when ``conn`` is to an embedded cluster on this host."""
    cluster = embedded_cluster(conn)
    return cluster.extension_dir() if cluster is not None else None


def is_embedded(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` is connected to an embedded cluster (see ``embedded``) on this host."""
    return embedded_cluster(conn) is not None


def _local_host(conn: psycopg.Connection) -> bool:
    host = conn.info.host or ""
    return host.startswith("/") or host in ("localhost", "127.0.0.1", "::1", "")


def writable_extension_dir(conn: psycopg.Connection) -> Path | None:
    """Where this client can write the server's extension files: embedded tree, or as root."""
    tree = embedded_extension_dir(conn)
    if tree is not None:
        return tree
    if _local_host(conn) and os.geteuid() == 0:
        with contextlib.suppress(SetupError):
            return system_sharedir(server_major(conn)) / "extension"
    return None


def _ensure_files(conn: psycopg.Connection, current: str) -> None:
    """Make the server hold the files for ``current``, or explain how to get them there."""
    if current in available_versions(conn):
        return
    target = writable_extension_dir(conn)
    if target is None:
        raise SetupError(
            f"The PostgreSQL server at {conn.info.host}:{conn.info.port} does not have the files "
            f"of the bismarck extension {current}.",
            "On the server host, run `bismarck install --files` as root (or `make "
            "install-extension` in the repository), or use the Docker image (docker/Dockerfile); "
            "then run `bismarck install` again.")
    install_files(target)
    if current not in available_versions(conn):
        raise SetupError(
            f"The bismarck extension files were written to {target}, but the server does not "
            f"list version {current}.",
            "Check that the server runs this host's PostgreSQL installation.")


def installed_build(conn: psycopg.Connection) -> str | None:
    """The md5 of sql/bismarck.sql the installed code came from (None if unknown)."""
    row = conn.execute("SELECT to_regprocedure('bismarck._build()') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute("SELECT bismarck._build()").fetchone()
    return found[0] if found else None


def refresh_code(conn: psycopg.Connection, ext_dir: Path) -> None:
    """Re-create the code of the installed (same) version from the current sql/bismarck.sql.

    For development: two updates through a transient version, each an upgrade script; tables
    and rows stay; the transient files are removed afterwards.
    """
    current = version()
    transient = f"{current}.refresh"
    files = [ext_dir / f"{NAME}--{current}--{transient}.sql",
             ext_dir / f"{NAME}--{transient}--{current}.sql"]
    try:
        files[0].write_text(build_upgrade_script(current, [], new=transient), encoding="utf-8")
        files[1].write_text(build_upgrade_script(transient, [], new=current), encoding="utf-8")
        with conn.transaction():
            refuse_while_running(conn)
            for target in (transient, current):
                conn.execute(sql.SQL("ALTER EXTENSION {} UPDATE TO {}").format(
                    sql.Identifier(NAME), sql.Literal(target)))
    finally:
        for path in files:
            path.unlink(missing_ok=True)


def install(conn_or_dsn: psycopg.Connection | str, *, always_reapply: bool = True) -> str:
    """Create or upgrade the extension in the database; return what was done, in one line.

    On a current version the privilege block runs again (``bismarck install``); with
    ``always_reapply=False`` (every connection to the embedded cluster) only when the
    privileges on the extension's objects differ from those the block last left there (see
    :mod:`bismarck_controller.privileges`): running it takes 0.1-0.3 s, checking a few ms.
    """
    if isinstance(conn_or_dsn, str):
        try:
            conn = psycopg.connect(conn_or_dsn, autocommit=True)
        except psycopg.Error as exc:
            raise SetupError(f"Cannot connect to PostgreSQL: {' '.join(str(exc).split())}",
                             "Check the DSN and that the server is running.") from None
        with conn:
            return install(conn, always_reapply=always_reapply)
    conn = conn_or_dsn
    current = version()
    try:
        # One installer at a time per database: concurrent `bismarck` commands on the embedded
        # cluster each check the installation, and two GRANTs of the same object at once fail
        # with "tuple concurrently updated". Session-level, released below or at disconnect.
        # The files the databases share: one installer a cluster (install_locks.files_lock).
        conn.execute("SELECT pg_catalog.pg_advisory_lock(%s::int8)", [INSTALL_LOCK])
        message = _install_locked(conn, current, always_reapply)
        if not conn.autocommit:
            conn.commit()
    except psycopg.Error as exc:
        if not conn.autocommit:
            conn.rollback()
        diag = exc.diag
        text = " ".join(filter(None, [diag.message_primary or str(exc), diag.message_detail]))
        raise SetupError(f"Installing the bismarck extension failed: {text}",
                         diag.message_hint or "Fix the cause named there and run "
                         "`bismarck install` again.") from None
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s::int8)", [INSTALL_LOCK])
            if not conn.autocommit:
                conn.commit()
    return message


def _install_locked(conn: psycopg.Connection, current: str, always_reapply: bool) -> str:
    """:func:`install`'s work, under the database's installer lock; returns what was done.
    Work that writes the extension's files (shared by the cluster's databases) also holds
    the cluster's (:func:`~bismarck_controller.install_locks.files_lock`); a database already
    at this build writes none (every connection after the first)."""
    installed = installed_version(conn)
    cluster = embedded_cluster(conn)
    digest = build_digest()
    same_build = installed == current and installed_build(conn) == digest
    if same_build:
        return _same_version(conn, current, same_build, cluster, digest, always_reapply)
    with files_lock(writable_extension_dir(conn)):
        return _install_files_locked(conn, current, installed, cluster, digest,
                                     always_reapply)


def _install_files_locked(conn: psycopg.Connection, current: str, installed: str | None,
                          cluster: embedded.Cluster | None, digest: str,
                          always_reapply: bool) -> str:
    """:func:`_install_locked` for a database not at this build, under both locks."""
    if cluster is not None:
        # keeps the embedded cluster's files in step with this client; building them
        # takes 0.4-1 s, which a database already at this build does not need
        install_files(cluster.extension_dir())
    if installed is not None and version_key(installed) > version_key(current):
        raise SetupError(
            f"The database has bismarck {installed}, newer than this client ({current}).",
            "Upgrade the client (`pip install -U bismarckpy`).")
    if installed == current:
        message = _same_version(conn, current, False, cluster, digest, always_reapply)
    else:
        check_server(conn)
        _ensure_files(conn, current)
        if installed is None:
            conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {} VERSION {} CASCADE")
                         .format(sql.Identifier(NAME), sql.Literal(current)))
            message = f"Created extension bismarck {current}."
        else:
            with conn.transaction():
                refuse_while_running(conn)
                conn.execute(sql.SQL("ALTER EXTENSION {} UPDATE TO {}").format(
                    sql.Identifier(NAME), sql.Literal(current)))
            message = f"Upgraded extension bismarck {installed} -> {current}."
    return message


#: The advisory lock key that serialises installs and upgrades in one database.
INSTALL_LOCK = 0x6269736D61726B  # "bismark" in ASCII


def _same_version(conn: psycopg.Connection, current: str, same_build: bool,
                  cluster: embedded.Cluster | None, digest: str, always_reapply: bool) -> str:
    """The installed version is the client's: bring changed SQL or engine code in step."""
    if not same_build:
        target = writable_extension_dir(conn)
        if target is not None:
            refresh_code(conn, target)
            return (f"bismarck {current} is installed; re-created its functions from the changed "
                    f"sql/bismarck.sql or engine (tables kept).")
        reapply_privileges(conn)
        return (f"bismarck {current} is installed, but its code differs from this client's "
                f"sql/bismarck.sql and engine; give the change a new version to upgrade it "
                f"(privileges re-applied).")
    if not always_reapply and privileges.unchanged(conn, cluster, digest):
        return f"bismarck {current} is installed and current."
    if reapply_privileges(conn):
        privileges.remember(conn, cluster, digest)
    return f"bismarck {current} is installed and current (privileges re-applied)."


def privilege_statements() -> str:
    """The privilege block of sql/bismarck.sql (from its ``DO $bismarck_privileges$`` to the
    end): revokes every grant on the extension's objects and on schema bismarck that the
    extension does not make, then makes its own."""
    text = (sql_dir() / f"{NAME}.sql").read_text(encoding="utf-8")
    return text[text.index("DO $bismarck_privileges$"):]


def reapply_privileges(conn: psycopg.Connection) -> bool:
    """Run the privilege block again (``bismarck install`` on a current version): leftover
    grants on the registry, its functions or CREATE on schema bismarck are taken back.
    Only the extension's owner (or a superuser) can: for anyone else this does nothing.
    Whether it ran."""
    owner = conn.execute("SELECT pg_has_role(e.extowner, 'USAGE') FROM pg_extension e "
                         "WHERE e.extname = %s", [NAME]).fetchone()
    if not owner or not owner[0]:
        return False
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        conn.execute(privilege_statements())
    return True
