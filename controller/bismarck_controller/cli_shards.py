"""``bismarck shards add|list|check``: attach shards (postgres_fdw foreign partitions).

Thin commands over :mod:`bismarck_controller.shards`.
"""

from __future__ import annotations

import click

from bismarck_controller import shards
from bismarck_controller.cli_errors import DSN_HELP, friendly
from bismarck_controller.cli_text import visible
from bismarck_controller.connection import connect


@click.group("shards")
def shards_group() -> None:
    """Shards: tables on other PostgreSQL servers as foreign partitions of a LIST-partitioned
    table; train across them with --averaging partition."""


@shards_group.command("add")
@click.argument("table")
@click.argument("shard_dsn")
@click.option("--value", required=True, help="The partition key value the shard holds.")
@click.option("--server", help="Name of the foreign server (default: derived from the table).")
@click.option("--remote-table", help="schema.table on the shard (default: the same name).")
@click.option("--dsn", help=DSN_HELP + " (the coordinator)")
@friendly
def shards_add(table: str, shard_dsn: str, value: str, server: str | None,
               remote_table: str | None, dsn: str | None) -> None:
    """Attach the table on the server at SHARD_DSN as TABLE's partition for --value.

    Creates the foreign server, your user mapping (the shard's user and password live there
    only) and the foreign partition, after checking the shard has the same bismarck version
    and the table's columns.
    """
    with connect(dsn) as conn:
        shard = shards.add(conn, table, shard_dsn, value, server=server,
                           remote_table=remote_table)
    click.echo(visible(f"attached {shard.partition} (server {shard.server}, "
                       f"{shards._where(shard)}) for {shard.value}"))


@shards_group.command("list")
@click.argument("table", required=False)
@click.option("--dsn", help=DSN_HELP + " (the coordinator)")
@friendly
def shards_list(table: str | None, dsn: str | None) -> None:
    """List foreign partitions (of TABLE, or all) with their servers."""
    with connect(dsn, autocommit=True) as conn:
        found = shards.list_shards(conn, table)
    if not found:
        click.echo("no shards: attach one with `bismarck shards add TABLE DSN --value V`")
    for s in found:
        click.echo("\t".join(visible(v) for v in (s.parent, s.partition, s.value, s.server,
                                                  shards._where(s))))


@shards_group.command("check")
@click.argument("table", required=False)
@click.option("--dsn", help=DSN_HELP + " (the coordinator)")
@friendly
def shards_check(table: str | None, dsn: str | None) -> None:
    """Check every shard (of TABLE): it answers, has this bismarck version and the table's
    columns, and holds only its key value. Exit 1 on any problem."""
    with connect(dsn, autocommit=True) as conn:
        findings = shards.check(conn, table)
    for f in findings:
        status = "ok" if f.ok else "PROBLEM: " + "; ".join(f.problems)
        click.echo(visible(f"{f.shard.partition} ({f.shard.server}, {shards._where(f.shard)}): "
                           f"{status}"))
    if not findings and table is not None:
        raise click.ClickException(f"{visible(table)} has no shards (foreign partitions on "
                                   "postgres_fdw servers): attach one with `bismarck shards add "
                                   "TABLE DSN --value V`.")
    if not findings:
        click.echo("no shards to check")
    if any(not f.ok for f in findings):
        raise click.exceptions.Exit(1)


COMMANDS: list[click.Command] = [shards_group]
