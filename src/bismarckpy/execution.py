"""Execution: one epoch (or one pass) of a model kind over a data source, by a strategy.

This is the seam between the training loop and the database. The loop says *what* to run — a
kind's init state over a :class:`Scan` (where the epoch reads) — and an :class:`Strategy` says
*how*: today one PostgreSQL aggregate over the whole scan, optionally with parallel workers
whose partial states the aggregate's combine function merges (model averaging for SGD, an exact
sum for full-batch passes: the kind's :attr:`~bismarckpy.kinds.ModelKind.merge_rule`). The
``shared`` strategy (``parallel_mode => 'shared'``) runs the same query with the workers
stepping one model in a shared segment, created and dropped around the query by
:mod:`bismarckpy.shared_model`. Other strategies (one aggregate per partition or shard with
averaging here) belong in this module and need no change to the kinds or the loop.

The SGD aggregates ``bismarck._epoch`` (rows) and ``bismarck._epoch_packed`` (packed blocks)
are generic: their functions dispatch on the kind's magic at the head of the state
(:func:`bismarckpy.kinds.for_state`). The exact solvers' passes use their own aggregates
(:data:`EXACT`) through the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .packing import settings_for_transaction


class Session(Protocol):
    """The part of the loop's session that runs an epoch."""

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """Run SQL with ``%s`` placeholders; return all rows."""


@dataclass(frozen=True)
class Aggregates:
    """The aggregate over rows ``(x bytea, y float8, init bytea)``, over packed blocks
    ``(block bytea, init bytea, first integer, stop integer)`` and over buffers of a table's
    page groups (:mod:`bismarckpy.blockscan`), schema-qualified."""

    rows: str
    packed: str
    scan: str = ""


#: One SGD epoch of any kind (dispatch by the state's magic).
SGD = Aggregates("bismarck._epoch", "bismarck._epoch_packed", "bismarck._epoch_scan")
#: One pass of loss, gradient and Hessian sums of the exact solvers (merge: exact sum).
EXACT = Aggregates("bismarck._exact_pass", "bismarck._exact_pass_packed",
                   "bismarck._exact_pass_scan")
#: Where a :attr:`Scan.template` names its aggregate.
AGGREGATE = "{aggregate}"


@dataclass(frozen=True)
class Scan:
    """Where one epoch reads: a FROM clause of row copies ``(x, y)`` or of packed blocks.

    ``rows`` is SQL for the first and stop row each packed block contributes (a registered
    packed table holds the validation rows at the head of each block); ``reshuffle`` orders a
    row copy by ``random()`` every epoch (``shuffle => 'always'``, seeded by the loop).
    """

    relation: str
    packed: bool = False
    rows: str = "0, NULL"
    reshuffle: bool = False
    # A whole statement whose aggregate is written AGGREGATE (shuffle => 'blocks': buffers of
    # page groups, :func:`bismarckpy.blockscan.epoch_sql`); ``reshuffle`` asks the loop to
    # seed ``random()`` before each epoch.
    template: str | None = None

    def sql(self, aggregates: Aggregates = SGD) -> str:
        """The epoch's query, with one ``%s`` for the init state."""
        if self.template is not None:
            return self.template.replace(AGGREGATE, aggregates.scan)
        if self.packed:
            return f"SELECT {aggregates.packed}(data, %s, {self.rows}) FROM {self.relation}"
        if self.reshuffle:
            return (f"SELECT {aggregates.rows}(x, y, %s) FROM "
                    f"(SELECT x, y FROM {self.relation} ORDER BY random()) AS shuffled")
        return f"SELECT {aggregates.rows}(x, y, %s) FROM {self.relation}"


@dataclass(frozen=True)
class Strategy:
    """How an epoch runs. ``workers``: parallel workers (0: a serial scan; None: the planner
    decides). A kind whose states cannot be merged (``merge_rule == "none"``) runs serially."""

    workers: int | None = None
    name: str = "aggregate"  # or "shared": workers update one model (bismarckpy.shared_model)

    def for_kind(self, merge_rule: str) -> Strategy:
        """This strategy as a kind with ``merge_rule`` may run it."""
        return Strategy(0, self.name) if merge_rule == "none" else self


STRATEGIES = {"average": "aggregate", "shared": "shared"}  # parallel_mode -> Strategy.name


def strategy_for(p: dict, kind: object) -> Strategy:
    """The training epochs' strategy from the common parameters ``parallel``/``parallel_mode``.

    ``parallel_mode => 'shared'`` is checked against the kind (and its parameters) here, before
    any epoch runs: :func:`bismarckpy.shared_model.check_supported` raises InvalidParameter.
    """
    mode = p.get("parallel_mode") or "average"
    if mode == "shared":
        from . import shared_model

        shared_model.check_supported(kind, p)  # type: ignore[arg-type]
    return Strategy(p.get("parallel"), STRATEGIES[mode]).for_kind(
        getattr(kind, "merge_rule", "average"))


def run_epoch(session: Session, scan: Scan, init: bytes, strategy: Strategy = Strategy(),
              aggregates: Aggregates = SGD) -> bytes | None:
    """Run one epoch (or pass) from ``init`` over ``scan``; the finalized state (None: no rows)."""
    if strategy.name == "shared" and aggregates is SGD:
        from . import shared_model

        # Segment, then settings, then a subtransaction around the query: after an error or a
        # cancel the savepoint is rolled back first, so the settings and the segment's drop
        # still run in this transaction.
        with shared_model.segment(session, init) as shared_init, \
                settings_for_transaction(session, parallel_settings(strategy.workers)), \
                shared_model.subtransaction(session):
            return session.query(scan.sql(aggregates), [shared_init])[0][0]
    if strategy.name not in ("aggregate", "shared"):
        raise ValueError(f"unknown execution strategy {strategy.name!r}")
    with settings_for_transaction(session, parallel_settings(strategy.workers)):
        return session.query(scan.sql(aggregates), [init])[0][0]


def parallel_settings(workers: int | None) -> dict[str, str]:
    """Settings for an epoch with ``workers`` parallel workers (0: serial; None: the planner's).

    Parallel costs are lowered so the planner picks a Partial Aggregate even for small tables;
    each worker's partial state is merged by the aggregate's combine function. The leader only
    gathers and merges: on few cores a participating leader competes with its own workers.
    """
    if workers is None:
        return {}
    return {"max_parallel_workers_per_gather": str(int(workers)), "parallel_setup_cost": "0",
            "parallel_tuple_cost": "0", "min_parallel_table_scan_size": "0",
            "parallel_leader_participation": "off" if workers else "on"}


def epoch_seed(seed: int | None, epoch: int) -> float:
    """A setseed() argument in [-1, 1] derived from the run seed and the epoch."""
    rng = np.random.default_rng([int(seed or 0) & (2**63 - 1), epoch])
    return float(rng.uniform(-1.0, 1.0))


def workers_merged(parts: int, workers: int | None) -> int:
    """Parallel workers whose partial states an epoch merged (0: a serial scan).

    With ``parallel => n`` the leader only merges, so every partial state is a worker's;
    otherwise the leader's own share is one of them.
    """
    return parts if workers else max(parts - 1, 0)
