"""``bismarck doctor``: green on the test server, red with the fix on broken real servers."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from bismarck_controller import cli_db, doctor, embedded, extension
from bismarck_controller.errors import SetupError

EXPECTED = ["server reachable", "plpython3u", "numpy in the server", "bismarck extension",
            "engine code", "schema bismarck: who may create", "schema bismarck: objects",
            "registry privileges", "registry tables: triggers, policies, rules, indexes"]


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {check.name: check for check in checks}


def test_green_on_the_test_database(dsn: str) -> None:
    checks = doctor.run_checks(dsn)
    assert [c.name for c in checks] == EXPECTED
    assert [c.state for c in checks] == [doctor.OK] * len(EXPECTED)
    assert by_name(checks)["numpy in the server"].detail.startswith("numpy ")


def test_cli_exit_codes(dsn: str) -> None:
    command = next(c for c in cli_db.COMMANDS if c.name == "doctor")
    good = CliRunner().invoke(command, ["--dsn", dsn])
    assert good.exit_code == 0, good.output
    assert "✓" in good.output and "✗" not in good.output
    bad = CliRunner().invoke(command, ["--dsn", "postgresql://bismarck@127.0.0.1:1/nowhere"])
    assert bad.exit_code == 1 and "✗" in bad.output


def test_red_for_a_wrong_dsn() -> None:
    checks = doctor.run_checks("postgresql://bismarck:secret@127.0.0.1:1/nowhere")
    assert len(checks) == 1
    check = checks[0]
    assert check.failed and check.name == "server reachable"
    assert "Cannot connect" in check.detail and "secret" not in check.detail
    assert "--dsn" in check.fix


def test_red_without_the_extension(make_database) -> None:
    bare = make_database("_bare")
    checks = by_name(doctor.run_checks(bare))
    assert checks["plpython3u"].state == doctor.OK
    ext = checks["bismarck extension"]
    assert ext.failed and "not installed" in ext.detail and "bismarck install --dsn" in ext.fix


def test_server_without_numpy_then_without_plpython(
        scratch_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real server whose Python cannot import numpy, then one with no PL/Python at all."""
    shadow = scratch_root.parent / "no-numpy" / "numpy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'numpy'\")\n")
    for path in (shadow.parent, shadow, shadow / "__init__.py"):
        path.chmod(0o755)
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    cluster = embedded.Cluster(scratch_root)
    cluster.start()
    url = cluster.url()

    checks = by_name(doctor.run_checks(url))
    assert checks["plpython3u"].state == doctor.OK
    numpy_check = checks["numpy in the server"]
    assert numpy_check.failed and "No module named 'numpy'" in numpy_check.detail
    assert "apt-get install python3-numpy" in numpy_check.fix
    with pytest.raises(SetupError, match="python3-numpy"):
        extension.install(url)

    for path in cluster.extension_dir().glob("plpython3u*"):
        path.unlink()
    checks = by_name(doctor.run_checks(url))
    major = cluster.installation().major
    plpython = checks["plpython3u"]
    assert plpython.failed and f"apt-get install postgresql-plpython3-{major}" in plpython.fix
    assert checks["numpy in the server"].failed
    with psycopg.connect(url) as conn, pytest.raises(SetupError, match="plpython3"):
        extension.install(conn)


def test_warns_when_the_code_drifted(make_database) -> None:
    drifted = make_database("_drift")
    extension.install(drifted)
    with psycopg.connect(drifted, autocommit=True) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION bismarck._build() RETURNS text LANGUAGE sql "
                     "AS $$ SELECT 'older'::text $$")
    checks = by_name(doctor.run_checks(drifted))
    code = checks["engine code"]
    assert code.state == doctor.WARN and "sql/bismarck.sql" in code.detail
    assert "bismarck install" in code.fix
    assert not any(check.failed for check in checks.values())
