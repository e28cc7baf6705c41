"""``%load_ext bismarck_controller`` in a real IPython shell: jupysql connected, or one clear
message."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bismarck_controller import extension
from bismarck_controller.notebook import psycopg_dsn, sqlalchemy_url

pytest.importorskip("sql")  # jupysql


@pytest.fixture
def shell(monkeypatch) -> Iterator:
    """The process's IPython shell, with jupysql's telemetry off; its connections closed after."""
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("PLOOMBER_STATS_ENABLED", "false")
    sh = InteractiveShell.instance()
    yield sh
    from sql.connection import ConnectionManager

    ConnectionManager.close_all()


def test_load_ext_connects_sql_to_the_database(shell, dsn: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("BISMARCK_DSN", dsn)
    shell.run_line_magic("load_ext", "bismarck_controller")
    out = capsys.readouterr().out
    assert "bismarck: %sql is connected to postgresql+psycopg://" in out
    result = shell.run_line_magic(
        "sql", "SELECT extversion FROM pg_extension WHERE extname = 'bismarck'")
    assert list(result.dict()["extversion"]) == [extension.version()]


def test_bad_url_prints_a_clear_message(shell, monkeypatch, capsys) -> None:
    monkeypatch.setenv("BISMARCK_DSN", "postgresql://nobody:secret@127.0.0.1:1/nowhere")
    shell.run_line_magic("reload_ext", "bismarck_controller")
    captured = capsys.readouterr()
    assert captured.out.startswith("bismarck: Cannot connect to PostgreSQL")
    assert "port=1" in captured.out
    assert "secret" not in captured.out  # the password is redacted
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.parametrize(("dsn", "url"), [
    ("postgresql://u:p@h:5/d", "postgresql+psycopg://u:p@h:5/d"),
    ("postgres://u@h/d?sslmode=disable", "postgresql+psycopg://u@h/d?sslmode=disable"),
    ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
    ("host=h port=5 user=u password=p@x dbname=d", "postgresql+psycopg://u:p%40x@h:5/d"),
    ("host=/run/pg user=u dbname=d", "postgresql+psycopg://u@/d?host=%2Frun%2Fpg"),
])
def test_sqlalchemy_url_always_names_psycopg(dsn: str, url: str) -> None:
    """A plain postgresql:// URL would make SQLAlchemy load psycopg2."""
    assert sqlalchemy_url(dsn) == url


def test_psycopg_dsn_drops_the_driver() -> None:
    assert psycopg_dsn("postgresql+psycopg://u@h/d") == "postgresql://u@h/d"
    assert psycopg_dsn("host=h dbname=d") == "host=h dbname=d"
