"""Labels of any type, without a database: the stored form of their classes, how scoring and
the estimators read it back, and the loop's class checks for softmax."""

from __future__ import annotations

import json
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bismarck_controller.estimators import label_values
from bismarckpy import evaluate, loop
from bismarckpy.errors import InvalidData
from bismarckpy.kinds import Stored, glm, softmax
from bismarckpy.source import Source


def _source(label_type: str, class_labels: list[str] | None = None) -> Source:
    return Source(relation="public.t", name="public.t", label="y", label_expr="y",
                  label_type=label_type, features=["x"], x_expr="x", valid_expr="true",
                  array_feature=True, row_key="s.ctid::text", class_labels=class_labels)


def test_a_numeric_label_keeps_its_stored_form_byte_for_byte() -> None:
    stored = glm.stored("logistic", [1.0, -2.0], 0.5, [0.0, 1.0])
    for label_type in ("integer", "double precision", "numeric", "smallint"):
        out = loop._with_label_classes(_source(label_type), stored)
        assert json.dumps(dict(out.model)) == json.dumps(dict(stored.model))
        assert out.classes == stored.classes


def test_a_regression_model_records_no_classes() -> None:
    stored = glm.stored("squared", [1.0], 0.0, None)
    assert loop._with_label_classes(_source("text", ["a", "b"]), stored) is stored


def test_boolean_and_text_labels_record_their_type_and_class_values() -> None:
    stored = glm.stored("logistic", [1.0], 0.0, [0.0, 1.0])
    out = loop._with_label_classes(_source("boolean"), stored)
    assert out.model["label_type"] == "boolean"
    assert out.model["class_labels"] == ["false", "true"]
    assert out.model["coef"] == [1.0] and out.classes == [0.0, 1.0]
    multi = Stored("softmax", {"coef": [[0.0]] * 3, "classes": [0.0, 1.0, 2.0]},
                   classes=[0.0, 1.0, 2.0])
    out = loop._with_label_classes(_source("public.mood", ["sad", "ok", "happy"]), multi)
    assert out.model["label_type"] == "public.mood"
    assert out.model["class_labels"] == ["sad", "ok", "happy"]


@given(st.lists(st.text(min_size=0, max_size=12), min_size=2, max_size=30, unique=True))
def test_class_values_round_trip_to_the_estimators_and_scoring(values: list[str]) -> None:
    classes = [float(i) for i in range(len(values))]
    stored = loop._with_label_classes(
        _source("text", values), Stored("softmax", {"classes": classes}, classes=classes))
    row = {"stored": json.loads(json.dumps(dict(stored.model))), "classes": classes}
    got = label_values(row)
    assert got.dtype == object and list(got) == values
    assert evaluate.class_labels({"stored": json.dumps(row["stored"])}) == values
    assert evaluate.label_type(row) == "text"


def test_booleans_and_numbers_come_back_in_their_own_type() -> None:
    b = {"stored": {"label_type": "boolean", "class_labels": ["false", "true"]},
         "classes": [0.0, 1.0]}
    assert label_values(b).dtype == bool and list(label_values(b)) == [False, True]
    assert evaluate.class_labels(b) is None  # booleans are scored as 0/1, as before
    assert evaluate.label_type(b) == "boolean"
    n = {"stored": {"classes": [1.0, 5.0]}, "classes": [1.0, 5.0]}
    assert label_values(n).dtype == float and list(label_values(n)) == [1.0, 5.0]
    assert evaluate.class_labels(n) is None and evaluate.label_type(n) is None


def test_categorical_is_any_type_but_numbers_and_booleans() -> None:
    assert _source("text").categorical and _source("public.mood").categorical
    assert _source("character varying").categorical
    assert not _source("boolean").categorical and not _source("numeric").categorical


def test_softmax_takes_the_loops_classes_and_checks_them_as_the_mlp() -> None:
    assert loop._multiclass("softmax") and loop._multiclass(loop.MULTICLASS)
    assert not loop._multiclass("logistic")
    assert loop._check_classes([0.0, 1.0, 2.0], "softmax", "y") == [0.0, 1.0, 2.0]
    with pytest.raises(InvalidData, match="one class only"):
        loop._check_classes([3.0], "softmax", "y")
    data = types.SimpleNamespace(classes=[0.0, 1.0, 2.0], train="nowhere")
    softmax.after_prepare(None, {}, data)  # no query: the loop found them over every row
    assert data.classes == [0.0, 1.0, 2.0]
