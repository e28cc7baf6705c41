"""Pure functions of block-shuffled scans: array bytes, the carried hold-out, buffers, moments."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bismarckpy import blockscan, moments
from bismarckpy.errors import InvalidData
from bismarckpy.pack import parse_block


def _array_bytes(values: np.ndarray, *, dataoffset: int = 0, elemtype: int = 701) -> bytes:
    """The in-memory form PostgreSQL gives a NULL-free float8 array (``byteasend``)."""
    dims = list(values.shape)
    head = np.array([values.ndim, dataoffset, elemtype, *dims, *([1] * values.ndim)],
                    dtype="<i4").tobytes()
    pad = (-(len(head) + 4)) % 8  # values start at MAXALIGN(16 + 8 ndim) - 4
    return head + b"\0" * pad + values.astype("<f8").tobytes()


@pytest.mark.parametrize("shape", [(3,), (1, 1), (4, 2), (5, 7)])
def test_read_matrix_reads_1d_and_2d_arrays(shape: tuple[int, ...]) -> None:
    values = np.arange(np.prod(shape), dtype=float).reshape(shape) / 3
    got = blockscan.read_matrix(_array_bytes(values), shape[1] if len(shape) == 2 else None)
    np.testing.assert_array_equal(got, values)


@pytest.mark.parametrize("raw, message", [
    (_array_bytes(np.ones((2, 2)), dataoffset=40), "NULL elements"),
    (_array_bytes(np.ones((2, 2)), elemtype=700), "not float8"),
    (_array_bytes(np.ones((2, 2)))[:-8], "unexpected size"),
    (_array_bytes(np.ones((2, 3))), "wrong length"),
    (b"\x03\0\0\0" + b"\0" * 40, "1-D or 2-D"),
    (b"\x01\0", "not an array"),
])
def test_read_matrix_refuses_what_it_cannot_read(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidData, match=message):
        blockscan.read_matrix(raw, 2)


@given(st.integers(0, 2**40), st.integers(0, 5000), st.integers(0, 600),
       st.floats(0.0, 0.9))
def test_held_count_and_held_mask_pick_the_rows_whose_draw_is_below_the_fraction(
        seed: int, group: int, n: int, fraction: float) -> None:
    """Each usable row is held out by its own seeded draw: the count is a Bernoulli sum (no
    total needed first) and the mask the later epochs rebuild from it is the same rows."""
    k = blockscan.held_count(seed, group, n, fraction)
    below = blockscan.draws(seed, group, n) < fraction
    assert k == int(below.sum())
    np.testing.assert_array_equal(blockscan.held_mask(seed, group, n, k), below)


def test_the_draws_hold_out_about_the_share_asked() -> None:
    counts = np.full(400, 500)
    k = sum(blockscan.held_count(3, g, int(c), 0.1) for g, c in enumerate(counts))
    n = counts.sum()
    assert abs(k - 0.1 * n) < 4 * np.sqrt(n * 0.1 * 0.9)


def test_held_mask_is_seeded_and_exact() -> None:
    a = blockscan.held_mask(7, 3, 500, 37)
    assert a.sum() == 37
    np.testing.assert_array_equal(a, blockscan.held_mask(7, 3, 500, 37))
    assert not np.array_equal(a, blockscan.held_mask(7, 4, 500, 37))
    assert not np.array_equal(a, blockscan.held_mask(8, 3, 500, 37))


def _buffer(rng: np.random.Generator, counts: list[int], d: int):
    n = sum(counts)
    X = rng.normal(size=(n, d)) + 1e6
    y = (rng.random(n) > 0.5).astype(float)
    return X, y, _array_bytes(X), _array_bytes(y)


def test_train_and_validation_rows_partition_a_buffer() -> None:
    rng = np.random.default_rng(1)
    counts, holds, groups = [40, 0, 25, 31], [4, 0, 3, 2], [9, 2, 5, 11]
    X, y, xs, ys = _buffer(rng, counts, 3)
    parts = {p: blockscan.select_rows(xs, ys, 3, groups, counts, holds, p, 5).taken()
             for p in (blockscan.ALL, blockscan.TRAIN, blockscan.VALID)}
    assert len(parts[blockscan.VALID][1]) == sum(holds)
    assert len(parts[blockscan.TRAIN][1]) == sum(counts) - sum(holds)
    both = np.vstack([parts[blockscan.TRAIN][0], parts[blockscan.VALID][0]])
    np.testing.assert_array_equal(np.sort(both, axis=0), np.sort(X, axis=0))


def test_rows_that_do_not_add_up_are_a_changed_table() -> None:
    X, y, xs, ys = _buffer(np.random.default_rng(2), [10, 10], 2)
    with pytest.raises(InvalidData, match="changed during training"):
        blockscan.select_rows(xs, ys, 2, [0, 1], [10, 11], [0, 0], blockscan.ALL, 1)


def test_non_finite_rows_are_dropped_before_counting() -> None:
    X = np.array([[1.0, 2.0], [np.nan, 1.0], [3.0, np.inf], [4.0, 5.0]])
    y = np.array([0.0, 1.0, 1.0, np.nan])
    buf = blockscan.select_rows(_array_bytes(X), _array_bytes(y), 2, [0], [1], [0],
                                blockscan.ALL, 1)
    np.testing.assert_array_equal(buf.taken()[0], [[1.0, 2.0]])


def test_a_sum_that_overflows_is_not_a_missing_value() -> None:
    X = np.array([[1e308, 1e308], [1.0, 2.0], [np.inf, 0.0]])
    y = np.array([1.0, 0.0, 1.0])
    np.testing.assert_array_equal(blockscan.finite_mask(X, y), [True, True, False])


@pytest.mark.parametrize("seed", [None, 3])
def test_as_block_holds_the_rows_exactly_in_a_seeded_order(seed: int | None) -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 4)) * 10 + 1e8
    y = (rng.random(50) > 0.5).astype(float)
    block = blockscan.as_block(blockscan.Buffer(X, y), seed)
    offsets, R = parse_block(block, 4, 8)
    values = R + offsets
    order = (np.random.default_rng(seed).permutation(50) if seed is not None
             else np.arange(50))
    np.testing.assert_allclose(values[:, 1:], X[order], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(values[:, 0], y[order])


def test_preparation_in_chunks_gives_the_training_rows_moments() -> None:
    """Counts, validation rows (per-row draws), moments of the training rows (label first) and the
    survey of all rows equal numpy's over the same rows, however the groups are chunked."""
    rng = np.random.default_rng(5)
    counts = [30, 0, 17, 44, 9, 26]
    d, total, fraction = 3, sum(counts), 0.15
    groups = [rng.normal(size=(c, d)) * [1, 100, 1e-3] + [0, 5, 1e4] for c in counts]
    labels = [rng.normal(size=c) for c in counts]
    states = []
    seen = 0
    for chunk in ([0, 1, 2], [3], [4, 5]):
        state = None
        init = blockscan.prepare_init(d, fraction, seen)
        for g in chunk:
            xs = _array_bytes(groups[g]) if counts[g] else None
            ys = _array_bytes(labels[g]) if counts[g] else None
            shape = [counts[g] + 2, 1, 0, 0, d, d]  # two rows SQL found incomplete
            state = blockscan.prepare_step(state, xs, ys, g, shape, init, 77)
            seen += counts[g]
        states.append(state)
    got = blockscan.prepare_decode(states, len(counts), d)
    np.testing.assert_array_equal(got.counts, counts)
    k = sum(blockscan.held_count(77, g, c, fraction) for g, c in enumerate(counts))
    assert int(got.holds.sum()) == k
    keep = [~blockscan.held_mask(77, g, c, int(h))
            for g, (c, h) in enumerate(zip(counts, got.holds))]
    V = np.vstack([np.column_stack([labels[g], groups[g]])[keep[g]]
                   for g in range(len(counts)) if counts[g]])
    assert got.stats is not None and got.stats.n == total - k
    np.testing.assert_allclose(got.stats.mean, V.mean(axis=0), rtol=1e-12)
    # The spread of values far from zero is known to a few ulps of their magnitude (numpy's
    # own two-pass std carries that error too).
    ulps = 16 * np.finfo(float).eps * np.abs(V).max(axis=0)
    ref = V.std(axis=0)
    assert (np.abs(got.stats.sd - ref) <= 1e-12 * ref + ulps).all(), (got.stats.sd, ref)
    np.testing.assert_array_equal(got.stats.lo, V.min(axis=0))
    assert isinstance(got.stats, moments.Moments)
    allx = np.vstack([x for x in groups if len(x)])
    ally = np.concatenate(labels)
    sv = got.survey
    assert sv is not None
    assert (sv.n_total, sv.n_usable, sv.multi) == (total + 2 * len(counts), total, len(counts))
    assert sv.max_abs_x == np.abs(allx).max() and sv.min_abs_x == np.abs(allx).min()
    assert (sv.y_min, sv.y_max) == (ally.min(), ally.max()) and not sv.all01


def _first_buffer(rng: np.random.Generator, counts: list[int], d: int,
                  y_values: tuple[float, ...] = (0.0, 1.0)):
    X = rng.normal(size=(sum(counts), d))
    y = rng.choice(y_values, size=sum(counts))
    js = np.repeat(np.arange(len(counts)), counts).astype(float)
    return X, y, _array_bytes(X), _array_bytes(y), _array_bytes(js)


def _counting_kernel(rows: list[int]):
    """A stand-in for a kind's transition_block: records the rows of each block."""
    def kernel(state, block, init):
        offsets, R = parse_block(bytes(block), 3, 8)
        rows.append(len(R))
        return (state or b"") + b"."
    return kernel


def test_a_first_epoch_counts_checks_and_splits_every_row() -> None:
    """What a full preparation learns (counts, shapes, label facts, magnitudes, the per-row
    draws) comes out of the first epoch's buffers, and the kernel sees the training rows."""
    rng = np.random.default_rng(9)
    counts, groups = [30, 0, 25], [7, 3, 11]
    X, y, xs, ys, js = _first_buffer(rng, counts, 3)
    X[4, 1] = np.nan  # a missing value: skipped, counted
    xs = _array_bytes(X)
    init = blockscan.first_init(3, 0.2, [0.0, 1.0], 1e300, 1e300, [], b"init")
    seen: list[int] = []
    shape = [sum(counts) + 2, 0, 0, 0, 3, 3, 12345]  # two rows SQL found incomplete
    raw = blockscan.first_step(_counting_kernel(seen), None, xs, ys, js, shape, groups, 5, 8,
                               init)
    f = blockscan.first_decode(raw)
    sv = blockscan.first_survey(f)
    assert (sv.n_total, sv.n_usable) == (sum(counts) + 2, sum(counts) - 1)
    t = f.triples.reshape(-1, 3).astype(int)
    usable = [29, 0, 25]
    assert t[:, 0].tolist() == groups and t[:, 1].tolist() == usable
    assert t[:, 2].tolist() == [blockscan.held_count(5, g, c, 0.2)
                                for g, c in zip(groups, usable)]
    h = f.head
    assert h[blockscan._F_VALID] == t[:, 2].sum()
    assert h[blockscan._F_TRAIN] == sum(usable) - t[:, 2].sum() == sum(seen)
    assert h[blockscan._F_XMINS] == 12345 and not h[blockscan._F_STOP]
    ok = np.isfinite(X).all(axis=1)
    assert sv.max_abs_x == np.abs(X[ok]).max() and sv.all01 and not sv.allpm1


@pytest.mark.parametrize("what", ["a third class", "a huge value", "another length",
                                  "a varying constant column"])
def test_a_first_epoch_stops_stepping_at_what_the_sample_missed(what: str) -> None:
    """The kernel stops at the first buffer that breaks what the sample promised; counting
    goes on, so the loop can raise the error a full preparation gives."""
    rng = np.random.default_rng(10)
    X, y, xs, ys, js = _first_buffer(rng, [40], 3, (0.0, 1.0, 2.0) if what == "a third class"
                                     else (0.0, 1.0))
    shape = [40, 0, 0, 1 if what == "another length" else 0, 3, 4 if what == "another length"
             else 3, 0]
    if what == "a huge value":
        X[3, 2] = 1e200
        xs = _array_bytes(X)
    init = blockscan.first_init(3, 0.0, [0.0, 1.0], 1e150, 1e300,
                                [1] if what == "a varying constant column" else [], b"init")
    seen: list[int] = []
    f = blockscan.first_decode(blockscan.first_step(_counting_kernel(seen), None, xs, ys, js,
                                                    shape, [0], 1, 2, init))
    assert f.head[blockscan._F_STOP] and seen == [] and f.kstate is None
    assert blockscan.first_survey(f).n_total == 40


def test_the_defaults_pick_the_path_by_expected_epochs_and_costs() -> None:
    from bismarckpy import schedule

    assert schedule.expected_epochs(100, 1e-3, 5) == 6
    assert schedule.expected_epochs(3, 1e-3, 5) == 3
    assert schedule.expected_epochs(7, None, 5) == 7
    # blocks: FIRST + (e - 1) BLOCK packed epochs; packed copy: PACK + e
    for e in range(1, 40):
        blocks = schedule.FIRST_EPOCH + (e - 1) * schedule.BLOCK_EPOCH
        assert schedule.prefer_blocks(10**6, e, 512) == (blocks < schedule.PACK_EPOCHS + e)
    assert schedule.prefer_blocks(10**6, 1, 512)  # one epoch: never worth a copy
    assert schedule.prefer_blocks(10**6, 6, 512)  # the defaults' six expected epochs
    assert not schedule.prefer_blocks(10**6, 1000, 512)  # many fast epochs: the copy
    assert schedule.prefer_blocks(10**6, 1000, 1)  # per-row steps cost the same on both
    assert not schedule.prefer_blocks(schedule.BLOCKS_MIN_ROWS - 1, 1, 512)  # small: copy


@pytest.mark.parametrize("part", [blockscan.ALL, blockscan.TRAIN, blockscan.VALID])
def test_blocks_from_the_servers_bytes_equal_blocks_from_arrays(part: int) -> None:
    """The arrays PL/Python hands over sit off an 8-byte boundary; the block built from them
    (rows gathered as records) holds the same bytes as one built from aligned arrays."""
    counts, holds, groups = [40, 25, 31], [4, 0, 3], [9, 5, 11]
    X, y, xs, ys = _buffer(np.random.default_rng(6), counts, 3)
    buf = blockscan.select_rows(xs, ys, 3, groups, counts, holds, part, 5)
    assert not buf.X.flags.aligned and not buf.checked
    got = bytes(blockscan.as_block(buf, 8) or b"")
    want = bytes(blockscan.as_block(blockscan.Buffer(X.copy(), y.copy(), buf.rows), 8) or b"")
    assert got == want


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_row_where_preparation_counted_a_usable_one_is_a_changed_table(
        bad: float) -> None:
    """As many rows as preparation counted usable, but one is not finite: the table changed."""
    X, y, _, _ = _buffer(np.random.default_rng(7), [30], 2)
    X[11, 1] = bad
    buf = blockscan.select_rows(_array_bytes(X), _array_bytes(y), 2, [0], [30], [0],
                                blockscan.ALL, 1)
    with pytest.raises(InvalidData, match="changed during training"):
        blockscan.as_block(buf, 3)


def test_epochs_over_page_groups_turn_memoize_off_and_others_keep_the_planners_settings(
        ) -> None:
    """Every page group is read once: a Memoize node above its read never hits and only
    copies its arrays once more, so a block-shuffled epoch asks the planner for none."""
    from bismarckpy import execution

    blocks = execution.Scan("t", template="SELECT {aggregate}(...)")
    assert execution.epoch_settings(blocks, None) == {"enable_memoize": "off"}
    assert execution.epoch_settings(blocks, 2) == {**execution.parallel_settings(2),
                                                   "enable_memoize": "off"}
    assert execution.epoch_settings(execution.Scan("t", packed=True), None) == {}


def test_page_groups_delivered_one_per_call_train_as_one_buffer() -> None:
    """The epoch's query hands the transition one page group per call (with the buffer's
    counts and its groups so far); the state equals one call with the whole buffer's rows,
    bit for bit, with validation rows, missing values and a group without rows."""
    from bismarckpy.kinds import glm

    rng = np.random.default_rng(9)
    d, counts, holds, groups = 3, [40, 0, 25, 31], [4, 0, 3, 2], [9, 2, 5, 11]
    parts = [rng.normal(size=(c, d)) for c in counts]
    labels = [(rng.random(c) > 0.5).astype(float) for c in counts]
    parts[2][3, 1] = np.nan  # a missing value: preparation counted the group's usable rows
    counts[2] -= 1
    init = glm.initialize(d, loss="logistic", batch_size=8, eta=0.1)
    for part in (blockscan.ALL, blockscan.TRAIN, blockscan.VALID):
        state = None
        for j in range(len(groups)):
            xs = _array_bytes(parts[j]) if len(labels[j]) else None
            ys = _array_bytes(labels[j]) if len(labels[j]) else None
            state = blockscan.epoch_step(glm.transition_block, state, xs, ys, groups[:j + 1],
                                         counts, holds, part, 5, 17, init)
        buf = blockscan.select_rows(_array_bytes(np.vstack(parts)),
                                    _array_bytes(np.concatenate(labels)), d, groups, counts,
                                    holds, part, 5)
        block = blockscan.as_block(buf, 17)
        assert block is not None
        assert state == glm.transition_block(None, bytes(block), init)


def test_a_page_group_out_of_its_buffers_order_is_refused() -> None:
    X, y, xs, ys = _buffer(np.random.default_rng(10), [5], 2)
    from bismarckpy.kinds import glm

    init = glm.initialize(2, loss="logistic", batch_size=4, eta=0.1)
    blockscan.epoch_step(glm.transition_block, None, xs, ys, [3], [5, 5, 5], [0, 0, 0],
                         blockscan.ALL, 1, 2, init)
    with pytest.raises(InvalidData, match="out of order"):
        blockscan.epoch_step(glm.transition_block, None, xs, ys, [4, 7], [5, 5, 5],
                             [0, 0, 0], blockscan.ALL, 1, 2, init)
    # neither the next group nor a whole buffer: its rows do not add up to the buffer's
    with pytest.raises(InvalidData, match="changed during training"):
        blockscan.epoch_step(glm.transition_block, None, xs, ys, [4, 7, 8], [5, 5, 5],
                             [0, 0, 0], blockscan.ALL, 1, 2, init)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 30), k=st.integers(1, 6), seed=st.integers(0, 2**32 - 1),
       bad=st.lists(st.tuples(st.integers(0, 29), st.integers(0, 5),
                              st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308])),
                    max_size=6))
def test_nonfinite_rows_counts_the_rows_holding_a_nan_or_an_infinity(n, k, seed, bad) -> None:
    """The count of rows with a NaN or ±inf, also when finite values overflow a column sum."""
    values = np.random.default_rng(seed).normal(size=(n, k))
    for i, j, v in bad:
        if i < n and j < k:
            values[i, j] = v
    assert blockscan.nonfinite_rows(values) == int((~np.isfinite(values).all(axis=1)).sum())


def test_blocks_of_a_buffer_hold_the_values_themselves() -> None:
    """A buffer's block carries zero offsets: its residuals are the rows' values, bit for bit."""
    X, y, xs, ys = _buffer(np.random.default_rng(8), [20, 12], 3)
    buf = blockscan.select_rows(xs, ys, 3, [0, 1], [20, 12], [0, 0], blockscan.ALL, 1)
    offsets, R = parse_block(bytes(blockscan.as_block(buf, None) or b""), 3, 8)
    assert not offsets.any()
    np.testing.assert_array_equal(R, np.column_stack([y, X]))


def test_a_first_epoch_range_beyond_the_sample_means_a_full_read() -> None:
    """loop._sample_missed_a_range: a feature (or a squared loss's label) further than
    SAMPLE_Z sample standard deviations from the sample's mean sends the run to a full read."""
    from types import SimpleNamespace

    from bismarckpy import loop

    prep = SimpleNamespace(mu=np.array([0.0, 10.0]), sd=np.array([1.0, 0.0]), y_mean=0.0,
                           y_sd=2.0)
    sv = SimpleNamespace(y_min=-5.0, y_max=5.0)
    near = SimpleNamespace(xlo=np.array([-6.0, 10.0]), xhi=np.array([6.0, 10.0]))
    far = SimpleNamespace(xlo=np.array([-6.0, 10.0]), xhi=np.array([1e6, 10.0]))
    assert not loop._sample_missed_a_range(near, prep, sv, squared=True)
    assert loop._sample_missed_a_range(far, prep, sv, squared=False)
    # a column constant in the sample (sd 0) is judged by the constant-column check instead
    odd = SimpleNamespace(xlo=np.array([0.0, -1e9]), xhi=np.array([0.0, 1e9]))
    assert not loop._sample_missed_a_range(odd, prep, sv, squared=False)
    wide_y = SimpleNamespace(y_min=-1e3, y_max=5.0)
    assert loop._sample_missed_a_range(near, prep, wide_y, squared=True)
    assert not loop._sample_missed_a_range(near, prep, wide_y, squared=False)


class _MarkSession:
    """A session whose table fingerprint (rows, xmin sum) is ``marks`` in turn (file and
    columns fixed), with a savepoint that does nothing."""

    def __init__(self, marks: list[tuple[int, int]]) -> None:
        self.marks = list(marks)

    def query(self, text: str, params=()):
        if "count(*)" in text:
            return [self.marks.pop(0)]
        if "pg_relation_filenode" in text:
            return [(7,)]
        return [("1 a 701 -1",)]

    def subtransaction(self):
        import contextlib
        return contextlib.nullcontext()


@pytest.mark.parametrize("error", [RuntimeError("SPIError: a value is too large"),
                                   InvalidData("a value is too large for a float32 block")])
def test_a_copy_that_fails_after_a_write_reports_the_write(error: Exception) -> None:
    """unwritten_around: any error of the body (inside the server a nested call's error is
    PL/Python's SPIError, not a BismarckError) becomes "the source table changed" when the
    table's fingerprint moved; an unchanged table keeps the body's own error."""
    def body(session) -> None:
        with blockscan.unwritten_around(session, "t"):
            raise error

    with pytest.raises(InvalidData, match="changed during training"):
        body(_MarkSession([(10, 5), (10, 9)]))
    with pytest.raises(type(error), match="too large"):
        body(_MarkSession([(10, 5), (10, 5)]))
