"""``make demo``: load a real dataset into the embedded database, train, inspect, evaluate, predict.

The data is scikit-learn's Wisconsin breast cancer table (569 rows, 30 features), which the
package ships. Every step after loading goes through the same commands a user types.
"""

from __future__ import annotations

import sys

from psycopg import sql
from rich.console import Console

from bismarck_controller.cli import main as cli
from bismarck_controller.connection import connect
from bismarckpy.errors import counted

TABLE = "demo_breast_cancer"
console = Console()


def load(dsn: str | None = None) -> list[str]:
    """(Re)create the demo table and its train/test views; return the feature column names."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        sys.exit("The demo needs scikit-learn for its dataset: pip install -e '.[test]'")
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    with connect(dsn) as conn:
        t = sql.Identifier(TABLE)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(t))
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {}, malignant int)").format(
            t, sql.SQL(", ").join(sql.SQL("{} float8").format(sql.Identifier(n))
                                  for n in names)))
        columns = sql.SQL(", ").join(map(sql.Identifier, ["id", *names, "malignant"]))
        with conn.cursor() as cur, cur.copy(
                sql.SQL("COPY {} ({}) FROM STDIN").format(t, columns)) as copy:
            for i, (row, target) in enumerate(zip(data.data, data.target)):
                copy.write_row([i, *map(float, row), int(target == 0)])
        for view, cond in (("train", "<>"), ("test", "=")):
            conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {} WHERE id % 5 {} 0").format(
                sql.Identifier(f"{TABLE}_{view}"), t, sql.SQL(cond)))
        conn.commit()
    return names


def step(title: str, *args: str) -> None:
    """Show the command, then run it through the CLI."""
    console.rule(f"[bold]{title}")
    console.print(f"$ bismarck {' '.join(args)}", style="cyan", soft_wrap=True)
    cli.main(list(args), standalone_mode=False)


def run() -> None:
    """The demo session."""
    console.rule("[bold]bismarckpy demo: breast cancer, logistic regression inside PostgreSQL")
    names = load()
    console.print(f"Loaded {TABLE} (569 rows, 30 features); views {TABLE}_train (80%) and "
                  f"{TABLE}_test (20%).")
    step("Train (each epoch is one aggregate query over the table)", "train", f"{TABLE}_train",
         "--label", "malignant", "--features", ",".join(names), "--model", "cancer",
         "--loss", "logistic", "--validation-fraction", "0.2", "--seed", "42")
    step("Inspect the stored model", "models", "show", "cancer")
    step("Evaluate on the held-out rows", "evaluate", "cancer", f"{TABLE}_test")
    step("Predict in the database", "predict", "cancer", f"{TABLE}_test", "--columns",
         "id,malignant", "--limit", "5")
    console.rule("[bold]Same from SQL")
    console.print("SELECT * FROM bismarck.train_glm('demo_breast_cancer_train', 'malignant', "
                  "ARRAY[...30 columns...], 'cancer_sql', seed => 42);", style="cyan")
    with connect() as conn:
        row = conn.execute(
            "SELECT model_name, version, epochs, converged, round(train_loss::numeric, 4) "
            "FROM bismarck.train_glm(%s, 'malignant', %s, 'cancer_sql', seed => 42)",
            [f"{TABLE}_train", names]).fetchone()
        conn.commit()
    console.print(f"model {row[0]} version {row[1]}: {counted(row[2], 'epoch')}, converged "
                  f"{row[3]}, "
                  f"train loss {row[4]}")


if __name__ == "__main__":
    run()
