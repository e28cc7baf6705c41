"""Loss functions without a database: derivatives, numerical stability, scalar/vector agreement.

The references below are written independently of :mod:`bismarckpy.losses` (plain ``math``), and
every derivative is checked against central finite differences of the loss itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bismarckpy.kinds import glm
from bismarckpy.losses import CLASSIFIERS, LOSSES, hinge, logistic, sigmoid, squared

# Catch overflow, division by zero and invalid operations. Underflow is not an error: exp(-1000)
# rounding to 0.0 is the correctly rounded result, and numpy's own default ignores it.
STRICT = {"all": "raise", "under": "ignore"}

LABELS = {"logistic": (0.0, 1.0), "squared": None, "hinge": (-1.0, 1.0)}


# --- tiny reference implementations -------------------------------------------------------------

def ref_logistic(z: float, y: float) -> float:
    """-log p(y | z) for y in {0, 1}, for moderate z only (no stability tricks)."""
    return math.log(1.0 + math.exp(z)) - y * z


def ref_squared(z: float, y: float) -> float:
    return 0.5 * (z - y) ** 2


def ref_hinge(z: float, y: float) -> float:
    return max(0.0, 1.0 - y * z)


REFS = {"logistic": ref_logistic, "squared": ref_squared, "hinge": ref_hinge}


def labels(loss: str) -> st.SearchStrategy[float]:
    """Encoded labels a loss accepts: 0/1, -1/+1 or any real number."""
    if LABELS[loss] is None:
        return st.floats(-20.0, 20.0, allow_nan=False)
    return st.sampled_from(LABELS[loss])


def one(fn, z: float, y: float) -> tuple[float, float]:
    """Evaluate a vectorised loss at a single point."""
    lv, dz = fn(np.array([z]), np.array([y]))
    return float(lv[0]), float(dz[0])


# --- tests --------------------------------------------------------------------------------------

def test_registry() -> None:
    assert set(LOSSES) == {"logistic", "squared", "hinge"}
    assert set(CLASSIFIERS) == {"logistic", "hinge"}
    assert set(glm.LOSS_CODES) == set(LOSSES)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@settings(max_examples=60, deadline=None)
@given(data=st.data(), z=st.floats(-30.0, 30.0, allow_nan=False))
def test_loss_value_matches_reference(loss: str, data: st.DataObject, z: float) -> None:
    y = data.draw(labels(loss))
    lv, _ = one(LOSSES[loss], z, y)
    assert lv == pytest.approx(REFS[loss](z, y), rel=1e-12, abs=1e-12)
    assert lv >= 0.0


@pytest.mark.parametrize("loss", sorted(LOSSES))
@settings(max_examples=80, deadline=None)
@given(data=st.data(), z=st.floats(-30.0, 30.0, allow_nan=False))
def test_derivative_matches_central_differences(loss: str, data: st.DataObject, z: float) -> None:
    y = data.draw(labels(loss))
    h = 1e-6
    if loss == "hinge" and abs(1.0 - y * z) <= 10 * h:
        z += 1.0  # keep the finite difference away from the kink
    fn = LOSSES[loss]
    with np.errstate(**STRICT):
        _, dz = one(fn, z, y)
        fd = (one(fn, z + h, y)[0] - one(fn, z - h, y)[0]) / (2 * h)
    assert dz == pytest.approx(fd, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_vectorised_over_many_rows(loss: str) -> None:
    rng = np.random.default_rng(7)
    z = rng.normal(scale=3.0, size=200)
    y = rng.choice(LABELS[loss], size=200) if LABELS[loss] else rng.normal(size=200)
    with np.errstate(**STRICT):
        lv, dz = LOSSES[loss](z, y)
    assert lv.shape == dz.shape == (200,)
    expected = [REFS[loss](float(a), float(b)) for a, b in zip(z, y)]
    np.testing.assert_allclose(lv, expected, rtol=1e-12, atol=1e-12)


def test_logistic_is_stable_at_extreme_margins() -> None:
    z = np.array([-1000.0, -1000.0, -745.0, 0.0, 745.0, 1000.0, 1000.0, 1e300, -1e300])
    y = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    with np.errstate(**STRICT):
        lv, dz = logistic(z, y)
        p = sigmoid(z)
    assert np.isfinite(lv).all() and np.isfinite(dz).all() and np.isfinite(p).all()
    # Exact values: a confident right answer costs 0, a confident wrong one costs |z|.
    assert lv[0] == 0.0 and dz[0] == 0.0
    assert lv[1] == 1000.0 and dz[1] == -1.0
    assert lv[2] == pytest.approx(745.0)
    assert lv[3] == pytest.approx(math.log(2.0)) and dz[3] == -0.5
    assert lv[5] == 1000.0 and dz[5] == 1.0
    assert lv[6] == 0.0 and dz[6] == 0.0
    assert lv[7] == 0.0 and lv[8] == 0.0
    np.testing.assert_array_equal(p[[0, 5, 6]], [0.0, 1.0, 1.0])


@settings(max_examples=60, deadline=None)
@given(z=st.floats(-700.0, 700.0, allow_nan=False))
def test_sigmoid_is_symmetric_and_bounded(z: float) -> None:
    with np.errstate(**STRICT):
        p, q = float(sigmoid(z)[0]), float(sigmoid(-z)[0])
    assert 0.0 <= p <= 1.0
    # sigmoid(z) = exp(z - softplus(z)), softplus(z) = max(z, 0) + log1p(exp(-|z|)). Rounding
    # max(z, 0) + log1p(...) to float64 moves it by up to half an ulp of |z|, and exp turns that
    # absolute error in its argument into the same relative error in the larger of p and q
    # (~1); exp and the sum p + q round once more each. So |p + q - 1| <= ulp(z)/2 + 2 ulp(1):
    # 3.6e-15 at |z| = 32, 1.1e-13 at |z| = 700.
    assert abs(p + q - 1.0) <= 0.5 * math.ulp(z) + 2 * math.ulp(1.0)
    if abs(z) < 30:
        # The same half ulp of |z| as a relative error, plus the reference's own rounding.
        ref = 1.0 / (1.0 + math.exp(-z))
        assert abs(p - ref) <= (0.5 * math.ulp(z) + 4 * math.ulp(1.0)) * ref


def test_sigmoid_accepts_scalars_and_arrays() -> None:
    assert sigmoid(0.0).tolist() == [0.5]
    assert sigmoid(np.zeros((2,))).tolist() == [0.5, 0.5]


def test_hinge_kink_and_flat_region() -> None:
    z = np.array([1.0, -1.0, np.nextafter(1.0, 0.0), 2.0, 0.0, -3.0])
    y = np.array([1.0, -1.0, 1.0, 1.0, -1.0, 1.0])
    lv, dz = hinge(z, y)
    np.testing.assert_array_equal(lv, [0.0, 0.0, 1.0 - np.nextafter(1.0, 0.0), 0.0, 1.0, 4.0])
    np.testing.assert_array_equal(dz, [0.0, 0.0, -1.0, 0.0, 1.0, -1.0])


def test_squared_is_half_the_squared_error() -> None:
    lv, dz = squared(np.array([3.0]), np.array([1.0]))
    assert lv.tolist() == [2.0] and dz.tolist() == [2.0]


MARGINS = st.one_of(
    st.floats(-50.0, 50.0, allow_nan=False),
    st.sampled_from([-1000.0, -745.0, -1.0, -0.0, 0.0, 1.0, 745.0, 1000.0,
                     np.nextafter(1.0, 0.0), np.nextafter(1.0, 2.0),
                     np.nextafter(-1.0, 0.0), np.nextafter(-1.0, -2.0)]),
)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@settings(max_examples=150, deadline=None)
@given(data=st.data(), z=MARGINS)
def test_scalar_loss_agrees_with_vectorised(loss: str, data: st.DataObject, z: float) -> None:
    y = data.draw(labels(loss))
    with np.errstate(**STRICT):
        lv, dz = one(LOSSES[loss], z, y)
    sl, sdz = glm._scalar_loss(glm.LOSS_CODES[loss], z, y)
    assert math.isfinite(sl) and math.isfinite(sdz)
    assert sl == pytest.approx(lv, rel=1e-12, abs=1e-12)
    assert sdz == pytest.approx(dz, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(("z", "y", "expected"), [
    (1.0, 1.0, (0.0, 0.0)),  # exactly on the kink: no loss, zero subgradient
    (-1.0, -1.0, (0.0, 0.0)),
    (0.5, 1.0, (0.5, -1.0)),
    (0.5, -1.0, (1.5, 1.0)),
    (5.0, 1.0, (0.0, 0.0)),
])
def test_scalar_hinge_kink(z: float, y: float, expected: tuple[float, float]) -> None:
    code = glm.LOSS_CODES["hinge"]
    assert glm._scalar_loss(code, z, y) == expected
    assert one(hinge, z, y) == expected


@pytest.mark.parametrize(("z", "y", "expected"), [
    (1000.0, 0.0, (1000.0, 1.0)),
    (1000.0, 1.0, (0.0, 0.0)),
    (-1000.0, 1.0, (1000.0, -1.0)),
    (-1000.0, 0.0, (0.0, 0.0)),
])
def test_scalar_logistic_extremes(z: float, y: float, expected: tuple[float, float]) -> None:
    assert glm._scalar_loss(glm.LOSS_CODES["logistic"], z, y) == expected
