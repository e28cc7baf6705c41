"""Shared-memory SGD's aggregate functions without a database (bismarckpy.shared_model).

The expectations are serial SGD's: participants that take turns on one shared model are serial
SGD over the rows in the order the turns took them (Hogwild! without overlap), up to the
rounding of ``start + (new - start)``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from bismarckpy import kinds, pack, shared_model
from bismarckpy.errors import InvalidData, InvalidParameter
from bismarckpy.kinds import glm


@pytest.fixture
def datadir(tmp_path, monkeypatch):
    """A stand-in for the data directory (a backend's working directory)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _blocks(rng, n_blocks, rows, d, loss):
    X = rng.normal(size=(n_blocks * rows, d))
    z = X @ rng.normal(size=d) + 0.3
    y = (z + rng.normal(size=len(z)) > 0).astype(float) if loss == "logistic" else z
    values = np.column_stack([y, X])
    return [pack.encode(values[i * rows:(i + 1) * rows], "float64") for i in range(n_blocks)]


def _init(d, loss, batch):
    return glm.initialize(d, loss=loss, eta=0.05, invscaling=True, batch_size=batch,
                          alpha=1e-4, l2=1.0, itemsize=8)


def _serial(init, blocks):
    state = None
    for b in blocks:
        state = glm.transition_block(state, b, init)
    return glm.decode(glm.finalize(state))


@pytest.mark.parametrize("loss", ["logistic", "squared", "hinge"])
@pytest.mark.parametrize("batch", [1, 8, 32])
def test_one_participant_is_serial_sgd(datadir, loss, batch):
    rng = np.random.default_rng(batch)
    blocks = _blocks(rng, 6, 64, 5, loss)
    init = _init(5, loss, batch)
    shared_init = shared_model.create(init)
    state = None
    for b in blocks:
        state = shared_model.transition_block(state, b, shared_init)
    got = glm.decode(shared_model.finalize(state))
    want = _serial(init, blocks)
    np.testing.assert_allclose(got.w, want.w, rtol=1e-9, atol=1e-12)
    assert got.b == pytest.approx(want.b, rel=1e-9, abs=1e-12)
    assert (got.rows, got.steps, got.t) == (want.rows, want.steps, want.t)
    assert got.loss_sum == pytest.approx(want.loss_sum, rel=1e-9)
    assert shared_model.drop(shared_init)
    assert shared_model.leftovers() == []


@pytest.mark.parametrize("batch", [1, 16])
def test_participants_taking_turns_share_one_model(datadir, batch):
    """Two partial states, alternating blocks, merged: serial SGD over the alternation."""
    rng = np.random.default_rng(7)
    blocks = _blocks(rng, 8, 32, 4, "logistic")  # 32 rows: a multiple of the batch
    init = _init(4, "logistic", batch)
    shared_init = shared_model.create(init)
    a = b = None
    for i, blk in enumerate(blocks):
        if i % 2:
            b = shared_model.transition_block(b, blk, shared_init)
        else:
            a = shared_model.transition_block(a, blk, shared_init)
    got = glm.decode(shared_model.finalize(shared_model.merge(a, b)))
    want = _serial(init, blocks)
    np.testing.assert_allclose(got.w, want.w, rtol=1e-9, atol=1e-12)
    assert got.rows == want.rows and got.steps == want.steps and got.parts == 2
    assert got.t == want.t  # the step counter counts every participant's steps
    # averaging the same turns would not give serial SGD's model
    avg_a = avg_b = None
    for i, blk in enumerate(blocks):
        if i % 2:
            avg_b = glm.transition_block(avg_b, blk, init)
        else:
            avg_a = glm.transition_block(avg_a, blk, init)
    averaged = glm.decode(glm.finalize(glm.merge(avg_a, avg_b)))
    assert not np.allclose(averaged.w, want.w, rtol=1e-3)
    shared_model.drop(shared_init)


def test_rows_path_and_partial_block(datadir):
    rng = np.random.default_rng(3)
    d = 3
    init = glm.initialize(d, loss="squared", eta=0.02, batch_size=1)
    shared_init = shared_model.create(init)
    X = rng.normal(size=(20, d))
    y = X @ np.array([1.0, -2.0, 0.5])
    raw = [np.array([1, 0, 701, d, 1], dtype="<i4").tobytes() + r.astype("<f8").tobytes()
           for r in X]
    s_shared = s_plain = None
    for r, v in zip(raw, y):
        s_shared = shared_model.transition(s_shared, r, float(v), shared_init)
        s_plain = glm.transition(s_plain, r, float(v), init)
    np.testing.assert_allclose(glm.decode(shared_model.finalize(s_shared)).w,
                               glm.decode(glm.finalize(s_plain)).w, rtol=1e-9)
    # rows first:stop of a block, as a registered packed table's training rows are read
    block = pack.encode(np.column_stack([y, X]), "float64")
    sb = shared_model.transition_block(None, block, shared_model.create(init), 5, 15)
    assert glm.decode(shared_model.finalize(sb)).rows == 10


def test_segment_is_private_and_checked(datadir):
    init = _init(3, "logistic", 1)
    shared_init = shared_model.create(init)
    (name,) = shared_model.leftovers()
    path = datadir / shared_model.TEMP_DIR / name
    assert name.startswith("pgsql_tmp")  # PostgreSQL's own temp-file cleanup removes it
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # a state naming the segment with a wrong key opens nothing and removes nothing
    forged = shared_init[:24] + bytes(16) + shared_init[40:]
    block = _blocks(np.random.default_rng(0), 1, 8, 3, "logistic")[0]
    shared_model.transition_block(None, block, shared_init)  # opened (and cached) with the key
    assert shared_model._OPEN
    for cached in (True, False):
        if not cached:
            shared_model._OPEN.clear()
        with pytest.raises(InvalidData):
            shared_model.transition(None, b"", 1.0, forged)
    assert not shared_model.drop(forged) and path.exists()
    assert shared_model.drop(shared_init) and not path.exists()
    with pytest.raises(InvalidData, match="does not exist"):
        shared_model.transition(None, b"", 1.0, shared_init)
    for junk in (b"", shared_model.MAGIC, b"x" * 64, shared_init[:39]):
        with pytest.raises(InvalidData, match="not a shared-mode epoch state"):
            shared_model.drop(junk)


def test_sweep_removes_segments_of_gone_backends(datadir):
    shared_model.create(_init(2, "squared", 1))
    mine = shared_model.leftovers()
    os.makedirs(shared_model.TEMP_DIR, exist_ok=True)
    dead = 2**22 + 12345  # above the kernel's default pid_max: no such process
    stale = f"{shared_model.PREFIX}.{dead}.{'ab' * 8}"
    open(os.path.join(shared_model.TEMP_DIR, stale), "wb").close()
    other = os.path.join(shared_model.TEMP_DIR, "pgsql_tmp123.0")  # PostgreSQL's: not ours
    open(other, "wb").close()
    live = f"{shared_model.PREFIX}.1.{'cd' * 8}"  # pid 1 (init) lives: not swept
    open(os.path.join(shared_model.TEMP_DIR, live), "wb").close()
    # this process's own earlier segment is stale too when it creates a new one
    assert sorted(shared_model.sweep()) == sorted([stale, *mine])
    assert shared_model.leftovers() == [live] and os.path.exists(other)


def test_refused_kinds_and_parameters():
    layoutless = kinds.ModelKind(
        name="handle", magic=b"HANDLE01", params=(), losses=(), initialize=lambda *a, **k: b"",
        transition=lambda *a: b"", transition_block=lambda *a: b"", merge=lambda a, b: a,
        finalize=lambda s: s, decode=lambda s: None, export=lambda *a: None,
        predict=lambda *a: None, merge_rule="none")
    with pytest.raises(InvalidParameter, match="not available for model kind 'handle'") as e:
        shared_model.check_supported(layoutless, {})
    assert "backend" in e.value.detail
    layoutless_avg = dataclasses.replace(layoutless, merge_rule="average")
    with pytest.raises(InvalidParameter, match="not available") as e:
        shared_model.check_supported(layoutless_avg, {})
    assert "declares no shared-memory layout" in e.value.detail
    with pytest.raises(InvalidParameter, match="cannot run with these parameters"):
        shared_model.check_supported(kinds.get("glm"), {"batch_size": 0})
    shared_model.check_supported(kinds.get("glm"), {"batch_size": 32})


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_mlp_one_participant_is_serial_sgd(datadir, solver):
    """The MLP shares its weights and step counter; its optimiser moments stay local."""
    from bismarckpy import nn

    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] - X[:, 2] > 0).astype(float)
    blocks = [pack.encode(np.column_stack([y[i:i + 40], X[i:i + 40]]), "float64")
              for i in range(0, 200, 40)]
    init = nn.initialize(4, hidden=[6], classes=[0.0, 1.0], solver=solver, batch_size=16,
                         learning_rate_init=0.05, seed=2)
    shared_model.check_supported(kinds.get("mlp"), {})
    shared_init = shared_model.create(init)
    s = p = None
    for b in blocks:
        s = shared_model.transition_block(s, b, shared_init)
        p = nn.transition_block(p, b, init)
    got = shared_model.finalize(s)
    np.testing.assert_allclose(nn.params_of(got), nn.params_of(nn.finalize(p)), rtol=1e-9,
                               atol=1e-12)
    assert got[:8] == init[:8]  # the kind's own state: the loop decodes it as any epoch's
    shared_model.drop(shared_init)
