"""The command line's training front door, end to end on a real server (click's CliRunner)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
from click.testing import CliRunner
from reference_data import breast_cancer, load_table

from bismarck_controller.cli import main


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_train_show_evaluate_predict_history_delete(dsn: str, conn) -> None:
    names, X, y = breast_cancer()
    load_table(conn, "cli_cancer", names, X, y)
    code, out = _run("train", "cli_cancer", "--label", "y", "--features", ",".join(names[:5]),
                     "--model", "cli_model", "--validation-fraction", "0.2", "--seed", "4",
                     "--dsn", dsn)
    assert code == 0, out
    assert "model cli_model version 1" in out and "epoch" in out
    row = conn.execute("SELECT version, features, metrics->>'validation_rows' FROM "
                       "bismarck.models WHERE model_name = 'cli_model'").fetchone()
    assert row is not None and row[0] == 1 and row[1] == names[:5] and int(row[2]) > 50

    code, out = _run("models", "--dsn", dsn)
    assert code == 0 and "cli_model" in out
    code, out = _run("models", "--dsn", dsn, "show", "cli_model")
    assert code == 0 and names[0] in out and "(intercept)" in out
    code, out = _run("evaluate", "cli_model", "cli_cancer", "--json", "--dsn", dsn)
    assert code == 0 and '"accuracy"' in out and '"roc_auc"' in out
    code, out = _run("predict", "cli_model", "cli_cancer", "--output", "cli_scores", "--dsn", dsn)
    assert code == 0 and f"wrote {len(y)} rows" in out
    scores = conn.execute("SELECT min(prediction), max(prediction), count(*) FROM cli_scores")
    lo, hi, n = scores.fetchone()
    assert 0.0 <= lo < 0.5 < hi <= 1.0 and n == len(y)
    code, out = _run("history", "cli_model", "--dsn", dsn)
    assert code == 0 and "succeeded" in out
    epochs = conn.execute("SELECT count(*) FROM bismarck.training_history "
                          "WHERE model_name = 'cli_model' AND validation_loss IS NOT NULL")
    assert epochs.fetchone()[0] >= 1
    code, out = _run("models", "--dsn", dsn, "delete", "cli_model", "--yes")
    assert code == 0 and "deleted 1" in out


def test_errors_are_one_paragraph_without_traceback(dsn: str, conn) -> None:
    conn.execute("CREATE TABLE cli_small (a float8, b text, y int)")
    conn.execute("INSERT INTO cli_small VALUES (1, 'x', 0), (2, 'y', 1)")
    cases = [
        (["train", "cli_small", "--label", "y", "--features", "a,c"], 'column "c" does not exist'),
        (["train", "cli_small", "--label", "y", "--features", "a,b"], "has type text"),
        (["train", "no_such_table", "--label", "y", "--features", "a"], "does not exist"),
        (["evaluate", "no_such_model", "cli_small"], 'model "no_such_model" does not exist'),
        (["history", "no_such_model"], "model 'no_such_model' does not exist"),
        (["train", "cli_small", "--label", "y", "--features", "a", "--solver", "newton",
          "--eta0", "0.5"], "eta0 is not available with solver 'newton'"),
    ]
    for args, message in cases:
        code, out = _run(*args, "--dsn", dsn)
        assert code == 1, out
        assert message in out and "Traceback" not in out, out
    code, out = _run("train", "cli_small", "--label", "y", "--features", "a",
                     "--learning-rate", "sometimes", "--dsn", dsn)
    assert code == 2 and "sometimes" in out  # click rejects a value outside the choices
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE source = 'cli_small'"
                        ).fetchone() == (0,)


def test_a_killed_training_run_leaves_no_model_and_is_cleaned_up(dsn: str, conn) -> None:
    """kill -9 of the controller mid-run: history says interrupted; no version; no leftovers."""
    conn.execute("CREATE TABLE cli_big AS SELECT i::float8 AS a, (i % 3)::float8 AS b, "
                 "(i % 2) AS y FROM generate_series(1, 20000) i")
    env = {**os.environ, "BISMARCK_DSN": dsn}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bismarck_controller.cli", "train", "cli_big", "--label", "y",
         "--features", "a,b", "--model", "killed", "--max-epochs", "500", "--tol", "0",
         "--n-iter-no-change", "500"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            n = conn.execute("SELECT count(*) FROM bismarck.training_history "
                             "WHERE model_name = 'killed'").fetchone()[0]
            if n >= 2:
                break
            time.sleep(0.1)
        assert n >= 2, "the run never committed an epoch"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30  # the server notices the dead client
    while time.monotonic() < deadline:
        status = conn.execute("SELECT DISTINCT status FROM bismarck.training_history "
                              "WHERE model_name = 'killed'").fetchall()
        if status == [("interrupted",)]:
            break
        time.sleep(0.2)
    assert status == [("interrupted",)]
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = 'killed'"
                        ).fetchone() == (0,)
    with psycopg.connect(dsn) as c:  # the next run sweeps the dead run's working copy
        from bismarck_controller import training

        training.train(c, "cli_big", "y", ["a", "b"], "after_kill", max_epochs=1)
    left = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON "
                        "n.oid = c.relnamespace WHERE n.nspname = 'bismarck' "
                        "AND c.relname ~ '^_(train|valid)_'").fetchone()
    assert left == (0,)


def test_the_progress_bar_shows_max_epochs_as_a_bound_and_the_time_spent(dsn: str,
                                                                         conn) -> None:
    """With a convergence test (tol) the run may stop long before max_epochs: the bar says
    "of at most" and shows the time spent, not a time left computed from max_epochs."""
    names, X, y = breast_cancer()
    load_table(conn, "cli_bound", names, X, y)
    code, out = _run("train", "cli_bound", "--label", "y", "--features", ",".join(names[:4]),
                     "--max-epochs", "400", "--seed", "2", "--dsn", dsn)
    assert code == 0, out
    assert "of at most 400" in out and "/400" not in out, out


@pytest.mark.parametrize("width", [80, 160])
def test_models_is_readable_at_80_columns(make_database, monkeypatch: pytest.MonkeyPatch,
                                          width: int) -> None:
    """Tester: at 80 columns the source and features shrank to nothing and the date was cut.
    There each version is still one line with its source, features and creation date whole
    (no train loss, no time of day); a wide terminal keeps every column."""
    from bismarck_controller import cli_models, extension

    db = make_database("_models80")
    extension.install(db)
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("CREATE TABLE cancer_train AS SELECT random() AS radius, random() AS texture, "
                  "(random() < 0.5) AS diagnosis FROM generate_series(1, 100)")
        for model in ("breast_cancer_classifier", "cancer_mlp"):
            func = "train_mlp" if model == "cancer_mlp" else "train_glm"
            c.execute(f"SELECT * FROM bismarck.{func}('cancer_train', 'diagnosis', "
                      f"ARRAY['radius', 'texture'], '{model}', max_epochs => 2)")
        created = c.execute("SELECT min(created_at) FROM bismarck.models").fetchone()[0]
    monkeypatch.setattr(cli_models.console, "_width", width)
    code, out = _run("models", "--dsn", db)
    assert code == 0, out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= width, out
    rows = [line for line in lines if "cancer_train" in line]
    assert len(rows) == 2, out  # one line per version, the source whole
    assert all("2:radius,texture" in row for row in rows), out
    assert all(created.strftime("%Y-%m-%d") in row for row in rows), out
    assert ("train loss" in out) == (width == 160), out
    if width == 160:
        assert all("public.cancer_train" in row and created.strftime("%H:%M") in row
                   for row in rows), out
