"""The engine embedded in PL/Python bodies: every body gets it, and the loader really imports it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bismarck_controller import embed, extension
from bismarckpy.kinds import glm


def test_every_plpython_body_starts_with_the_engine() -> None:
    script = extension.build_install_script()
    source = (extension.sql_dir() / "bismarck.sql").read_text()
    functions = len(re.findall(r"^LANGUAGE plpython3u\b.*AS \$\$$", source, re.MULTILINE))
    assert functions >= 5
    key = "BISMARCK_ENGINE = \"bismarck-engine-" + embed.digest(extension.engine_modules())
    assert script.count(key) == functions
    for name in extension.engine_modules():
        assert f"{name!r}: " in script


def test_preamble_imports_the_engine_without_the_package(tmp_path) -> None:
    """Run the preamble in a Python that cannot import bismarckpy from disk."""
    preamble = embed.preamble(extension.engine_modules(), extension.version())
    program = preamble + (
        "\nimport sys\n"
        "gd = {}\n"
        "server = bismarck_engine(gd)\n"
        "assert gd[BISMARCK_ENGINE] is server\n"
        "assert server.__name__ == 'bismarckpy.server'\n"
        "import bismarckpy.kinds.glm as glm\n"
        "state = glm.initialize(2, loss='squared', eta=0.1)\n"
        "print(len(server.epoch_transition(None, None, [1.0, 2.0], 3.0, state)))\n")
    assert int(_run(tmp_path, "boot.py", program)) == 8 * (glm.HEADER + 5 * 2 + 3)


def test_a_body_that_breaks_the_convention_is_refused() -> None:
    script = "CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS $$ return 1 $$;"
    with pytest.raises(ValueError, match="write them that way"):
        embed.embed_engine(script, {"bismarckpy.__init__": ""}, "0")


def test_sources_with_dollar_quotes_are_refused() -> None:
    with pytest.raises(ValueError, match="contains"):
        embed.preamble({"bismarckpy.x": "s = '$$'"}, "0")


def test_a_glm_epoch_loads_the_glm_alone(tmp_path) -> None:
    """What a parallel worker (a new process every epoch) imports before its first GLM block:
    the GLM kind only, not the other kinds, and no importlib.abc (importlib.resources and
    friends) for the loader."""
    preamble = embed.preamble(extension.engine_modules(), extension.version())
    program = preamble + (
        "\nimport struct, sys\n"
        "server = bismarck_engine({})\n"
        "from bismarckpy import kinds\n"
        "assert kinds.for_state(struct.pack('<d', 2012.0) + bytes(8)).name == 'glm'\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('bismarckpy.kinds.')\n"
        "                      or m == 'importlib.abc')))\n")
    assert _run(tmp_path, "worker.py", program).split() == ["bismarckpy.kinds.glm"]


def _run(tmp_path, name: str, program: str) -> str:
    """Run ``program`` (an engine preamble and a check) in a fresh isolated Python; its stdout."""
    script = tmp_path / name
    script.write_text(program)
    result = subprocess.run([sys.executable, "-I", str(script)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout
