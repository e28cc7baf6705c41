"""``bismarck doctor``: checks that the server can run bismarck, each miss with what to do.

Checks: server reachable and PostgreSQL 15 or newer, plpython3u available, numpy importable in
the server's Python, the extension installed at this client's version with current engine code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg
from rich.console import Console
from rich.table import Table

from bismarck_controller import connection, embedded, extension
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
    return checks


def render(checks: list[Check], console: Console | None = None) -> None:
    """Print the checks as a table."""
    table = Table(title="bismarck doctor", show_lines=False)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result", overflow="fold")
    table.add_column("what to do", overflow="fold")
    for check in checks:
        table.add_row(_MARKS[check.state], check.name, check.detail, check.fix)
    (console or Console()).print(table)
