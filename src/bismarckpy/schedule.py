"""Per-epoch control: learning-rate schedules, convergence and divergence checks.

Pure state machine, no database: the training loop feeds it each epoch's losses and it answers
with the next learning rate, whether to keep or undo the epoch, and whether to stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
    eta: float = field(init=False)
    best: float = field(init=False, default=math.inf)
    previous: float = field(init=False, default=math.inf)
    first: float | None = field(init=False, default=None)
    no_improvement: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.eta = self.eta0

    @property
    def per_step(self) -> bool:
        """True when the rate decays inside the epoch (invscaling), not between epochs."""
        return self.learning_rate == "invscaling"

    def rate_in_force(self, t: float) -> float:
        """The learning rate of the latest step once ``t`` steps were taken since training began.

        invscaling: the step after ``k`` earlier steps has rate ``eta0 / (k + 1) ** power_t``
        (scikit-learn's ``eta0 / t ** power_t`` with t counted from 1, and
        :func:`bismarckpy.kinds.glm._eta`), so the latest of ``t`` steps had ``eta0 / t ** power_t``
        (``eta0`` before any step). The other schedules change only between epochs, so the rate
        in force is ``eta`` until :meth:`after_epoch` sets the next epoch's. This is what
        ``training_history.learning_rate`` records for the epoch that ended after step ``t``.
        """
        if self.per_step:
            return self.eta0 / max(t, 1.0) ** self.power_t
        return self.eta

    def after_epoch(self, epoch: int, train_loss: float, score: float) -> Decision:
        """Update the rate from this epoch's train loss and score (validation or train loss)."""
        self._check_diverged(epoch, train_loss)
        if self.learning_rate == "bold_driver":
            if train_loss > self.previous:
                self.eta *= 0.5
                return self._converge(epoch, score, accept=False)
            self.eta *= 1.05
            self.previous = train_loss
        return self._converge(epoch, score, accept=True)

    def _converge(self, epoch: int, score: float, *, accept: bool) -> Decision:
        """scikit-learn's rule: count epochs whose score is not ``tol`` better than the best."""
        if self.tol is not None and score > self.best - self.tol:
            self.no_improvement += 1
        else:
            self.no_improvement = 0
        if accept and score < self.best:
            self.best = score
        if self.no_improvement >= self.n_iter_no_change:
            if self.learning_rate == "adaptive" and self.eta > MIN_ADAPTIVE_ETA:
                self.eta /= 5.0
                self.no_improvement = 0
            else:
                return Decision(accept=accept, stop=True, converged=True)
        if self.learning_rate == "bold_driver" and self.eta < 1e-12:
            return Decision(accept=accept, stop=True, converged=True)
        return Decision(accept=accept, stop=False, converged=False)

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
                   f"learning_rate => '{self.learning_rate}' and eta0 => {self.eta0:g} "
                   f"(current rate {self.eta:g}).",
            hint=f"Lower eta0 (try {self.eta0 / 10:g}), use learning_rate => 'adaptive' or "
                 "'bold_driver'" + (", or rescale the columns" if self.standardize
                                    else ", or use standardize => true")
                 + ". No model was stored.")
