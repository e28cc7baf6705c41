"""The parameter declaration: every parameter is validated, with one message format."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from bismarckpy.errors import InvalidParameter
from bismarckpy.params import GLM_DEFAULTS, GLM_PARAMS, validate

NAMES = [p.name for p in GLM_PARAMS]

# At least one bad value per parameter. A new parameter must get an entry here (the test below
# fails with a KeyError otherwise), and that value must be refused.
BAD = {
    "loss": ["log", 3, ""],
    "penalty": ["l3", "ridge", 2],
    "alpha": [-0.001, math.nan, math.inf, "abc", True],
    "l1_ratio": [-0.1, 1.5, math.nan],
    "fit_intercept": ["maybe", 2, 1.0, []],
    "standardize": ["sometimes", 2],
    "max_epochs": [0, 2.5, 1_000_001, "ten", True, math.inf],
    "tol": [-1e-9, math.nan, -math.inf],
    "n_iter_no_change": [0, 10_001, 1.5],
    "learning_rate": ["optimal", 0.1],
    "eta0": [0.0, -1.0, math.inf, math.nan],
    "power_t": [-0.5, 10.5, math.nan],
    "batch_size": [-1, -2, 0.5, 1_000_000_001],
    "shuffle": ["sometimes", True],
    "averaging": ["shards", "", 1, True],
    "average": ["sometimes", 2, 1.0],
    "seed": [2**62 + 1, -(2**62) - 1, 1.5, "x", False],
    "parallel": [-1, 65, 1.5, "many", True],
    "parallel_mode": ["hogwild", "", 2, True],
    "packed": ["sometimes", 2],
    "block_size": [0, 1_000_001, 2.5],
    "dtype": ["float16", "int8", 4],
    "validation_fraction": [-0.1, 0.95, 1.0, math.nan],
    "class_weight": ["auto", "{}", '{"0": 0}', '{"1": -2}', '{"1": "x"}', "[1, 2]", 3,
                     {"1": math.inf}, {"0": True}],
    "solver": ["cholesky", "sag", 1, ""],
}

MESSAGE = re.compile(r"^The '(?P<name>\w+)' parameter of (?P<where>\w+) must be (?P<what>.+)\. "
                     r"Got (?P<got>.+) instead\.$")


def test_bad_values_cover_every_parameter() -> None:
    assert set(BAD) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_rejects_a_bad_value(name: str) -> None:
    for value in BAD[name]:
        with pytest.raises(InvalidParameter) as exc:
            validate({name: value})
        err = exc.value
        assert err.sqlstate == "22023"
        assert err.message == f"invalid value for parameter {name!r}"
        match = MESSAGE.match(err.detail or "")
        assert match, err.detail
        assert match["name"] == name and match["where"] == "train_glm"
        assert match["got"] == repr(value)
        assert err.hint


@pytest.mark.parametrize("param", GLM_PARAMS, ids=NAMES)
def test_every_parameter_declares_a_constraint(param) -> None:
    assert param.kind in (str, int, float, bool)
    if param.kind is str and param.parse is None:
        assert param.choices and (param.default in param.choices
                                  or param.default is None and param.nullable)
    if param.parse is not None:
        assert param.shape and param.nullable
    if param.kind in (int, float):
        assert param.low is not None
    assert param.doc.strip()


def test_message_names_the_caller_and_the_range() -> None:
    with pytest.raises(InvalidParameter) as exc:
        validate({"l1_ratio": 2}, where="bismarck train")
    assert exc.value.detail == ("The 'l1_ratio' parameter of bismarck train must be a float in "
                                "the range 0 <= x <= 1. Got 2 instead.")
    with pytest.raises(InvalidParameter) as exc:
        validate({"loss": "log"})
    assert exc.value.detail == ("The 'loss' parameter of train_glm must be one of 'logistic', "
                                "'squared', 'hinge', 'softmax'. Got 'log' instead.")
    with pytest.raises(InvalidParameter) as exc:
        validate({"eta0": 0})
    assert "must be a float > 0 or NULL." in exc.value.detail
    with pytest.raises(InvalidParameter) as exc:
        validate({"tol": -1})
    assert "must be a float >= 0 or NULL." in exc.value.detail


def test_message_quotes_the_value_as_given() -> None:
    with pytest.raises(InvalidParameter) as exc:
        validate({"loss": " Logistc"})
    assert exc.value.detail.endswith("Got ' Logistc' instead.")


def test_defaults_fill_in() -> None:
    out = validate({})
    assert out == GLM_DEFAULTS
    assert list(out) == NAMES
    assert out["loss"] == "logistic" and out["seed"] is None and out["tol"] == 0.001


def test_none_means_default_unless_nullable() -> None:
    out = validate({"alpha": None, "loss": None, "tol": None, "seed": None})
    assert out["alpha"] == GLM_DEFAULTS["alpha"] and out["loss"] == GLM_DEFAULTS["loss"]
    assert out["tol"] is None and out["seed"] is None


def test_unknown_parameters_are_refused() -> None:
    with pytest.raises(InvalidParameter) as exc:
        validate({"learning_rat": "constant", "zzz": 1})
    assert exc.value.message == "unknown parameter 'learning_rat' for train_glm"
    assert exc.value.sqlstate == "22023"
    for name in NAMES:
        assert name in exc.value.hint


@pytest.mark.parametrize(("text", "expected"), [
    (True, True), (False, False), ("true", True), ("FALSE", False), ("t", True), ("f", False),
    ("Yes", True), ("no", False), ("1", True), ("0", False),
])
def test_booleans_coerce(text, expected: bool) -> None:
    out = validate({"fit_intercept": text, "standardize": text})
    assert out["fit_intercept"] is expected and out["standardize"] is expected


@pytest.mark.parametrize(("text", "expected"), [
    ("on", True), ("OFF", False), (" of ", False), ("ye", True), ("tr", True), ("fal", False),
    ("y", True), ("n", False), ("\tTrue\n", True),
])
def test_booleans_take_postgresqls_spellings(text: str, expected: bool) -> None:
    """Every spelling PostgreSQL's boolean input takes: on/off and the unique prefixes too."""
    out = validate({"average": text, "fit_intercept": text})
    assert out["average"] is expected and out["fit_intercept"] is expected


@pytest.mark.parametrize("text", ["o", "", "onx", "offf", "2", "yess", "tru e", 2, -1, 0.5])
def test_booleans_refuse_what_postgresql_refuses(text) -> None:
    with pytest.raises(InvalidParameter, match="invalid value for parameter 'average'") as exc:
        validate({"average": text})
    assert "on/off" in exc.value.detail  # the message lists what is accepted


@pytest.mark.parametrize(("value", "expected"), [
    (np.True_, True), (np.False_, False), (1, True), (0, False), (np.int64(1), True),
    (np.int8(0), False)])
def test_numpy_booleans_and_integers_0_and_1_are_booleans(value, expected: bool) -> None:
    """Tester: ParameterGrid({'standardize': np.array([True, False])}) hands numpy booleans
    to the estimators, which refused them while accepting the text 'of'."""
    out = validate({"standardize": value, "average": value})
    assert out["standardize"] is expected and out["average"] is expected


def test_integers_coerce() -> None:
    out = validate({"max_epochs": 7.0, "batch_size": "0", "n_iter_no_change": 3, "seed": -5})
    assert out["max_epochs"] == 7 and type(out["max_epochs"]) is int
    assert out["batch_size"] == 0 and type(out["batch_size"]) is int
    assert out["n_iter_no_change"] == 3 and out["seed"] == -5


def test_floats_coerce() -> None:
    out = validate({"alpha": 1, "eta0": "0.5", "l1_ratio": 0, "validation_fraction": 0.9})
    assert out["alpha"] == 1.0 and type(out["alpha"]) is float
    assert out["eta0"] == 0.5 and out["l1_ratio"] == 0.0 and out["validation_fraction"] == 0.9


def test_strings_are_normalised() -> None:
    out = validate({"loss": " Hinge ", "penalty": "ElasticNet", "learning_rate": "ADAPTIVE"})
    assert (out["loss"], out["penalty"], out["learning_rate"]) == ("hinge", "elasticnet",
                                                                  "adaptive")


@pytest.mark.parametrize("name", [p.name for p in GLM_PARAMS if p.kind in (int, float)])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf"])
def test_non_finite_numbers_are_rejected(name: str, value) -> None:
    with pytest.raises(InvalidParameter):
        validate({name: value})


def test_bounds_are_inclusive_unless_open() -> None:
    out = validate({"l1_ratio": 1.0, "alpha": 0.0, "power_t": 10.0, "max_epochs": 1,
                    "batch_size": 0, "seed": 2**62, "tol": 0.0})
    assert out["l1_ratio"] == 1.0 and out["seed"] == 2**62
    assert validate({"eta0": 1e-300})["eta0"] == 1e-300


@pytest.mark.parametrize("given, expected", [
    ("balanced", "balanced"), (" Balanced ", "balanced"),
    ('{"0": 1, "1": 10}', {"0": 1.0, "1": 10.0}), ({0: 1, 1: 2.5}, {"0": 1.0, "1": 2.5}),
    ({-1: 3}, {"-1": 3.0}), ({True: 2}, {"true": 2.0}), (None, None)])
def test_class_weight_forms(given, expected) -> None:
    assert validate({"class_weight": given})["class_weight"] == expected


def test_exact_solvers_default_to_the_unpenalised_fit_to_tight_tolerance() -> None:
    out = validate({"solver": "newton"})
    assert (out["penalty"], out["tol"], out["dtype"]) == ("none", 1e-8, "float64")
    out = validate({"solver": "lbfgs", "penalty": "l2", "tol": 1e-4, "dtype": "float32"})
    assert (out["penalty"], out["tol"], out["dtype"]) == ("l2", 1e-4, "float32")
    assert validate({"solver": "newton", "tol": None})["tol"] is None
    assert validate({})["penalty"] == "l2" and validate({})["solver"] == "sgd"


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
def test_shared_parallel_mode_needs_sgd(solver: str) -> None:
    with pytest.raises(InvalidParameter, match="needs solver => 'sgd'"):
        validate({"solver": solver, "parallel_mode": "shared"})
    assert validate({"solver": solver})["parallel_mode"] == "average"
    assert validate({"parallel_mode": " Shared "})["parallel_mode"] == "shared"


def test_shared_parallel_mode_needs_sgd_steps() -> None:
    with pytest.raises(InvalidParameter, match=r"needs SGD steps \(batch_size >= 1\)"):
        validate({"batch_size": 0, "parallel_mode": "shared"})
    assert validate({"batch_size": 0})["batch_size"] == 0


def test_shared_parallel_mode_needs_workers() -> None:
    """parallel => 0 forces a serial scan: nothing to share; 1 worker or the planner's choice
    is a shared run (with one worker, serial SGD's steps)."""
    with pytest.raises(InvalidParameter, match=r"needs parallel workers \(parallel => 1 or "
                                               r"more\)") as e:
        validate({"parallel": 0, "parallel_mode": "shared"})
    assert "parallel => 2" in e.value.hint
    assert validate({"parallel": 1, "parallel_mode": "shared"})["parallel"] == 1
    assert validate({"parallel_mode": "shared"})["parallel"] is None
    assert validate({"parallel": 0})["parallel"] == 0


def test_counts_agree_with_their_nouns() -> None:
    """"1 epoch", not "1 epochs" (the warning of a run stopped at max_epochs => 1 said so)."""
    from bismarckpy.errors import counted

    assert counted(1, "epoch") == "1 epoch" and counted(2, "epoch") == "2 epochs"
    assert counted(0, "epoch") == "0 epochs" and counted(1, "pass") == "1 pass"
    assert counted(3, "pass") == "3 passes" and counted(1, "iteration") == "1 iteration"
