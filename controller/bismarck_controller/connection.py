"""Connections to the database bismarck works in: an explicit DSN, $BISMARCK_DSN, or embedded.

``connect()`` also makes sure the extension is usable: on the embedded cluster it installs or
upgrades it on the spot; on another server it says how to install it.
"""

from __future__ import annotations

import os

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bismarck_controller import embedded, extension
from bismarck_controller.errors import SetupError

ENV_DSN = "BISMARCK_DSN"


def resolve_dsn(dsn: str | None = None) -> str:
    """The explicit DSN, else $BISMARCK_DSN, else the embedded cluster's URL (started if needed)."""
    if dsn:
        return dsn
    env = os.environ.get(ENV_DSN)
    if env:
        return env
    embedded.ensure_running()
    return embedded.url()


def redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**params)


def connect(dsn: str | None = None, *, autocommit: bool = False,
            ensure_extension: bool = True) -> psycopg.Connection:
    """Connect; with ``ensure_extension``, check (or, when embedded, install) the extension."""
    use_embedded = not dsn and not os.environ.get(ENV_DSN)
    target = resolve_dsn(dsn)
    try:
        conn = psycopg.connect(target, autocommit=autocommit)
    except psycopg.Error as exc:
        text = " ".join(str(exc).split())
        raise SetupError(
            f"Cannot connect to PostgreSQL ({redact(target)}): {text}",
            "Check the DSN (--dsn or BISMARCK_DSN, e.g. postgresql://user:password@host:5432/db) "
            "and that the server is running; leave both unset to use the embedded database "
            "(`bismarck db status`).") from None
    if not ensure_extension:
        return conn
    try:
        _ensure_extension(conn, use_embedded)
    except BaseException:
        conn.close()
        raise
    return conn


def _ensure_extension(conn: psycopg.Connection, use_embedded: bool) -> None:
    """Install/upgrade on the embedded cluster; elsewhere, require a current installation."""
    if use_embedded or extension.is_embedded(conn):
        extension.install(conn, always_reapply=False)
        return
    installed = extension.installed_version(conn)
    current = extension.version()
    if not conn.autocommit:
        conn.rollback()
    where = redact(conn.info.dsn)
    if installed is None:
        raise SetupError(
            f"The database ({where}) does not have the bismarck extension.",
            f"Run `bismarck install --dsn '{where}'` (as a superuser; add the password), or "
            f"`CREATE EXTENSION bismarck CASCADE` in the database.")
    if installed != current:
        raise SetupError(
            f"The database ({where}) has bismarck {installed}, but this client is {current}.",
            f"Run `bismarck install --dsn '{where}'` to upgrade it (its data stays).")
