"""The model-kind protocol and its registry, without a database.

The GLM is the first kind: its protocol functions must be exactly the GLM kernel's (no change of
behaviour), and the registry must find it by name and by the magic that opens its states. The
worked example of :mod:`bismarckpy.kinds` is run here as written, so the documentation cannot
drift from the protocol.
"""

from __future__ import annotations

import math
import textwrap
import types
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import expit

from bismarckpy import execution, kinds, losses, pack
from bismarckpy.errors import InvalidData, InvalidParameter
from bismarckpy.kinds import glm
from bismarckpy.params import COMMON_PARAMS, GLM_PARAMS, merge_params, validate


def _data(d: int, **kw: object) -> types.SimpleNamespace:
    """Prepared-data facts as the loop hands them to a kind."""
    base = dict(d=d, mu=None, sd=None, itemsize=8, y_coding=None, classes=[0.0, 1.0],
                n_train=10, n_pos=4, y_mean=0.0, y_sd=1.0)
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_the_registry_finds_the_glm_by_name_and_by_its_states() -> None:
    kind = kinds.get("glm")
    assert kind is glm.KIND and kinds.all()[:2] == (kind, kinds.get("softmax"))
    state = glm.initialize(3, loss="logistic")
    assert kinds.for_state(state) is kind
    assert kind.param_names == tuple(p.name for p in GLM_PARAMS)


def test_unknown_kinds_and_foreign_states_are_clear_errors() -> None:
    with pytest.raises(InvalidParameter, match="unknown model kind 'nope'") as err:
        kinds.get("nope")
    assert "glm" in (err.value.detail or "")
    with pytest.raises(InvalidData, match="not a bismarck model state"):
        kinds.for_state(b"\x00" * 64)


def test_a_kind_needs_an_8_byte_magic_and_a_known_merge_rule() -> None:
    fields = dict(name="x", params=(), losses=(), initialize=None, transition=None,
                  transition_block=None, merge=None, finalize=None, decode=None, export=None,
                  predict=None)
    with pytest.raises(ValueError, match="8 bytes"):
        kinds.ModelKind(magic=b"short", **fields)
    with pytest.raises(ValueError, match="merge_rule"):
        kinds.ModelKind(magic=b"12345678", merge_rule="median", **fields)


@pytest.mark.parametrize("loss", list(glm.LOSS_CODES))
@pytest.mark.parametrize("evaluate", [False, True])
def test_glm_epoch_init_is_the_kernels_initialize(loss: str, evaluate: bool) -> None:
    """The protocol's initialize builds, byte for byte, the state the loop built before."""
    p = validate({"loss": loss, "penalty": "elasticnet", "alpha": 0.01, "l1_ratio": 0.3,
                  "batch_size": 4, "class_weight": "balanced" if loss != "squared" else None})
    rng = np.random.default_rng(0)
    mu, sd = rng.normal(size=3), rng.uniform(1, 2, size=3)
    classes = None if loss == "squared" else ([0.0, 1.0] if loss == "logistic" else [-1.0, 1.0])
    data = _data(3, mu=mu, sd=sd, classes=classes)
    model = glm.decode(glm.initialize(3, loss=loss, w=rng.normal(size=3), b=0.5, t=7.0))
    weights = glm.class_weights(p["class_weight"], classes, 10, 4)
    if evaluate:
        want = glm.initialize(3, loss=loss, batch_size=glm.EVALUATE, w=model.w, b=model.b,
                              mu=mu, sd=sd, class_weight=weights)
    else:
        want = glm.initialize(3, loss=loss, alpha=0.01, l1=0.3, l2=0.7, eta=0.05,
                              invscaling=True, power_t=p["power_t"], t=7.0, batch_size=4,
                              w=model.w, b=model.b, mu=mu, sd=sd, class_weight=weights,
                              average=True, average_from=7.0)
    got = glm.KIND.initialize(p, data, model, eta=0.05, per_step=True, evaluate=evaluate)
    assert got == want


def test_glm_export_and_predict_on_the_stored_form() -> None:
    """Export reports original units (unstandardised); predict is the loss's link of X·coef + b."""
    rng = np.random.default_rng(1)
    mu, sd = rng.normal(size=2), rng.uniform(1, 3, size=2)
    model = glm.decode(glm.initialize(2, loss="logistic", w=np.array([0.5, -1.0]), b=0.25))
    p = validate({"loss": "logistic"})
    stored = glm.KIND.export(p, _data(2, mu=mu, sd=sd), model)
    coef = np.array([0.5, -1.0]) / sd
    assert stored.kind == "glm" and stored.classes == [0.0, 1.0]
    assert stored.model["coef"] == pytest.approx(coef)
    assert stored.model["intercept"] == pytest.approx(0.25 - coef @ mu)
    X = rng.normal(size=(5, 2))
    z = (X - mu) / sd @ np.array([0.5, -1.0]) + 0.25
    assert glm.KIND.predict(stored, X) == pytest.approx(expit(z))
    squared = kinds.Stored("glm", {"loss": "squared", "coef": [2.0, 1.0], "intercept": -1.0})
    assert glm.KIND.predict(squared, X) == pytest.approx(X @ [2.0, 1.0] - 1.0)
    assert glm.KIND.export(p, _data(2), None).model["coef"] == [0.0, 0.0]


def test_the_loss_registry_answers_what_modules_used_to_compare_strings() -> None:
    assert losses.CLASSIFIERS == ("logistic", "hinge")
    assert {n: (x.classifier, x.probabilistic) for n, x in losses.REGISTRY.items()} == {
        "logistic": (True, True), "squared": (False, False), "hinge": (True, False),
        "softmax": (True, True)}
    assert {n: x.kind for n, x in losses.REGISTRY.items()}["softmax"] == "softmax"
    assert tuple(glm.LOSS_CODES) == tuple(losses.LOSSES) == ("logistic", "squared", "hinge")
    assert losses.get("logistic").zero_row_loss == pytest.approx(math.log(2))
    assert losses.BY_CODE[glm.LOSS_CODES["hinge"]].name == "hinge"
    with pytest.raises(KeyError, match="known: logistic, squared, hinge, softmax"):
        losses.get("softplus")


def test_merge_params_keeps_the_kinds_own_declarations_first() -> None:
    own = (GLM_PARAMS[0], next(p for p in GLM_PARAMS if p.name == "eta0"))
    merged = merge_params(own)
    assert merged[:2] == own
    assert [p.name for p in merged].count("eta0") == 1
    assert {p.name for p in merged} == {p.name for p in COMMON_PARAMS} | {"solver"}
    assert validate({"max_epochs": 3}, params=merged)["max_epochs"] == 3
    with pytest.raises(InvalidParameter, match="unknown parameter 'loss'"):
        validate({"loss": "logistic"}, params=merged)


def test_execution_builds_the_epoch_queries_of_each_scan() -> None:
    rows = execution.Scan('"w"."train"')
    assert rows.sql() == 'SELECT bismarck._epoch(x, y, %s) FROM "w"."train"'
    assert "ORDER BY random()" in execution.Scan("t", reshuffle=True).sql()
    packed = execution.Scan("t AS p", packed=True, rows="3, NULL")
    assert packed.sql() == "SELECT bismarck._epoch_packed(data, %s, 3, NULL) FROM t AS p"
    assert packed.sql(execution.EXACT).startswith("SELECT bismarck._exact_pass_packed(")
    assert execution.Strategy(4).for_kind("none").workers == 0
    assert execution.Strategy(4).for_kind("average").workers == 4
    assert execution.parallel_settings(None) == {}
    assert execution.parallel_settings(0)["parallel_leader_participation"] == "on"
    assert execution.workers_merged(3, None) == 2 and execution.workers_merged(3, 2) == 3


def test_an_averaging_epoch_of_n_counts_the_backend_as_one_of_them() -> None:
    """parallel => n: the backend and n - 1 parallel workers (a worker's start is paid once
    less per epoch); 0 and 1 are a serial scan, None the planner's choice."""
    assert execution.averaging_settings(None) == {}
    assert execution.averaging_settings(0) == execution.averaging_settings(1) == \
        execution.parallel_settings(0)
    three = execution.averaging_settings(3)
    assert three["max_parallel_workers_per_gather"] == "2"
    assert three["parallel_leader_participation"] == "on"
    packed = execution.Scan("t", packed=True)
    assert execution.epoch_settings(packed, 2, leader=True) == execution.averaging_settings(2)
    assert execution.epoch_settings(packed, 2) == execution.parallel_settings(2)


# --- the module docstring's worked example, as written there -----------------------------------

def _worked_example() -> dict:
    """The code block of ``bismarckpy.kinds``' docstring, run as written."""
    doc = kinds.__doc__ or ""
    block = doc.split("around the mean so far.", 1)[1].split("::\n", 1)[1]
    code = block.split("\nA kind that trains on rows only", 1)[0]
    namespace: dict = {}
    exec(textwrap.dedent(code), namespace)  # noqa: S102 (the project's own docstring)
    return namespace


def test_the_worked_example_of_the_protocol_trains_merges_and_predicts() -> None:
    mean = _worked_example()["KIND"]
    assert mean.packed  # the default path: packed blocks reach transition_block
    data = SimpleNamespace(d=2, itemsize=4)
    init = mean.initialize({}, data, None)
    ys = [1.0, 2.0, None, 6.0]
    left = right = None
    for y in ys[:2]:
        left = mean.transition(left, None, y, init)
    for y in ys[2:]:
        right = mean.transition(right, None, y, init)
    epoch = mean.decode(mean.finalize(mean.merge(left, right)))
    assert epoch.rows == 3 and epoch.model == pytest.approx(3.0)
    assert epoch.mean_loss == pytest.approx(epoch.loss_sum / 3)
    stored = mean.export({}, None, epoch.model)
    assert mean.predict(stored, np.zeros((2, 4))).tolist() == [3.0, 3.0]
    assert mean.merge(None, left) == left
    # the same labels in one packed block (rows 1: of it), as the default path reads them
    values = np.array([[9.0, 0.0, 0.0], [1.0, 1.0, 2.0], [2.0, 3.0, 4.0], [6.0, 5.0, 6.0]])
    block = pack.encode(values, "float32")
    packed = mean.decode(mean.transition_block(None, block, init, 1, None))
    assert packed.rows == 3 and packed.model == pytest.approx(3.0)
    serial = None
    for y in ys:
        serial = mean.transition(serial, None, y, init)
    assert packed.loss_sum == pytest.approx(mean.decode(serial).loss_sum)


def test_every_kind_refuses_a_state_over_the_limit():
    """The state-size limit holds for each kind whose state size is computable (54000)."""
    from bismarckpy import factorization, nn
    from bismarckpy.errors import TooLarge
    from bismarckpy.kinds import glm, softmax

    cases = [lambda: glm.initialize(10**8, loss="logistic"),
             lambda: softmax.initialize(10**6, list(range(50))),
             lambda: nn.initialize(10, hidden=[50_000, 50_000], classes=[0, 1]),
             lambda: factorization.check_params(100_000, 10**6, 10**6, alpha=0.0,
                                                alpha_bias=0.0, eta0=0.01, init_std=0.1)]
    for make in cases:
        with pytest.raises(TooLarge) as err:
            make()
        assert err.value.sqlstate == "54000" and "MiB" in err.value.detail


def test_every_builtin_kind_has_its_magic_in_the_table() -> None:
    """BUILTIN_MAGIC lets for_state import one kind; it must name every kind by its magic."""
    assert sorted(kinds.BUILTIN_MAGIC.values()) == sorted(kinds.BUILTIN)
    for kind in kinds.all():
        assert kinds.BUILTIN_MAGIC[kind.magic] == kind.name
        assert kinds.for_state(kind.magic + bytes(8)) is kind
    with pytest.raises(InvalidData, match="not a bismarck model state"):
        kinds.for_state(b"NOTAKIND" + bytes(8))
