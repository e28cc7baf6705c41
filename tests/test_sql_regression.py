"""SQL-in / expected-out regression tests of the SQL surface, errors included (pgvector style).

Each ``tests/sql/<topic>.sql`` runs through psql against the test database; its output must
equal ``tests/sql/expected/<topic>.out``. Set ``BISMARCK_REGEN=1`` to rewrite the expected files
after an intended change (then read the diff).
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bismarck_controller import extension

SQL_DIR = Path(__file__).parent / "sql"
CASES = sorted(SQL_DIR.glob("*.sql"))


def _psql() -> str:
    found = shutil.which("psql")
    if found is None:
        pytest.skip("psql is not installed (apt-get install postgresql-client-15)")
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_sql_case(case: Path, make_database) -> None:
    """The case's psql output, in a fresh database of its own, matches the expected file."""
    dsn = make_database("_" + case.stem)
    extension.install(dsn)
    result = subprocess.run(
        [_psql(), "-X", "-a", "-q", "-v", "VERBOSITY=default", "-v", "SHOW_CONTEXT=never",
         "-d", dsn, "-f", str(case)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        env={**os.environ, "PGOPTIONS": "-c client_min_messages=warning", "PAGER": ""})
    out = result.stdout.replace(str(case) + ":", case.name + ":")
    expected_file = SQL_DIR / "expected" / (case.stem + ".out")
    if os.environ.get("BISMARCK_REGEN") == "1":
        expected_file.write_text(out)
    expected = expected_file.read_text()
    if out != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), out.splitlines(True),
                                            "expected", "actual"))
        pytest.fail(f"{case.name} output differs from expected:\n{diff}")
