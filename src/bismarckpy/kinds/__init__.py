"""Model kinds: one engine module per kind of model, and the one registry that finds them.

A *model kind* (a GLM, an MLP, a matrix factorisation, ...) is everything about a model that
differs from kind to kind; everything else — the data access, the epochs, the learning-rate
schedule, convergence, validation, history, the registry, the SQL, CLI and notebook front doors
— is written once and asks the kind through :class:`ModelKind`. The training loop, the SQL
aggregates, ``predict``/``evaluate``, the CLI and the estimators all find a kind with
:func:`get` (by name) or :func:`for_state` (by the first bytes of an aggregate state).

The aggregate (Bismarck's UDA)
------------------------------
One epoch is one PostgreSQL aggregate over the training rows (see :mod:`bismarckpy.execution`),
whose four functions are the kind's, as plain numpy functions of ``bytes`` (the ``bytea``
state), with no database in sight::

    init  = kind.initialize(p, data, model)           # built by the loop, passed as a parameter
    state = kind.transition(state, x, y, init)        # one row: x float8[] bytes, y float8
    state = kind.transition_block(state, block, init, first, stop)   # rows of a packed block
    state = kind.merge(a, b)                          # two partial states (parallel workers)
    state = kind.finalize(state)                      # the epoch's last word
    epoch = kind.decode(state)                        # -> an :class:`EpochState`

``state`` is ``None`` on a group's first row (then the function starts from ``init``). Every
state of a kind begins with the kind's 8-byte :attr:`ModelKind.magic`, so the generic
aggregates ``bismarck._epoch`` / ``bismarck._epoch_packed`` (whose combine and final functions
see only states) dispatch to the right kind, and no kind needs SQL of its own to train.
Rows reach ``transition`` as ``x`` = the in-memory bytes of a 1-D ``float8[]`` (20-byte header,
then float64 values; :func:`bismarckpy.kinds.glm._raw_vector` reads it) and ``y`` a float8; a
packed block is :mod:`bismarckpy.pack`'s format (label column first). Kinds whose rows are not
(features, label) pairs code them as such: matrix factorisation reads ``x = [row id, col id]``
and ``y = value``.

A kind's state is its own business (layout, header, codec). Two things are asked of it:

* ``merge`` says how partial states combine — :attr:`ModelKind.merge_rule` names it for the
  execution layer: ``"average"`` (model averaging, the SGD default), ``"sum"`` (exact sums:
  full-batch gradients, loss evaluation) or ``"none"`` (the state cannot be merged: the epoch
  runs serially, no parallel workers).
* a kind whose model is too large to copy per row or per block may keep it in the backend
  between calls, in :data:`scratch` (a per-backend dict, like PL/Python's ``GD``: the engine
  module lives there), and put only a small handle (say a key and a version) in the ``bytea``
  state. Such state never reaches a parallel worker, so the kind declares ``merge_rule="none"``.

The training loop's side
------------------------
Between epochs the loop carries the kind's *model* (any Python value the kind chooses; for a GLM
the decoded coefficients) and builds each epoch's ``init`` with ``initialize(p, data, model,
eta=..., per_step=..., evaluate=False)``: ``p`` is the validated parameters (common ones and the
kind's own, see :func:`bismarckpy.params.merge_params`), ``data`` the prepared data's facts
(``d``, ``mu``/``sd`` for standardisation, ``itemsize`` of packed blocks, the label coding,
``classes``...; :class:`bismarckpy.loop._Prepared`), ``model`` None before the first epoch.
``evaluate=True`` asks for a state that only adds up the loss (validation, checks). The
decoded :class:`EpochState` gives the loop ``rows``, the losses and ``model`` to carry on (or
to drop, when the schedule undoes an epoch). At the end ``export(p, data, model)`` gives the
stored form (:class:`Stored`) that goes into ``bismarck.models`` (``kind``, ``stored`` jsonb,
``state`` bytea), and ``predict(stored, X)`` scores rows from that stored form alone.

Optional hooks: ``evaluate(session, row, relation)`` (metrics for ``bismarck.evaluate``),
``predict_proba(stored, X)`` (class probabilities for ``bismarck.predict_proba``),
``check_options(p)`` (refuse parameter values before any work), ``after_prepare(session, p,
data)`` (learn from the prepared data before the first epoch, e.g. the classes; the softmax
kind does) and ``packed=False`` (the kind trains on row copies only). A loss of the loss
registry names the kind that trains it (:attr:`bismarckpy.losses.Loss.kind`), so
``train_glm(..., loss => 'softmax')`` trains a :mod:`bismarckpy.kinds.softmax` model.

A worked minimal example
------------------------
A "mean" kind that predicts the running mean of the label. Its state after the magic is five
float64 values: the packed blocks' ``d`` and ``itemsize`` (from ``data``, so that
``transition_block`` can read a block), then the count, the sum of labels and the squared error
around the mean so far. Both transitions are real: the default path trains on packed blocks
(``packed=True``), rows reach ``transition`` on the row paths (``packed => false``)::

    import numpy as np
    from bismarckpy import kinds, pack
    from bismarckpy.params import merge_params

    MAGIC = b"MEANv001"

    def initialize(p, data, model, *, eta=0.0, per_step=False, evaluate=False):
        return MAGIC + np.array([data.d, data.itemsize, 0.0, 0.0, 0.0]).tobytes()

    def _add(state, init, ys):
        s = np.frombuffer((state or init)[8:], dtype="<f8").copy()
        for y in ys:
            mean = s[3] / s[2] if s[2] else 0.0
            s[2:] += (1.0, y, 0.5 * (y - mean) ** 2)
        return MAGIC + s.tobytes()

    def transition(state, x, y, init):
        return _add(state, init, [] if y is None else [y])

    def transition_block(state, block, init, first=0, stop=None):
        d, itemsize = (int(v) for v in np.frombuffer(init[8:24], dtype="<f8"))
        _, y = pack.read_block(block, d, itemsize)
        return _add(state, init, y[first:stop])

    def merge(a, b):
        if a is None or b is None:
            return a or b
        s = np.frombuffer(a[8:], "<f8").copy()
        s[2:] += np.frombuffer(b[8:], "<f8")[2:]
        return MAGIC + s.tobytes()

    def decode(state):
        n, total, sse = np.frombuffer(state[8:], dtype="<f8")[2:]
        return kinds.Epoch(rows=int(n), loss_sum=float(sse), model=total / max(n, 1))

    KIND = kinds.ModelKind(
        name="mean", magic=MAGIC, params=merge_params(()), losses=("squared",),
        initialize=initialize, transition=transition, transition_block=transition_block,
        merge=merge, finalize=lambda s: s, decode=decode, merge_rule="sum",
        export=lambda p, data, model: kinds.Stored("mean", {"mean": model}),
        predict=lambda stored, X: np.full(len(X), stored.model["mean"]))

A kind that trains on rows only declares ``packed=False`` instead of a ``transition_block``
of its own (any callable will do, e.g. one that raises): the loop then never packs for it and
refuses ``packed => true``.

and in this module ``BUILTIN = (..., "mean")`` and ``BUILTIN_MAGIC[b"MEANv001"] = "mean"``
(a state's kind is found by its magic without importing the other kinds). That module, its
tests (the numpy functions without a database; training end to end on a real server) and, for a
new front door, its SQL declarations (a ``bismarck.train_mean`` wrapper over the common
``bismarck._train``) are all a kind needs.
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InvalidData, InvalidParameter

if TYPE_CHECKING:
    import numpy as np

    from ..params import Param

#: The kinds that ship with the engine: module ``bismarckpy.kinds.<name>`` defines ``KIND``.
BUILTIN: tuple[str, ...] = ("glm", "softmax", "mlp", "mf")

#: The magic of each built-in kind (the first 8 bytes of its states) -> its name, so that
#: :func:`for_state` imports that kind alone. Importing every kind to find one cost a parallel
#: worker about 40 ms of CPU before its first block, in every epoch (a worker is a new
#: process each time); :func:`get` checks each kind's module against this table.
BUILTIN_MAGIC: dict[bytes, str] = {
    struct.pack("<d", 2012.0): "glm",
    struct.pack("<d", 2014.0): "softmax",
    struct.pack("<d", 2043.0): "mlp",
    b"BISMF\x00\x00\x01": "mf",
}

#: How partial states of an epoch combine (see :mod:`bismarckpy.execution`).
MERGE_RULES = ("average", "sum", "none")

#: Per-backend storage for kinds that keep a large model between calls and pass a handle in
#: the state (the engine module itself is cached in PL/Python's GD, so this lives as long).
scratch: dict[Any, Any] = {}


class EpochState(Protocol):
    """What the loop reads from a decoded epoch state (any kind's)."""

    rows: int  # rows that contributed (skipped rows excluded)
    loss_sum: float  # sum of the per-row losses seen during the epoch
    skipped: int  # rows skipped (NULL or non-finite values)
    parts: int  # partial states merged into this one (1: a serial scan)
    t: float  # the optimiser's step counter after the epoch (learning-rate schedules read it)

    @property
    def mean_loss(self) -> float:
        """Mean per-row loss plus the penalty (what the schedule watches)."""

    @property
    def data_loss(self) -> float:
        """Mean per-row loss alone (what validation reports)."""


@dataclass
class Epoch:
    """A plain :class:`EpochState` for kinds that need nothing more; ``model`` is carried."""

    rows: int
    loss_sum: float
    model: Any = None
    skipped: int = 0
    parts: int = 1
    t: float = 0.0
    penalty: float = 0.0

    @property
    def mean_loss(self) -> float:
        """Mean per-row loss plus the penalty; NaN without rows."""
        return self.loss_sum / self.rows + self.penalty if self.rows else float("nan")

    @property
    def data_loss(self) -> float:
        """Mean per-row loss; NaN without rows."""
        return self.loss_sum / self.rows if self.rows else float("nan")


@dataclass(frozen=True)
class Stored:
    """A model in its stored form, as ``bismarck.models`` holds it for any kind.

    ``model``: JSON-able parameters and small arrays (the ``model`` jsonb column); ``state``:
    large arrays as bytes (the ``state`` bytea column), e.g. factor matrices; ``classes`` the
    label's classes for classifiers (in the label's type), else None.
    """

    kind: str
    model: Mapping[str, Any]
    state: bytes | None = None
    classes: list[Any] | None = None


Initialize = Callable[..., bytes]
Transition = Callable[[Any, Any, Any, bytes], bytes]
BlockTransition = Callable[[Any, Any, bytes, int, Any], bytes]
Merge = Callable[[Any, Any], Any]
Finalize = Callable[[Any], Any]


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: its aggregate functions, parameters, codec, export and predict.

    Every callable is a pure function (numpy and the standard library; no database); see the
    module docstring for their contracts and a worked example.
    """

    name: str
    magic: bytes  # the 8 bytes every aggregate state of this kind begins with
    params: tuple[Param, ...]  # the kind's own parameters merged with the common ones
    losses: tuple[str, ...]  # names in bismarckpy.losses.REGISTRY the kind can train
    initialize: Initialize  # (p, data, model, *, eta, per_step, evaluate) -> init state
    transition: Transition  # (state, x, y, init) -> state: one row
    transition_block: BlockTransition  # (state, block, init, first, stop) -> state
    merge: Merge  # (a, b) -> state: two partial states
    finalize: Finalize  # state -> state: the epoch's end
    decode: Callable[[bytes], Any]  # state -> EpochState with .model (what the loop carries)
    export: Callable[..., Stored]  # (p, data, model) -> Stored
    predict: Callable[[Stored, np.ndarray], np.ndarray]  # (stored, X n×d) -> n predictions
    merge_rule: str = "average"
    # (session, registry row as a dict, relation) -> [{"metric", "value"}]; None: no evaluate
    evaluate: Callable[[Any, dict[str, Any], str], list[dict[str, Any]]] | None = None
    # (stored, X n×d) -> n × K class probabilities, for probabilistic classifiers
    predict_proba: Callable[[Stored, np.ndarray], np.ndarray] | None = None
    # (session, p, data) -> None: learn what the kind needs from the prepared data before the
    # first epoch (e.g. the classes); raises a BismarckError for data it cannot train on
    after_prepare: Callable[[Any, dict[str, Any], Any], None] | None = None
    # (p) -> None: refuse parameter values the kind cannot train with, before any work
    check_options: Callable[[dict[str, Any]], None] | None = None
    packed: bool = True  # False: trains on row copies only (packed => false, no packed tables)
    doc: str = ""
    sql_train: str = ""  # the SQL function that trains it (for messages and the README)
    extra: Mapping[str, Any] = field(default_factory=dict)  # kind-specific facts

    def __post_init__(self) -> None:
        if len(self.magic) != 8:
            raise ValueError(f"kind {self.name!r}: magic must be 8 bytes, got {self.magic!r}")
        if self.merge_rule not in MERGE_RULES:
            raise ValueError(f"kind {self.name!r}: merge_rule must be one of {MERGE_RULES}")

    def __repr__(self) -> str:
        return f"<model kind {self.name!r}>"

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of every parameter the kind accepts, in declaration order."""
        return tuple(p.name for p in self.params)


_LOADED: dict[str, ModelKind] = {}
_BY_MAGIC: dict[bytes, ModelKind] = {}


def get(name: str) -> ModelKind:
    """The kind called ``name`` (imported on first use); :class:`InvalidParameter` (22023)
    names the known kinds."""
    kind = _LOADED.get(name)
    if kind is not None:
        return kind
    if name not in BUILTIN:
        raise InvalidParameter(f"unknown model kind {name!r}",
                               detail=f"The model kinds are {', '.join(BUILTIN)}.",
                               hint="Name one of them (bismarck.models.kind).")
    kind = importlib.import_module(f"{__name__}.{name}").KIND
    if kind.name != name:
        raise ValueError(f"module kinds.{name} declares kind {kind.name!r}")
    if BUILTIN_MAGIC.get(kind.magic) != name:
        raise ValueError(f"kind {name!r} has the magic {kind.magic!r}, which BUILTIN_MAGIC "
                         "does not give to it")
    other = _BY_MAGIC.get(kind.magic)
    if other is not None and other.name != name:
        raise ValueError(f"kinds {other.name!r} and {name!r} share the magic {kind.magic!r}")
    _LOADED[name] = kind
    _BY_MAGIC[kind.magic] = kind
    return kind


def all() -> tuple[ModelKind, ...]:  # noqa: A001 (the registry's own name for "every kind")
    """Every registered kind, in :data:`BUILTIN` order."""
    return tuple(get(name) for name in BUILTIN)


def for_state(state: bytes | bytearray | memoryview) -> ModelKind:
    """The kind whose aggregate state this is, by its first 8 bytes (the kind's magic)."""
    head = bytes(state[:8])
    kind = _BY_MAGIC.get(head)
    if kind is None and head in BUILTIN_MAGIC:
        kind = get(BUILTIN_MAGIC[head])
    if kind is None:
        raise InvalidData("not a bismarck model state",
                          detail=f"The state begins with {head!r}, the magic of no model kind "
                                 f"({', '.join(BUILTIN)}).")
    return kind
