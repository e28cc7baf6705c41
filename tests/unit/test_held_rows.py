"""The store of validation rows a training pass without a copy keeps (bismarckpy.heldrows),
and the in-memory validation pass over them (blockscan.held_evaluate), without a database:
the same blocks as the SQL pass's per-group assembly, or nothing when the store cannot stand
in for that pass."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bismarckpy import blockscan, heldrows
from bismarckpy.kinds import glm

ROLE = 10


def _groups(seed: int, sizes: list[int], fraction: float, d: int = 3):
    rng = np.random.default_rng(seed)
    out = []
    for g, n in enumerate(sizes):
        X, y = rng.normal(size=(n, d)), (rng.random(n) < 0.5).astype(float)
        out.append((g, X, y, blockscan.held_count(7, g, n, fraction)))
    return out


def _train_pass(groups, order) -> None:
    """What a training pass keeps: each group's held rows, groups in ``order``."""
    for i in order:
        g, X, y, h = groups[i]
        if h:
            heldrows.keep(7, g, X, y, blockscan.held_positions(7, g, len(y), h))


def _sql_pass(groups, kernel, init) -> bytes | None:
    """The SQL validation pass's blocks, assembled as blockscan.epoch_step does per group."""
    state = None
    held = [(g, X, y, h) for g, X, y, h in groups if h]
    for start in range(0, len(held), blockscan.BUFFER_BLOCKS):
        chunk = held[start:start + blockscan.BUFFER_BLOCKS]
        counts = [len(y) for _, _, y, _ in chunk]
        holds = [h for *_, h in chunk]
        gs = []
        for g, X, y, _ in chunk:
            gs.append(g)
            state = blockscan.epoch_step(kernel, state, _bytes(X), _bytes(y), list(gs), counts,
                                         holds, blockscan.VALID, 7, None, init)
    return state


def _bytes(a: np.ndarray) -> bytes:
    """A float8[]'s in-memory form as bismarck._float8_array_bytes gives it (no varlena
    length): ndim, data offset, element type, dims, lower bounds, values."""
    a = np.ascontiguousarray(a, dtype="<f8")
    head = np.array([a.ndim, 0, 701] + list(a.shape) + [1] * a.ndim, dtype="<i4").tobytes()
    pad = (-(len(head) + 4)) % 8
    return head + b"\0" * pad + a.tobytes()


def _init() -> bytes:
    return glm.initialize(3, loss="logistic", batch_size=glm.EVALUATE,
                          w=np.array([0.3, -0.2, 0.1]), b=0.1,
                          y_coding=(glm.Y_CLASS01, 1.0, 0.0, 1.0))


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=30),
       fraction=st.sampled_from([0.05, 0.1, 0.3]), seed=st.integers(0, 2**16),
       shuffle=st.integers(0, 2**16))
def test_the_kept_rows_give_the_sql_pass_bit_for_bit(sizes, fraction, seed, shuffle) -> None:
    groups = _groups(seed, sizes, fraction)
    holds = np.array([h for *_, h in groups])
    kernel, finalize = glm.transition_block, glm.finalize
    init = _init()
    heldrows.clear(ROLE)
    _train_pass(groups, np.random.default_rng(shuffle).permutation(len(groups)))
    got = blockscan.held_evaluate(kernel, finalize, init, list(holds), 7, ROLE)
    want = _sql_pass(groups, kernel, init)
    if not holds.any():
        assert got is None  # nothing kept: the SQL pass runs (and reads nothing)
        return
    assert got == finalize(want)


def test_a_large_validation_set_is_kept_in_float32() -> None:
    groups = _groups(5, [200, 300, 100], 0.2)
    holds = [h for *_, h in groups]
    heldrows.clear(ROLE, rows=10**8, width=3)
    _train_pass(groups, [1, 2, 0])
    assert heldrows._store.dtype is np.float32
    got = heldrows.take(ROLE, 7, np.array(holds))
    assert got is not None and all(X.dtype == np.float32 for X, _ in got)
    for (X, y), (g, X0, y0, h) in zip(got, groups):
        rows = blockscan.held_positions(7, g, len(y0), h)
        np.testing.assert_array_equal(X, X0[rows].astype(np.float32))
        np.testing.assert_array_equal(y, y0[rows])


def test_the_store_serves_once_and_only_its_role_and_split() -> None:
    groups = _groups(1, [50, 60, 70], 0.2)
    holds = [h for *_, h in groups]
    for role, seed, fill in [(ROLE, 7, True), (ROLE + 1, 7, True), (ROLE, 8, True),
                             (ROLE, 7, False)]:
        heldrows.clear(ROLE)
        if fill:
            _train_pass(groups, [2, 0, 1])
        got = heldrows.take(role, seed, np.array(holds))
        assert (got is not None) == (role == ROLE and seed == 7 and fill)
    assert heldrows.take(ROLE, 7, np.array(holds)) is None  # taken: empty


def test_a_missing_group_or_a_short_group_means_the_sql_pass() -> None:
    groups = _groups(2, [50, 60, 70], 0.2)
    holds = np.array([h for *_, h in groups])
    heldrows.clear(ROLE)
    _train_pass(groups, [0, 1])  # group 2 not read (e.g. all its rows held out)
    assert heldrows.take(ROLE, 7, holds) is None
    heldrows.clear(ROLE)
    _train_pass(groups, [0, 1, 2])
    assert heldrows.take(ROLE, 7, holds + np.array([0, 0, 1])) is None
    heldrows.clear(ROLE)
    _train_pass(groups, [0, 1, 2, 1])  # a group twice: not one pass
    assert heldrows.take(ROLE, 7, holds) is None


def test_nothing_is_kept_before_a_clear_or_beyond_the_cap(monkeypatch) -> None:
    groups = _groups(3, [100, 100], 0.3)
    holds = np.array([h for *_, h in groups])
    heldrows.take(ROLE, 7, holds)  # empties whatever an earlier test left
    _train_pass(groups, [0, 1])
    assert heldrows.take(ROLE, 7, holds) is None
    monkeypatch.setattr(heldrows, "MAX_BYTES", int(holds[0]) * 8 * 4 + 8)
    heldrows.clear(ROLE)
    _train_pass(groups, [0, 1])
    assert heldrows._store.full and not heldrows._store.groups
    assert heldrows.take(ROLE, 7, holds) is None


def test_rows_that_are_not_finite_are_refused_as_a_changed_table() -> None:
    groups = _groups(4, [80], 0.3)
    g, X, y, h = groups[0]
    X[blockscan.held_positions(7, g, len(y), h)[0], 1] = np.nan
    heldrows.clear(ROLE)
    _train_pass(groups, [0])
    with pytest.raises(blockscan.InvalidData, match="changed"):
        blockscan.held_evaluate(glm.transition_block, glm.finalize, _init(), [h], 7, ROLE)
