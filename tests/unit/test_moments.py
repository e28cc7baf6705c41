"""Feature moments (Welford rows, Chan merge) against numpy, over random partitions and orders."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bismarckpy import moments, pack

STRICT = {"all": "raise", "under": "ignore"}


def fold(rows) -> bytes | None:
    state = None
    for x in rows:
        state = moments.transition(state, None if x is None else list(x))
    return state


def nmv(m: moments.Moments) -> tuple[int, np.ndarray, np.ndarray]:
    return m.n, m.mean, m.var


def matrices() -> st.SearchStrategy[np.ndarray]:
    return st.tuples(st.integers(1, 40), st.integers(1, 4)).flatmap(
        lambda shape: hnp.arrays(np.float64, shape,
                                 elements=st.floats(-1e3, 1e3, allow_nan=False)))


def check(state: bytes, X: np.ndarray) -> None:
    n, mean, var = nmv(moments.decode(state))
    scale = 1.0 + np.abs(X).max()
    assert n == len(X)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-9, atol=1e-12 * scale)
    np.testing.assert_allclose(var, X.var(axis=0), rtol=1e-8, atol=1e-12 * scale**2)
    assert (var >= 0).all()


@settings(max_examples=80, deadline=None)
@given(X=matrices(), data=st.data())
def test_partitions_merged_in_any_order_match_numpy(X: np.ndarray, data: st.DataObject) -> None:
    n = len(X)
    parts = data.draw(st.integers(1, min(n, 6)), label="parts")
    edges = sorted(data.draw(st.lists(st.integers(1, n - 1), min_size=parts - 1,
                                      max_size=parts - 1, unique=True), label="edges")
                   ) if n > 1 else []
    bounds = [0, *edges, n]
    states = [fold(X[bounds[i]:bounds[i + 1]]) for i in range(len(bounds) - 1)]
    states += [None] * data.draw(st.integers(0, 2), label="empty partitions")
    # Merge random pairs (random tree shape and argument order) until one state is left.
    with np.errstate(**STRICT):
        while len(states) > 1:
            i = data.draw(st.integers(0, len(states) - 1))
            a = states.pop(i)
            j = data.draw(st.integers(0, len(states) - 1))
            b = states.pop(j)
            states.append(moments.merge(a, b))
    check(states[0], X)


@settings(max_examples=40, deadline=None)
@given(X=matrices())
def test_single_pass_matches_numpy(X: np.ndarray) -> None:
    with np.errstate(**STRICT):
        check(fold(X), X)


def test_large_offset_keeps_precision() -> None:
    rng = np.random.default_rng(0)
    X = 1e9 + rng.normal(size=(500, 2))  # a naive sum of squares would lose all digits here
    state = moments.merge(fold(X[:123]), fold(X[123:]))
    n, mean, var = nmv(moments.decode(state))
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(var, X.var(axis=0), rtol=1e-6)


def test_null_rows_and_none_states() -> None:
    s = fold([[1.0, 2.0], None, [3.0, 6.0]])
    n, mean, var = nmv(moments.decode(s))
    assert n == 2 and mean.tolist() == [2.0, 4.0] and var.tolist() == [1.0, 4.0]
    assert moments.transition(None, None) is None
    assert moments.merge(None, None) is None
    assert moments.merge(s, None) == s and moments.merge(None, s) == s


def test_single_row_has_zero_variance() -> None:
    n, mean, var = nmv(moments.decode(fold([[5.0, -1.0, 0.0]])))
    assert n == 1 and mean.tolist() == [5.0, -1.0, 0.0] and var.tolist() == [0.0, 0.0, 0.0]


def test_merge_does_not_mutate_inputs() -> None:
    a, b = fold([[1.0], [2.0]]), fold([[10.0]])
    a0, b0 = bytes(a), bytes(b)
    n, mean, _ = nmv(moments.decode(moments.merge(a, b)))
    assert (n, mean.tolist()) == (3, [pytest.approx(13.0 / 3)])
    assert a == a0 and b == b0


# --- packed blocks, offsets, overflow, constant columns ---------------------------------------

def block_state(X: np.ndarray, dtype: str, size: int = 7) -> bytes | None:
    """Moments of X (column 0 plays the label) read through packed blocks of ``size`` rows."""
    state = None
    for start in range(0, len(X), size):
        block = pack.encode(X[start:start + size], dtype)
        state = moments.transition_block(state, block, X.shape[1] - 1, pack.DTYPE_CODES[dtype])
    return state


@settings(max_examples=60, deadline=None)
@given(offset=st.sampled_from([0.0, 1e3, 1e6, 1e8, 1e10, 1e12, -1e12]),
       spread=st.sampled_from([1e-3, 1.0, 4.0, 1e3]), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(["float32", "float64"]))
def test_blocks_keep_precision_whatever_the_offset(offset, spread, seed, dtype) -> None:
    """Moments through blocks equal numpy's to the dtype's precision of the spread, not of
    the offset (float32 has 7 digits: 1e8 + r kept to 1e-7 of r, not to 8 units)."""
    rng = np.random.default_rng(seed)
    X = offset + spread * rng.random((50, 3))
    m = moments.decode(block_state(X, dtype))
    eps = np.finfo(dtype).eps
    exact = X - offset  # the spread, computed exactly enough in float64
    np.testing.assert_allclose(m.mean - offset, exact.mean(axis=0),
                               atol=8 * eps * spread + 8e-16 * abs(offset))
    np.testing.assert_allclose(m.sd, exact.std(axis=0), rtol=16 * eps,
                               atol=8e-16 * abs(offset))
    assert (m.lo <= X.min(axis=0) + 8 * eps * spread + 8e-16 * abs(offset)).all()
    if spread > 1e4 * np.spacing(abs(offset)):  # more than a few last bits of the offset
        assert not m.constant.any()


@pytest.mark.parametrize("scale", [1e150, 1e200, 1e300, 1e307])
@pytest.mark.parametrize("path", ["rows", "float64 blocks"])
def test_no_overflow_where_squares_would(scale: float, path: str) -> None:
    rng = np.random.default_rng(1)
    U = rng.normal(size=(40, 2))
    X = scale * U / np.abs(U).max()
    state = fold(X) if path == "rows" else block_state(X, "float64")
    m = moments.decode(state)
    np.testing.assert_allclose(m.mean / scale, (X / scale).mean(axis=0), atol=1e-14)
    np.testing.assert_allclose(m.sd / scale, (X / scale).std(axis=0), rtol=1e-12)
    assert np.isfinite(m.rms).all()


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(st.floats(-1e300, 1e300, allow_nan=False),
                       st.sampled_from([14.62, 0.1, -7.3, 1e8 + 0.3, 123456789.123, 1e-300])),
       n=st.integers(1, 60), path=st.sampled_from(["rows", "float32", "float64"]))
def test_a_constant_column_is_recognised_on_every_path(value: float, n: int, path: str) -> None:
    """Zero variance is exact for a constant column, whatever its value, on every path."""
    if path == "float32" and abs(value) > pack.FLOAT32_SAFE:
        return
    X = np.column_stack([np.linspace(0, 1, n), np.full(n, value), np.linspace(-5, 5, n)])
    state = fold(X) if path == "rows" else block_state(X, path)
    m = moments.decode(state)
    assert m.constant.tolist() == [n == 1, True, n == 1]
    assert m.sd[1] == 0.0


@pytest.mark.parametrize("value", [14.62, 1e8 + 0.3, -3.0e12, 1.0])
def test_spread_of_last_bits_is_constant_but_real_spread_is_not(value: float) -> None:
    ulps = np.array([value, np.nextafter(value, np.inf), np.nextafter(value, -np.inf)] * 5)
    assert moments.decode(fold(ulps[:, None])).constant.tolist() == [True]
    real = value + abs(value) * 1e-12 * np.arange(15.0)
    assert moments.decode(fold(real[:, None])).constant.tolist() == [False]
