"""Every relation name the CLI takes reads as in SQL (PostgreSQL's parse_ident), and round-trips.

Quoted identifiers keep their case and may hold dots, unquoted ones fold to lower case; what
``--output NAME`` creates, ``NAME`` then finds as a source (predict, evaluate, train, pack) and
in the estimators. (Issue 9, item 10.)
"""

from __future__ import annotations

import psycopg
import pytest
from click.testing import CliRunner

from bismarck_controller.cli import main
from bismarck_controller.estimators import SGDClassifier

# (name as typed, the table PostgreSQL has then: schema (None: the first of the search_path,
# where CREATE TABLE puts an unqualified name), relname)
NAMES = [
    ("scored_plain", (None, "scored_plain")),
    ("Scored_Upper", (None, "scored_upper")),
    ("Sales.Scored", ("sales", "scored")),
    ('"Sales"."Scored"', ("Sales", "Scored")),
    ('"Sales".scored_two', ("Sales", "scored_two")),
    ('"a.b"', (None, "a.b")),
    ('"Sales"."x.y"', ("Sales", "x.y")),
    ('public."Mixed Case ""q"""', ("public", 'Mixed Case "q"')),
    ('"Ünïcödé"."Tabelle ß"', ("Ünïcödé", "Tabelle ß")),
    ('"50%"', (None, "50%")),
]


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def _expected(conn, where: tuple[str | None, str]) -> tuple[str, str]:
    schema = where[0] or conn.execute("SELECT current_schema()::text").fetchone()[0]
    return schema, where[1]


def _where(conn, name: str) -> tuple[str, str] | None:
    return conn.execute("SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN "
                        "pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = "
                        "to_regclass(%s)", [name]).fetchone()


@pytest.fixture(scope="module")
def leads(dsn: str) -> str:
    """"Sales"."Leads" (x1, x2, y) and a model trained on it from the CLI, named by default."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in ("Sales", "sales", "Ünïcödé"):
            conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute('CREATE TABLE "Sales"."Leads" (x1 float8, x2 float8, y int)')
        conn.execute('INSERT INTO "Sales"."Leads" SELECT g / 10.0, (g % 7) / 3.0, '
                     '(g % 7 > 3)::int FROM generate_series(1, 40) g')
    code, out = _run("train", '"Sales"."Leads"', "--label", "y", "--features", "x1,x2",
                     "--max-epochs", "3", "--seed", "1", "--dsn", dsn)
    assert code == 0, out
    return '"Sales"."Leads"'


@pytest.mark.parametrize(("name", "where"), NAMES)
def test_predict_output_round_trips(dsn: str, conn, leads: str, name: str,
                                    where: tuple[str | None, str]) -> None:
    code, out = _run("predict", leads, leads, "--output", name, "--dsn", dsn)
    assert code == 0, out
    assert "wrote 40 rows" in out
    where = _expected(conn, where)
    assert _where(conn, name) == where
    # The same name finds it again, from every command that reads a table.
    code, out = _run("evaluate", leads, name, "--json", "--dsn", dsn)
    assert code == 0 and '"accuracy"' in out, out
    code, out = _run("predict", leads, name, "--limit", "2", "--prediction-column", "again",
                     "--dsn", dsn)  # it has a column "prediction" already
    assert code == 0 and "again" in out, out
    # Writing to it again is refused with a clear message, and its rows stay.
    code, out = _run("predict", leads, leads, "--output", name, "--dsn", dsn)
    assert code != 0 and "already exists" in out and "Traceback" not in out
    conn.execute("DROP TABLE " + _quoted(where))


@pytest.mark.parametrize(("name", "where"), NAMES[2:6])
def test_pack_output_then_train_and_estimators(dsn: str, conn, leads: str, name: str,
                                               where: tuple[str | None, str]) -> None:
    where = _expected(conn, where)
    code, out = _run("pack", leads, "--label", "y", "--features", "x1,x2", "--output", name,
                     "--dsn", dsn)
    assert code == 0, out
    assert _where(conn, name) == where
    code, out = _run("train", name, "--label", "y", "--features", "x1,x2", "--model",
                     "names_packed", "--max-epochs", "2", "--dsn", dsn)
    assert code == 0, out
    conn.execute("DROP TABLE " + _quoted(where))
    clf = SGDClassifier.from_model(dsn, leads)
    assert clf.predict(dsn, leads, output=name) == 40
    assert _where(conn, name) == where
    conn.execute("DROP TABLE " + _quoted(where))


def test_model_named_after_a_quoted_source(dsn: str, leads: str) -> None:
    code, out = _run("models", "--dsn", dsn, "show", leads)
    assert code == 0 and "x1" in out, out
    code, out = _run("history", leads, "--dsn", dsn)
    assert code == 0 and "succeeded" in out, out


@pytest.mark.parametrize("bad", ['"unclosed', 'a."', "a..b", ""])
def test_malformed_output_names_are_clear_errors(dsn: str, leads: str, bad: str) -> None:
    code, out = _run("predict", leads, leads, "--output", bad, "--dsn", dsn)
    assert code != 0 and "Traceback" not in out
    assert "invalid table name" in out or "--output" in out, out


def _quoted(where: tuple[str, str]) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in where)
