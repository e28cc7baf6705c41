"""One declaration of every training parameter: name, type, default, allowed values, doc.

SQL (``bismarck.train_glm``), the CLI (``bismarck train``) and the Python API all validate
through :func:`validate`, so a bad value gets the same message everywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import InvalidParameter
from .losses import REGISTRY
from .penalties import PENALTIES

LEARNING_RATES = ("constant", "invscaling", "adaptive", "bold_driver")
SHUFFLES = ("once", "always", "never", "blocks")
PARALLEL_MODES = ("average", "shared")
SOLVERS = ("sgd", "newton", "lbfgs")
AVERAGINGS = ("global", "partition")
EXACT_SOLVERS = ("newton", "lbfgs")  # their own defaults: tol 1e-8, no penalty, float64 blocks
EXACT_TOL = 1e-8  # tol of the exact solvers when none is given (R's glm uses the same)


@dataclass(frozen=True)
class Param:
    """A parameter's contract. ``low``/``high`` bound numbers; ``choices`` bound strings."""

    name: str
    kind: type
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    nullable: bool = False
    parse: Callable[[Any], Any] | None = None  # custom coercion; raises ValueError if bad
    shape: str = ""  # the allowed values in words, for a parameter with ``parse``
    why: str = ""  # why the range is what it is (a sentence), for error messages

    def describe(self) -> str:
        """The allowed values in words, for error messages and help."""
        if self.shape:
            return self.shape
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = {int: "an integer", float: "a float",
                bool: "a boolean (true/false, on/off, yes/no, 1/0)"}.get(self.kind, "a value")
        if self.low is not None and self.high is not None:
            op = "<" if self.low_open else "<="
            text = f"{kind} in the range {self.low:g} {op} x <= {self.high:g}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = kind
        return text + (" or NULL" if self.nullable else "")


def parse_class_weight(v: Any) -> str | dict[str, float]:
    """``'balanced'``, or a mapping class -> positive finite weight (a dict or JSON text).

    Keys are the label's classes as text ("0", "1", "-1", "true", ...); they are checked
    against the label's classes when training starts. Raises ValueError otherwise.
    """
    if isinstance(v, str):
        text = v.strip()
        if text.lower() == "balanced":
            return "balanced"
        try:
            v = json.loads(text)
        except ValueError:
            raise ValueError(v) from None
    if not isinstance(v, dict) or not v:
        raise ValueError(v)
    out: dict[str, float] = {}
    for key, weight in v.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(v)
        w = float(weight)
        if not (math.isfinite(w) and w > 0):
            raise ValueError(v)
        out[str(key).strip().lower() if isinstance(key, (str, bool)) else f"{float(key):g}"] = w
    return out


def parse_bool(text: str) -> bool | None:
    """A boolean spelled as PostgreSQL's ``boolean`` input accepts it, None otherwise.

    As ``parse_bool_with_len`` (src/backend/utils/adt/bool.c): surrounding whitespace and case
    ignored; ``true``, ``yes``, ``false``, ``no`` or a prefix of one (``t``, ``ye``, ``f``);
    ``on`` and ``off`` (or ``of``; a lone ``o`` is ambiguous); ``1`` and ``0``.
    """
    word = text.strip().lower()
    if not word:
        return None
    for full, value in (("true", True), ("yes", True), ("false", False), ("no", False)):
        if full.startswith(word):
            return value
    if word == "on":
        return True
    if len(word) >= 2 and "off".startswith(word):
        return False
    return {"1": True, "0": False}.get(word)


GLM_PARAMS: tuple[Param, ...] = (
    Param("solver", str, "sgd", "sgd: epochs of stochastic gradient descent; newton: exact "
          "Newton/IRLS fit (normal equations for squared loss) with standard errors; lbfgs: "
          "exact fit by L-BFGS, one pass per step, for many features.", choices=SOLVERS),
    Param("loss", str, "logistic", "logistic (classifier), squared (regression), hinge (linear "
          "SVM), softmax (multinomial classifier, K >= 2 classes).", choices=tuple(REGISTRY)),
    Param("penalty", str, "l2", "Regulariser on the coefficients (default 'none' with the "
          "exact solvers: the maximum-likelihood fit).", choices=PENALTIES),
    Param("alpha", float, 0.0001, "Strength of the penalty.", low=0.0),
    Param("l1_ratio", float, 0.15, "Elastic-net mixing: 0 is L2, 1 is L1.", low=0.0, high=1.0),
    Param("fit_intercept", bool, True, "Fit an intercept (never penalised)."),
    Param("standardize", bool, True, "Fit on standardised features; coefficients are reported "
          "in the original units."),
    Param("max_epochs", int, 100, "sgd: upper bound on passes over the data; newton and "
          "lbfgs: upper bound on iterations, each one pass plus its line-search passes "
          "(metrics 'passes' counts them all).", low=1, high=1_000_000),
    Param("tol", float, 0.001, "sgd: stop when the loss improves by less than tol for "
          "n_iter_no_change epochs (squared loss: judged in the standardised label's units, "
          "the loss divided by the label's variance, so the label's units do not matter; "
          "at batch_size 0 also when the decrease still to come, extrapolated from the last "
          "two, is below tol); newton: relative change of the loss or coefficients; "
          "lbfgs: largest gradient component relative to max(1, √loss) (default 1e-8 for "
          "both). None, from Python, never stops early.", low=0.0, nullable=True),
    Param("n_iter_no_change", int, 5, "Epochs without improvement before stopping (or, for "
          "adaptive, before dividing the rate by 5).", low=1, high=10_000),
    Param("learning_rate", str, "invscaling", "Schedule: constant, invscaling "
          "(eta0 / epoch^power_t for mini-batches, epochs counted from 1; eta0 / t^power_t "
          "per row at batch_size 1, t counting steps; eta0 every epoch at batch_size 0, "
          "whose exact gradients need no decay, except the hinge loss's), adaptive (divide by "
          "5 on a plateau), "
          "bold_driver (x1.05 on improvement, undo and halve otherwise).",
          choices=LEARNING_RATES),
    Param("eta0", float, None, "Initial learning rate. NULL: 0.1 for per-row steps; for "
          "mini-batches 1 / L, L the batches' curvature bound measured on a sample of "
          "training rows.", low=0.0, low_open=True, nullable=True),
    Param("power_t", float, None, "Exponent of invscaling. NULL: 0.25 for loss 'squared' "
          "(scikit-learn's SGDRegressor), 1 for loss 'hinge' with mini-batches (SGD's rate for "
          "the strongly convex, non-smooth SVM objective), else 0.5 (SGDClassifier).", low=0.0,
          high=10.0, nullable=True),
    Param("average", bool, True, "Averaged SGD (scikit-learn's average): the model is the "
          "mean of the last epoch's iterates, one per step (in the first epoch a mean that "
          "weighs the k-th iterate about k^3, so the start fades); false: the last iterate."),
    Param("batch_size", int, None, "Rows per SGD step: 1 is per-row SGD, 0 full-batch "
          "gradient descent. NULL: min(block_size, max(2, training rows // 1024)).",
          low=0, high=1_000_000_000, nullable=True),
    Param("shuffle", str, None, "once: one shuffled copy scanned every epoch; always: "
          "reshuffle each epoch; never: table order; blocks: no copy, groups of pages in a "
          "new random order each epoch, rows shuffled among 8 groups at a time (tables "
          "only). NULL: blocks or once, whichever the expected epochs and the measured costs "
          "say finishes sooner.", choices=SHUFFLES, nullable=True),
    Param("packed", bool, None, "Train on a packed copy (blocks of block_size rows as numpy "
          "buffers, one vectorised step per block or batch); NULL means yes with "
          "shuffle => 'once', no otherwise.", nullable=True),
    Param("block_size", int, 512, "Rows per packed block.", low=1, high=1_000_000),
    Param("dtype", str, "float32", "Value type in packed blocks (default float64 with the exact "
          "solvers).", choices=("float32", "float64")),
    Param("seed", int, None, "Makes shuffling and the validation split reproducible.",
          low=-(2**62), high=2**62, nullable=True),
    Param("parallel", int, None, "Processes per epoch, partial states merged by model "
          "averaging (n: the backend and n - 1 parallel workers; parallel_mode => 'shared' and "
          "partitions: n workers); 0 forces a serial scan; NULL lets PostgreSQL's planner "
          "decide.",
          low=0, high=64, nullable=True),
    Param("averaging", str, "global", "global: one aggregate per epoch over the whole source "
          "(parallel workers' models averaged); partition: the source is a partitioned table "
          "(local or postgres_fdw shards) and each epoch runs one aggregate per partition, "
          "where its rows are, the partition models averaged weighted by rows.",
          choices=AVERAGINGS),
    Param("parallel_mode", str, "average", "How parallel workers share the model: average "
          "(each trains its own copy, averaged when the epoch ends) or shared (every worker "
          "steps one model in shared memory, Hogwild!-style; SGD with batch_size >= 1 and "
          "parallel NULL or >= 1).",
          choices=PARALLEL_MODES),
    Param("validation_fraction", float, 0.0, "Share of rows held out to report validation loss "
          "and, when > 0, to decide convergence.", low=0.0, high=0.9,
          why="At least a tenth of the rows must remain to train on: a larger share would "
              "leave the model a handful of rows (and 1 none at all)."),
    Param("class_weight", str, None, "Classifiers: 'balanced' (n_samples / (2 * rows of the "
          "class)) or per-class weights as JSON, e.g. '{\"0\": 1, \"1\": 10}'; each row's loss "
          "and gradient are multiplied by its class's weight.", nullable=True,
          parse=parse_class_weight, shape="'balanced' or a JSON object of class: weight > 0"),
)

GLM_DEFAULTS: dict[str, Any] = {p.name: p.default for p in GLM_PARAMS}

#: The optimiser, data and execution parameters every model kind accepts (the rest of
#: GLM_PARAMS is the GLM's own: solver, loss, penalty, alpha, l1_ratio, fit_intercept,
#: standardize, class_weight).
COMMON_NAMES = ("max_epochs", "tol", "n_iter_no_change", "learning_rate", "eta0", "power_t",
                "batch_size", "shuffle", "packed", "block_size", "dtype", "seed", "parallel",
                "averaging", "parallel_mode", "validation_fraction")
COMMON_PARAMS: tuple[Param, ...] = tuple(p for p in GLM_PARAMS if p.name in COMMON_NAMES)


def merge_params(own: tuple[Param, ...],
                 common: tuple[Param, ...] = COMMON_PARAMS) -> tuple[Param, ...]:
    """A kind's parameters: its own declarations, then the common ones it does not redeclare.

    A kind redeclares a common parameter to change its default or range (its declaration wins).
    """
    names = {p.name for p in own}
    return tuple(own) + tuple(p for p in common if p.name not in names)


#: Parameters of SGD's steps, which the exact solvers (whole passes, no learning rate) ignore.
SGD_ONLY = ("learning_rate", "eta0", "power_t", "average", "batch_size")


def refuse_unused(values: dict[str, Any], params: tuple[Param, ...], loss: str, kind: str,
                  unset: str = "NULL", solver: str = "sgd") -> None:
    """Raise :class:`InvalidParameter` for the first value given (not None) that the model kind
    fitting ``loss`` does not take (``params``: its declarations), e.g. ``average`` with loss
    'softmax', or that ``solver`` ignores (an exact solver takes none of :data:`SGD_ONLY`,
    e.g. ``eta0`` with solver 'newton'); ``unset`` is how the caller's language spells "no
    value". A parameter left at None (NULL: its default) is always fine."""
    names = {q.name for q in params}
    exact = solver in EXACT_SOLVERS
    extra = sorted(k for k, v in values.items()
                   if v is not None and (k not in names or (exact and k in SGD_ONLY)))
    if not extra:
        return
    name = extra[0]
    if name in names:  # a parameter of the kind that the exact solver has no use for
        raise InvalidParameter(f"{name} is not available with solver '{solver}'",
                               detail=f"solver '{solver}' fits the model exactly from whole "
                                      f"passes over the data; {name} sets SGD's steps, which "
                                      "it does not take.",
                               hint=f"Leave {name} unset ({unset}), or use solver 'sgd'.")
    raise InvalidParameter(f"{name} is not available with loss '{loss}'",
                           detail=f"Models of loss '{loss}' (kind {kind}) take no {name}.",
                           hint=f"Leave {name} unset ({unset}).")


def validate(values: dict[str, Any], *, where: str = "train_glm",
             params: tuple[Param, ...] = GLM_PARAMS) -> dict[str, Any]:
    """Return a complete, typed parameter dict; raise :class:`InvalidParameter` on any bad value.

    ``params`` is a kind's declarations (:attr:`bismarckpy.kinds.ModelKind.params`; the GLM's by
    default). Missing or ``None`` values of non-nullable parameters take their defaults.
    """
    by_name = {p.name: p for p in params}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise InvalidParameter(
            f"unknown parameter {unknown[0]!r} for {where}",
            hint="Valid parameters: " + ", ".join(p.name for p in params) + ".")
    out: dict[str, Any] = {}
    for p in params:
        v = values.get(p.name)
        if v is None:
            out[p.name] = None if p.nullable and p.name in values else p.default
            continue
        out[p.name] = _check(p, v, where)
    if out.get("solver", "sgd") in EXACT_SOLVERS:  # their own defaults: the MLE, tightly
        if values.get("tol") is None and "tol" not in values:
            out["tol"] = EXACT_TOL
        if values.get("penalty") is None:
            out["penalty"] = "none"
        if values.get("dtype") is None:  # float32 blocks would round the data itself
            out["dtype"] = "float64"
        if out.get("parallel_mode") == "shared":
            raise InvalidParameter(
                "parallel_mode => 'shared' needs solver => 'sgd'",
                detail=f"solver => '{out['solver']}' sums exact passes over the data; its "
                       "parallel workers' sums are already combined exactly.",
                hint="Drop parallel_mode, or use solver => 'sgd'.")
    if out.get("parallel_mode") == "shared" and out.get("parallel") == 0:
        raise InvalidParameter(
            "parallel_mode => 'shared' needs parallel workers (parallel => 1 or more)",
            detail="parallel => 0 forces a serial scan: one process steps the model, so there "
                   "are no workers to share it.",
            hint="Set parallel => 2 (or more; NULL lets the planner choose), or drop "
                 "parallel_mode for serial SGD.")
    if out.get("shuffle") == "blocks" and (out.get("parallel") or out.get("parallel_mode")
                                           == "shared"):
        raise InvalidParameter(
            "shuffle => 'blocks' runs its epochs serially",
            detail="Its page groups are handed out in a random order by a function scan, "
                   "which PostgreSQL's parallel workers cannot share; parallel workers would "
                   "sit idle.",
            hint="Drop parallel and parallel_mode, or use shuffle => 'once' (a packed copy, "
                 "which parallel workers scan in parts).")
    if out.get("parallel_mode") == "shared" and out.get("batch_size") == 0:
        raise InvalidParameter(
            "parallel_mode => 'shared' needs SGD steps (batch_size >= 1)",
            detail="batch_size => 0 is full-batch gradient descent: one exact step per epoch, "
                   "which parallel workers already compute exactly by summing their gradients.",
            hint="Drop parallel_mode, or set batch_size to 1 or more.")
    return out


def _check(p: Param, v: Any, where: str) -> Any:
    """Coerce and range-check one value."""
    def bad() -> InvalidParameter:
        return InvalidParameter(
            f"invalid value for parameter {p.name!r}",
            detail=f"The {p.name!r} parameter of {where} must be {p.describe()}. "
                   + (p.why + " " if p.why else "") + f"Got {v!r} instead.",
            hint=p.doc)

    if p.parse is not None:
        try:
            return p.parse(v)
        except (TypeError, ValueError):
            raise bad() from None
    if p.kind is str:
        if not isinstance(v, str):
            raise bad()
        text = v.strip().lower()
        if p.choices and text not in p.choices:
            raise bad()
        return text
    if p.kind is bool:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer)) and v in (0, 1):  # as PostgreSQL's int::boolean
            return bool(v)
        parsed = parse_bool(v) if isinstance(v, str) else None
        if parsed is None:
            raise bad()
        return parsed
    if isinstance(v, bool):
        raise bad()
    try:
        num = p.kind(v)
    except (TypeError, ValueError, OverflowError):
        raise bad() from None
    if p.kind is int and float(num) != float(v):
        raise bad()
    if isinstance(num, float) and not math.isfinite(num):
        raise bad()
    if p.low is not None and (num <= p.low if p.low_open else num < p.low):
        raise bad()
    if p.high is not None and num > p.high:
        raise bad()
    return num
