"""Feature moments (Welford rows, Chan merge) against numpy, over random partitions and orders."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bismarckpy import moments

STRICT = {"all": "raise", "under": "ignore"}


def fold(rows) -> bytes | None:
    state = None
    for x in rows:
        state = moments.transition(state, None if x is None else list(x))
    return state


def matrices() -> st.SearchStrategy[np.ndarray]:
    return st.tuples(st.integers(1, 40), st.integers(1, 4)).flatmap(
        lambda shape: hnp.arrays(np.float64, shape,
                                 elements=st.floats(-1e3, 1e3, allow_nan=False)))


def check(state: bytes, X: np.ndarray) -> None:
    n, mean, var = moments.decode(state)
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
    n, mean, var = moments.decode(state)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(var, X.var(axis=0), rtol=1e-6)


def test_null_rows_and_none_states() -> None:
    s = fold([[1.0, 2.0], None, [3.0, 6.0]])
    n, mean, var = moments.decode(s)
    assert n == 2 and mean.tolist() == [2.0, 4.0] and var.tolist() == [1.0, 4.0]
    assert moments.transition(None, None) is None
    assert moments.merge(None, None) is None
    assert moments.merge(s, None) == s and moments.merge(None, s) == s


def test_single_row_has_zero_variance() -> None:
    n, mean, var = moments.decode(fold([[5.0, -1.0, 0.0]]))
    assert n == 1 and mean.tolist() == [5.0, -1.0, 0.0] and var.tolist() == [0.0, 0.0, 0.0]


def test_merge_does_not_mutate_inputs() -> None:
    a, b = fold([[1.0], [2.0]]), fold([[10.0]])
    a0, b0 = bytes(a), bytes(b)
    n, mean, _ = moments.decode(moments.merge(a, b))
    assert (n, mean.tolist()) == (3, [pytest.approx(13.0 / 3)])
    assert a == a0 and b == b0
