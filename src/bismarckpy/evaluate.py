"""Evaluate a stored model on a table or view, computed in SQL so rows never leave the server.

Classifiers: accuracy, precision, recall, f1, roc_auc (rank statistic, ties averaged) and
log_loss (logistic); regression: rmse, mae, r2. Rows with unusable values are skipped, counted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from decimal import Decimal, localcontext
from typing import Any

from . import kinds, losses
from .errors import BismarckError, InvalidData, InvalidParameter
from .packing import check_rows
from .source import Session, Source, resolve

_SOFTPLUS = "(greatest({u}, 0) + ln(1 + exp(-least(abs({u}), 700))))"
# Below this, n squared residuals (or n log losses) add up without leaving float8's range.
_SMALL = "1e140::float8"
# Above this (or exactly 0), a value's square is a normal float8: PostgreSQL raises "value out
# of range: underflow" for a product or power that rounds to zero, and var_pop loses a spread
# whose square is subnormal.
_TINY = "1e-140::float8"


def _ordinary(v: str) -> str:
    """SQL true when float8 ``v`` squares without overflow or underflow (0 included)."""
    return f"(abs({v}) < {_SMALL} AND ({v} = 0 OR abs({v}) > {_TINY}))"


def load_model(session: Session, model: str, version: int | None) -> dict[str, Any]:
    """The registry row of ``model`` (latest version unless given); errors if it is missing."""
    cols = ("model_name", "version", "loss", "label", "features", "coef", "intercept", "classes",
            "kind", "stored", "state")
    row = session.query(
        "SELECT m.model_name, m.version, m.loss, m.label, m.features, m.coef, m.intercept, "
        "m.classes, m.kind, m.stored::text AS stored, m.state "
        "FROM bismarck._model(%s, %s::int) AS m", [model, version])[0]
    return dict(zip(cols, row))


def stored_of(m: dict[str, Any]) -> dict[str, Any]:
    """A registry row's stored form (``stored`` jsonb) as a dict."""
    stored = m.get("stored")
    return json.loads(stored) if isinstance(stored, str) else dict(stored or {})


def label_type(m: dict[str, Any]) -> str | None:
    """The label's type of a classifier whose label is not a number (as ``format_type``
    printed it when the model was trained: 'text', 'boolean', 'public.mood'...); None for a
    numeric label or a regression model."""
    stored = stored_of(m)
    return stored.get("label_type") if stored.get("class_labels") is not None else None


def predicts_class(m: dict[str, Any]) -> bool:
    """Whether ``bismarck.predict`` of a registry row answers a class (softmax, MLP
    classification) rather than a score (a GLM's probability, value or margin; regression)."""
    return m.get("kind", "glm") != "glm" and m.get("classes") is not None


def class_labels(m: dict[str, Any]) -> list[str] | None:
    """The class values (as text) of a model whose label is not a number or a boolean (text,
    varchar, an enum...), in class order; None otherwise. Rows of such a model's label are
    coded as their class index (-1: a value that is none of its classes)."""
    stored = stored_of(m)
    if stored.get("label_type") in (None, "boolean"):
        return None
    labels = stored.get("class_labels")
    return None if labels is None else [str(v) for v in labels]


def unknown_classes(n: int, labels: list[str]) -> InvalidData:
    """The error for ``n`` rows whose label is none of the model's classes ``labels``."""
    shown = ", ".join(repr(v) for v in labels[:10]) + (" …" if len(labels) > 10 else "")
    return InvalidData("label values outside the model's classes",
                       detail=f"{n} rows have a label that is none of the model's "
                              f"{len(labels)} classes ({shown}).",
                       hint="Evaluate on data labelled like the training data.")


def resolve_scored(session: Session, relation: str, label: str | None,
                   features: list[str], classes: list[str] | None = None) -> Source:
    """``resolve`` for scoring: a packed table gets a clear error naming its original source.

    A model trained on a ``bismarck.pack`` output stores that table as its source, but its
    blocks have no label or feature columns. Raises InvalidData (42809) with a hint naming
    ``bismarck.packed_tables.source``; otherwise whatever ``resolve`` raises.
    """
    try:
        return resolve(session, relation, label, features, classes=classes, scoring=True)
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
    """Metrics of ``model`` on ``relation`` as ``[{"metric": name, "value": v}, ...]``, by the
    model's kind (:attr:`bismarckpy.kinds.ModelKind.evaluate`)."""
    m = load_model(session, model, version)
    kind = kinds.get(m["kind"])
    if kind.evaluate is None:
        raise InvalidParameter(f"evaluate does not support models of kind {kind.name!r}",
                               sqlstate="0A000", hint="Score it with bismarck.predict.")
    try:
        return kind.evaluate(session, m, relation)
    except InvalidData as exc:
        prefix = f'label column "{m["label"]}" has type '
        if exc.sqlstate != "42804" or not exc.message.startswith(prefix):
            raise
        got = exc.message[len(prefix):]
        want = stored_of(m).get("label_type") or "a number"
        trained = "a numeric label" if want == "a number" else f"a label of type {want}"
        raise InvalidData(
            f'label column "{m["label"]}" has type {got}, but model "{m["model_name"]}" was '
            f"trained on {trained}", sqlstate="42804",
            detail="Its rows are scored against the classes or values the model knows, which "
                   "are of the training label's type.",
            hint=f"Evaluate on a table whose label has the model's type, or cast it in a view "
                 f"(e.g. SELECT ({m['label']})::"
                 + ("double precision" if want == "a number" else want)
                 + f" AS {m['label']}, ...).") from None


def glm_metrics(session: Session, m: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    """A GLM's metrics on ``relation``: computed in SQL, rows never leave the server."""
    labels = class_labels(m)
    src = resolve_scored(session, relation, m["label"], m["features"], labels)
    d = len(m["coef"])
    checked = check_rows(session, src)
    if checked.d != d:
        raise InvalidData("feature dimension does not match the model",
                          detail=f"Model {m['model_name']} version {m['version']} has {d} "
                                 f"coefficients; rows in {src.name} have {checked.d}.",
                          hint="Evaluate with the same feature columns the model was trained on.")
    # z: the margin, never an overflow error (bismarck._linear): huge or ±Infinity for
    # features far beyond the model's range. Sums over such rows could overflow float8, so the
    # fast float8 aggregates skip them (FILTER) and count them; when there are any, the sums
    # are taken again exactly in numeric, where ±Infinity is a value and nothing overflows.
    # Tiny labels and residuals (squares below float8's range) take the numeric path too.
    base = (f"SELECT {src.label_expr} AS y, bismarck._linear(%s::float8[], %s::float8, "
            f"{src.x_expr}) AS z FROM {src.relation} AS s WHERE {src.valid_expr}")
    params: list[object] = [[float(c) for c in m["coef"]], float(m["intercept"])]
    skipped = {"metric": "skipped_rows", "value": float(checked.n_total - checked.n_usable)}
    loss = losses.get(m["loss"])
    if not loss.classifier:
        n, big, sse, sae, sst = session.query(
            f"SELECT count(*) AS n, count(*) FILTER (WHERE NOT ok) AS big, "
            "sum((z - y) ^ 2) FILTER (WHERE ok) AS sse, "
            "sum(abs(z - y)) FILTER (WHERE ok) AS sae, "
            "coalesce(var_pop(y) FILTER (WHERE ok), 0) * count(*) AS sst "
            f"FROM (SELECT y, z, {_ordinary('z')} AND {_ordinary('y')} "
            f"AND {_ordinary('z - y')} AS ok "
            f"FROM ({base}) AS b) AS s", params)[0]
        if big:
            n, sse, sae, sst, sy = session.query(
                # numeric's ^ rounds tiny results to 0 (its scale follows the base's): a
                # product is exact.
                "SELECT count(*) AS n, sum((z - y) * (z - y)) AS sse, sum(abs(z - y)) AS sae, "
                "sum(y * y) AS sy2, sum(y) AS sy FROM (SELECT y::text::numeric "
                f"AS y, z::text::numeric AS z FROM ({base}) AS b) AS s", params)[0][:5]
            # var_pop(numeric) rounds a spread of 1e-300 labels: the exact sums are combined
            # here with 100 digits instead (Σy² − (Σy)²/n).
            with localcontext() as ctx:
                ctx.prec = 100
                sse, sae = Decimal(sse), Decimal(sae)
                sst = Decimal(sst) - Decimal(sy) * Decimal(sy) / n
                rmse, mae = float((sse / n).sqrt()), float(sae / n)
                r2 = float(1 - sse / sst) if sst > 0 else float("nan")
        else:
            rmse, mae = math.sqrt(sse / n), sae / n
            r2 = 1.0 - sse / sst if sst > 0 else float("nan")
        return _rows([("rows", n), ("rmse", rmse), ("mae", mae),
                      ("r2", r2)]) + [skipped]
    neg, pos = m["classes"]
    bad = session.query(f"SELECT count(*) AS n FROM ({base}) AS s WHERE y NOT IN (%s, %s)",
                        params + [neg, pos])[0][0]
    if bad and labels is not None:
        raise unknown_classes(bad, labels)
    if bad:
        raise InvalidData(
            "label values outside the model's classes",
            detail=f"{bad} rows have a label other than {neg:g} or {pos:g}.",
            hint="Evaluate on data labelled like the training data.")
    logloss = _SOFTPLUS.format(u="CASE WHEN pos THEN -z ELSE z END")
    n, n_pos, tp, fp, ll, big, rank_pos = session.query(
        f"WITH s AS (SELECT y = %s AS pos, z FROM ({base}) AS b), "
        "r AS (SELECT pos, z, rank() OVER (ORDER BY z) "
        "+ (count(*) OVER (PARTITION BY z) - 1) / 2.0 AS rk FROM s) "
        "SELECT count(*) AS n, count(*) FILTER (WHERE pos) AS n_pos, "
        "count(*) FILTER (WHERE pos AND z >= 0) AS tp, "
        "count(*) FILTER (WHERE NOT pos AND z >= 0) AS fp, "
        f"sum({logloss}) FILTER (WHERE abs(z) < {_SMALL}) AS ll, "
        f"count(*) FILTER (WHERE NOT abs(z) < {_SMALL}) AS big, "
        "sum(rk) FILTER (WHERE pos) AS rank_pos FROM r",
        [pos] + params)[0]
    if big:  # a huge margin's loss is about |z|: their sum may pass float8's range
        ll = session.query(
            f"SELECT sum(({logloss})::text::numeric) AS ll FROM (SELECT y = %s AS pos, z "
            f"FROM ({base}) AS b) AS s", [pos] + params)[0][0]
    ll = Decimal(0) if ll is None else Decimal(ll)
    n_neg = n - n_pos
    tn = n_neg - fp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_pos if n_pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auc = ((float(rank_pos) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
           if n_pos and n_neg else float("nan"))
    metrics = [("rows", n), ("accuracy", (tp + tn) / n), ("precision", precision),
               ("recall", recall), ("f1", f1), ("roc_auc", auc)]
    if loss.probabilistic:
        metrics.append(("log_loss", float(ll / n)))
    return _rows(metrics) + [skipped]


def _rows(pairs: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Metric rows with float values; NaN (undefined) becomes None (SQL NULL).

    ±inf stays: an rmse or log_loss beyond float8's range (a model scoring far outside its
    training range) is Infinity, not undefined.
    """
    out = []
    for name, v in pairs:
        f = float(v)
        out.append({"metric": name, "value": None if math.isnan(f) else f})
    return out


def softmax_metrics(session: Session, m: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    """A softmax model's accuracy, macro-F1 and log-loss on ``relation``, counted in SQL.

    The server groups the rows by (true class, predicted class) with the sum of their
    log-losses, so only a K × K table leaves it. Macro-F1 averages the F1 of every class that
    is a true or a predicted label (scikit-learn's ``f1_score(average="macro")``); log-loss
    clips probabilities at float64's epsilon as scikit-learn's ``log_loss`` does.
    """
    stored = json.loads(m["stored"]) if isinstance(m["stored"], str) else m["stored"]
    classes = [float(c) for c in stored["classes"]]
    d = len(stored["coef"][0])
    labels = class_labels(m)
    src = resolve_scored(session, relation, m["label"], m["features"], labels)
    checked = check_rows(session, src)
    if checked.d != d:
        raise InvalidData("feature dimension does not match the model",
                          detail=f"Model {m['model_name']} version {m['version']} has {d} "
                                 f"features; rows in {src.name} have {checked.d}.",
                          hint="Evaluate with the same feature columns the model was trained on.")
    base = (f"SELECT {src.label_expr} AS y, bismarck._predict_proba_kind('softmax', "
            f"%s::jsonb, NULL::bytea, {src.x_expr}) AS pr FROM {src.relation} AS s "
            f"WHERE {src.valid_expr}")
    # pr is NULL for a row the model cannot score (its probabilities are not finite, e.g.
    # features of 1e308): such rows are counted with the skipped rows, never scored.
    rows = session.query(
        "SELECT array_position(%s::float8[], y) AS truth, (SELECT u.i FROM unnest(pr) WITH "
        "ORDINALITY AS u(v, i) ORDER BY u.v DESC, u.i LIMIT 1) AS guess, count(*) AS n, "
        "sum(-ln(least(greatest(pr[array_position(%s::float8[], y)], %s), 1.0))) AS ll, "
        "pr IS NULL AS unscorable "
        f"FROM ({base}) AS b GROUP BY 1, 2, 5",
        [classes, classes, _EPS, json.dumps(stored)])
    cells = [r[:4] for r in rows if not r[4] or r[0] is None]
    unscorable = sum(int(r[2]) for r in rows if r[4] and r[0] is not None)
    unknown = sum(int(n) for truth, _, n, _ in cells if truth is None)
    if unknown and labels is not None:
        raise unknown_classes(unknown, labels)
    if unknown:
        raise InvalidData(
            "label values outside the model's classes",
            detail=f"{unknown} rows have a label that is none of the model's {len(classes)} "
                   "classes.",
            hint="Evaluate on data labelled like the training data.")
    n = sum(int(c[2]) for c in cells)
    if n == 0:
        raise InvalidData(f"no usable rows in {src.name}",
                          detail=f"The model's probabilities are not finite for its {unscorable} "
                                 "rows (features far beyond the training range)."
                          if unscorable else None, hint="Check the table's rows.")
    right = sum(int(c[2]) for c in cells if c[0] == c[1])
    ll = sum(float(c[3]) for c in cells)
    skipped = {"metric": "skipped_rows",
               "value": float(checked.n_total - checked.n_usable + unscorable)}
    return _rows([("rows", n), ("accuracy", right / n),
                  ("f1_macro", f1_macro((c[0], c[1], int(c[2])) for c in cells)),
                  ("log_loss", ll / n)]) + [skipped]


def f1_macro(cells: Iterable[tuple[Any, Any, int]]) -> float:
    """Macro-averaged F1 of a confusion table given as ``(true class, predicted class, rows)``
    cells: the mean over every class that is a true or a predicted label of some row of
    ``2·TP / (true rows + predicted rows)``, as scikit-learn's ``f1_score(y, pred,
    average="macro")`` (whose labels are the union of ``y`` and ``pred``): a model class that
    neither occurs nor is predicted among the rows does not count. NaN without rows.

    Every classifier kind's ``f1_macro`` is this one function.
    """
    tp: dict[Any, int] = {}
    true: dict[Any, int] = {}
    said: dict[Any, int] = {}
    for t, g, n in cells:
        if n <= 0:
            continue
        true[t] = true.get(t, 0) + n
        said[g] = said.get(g, 0) + n
        if t == g:
            tp[t] = tp.get(t, 0) + n
    labels = set(true) | set(said)
    if not labels:
        return float("nan")
    return sum(2 * tp.get(k, 0) / (true.get(k, 0) + said.get(k, 0)) for k in labels) / len(labels)


#: scikit-learn's log_loss clips probabilities to [eps, 1 - eps] with float64's epsilon.
_EPS = 2.220446049250313e-16
