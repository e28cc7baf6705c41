"""Notebook helpers: ``%load_ext bismarck_controller``, connection handling of the Python API.

``%load_ext bismarck_controller`` finds the database (``$BISMARCK_DSN``, else the embedded
cluster, started if needed), makes sure the extension is installed, loads jupysql and connects
``%sql`` to it.

SQLAlchemy (and so jupysql) picks its driver from the URL scheme: with SQLAlchemy 2.0 a plain
``postgresql://`` URL means psycopg2, which bismarck does not use (2.1 defaults to psycopg 3).
The URL handed to ``%sql`` is therefore always ``postgresql+psycopg://...`` (psycopg 3);
:func:`sqlalchemy_url` does that conversion.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Union

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bismarck_controller import connection
from bismarck_controller.errors import SetupError

#: What the Python API accepts as a database: a psycopg connection, a SQLAlchemy engine or
#: connection, a URL or conninfo string, or None ($BISMARCK_DSN, else the embedded database).
Database = Union[psycopg.Connection, str, None, Any]

_SCHEMES = ("postgresql", "postgres")


def _scheme(dsn: str) -> tuple[str, str] | None:
    """``(scheme, rest)`` of a URL, or None for a ``key=value`` conninfo string."""
    head, sep, rest = dsn.partition("://")
    return (head.lower(), rest) if sep and "=" not in head and " " not in head else None


def sqlalchemy_url(dsn: str) -> str:
    """The SQLAlchemy URL (``postgresql+psycopg://``) for a libpq URL or conninfo string."""
    from sqlalchemy.engine import URL

    parsed = _scheme(dsn)
    if parsed is not None:
        scheme, rest = parsed
        base = scheme.split("+", 1)[0]
        if base not in _SCHEMES:
            raise SetupError(f"Not a PostgreSQL URL: {connection.redact(dsn)}",
                             "Use postgresql://user:password@host:5432/dbname.")
        return f"postgresql+psycopg://{rest}"
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise SetupError(f"Cannot parse the connection string: {exc}",
                         "Use postgresql://user:password@host:5432/dbname.") from None
    port = params.pop("port", None)
    host = params.pop("host", None)
    if host and str(host).startswith("/"):  # a Unix socket directory goes in the query
        params["host"], host = host, None
        if port:
            params["port"], port = port, None
    url = URL.create(
        "postgresql+psycopg", username=params.pop("user", None),
        password=params.pop("password", None), host=host,
        port=int(port) if port and str(port).isdigit() else None,
        database=params.pop("dbname", None),
        query={k: str(v) for k, v in params.items()})
    return url.render_as_string(hide_password=False)


def psycopg_dsn(dsn: str) -> str:
    """A DSN psycopg accepts: ``postgresql+psycopg://`` (SQLAlchemy's form) loses its driver."""
    parsed = _scheme(dsn)
    if parsed is not None and "+" in parsed[0]:
        return f"{parsed[0].split('+', 1)[0]}://{parsed[1]}"
    return dsn


def _sqlalchemy_dsn(obj: Any) -> str | None:
    """The psycopg DSN of a SQLAlchemy engine or connection; None for anything else."""
    engine = getattr(obj, "engine", None)
    url = getattr(engine, "url", None)
    if url is None or not hasattr(url, "render_as_string"):
        return None
    return psycopg_dsn(url.set(drivername="postgresql").render_as_string(hide_password=False))


@contextlib.contextmanager
def connected(db: Database = None) -> Iterator[psycopg.Connection]:
    """A psycopg connection with autocommit off, for the library calls of ``training``.

    A psycopg connection is used as is (an autocommit one is switched off for the call and back
    after; work is committed); a SQLAlchemy engine or connection, a URL or None opens a new
    connection that is closed afterwards.
    """
    if isinstance(db, psycopg.Connection):
        was_autocommit = db.autocommit
        if was_autocommit:
            db.autocommit = False
        try:
            yield db
        finally:
            if was_autocommit and not db.closed:
                db.rollback()
                db.autocommit = True
        return
    if db is None or isinstance(db, str):
        dsn = psycopg_dsn(db) if db else None
    else:
        dsn = _sqlalchemy_dsn(db)
        if dsn is None:
            raise TypeError(f"expected a psycopg connection, a SQLAlchemy engine or connection, "
                            f"a URL string or None; got {type(db).__name__}")
    with connection.connect(dsn) as conn:
        yield conn


def target_url() -> str:
    """The SQLAlchemy URL of the database bismarck works in, with the extension ready.

    ``$BISMARCK_DSN`` if set, else the embedded cluster (started, extension installed).
    """
    dsn = connection.resolve_dsn()
    with connection.connect(psycopg_dsn(dsn)):  # checks the extension; installs if embedded
        pass
    return sqlalchemy_url(dsn)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext bismarck_controller``: connect jupysql's ``%sql`` to the bismarck database.

    Problems (no server, a wrong URL, the extension missing) are printed as one short message.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    try:
        url = target_url()
        ipython.run_line_magic("load_ext", "sql")
        ipython.run_line_magic("sql", f"{url} --alias bismarck")
    except (SetupError, psycopg.Error, SQLAlchemyError) as exc:
        print(f"bismarck: {exc}")
        return
    where = make_url(url).render_as_string(hide_password=True)
    print(f"bismarck: %sql is connected to {where} (extension bismarck ready).")
