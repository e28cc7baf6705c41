"""Averaged SGD in the GLM kernel (``average``): the model is the running mean of the iterates.

Pure functions, no database: every path that takes steps (per-tuple rows, per-row and
mini-batch packed blocks) gives the mean of the iterates the same steps produce without
averaging; merge weights the means by their iterates, whatever the order.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_glm import STRICT, make_data, start

from bismarckpy import pack
from bismarckpy.kinds import glm
from bismarckpy.losses import LOSSES


def _iterates(X, y, w, b, common: dict) -> list[tuple[np.ndarray, float]]:
    """The iterate after every step, from the same steps without averaging."""
    plain = glm.initialize(3, w=w, b=b, **common)
    state, out, k = None, [], common["batch_size"]
    for i in range(0, len(y), k):
        for row in range(i, min(i + k, len(y))):
            state = glm.transition(state, X[row], float(y[row]), plain)
        m = glm.decode(glm.finalize(state))  # flushes only the last, partial batch
        out.append((m.w, m.b))
    return out


def _epoch(X, y, init: bytes, path: str) -> glm.Model:
    """One epoch of ``init`` over the rows: one packed float64 block, or row by row."""
    if path == "block":
        state = glm.transition_block(None, pack.encode(np.column_stack([y, X]), "float64"), init)
    else:
        state = None
        for xi, yi in zip(X, y):
            state = glm.transition(state, xi, float(yi), init)
    return glm.decode(glm.finalize(state))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), k=st.integers(1, 6),
       loss=st.sampled_from(sorted(LOSSES)), path=st.sampled_from(["rows", "block"]))
def test_the_model_is_the_mean_of_the_iterates(seed, n, k, loss, path) -> None:
    X, y = make_data(loss, n=n, d=3, seed=seed)
    w, b = start(3, seed)
    common = dict(loss=loss, eta=0.2, batch_size=k, alpha=1e-3, l2=1.0, itemsize=8)
    with np.errstate(**STRICT):
        steps = _iterates(X, y, w, b, common)
        m = _epoch(X, y, glm.initialize(3, w=w, b=b, average=True, **common), path)
    np.testing.assert_allclose(m.w, sum(s[0] for s in steps) / len(steps), rtol=1e-9,
                               atol=1e-12)
    assert m.b == pytest.approx(sum(s[1] for s in steps) / len(steps), rel=1e-9, abs=1e-12)
    assert m.averaged == len(steps)
    np.testing.assert_allclose(m.w_step, steps[-1][0], rtol=1e-9, atol=1e-12)  # steps go on
    assert m.b_step == pytest.approx(steps[-1][1], rel=1e-9, abs=1e-12)     # from the iterate


def test_without_average_the_model_is_the_last_iterate() -> None:
    X, y = make_data("logistic", n=20, d=3, seed=2)
    w, b = start(3)
    common = dict(loss="logistic", eta=0.2, batch_size=4)
    state = None
    for xi, yi in zip(X, y):
        state = glm.transition(state, xi, float(yi), glm.initialize(3, w=w, b=b, **common))
    m = glm.decode(glm.finalize(state))
    last = _iterates(X, y, w, b, common)[-1]
    np.testing.assert_array_equal(m.w, last[0])
    assert m.averaged == 0 and m.w_step is None


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), na=st.integers(1, 20), nb=st.integers(1, 20))
def test_merge_weights_the_means_by_their_iterates_in_any_order(seed, na, nb) -> None:
    X, y = make_data("squared", n=na + nb, d=3, seed=seed)
    w, b = start(3, seed)
    init = glm.initialize(3, loss="squared", eta=0.1, batch_size=2, w=w, b=b, average=True)
    parts = []
    for lo, hi in ((0, na), (na, na + nb)):
        state = None
        for xi, yi in zip(X[lo:hi], y[lo:hi]):
            state = glm.transition(state, xi, float(yi), init)
        parts.append(glm.finalize(state))
    ma, mb = glm.decode(parts[0]), glm.decode(parts[1])
    ab, ba = glm.decode(glm.merge(parts[0], parts[1])), glm.decode(glm.merge(parts[1], parts[0]))
    want = (ma.averaged * ma.w + mb.averaged * mb.w) / (ma.averaged + mb.averaged)
    np.testing.assert_allclose(ab.w, want, rtol=1e-12)
    np.testing.assert_allclose(ba.w, ab.w, rtol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 30), k=st.integers(1, 4),
       skip=st.integers(0, 12), path=st.sampled_from(["rows", "block"]))
def test_only_steps_past_average_from_enter_the_mean(seed, n, k, skip, path) -> None:
    """The first epoch averages only its second half (``average_from``, a step count): the
    steps that bring t up to it are left out, whichever path takes them."""
    X, y = make_data("logistic", n=n, d=3, seed=seed)
    w, b = start(3, seed)
    common = dict(loss="logistic", eta=0.3, batch_size=k, itemsize=8)
    with np.errstate(**STRICT):
        steps = _iterates(X, y, w, b, common)
        init = glm.initialize(3, w=w, b=b, average=True, average_from=float(skip), **common)
        m = _epoch(X, y, init, path)
    kept = steps[skip:]
    if not kept:  # no step past it: the model is the last iterate, not a mean
        assert m.averaged == 0 and m.w_step is None
        np.testing.assert_allclose(m.w, steps[-1][0], rtol=1e-9, atol=1e-12)
        return
    assert m.averaged == len(kept)
    np.testing.assert_allclose(m.w, sum(s[0] for s in kept) / len(kept), rtol=1e-9, atol=1e-12)



@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 30), k=st.integers(1, 4),
       path=st.sampled_from(["rows", "block"]))
def test_the_first_epochs_mean_weighs_the_kth_iterate_about_k_cubed(seed, n, k, path) -> None:
    """``average_decay`` 3 (the first epoch's): unrolled, the k-th of the iterates weighs
    k(k+1)(k+2), polynomial-decay averaging (Shamir & Zhang 2013), on every step path."""
    X, y = make_data("logistic", n=n, d=3, seed=seed)
    w, b = start(3, seed)
    common = dict(loss="logistic", eta=0.3, batch_size=k, itemsize=8)
    with np.errstate(**STRICT):
        steps = _iterates(X, y, w, b, common)
        init = glm.initialize(3, w=w, b=b, average=True, average_decay=3.0, **common)
        m = _epoch(X, y, init, path)
    ks = np.arange(1, len(steps) + 1)
    weights = ks * (ks + 1) * (ks + 2)
    want = weights @ np.array([s[0] for s in steps]) / weights.sum()
    np.testing.assert_allclose(m.w, want, rtol=1e-9, atol=1e-12)
    assert glm.FIRST_EPOCH_DECAY == 3.0


def test_merging_three_means_weighs_each_by_its_iterates() -> None:
    """Pairwise merges (parallel workers, partitions) of three averaged states give the mean
    weighted by each one's iterates, whatever the pairing."""
    X, y = make_data("squared", n=30, d=3, seed=5)
    w, b = start(3, 5)
    init = glm.initialize(3, loss="squared", eta=0.1, batch_size=1, w=w, b=b, average=True)
    parts = []
    for lo, hi in ((0, 4), (4, 13), (13, 30)):
        state = None
        for xi, yi in zip(X[lo:hi], y[lo:hi]):
            state = glm.transition(state, xi, float(yi), init)
        parts.append(glm.finalize(state))
    ms = [glm.decode(p) for p in parts]
    want = sum(m.averaged * m.w for m in ms) / sum(m.averaged for m in ms)
    left = glm.decode(glm.merge(glm.merge(parts[0], parts[1]), parts[2]))
    right = glm.decode(glm.merge(parts[0], glm.merge(parts[1], parts[2])))
    np.testing.assert_allclose(left.w, want, rtol=1e-12)
    np.testing.assert_allclose(right.w, want, rtol=1e-12)
