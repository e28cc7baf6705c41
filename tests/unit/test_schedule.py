"""Learning-rate schedules, convergence and divergence as a pure state machine."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bismarckpy.errors import Diverged
from bismarckpy.schedule import GROWTH_BOUND, MIN_ADAPTIVE_ETA, Schedule


def run(sched: Schedule, losses) -> list:
    return [sched.after_epoch(i, loss, loss) for i, loss in enumerate(losses, start=1)]


def test_constant_keeps_eta() -> None:
    s = Schedule("constant", 0.3, tol=None, n_iter_no_change=2)
    decisions = run(s, [5.0, 6.0, 6.0, 7.0, 1.0, 1.0, 1.0])
    assert s.eta == 0.3
    assert all(d.accept and not d.stop for d in decisions)
    assert not s.per_step


def test_invscaling_of_per_row_steps_decays_within_the_epoch_only() -> None:
    s = Schedule("invscaling", 0.1, tol=None, n_iter_no_change=1, per_row=True)
    assert s.per_step
    run(s, [3.0, 3.0, 3.0])
    assert s.eta == 0.1


@pytest.mark.parametrize("power_t", [0.25, 0.5, 1.0])
def test_invscaling_of_mini_batches_decays_by_epoch(power_t: float) -> None:
    """Epoch k's steps all take eta0 / k^power_t, whatever the number of steps in an epoch."""
    s = Schedule("invscaling", 0.1, tol=None, n_iter_no_change=1, power_t=power_t)
    assert s.eta == 0.1 and not s.per_step
    for epoch in range(1, 6):
        s.after_epoch(epoch, 3.0, 3.0)
        assert s.eta == pytest.approx(0.1 / (epoch + 1) ** power_t, rel=1e-15)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_adaptive_divides_by_five_on_a_plateau(n: int) -> None:
    s = Schedule("adaptive", 1.0, tol=1e-3, n_iter_no_change=n)
    run(s, [1.0])  # the first epoch sets the best score
    for _ in range(n - 1):
        d = s.after_epoch(0, 1.0, 1.0)
        assert s.eta == 1.0 and not d.stop
    d = s.after_epoch(0, 1.0, 1.0)
    assert s.eta == pytest.approx(0.2) and not d.stop and d.accept
    # An improvement by more than tol resets the count.
    s.after_epoch(0, 0.5, 0.5)
    for _ in range(n - 1):
        s.after_epoch(0, 0.5, 0.5)
    assert s.eta == pytest.approx(0.2)


def test_adaptive_stops_once_the_rate_is_below_the_floor() -> None:
    s = Schedule("adaptive", 1e-3, tol=1e-3, n_iter_no_change=2)
    etas, decisions = [], []
    for epoch in range(1, 200):
        d = s.after_epoch(epoch, 1.0, 1.0)
        etas.append(s.eta)
        decisions.append(d)
        if d.stop:
            break
    assert decisions[-1].stop and decisions[-1].converged
    assert s.eta <= MIN_ADAPTIVE_ETA < s.eta * 5  # stopped at the first rate below the floor
    assert s.eta == pytest.approx(1e-3 / 5**5)
    assert len(decisions) == 1 + 2 * 6  # first epoch, five divisions and the final plateau


def test_bold_driver_grows_on_improvement_and_halves_on_a_worse_loss() -> None:
    s = Schedule("bold_driver", 0.1, tol=None, n_iter_no_change=5)
    d = s.after_epoch(1, 10.0, 10.0)
    assert d.accept and s.eta == pytest.approx(0.105)
    d = s.after_epoch(2, 9.0, 9.0)
    assert d.accept and s.eta == pytest.approx(0.11025)
    d = s.after_epoch(3, 9.5, 9.5)
    assert not d.accept and not d.stop and s.eta == pytest.approx(0.055125)
    # The rejected 9.5 does not become the reference: 9.2 is compared with 9.0, the last accepted.
    d = s.after_epoch(4, 9.2, 9.2)
    assert not d.accept and s.eta == pytest.approx(0.0275625)
    d = s.after_epoch(5, 9.0, 9.0)  # equal to the last accepted loss counts as no worse
    assert d.accept and s.eta == pytest.approx(0.0275625 * 1.05)


def test_bold_driver_stops_when_the_rate_vanishes() -> None:
    s = Schedule("bold_driver", 1.0, tol=None, n_iter_no_change=5)
    s.after_epoch(1, 1.0, 1.0)
    for epoch in range(2, 100):
        d = s.after_epoch(epoch, 2.0, 2.0)
        assert not d.accept
        if d.stop:
            break
    assert d.stop and d.converged and s.eta < 1e-12


@pytest.mark.parametrize("n", [1, 2, 5])
def test_converges_after_n_iter_no_change_epochs_within_tol(n: int) -> None:
    s = Schedule("constant", 0.1, tol=0.01, n_iter_no_change=n)
    losses = [10.0, 5.0, 2.0] + [2.0 - 0.005 * i for i in range(1, 20)]
    decisions = run(s, losses)
    stops = [i for i, d in enumerate(decisions, start=1) if d.stop]
    assert stops and stops[0] == 3 + n
    assert decisions[stops[0] - 1].converged
    assert not any(d.stop for d in decisions[:stops[0] - 1])


def test_improvement_beyond_tol_resets_the_count() -> None:
    s = Schedule("constant", 0.1, tol=0.01, n_iter_no_change=3)
    decisions = run(s, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5])
    assert not any(d.stop for d in decisions)
    assert s.after_epoch(7, 0.5, 0.5).stop


@settings(max_examples=40, deadline=None)
@given(losses=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=60),
       rate=st.sampled_from(["constant", "invscaling", "adaptive"]))
def test_tol_none_never_converges(losses: list[float], rate: str) -> None:
    s = Schedule(rate, 0.1, tol=None, n_iter_no_change=1)
    assert not any(d.stop for d in run(s, losses))
    # adaptive never divides its rate; invscaling decays by epoch whatever the losses
    assert s.eta == (0.1 / (len(losses) + 1) ** 0.5 if rate == "invscaling" else 0.1)


@pytest.mark.parametrize("rate", ["constant", "invscaling", "adaptive", "bold_driver"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_diverges(rate: str, bad: float) -> None:
    s = Schedule(rate, 0.25, tol=1e-3, n_iter_no_change=5)
    s.after_epoch(1, 1.0, 1.0)
    with pytest.raises(Diverged) as exc:
        s.after_epoch(2, bad, bad)
    err = exc.value
    assert err.sqlstate == "22003"
    assert "eta0" in err.hint and "0.025" in err.hint
    assert "epoch 2" in err.detail and "0.25" in err.detail and rate in err.detail


def test_nan_on_the_first_epoch_diverges() -> None:
    with pytest.raises(Diverged):
        Schedule("constant", 0.1, tol=None, n_iter_no_change=5).after_epoch(1, math.nan, 0.0)


def test_growth_past_the_bound_diverges() -> None:
    s = Schedule("constant", 0.1, tol=None, n_iter_no_change=5)
    s.after_epoch(1, 2.0, 2.0)
    s.after_epoch(2, 2.0 * GROWTH_BOUND, 0.0)  # at the bound: still fine
    with pytest.raises(Diverged) as exc:
        s.after_epoch(3, 2.0 * GROWTH_BOUND * 1.01, 0.0)
    assert "eta0" in exc.value.hint


def test_small_first_loss_uses_a_floor_of_one() -> None:
    s = Schedule("constant", 0.1, tol=None, n_iter_no_change=5)
    s.after_epoch(1, 1e-9, 1e-9)
    s.after_epoch(2, 0.5 * GROWTH_BOUND, 0.0)
    with pytest.raises(Diverged):
        s.after_epoch(3, 2.0 * GROWTH_BOUND, 0.0)


@settings(max_examples=60, deadline=None)
@given(eta0=st.floats(1e-4, 10.0), power_t=st.floats(0.0, 3.0), t=st.integers(0, 10**7))
def test_invscaling_rate_in_force_is_the_last_steps_rate(eta0: float, power_t: float,
                                                          t: int) -> None:
    from bismarckpy.kinds import glm

    s = Schedule("invscaling", eta0, tol=None, n_iter_no_change=5, power_t=power_t,
                 per_row=True)
    # scikit-learn's formula eta0 / t^power_t with t counted from 1 for the latest step.
    expected = eta0 / max(t, 1) ** power_t
    assert s.rate_in_force(t) == pytest.approx(expected, rel=4 * 2.0**-52)
    if t >= 1:  # the rate the engine used for its t-th step (t - 1 steps before it)
        init = glm.initialize(1, loss="squared", eta=eta0, invscaling=True, power_t=power_t,
                              t=float(t - 1), fit_intercept=False)
        w = glm.decode(glm.transition(None, [1.0], 1.0, init)).w[0]
        assert w == pytest.approx(s.rate_in_force(t), rel=4 * 2.0**-52)


@pytest.mark.parametrize("rate", ["constant", "invscaling", "adaptive", "bold_driver"])
def test_per_epoch_schedules_report_the_epochs_rate_until_after_epoch(rate: str) -> None:
    s = Schedule(rate, 0.5, tol=1e-3, n_iter_no_change=1)
    for epoch, loss in enumerate([4.0, 3.0, 3.0, 3.5, 2.0], start=1):
        before = s.eta
        assert s.rate_in_force(10.0**epoch) == before  # steps do not matter between epochs
        s.after_epoch(epoch, loss, loss)
        assert s.rate_in_force(0) == s.eta


def test_invscaling_of_full_batches_keeps_eta0() -> None:
    """One exact gradient step an epoch: no noise to decay (before: eta0 / k^0.5, which left a
    3,000-row fit 0.016 above the optimum after 20 epochs where 1 / L held gets there)."""
    s = Schedule("invscaling", 0.1, tol=None, n_iter_no_change=1, full_batch=True)
    run(s, [3.0, 2.0, 1.0])
    assert s.eta == 0.1
    # the hinge loss's subgradient steps settle only as the rate decays
    s = Schedule("invscaling", 0.1, tol=None, n_iter_no_change=1, full_batch=True,
                 smooth=False)
    run(s, [3.0, 2.0, 1.0])
    assert s.eta == pytest.approx(0.1 / 4 ** 0.5)


def test_full_batches_stop_when_the_decrease_still_to_come_is_below_tol() -> None:
    """Decreases shrinking by r = 0.95 from 0.0009: each below tol (scikit-learn's rule stops
    after n_iter_no_change of them), but 0.0009·0.95/0.05 = 0.017 is still to come."""
    losses = [0.6 - 0.0009 * (1 - 0.95 ** k) / 0.05 for k in range(200)]
    mini = run(Schedule("constant", 1.0, tol=1e-3, n_iter_no_change=5), losses)
    assert next(i for i, d in enumerate(mini) if d.stop) == 5  # mini-batches: as before
    full = run(Schedule("constant", 1.0, tol=1e-3, n_iter_no_change=5, full_batch=True),
               losses)
    stop = next(i for i, d in enumerate(full) if d.stop)
    assert full[stop].converged
    left = losses[stop] - losses[-1]  # what the run gave up (~ the tail from there)
    assert left < 1e-3 and stop > 40


def test_full_batches_stop_on_a_flat_or_rising_score() -> None:
    for losses in ([1.0, 0.9995, 0.9995], [1.0, 0.9995, 0.9996]):
        s = Schedule("constant", 1.0, tol=1e-3, n_iter_no_change=2, full_batch=True)
        assert [d.stop for d in run(s, losses)] == [False, False, True]
