"""Shards on three local PostgreSQL clusters, attached to the test server through postgres_fdw.

Each shard is an embedded cluster in its own temporary data root on a loopback port (the
embedded cluster's machinery); the coordinator is this session's test database. The tests
train across the shards, read EXPLAIN VERBOSE for the aggregate in the Remote SQL, stop a shard
before training and kill one's backend in the middle of an epoch, refuse shards that differ
(version, columns, taken key values and names), and compare the averaged model with a
single-node model on the same rows.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import sql

from bismarck_controller import embedded, extension, shards, training
from bismarck_controller.errors import SetupError
from bismarck_controller.session import PsycopgSession
from bismarckpy import execution, partitioned
from bismarckpy.errors import InvalidData, ShardUnavailable
from bismarckpy.params import validate
from bismarckpy.source import resolve

N_SHARDS = 3
ROWS = 3000  # per shard
COEF = np.array([1.5, -2.0, 0.5])


def _data(rng: np.random.Generator, n: int, shift: float) -> list[tuple]:
    x = rng.normal(size=(n, 3)) + shift
    y = (x @ COEF + rng.logistic(size=n) > shift * COEF.sum()).astype(int)
    return [(float(a), float(b), float(c), int(v)) for (a, b, c), v in zip(x, y)]


@pytest.fixture(scope="module")
def cluster_of_shards(make_database) -> Iterator[dict]:
    """Three running shard clusters with table ``pts`` (shard i holds part = i), and a
    coordinator database with ``pts`` (foreign partitions), ``pts_local`` (the same rows on
    one node) and ``pts_test`` (held-out rows for comparing models)."""
    base = Path(os.environ.get("BISMARCK_DATA", "/tmp/bismarck").rstrip("/"))
    parent = Path(tempfile.mkdtemp(prefix=base.name + "-shards-", dir=base.parent))
    parent.chmod(0o755)
    clusters = [embedded.Cluster(parent / f"shard{i}") for i in range(1, N_SHARDS + 1)]
    rng = np.random.default_rng(11)
    coordinator = make_database("_shards")
    extension.install(coordinator)
    rows: dict[int, list[tuple]] = {}
    try:
        for i, cluster in enumerate(clusters, 1):
            cluster.start()
            extension.install(cluster.url())
            rows[i] = _data(rng, ROWS, 0.2 * i)
            with psycopg.connect(cluster.url(), autocommit=True) as c:
                c.execute("CREATE TABLE pts (part int, x1 float8, x2 float8, x3 float8, y int)")
                with c.cursor().copy("COPY pts FROM STDIN") as copy:
                    for r in rows[i]:
                        copy.write_row((i, *r))
        with psycopg.connect(coordinator, autocommit=True) as c:
            c.execute("CREATE TABLE pts (part int, x1 float8, x2 float8, x3 float8, y int) "
                      "PARTITION BY LIST (part)")
            c.execute("CREATE TABLE pts_local (part int, x1 float8, x2 float8, x3 float8, "
                      "y int)")
            c.execute("CREATE TABLE pts_test (x1 float8, x2 float8, x3 float8, y int)")
            with c.cursor().copy("COPY pts_local FROM STDIN") as copy:
                for i, rs in rows.items():
                    for r in rs:
                        copy.write_row((i, *r))
            with c.cursor().copy("COPY pts_test FROM STDIN") as copy:
                for i in rows:
                    for r in _data(rng, 1000, 0.2 * i):
                        copy.write_row(r)
        with psycopg.connect(coordinator) as c:
            for i, cluster in enumerate(clusters, 1):
                shards.add(c, "pts", cluster.url(), str(i))
        yield {"dsn": coordinator, "clusters": clusters}
    finally:
        for cluster in clusters:
            with contextlib.suppress(Exception):
                if cluster.status().running:
                    cluster.stop()
        shutil.rmtree(parent, ignore_errors=True)


OPTS = "max_epochs => 8, seed => 5, validation_fraction => 0.2, alpha => 0.0001"


def _train(dsn: str, source: str, name: str, extra: str = "", opts: str = OPTS) -> tuple:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(
            "SELECT * FROM bismarck.train_glm(%s, 'y', ARRAY['x1', 'x2', 'x3'], "
            f"model_name => %s, {opts}{extra})", [source, name]).fetchone()


def _log_loss(dsn: str, name: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as c:
        return dict(c.execute("SELECT metric, value FROM bismarck.evaluate(%s, 'pts_test')",
                              [name]).fetchall())["log_loss"]


def _versions(dsn: str, name: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM bismarck.models WHERE model_name = %s",
                         [name]).fetchone()[0]


def test_shards_are_listed_and_check_clean(cluster_of_shards) -> None:
    with psycopg.connect(cluster_of_shards["dsn"], autocommit=True) as c:
        found = shards.list_shards(c, "pts")
        assert [s.partition for s in found] == [f"public.pts_{i}" for i in (1, 2, 3)]
        assert all(s.options["extensions"] == "bismarck" and s.options["async_capable"] == "true"
                   for s in found)
        assert "password" not in str(found)  # the password lives in the user mapping only
        findings = shards.check(c, "pts")
    assert [f.problems for f in findings] == [[], [], []]
    assert {f.version for f in findings} == {extension.version()}


def test_epoch_aggregate_runs_on_every_shard(cluster_of_shards) -> None:
    """The loop's own epoch query: EXPLAIN VERBOSE shows the aggregate in each Remote SQL."""
    with psycopg.connect(cluster_of_shards["dsn"]) as c:
        session = PsycopgSession(c)
        src = resolve(session, "public.pts", "y", ["x1", "x2", "x3"])
        p = validate({"averaging": "partition", "validation_fraction": 0.2})
        partitioned.check_options(p, None)
        prep, _ = partitioned.prepare(session, src, p, 5)
        scan = execution.Scan(prep.train, group="part", order=prep.order)
        c.execute("SET enable_partitionwise_aggregate = on")
        plan = "\n".join(r[0] for r in c.execute(
            "EXPLAIN (VERBOSE, COSTS OFF) " + scan.partition_sql().replace("%s", "'\\x00'")))
    remote = [line for line in plan.splitlines() if "Remote SQL" in line]
    assert len(remote) == N_SHARDS, plan
    assert all("bismarck._epoch_partial(" in line and "GROUP BY" in line for line in remote), plan
    assert plan.count("Async Foreign Scan") == N_SHARDS, plan
    assert "Relations: Aggregate on" in plan  # the shards return states, not rows


#: A run of hex digits as long as 16 bytes or longer: what a state written as a bytea literal
#: shows.
LONG_HEX = re.compile(r"[0-9a-f]{32,}", re.IGNORECASE)


@pytest.mark.parametrize("front", ["sql", "client"])
def test_shards_receive_the_model_as_a_parameter(cluster_of_shards, front: str) -> None:
    """The epoch statement a shard runs carries the model as ``$1``, never as a literal (a
    custom plan folds a bound state into a constant, which postgres_fdw would write into the
    Remote SQL, and the shard's pg_stat_activity and log would show it): the shard's statement
    log (parameters not logged) holds each epoch's aggregate and no model state."""
    dsn, shard1 = cluster_of_shards["dsn"], cluster_of_shards["clusters"][0]
    with psycopg.connect(shard1.url(), autocommit=True) as c:
        c.execute("ALTER SYSTEM SET log_statement = 'all'")
        c.execute("ALTER SYSTEM SET log_parameter_max_length = 0")
        c.execute("SELECT pg_reload_conf()")
    offset = shard1.log_file.stat().st_size
    try:
        if front == "sql":
            _train(dsn, "pts", f"as_parameter_{front}", ", averaging => 'partition'",
                   opts="max_epochs => 3, seed => 5")
        else:
            with psycopg.connect(dsn) as c:
                training.train(c, "pts", "y", ["x1", "x2", "x3"], f"as_parameter_{front}",
                               averaging="partition", max_epochs=3, seed=5)
    finally:
        with psycopg.connect(shard1.url(), autocommit=True) as c:
            c.execute("ALTER SYSTEM RESET log_statement")
            c.execute("ALTER SYSTEM RESET log_parameter_max_length")
            c.execute("SELECT pg_reload_conf()")
    with open(shard1.log_file, "rb") as fh:
        fh.seek(offset)
        log = fh.read().decode(errors="replace")
    epochs = [line for line in log.splitlines() if "bismarck._epoch_partial(" in line]
    assert len(epochs) >= 3, log[-3000:]  # one statement per epoch (and validation pass)
    assert all("$1" in line for line in epochs), epochs
    assert not LONG_HEX.search(log) and "\\x" not in log, [
        line for line in log.splitlines() if LONG_HEX.search(line) or "\\x" in line]


def test_a_shards_password_is_in_no_statement_text(conn) -> None:
    """The user mapping ``shards.add`` creates: its password reaches ``pg_user_mappings`` but
    no statement's text, which the statement log (``log_statement``), ``pg_stat_activity`` and
    an error's lines would show (it is a bound parameter, logged only where the administrator
    logs parameter values); a failure keeps PostgreSQL's SQLSTATE and message."""
    if os.environ.get("BISMARCK_TEST_DSN") or os.environ.get("BISMARCK_TEST_DOCKER") == "1":
        pytest.skip("reads the embedded server's log")
    log = embedded.default().log_file
    secret, server = "pw-" + secrets.token_urlsafe(12), "bismarck_mapping_probe"
    conn.execute("CREATE EXTENSION IF NOT EXISTS postgres_fdw")
    conn.execute(f"DROP SERVER IF EXISTS {server} CASCADE")
    conn.execute(f"CREATE SERVER {server} FOREIGN DATA WRAPPER postgres_fdw "
                 "OPTIONS (host '127.0.0.1', dbname 'nowhere')")
    conn.execute("SET log_statement = 'all'")  # every statement's text, no parameter values
    conn.execute("SET log_parameter_max_length = 0")
    offset = log.stat().st_size
    try:
        with conn.transaction():
            shards.create_user_mapping(conn, server, {"user": "someone", "password": secret})
        with pytest.raises(psycopg.errors.DuplicateObject, match="already exists") as info, \
                conn.transaction():
            shards.create_user_mapping(conn, server, {"user": "someone", "password": secret})
        options = conn.execute("SELECT umoptions FROM pg_user_mappings WHERE srvname = %s",
                               [server]).fetchone()[0]
    finally:
        conn.execute("RESET log_statement")
        conn.execute("RESET log_parameter_max_length")
        conn.execute(f"DROP SERVER {server} CASCADE")
    assert f"password={secret}" in options and "user=someone" in options, options
    d = info.value.diag
    assert secret not in " ".join(filter(None, (d.message_primary, d.message_detail,
                                                d.context, d.internal_query)))
    time.sleep(0.3)
    with open(log, "rb") as fh:
        fh.seek(offset)
        written = fh.read().decode(errors="replace")
    assert "CREATE USER MAPPING" in written and "already exists" in written, written[-3000:]
    assert secret not in written


def test_preparation_counts_and_cut_run_on_the_shards(cluster_of_shards) -> None:
    """The held-out cut (each shard's k smallest hashes, ORDER BY ... LIMIT) and the
    per-partition counts are shipped to the shards (EXPLAIN VERBOSE: in the Remote SQL, no
    local Sort or Aggregate over fetched rows), and the cut holds out exactly ceil(f n)."""
    from bismarckpy import loop

    with psycopg.connect(cluster_of_shards["dsn"]) as c:
        session = PsycopgSession(c)
        seen: list[tuple[str, list]] = []
        query = session.query

        def recording(text: str, params=()) -> list[tuple]:
            seen.append((text, list(params)))
            return query(text, params)

        session.query = recording  # type: ignore[method-assign]
        src = resolve(session, "public.pts", "y", ["x1", "x2", "x3"])
        p = validate({"averaging": "partition", "validation_fraction": 0.2})
        partitioned.check_options(p, None)
        prep, _ = partitioned.prepare(session, src, p, 5)
        c.rollback()
        plans = {}
        for text, params in seen:
            if "count(*) FILTER (WHERE NOT" in text or "UNION ALL" in text:
                plans[text] = "\n".join(r[0] for r in c.execute(
                    "EXPLAIN (VERBOSE, COSTS OFF) " + text, params))
    assert prep.n_valid == loop.validation_count(0.2, N_SHARDS * ROWS) == 1800
    counts = [plan for text, plan in plans.items() if "UNION ALL" not in text]
    cuts = [plan for text, plan in plans.items() if "UNION ALL" in text]
    assert len(counts) == N_SHARDS and len(cuts) == 1, list(plans)
    for plan in counts:
        remote = [line for line in plan.splitlines() if "Remote SQL" in line]
        assert len(remote) == 1 and "Remote SQL: SELECT count(*) FILTER" in remote[0], plan
        assert "Aggregate" not in plan.split("Foreign Scan")[0], plan  # nothing local above
    remote = [line for line in cuts[0].splitlines() if "Remote SQL" in line]
    assert len(remote) == N_SHARDS, cuts[0]
    assert all("ORDER BY hash_array_extended(" in r and " LIMIT " in r for r in remote), cuts[0]


def test_averaged_model_matches_the_single_node_model(cluster_of_shards) -> None:
    dsn = cluster_of_shards["dsn"]
    sharded = _train(dsn, "pts", "across_shards", ", averaging => 'partition'")
    single = _train(dsn, "pts_local", "one_node", ", packed => false")
    assert sharded[1] == 1 and single[1] == 1
    across, alone = _log_loss(dsn, "across_shards"), _log_loss(dsn, "one_node")
    assert abs(across - alone) <= 0.02 * alone, (across, alone)
    with psycopg.connect(dsn, autocommit=True) as c:
        detail = c.execute("SELECT detail FROM bismarck.training_history WHERE model_name = "
                           "'across_shards' ORDER BY epoch LIMIT 1").fetchone()[0]
    assert [p["partition"] for p in detail["partitions"]] == [f"public.pts_{i}" for i in (1, 2, 3)]
    assert sum(p["rows"] for p in detail["partitions"]) == sharded_rows(dsn, "across_shards")


def sharded_rows(dsn: str, name: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT (metrics->>'rows')::int FROM bismarck.models "
                         "WHERE model_name = %s", [name]).fetchone()[0]


@pytest.mark.slow  # stops and restarts a shard cluster
def test_shard_down_fails_cleanly_and_rerun_succeeds(cluster_of_shards) -> None:
    dsn, shard2 = cluster_of_shards["dsn"], cluster_of_shards["clusters"][1]
    shard2.stop()
    try:
        with pytest.raises(psycopg.Error) as err:
            _train(dsn, "pts", "down", ", averaging => 'partition'")
        assert "bismarck_shard_pts_2" in err.value.diag.message_primary
        assert _versions(dsn, "down") == 0
        with psycopg.connect(dsn) as c, pytest.raises(ShardUnavailable) as outside:
            training.train(c, "pts", "y", ["x1", "x2", "x3"], "down", averaging="partition",
                           max_epochs=2)  # the client-side loop (bismarck train)
        assert "bismarck_shard_pts_2" in outside.value.message
        assert _versions(dsn, "down") == 0
        with psycopg.connect(dsn, autocommit=True) as c:
            findings = {f.shard.server: f for f in shards.check(c, "pts")}
        assert not findings["bismarck_shard_pts_2"].ok
        assert findings["bismarck_shard_pts_1"].ok
    finally:
        shard2.start()
    assert _train(dsn, "pts", "down", ", averaging => 'partition'")[1] == 1


def _epoch_backend(shard: embedded.Cluster) -> int | None:
    """The pid of the shard's backend running an epoch for the coordinator, if one runs now.

    postgres_fdw runs the epoch as ``DECLARE c CURSOR FOR SELECT ... bismarck._epoch_partial
    ...`` then ``FETCH``es from it (the aggregate runs during the FETCH), so an active FETCH is
    an epoch only if that backend's last DECLARE, in the shard's statement log, declared the
    epoch's aggregate.
    """
    with psycopg.connect(shard.url(), autocommit=True) as c:
        rows = c.execute("SELECT pid, query FROM pg_stat_activity WHERE state = 'active' "
                         "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
                         "AND application_name = 'postgres_fdw'").fetchall()
    if not rows:
        return None
    entries: list[str] = []  # log entries, continuation lines (the cursor's query) included
    for line in shard.log_file.read_text(errors="replace").splitlines():
        if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) or not entries:
            entries.append(line)
        else:
            entries[-1] += "\n" + line
    for pid, query in rows:
        if "bismarck._epoch_partial(" in query:
            return pid
        if query.startswith("FETCH"):
            declares = [e for e in entries if f"[{pid}]" in e.split("\n", 1)[0]
                        and "DECLARE" in e]
            if declares and "bismarck._epoch_partial(" in declares[-1]:
                return pid
    return None


def _wait_until_answering(shard: embedded.Cluster, timeout: float = 120.0) -> None:
    """Wait for a shard to accept connections again (after its crash recovery)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(shard.url(), connect_timeout=5):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _relations(dsn: str) -> set[tuple[str, str]]:
    """Every schema and relation outside the system schemas (and temporary ones)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        return set(c.execute(
            "SELECT n.nspname::text, coalesce(c.relname::text, '') FROM pg_namespace n "
            "LEFT JOIN pg_class c ON c.relnamespace = n.oid WHERE n.nspname NOT IN "
            "('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%' "
            "AND n.nspname NOT LIKE 'pg_toast_temp%'").fetchall())


@pytest.mark.slow  # kills a shard's backend (the shard restarts) and restarts the shard
@pytest.mark.parametrize("front", ["sql", "client"])
def test_shard_killed_mid_epoch_writes_nothing(cluster_of_shards, front: str) -> None:
    """SIGKILL of the shard backend running an epoch: the training fails with 08006 naming the
    shard's server, stores no model version and leaves no work schema or table; once the
    shard is back the same call succeeds."""
    import signal

    dsn, shard3 = cluster_of_shards["dsn"], cluster_of_shards["clusters"][2]
    name = f"killed_{front}"
    before = _relations(dsn)
    with psycopg.connect(shard3.url(), autocommit=True) as c:
        c.execute("ALTER SYSTEM SET log_statement = 'all'")
        c.execute("SELECT pg_reload_conf()")
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            if front == "sql":
                _train(dsn, "pts", name, ", averaging => 'partition', batch_size => 1",
                       opts="max_epochs => 1000, n_iter_no_change => 10000, seed => 5")
            else:
                with psycopg.connect(dsn) as c:
                    training.train(c, "pts", "y", ["x1", "x2", "x3"], name,
                                   averaging="partition", batch_size=1, max_epochs=1000,
                                   tol=None, seed=5)
        except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    try:
        worker.start()
        deadline, pid = time.monotonic() + 60, None
        while pid is None and time.monotonic() < deadline and worker.is_alive():
            pid = _epoch_backend(shard3)
            time.sleep(0.02)
        assert pid is not None, ("no epoch seen running on the shard", outcome)
        os.kill(pid, signal.SIGKILL)  # the shard's postmaster restarts all its backends
        worker.join(120)
        assert not worker.is_alive()
        err = outcome.get("error")
        if front == "sql":
            assert isinstance(err, psycopg.Error), outcome
            message, sqlstate = err.diag.message_primary, err.diag.sqlstate
        else:
            assert isinstance(err, ShardUnavailable), outcome
            message, sqlstate = err.message, err.sqlstate
        assert message == ("the epoch failed: shard server bismarck_shard_pts_3 does not "
                           "answer"), message  # it is still restarting after the crash
        assert sqlstate == "08006"
        if front == "client":  # the lost connection's own message, not the failed restore's
            assert "transaction is aborted" not in str(err), err
        assert _versions(dsn, name) == 0
        assert _relations(dsn) == before  # no work schema, table or copy left behind
        with psycopg.connect(dsn, autocommit=True) as c:
            assert c.execute("SELECT count(*) FROM bismarck._training_run WHERE model_name = %s "
                             "AND (status = 'running' OR work_schema IS NOT NULL)",
                             [name]).fetchone()[0] == 0
    finally:
        worker.join(120)
        _wait_until_answering(shard3)  # the postmaster restarts the shard after the crash
        shard3.stop()
        shard3.start()
        with psycopg.connect(shard3.url(), autocommit=True) as c:
            c.execute("ALTER SYSTEM RESET log_statement")
            c.execute("SELECT pg_reload_conf()")
    assert _train(dsn, "pts", name, ", averaging => 'partition'",
                  opts="max_epochs => 2")[1] == 1
    assert _versions(dsn, name) == 1


def test_shard_with_other_columns_is_refused(cluster_of_shards) -> None:
    dsn, shard1 = cluster_of_shards["dsn"], cluster_of_shards["clusters"][0]
    with psycopg.connect(shard1.url(), autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS odd (part int, x1 text, x2 float8, y int)")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS odd (part int, x1 float8, x2 float8, x3 float8, "
                  "y int) PARTITION BY LIST (part)")
    with psycopg.connect(dsn) as c, pytest.raises(SetupError) as err:
        shards.add(c, "odd", shard1.url(), "1")
    text = str(err.value)
    assert "column x1 has another type" in text and "no column x3" in text
    assert "same types" in text  # the way out of this problem, and only of this one
    assert "does not answer" not in text and "bismarck install" not in text
    with psycopg.connect(dsn, autocommit=True) as c:  # nothing was left behind
        assert shards.list_shards(c, "odd") == []
        assert c.execute("SELECT count(*) FROM pg_foreign_server WHERE srvname LIKE "
                         "'bismarck_shard_odd%'").fetchone()[0] == 0


def test_shard_with_another_extension_version_is_refused(cluster_of_shards) -> None:
    dsn, shard1 = cluster_of_shards["dsn"], cluster_of_shards["clusters"][0]
    with psycopg.connect(shard1.url(), autocommit=True) as c:
        c.execute("UPDATE pg_extension SET extversion = '0.0.1' WHERE extname = 'bismarck'")
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            finding = next(f for f in shards.check(c, "pts")
                           if f.shard.server == "bismarck_shard_pts_1")
        assert finding.problems == [f"the shard has bismarck 0.0.1, the coordinator "
                                    f"{extension.version()}"]
    finally:
        with psycopg.connect(shard1.url(), autocommit=True) as c:
            c.execute("UPDATE pg_extension SET extversion = %s WHERE extname = 'bismarck'",
                      [extension.version()])


def test_training_refuses_a_shard_with_another_engine_version(cluster_of_shards) -> None:
    """Refused before training, with the difference named (the shard evaluates the version)."""
    dsn, shard2 = cluster_of_shards["dsn"], cluster_of_shards["clusters"][1]
    with psycopg.connect(shard2.url(), autocommit=True) as c:
        original = c.execute("SELECT pg_get_functiondef('bismarck._engine_version(bigint)'"
                             "::regprocedure)").fetchone()[0]
        c.execute("CREATE OR REPLACE FUNCTION bismarck._engine_version(bigint) RETURNS text "
                  "LANGUAGE sql IMMUTABLE AS $$ SELECT '0.0.1'::text $$")
    try:
        with pytest.raises(psycopg.Error) as err:
            _train(dsn, "pts", "versions", ", averaging => 'partition'")
        assert err.value.diag.message_primary == ("shard server bismarck_shard_pts_2 has "
                                                  "another bismarck version")
        assert "bismarck 0.0.1" in err.value.diag.message_detail
        assert _versions(dsn, "versions") == 0
    finally:
        with psycopg.connect(shard2.url(), autocommit=True) as c:
            c.execute(original)


def test_training_refuses_a_server_that_would_not_run_the_epoch(cluster_of_shards) -> None:
    """A server without extensions 'bismarck' would have its rows fetched and trained on
    here each epoch (and its version checked here): refused before any row is read."""
    dsn = cluster_of_shards["dsn"]
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("ALTER SERVER bismarck_shard_pts_2 OPTIONS (DROP extensions)")
    try:
        with pytest.raises(psycopg.Error) as err:
            _train(dsn, "pts", "pushdown", ", averaging => 'partition'")
        diag = err.value.diag
        assert diag.message_primary == ("shard server bismarck_shard_pts_2 does not list "
                                        "extensions 'bismarck'")
        assert "ADD extensions 'bismarck'" in diag.message_hint
        assert "Traceback" not in str(err.value)
        assert _versions(dsn, "pushdown") == 0
        with psycopg.connect(dsn) as c:
            found = {f.shard.server: f.problems for f in shards.check(c, "pts")}
        assert any("does not list extensions 'bismarck'" in p
                   for p in found["bismarck_shard_pts_2"])
        assert not found["bismarck_shard_pts_1"]
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("ALTER SERVER bismarck_shard_pts_2 OPTIONS (ADD extensions 'bismarck')")
    _train(dsn, "pts", "pushdown", ", averaging => 'partition'", opts="max_epochs => 1")
    assert _versions(dsn, "pushdown") == 1


def test_training_refuses_a_shard_without_a_feature_column(cluster_of_shards) -> None:
    """A shard whose table lost a feature after it was attached: refused before any epoch,
    naming the server and the column (the shard's own message), on both fronts."""
    dsn, shard1 = cluster_of_shards["dsn"], cluster_of_shards["clusters"][0]
    with psycopg.connect(shard1.url(), autocommit=True) as c:
        c.execute("ALTER TABLE pts RENAME COLUMN x3 TO x3_renamed")
    try:
        with pytest.raises(psycopg.Error) as err:
            _train(dsn, "pts", "columns", ", averaging => 'partition'")
        diag = err.value.diag
        assert diag.message_primary == ("shard server bismarck_shard_pts_1 has a table without "
                                        "the coordinator's columns")
        assert 'column "x3" does not exist' in diag.message_detail
        assert "public.pts_1" in diag.message_detail
        with psycopg.connect(dsn) as c, pytest.raises(InvalidData) as outside:
            training.train(c, "pts", "y", ["x1", "x2", "x3"], "columns", averaging="partition",
                           max_epochs=2)
        assert "bismarck_shard_pts_1" in outside.value.message
        assert _versions(dsn, "columns") == 0
        with psycopg.connect(dsn, autocommit=True) as c:
            assert c.execute("SELECT count(*) FROM bismarck.training_history "
                             "WHERE model_name = 'columns'").fetchone()[0] == 0
    finally:
        with psycopg.connect(shard1.url(), autocommit=True) as c:
            c.execute("ALTER TABLE pts RENAME COLUMN x3_renamed TO x3")


def test_cli_shards_list_and_check(cluster_of_shards) -> None:
    from click.testing import CliRunner

    from bismarck_controller.cli import main

    dsn = cluster_of_shards["dsn"]
    listed = CliRunner().invoke(main, ["shards", "list", "pts", "--dsn", dsn])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("bismarck_shard_pts_") == N_SHARDS
    checked = CliRunner().invoke(main, ["shards", "check", "pts", "--dsn", dsn])
    assert checked.exit_code == 0, checked.output
    assert checked.output.count(": ok") == N_SHARDS


def test_cli_shards_check_and_list_of_a_missing_table_fail(cluster_of_shards) -> None:
    from click.testing import CliRunner

    from bismarck_controller.cli import main

    dsn = cluster_of_shards["dsn"]
    for command in ("check", "list"):
        result = CliRunner().invoke(main, ["shards", command, "nosuch", "--dsn", dsn])
        assert result.exit_code != 0, result.output
        assert 'Table "nosuch" does not exist on the coordinator' in result.output
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS unsharded (part int, x1 float8) "
                  "PARTITION BY LIST (part)")
    result = CliRunner().invoke(main, ["shards", "check", "unsharded", "--dsn", dsn])
    assert result.exit_code != 0, result.output
    assert "unsharded has no shards" in result.output


def test_adding_a_shard_twice_says_what_exists(cluster_of_shards) -> None:
    """The same key value, the same partition name or the same server name: a message naming
    the existing partition and server and how to remove it; nothing is created."""
    dsn, shard1 = cluster_of_shards["dsn"], cluster_of_shards["clusters"][0]

    def servers() -> int:
        with psycopg.connect(dsn, autocommit=True) as c:
            return c.execute("SELECT count(*) FROM pg_foreign_server").fetchone()[0]

    before = servers()
    with psycopg.connect(dsn) as c, pytest.raises(SetupError) as same_value:
        shards.add(c, "pts", shard1.url(), "1")
    text = str(same_value.value)
    assert ("public.pts already has a partition for 1: public.pts_1 on server "
            "bismarck_shard_pts_1") in text, text
    assert 'DROP SERVER "bismarck_shard_pts_1" CASCADE' in text
    with psycopg.connect(dsn) as c, pytest.raises(SetupError) as same_server:
        shards.add(c, "pts", shard1.url(), "7", server="bismarck_shard_pts_2")
    text = str(same_server.value)
    assert "A foreign server named bismarck_shard_pts_2 exists already (it serves " \
        "public.pts_2)" in text, text
    assert "another --server name" in text
    with psycopg.connect(dsn, autocommit=True) as c:  # another name, a value already listed
        c.execute("CREATE TABLE IF NOT EXISTS twice (part int, x1 float8, x2 float8, "
                  "x3 float8, y int) PARTITION BY LIST (part)")
        c.execute("CREATE TABLE IF NOT EXISTS twice_local PARTITION OF twice "
                  "FOR VALUES IN (1, 2)")
    with psycopg.connect(dsn) as c, pytest.raises(SetupError) as overlap:
        shards.add(c, "twice", shard1.url(), "2")
    text = str(overlap.value)
    assert ("public.twice already has a partition for 2: public.twice_local (a local table)"
            in text), text
    assert "DETACH PARTITION public.twice_local" in text
    from click.testing import CliRunner

    from bismarck_controller.cli import main

    result = CliRunner().invoke(main, ["shards", "add", "pts", shard1.url(), "--value", "1",
                                       "--dsn", dsn])
    assert result.exit_code != 0 and "already has a partition for 1" in result.output
    assert "Traceback" not in result.output and "already exists" not in result.output
    assert servers() == before


def test_training_names_a_shard_column_of_another_type(cluster_of_shards) -> None:
    """A feature whose type changed on a shard after it was attached: refused before any
    epoch, naming the shard's server and the column (not the shard's raw "operator does not
    exist"), on both fronts."""
    dsn, shard1 = cluster_of_shards["dsn"], cluster_of_shards["clusters"][0]
    with psycopg.connect(shard1.url(), autocommit=True) as c:
        c.execute("ALTER TABLE pts ALTER x2 TYPE text")
    try:
        with pytest.raises(psycopg.Error) as err:
            _train(dsn, "pts", "typed", ", averaging => 'partition'")
        diag = err.value.diag
        assert diag.message_primary == ("column x2 has another type on shard server "
                                        "bismarck_shard_pts_1"), diag.message_primary
        assert "public.pts_1" in diag.message_detail and "TYPE" in diag.message_hint
        with psycopg.connect(dsn) as c, pytest.raises(InvalidData) as outside:
            training.train(c, "pts", "y", ["x1", "x2", "x3"], "typed", averaging="partition",
                           max_epochs=2)
        assert outside.value.message == diag.message_primary
        assert _versions(dsn, "typed") == 0
    finally:
        with psycopg.connect(shard1.url(), autocommit=True) as c:
            c.execute("ALTER TABLE pts ALTER x2 TYPE float8 USING x2::float8")


def test_a_missing_shard_table_is_named_as_such(cluster_of_shards) -> None:
    """The shard answers but its table is gone: said so (42P01), not "does not answer"."""
    dsn, shard2 = cluster_of_shards["dsn"], cluster_of_shards["clusters"][1]
    with psycopg.connect(shard2.url(), autocommit=True) as c:
        c.execute("ALTER TABLE pts RENAME TO pts_away")
    try:
        with pytest.raises(psycopg.Error) as err:
            _train(dsn, "pts", "away", ", averaging => 'partition'")
        diag = err.value.diag
        assert diag.message_primary == ("the table of partition public.pts_2 is missing on "
                                        "shard server bismarck_shard_pts_2")
        assert diag.sqlstate == "42P01" and "Start the shard" not in (diag.message_hint or "")
        with psycopg.connect(dsn, autocommit=True) as c:
            finding = next(f for f in shards.check(c, "pts")
                           if f.shard.server == "bismarck_shard_pts_2")
        assert "does not answer" not in " ".join(finding.problems), finding.problems
        assert "table is missing" in " ".join(finding.problems)
    finally:
        with psycopg.connect(shard2.url(), autocommit=True) as c:
            c.execute("ALTER TABLE pts_away RENAME TO pts")


def test_a_role_without_a_usable_user_mapping_hears_why(cluster_of_shards) -> None:
    """A role with no user mapping, then with one without a password (postgres_fdw requires
    one for a role that is not a superuser): each named, with its way out, not "does not
    answer"."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    dsn = cluster_of_shards["dsn"]
    role = "shard_mapless"
    with psycopg.connect(dsn, autocommit=True) as c:
        db = c.execute("SELECT current_database()").fetchone()[0]
        c.execute(f"DROP OWNED BY {role}") if c.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() else None
        c.execute(f"DROP ROLE IF EXISTS {role}")
        c.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'mapless'")
        c.execute(f"GRANT CONNECT ON DATABASE {db} TO {role}")
        c.execute(f"GRANT bismarck_user TO {role}")
        c.execute(f"GRANT SELECT ON pts, pts_1, pts_2, pts_3 TO {role}")
        servers = [r[0] for r in c.execute(
            "SELECT srvname FROM pg_foreign_server WHERE srvname LIKE 'bismarck_shard_pts_%' "
            "ORDER BY 1")]
        for srv in servers:
            c.execute(f"GRANT USAGE ON FOREIGN SERVER {srv} TO {role}")
    params = conninfo_to_dict(dsn)
    params.update(user=role, password="mapless")
    role_dsn = make_conninfo(**params)
    shard_user = conninfo_to_dict(cluster_of_shards["clusters"][0].url())["user"]
    assert shard_user.isidentifier()
    try:
        with pytest.raises(psycopg.Error) as none:
            _train(role_dsn, "public.pts", "mapless", ", averaging => 'partition'")
        assert none.value.diag.message_primary == ("no user mapping for this role on shard "
                                                   "server bismarck_shard_pts_1")
        assert "CREATE USER MAPPING" in none.value.diag.message_hint
        with psycopg.connect(dsn, autocommit=True) as c:
            for srv in servers:
                c.execute(f"CREATE USER MAPPING FOR {role} SERVER {srv} OPTIONS (user %s)"
                          .replace("%s", "'" + shard_user + "'"))
        with pytest.raises(psycopg.Error) as nopass:
            _train(role_dsn, "public.pts", "mapless", ", averaging => 'partition'")
        assert nopass.value.diag.message_primary == ("the user mapping for shard server "
                                                     "bismarck_shard_pts_1 has no password")
        assert "password" in nopass.value.diag.message_hint
        assert "Start the shard" not in nopass.value.diag.message_hint
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"DROP OWNED BY {role}")
            c.execute(f"DROP ROLE {role}")


def test_adding_a_shard_with_stray_key_values_says_remove_them(cluster_of_shards) -> None:
    """The shard's table holds rows of another key value: the hint says to remove those rows
    on the shard, and nothing about versions or an unanswering shard."""
    dsn, shard1 = cluster_of_shards["dsn"], cluster_of_shards["clusters"][0]
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS strays (part int, x1 float8, x2 float8, "
                  "x3 float8, y int) PARTITION BY LIST (part)")
    with psycopg.connect(dsn) as c, pytest.raises(SetupError) as err:
        shards.add(c, "strays", shard1.url(), "9", remote_table="public.pts")
    text = str(err.value)
    assert "rows of the shard's table have part other than 9" in text, text
    assert "Remove the stray rows on the shard" in text
    assert "does not answer" not in text and "bismarck install" not in text


def test_scoring_pass_and_fingerprints_run_on_the_shards(cluster_of_shards) -> None:
    """The averaged model's scoring pass (the epoch's query, unordered) and each shard's write
    fingerprint (count and sum of row hashes) are shipped to the shards: only sums travel."""
    with psycopg.connect(cluster_of_shards["dsn"]) as c:
        session = PsycopgSession(c)
        seen: list[str] = []
        query = session.query

        def recording(text: str, params=()) -> list[tuple]:
            seen.append(text)
            return query(text, params)

        session.query = recording  # type: ignore[method-assign]
        src = resolve(session, "public.pts", "y", ["x1", "x2", "x3"])
        p = validate({"averaging": "partition"})
        partitioned.check_options(p, None)
        prep, _ = partitioned.prepare(session, src, p, 5)
        c.rollback()
        marks = [t for t in seen if "sum(hash_array_extended(" in t]
        assert len(marks) == N_SHARDS, seen
        for text in marks:
            plan = "\n".join(r[0] for r in c.execute("EXPLAIN (VERBOSE, COSTS OFF) " + text))
            remote = [line for line in plan.splitlines() if "Remote SQL" in line]
            assert len(remote) == 1 and "sum(hash_array_extended(" in remote[0], plan
        score = execution.Scan(prep.train, group="part")
        c.execute("SET enable_partitionwise_aggregate = on")
        plan = "\n".join(r[0] for r in c.execute(
            "EXPLAIN (VERBOSE, COSTS OFF) " + score.partition_sql().replace("%s", "'\\x00'")))
    remote = [line for line in plan.splitlines() if "Remote SQL" in line]
    assert len(remote) == N_SHARDS and all("_epoch_partial(" in r for r in remote), plan


def test_rows_written_on_a_shard_during_the_run_store_no_model(cluster_of_shards) -> None:
    """Rows inserted on a shard between two epochs (the client-side loop commits each epoch):
    the run fails naming that shard's partition, and no version is stored."""
    dsn, shard3 = cluster_of_shards["dsn"], cluster_of_shards["clusters"][2]

    def on_epoch(rec) -> None:
        if rec.epoch == 1:
            with psycopg.connect(shard3.url(), autocommit=True) as s:
                s.execute("INSERT INTO pts SELECT * FROM pts LIMIT 10")

    try:
        with psycopg.connect(dsn) as c, pytest.raises(
                InvalidData, match="the source table changed during training") as err:
            training.train(c, "pts", "y", ["x1", "x2", "x3"], "shard_written",
                           on_epoch=on_epoch, averaging="partition", max_epochs=3, tol=None)
        assert "public.pts_3" in err.value.detail and "public.pts_1" not in err.value.detail
        assert _versions(dsn, "shard_written") == 0
    finally:
        with psycopg.connect(shard3.url(), autocommit=True) as s:
            s.execute("DELETE FROM pts WHERE ctid IN (SELECT ctid FROM pts "
                      "ORDER BY ctid DESC LIMIT 10)")


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_cli_interrupted_on_shards_is_interrupted(cluster_of_shards, signum: str) -> None:
    """Ctrl-C or SIGTERM of `bismarck train --averaging partition` over shards: "Aborted!",
    the run recorded as interrupted, no version (never "current transaction is aborted")."""
    import signal
    import subprocess
    import sys

    dsn = cluster_of_shards["dsn"]
    model = f"shard_sig_{signum.lower()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bismarck_controller.cli", "train", "pts", "--label", "y",
         "--features", "x1,x2,x3", "--model", model, "--averaging", "partition",
         "--max-epochs", "1000", "--tol", "0", "--batch-size", "1", "--dsn", dsn],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            deadline, run_id = time.monotonic() + 120, None
            while run_id is None and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                row = c.execute("SELECT r.run_id FROM bismarck._training_run r JOIN "
                                "bismarck._training_epoch e USING (run_id) "
                                "WHERE r.model_name = %s LIMIT 1", [model]).fetchone()
                run_id = row[0] if row else None
                time.sleep(0.1)
            assert run_id is not None, "the run did not start"
            time.sleep(0.2)
            proc.send_signal(getattr(signal, signum))
            _, err = proc.communicate(timeout=60)
            status = c.execute("SELECT status FROM bismarck._training_run WHERE run_id = %s",
                               [run_id]).fetchone()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "Aborted!" in err and "transaction is aborted" not in err, err
    assert status == "interrupted"
    assert _versions(dsn, model) == 0


def test_a_wrong_mapping_password_is_named_as_a_refused_login(cluster_of_shards) -> None:
    """The shard refuses the mapping's password: said so, with the way out (not "start the
    shard"), by training and by `shards check`."""
    dsn = cluster_of_shards["dsn"]
    server = "bismarck_shard_pts_1"
    with psycopg.connect(dsn, autocommit=True) as c:
        options = dict(o.split("=", 1) for o in c.execute(
            "SELECT umoptions FROM pg_user_mappings WHERE srvname = %s AND usename = "
            "current_user", [server]).fetchone()[0])
        c.execute(f"ALTER USER MAPPING FOR CURRENT_USER SERVER {server} "
                  "OPTIONS (SET password 'not-the-password')")
    try:
        with pytest.raises(psycopg.Error) as err:
            _train(dsn, "pts", "wrongpw", ", averaging => 'partition'")
        diag = err.value.diag
        assert diag.message_primary == (f"shard server {server} refused the login of the user "
                                        "mapping"), diag.message_primary
        assert "ALTER USER MAPPING" in diag.message_hint
        with psycopg.connect(dsn, autocommit=True) as c:
            finding = next(f for f in shards.check(c, "pts") if f.shard.server == server)
        assert finding.problems[0].startswith("the shard refused the login"), finding.problems
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(sql.SQL("ALTER USER MAPPING FOR CURRENT_USER SERVER {} OPTIONS "
                              "(SET password {})").format(sql.Identifier(server),
                                                          sql.Literal(options["password"])))
