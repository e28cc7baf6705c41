"""``bismarck train|predict|evaluate|models|history``: thin commands over ``training``.

Each command makes one library call; engine, server and set-up errors become one-paragraph
ClickExceptions with the hint, never a traceback.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from typing import Any, Callable, TypeVar

import click
import numpy as np
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bismarck_controller import training
from bismarck_controller.cli_errors import DSN_HELP, friendly
from bismarck_controller.cli_text import cell, markup, visible
from bismarck_controller.connection import connect
from bismarck_controller.session import BismarckWarning
from bismarckpy import evaluate as engine_evaluate
from bismarckpy import kinds
from bismarckpy.errors import counted
from bismarckpy.loop import EpochRecord
from bismarckpy.source import exact_number

F = TypeVar("F", bound=Callable[..., Any])
console = Console()


def _all_params() -> list[Any]:
    """Every kind's parameters, each name once (a kind's own declaration first)."""
    seen: dict[str, Any] = {}
    for kind in kinds.all():
        for p in kind.params:
            seen.setdefault(p.name, p)
    return list(seen.values())


def _declarations(name: str) -> list[tuple[str, Any]]:
    """(kind, declaration) of every kind that declares parameter ``name``."""
    return [(k.name, p) for k in kinds.all() for p in k.params if p.name == name]


def _param_options(func: F) -> F:
    """One click option per declared training parameter of any kind (same names as SQL,
    underscores → -); the chosen ``--kind`` validates the ones given. A name several kinds
    declare accepts any of their choices and shows each kind's default."""
    for p in reversed(_all_params()):
        flag = "--" + p.name.replace("_", "-")
        decls = _declarations(p.name)
        defaults = {str(d.default) for _, d in decls}
        shown = (str(p.default) if len(defaults) == 1
                 else "; ".join(f"{k}: {d.default}" for k, d in decls))
        help_text = f"{p.doc} [default: {shown}]"
        if p.kind is bool:
            opt = click.option(f"{flag}/--no-{p.name.replace('_', '-')}", p.name, default=None,
                               help=help_text)
        elif p.choices:
            choices = list(dict.fromkeys(c for _, d in decls for c in d.choices or ()))
            opt = click.option(flag, p.name, type=click.Choice(choices), default=None,
                               help=help_text)
        else:  # numbers as such; anything else (e.g. hidden "64,32") as text for its parser
            opt = click.option(flag, p.name, type=p.kind if p.kind in (int, float) else str,
                               default=None, help=help_text)
        func = opt(func)
    return func


class _EpochProgress:
    """A rich progress bar per epoch: rows/s, train and validation loss, and the time left
    (``max_epochs`` epochs to run), or, when a convergence test can stop the run sooner
    (``stops_early``), the epochs as a count of at most ``max_epochs`` and the time spent:
    a time left from ``max_epochs`` would be an upper bound shown as an estimate."""

    def __init__(self, max_epochs: int, stops_early: bool = False) -> None:
        if stops_early:
            count: list[Any] = [TextColumn("epoch {task.completed} of at most {task.total}")]
            clock: Any = TimeElapsedColumn()
        else:
            count, clock = [TextColumn("epoch"), MofNCompleteColumn()], TimeRemainingColumn()
        self.progress = Progress(*count, BarColumn(), TextColumn("{task.fields[info]}"), clock,
                                 console=console, transient=False)
        self.task = self.progress.add_task("train", total=max_epochs, info="preparing…")

    def __call__(self, rec: EpochRecord) -> None:
        rate = rec.rows / rec.seconds if rec.seconds > 0 else math.inf
        info = f"{rate:,.0f} rows/s  loss {rec.train_loss:.6g}"
        if rec.validation_loss is not None:
            info += f"  val {rec.validation_loss:.6g}"
        if rec.workers:
            info += f"  {rec.workers} workers"
        self.progress.update(self.task, completed=rec.epoch, info=info)

    def preparing(self, text: str) -> None:
        """Progress before the first epoch (checks, copies, page groups read); printed
        literally (it may name a table)."""
        self.progress.update(self.task, info=markup(text))


@click.command("train")
@click.argument("table")
@click.option("--label", required=True, help="Label column: numeric for squared; for "
              "classifiers 0/1, -1/+1 or boolean (binary losses), or classes of any type (text, "
              "an enum...: two for binary losses, K >= 2 for softmax and mlp).")
@click.option("--features", required=True, help="Comma-separated numeric columns, or one "
              "float8[] column.")
@click.option("--model", "model_name", help="Model name [default: the table name].")
@click.option("--kind", "kind", type=click.Choice(kinds.BUILTIN), default="glm",
              show_default=True, help="Model kind (see README, \"Adding a model kind\").")
@_param_options
@click.option("--dsn", help=DSN_HELP)
@friendly
def train_command(table: str, label: str, features: str, model_name: str | None,
                  kind: str, dsn: str | None, **params: Any) -> None:
    """Train a model (a GLM by default) on TABLE inside PostgreSQL; store a new version."""
    params = {k: v for k, v in params.items() if v is not None}
    feats = [f.strip() for f in features.split(",") if f.strip()]
    declared = {p.name: p.default for p in kinds.get(kind).params}
    max_epochs = params.get("max_epochs") or declared["max_epochs"]
    # a convergence test (tol, given or the kind's default) can stop a run before max_epochs
    bar = _EpochProgress(max_epochs, stops_early="tol" in declared)
    with connect(dsn) as conn, bar.progress, warnings.catch_warnings():
        warnings.simplefilter("ignore", BismarckWarning)  # printed below, from the result
        result = training.train(conn, table, label, feats, model_name, on_epoch=bar, kind=kind,
                                **params)
    summary = Table(title=cell(f"model {result.model_name} version {result.version}"))
    for col in ("epochs", "converged", "train loss", "validation loss", "rows", "skipped",
                "seconds"):
        summary.add_column(col)
    summary.add_row(str(result.epochs), "yes" if result.converged else "no",
                    f"{result.train_loss:.6g}", _fmt(result.validation_loss), str(result.rows),
                    str(result.skipped), f"{result.seconds:.2f}")
    console.print(summary)
    for note in result.warnings:
        console.print(f"[yellow]Warning: {markup(note)}.[/yellow]")
    if not result.converged and not result.warnings:
        console.print(f"[yellow]Did not converge in {counted(result.epochs, 'epoch')}: raise "
                      "--max-epochs "
                      "or --tol, or try --learning-rate adaptive.[/yellow]")


@click.command("pack")
@click.argument("table")
@click.option("--label", required=True, help="Label column.")
@click.option("--features", required=True, help="Comma-separated numeric columns, or one "
              "float8[] column.")
@click.option("--output", "packed_table", required=True, help="Name of the packed table to "
              "create.")
@click.option("--block-size", type=int, help="Rows per block [default: 512].")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), help="Value type "
              "[default: float32].")
@click.option("--seed", type=int, help="Makes the shuffle reproducible.")
@click.option("--dsn", help=DSN_HELP)
@friendly
def pack_command(table: str, label: str, features: str, packed_table: str,
                 block_size: int | None, dtype: str | None, seed: int | None,
                 dsn: str | None) -> None:
    """Write a shuffled, packed copy of TABLE that `bismarck train` can reuse as its source."""
    feats = [f.strip() for f in features.split(",") if f.strip()]
    with connect(dsn) as conn:
        r = training.pack(conn, table, label, feats, packed_table, block_size=block_size,
                          dtype=dtype, seed=seed)
    click.echo(visible(f"packed {r['rows']} rows of {table} into {r['blocks']} blocks in "
                       f"{r['packed_table']} ({r['skipped_rows']} rows skipped, "
                       f"{r['seconds']:.2f} s)"))


@click.command("evaluate")
@click.argument("model")
@click.argument("table")
@click.option("--version", type=int, help="Model version [default: latest].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--dsn", help=DSN_HELP)
@friendly
def evaluate_command(model: str, table: str, version: int | None, as_json: bool,
                     dsn: str | None) -> None:
    """Evaluate MODEL on TABLE (which holds the label and feature columns)."""
    with connect(dsn) as conn:
        metrics = training.evaluate(conn, model, table, version)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    out = Table(title=cell(f"{model} on {table}"))
    out.add_column("metric")
    out.add_column("value", justify="right")
    for k, v in metrics.items():
        out.add_row(cell(k), cell(_fmt(v)))
    console.print(out)


@click.command("predict")
@click.argument("model")
@click.argument("table")
@click.option("--version", type=int, help="Model version [default: latest].")
@click.option("--output", help="Write TABLE's columns plus 'prediction' to this new table.")
@click.option("--limit", type=int, default=20, show_default=True,
              help="Rows to print when no --output is given.")
@click.option("--classes", is_flag=True, help="Predict class labels instead of scores.")
@click.option("--columns", help="Comma-separated columns of TABLE (any type) to keep beside the "
              "prediction; '' keeps none [default: all].")
@click.option("--prediction-column", default="prediction", show_default=True,
              help="Name of the score's column (when TABLE has a column 'prediction' already).")
@click.option("--dsn", help=DSN_HELP)
@friendly
def predict_command(model: str, table: str, version: int | None, output: str | None,
                    limit: int, classes: bool, columns: str | None, prediction_column: str,
                    dsn: str | None) -> None:
    """Score TABLE with MODEL in the server: print rows, or write them to --output."""
    keep = None if columns is None else [c.strip() for c in columns.split(",") if c.strip()]
    with connect(dsn) as conn:
        result = training.predict(conn, model, table, version=version, output=output,
                                  limit=None if output is not None else limit, classes=classes,
                                  columns=keep, prediction_column=prediction_column)
        if isinstance(result, int):  # the name as PostgreSQL prints it: Sales.X is sales.x
            created = conn.execute("SELECT to_regclass(%s)::text", [output]).fetchone()
            conn.rollback()
        else:  # a class is printed exactly (1234567, not 1.23457e+06); a score to 6 digits
            answers_class = classes or engine_evaluate.predicts_class(
                training.model(conn, model, version))
    if isinstance(result, int):
        click.echo(visible(f"wrote {result} rows to {created[0] if created else output}"))
        return
    if not result:
        click.echo("no rows")
        return
    shown = list(result[0])
    if len(shown) > 8:  # a wide table would be unreadable: first columns and the prediction
        shown = shown[:5] + [prediction_column]
        console.print(f"(showing {len(shown) - 1} of {len(result[0]) - 1} columns; choose "
                      "them with --columns)")
    out = Table()
    for col in shown:
        out.add_column(cell(col))
    for row in result:
        out.add_row(*(cell(_fmt(row[c]) if c != prediction_column or not answers_class
                           else _fmt_class(row[c])) for c in shown))
    console.print(out)


@click.group("models", invoke_without_command=True)
@click.option("--dsn", help=DSN_HELP)
@click.pass_context
@friendly
def models_group(ctx: click.Context, dsn: str | None) -> None:
    """List trained models (all versions); see also 'models show' and 'models delete'."""
    ctx.obj = {"dsn": dsn}
    if ctx.invoked_subcommand is not None:
        return
    with connect(dsn) as conn:
        rows = training.models(conn)
    if not rows:
        click.echo("no models yet: train one with `bismarck train`")
        return
    out = _models_table(rows)
    wide = console.options.update_width(10_000)  # the width the table asks for
    if console.width < COMPACT_BELOW and Measurement.get(console, wide, out).maximum > \
            console.width:
        out = _models_table(rows, compact=True)
    console.print(out)
    console.print("Details of one model: bismarck models show NAME [--version N]")


#: `bismarck models` on a terminal narrower than this, where its table does not fit, drops
#: the train loss and the time of day (see :func:`_models_table`); wider ones are unchanged.
COMPACT_BELOW = 120


def _models_table(rows: list[dict[str, Any]], compact: bool = False) -> Table:
    """`bismarck models`: one line per model version. ``compact``, for a terminal the whole
    table does not fit (80 columns): no train loss (`models show` has it), "ver" for
    "version", a source in schema public without it (as PostgreSQL prints a table on the
    search path) and the creation date without its time, which leaves the source and the
    features room to be read."""
    # source and features shrink, ending in "…"; compact: no padding beside the "│" lines
    out = Table(padding=(0, 0) if compact else (0, 1))
    cols = ("model", "version", "kind", "source", "features", "train loss", "created")
    if compact:
        cols = ("model", "ver", "kind", "source", "features", "created")
    for col in cols:
        # the version and the kind ("mlp classifier") are read whole; names and lists shrink
        # (a model name may be 200 characters: at most 24 are shown, ending in "…"; at least
        # 12, also when other rows' columns are wide on a narrow terminal)
        out.add_column(col, no_wrap=col not in ("source", "features"), overflow="ellipsis",
                       min_width={"version": 7, "ver": 3, "kind": None if compact else 14,
                                  "model": 12}.get(col),
                       max_width=(16 if compact else 24) if col == "model" else None)
    for r in rows:
        values = [cell(r["model_name"]), str(r["version"]), cell(kind_cell(r)),
                  cell(r["source"].removeprefix("public.") if compact else r["source"]),
                  cell(_features_cell(r["features"], _n_features(r)))]
        if compact:
            values.append(r["created_at"].strftime("%Y-%m-%d"))
        else:
            values += [_fmt(r["metrics"].get("train_loss")),
                       r["created_at"].strftime("%Y-%m-%d %H:%M")]
        out.add_row(*values)
    return out


def kind_cell(row: dict[str, Any]) -> str:
    """A registry row's kind as `bismarck models` lists it: a GLM with its loss (``glm
    logistic``, ``glm squared``, ``glm hinge``), ``softmax``, ``mlp classifier`` or ``mlp
    regressor``, ``mf``; another kind by its name."""
    kind = row.get("kind") or "glm"
    if kind == "glm":
        return f"glm {row.get('loss')}"
    if kind == "mlp":
        task = (row.get("stored") or {}).get("task")
        return "mlp classifier" if task == "classification" else "mlp regressor"
    return str(kind)


def _n_features(row: dict[str, Any]) -> int:
    """The number of features of a registry row of any kind: a GLM's coefficients, a kind's
    stored weight rows (``coef``: K × d), else one per feature column."""
    if row.get("coef") is not None:
        return len(row["coef"])
    coef = (row.get("stored") or {}).get("coef")
    if coef and isinstance(coef[0], list):
        return len(coef[0])
    sizes = (row.get("stored") or {}).get("sizes")  # an MLP's layer widths, input first
    if sizes:
        return int(sizes[0])
    return len(row["features"])


def _features_cell(features: list[str], d: int, width: int = 24) -> str:
    """The feature count and as many names as fit in ``width`` characters, then "…".

    E.g. ``30:radius,texture,perimeter,a…``; no spaces, so the table never wraps the cell.
    Control characters in a name are shown as escapes (``\\x1b``) before it is cut.

    ``d`` is the number of coefficients (an array feature's one column holds ``d`` features).
    """
    names = visible(",".join(features) if len(features) == d else f"{features[0]}[1:{d}]")
    if len(names) > width:
        names = names[:width - 1].rstrip(",") + "…"
    return f"{d}:{names}".replace(" ", "\u00a0")  # one word: rich cuts it, never wraps it


#: A stored array with at most this many values is shown as is; a bigger one by its shape.
SHOWN_VALUES = 16


def stored_summary(stored: dict[str, Any]) -> dict[str, Any]:
    """A kind's stored form for display: scalars and small arrays (hidden sizes, classes) as
    their values, arrays of more than :data:`SHOWN_VALUES` numbers as ``{"shape": [...]}``."""
    out: dict[str, Any] = {}
    for key, value in stored.items():
        if isinstance(value, list) and np.size(np.asarray(value, dtype=object)) > SHOWN_VALUES:
            out[key] = {"shape": list(np.shape(np.asarray(value, dtype=object)))}
        else:
            out[key] = value
    return out


@models_group.command("show")
@click.argument("name")
@click.option("--version", type=int, help="Model version [default: latest].")
@click.pass_obj
@friendly
def models_show(obj: dict, name: str, version: int | None) -> None:
    """Show one model: coefficients per feature, intercept, parameters and metrics."""
    with connect(obj["dsn"]) as conn:
        m = training.model(conn, name, version)
        rows = (training.coefficients(conn, name, m["version"]) if m["kind"] == "glm"
                else [])
    console.print(f"[bold]{markup(m['model_name'])}[/bold] version {m['version']}  "
                  f"kind {markup(m['kind'])}  loss {markup(m['loss'])}  "
                  f"source {markup(m['source'])}  label {markup(m['label'])}")
    if m["kind"] != "glm":  # a kind's stored form: its arrays' shapes, its classes
        labels = (m["stored"] or {}).get("class_labels")
        console.print(cell("stored: " + json.dumps(stored_summary(m["stored"] or {}))
                           + "  classes: "
                           + json.dumps(labels if labels is not None else m["classes"])))
        console.print(cell("params: " + json.dumps(m["params"])))
        console.print(cell("metrics: " + json.dumps(m["metrics"])))
        return
    kind = (m["fitted"] or {}).get("statistic_kind")
    coef = Table(title="coefficients (original units)")
    columns = ["feature", "coef"] + (["std err", kind, "p-value"] if kind else [])
    for col in columns:
        coef.add_column(col, justify="left" if col == "feature" else "right")
    for r in rows:
        values = [r["coef"]] + ([r["std_err"], r["statistic"], r["p_value"]] if kind else [])
        coef.add_row(cell(r["feature"]), *("" if v is None else f"{v:.6g}" for v in values))
    console.print(coef)
    console.print(cell("params: " + json.dumps(m["params"])))
    console.print(cell("metrics: " + json.dumps(m["metrics"])))


@models_group.command("delete")
@click.argument("name")
@click.option("--version", type=int, help="Delete only this version [default: all].")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
@friendly
def models_delete(obj: dict, name: str, version: int | None, yes: bool) -> None:
    """Delete a model (all versions, or one)."""
    what = visible(f"version {version} of {name}" if version else f"all versions of {name}")
    if not yes:
        click.confirm(f"Delete {what}?", abort=True)
    with connect(obj["dsn"]) as conn:
        n = training.delete_model(conn, name, version)
    click.echo(visible(f"deleted {n} version(s) of {name}"))


@click.command("history")
@click.argument("name")
@click.option("--version", type=int, help="Only this model version's run.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new epochs as a run "
              "progresses (Ctrl-C to stop).")
@click.option("--interval", type=float, default=1.0, show_default=True,
              help="Seconds between polls with --follow.")
@click.option("--dsn", help=DSN_HELP)
@friendly
def history_command(name: str, version: int | None, follow: bool, interval: float,
                    dsn: str | None) -> None:
    """Per-epoch history of model NAME: train/validation loss, learning rate, rows, seconds."""
    with connect(dsn) as conn:
        rows = training.history(conn, name, version)
        if not rows and not follow:
            training.versions(conn, name, version)  # says so when the version never existed
            raise click.ClickException(
                f"no training history for model {name!r}. List models with `bismarck models`.")
        click.echo(_history_header())
        for r in rows:
            click.echo(_history_line(r))
        last = (rows[-1]["run_id"], rows[-1]["epoch"]) if rows else None
        try:
            while follow:
                time.sleep(interval)
                for r in training.history(conn, name, version, after=last):
                    click.echo(_history_line(r))
                    last = (r["run_id"], r["epoch"])
        except KeyboardInterrupt:
            pass


def _history_header() -> str:
    return (f"{'run':>5} {'version':>7} {'status':<11} {'epoch':>6} {'train_loss':>14} "
            f"{'val_loss':>14} {'lr':>10} {'rows':>10} {'seconds':>9}")


def _history_line(r: dict[str, Any]) -> str:
    return (f"{r['run_id']:>5} {_fmt(r['version']):>7} {visible(r['status']):<11} {r['epoch']:>6} "
            f"{_fmt(r['train_loss']):>14} {_fmt(r['validation_loss']):>14} "
            f"{_fmt(r['learning_rate']):>10} {_fmt(r['rows']):>10} {r['seconds']:>9.3f}")


def _fmt_class(v: Any) -> str:
    """A predicted class exactly: a number as :func:`bismarckpy.source.exact_number` writes
    it, a boolean as PostgreSQL does, text as it is; None as an empty cell."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return exact_number(v)
    return str(v)


def _fmt(v: Any) -> str:
    """Numbers to 6 significant digits; None as an empty cell."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


COMMANDS = [train_command, pack_command, evaluate_command, predict_command, models_group,
            history_command]
