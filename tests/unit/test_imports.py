"""The layering of the packages: the engine imports nothing from the controller, no import cycles.

The engine (``bismarckpy``) ships into the server, where the client package does not exist; the
controller's modules form a one-way stack (build, embedded → extension → connection → ...).
Imports are read from the sources (``ast``), so an import inside a function counts as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bismarck_controller
import bismarckpy

ENGINE = Path(bismarckpy.__file__).resolve().parent
CONTROLLER = Path(bismarck_controller.__file__).resolve().parent


def _modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package at ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, *, top_level_only: bool = False,
             modules: frozenset[str] = frozenset()) -> set[str]:
    """Modules that ``name`` imports (absolute names), anywhere in it or only at module level.

    ``from package import module`` counts as an import of the module alone (among ``modules``).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            subs = {f"{module}.{alias.name}" for alias in node.names}
            found.update(subs & modules if subs <= modules else subs | {module})
    return found


def _graph(root: Path, *, top_level_only: bool = False) -> dict[str, set[str]]:
    """Import edges between the modules of one package.

    Edges into the package itself (``import bismarck_controller``) are left out: Python runs a
    package's ``__init__`` before any of its modules, so they close no circle.
    """
    mods = _modules(root)
    names = frozenset(mods)
    return {name: {m for m in _imports(name, path, top_level_only=top_level_only,
                                       modules=names)
                   if m in mods and m != name and m != root.name}
            for name, path in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_engine_imports_nothing_from_the_controller() -> None:
    offenders = {name: sorted(m for m in _imports(name, path)
                              if m.split(".")[0] == "bismarck_controller")
                 for name, path in _modules(ENGINE).items()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_engine_imports_without_the_controller_installed() -> None:
    """Every engine module imports in a Python where ``bismarck_controller`` cannot be found."""
    names = sorted(_modules(ENGINE))
    program = ("import importlib, sys\n"
               "sys.modules['bismarck_controller'] = None\n"
               f"for name in {names!r}:\n"
               "    importlib.import_module(name)\n"
               "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=120, cwd=ENGINE.parent)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_controller_has_no_import_cycle() -> None:
    assert _cycle(_graph(CONTROLLER)) is None


def test_the_engine_has_no_import_cycle_at_module_level() -> None:
    assert _cycle(_graph(ENGINE, top_level_only=True)) is None


@pytest.mark.parametrize("graph, cyclic", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"a": {"a"}}, True),
])
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], cyclic: bool) -> None:
    assert (_cycle(graph) is not None) == cyclic


def test_the_old_controller_cycle_is_seen(tmp_path: Path) -> None:
    """The circle this test guards against (connection → extension → connection) is found."""
    pkg = tmp_path / "ctl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "connection.py").write_text("from ctl import extension\n")
    (pkg / "extension.py").write_text("def install():\n    from ctl.connection import x\n")
    assert _cycle(_graph(pkg)) is not None
    assert _cycle(_graph(pkg, top_level_only=True)) is None
