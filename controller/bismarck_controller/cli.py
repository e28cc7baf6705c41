"""The ``bismarck`` command line: thin click commands over the library.

Each command makes one library call and turns domain errors into ``click.ClickException``.
"""

from __future__ import annotations

import click

from bismarckpy import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bismarck")
def main() -> None:
    """In-database machine learning for PostgreSQL (Bismarck-style SGD)."""


def _register() -> None:
    from bismarck_controller import cli_db, cli_mf, cli_models, cli_plots

    for module in (cli_db, cli_models, cli_mf, cli_plots):
        for command in module.COMMANDS:
            main.add_command(command)


_register()


if __name__ == "__main__":
    main()
