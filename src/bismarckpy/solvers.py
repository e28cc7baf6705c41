"""Exact GLM solvers over aggregate passes: Newton/IRLS with step halving, and L-BFGS.

Each solver minimises the mean loss plus an L2 penalty,
``f(β) = Σᵢ ℓ(x̃ᵢ·β, yᵢ) / n + ½ Σⱼ λⱼ βⱼ²`` (λ is 0 for the intercept), by calling
``evaluate(beta, mode, step)``: one pass of :mod:`bismarckpy.exact` over the data, returning
its sums at ``beta``. The solvers work in standardised coordinates ``θ`` (features centred and
scaled by their moments, :class:`Coordinates`), which makes the linear systems well conditioned
without changing the minimiser; coefficients come back in the original units.

Newton's method for logistic loss is IRLS (iteratively reweighted least squares: each Newton
system is a weighted least-squares problem); for squared loss one pass and one solve of the
normal equations give the exact minimiser. L-BFGS is the two-loop recursion of Nocedal (1980)
with a backtracking Armijo line search (Nocedal & Wright, *Numerical Optimization*, 2nd ed.,
algorithms 7.4 and 3.1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import Diverged, InvalidData, Separated
from .exact import GRADIENT, HESSIAN, Pass

Evaluate = Callable[[np.ndarray, int, float], Pass]
SINGULAR = 1e-12  # smallest/largest eigenvalue of the scaled Hessian below which it is singular
SEPARATED = 0.1  # a final Newton step this long (standardised units) means separation
MAX_HALVINGS = 40
ROUNDED_GRADIENT = 1e-7  # lbfgs: a gradient this small where no step decreases f is converged


@dataclass
class Coordinates:
    """The affine reparametrisation ``β = A θ`` in which the solvers work.

    With an intercept (first coefficient): ``βⱼ = θⱼ / sⱼ`` and ``β₀ = θ₀ − Σ μⱼ θⱼ / sⱼ``, i.e.
    the model on centred, scaled features ``(x − μ) / s``. Without one, features are only
    scaled, by their root mean square ``√(s² + μ²)``, so the fit stays through the origin.
    ``center`` and ``scale`` have one entry per feature; a zero scale counts as 1.
    """

    center: np.ndarray
    scale: np.ndarray
    fit_intercept: bool

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64)
        self.scale = np.asarray(self.scale, dtype=np.float64)
        self.scale = np.where(self.scale > 0, self.scale, 1.0)
        if not self.fit_intercept:
            rms = np.sqrt(self.scale ** 2 + self.center ** 2)
            self.scale = np.where(rms > 0, rms, 1.0)
            self.center = np.zeros_like(self.center)

    @property
    def k(self) -> int:
        """1 when the first coefficient is the intercept, else 0."""
        return int(self.fit_intercept)

    def to_beta(self, theta: np.ndarray) -> np.ndarray:
        """``β = A θ``."""
        beta = np.array(theta, dtype=np.float64)
        beta[self.k:] /= self.scale
        if self.fit_intercept:
            beta[0] -= float(self.center @ beta[1:])
        return beta

    def to_theta(self, beta: np.ndarray) -> np.ndarray:
        """``θ = A⁻¹ β``."""
        theta = np.array(beta, dtype=np.float64)
        if self.fit_intercept:
            theta[0] += float(self.center @ beta[1:])
        theta[self.k:] *= self.scale
        return theta

    def gradient(self, g: np.ndarray) -> np.ndarray:
        """``Aᵀ g``: a gradient in β as a gradient in θ."""
        out = np.array(g, dtype=np.float64)
        if self.fit_intercept:
            out[1:] -= self.center * g[0]
        out[self.k:] /= self.scale
        return out

    def matrix(self) -> np.ndarray:
        """``A`` itself (``p × p``), for Hessians: ``H_θ = Aᵀ H A``."""
        p = self.center.size + self.k
        A = np.zeros((p, p))
        A[np.arange(self.k, p), np.arange(self.k, p)] = 1.0 / self.scale
        if self.fit_intercept:
            A[0, 0] = 1.0
            A[0, 1:] = -self.center / self.scale
        return A


@dataclass
class Problem:
    """What a solver needs besides the data: loss, names, coordinates, penalty, stopping rule.

    ``names`` are the coefficients' names (``"(intercept)"`` first when fitted), used in error
    messages; ``penalty`` holds λⱼ per coefficient (0 for the intercept).
    """

    loss: str
    names: Sequence[str]
    coords: Coordinates
    penalty: np.ndarray
    tol: float | None
    max_iter: int

    def objective(self, P: Pass) -> float:
        """Mean loss plus penalty at the pass's coefficients."""
        return P.loss_sum / P.rows + 0.5 * float(self.penalty @ (P.beta * P.beta))

    def gradient(self, P: Pass) -> np.ndarray:
        """Gradient of :meth:`objective` in β."""
        return P.grad / P.rows + self.penalty * P.beta

    def hessian(self, P: Pass) -> np.ndarray:
        """Hessian of :meth:`objective` in β (the pass must carry one)."""
        assert P.hess is not None
        return P.hess / P.rows + np.diag(self.penalty)


@dataclass
class Fit:
    """A solver's result: the last pass (at the returned coefficients) and how it went."""

    last: Pass
    iterations: int
    converged: bool

    @property
    def beta(self) -> np.ndarray:
        """The coefficients, intercept first when fitted (original units)."""
        return self.last.beta


def newton(evaluate: Evaluate, prob: Problem) -> Fit:
    """Newton–Raphson (IRLS for logistic loss) from β = 0, with step halving.

    Stops when the relative change of the objective, ``|fₖ − fₖ₋₁| / (|fₖ| + 0.1)`` (the rule of
    R's ``glm``), or the largest change of a standardised coefficient falls to ``tol``. Squared
    loss needs one pass for the minimiser (the objective is quadratic, so it follows exactly
    from the sums at β = 0) and a second at it for its loss. Raises :class:`InvalidData` for a
    singular Hessian or separated classes, :class:`Diverged` for a non-finite objective.
    """
    A = prob.coords.matrix()
    p = A.shape[0]
    cur = evaluate(np.zeros(p), HESSIAN, 0.0)
    f = _finite_objective(prob, cur)
    H_theta = A.T @ prob.hessian(cur) @ A
    check_rank(H_theta, prob.names, prob.coords.fit_intercept)
    if prob.loss == "squared":
        # The minimiser from the normal equations, then a pass at it for the loss (the RSS):
        # moving the loss from β = 0 by a Taylor step cancels catastrophically when RSS ≪ TSS.
        step = _solve(H_theta, -prob.coords.gradient(prob.gradient(cur)), prob.names)
        at = evaluate(prob.coords.to_beta(step), GRADIENT, 1.0)
        return Fit(last=_with_hessian(at, cur.hess), iterations=1, converged=True)
    converged = False
    iterations = 0
    for iterations in range(1, prob.max_iter + 1):  # noqa: B007 (reported after the loop)
        g_theta = prob.coords.gradient(prob.gradient(cur))
        H_theta = A.T @ prob.hessian(cur) @ A
        delta = _solve(H_theta, -g_theta, prob.names)
        theta = prob.coords.to_theta(cur.beta)
        t = 1.0
        for _ in range(MAX_HALVINGS):
            nxt = evaluate(prob.coords.to_beta(theta + t * delta), HESSIAN, t)
            fn = prob.objective(nxt)
            if math.isfinite(fn) and fn <= f + 1e-12 * abs(f):
                break
            t *= 0.5
        else:
            if not math.isfinite(f):
                raise _diverged(prob)
            converged = True  # no representable decrease left: f is minimal to rounding
            break
        change = abs(f - fn) / (abs(fn) + 0.1)
        moved = float(np.max(np.abs(t * delta))) / (1.0 + float(np.max(np.abs(theta))))
        cur, f = nxt, fn
        if prob.tol is not None and (change <= prob.tol or moved <= prob.tol):
            converged = True
            break
    check_separation(prob, cur)
    return Fit(last=cur, iterations=iterations, converged=converged)


def lbfgs(evaluate: Evaluate, prob: Problem, memory: int = 10) -> Fit:
    """L-BFGS in standardised coordinates: one pass per objective and gradient evaluation.

    Stops when the largest component of the gradient (of the mean objective, in standardised
    coordinates) is at most ``tol · max(1, √f)``, or where no step decreases ``f`` and that
    gradient is at most ``max(tol, 1e-7) · max(1, √f)`` (rounding has the last word). A final
    ``HESSIAN`` pass at the solution supplies standard
    errors (unpenalised fits only). Raises :class:`InvalidData` for a singular Hessian or
    separated classes, :class:`Diverged` when no step decreases a non-finite objective.
    """
    coords = prob.coords
    p = coords.center.size + coords.k
    cur = evaluate(np.zeros(p), GRADIENT, 0.0)
    f = _finite_objective(prob, cur)
    theta = np.zeros(p)
    g = coords.gradient(prob.gradient(cur))
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    converged = False
    iterations = 0
    for iterations in range(1, prob.max_iter + 1):  # noqa: B007 (reported after the loop)
        scale = max(1.0, math.sqrt(abs(f)))  # squared loss: the gradient has labels' units
        if prob.tol is not None and float(np.max(np.abs(g))) <= prob.tol * scale:
            converged = True
            break
        d = -_two_loop(g, S, Y)
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction: forget the curvature pairs
            S.clear()
            Y.clear()
            d, slope = -g, -float(g @ g)
        t = 1.0 if S else min(1.0, 1.0 / max(float(np.max(np.abs(g))), 1e-300))
        for _ in range(MAX_HALVINGS):
            nxt = evaluate(coords.to_beta(theta + t * d), GRADIENT, t)
            fn = prob.objective(nxt)
            if math.isfinite(fn) and fn <= f + 1e-4 * t * slope:
                break
            # Backtrack to the minimiser of the quadratic through f, slope and fn (bounded).
            q = (-slope * t * t / (2.0 * (fn - f - slope * t))
                 if math.isfinite(fn) and fn - f - slope * t > 0 else 0.5 * t)
            t = min(max(q, 0.1 * t), 0.5 * t)
        else:
            if not math.isfinite(f):
                raise _diverged(prob)
            # No decrease left at this precision: converged if the gradient is as small as
            # rounding of the objective lets it get (tol below that cannot be reached).
            converged = _rounded_minimum(prob, g, f)
            break
        if not fn < f:  # accepted without a decrease: rounding has the last word
            converged = _rounded_minimum(prob, g, f)
            break
        theta_new = theta + t * d
        g_new = coords.gradient(prob.gradient(nxt))
        s, y = theta_new - theta, g_new - g
        if float(s @ y) > 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(y)):
            S.append(s)
            Y.append(y)
            if len(S) > memory:
                S.pop(0)
                Y.pop(0)
        theta, g, f, cur = theta_new, g_new, fn, nxt
    else:
        converged = (prob.tol is not None
                     and float(np.max(np.abs(g))) <= prob.tol * max(1.0, math.sqrt(abs(f))))
    if not np.any(prob.penalty):  # the Hessian for standard errors, and the checks it allows
        cur = evaluate(cur.beta, HESSIAN, 0.0)
        check_separation(prob, cur)
        check_rank(coords.matrix().T @ prob.hessian(cur) @ coords.matrix(), prob.names,
                   coords.fit_intercept)
    return Fit(last=cur, iterations=iterations, converged=converged)


def _rounded_minimum(prob: Problem, g: np.ndarray, f: float) -> bool:
    """Where no step decreases ``f`` any more: converged if the gradient is as small as the
    objective's rounding lets it get (a ``tol`` below that cannot be reached)."""
    return (float(np.max(np.abs(g)))
            <= max(prob.tol or 0.0, ROUNDED_GRADIENT) * max(1.0, math.sqrt(abs(f))))


def _two_loop(g: np.ndarray, S: list[np.ndarray], Y: list[np.ndarray]) -> np.ndarray:
    """The L-BFGS two-loop recursion: ``H g`` for the inverse-Hessian estimate ``H``."""
    q = g.copy()
    alphas = []
    for s, y in zip(reversed(S), reversed(Y)):
        a = float(s @ q) / float(y @ s)
        alphas.append(a)
        q -= a * y
    if S:
        q *= float(S[-1] @ Y[-1]) / float(Y[-1] @ Y[-1])
    for (s, y), a in zip(zip(S, Y), reversed(alphas)):
        b = float(y @ q) / float(y @ s)
        q += (a - b) * s
    return q


def _solve(H: np.ndarray, rhs: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Solve ``H x = rhs`` for a symmetric positive definite ``H`` (Cholesky)."""
    try:
        L = np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        check_rank(H, names)
        raise InvalidData("the Hessian is not positive definite",
                          detail="Newton's method needs a convex objective at every step.",
                          hint="Check the data for extreme values, or use solver => 'lbfgs'."
                          ) from None
    return np.linalg.solve(L.T, np.linalg.solve(L, rhs))


def _with_hessian(P: Pass, hess: np.ndarray | None) -> Pass:
    """``P`` carrying ``hess`` (squared loss: the Hessian does not depend on β)."""
    return dataclasses.replace(P, hess=hess)


def check_rank(H: np.ndarray, names: Sequence[str], fit_intercept: bool = True) -> None:
    """Raise :class:`InvalidData` naming the coefficients involved if ``H`` is singular.

    ``H`` is the Hessian in standardised, centred coordinates (each feature's diagonal entry is
    about 1 whatever the column's offset or scale); a (near) zero diagonal entry is a column
    that is constant (or, without an intercept, zero). Otherwise the eigenvector of the
    smallest eigenvalue of ``H`` scaled to a unit diagonal gives the linear combination of
    columns that is (nearly) constant.
    """
    diag = np.diag(H).copy()
    if not np.all(np.isfinite(H)):
        raise InvalidData("the Hessian has non-finite entries",
                          detail="Some feature values are too large to square in float8.",
                          hint="Rescale the features (for example to thousands instead of units).")
    top = float(np.max(diag)) if diag.size else 0.0
    flat = [names[j] for j in range(len(diag)) if diag[j] <= SINGULAR * max(top, 1e-300)]
    if flat:
        raise constant_columns(flat, fit_intercept)
    sd = np.sqrt(diag)
    vals, vecs = np.linalg.eigh(H / np.outer(sd, sd))
    if vals[0] > SINGULAR * vals[-1]:
        return
    v = np.abs(vecs[:, 0])
    involved = [names[j] for j in np.flatnonzero(v >= 1e-6 * v.max())]
    raise InvalidData(
        "collinear feature columns: " + ", ".join(involved),
        detail=f"The design matrix has rank {int(np.sum(vals > SINGULAR * vals[-1]))} of "
               f"{len(names)}: a linear combination of these columns is constant, so their "
               "coefficients are not identified (XᵀX is singular).",
        hint="Drop one of these columns, or use penalty => 'l2' with alpha > 0.")


def constant_columns(names: Sequence[str], fit_intercept: bool = True) -> InvalidData:
    """The error for feature columns that never vary (without an intercept: all zero)."""
    if not fit_intercept:
        return InvalidData(
            "all-zero feature columns: " + ", ".join(names),
            detail="A column that is zero in every row has no effect on the fit (the model has "
                   "no intercept), so its coefficient is not identified.",
            hint="Drop these columns, or use penalty => 'l2' with alpha > 0.")
    return InvalidData(
        "constant feature columns: " + ", ".join(names),
        detail="A column that never varies cannot be told apart from the intercept, so its "
               "coefficient is not identified.",
        hint="Drop these columns, or use penalty => 'l2' with alpha > 0.")


def check_separation(prob: Problem, P: Pass) -> None:
    """Raise :class:`InvalidData` when an unpenalised logistic fit ran off to infinity.

    Under perfect or quasi-perfect separation the maximum-likelihood coefficients are infinite:
    fitted probabilities reach 0 or 1, the loss flattens out and every Newton step keeps going
    the same way. So the test is the Newton step at the final pass (``P`` carries the Hessian):
    at a true optimum it is negligible, under separation it stays of order one in standardised
    units. The columns named are those that step moves most (the intercept alone: every row
    has the same class).
    """
    if prob.loss != "logistic" or np.any(prob.penalty) or P.extreme == 0 or P.hess is None:
        return
    A = prob.coords.matrix()
    vals, vecs = np.linalg.eigh(A.T @ prob.hessian(P) @ A)
    g = vecs.T @ prob.coords.gradient(prob.gradient(P))
    step = np.abs(vecs @ (g / np.maximum(vals, 1e-300)))
    if float(step.max()) < SEPARATED:
        return
    k = prob.coords.k
    names = list(prob.names)
    features = step[k:]
    if features.size and float(features.max()) >= SEPARATED:
        involved = [names[k + j] for j in np.flatnonzero(features >= 0.25 * features.max())]
    else:
        involved = names[:1]
    raise Separated(
        "the classes are separated (perfectly or quasi-) by " + ", ".join(involved),
        columns=involved,
        detail=f"{P.extreme} of {P.rows} rows are fitted with a probability of 0 or 1 and the "
               "coefficients grow without bound, so the maximum-likelihood estimate does not "
               "exist.",
        hint="Drop or merge these columns, or use penalty => 'l2' with alpha > 0, which keeps "
             "the coefficients finite.")


def _finite_objective(prob: Problem, P: Pass) -> float:
    """The objective of the first pass, which must be finite."""
    if P.rows == 0:
        raise InvalidData("no rows to fit", hint="Check the source table and its NULLs.")
    p = P.beta.size
    if P.rows < p and not np.any(prob.penalty):
        raise InvalidData(
            f"too few rows ({P.rows}) for {p} coefficients",
            detail=f"An unpenalised fit of {p} coefficients (the intercept counts) needs at "
                   f"least {p} rows; with fewer the estimate is not unique.",
            hint="Train on more rows, use fewer features, or use penalty => 'l2' with "
                 "alpha > 0.")
    f = prob.objective(P)
    if not math.isfinite(f):
        raise _diverged(prob)
    return f


def _diverged(prob: Problem) -> Diverged:
    """The error for an objective that is not finite."""
    return Diverged("the objective is not finite",
                    detail=f"The {prob.loss} loss overflowed float8.",
                    hint="Rescale features or labels with very large values.")
