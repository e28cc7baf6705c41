"""The MLP as a model kind, without a database: parameters, epochs as the loop drives them,
the stored form and predictions from it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bismarckpy import kinds, nn
from bismarckpy.errors import InvalidData, InvalidParameter
from bismarckpy.kinds import mlp
from bismarckpy.params import validate


def _params(**kw):
    return validate(kw, where="train_mlp", params=mlp.KIND.params)


def _data(X, classes=None, y_mean=0.0, y_sd=1.0):
    sd = X.std(0)
    return SimpleNamespace(d=X.shape[1], mu=X.mean(0), sd=np.where(sd > 0, sd, np.inf),
                           itemsize=8, classes=classes, y_mean=y_mean, y_sd=y_sd)


def test_registered_and_found_by_its_states():
    assert kinds.get("mlp") is mlp.KIND
    s = nn.initialize(2, hidden=[2], classes=[0, 1])
    assert kinds.for_state(s) is mlp.KIND
    assert kinds.for_state(mlp.KIND.magic + b"\0" * 8) is mlp.KIND


@pytest.mark.parametrize("value", [[64, 32], (3,), "64, 32", "{8,4}", [], 5])
def test_hidden_is_parsed(value):
    out = _params(hidden=value)["hidden"]
    assert all(isinstance(h, int) and h >= 1 for h in out)


@pytest.mark.parametrize("value", [[0], [64, 0], [-1], [2.5], ["x"], "a,b", [True], [10**6]])
def test_bad_hidden_is_refused(value):
    with pytest.raises(InvalidParameter, match="'hidden'") as err:
        _params(hidden=value)
    assert "integers" in str(err.value)


def test_defaults_are_scikit_learns():
    p = _params()
    assert (p["hidden"], p["activation"], p["solver"], p["learning_rate_init"], p["alpha"],
            p["batch_size"], p["beta_1"], p["beta_2"], p["epsilon"], p["momentum"],
            p["tol"], p["n_iter_no_change"], p["validation_fraction"]) == (
        (100,), "relu", "adam", 0.001, 0.0001, 200, 0.9, 0.999, 1e-8, 0.9, 0.0001, 10, 0.1)
    assert "eta0" not in p


def test_epochs_carry_the_optimiser_and_export_predicts():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] * X[:, 1] > 0).astype(float) + (X[:, 2] > 1)  # classes 0, 1, 2
    p = _params(hidden=[16], seed=5, batch_size=32, learning_rate_init=0.01)
    data = _data(X, classes=[0.0, 1.0, 2.0])
    model, losses = None, []
    for _ in range(30):
        init = mlp.KIND.initialize(p, data, model, eta=p["learning_rate_init"])
        e = mlp.KIND.decode(nn.finalize(nn.transition_arrays(init, X, y)))
        losses.append(e.mean_loss)
        model = e.model
    assert losses[-1] < 0.5 * losses[0]
    assert mlp.KIND.decode(model).t == 30 * np.ceil(300 / 32)  # Adam's t carried on
    ev = mlp.KIND.decode(nn.finalize(nn.transition_arrays(
        mlp.KIND.initialize(p, data, model, evaluate=True), X, y)))
    np.testing.assert_array_equal(nn.params_of(ev.model), nn.params_of(model))
    stored = mlp.KIND.export(p, data, model)
    assert stored.kind == "mlp" and stored.model["sizes"] == [4, 16, 3]
    np.testing.assert_array_equal(mlp.KIND.predict(stored, X), nn.predict(model, X))
    np.testing.assert_allclose(mlp.predict_proba(stored, X), nn.predict_proba(model, X))
    assert (mlp.KIND.predict(stored, X) == y).mean() > 0.85
    with pytest.raises(InvalidData, match="wrong length"):
        mlp.KIND.predict(stored, X[:, :3])


def test_regression_predicts_in_label_units():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    y = 1000.0 + 50.0 * np.tanh(X @ [1.0, -2.0, 0.5])
    p = _params(task="regression", hidden=[8], seed=1, learning_rate_init=0.01, batch_size=20)
    data = _data(X, y_mean=float(y.mean()), y_sd=float(y.std()))
    model = None
    for _ in range(60):
        init = mlp.KIND.initialize(p, data, model, eta=p["learning_rate_init"])
        model = mlp.KIND.decode(nn.finalize(nn.transition_arrays(init, X, y))).model
    pred = mlp.KIND.predict(mlp.KIND.export(p, data, model), X)
    assert 1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum() > 0.9
