"""The README documents every training parameter and every command (sqlite-utils style)."""

from __future__ import annotations

from pathlib import Path

import click

from bismarck_controller.cli import main
from bismarckpy.params import GLM_PARAMS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, command in group.commands.items():
        names.append(prefix + name)
        if isinstance(command, click.Group):
            names += _commands(command, prefix + name + " ")
    return names


def test_every_parameter_is_in_the_readme_table() -> None:
    for p in GLM_PARAMS:
        assert f"| `{p.name}` |" in README, p.name


def test_every_mlp_parameter_is_in_its_readme_table() -> None:
    from bismarckpy.kinds.mlp import MLP_PARAMS

    table = README.split("Parameters of `train_mlp`")[1].split("\n## ")[0]
    for p in MLP_PARAMS:
        assert f"| `{p.name}` |" in table, p.name


def test_every_command_is_in_the_readme() -> None:
    missing = [c for c in _commands(main) if f"bismarck {c}" not in README]
    assert not missing, missing


def test_every_command_has_help() -> None:
    for name in _commands(main):
        command: click.Command = main
        for part in name.split():
            assert isinstance(command, click.Group)
            command = command.commands[part]
        assert command.help, name


def test_every_matrix_factorisation_parameter_is_in_the_readme() -> None:
    from bismarckpy.kinds.mf import MF_PARAMS

    section = README[README.index("## Recommendations: matrix factorisation"):]
    for p in MF_PARAMS:
        assert f"| `{p.name}` |" in section, p.name
