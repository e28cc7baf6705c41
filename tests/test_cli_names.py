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


# Names from the database are data, printed literally by every command: rich markup in a model
# name neither breaks a command nor disappears, and control characters (ESC, BEL) reach the
# terminal as escapes, never as raw bytes. (Model names, feature columns, class values.)
ESC_COLUMN = "a\x1b]0;PWNED\x07b"
ESC_MODEL = "m\x1b[2Jq"
MARKUP_MODELS = ["bad[/x]", "churn[v2]", "[bold]loud[/bold]", ESC_MODEL]


def _shown(name: str) -> str:
    """How the CLI prints ``name``: control characters as \\xNN escapes."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or c == "\x7f" else c for c in name)


def _literal_run(*args: str) -> str:
    """Run a command that must succeed; its output has no raw ESC or BEL byte."""
    code, out = _run(*args)
    assert code == 0, out
    assert "\x1b" not in out and "\x07" not in out, repr(out)
    assert "Traceback" not in out, out
    return out


@pytest.fixture(scope="module")
def odd_names(dsn: str) -> str:
    """Table odd_src (x1, a<ESC>]0;PWNED<BEL>b, y text) and models named with markup and ESC,
    each trained from the CLI (which prints its name in the progress and summary)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE TABLE odd_src (x1 float8, {} float8, y text)").format(
            psycopg.sql.Identifier(ESC_COLUMN)))
        conn.execute("INSERT INTO odd_src SELECT g / 10.0, (g % 7) / 3.0, CASE WHEN g % 7 > 3 "
                     "THEN 'churn[v2]' ELSE 'stay\x1b[5m' END FROM generate_series(1, 40) g")
    for name in MARKUP_MODELS:
        out = _literal_run("train", "odd_src", "--label", "y", "--features",
                           f"x1,{ESC_COLUMN}", "--model", name, "--max-epochs", "2",
                           "--seed", "1", "--dsn", dsn)
        assert f"model {_shown(name)} version 1" in out, out
    return "odd_src"


def test_models_lists_names_literally(dsn: str, odd_names: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from bismarck_controller import cli_models

    monkeypatch.setattr(cli_models.console, "_width", 160)  # room for the features column
    out = _literal_run("models", "--dsn", dsn)
    for name in MARKUP_MODELS:
        assert _shown(name) in out, out
    assert "\\x1b]0;PWNED\\x07b" in out, out


@pytest.mark.parametrize("name", MARKUP_MODELS)
def test_show_history_evaluate_predict_print_names_literally(dsn: str, odd_names: str,
                                                              name: str) -> None:
    out = _literal_run("models", "--dsn", dsn, "show", name)
    assert _shown(name) in out and "label y" in out, out
    assert _shown(ESC_COLUMN) in out, out  # the coefficient's feature column
    out = _literal_run("history", name, "--dsn", dsn)
    assert "succeeded" in out, out
    out = _literal_run("evaluate", name, odd_names, "--dsn", dsn)
    assert _shown(name) in out and "accuracy" in out, out  # the title names the model
    out = _literal_run("predict", name, odd_names, "--classes", "--limit", "40", "--dsn", dsn)
    assert "churn[v2]" in out and "stay\\x1b[5m" in out, out  # class values
    assert "a\\x1b]0;PWNED\\x07b" in out, out  # the column header


def test_error_paragraphs_show_control_characters(dsn: str, odd_names: str) -> None:
    code, out = _run("evaluate", "ghost\x1b[2J[/x]", odd_names, "--dsn", dsn)
    assert code == 1 and "Traceback" not in out, out
    assert "\x1b" not in out and "ghost\\x1b[2J[/x]" in out, repr(out)


def test_visible_escapes_control_and_bidi_characters_only() -> None:
    from bismarck_controller.cli_text import cell, markup, visible

    assert visible("plain [x] ß ü \\ 50%") == "plain [x] ß ü \\ 50%"
    assert visible("a\x1b[2J\x07\x00\x7f\x9b\tb") == "a\\x1b[2J\\x07\\x00\\x7f\\x9b\\x09b"
    assert visible("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert visible("two\nlines\x1b", keep="\n") == "two\nlines\\x1b"
    assert markup("bad[/x]") == "bad\\[/x]"
    assert cell("churn[v2]\x1b").plain == "churn[v2]\\x1b"


def test_plot_draws_a_dollar_name_literally(dsn: str, odd_names: str, tmp_path) -> None:
    """A model name with ``$`` is a legend label, not mathtext (``$\\frac$`` would not parse)."""
    name = "cost$\\frac$"
    _literal_run("train", "odd_src", "--label", "y", "--features", "x1", "--model", name,
                 "--max-epochs", "2", "--dsn", dsn)
    out = _literal_run("plot", name, "bad[/x]", "-o", str(tmp_path / "loss.png"), "--dsn", dsn)
    assert "wrote" in out and (tmp_path / "loss.png").stat().st_size > 1000
