"""Execution: one epoch (or one pass) of a model kind over a data source, by a strategy.

This is the seam between the training loop and the database. The loop says *what* to run — a
kind's init state over a :class:`Scan` (where the epoch reads) — and an :class:`Strategy` says
*how*: today one PostgreSQL aggregate over the whole scan, optionally with parallel workers
whose partial states the aggregate's combine function merges (model averaging for SGD, an exact
sum for full-batch passes: the kind's :attr:`~bismarckpy.kinds.ModelKind.merge_rule`). Other
strategies belong in this module and need no change to the kinds or the loop: ``"partition"``
runs one aggregate per partition (or postgres_fdw shard) of the source, grouped by the
partition, and merges the partitions' states here by the kind's rule (see
:mod:`bismarckpy.partitioned`); ``"shared"`` (``parallel_mode => 'shared'``) runs the same query
with the workers stepping one model in a shared segment, created and dropped around the query
by :mod:`bismarckpy.shared_model`.

The SGD aggregates ``bismarck._epoch`` (rows) and ``bismarck._epoch_packed`` (packed blocks)
are generic: their functions dispatch on the kind's magic at the head of the state
(:func:`bismarckpy.kinds.for_state`). The exact solvers' passes use their own aggregates
(:data:`EXACT`) through the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import kinds
from .errors import BismarckError, InvalidParameter, ShardUnavailable
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
    # averaging => 'partition': the relation's column naming each row's partition, and the
    # column ordering rows inside a partition's aggregate (None: scan order).
    group: str | None = None
    order: str | None = None
    # (foreign server, foreign partition) of each shard, to name the one that fails
    shards: tuple[tuple[str, str], ...] = ()
    # A statement tried before the scan's own (one ``%s``: the init state) whose NULL result
    # means "run the scan": a validation pass over the rows the training pass kept in the
    # backend (shuffle => 'blocks', :func:`bismarckpy.blockscan.held_sql`).
    held: str | None = None

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

    def partition_sql(self) -> str:
        """One unfinalized state per partition, with one ``%s`` for the init state."""
        if self.group is None or self.packed:
            raise ValueError("a partition scan reads rows grouped by a partition column")
        order = f" ORDER BY {self.order}" if self.order else ""
        return (f"SELECT {self.group} AS part, bismarck._epoch_partial(x, y, %s{order}) AS state "
                f"FROM {self.relation} GROUP BY {self.group}")


@dataclass(frozen=True)
class Strategy:
    """How an epoch runs. ``workers``: parallel workers (0: a serial scan; None: the planner
    decides). A kind whose states cannot be merged (``merge_rule == "none"``) runs serially."""

    workers: int | None = None
    name: str = "aggregate"  # or "shared": workers update one model (bismarckpy.shared_model)

    def for_kind(self, merge_rule: str) -> Strategy:
        """This strategy as a kind with ``merge_rule`` may run it."""
        if merge_rule == "none" and self.name == "partition":
            raise InvalidParameter(
                "this model kind cannot average partitions",
                detail="Its epoch states cannot be merged (merge rule 'none').",
                hint="Use averaging => 'global'.")
        return Strategy(0, self.name) if merge_rule == "none" else self


#: The strategies :func:`run_epoch` knows.
STRATEGIES = ("aggregate", "partition", "shared")

#: parallel_mode -> Strategy.name
MODE_STRATEGIES = {"average": "aggregate", "shared": "shared"}

#: Settings of a partition epoch: the aggregate runs per partition (and so on each shard), and
#: its plan keeps the init state a parameter: a custom plan folds a bound value into a constant,
#: which postgres_fdw writes into the Remote SQL as a bytea literal, and a shard's
#: ``pg_stat_activity.query`` would show the model; a generic plan sends it as ``$1``.
PARTITIONWISE = {"enable_partitionwise_aggregate": "on", "plan_cache_mode": "force_generic_plan"}


def strategy_for(p: dict, kind: object) -> Strategy:
    """The training epochs' strategy from the common parameters ``parallel``/``parallel_mode``.

    ``parallel_mode => 'shared'`` is checked against the kind (and its parameters) here, before
    any epoch runs: :func:`bismarckpy.shared_model.check_supported` raises InvalidParameter.
    """
    mode = p.get("parallel_mode") or "average"
    if mode == "shared":
        from . import shared_model

        shared_model.check_supported(kind, p)  # type: ignore[arg-type]
    return Strategy(p.get("parallel"), MODE_STRATEGIES[mode]).for_kind(
        getattr(kind, "merge_rule", "average"))


def run_epoch(session: Session, scan: Scan, init: bytes, strategy: Strategy = Strategy(),
              aggregates: Aggregates = SGD,
              parts: list[tuple[object, bytes]] | None = None) -> bytes | None:
    """Run one epoch (or pass) from ``init`` over ``scan``; the finalized state (None: no rows).

    With ``strategy.name == "partition"`` the scan's partitions each give a state, merged
    here by the kind's :attr:`~bismarckpy.kinds.ModelKind.merge` (model averaging weighted by
    rows, or an exact sum for evaluation states) and finalized once; ``parts`` (when given)
    receives each partition's ``(group value, unfinalized state)``. With ``"shared"`` the
    workers step one model in a segment that lives only for this query.
    """
    if strategy.name == "shared" and aggregates is SGD:
        from . import shared_model

        # Segment, then settings, then a subtransaction around the query: after an error or a
        # cancel the savepoint is rolled back first, so the settings and the segment's drop
        # still run in this transaction.
        with shared_model.segment(session, init) as shared_init, \
                settings_for_transaction(session, epoch_settings(scan, strategy.workers)), \
                shared_model.subtransaction(session):
            return _runner(session, strategy)(scan.sql(aggregates), [shared_init])[0][0]
    if strategy.name not in STRATEGIES:
        raise ValueError(f"unknown execution strategy {strategy.name!r}")
    if scan.held is not None and aggregates is SGD and strategy.name == "aggregate":
        got = session.query(scan.held, [init])[0][0]
        if got is not None:
            return got
    if strategy.name == "partition" and scan.group is not None and aggregates is SGD:
        found = run_partitions(session, scan, init, strategy.workers)
        if parts is not None:
            parts.extend(found)
        return merge_partitions(found)
    with settings_for_transaction(session, epoch_settings(scan, strategy.workers, leader=True)):
        return _runner(session, strategy)(scan.sql(aggregates), [init])[0][0]


def _runner(session: Session, strategy: Strategy) -> Any:
    """How to run an epoch's statement: by the session's ``query_parallel`` when workers are
    asked for and it has one (inside the server a plan prepared through SPI never runs in
    parallel; ``query_parallel`` runs it through PL/pgSQL's ``EXECUTE ... USING``, the init
    state still a bound parameter)."""
    if strategy.workers:
        return getattr(session, "query_parallel", session.query)
    return session.query


def run_partitions(session: Session, scan: Scan, init: bytes,
                   workers: int | None = None) -> list[tuple[object, bytes]]:
    """Each partition's unfinalized state, in group order (partitions without rows absent).

    ``workers`` parallel workers run local partitions side by side (each partition whole in
    one worker: a Parallel Append of complete aggregates); foreign partitions (shards) run
    concurrently on their servers with ``async_capable``.

    A failure on a foreign partition (a shard down, or killed mid-epoch) becomes
    :class:`~bismarckpy.errors.ShardUnavailable` naming the servers that do not answer.
    """
    try:
        with settings_for_transaction(session, {**PARTITIONWISE,
                                                **parallel_settings(workers)}):
            rows = session.query(scan.partition_sql(), [init])
    except BismarckError:
        raise
    except Exception as exc:
        down = unreachable_servers(session, scan.shards)
        if not down and scan.shards and connection_lost(exc):
            # A shard that died mid-epoch and restarted before the probe answers again; the
            # lost connection still says a shard failed, though not which one.
            names = ", ".join(server for server, _ in scan.shards)
            raise ShardUnavailable(
                "the epoch failed: the connection to a shard server was lost",
                detail=f"{str(exc).strip().splitlines()[0]} (no model version was written). "
                       f"The shard servers ({names}) answer again now: one of them restarted "
                       "during the epoch.",
                hint="Check the shards' server logs (`bismarck shards check` tests every "
                     "shard) and rerun the training.") from None
        if not down:
            raise
        raise ShardUnavailable(
            f"the epoch failed: shard server {', '.join(down)} does not answer",
            detail=f"{str(exc).strip().splitlines()[0]} (no model version was written).",
            hint="Start the shard again (`bismarck shards check` tests every shard) and rerun "
                 "the training.") from None
    return sorted(((part, bytes(state)) for part, state in rows if state is not None),
                  key=lambda r: str(r[0]))


def merge_partitions(parts: Sequence[tuple[object, bytes]]) -> bytes | None:
    """Merge partition states by their kind's rule and finalize; None without any."""
    state: bytes | None = None
    for _, s in parts:
        state = s if state is None else kinds.for_state(s).merge(state, s)
    return None if state is None else kinds.for_state(state).finalize(state)


#: SQLSTATEs of a lost connection: the class 08 (connection exception), and a server that is
#: shutting down, restarting after a crash, or starting (57P01, 57P02, 57P03).
CONNECTION_LOST = ("57P01", "57P02", "57P03")


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (a psycopg or PL/Python error) says a connection was lost."""
    state = getattr(exc, "sqlstate", None) or ""
    return state.startswith("08") or state in CONNECTION_LOST


def unreachable_servers(session: Session, servers: Sequence[tuple[str, str]]) -> list[str]:
    """Those of ``servers`` ((server, foreign table) pairs) that do not answer a trivial query.

    Called after a failed partition epoch; the failed statement is rolled back first when the
    session can (outside the server; inside, PL/Python ran it in a subtransaction already).
    """
    rollback = getattr(session, "rollback", None)
    try:
        if rollback is not None:
            rollback()
    except Exception:
        return []
    down = []
    for server, table in servers:
        try:
            session.query(f"SELECT 1 AS alive FROM {table.replace('%', '%%')} LIMIT 1")
        except Exception:
            down.append(server)
            if rollback is not None:
                rollback()
    return down


#: Settings of an epoch over a table's page groups (:attr:`Scan.template`): each group is read
#: once, by one TID range scan under a nested loop, so a Memoize node (which the planner puts
#: there when it guesses that groups repeat) never hits and only copies every group's arrays
#: once more (it tripled the epoch at 1M × 100).
BLOCK_SCAN = {"enable_memoize": "off"}


def epoch_settings(scan: Scan, workers: int | None, leader: bool = False) -> dict[str, str]:
    """Settings of one epoch over ``scan`` with ``workers`` (:func:`parallel_settings`; with
    ``leader``, :func:`averaging_settings`: the backend is one of the ``workers``)."""
    parallel = averaging_settings(workers) if leader else parallel_settings(workers)
    return {**parallel, **(BLOCK_SCAN if scan.template is not None else {})}


def averaging_settings(workers: int | None) -> dict[str, str]:
    """Settings for an epoch of merged partial states over ``workers`` processes: the backend
    itself and ``workers - 1`` parallel workers (0 or 1: a serial scan; None: the planner's).

    A parallel worker is a new process in every epoch: before its first block it pays for
    PL/Python, numpy's import and the engine, about 0.15 s of CPU on a 2-core machine, while
    the backend has them already. With the backend in the place of one worker an epoch pays
    that once less, and the backend starts on the blocks at once: at 1M rows x 100 on 2 cores
    the busiest process's CPU fell from 0.52 to 0.40 s (serial 0.67 s; benchmarks/results/
    2026-12-01-parallel-*.md). The partial states are merged as before, one per participant.
    """
    if workers is None:
        return {}
    if workers <= 1:
        return parallel_settings(0)
    return {**parallel_settings(workers - 1), "parallel_leader_participation": "on"}


def parallel_settings(workers: int | None) -> dict[str, str]:
    """Settings for an epoch with ``workers`` parallel workers (0: serial; None: the planner's).

    Parallel costs are lowered so the planner picks a Partial Aggregate even for small tables;
    each worker's partial state is merged by the aggregate's combine function. The leader only
    gathers and merges (shared-model epochs, partitions, exact passes); an averaging epoch
    takes the leader as one of its processes instead (:func:`averaging_settings`).
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
    """Participants whose partial states an epoch merged (0: a serial scan).

    With ``parallel => n`` (n >= 2) the backend and n - 1 parallel workers each give a state
    (:func:`averaging_settings`), or the workers alone (:func:`parallel_settings`), so every
    state counts; otherwise (the planner's choice) the leader's own share is not counted.
    """
    return parts if workers else max(parts - 1, 0)
