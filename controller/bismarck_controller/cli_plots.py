"""``bismarck plot``: loss curves of stored models written to an image file (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import click

from bismarck_controller import plots
from bismarck_controller.cli_models import DSN_HELP, friendly
from bismarck_controller.cli_text import visible
from bismarck_controller.connection import connect


@click.command("plot")
@click.argument("names", nargs=-1, required=True)
@click.option("--version", "versions", type=int, multiple=True,
              help="Model version to plot (repeatable) [default: the latest of each NAME].")
@click.option("-o", "--output", default="loss.png", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Image file to write; the suffix picks the format (png, svg, pdf).")
@click.option("--title", help="Chart title.")
@click.option("--dsn", help=DSN_HELP)
@friendly
def plot_command(names: tuple[str, ...], versions: tuple[int, ...], output: Path,
                 title: str | None, dsn: str | None) -> None:
    """Plot train (solid) and validation (dashed) loss per epoch of models NAME... to a file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    refs = [(n, v) for n in names for v in (versions or (None,))]
    fig = Figure(figsize=(7, 4), layout="tight")
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    with connect(dsn) as conn:
        plots.plot_history(conn, refs, ax=fig.add_subplot(), title=title)
    try:
        fig.savefig(output, dpi=120)
    except (OSError, ValueError) as exc:
        raise click.ClickException(visible(f"cannot write {output}: {exc}")) from None
    click.echo(visible(f"wrote {output}"))


COMMANDS = [plot_command]
