"""Per-epoch control: learning-rate schedules, convergence and divergence checks.

Pure state machine, no database: the training loop feeds it each epoch's losses and it answers
with the next learning rate, whether to keep or undo the epoch, and whether to stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import Diverged

MIN_ADAPTIVE_ETA = 1e-6  # scikit-learn's floor for learning_rate='adaptive'
GROWTH_BOUND = 1e6  # a loss this many times the first epoch's counts as diverging


@dataclass
class Decision:
    """What the loop does after an epoch."""

    accept: bool  # keep this epoch's model (bold_driver may undo it)
    stop: bool
    converged: bool


@dataclass
class Schedule:
    """Learning rate and stopping rule, scikit-learn style (tol, n_iter_no_change)."""

    learning_rate: str
    eta0: float
    tol: float | None
    n_iter_no_change: int
    power_t: float = 0.5
    standardize: bool = True  # for the advice when training diverges
    rate_name: str = "eta0"  # the initial rate's parameter, for the same advice
    # the caller's own advice when training diverges (None: the GLM's options)
    advice: str | None = None
    # per-row steps (batch_size 1): invscaling then decays with every step, not every epoch
    per_row: bool = False
    # full-batch steps (batch_size 0): one exact gradient step an epoch, whose small decreases
    # are not yet convergence (see :meth:`_still_descending`), and which needs no decay when
    # the loss is ``smooth`` (invscaling keeps eta0; the hinge loss's subgradient steps need
    # the decay to settle)
    full_batch: bool = False
    smooth: bool = True
    eta: float = field(init=False)
    best: float = field(init=False, default=math.inf)
    previous: float = field(init=False, default=math.inf)
    first: float | None = field(init=False, default=None)
    no_improvement: int = field(init=False, default=0)
    scores: list[float] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.eta = self.eta0

    @property
    def per_step(self) -> bool:
        """True when the rate decays inside the epoch (invscaling of per-row steps)."""
        return self.learning_rate == "invscaling" and self.per_row

    def rate_in_force(self, t: float) -> float:
        """The learning rate of the latest step once ``t`` steps were taken since training began.

        invscaling of per-row steps: the step after ``k`` earlier steps has rate ``eta0 / (k +
        1) ** power_t`` (scikit-learn's ``eta0 / t ** power_t``, t counting rows from 1, and
        :func:`bismarckpy.kinds.glm._eta`), so the latest of ``t`` steps had ``eta0 / t **
        power_t``. Every other schedule, invscaling of mini-batch steps included, changes the
        rate only between epochs: it is ``eta`` until :meth:`after_epoch` sets the next
        epoch's. This is what ``training_history.learning_rate`` records for the epoch that
        ended after step ``t``.
        """
        if self.per_step:
            return self.eta0 / max(t, 1.0) ** self.power_t
        return self.eta

    def after_epoch(self, epoch: int, train_loss: float, score: float) -> Decision:
        """Update the rate from this epoch's train loss and score (validation or train loss).

        invscaling of mini-batch steps: after epoch ``k`` the rate becomes epoch ``k + 1``'s,
        ``eta0 / (k + 1) ** power_t`` (Robbins–Monro decay counted in epochs, as the matrix
        factorisation loop's); of full-batch steps of a smooth loss it keeps ``eta0``: the
        decay tames the noise of sampled gradients, and an exact gradient has none (gradient
        descent at 1 / L, the automatic eta0, decreases the loss at every step without it;
        with the decay a well-conditioned 3,000-row logistic fit was 0.0038 above the optimum
        after 100 epochs, at a constant 1 / L 0.0002 after 50). The hinge loss's subgradient
        steps keep the decay, without which they never settle. adaptive and bold_driver as
        scikit-learn and Bismarck define them; constant keeps ``eta0``.
        """
        self._check_diverged(epoch, train_loss)
        self.scores.append(score)
        if self.learning_rate == "invscaling" and not self.per_row and not (
                self.full_batch and self.smooth):
            self.eta = self.eta0 / (epoch + 1.0) ** self.power_t
        if self.learning_rate == "bold_driver":
            if train_loss > self.previous:
                self.eta *= 0.5
                return self._converge(epoch, score, accept=False)
            self.eta *= 1.05
            self.previous = train_loss
        return self._converge(epoch, score, accept=True)

    def _converge(self, epoch: int, score: float, *, accept: bool) -> Decision:
        """scikit-learn's rule: count epochs whose score is not ``tol`` better than the best.

        ``score`` is in the units the caller judges convergence in: the training loop divides a
        squared loss by the label's variance (:func:`bismarckpy.loop._judged_units`), so
        ``tol`` is in the standardised label's units whatever the label's own.
        """
        if self.tol is not None and score > self.best - self.tol:
            self.no_improvement += 1
        else:
            self.no_improvement = 0
        if accept and score < self.best:
            self.best = score
        if self.no_improvement >= self.n_iter_no_change and not self._still_descending():
            if self.learning_rate == "adaptive" and self.eta > MIN_ADAPTIVE_ETA:
                self.eta /= 5.0
                self.no_improvement = 0
            else:
                return Decision(accept=accept, stop=True, converged=True)
        if self.learning_rate == "bold_driver" and self.eta < 1e-12:
            return Decision(accept=accept, stop=True, converged=True)
        return Decision(accept=accept, stop=False, converged=False)

    def _still_descending(self) -> bool:
        """Whether exact (full-batch) steps still have more than ``tol`` of loss to take.

        scikit-learn's rule (an epoch ``tol`` better than the best) suits epochs of many
        steps; an epoch of one exact step can improve by less than ``tol`` for many epochs
        while far from the optimum: on 3,000 rows with 2.4% positives it stopped as converged
        at a log-loss of 0.1156, above the class priors' 0.1120 (Newton's: 0.1046). Gradient
        descent's decreases shrink geometrically (linear convergence), by ``r`` = the last
        decrease over the one before, so the decrease still to come is about
        ``d·r / (1 - r)``; the run goes on while that exceeds ``tol`` (and while the
        decreases do not shrink at all).
        A score that stopped falling is done. The score is exact either way: the training
        loss of the epoch's one step, or the loss of its model on the validation rows (which
        fell as slowly: stopped as converged 14% above Newton's on the same rows).
        """
        if not (self.full_batch and self.tol is not None) or len(self.scores) < 3:
            return False
        before, last = (self.scores[-3] - self.scores[-2], self.scores[-2] - self.scores[-1])
        if not last > 0:
            return False
        if not before > last:
            return True
        r = last / before
        return last * r / (1.0 - r) > self.tol

    def _check_diverged(self, epoch: int, loss: float) -> None:
        """Raise :class:`Diverged` on a NaN/inf loss or one that grew past the bound."""
        if self.first is None and math.isfinite(loss):
            self.first = max(loss, 1e-12)
        grown = self.first is not None and loss > GROWTH_BOUND * max(self.first, 1.0)
        if math.isfinite(loss) and not grown:
            return
        raise Diverged(
            "training diverged",
            detail=f"At epoch {epoch} the training loss was {loss:g} with "
                   f"learning_rate => '{self.learning_rate}' and "
                   f"{self.rate_name} => {self.eta0:g} (current rate {self.eta:g}).",
            hint=self.advice + " No model was stored." if self.advice else self._glm_advice())

    def _glm_advice(self) -> str:
        """The GLM's (and the MLP's) advice when training diverges."""
        return (f"Lower {self.rate_name} (try {self.eta0 / 10:g}), use learning_rate => "
                 "'adaptive'" + (" or 'bold_driver'" if self.rate_name == "eta0" else "")
                 + (", or rescale the columns" if self.standardize
                    else ", or use standardize => true")
                + ". No model was stored.")


# ----------------------------------------------------------------------------- defaults
ROW_ETA0 = 0.1  # eta0 of per-row SGD when none is given (Bismarck's and scikit-learn's scale)
MIN_STEPS_PER_EPOCH = 1024  # the automatic batch size keeps at least this many steps an epoch
SAMPLE_ROWS = 1024  # rows the automatic eta0 estimates the curvature on
# sup of d²loss/dz²; hinge has none (it is not smooth): its c is a scale, see HINGE_SCALE
CURVATURE = {"logistic": 0.25, "squared": 1.0, "hinge": 0.1,
             # softmax cross-entropy: its Hessian in z, diag(p) - ppᵀ, is at most ½(I - 11ᵀ/K)
             # (Böhning, Ann. Inst. Stat. Math. 44, 1992), largest eigenvalue ½
             "softmax": 0.5}


def auto_batch_size(n_train: int, block_size: int) -> int:
    """``batch_size`` when none is given: ``min(block_size, max(2, n_train // 1024))``.

    Large tables get one vectorised step per packed block (the cost of an epoch is then the
    scan, not Python's per-row loop); smaller ones keep at least ~1024 steps an epoch (an
    ill-conditioned problem needs steps more than it needs large batches), and even the
    smallest take batches of 2, whose ``eta0`` is measured on the data (:func:`auto_eta0`),
    never per-row steps at the fixed ``eta0`` 0.1: on 500–2047 rows with 1–5% positives those
    stopped as converged at 1.6–4.8 times the exact fit's log-loss, predicting no positive,
    where batches of 2 reach 1.00–1.33 times it. 1 only for a single row or ``block_size`` 1.
    """
    return max(1, min(int(block_size), max(2, int(n_train) // MIN_STEPS_PER_EPOCH),
                      int(n_train)))


#: The hinge loss has no curvature to bound: ``auto_eta0`` takes c = 1/10 for it, ten times the
#: step of c = 1, and its mini-batch steps decay as 1 / epoch (``default_power_t``), the rate of
#: SGD on a strongly convex non-smooth objective such as the L2-penalised SVM (Shamir and Zhang,
#: ICML 2013, whose polynomial-decay averaging the first epoch uses; Pegasos; scikit-learn's
#: learning_rate='optimal' for hinge). With c = 1 and invscaling's 1 / sqrt(epoch), 20
#: separable rows (classes 0.09 standard deviations apart: the optimum's |w| is about 12) stopped
#: at epoch 23-40 with one row wrong in 12 of 12 runs; with c = 1/10 and 1 / epoch every row was
#: right in 35 of 35 (14-39 epochs). c = 1/3 left one wrong in 7 of 10; c = 1/20 took the noisy
#: case below to 1.0014-1.0017 times the SVM optimum. Ten times the step at 1 / sqrt(epoch)
#: overshot (noisy data 1.007-1.012 times the optimum, data without signal above the class
#: priors); at 1 / epoch, 2,000 noisy rows end at 1.0007-1.0011 times it (before: 1.0006-1.0008)
#: in 21-27 epochs (8-10), and 100,000 × 10 in 12 epochs (7) at the same accuracy.
HINGE_SCALE = CURVATURE["hinge"]


def default_power_t(loss: str | None, batch_size: int | None = None) -> float:
    """``power_t`` when none is given: 0.25 for least squares, 1 for hinge mini-batch steps
    (see :data:`HINGE_SCALE`), 0.5 otherwise (per-row hinge steps included: their rate decays
    with every row).

    scikit-learn's own defaults (``SGDRegressor`` 0.25, ``SGDClassifier`` 0.5). Measured when
    invscaling still decayed per step, without averaging: with 0.5, a
    least-squares fit's rate decays so fast that it stalls far from the optimum: 3,000 × 300
    Gaussian rows, noise 0.01, automatic ``batch_size`` 2 and ``eta0`` 1/L stopped at MSE 0.45
    after 100 epochs; with 0.25 it reaches 1.3e-4 in 14 (``SGDRegressor`` 9.5e-5), and with
    noise 1.0 test MSE 1.09 (0.5: 1.95; ``SGDRegressor`` 1.11; the least-squares optimum 1.09).
    """
    if loss == "hinge" and batch_size != 1:
        return 1.0
    return 0.25 if loss == "squared" else 0.5


def top_eigenvalue(A: np.ndarray, iterations: int = 50, seed: int = 0) -> float:
    """Largest eigenvalue of ``AᵀA / n`` for ``A`` of shape (n, d), by power iteration.

    Never forms the d × d matrix (two products with ``A`` per iteration); returns 0 for an
    empty or all-zero ``A``. Power iteration approaches the eigenvalue from below.
    """
    n = A.shape[0]
    if n == 0 or A.shape[1] == 0:
        return 0.0
    v = np.random.default_rng(seed).uniform(0.5, 1.5, size=A.shape[1])
    lam = 0.0
    for _ in range(iterations):
        u = A.T @ (A @ v) / n
        norm = float(np.linalg.norm(u))
        if not norm > 0:
            return 0.0
        lam = float(v @ u) / float(v @ v)
        v = u / norm
    return lam


def auto_eta0(loss: str, A: np.ndarray, batch_size: int, l2_strength: float = 0.0) -> float:
    """``eta0`` of mini-batch or full-batch steps when none is given: ``1 / L``.

    ``A`` (n × d) holds sample rows as the steps see them (standardised features, and a
    column of ones for the intercept). A step's loss is the mean over its batch, which is
    L-smooth with ``L = c · λ_max(A_Bᵀ A_B / B) + l2_strength`` for its ``B`` rows, c the
    largest second derivative of the loss in z (1/4 logistic, 1 squared; hinge, not smooth,
    takes c = 1/10 as a scale: :data:`HINGE_SCALE`). ``L`` is the largest over the sample's
    consecutive batches of ``batch_size`` rows (all of ``A`` for full batches, ``batch_size``
    0): small batches are noisier and get a smaller step. Gradient descent with step 1/L
    decreases an L-smooth objective (Nesterov, *Introductory Lectures on Convex Optimization*,
    2004, §2.1.5).
    """
    A = np.asarray(A, dtype=np.float64)
    size = len(A) if batch_size <= 0 else min(int(batch_size), len(A))
    lam = max((top_eigenvalue(A[i:i + size]) for i in range(0, len(A) - size + 1, max(size, 1))),
              default=0.0)
    smooth = CURVATURE[loss] * lam + l2_strength
    return 1.0 / smooth if smooth > 0 else ROW_ETA0


# ----------------------------------------------------------------------------- which path
#: Costs of the two paths of a table, in packed epochs at batch_size 512 (one vectorised step
#: per block), measured side by side at 1M x 100 on 2 cores, whole default runs interleaved
#: (benchmarks/paths.py; benchmarks/results/2026-12-01-paths-1000000x100-kernel-heldout.json:
#: medians of 3, packed copy's preparation 12.5 s and epoch 1.08 s, block-shuffled epoch 1.60 s,
#: its preparation and first epoch 0.18 + 3.51 s; measured 11.6, 1.48 and 3.41): writing the
#: packed copy (checks included) costs PACK_EPOCHS packed epochs; a block-shuffled epoch
#: BLOCK_EPOCH of them (its validation pass evaluates the rows its training pass kept:
#: bismarckpy.heldrows), its preparation from a sample and its first epoch (which checks and
#: counts every row) FIRST_EPOCH. Per-row steps (batch_size 1) cost about the same on both
#: paths, so there a block-shuffled epoch counts as one packed epoch. With these the defaults
#: (six expected epochs) take blocks, and the packed copy pays from about 18 epochs on.
PACK_EPOCHS = 11.0
BLOCK_EPOCH = 1.5
FIRST_EPOCH = 3.5
#: Below this many rows a packed copy takes well under a second: the defaults keep it (and
#: its exact validation share and batch size) whatever the epochs.
BLOCKS_MIN_ROWS = 200_000


def expected_epochs(max_epochs: int, tol: float | None, n_iter_no_change: int) -> int:
    """Epochs a run is expected to take: with a convergence test, the fewest it can stop
    after (one that reaches the best loss, then ``n_iter_no_change`` that do not improve on
    it: what large tables with the mini-batch defaults take), else ``max_epochs``."""
    if tol is None:
        return int(max_epochs)
    return int(min(max_epochs, 1 + n_iter_no_change))


def prefer_blocks(rows: float, epochs: int, batch_size: int) -> bool:
    """Whether a run of ``epochs`` epochs over ``rows`` rows at ``batch_size`` finishes sooner
    without a copy (``shuffle => 'blocks'``) than on a packed copy (``'once'``), by the
    measured costs above: blocks cost FIRST_EPOCH + (epochs - 1) · BLOCK_EPOCH packed epochs,
    the packed copy PACK_EPOCHS + epochs."""
    if rows < BLOCKS_MIN_ROWS or epochs < 1:
        return False
    block = BLOCK_EPOCH if batch_size != 1 else 1.0
    first = FIRST_EPOCH if batch_size != 1 else 1.0
    return first + (epochs - 1) * block < PACK_EPOCHS + epochs
