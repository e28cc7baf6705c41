"""``bismarck train-mf`` and ``bismarck recommend``: matrix factorisation from the shell.

``bismarck evaluate MODEL TABLE`` reports RMSE and MAE for a factorisation; ``bismarck models``
and ``bismarck history`` list it like any model.
"""

from __future__ import annotations

import warnings
from typing import Any

import click
from rich.table import Table

from bismarck_controller import mf_training
from bismarck_controller.cli_errors import DSN_HELP, friendly
from bismarck_controller.cli_models import _EpochProgress, _fmt, console
from bismarck_controller.cli_text import cell, markup
from bismarck_controller.connection import connect
from bismarck_controller.session import BismarckWarning
from bismarckpy.kinds.mf import MF_PARAMS


def _mf_options(func: Any) -> Any:
    """One click option per matrix-factorisation parameter (SQL's names, underscores → -)."""
    for p in reversed(MF_PARAMS):
        flag = "--" + p.name.replace("_", "-")
        kind = click.Choice(p.choices) if p.choices else p.kind
        func = click.option(flag, p.name, type=kind, default=None,
                            help=f"{p.doc} [default: {p.default}]")(func)
    return func


@click.command("train-mf")
@click.argument("table")
@click.option("--row", "row_col", required=True, help="Row id column (integer).")
@click.option("--col", "col_col", required=True, help="Column id column (integer).")
@click.option("--value", "value_col", required=True, help="Value column (numeric).")
@click.option("--model", "model_name", help="Model name [default: the table name].")
@_mf_options
@click.option("--dsn", help=DSN_HELP)
@friendly
def train_mf_command(table: str, row_col: str, col_col: str, value_col: str,
                     model_name: str | None, dsn: str | None, **params: Any) -> None:
    """Train a low-rank matrix factorisation of TABLE's (row, column, value) triples."""
    params = {k: v for k, v in params.items() if v is not None}
    max_epochs = params.get("max_epochs") or next(p.default for p in MF_PARAMS
                                                  if p.name == "max_epochs")
    bar = _EpochProgress(max_epochs, stops_early=any(p.name == "tol" for p in MF_PARAMS))
    with connect(dsn) as conn, bar.progress, warnings.catch_warnings():
        warnings.simplefilter("ignore", BismarckWarning)  # printed below, from the result
        result = mf_training.train_mf(conn, table, row_col, col_col, value_col, model_name,
                                      on_epoch=bar, **params)
    summary = Table(title=cell(f"model {result.model_name} version {result.version}"))
    for col in ("epochs", "converged", "train MSE", "validation MSE", "triples", "seconds"):
        summary.add_column(col)
    summary.add_row(str(result.epochs), "yes" if result.converged else "no",
                    f"{result.train_loss:.6g}", _fmt(result.validation_loss), str(result.rows),
                    f"{result.seconds:.2f}")
    console.print(summary)
    for note in result.warnings:
        console.print(f"[yellow]Warning: {markup(note)}.[/yellow]")


@click.command("recommend")
@click.argument("model")
@click.argument("row_id", type=int)
@click.option("-k", "k", type=int, default=10, show_default=True, help="How many columns.")
@click.option("--include-rated", is_flag=True, help="Also rank the columns the training "
              "source already holds for ROW_ID.")
@click.option("--version", type=int, help="Model version [default: latest].")
@click.option("--dsn", help=DSN_HELP)
@friendly
def recommend_command(model: str, row_id: int, k: int, include_rated: bool,
                      version: int | None, dsn: str | None) -> None:
    """The K columns a matrix factorisation MODEL predicts highest for ROW_ID."""
    with connect(dsn) as conn:
        recs = mf_training.recommend(conn, model, row_id, k, exclude_rated=not include_rated,
                                     version=version)
    table = Table(title=cell(f"{model}: top {k} for row {row_id}"))
    table.add_column("column id", justify="right")
    table.add_column("score", justify="right")
    for col_id, score in recs:
        table.add_row(str(col_id), f"{score:.6g}")
    console.print(table)


COMMANDS = [train_mf_command, recommend_command]
