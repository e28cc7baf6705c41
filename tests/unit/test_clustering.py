"""The page groups' analysis of variance (bismarckpy.clustering), without a database."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import f_oneway

from bismarckpy import blockscan, clustering, moments


def _ratios(groups: list[np.ndarray]) -> np.ndarray:
    """``order_ratios`` as preparation sums it: each group's moments and collapsed moments
    merged in turn (label first)."""
    width = groups[0].shape[1]
    total = moments._new(width)  # noqa: SLF001
    between = moments._new(width)  # noqa: SLF001
    for g in groups:
        part = moments.of_rows(g)
        total = moments._merge_into(total, part)  # noqa: SLF001
        between = moments._merge_into(between, moments.collapsed(part))  # noqa: SLF001
    return clustering.order_ratios(moments.decode(total.tobytes()),
                                   moments.decode(between.tobytes()), len(groups))


@given(st.integers(2, 12), st.integers(3, 40), st.floats(-1e6, 1e6), st.floats(0.0, 3.0),
       st.integers(0, 2**31))
def test_the_ratio_is_the_one_way_analysis_of_variance(k: int, size: int, offset: float,
                                                       shift: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = [offset + rng.normal(size=(size + rng.integers(0, 5), 2))
              + shift * rng.normal(size=2) for _ in range(k)]
    got = _ratios(groups)
    for c in range(2):
        want = f_oneway(*[g[:, c] for g in groups]).statistic
        assert got[c] == np.float64(want) or abs(got[c] - want) <= 1e-6 * max(1.0, want)


def test_rows_in_random_order_are_not_clustered_and_rows_in_label_order_are() -> None:
    rng = np.random.default_rng(3)
    n, size = 40_000, 128
    y = (rng.random(n) < 0.02).astype(float)
    x = rng.normal(size=n) + y
    for seed in range(20):  # random order: F near 1, never flagged
        order = np.random.default_rng(seed).permutation(n)
        rows = np.column_stack([y[order], x[order]])
        groups = [rows[i:i + size] for i in range(0, n, size)]
        r = _ratios(groups)
        assert clustering.label_clustered(r, len(groups)) is None, r
        assert 0.5 < r[0] < 1.5, r
    order = np.argsort(y, kind="stable")  # the positives stored last
    rows = np.column_stack([y[order], x[order]])
    groups = [rows[i:i + size] for i in range(0, n, size)]
    f = clustering.label_clustered(_ratios(groups), len(groups))
    assert f is not None and f > 1000
    # features clustered alone are not judged: sorted by x, F on x is huge, on y moderate
    order = np.argsort(x, kind="stable")
    rows = np.column_stack([rng.permutation(y), x[order]])
    groups = [rows[i:i + size] for i in range(0, n, size)]
    r = _ratios(groups)
    assert r[1] > 1000 and clustering.label_clustered(r, len(groups)) is None


def test_constant_columns_and_single_groups_tell_nothing() -> None:
    rows = np.column_stack([np.ones(300), np.arange(300.0)])
    r = _ratios([rows[:100], rows[100:200], rows[200:]])
    assert r[0] == 0.0 and r[1] > 0
    assert clustering.label_clustered(r, 3) is None
    assert clustering.label_clustered(_ratios([rows]), 1) is None
    assert clustering.label_clustered(None, 10) is None
    # a label constant within each group but not across them: infinitely clustered
    y = np.repeat([0.0, 1.0, 0.0, 1.0], 50)
    r = _ratios([np.column_stack([y[i:i + 50], np.arange(50.0)]) for i in range(0, 200, 50)])
    assert np.isinf(r[0]) and clustering.label_clustered(r, 4) == np.inf
    assert "far more" in clustering.describe("t", "y", np.inf)


def test_preparation_measures_the_order_of_the_groups_it_reads() -> None:
    """prepare_step/prepare_decode carry the groups' collapsed moments to Prepared.order."""
    d, size = 2, 64
    rng = np.random.default_rng(5)
    y = np.sort((rng.random(64 * size) < 0.1).astype(float))  # label order
    X = rng.normal(size=(len(y), d))
    state = None
    init = blockscan.prepare_init(d, 0.0, 0)
    for g in range(64):
        rows = slice(g * size, (g + 1) * size)
        xs = _float8_2d(X[rows])
        ys = _float8_1d(y[rows])
        state = blockscan.prepare_step(state, xs, ys, g, [size, 0, 0, 0, d, d], init, 0)
    got = blockscan.prepare_decode([state], 64, d)
    assert got.order is not None and got.order.shape == (1 + d,)
    assert got.clustered() is not None
    want = f_oneway(*[y[g * size:(g + 1) * size] for g in range(64)]).statistic
    assert abs(got.order[0] - want) <= 1e-6 * want


def _float8_1d(v: np.ndarray) -> bytes:
    return np.array([1, 0, 701, len(v), 1], dtype="<i4").tobytes() + v.astype("<f8").tobytes()


def _float8_2d(m: np.ndarray) -> bytes:
    n, d = m.shape
    head = np.array([2, 0, 701, n, d, 1, 1], dtype="<i4").tobytes()
    return head + m.astype("<f8").tobytes()


def _label_moments(y: np.ndarray) -> moments.Moments:
    return moments.decode(moments.of_rows(y[:, None]).tobytes())


@pytest.mark.parametrize("share, flagged", [(0.5, False), (0.3, False), (0.2, True),
                                            (0.02, True)])
def test_sorted_classes_count_as_clustered_when_one_is_rare(share: float, flagged: bool) -> None:
    """Balanced classes stored sorted keep the block paths when the iterates are averaged
    (measured harmless); a rare class stored together does not (clustering.CLASS_SPREAD)."""
    n, size = 40_000, 128
    y = np.sort((np.random.default_rng(2).random(n) < share).astype(float))
    groups = [y[i:i + size, None] for i in range(0, n, size)]
    got = clustering.label_clustered(_ratios(groups), len(groups), _label_moments(y), True)
    assert (got is not None) == flagged
    # the last iterate (average => false) is biased by any class stored together
    assert clustering.label_clustered(_ratios(groups), len(groups), _label_moments(y),
                                      False) is not None
    # any label that is not two-valued is judged by F alone
    z = np.sort(np.random.default_rng(3).normal(size=n))
    zg = [z[i:i + size, None] for i in range(0, n, size)]
    assert clustering.label_clustered(_ratios(zg), len(zg), _label_moments(z)) is not None


def test_two_valued_labels_are_told_from_others() -> None:
    assert clustering._class_share(_label_moments(np.array([0.0, 1, 1, 1]))) == 0.75  # noqa: SLF001
    assert clustering._class_share(_label_moments(np.array([-1.0, 1, -1, -1]))) == 0.25  # noqa: SLF001
    assert clustering._class_share(_label_moments(np.array([0.0, 1, 2]))) is None  # noqa: SLF001
    assert clustering._class_share(_label_moments(np.ones(5))) is None  # noqa: SLF001
    assert clustering._class_share(None) is None  # noqa: SLF001


def test_a_row_copy_is_judged_from_its_groups_sums() -> None:
    """rows_clustered (the 'never' path's summary per 512 rows) agrees with the moments."""
    rng = np.random.default_rng(4)
    y = np.sort((rng.random(20_000) < 0.03).astype(float))
    size = clustering.GROUP_ROWS
    parts = [y[i:i + size] for i in range(0, len(y), size)]
    sums = [(len(g), g.mean(), g.var(), g.min(), g.max()) for g in parts]
    assert clustering.rows_clustered(sums) is not None
    f = clustering.label_clustered(_ratios([g[:, None] for g in parts]), len(parts),
                                   _label_moments(y), True)
    assert f is not None
    assert clustering.rows_clustered(sums, True) == pytest.approx(f, rel=1e-6)
    mixed = rng.permutation(y)
    parts = [mixed[i:i + size] for i in range(0, len(y), size)]
    assert clustering.rows_clustered([(len(g), g.mean(), g.var(), g.min(), g.max())
                                      for g in parts]) is None
    assert clustering.rows_clustered(sums[:1]) is None
