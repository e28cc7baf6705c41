"""Real datasets that packages ship, loaded into PostgreSQL tables for the tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import psycopg
from psycopg import sql


def load_table(conn: psycopg.Connection, name: str, columns: Sequence[str], X: np.ndarray,
               y: np.ndarray, label: str = "y", *, label_type: str = "float8",
               with_id: bool = True) -> None:
    """(Re)create table ``name`` with an ``id``, feature columns and a label, filled by COPY."""
    cols = [sql.SQL("{} float8").format(sql.Identifier(c)) for c in columns]
    head = [sql.SQL("id int")] if with_id else []
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(
        sql.Identifier(name),
        sql.SQL(", ").join([*head, *cols, sql.SQL("{} {}").format(sql.Identifier(label),
                                                                  sql.SQL(label_type))])))
    names = [*(["id"] if with_id else []), *columns, label]
    copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, names)))
    with conn.cursor() as cur, cur.copy(copy) as cp:
        for i, (row, target) in enumerate(zip(X, y)):
            label_value = int(target) if label_type in ("int", "bigint") else float(target)
            values = [*([i] if with_id else []), *map(float, row), label_value]
            cp.write_row(values)
    if not conn.autocommit:
        conn.commit()


def load_array_table(conn: psycopg.Connection, name: str, X: np.ndarray, y: np.ndarray) -> None:
    """(Re)create ``name(id int, x float8[], y float8)``: features as one array column."""
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, x float8[], y float8)").format(
        sql.Identifier(name)))
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} (id, x, y) FROM STDIN").format(
            sql.Identifier(name))) as cp:
        for i, (row, target) in enumerate(zip(X, y)):
            cp.write_row([i, [float(v) for v in row], float(target)])
    if not conn.autocommit:
        conn.commit()


def breast_cancer() -> tuple[list[str], np.ndarray, np.ndarray]:
    """scikit-learn's Wisconsin breast cancer table: 569 rows, 30 features, label 0/1."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    return names, data.data, data.target.astype(float)


def diabetes() -> tuple[list[str], np.ndarray, np.ndarray]:
    """scikit-learn's diabetes regression table: 442 rows, 10 features, numeric target."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    return list(data.feature_names), data.data, data.target.astype(float)


def spector() -> tuple[list[str], np.ndarray, np.ndarray]:
    """statsmodels' Spector & Mazzeo grade data: 32 rows, GPA/TUCE/PSI, binary GRADE."""
    import statsmodels.api as sm

    d = sm.datasets.spector.load_pandas().data
    return ["gpa", "tuce", "psi"], d[["GPA", "TUCE", "PSI"]].to_numpy(), d["GRADE"].to_numpy()
