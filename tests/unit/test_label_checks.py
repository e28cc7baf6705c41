"""Class labels without a database (issue 12): classes in messages are written exactly, NULL
required arguments are named, a kind named for its loss refuses another loss, and the
``bismarck models`` kind column."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bismarck_controller.cli_models import kind_cell
from bismarckpy import evaluate, loop
from bismarckpy.errors import InvalidParameter
from bismarckpy.source import exact_number, require_arguments


@pytest.mark.parametrize("value, text", [
    (2.0**53, "9007199254740992"), (1e15, "1000000000000000"), (-3.0, "-3"), (0.1, "0.1"),
    (2.5, "2.5"), (1e300, "1e+300"), (0.0, "0")])
def test_classes_are_written_exactly(value: float, text: str) -> None:
    assert exact_number(value) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_written_class_reads_back_as_the_same_double(value: float) -> None:
    assert float(exact_number(value)) == value


@pytest.mark.parametrize("values, name, message", [
    ({"source": None, "label": "y"}, "source", "must not be NULL"),
    ({"source": "t", "label": None}, "label", "must not be NULL"),
    ({"features": ["a", None]}, "features", "holds a NULL"),
    ({"row_col": None}, "row_col", "must not be NULL"),
])
def test_a_null_argument_is_named(values: dict, name: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        require_arguments("train_x", **values)
    assert err.value.message == f"train_x: {name} {message}"
    assert err.value.sqlstate == "22004" and err.value.hint.startswith("Pass ")
    require_arguments("train_x", source="t", label="y", features=["a", "b"])


def test_kind_softmax_refuses_another_loss_before_any_query() -> None:
    with pytest.raises(InvalidParameter, match="not a loss of kind softmax") as err:
        loop.train(None, source="t", label="y", features=["x"], model_name="m",  # type: ignore[arg-type]
                   kind="softmax", loss="logistic")
    assert "'softmax'" in err.value.detail


def test_a_null_label_is_refused_before_any_query() -> None:
    with pytest.raises(InvalidParameter, match="train_mlp: label must not be NULL"):
        loop.train(None, source="t", label=None, features=["x"], model_name="m",  # type: ignore[arg-type]
                   kind="mlp")


@pytest.mark.parametrize("row, cell", [
    ({"kind": "glm", "loss": "squared"}, "glm squared"),
    ({"kind": None, "loss": "logistic"}, "glm logistic"),
    ({"kind": "softmax", "loss": "softmax"}, "softmax"),
    ({"kind": "mlp", "loss": "squared", "stored": {"task": "regression"}}, "mlp regressor"),
    ({"kind": "mlp", "loss": "cross_entropy", "stored": {"task": "classification"}},
     "mlp classifier"),
    ({"kind": "mf", "loss": "squared"}, "mf"),
])
def test_models_lists_the_kind(row: dict, cell: str) -> None:
    assert kind_cell(row) == cell


@pytest.mark.parametrize("row, answers_class", [
    ({"kind": "glm", "classes": [0.0, 1.0]}, False),
    ({"kind": "softmax", "classes": [0.0, 1.0, 2.0]}, True),
    ({"kind": "mlp", "classes": [0.0, 1.0]}, True),
    ({"kind": "mlp", "classes": None}, False),
])
def test_which_predict_answers_a_class(row: dict, answers_class: bool) -> None:
    assert evaluate.predicts_class(row) is answers_class
