"""``bismarck db ...``, ``bismarck install`` and ``bismarck doctor``: set-up commands.

Each command makes one library call; a ``SetupError`` becomes a one-paragraph ClickException.
"""

from __future__ import annotations

from pathlib import Path

import click

from bismarck_controller import connection, doctor, embedded, extension
from bismarck_controller.cli_errors import DSN_HELP, friendly


@click.group("db")
def db() -> None:
    """Start, stop and locate the embedded PostgreSQL database."""


@db.command("start")
@click.option("--port", type=click.IntRange(1, 65535), help="TCP port on 127.0.0.1 "
              "(default: the port chosen at initialization, or a new free one if it is taken).")
@friendly
def db_start(port: int | None) -> None:
    """Start the embedded database (initializing it on first use) and install the extension.

    The extension is created in its database, or upgraded to this client's version, so
    `psql "$(bismarck db url)"` can use it at once.
    """
    click.echo(embedded.start(port))
    click.echo(extension.install(embedded.url()))


@db.command("stop")
@friendly
def db_stop() -> None:
    """Stop the embedded database."""
    click.echo(embedded.stop())


@db.command("status")
@friendly
def db_status() -> None:
    """Show whether the embedded database runs, its port and data directory."""
    click.echo(embedded.status())


@db.command("url")
@click.option("--driver", type=click.Choice(["psycopg"]),
              help="Add a driver for SQLAlchemy/jupysql: postgresql+psycopg://...")
@friendly
def db_url(driver: str | None) -> None:
    """Print the embedded database's URL (with its password)."""
    click.echo(embedded.url(driver))


@click.command("install")
@click.option("--dsn", help=DSN_HELP)
@click.option("--files", is_flag=True, help="Only write the extension files into this host's "
              "PostgreSQL share directory (run as root on the server host).")
@click.option("--sharedir", type=click.Path(file_okay=False, path_type=Path),
              help="With --files: the share directory (default: `pg_config --sharedir`).")
@friendly
def install(dsn: str | None, files: bool, sharedir: Path | None) -> None:
    """Create or upgrade the extension in the database.

    With --files, only write the extension files into this host's PostgreSQL instead.
    """
    if sharedir is not None and not files:
        raise click.UsageError("--sharedir needs --files.")
    if files:
        target = (sharedir / "extension") if sharedir else None
        for path in extension.install_files(target):
            click.echo(f"wrote {path}")
        click.echo("Next: `CREATE EXTENSION bismarck CASCADE` in your database, or "
                   "`bismarck install --dsn ...`.")
        return
    with connection.connect(dsn, autocommit=True, ensure_extension=False) as conn:
        click.echo(extension.install(conn))


@click.command("doctor")
@click.option("--dsn", help=DSN_HELP)
def doctor_command(dsn: str | None) -> None:
    """Check server, PL/Python, numpy and extension; exit 1 on a miss.

    Every failed check says what to install or run.
    """
    checks = doctor.run_checks(dsn)
    doctor.render(checks)
    if any(check.failed for check in checks):
        raise click.exceptions.Exit(1)


doctor_command.name = "doctor"

COMMANDS: list[click.Command] = [db, install, doctor_command]
