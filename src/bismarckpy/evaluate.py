"""Evaluate a stored model on a table or view, computed in SQL so rows never leave the server.

Classifiers: accuracy, precision, recall, f1, roc_auc (rank statistic, ties averaged) and
log_loss (logistic); regression: rmse, mae, r2. Rows with unusable values are skipped, counted.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import BismarckError, InvalidData
from .packing import check_rows
from .source import Session, Source, resolve

_SOFTPLUS = "(greatest({u}, 0) + ln(1 + exp(-least(abs({u}), 700))))"


def load_model(session: Session, model: str, version: int | None) -> dict[str, Any]:
    """The registry row of ``model`` (latest version unless given); errors if it is missing."""
    cols = ("model_name", "version", "loss", "label", "features", "coef", "intercept", "classes")
    row = session.query(
        "SELECT m.model_name, m.version, m.loss, m.label, m.features, m.coef, m.intercept, "
        "m.classes FROM bismarck._model(%s, %s::int) AS m", [model, version])[0]
    return dict(zip(cols, row))


def resolve_scored(session: Session, relation: str, label: str | None,
                   features: list[str]) -> Source:
    """``resolve`` for scoring: a packed table gets a clear error naming its original source.

    A model trained on a ``bismarck.pack`` output stores that table as its source, but its
    blocks have no label or feature columns. Raises InvalidData (42809) with a hint naming
    ``bismarck.packed_tables.source``; otherwise whatever ``resolve`` raises.
    """
    try:
        return resolve(session, relation, label, features)
    except BismarckError as exc:
        if exc.sqlstate not in ("42703", "42804"):  # only a missing column or a wrong type
            raise
        packed = session.query(
            "SELECT p.packed_table::text AS name, p.source FROM bismarck.packed_tables AS p "
            "WHERE p.packed_table::oid = to_regclass(%s)::oid", [relation])
        if not packed:
            raise
        name, source = packed[0]
        raise InvalidData(
            f"{name} is a packed table written by bismarck.pack", sqlstate="42809",
            detail="Its blocks hold training rows for train_glm only; it has no label or "
                   "feature columns to score.",
            hint=f"Score its original source {source} instead (bismarck.packed_tables.source)."
        ) from None


def evaluate(session: Session, model: str, relation: str,
             version: int | None = None) -> list[dict[str, Any]]:
    """Metrics of ``model`` on ``relation`` as ``[{"metric": name, "value": v}, ...]``."""
    m = load_model(session, model, version)
    src = resolve_scored(session, relation, m["label"], m["features"])
    d = len(m["coef"])
    checked = check_rows(session, src)
    if checked.d != d:
        raise InvalidData("feature dimension does not match the model",
                          detail=f"Model {m['model_name']} version {m['version']} has {d} "
                                 f"coefficients; rows in {src.name} have {checked.d}.",
                          hint="Evaluate with the same feature columns the model was trained on.")
    margin = (f"(%s::float8 + (SELECT sum(c * v) FROM unnest(%s::float8[], {src.x_expr}) "
              "AS t(c, v)))")
    base = (f"SELECT {src.label_expr} AS y, {margin} AS z FROM {src.relation} "
            f"WHERE {src.valid_expr}")
    params: list[object] = [float(m["intercept"]), [float(c) for c in m["coef"]]]
    skipped = {"metric": "skipped_rows", "value": float(checked.n_total - checked.n_usable)}
    if m["loss"] == "squared":
        n, sse, sae, sst = session.query(
            f"SELECT count(*) AS n, sum((z - y) ^ 2) AS sse, sum(abs(z - y)) AS sae, "
            f"coalesce(var_pop(y), 0) * count(*) AS sst FROM ({base}) AS s", params)[0]
        r2 = 1.0 - sse / sst if sst > 0 else float("nan")
        return _rows([("rows", n), ("rmse", math.sqrt(sse / n)), ("mae", sae / n),
                      ("r2", r2)]) + [skipped]
    neg, pos = m["classes"]
    bad = session.query(f"SELECT count(*) AS n FROM ({base}) AS s WHERE y NOT IN (%s, %s)",
                        params + [neg, pos])[0][0]
    if bad:
        raise InvalidData(
            "label values outside the model's classes",
            detail=f"{bad} rows have a label other than {neg:g} or {pos:g}.",
            hint="Evaluate on data labelled like the training data.")
    logloss = _SOFTPLUS.format(u="CASE WHEN pos THEN -z ELSE z END")
    n, n_pos, tp, fp, ll, rank_pos = session.query(
        f"WITH s AS (SELECT y = %s AS pos, z FROM ({base}) AS b), "
        "r AS (SELECT pos, z, rank() OVER (ORDER BY z) "
        "+ (count(*) OVER (PARTITION BY z) - 1) / 2.0 AS rk FROM s) "
        "SELECT count(*) AS n, count(*) FILTER (WHERE pos) AS n_pos, "
        "count(*) FILTER (WHERE pos AND z >= 0) AS tp, "
        "count(*) FILTER (WHERE NOT pos AND z >= 0) AS fp, "
        f"sum({logloss}) AS ll, sum(rk) FILTER (WHERE pos) AS rank_pos FROM r",
        [pos] + params)[0]
    n_neg = n - n_pos
    tn = n_neg - fp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_pos if n_pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auc = ((float(rank_pos) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
           if n_pos and n_neg else float("nan"))
    metrics = [("rows", n), ("accuracy", (tp + tn) / n), ("precision", precision),
               ("recall", recall), ("f1", f1), ("roc_auc", auc)]
    if m["loss"] == "logistic":
        metrics.append(("log_loss", float(ll) / n))
    return _rows(metrics) + [skipped]


def _rows(pairs: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Metric rows with float values; NaN (undefined) becomes None (SQL NULL)."""
    out = []
    for name, v in pairs:
        f = float(v)
        out.append({"metric": name, "value": f if math.isfinite(f) else None})
    return out
