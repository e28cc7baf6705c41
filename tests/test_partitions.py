"""averaging => 'partition' on local partitioned tables, end to end on a real server.

The expectation of the main test is the definition of model averaging: one epoch averaged over
partitions is the row-weighted average of one epoch on each partition alone (Zinkevich et al.
2010; Bismarck's "master averages the workers' models"), computed here from separate
``averaging => 'global'`` runs on copies of each partition.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import psycopg
import pytest

from bismarckpy.errors import BismarckError

ROWS = {0: 300, 1: 500, 2: 200}  # rows per partition; partition 3 stays empty


@pytest.fixture
def parted(conn: psycopg.Connection) -> str:
    """A LIST-partitioned table (4 partitions, the last empty) with a logistic label."""
    rng = np.random.default_rng(7)
    conn.execute("DROP TABLE IF EXISTS parted CASCADE")
    conn.execute("CREATE TABLE parted (part int, x1 float8, x2 float8, y int) "
                 "PARTITION BY LIST (part)")
    for i in range(4):
        conn.execute(f"CREATE TABLE parted_{i} PARTITION OF parted FOR VALUES IN ({i})")
    with conn.cursor() as cur:
        for part, n in ROWS.items():
            x = rng.normal(size=(n, 2)) + part * 0.3  # partitions differ in distribution
            y = (x @ [1.5, -2.0] + rng.normal(scale=0.5, size=n) > 0).astype(int)
            cur.executemany("INSERT INTO parted VALUES (%s, %s, %s, %s)",
                            [(part, float(a), float(b), int(c)) for (a, b), c in zip(x, y)])
    return "parted"


def _train(conn: psycopg.Connection, source: str, name: str, **opts: object) -> tuple:
    args = ", ".join(f"{k} => %s" for k in opts)
    return conn.execute(
        f"SELECT * FROM bismarck.train_glm(%s, 'y', ARRAY['x1', 'x2'], model_name => %s, "
        f"{args})", [source, name, *opts.values()]).fetchone()


def _coef(conn: psycopg.Connection, name: str) -> np.ndarray:
    coef, b = conn.execute("SELECT coef, intercept FROM bismarck.models WHERE model_name = %s "
                           "ORDER BY version DESC LIMIT 1", [name]).fetchone()
    return np.array([*coef, b])


ONE_EPOCH = {"max_epochs": 1, "shuffle": "never", "standardize": False, "batch_size": 1,
             "learning_rate": "constant", "eta0": 0.05, "validation_fraction": 0.0,
             "tol": None, "alpha": 0.001}


def test_one_epoch_is_the_row_weighted_average_of_the_partitions(conn, parted) -> None:
    _train(conn, parted, "avg_parts", averaging="partition", **ONE_EPOCH)
    expected = np.zeros(3)
    for part, n in ROWS.items():
        conn.execute(f"DROP TABLE IF EXISTS alone_{part}")
        conn.execute(f"CREATE TABLE alone_{part} AS SELECT * FROM parted_{part}")
        _train(conn, f"alone_{part}", f"alone_{part}", averaging="global", parallel=0,
               packed=False, **ONE_EPOCH)
        expected += n * _coef(conn, f"alone_{part}")
    expected /= sum(ROWS.values())
    np.testing.assert_allclose(_coef(conn, "avg_parts"), expected, rtol=1e-9, atol=1e-12)


def test_history_has_each_partition_and_the_empty_one_is_skipped(conn, parted) -> None:
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    _train(conn, parted, "hist_parts", averaging="partition", max_epochs=2, seed=3,
           validation_fraction=0.2)
    rows = conn.execute("SELECT epoch, rows, workers, detail, validation_loss "
                        "FROM bismarck.training_history WHERE model_name = 'hist_parts' "
                        "ORDER BY epoch").fetchall()
    assert [r[0] for r in rows] == [1, 2]
    for _, total, workers, detail, valid in rows:
        detail = detail if isinstance(detail, dict) else json.loads(detail)
        names = [p["partition"] for p in detail["partitions"]]
        assert names == ["public.parted_0", "public.parted_1", "public.parted_2"]
        assert workers == 3
        assert sum(p["rows"] for p in detail["partitions"]) == total
        assert detail["skipped"] == ["public.parted_3"]
        # the averaged model's validation loss is the row-weighted mean of the partitions'
        assert all(p["validation_loss"] is not None for p in detail["partitions"])
        assert valid > 0
    assert any("skipped 1 partition" in n and "parted_3" in n for n in notices)


@pytest.mark.parametrize(("opts", "words"), [
    ({"packed": True}, "reads the partitions in place"),
    ({"shuffle": "always"}, "cannot reshuffle every epoch"),
    ({"shuffle": "blocks"}, "has its own copy-free scan"),
    ({"solver": "newton"}, "applies to SGD epochs"),
])
def test_refused_options(conn, parted, opts, words) -> None:
    with pytest.raises(psycopg.Error) as err:
        _train(conn, parted, "refused", averaging="partition", **opts)
    assert words in err.value.diag.message_primary
    assert err.value.diag.sqlstate == "22023"
    assert conn.execute("SELECT count(*) FROM bismarck.models "
                        "WHERE model_name = 'refused'").fetchone()[0] == 0


def test_plain_table_is_refused_with_a_hint(conn, parted) -> None:
    conn.execute("DROP TABLE IF EXISTS flat")
    conn.execute("CREATE TABLE flat AS SELECT * FROM parted")
    with pytest.raises(psycopg.Error) as err:
        _train(conn, "flat", "flat", averaging="partition")
    assert err.value.diag.message_primary == ("averaging => 'partition' needs a partitioned "
                                              "source table")
    assert "is a table" in err.value.diag.message_detail
    assert "averaging => 'global'" in err.value.diag.message_hint


def test_unknown_averaging_is_refused(conn, parted) -> None:
    with pytest.raises(psycopg.Error) as err:
        _train(conn, parted, "bad", averaging="shards")
    assert "averaging" in err.value.diag.message_primary


def test_merge_partitions_is_the_row_weighted_average() -> None:
    """Pure: merging partition states = row-weighted mean of each partition's own model."""
    from bismarckpy import execution
    from bismarckpy.kinds import glm

    rng = np.random.default_rng(0)
    init = glm.initialize(2, loss="squared", eta=0.1, batch_size=1, w=np.zeros(2), b=0.0)
    parts, models, ns = [], [], []
    for n in (3, 7, 5):
        state = None
        for x, y in zip(rng.normal(size=(n, 2)), rng.normal(size=n)):
            state = glm.transition(state, list(x), float(y), init)
        parts.append((n, state))
        m = glm.decode(glm.finalize(state))
        models.append(np.r_[m.w, m.b])
        ns.append(n)
    merged = glm.decode(execution.merge_partitions(parts))
    expected = np.average(models, axis=0, weights=ns)
    np.testing.assert_allclose(np.r_[merged.w, merged.b], expected, rtol=1e-12)
    assert merged.rows == sum(ns)
    assert execution.merge_partitions([]) is None


def test_bismarck_error_is_a_base() -> None:
    from bismarckpy.errors import ShardUnavailable

    assert issubclass(ShardUnavailable, BismarckError)
    assert ShardUnavailable("x").sqlstate == "08006"


def test_cli_trains_with_averaging_partition(dsn, conn, parted) -> None:
    from click.testing import CliRunner

    from bismarck_controller.cli import main

    result = CliRunner().invoke(main, ["train", "parted", "--label", "y", "--features", "x1,x2",
                                       "--model", "cli_parts", "--averaging", "partition",
                                       "--max-epochs", "2", "--dsn", dsn])
    assert result.exit_code == 0, result.output
    assert "skipped 1 partition" in result.output
    detail = conn.execute("SELECT detail FROM bismarck.training_history "
                          "WHERE model_name = 'cli_parts' ORDER BY epoch LIMIT 1").fetchone()[0]
    assert len(detail["partitions"]) == 3


def test_local_partitions_run_whole_side_by_side(dsn, parted) -> None:
    """The loop's epoch query: a Parallel Append of complete per-partition aggregates (never a
    Partial Aggregate: a partition's epoch is never split, so its model is reproducible)."""
    from bismarck_controller.session import PsycopgSession
    from bismarckpy import execution, partitioned
    from bismarckpy.params import validate
    from bismarckpy.source import resolve

    with psycopg.connect(dsn) as c:
        session = PsycopgSession(c)
        src = resolve(session, "public.parted", "y", ["x1", "x2"])
        p = validate({"averaging": "partition"})
        partitioned.check_options(p, None)
        prep, lay = partitioned.prepare(session, src, p, 1)
        assert lay.key == '"part"'
        scan = execution.Scan(prep.train, group="part", order=prep.order)
        for name, value in {**execution.PARTITIONWISE,
                            **execution.parallel_settings(3)}.items():
            c.execute("SELECT set_config(%s, %s, true)", [name, value])
        plan = "\n".join(r[0] for r in c.execute(
            "EXPLAIN (COSTS OFF) " + scan.partition_sql().replace("%s", "'\\x00'")))
    assert "Parallel Append" in plan, plan
    assert "Partial" not in plan, plan


def test_every_kind_averages_partitions_softmax(conn) -> None:
    """Not only the GLM: the multiclass softmax kind trains by partition too."""
    rng = np.random.default_rng(3)
    conn.execute("DROP TABLE IF EXISTS parted3 CASCADE")
    conn.execute("CREATE TABLE parted3 (part int, x1 float8, x2 float8, y int) "
                 "PARTITION BY LIST (part)")
    for i in range(2):
        conn.execute(f"CREATE TABLE parted3_{i} PARTITION OF parted3 FOR VALUES IN ({i})")
    x = rng.random((1200, 2))
    y = np.where(x[:, 0] > 0.6, 2, np.where(x[:, 1] > 0.5, 1, 0))
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO parted3 VALUES (%s, %s, %s, %s)",
                        [(i % 2, float(a), float(b), int(c))
                         for i, ((a, b), c) in enumerate(zip(x, y))])
    _train(conn, "parted3", "soft_parts", loss="softmax", averaging="partition",
           max_epochs=3, seed=1, validation_fraction=0.2)
    detail = conn.execute("SELECT detail FROM bismarck.training_history "
                          "WHERE model_name = 'soft_parts' ORDER BY epoch LIMIT 1").fetchone()[0]
    assert [p["partition"] for p in detail["partitions"]] == ["public.parted3_0",
                                                              "public.parted3_1"]
    accuracy = dict(conn.execute("SELECT metric, value FROM bismarck.evaluate('soft_parts', "
                                 "'parted3')").fetchall())["accuracy"]
    assert accuracy > 0.8


def test_every_kind_averages_partitions_mlp(conn) -> None:
    """The MLP kind (its own SQL front door) takes averaging => 'partition' as well."""
    test_every_kind_averages_partitions_softmax(conn)  # creates parted3
    conn.execute("SELECT * FROM bismarck.train_mlp('parted3', 'y', ARRAY['x1', 'x2'], "
                 "model_name => 'mlp_parts', hidden => ARRAY[8], averaging => 'partition', "
                 "max_epochs => 2, seed => 1, validation_fraction => 0.2)")
    detail = conn.execute("SELECT detail FROM bismarck.training_history "
                          "WHERE model_name = 'mlp_parts' ORDER BY epoch LIMIT 1").fetchone()[0]
    assert len(detail["partitions"]) == 2
    assert sum(p["rows"] for p in detail["partitions"]) == 960


@pytest.mark.parametrize("key_type, values", [
    ("boolean", ["true", "false", "NULL"]),  # no min/max for boolean; NULL is a value too
    ("uuid", ["'00000000-0000-0000-0000-000000000001'", "'00000000-0000-0000-0000-00000000000"
              "2'", "NULL"]),
])
def test_list_keys_of_any_type_and_the_null_partition(conn, key_type: str,
                                                      values: list[str]) -> None:
    """LIST partitions by a key of a type without min/max, one of them the NULL partition:
    trained, and every partition named in the history (an outside tester's finding)."""
    rng = np.random.default_rng(11)
    conn.execute("DROP TABLE IF EXISTS keyed CASCADE")
    conn.execute(f"CREATE TABLE keyed (k {key_type}, x1 float8, x2 float8, y int) "
                 "PARTITION BY LIST (k)")
    for i, v in enumerate(values):
        conn.execute(f"CREATE TABLE keyed_{i} PARTITION OF keyed FOR VALUES IN ({v})")
        x = rng.normal(size=(150, 2))
        y = (x @ [1.5, -2.0] + rng.normal(scale=0.5, size=150) > 0).astype(int)
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO keyed VALUES ({v}, %s, %s, %s)",
                            [(float(a), float(b), int(c)) for (a, b), c in zip(x, y)])
    name = f"keyed_{key_type}"
    _train(conn, "keyed", name, averaging="partition", max_epochs=2, seed=3)
    detail = conn.execute("SELECT detail FROM bismarck.training_history WHERE model_name = %s "
                          "ORDER BY epoch LIMIT 1", [name]).fetchone()[0]
    detail = detail if isinstance(detail, dict) else json.loads(detail)
    names = sorted(p["partition"] for p in detail["partitions"])
    assert names == [f"public.keyed_{i}" for i in range(len(values))]
    assert sum(p["rows"] for p in detail["partitions"]) == 450


@pytest.fixture
def by_region(conn: psycopg.Connection) -> str:
    """Partitions that are not identically distributed: the label is the partition key
    (y = region = 1), so each partition alone is one class (an outside tester's table)."""
    rng = np.random.default_rng(5)
    conn.execute("DROP TABLE IF EXISTS pk CASCADE")
    conn.execute("CREATE TABLE pk (region int, x1 float8, x2 float8, y int) "
                 "PARTITION BY LIST (region)")
    for i in range(2):
        conn.execute(f"CREATE TABLE pk_{i} PARTITION OF pk FOR VALUES IN ({i})")
    x = rng.random((4000, 2))
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO pk VALUES (%s, %s, %s, %s)",
                        [(i % 2, float(a), float(b), i % 2) for i, (a, b) in enumerate(x)])
    return "pk"


def _log_loss(conn: psycopg.Connection, name: str, table: str) -> float:
    return dict(conn.execute("SELECT metric, value FROM bismarck.evaluate(%s, %s)",
                             [name, table]).fetchall())["log_loss"]


@pytest.mark.parametrize("trainer, opts", [
    ("train_glm", "loss => 'logistic', alpha => 0.0"),
    ("train_glm", "loss => 'softmax', alpha => 0.0"),
    ("train_mlp", "hidden => ARRAY[4], alpha => 0.0"),
])
def test_train_loss_is_the_averaged_models_on_non_iid_partitions(conn, by_region, trainer: str,
                                                                opts: str) -> None:
    """Each partition alone is one class, so each partition's own loss along its epoch is
    small while the averaged model cannot tell the classes apart (log loss about log 2): the
    reported, stored and history train loss, and the convergence test, are the averaged
    model's (as evaluate measures it), not the mean of the partitions' own losses."""
    name = f"nonid_{trainer}_{len(opts)}"
    row = conn.execute(
        f"SELECT converged, train_loss FROM bismarck.{trainer}('pk', 'y', ARRAY['x1', 'x2'], "
        f"model_name => %s, averaging => 'partition', validation_fraction => 0.0, "
        f"max_epochs => 6, seed => 2, {opts})", [name]).fetchone()
    stored = conn.execute("SELECT metrics FROM bismarck.models WHERE model_name = %s",
                          [name]).fetchone()[0]
    history = conn.execute("SELECT train_loss, detail FROM bismarck.training_history "
                           "WHERE model_name = %s ORDER BY epoch", [name]).fetchall()
    measured = _log_loss(conn, name, "pk")
    assert measured > 0.6  # the averaged model knows nothing (log 2 = 0.693)
    assert row[1] == pytest.approx(measured, rel=1e-6)
    assert stored["train_loss"] == pytest.approx(measured, rel=1e-6)
    assert history[-1][0] == pytest.approx(measured, rel=1e-6)
    detail = history[-1][1]
    # each partition's own model fitted its one class; the averaged model did not
    assert all(p["local_loss"] < p["train_loss"] for p in detail["partitions"]), detail
    total = sum(p["rows"] * p["train_loss"] for p in detail["partitions"])
    assert total / sum(p["rows"] for p in detail["partitions"]) == pytest.approx(measured,
                                                                                rel=1e-6)


def test_a_write_during_the_epochs_stores_no_model(dsn, conn, by_region) -> None:
    """The epochs read the partitions in place: rows inserted between two epochs (the outside
    loop commits each one) end the run with "the source table changed during training",
    naming the partition, and no model version; unwritten, the same run stores its model."""
    from bismarck_controller import training

    def on_epoch(rec) -> None:
        if rec.epoch == 1:
            conn.execute("INSERT INTO pk SELECT 1, x1, x2, y FROM pk_1 LIMIT 100")

    with psycopg.connect(dsn) as c, pytest.raises(
            BismarckError, match="the source table changed during training") as exc:
        training.train(c, "pk", "y", ["x1", "x2"], "pk_written", on_epoch=on_epoch,
                       averaging="partition", max_epochs=3, tol=None)
    assert "public.pk_1" in exc.value.detail and "public.pk_0" not in exc.value.detail
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = "
                        "'pk_written'").fetchone()[0] == 0
    with psycopg.connect(dsn) as c:
        training.train(c, "pk", "y", ["x1", "x2"], "pk_written", averaging="partition",
                       max_epochs=3, tol=None)
    assert conn.execute("SELECT count(*) FROM bismarck.models WHERE model_name = "
                        "'pk_written'").fetchone()[0] == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_interrupted_mid_epoch_is_interrupted(dsn, conn, signum: int) -> None:
    """Ctrl-C or SIGTERM of `bismarck train --averaging partition` in the middle of an epoch:
    "Aborted!" and the run recorded as interrupted, as without averaging (the restore of the
    epoch's settings used to replace the interrupt with "current transaction is aborted")."""
    conn.execute("DROP TABLE IF EXISTS slowparts CASCADE")
    conn.execute("CREATE TABLE slowparts (part int, a float8, b float8, y int) "
                 "PARTITION BY LIST (part)")
    for i in range(2):
        conn.execute(f"CREATE TABLE slowparts_{i} PARTITION OF slowparts FOR VALUES IN ({i})")
    conn.execute("INSERT INTO slowparts SELECT i % 2, (i % 13)::float8, (i % 7)::float8, "
                 "(i % 3 = 0)::int FROM generate_series(1, 40000) i")
    model = f"sig_{int(signum)}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bismarck_controller.cli", "train", "slowparts", "--label", "y",
         "--features", "a,b", "--model", model, "--averaging", "partition", "--max-epochs",
         "1000", "--tol", "0", "--batch-size", "1", "--dsn", dsn],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        run_id = None
        while run_id is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            row = conn.execute("SELECT r.run_id FROM bismarck._training_run r JOIN "
                               "bismarck._training_epoch e USING (run_id) "
                               "WHERE r.model_name = %s LIMIT 1", [model]).fetchone()
            run_id = row[0] if row else None
            time.sleep(0.1)
        assert run_id is not None, "the run did not start"
        time.sleep(0.3)  # inside the next epoch's statement
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "Aborted!" in err and "transaction is aborted" not in err, err
    status = conn.execute("SELECT status FROM bismarck._training_run WHERE run_id = %s",
                          [run_id]).fetchone()[0]
    assert status == "interrupted"


def test_select_on_the_parent_alone_is_named(conn, parted) -> None:
    """averaging => 'partition' reads each partition by name: a role with SELECT on the parent
    alone hears which partition needs the grant (not a bare "permission denied")."""
    conn.execute("DROP ROLE IF EXISTS parts_reader")
    conn.execute("CREATE ROLE parts_reader LOGIN")
    conn.execute("GRANT bismarck_user TO parts_reader")
    conn.execute("GRANT SELECT ON parted TO parts_reader")
    db = conn.execute("SELECT current_database()").fetchone()[0]
    conn.execute(f"GRANT CREATE ON DATABASE {db} TO parts_reader")  # for a working schema
    try:
        conn.execute("SET ROLE parts_reader")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            _train(conn, "public.parted", "granted", averaging="partition", max_epochs=1)
        conn.execute("RESET ROLE")
        diag = err.value.diag
        assert diag.message_primary == "permission denied for partition public.parted_0"
        assert "GRANT SELECT ON public.parted_0" in diag.message_hint
        conn.execute("GRANT SELECT ON parted_0, parted_1, parted_2, parted_3 TO parts_reader")
        conn.execute("SET ROLE parts_reader")
        assert _train(conn, "public.parted", "granted", averaging="partition",
                      max_epochs=1)[1] == 1
    finally:
        conn.execute("RESET ROLE")
        conn.execute("DROP OWNED BY parts_reader")
        conn.execute(f"REVOKE CREATE ON DATABASE {db} FROM parts_reader")
        conn.execute("DROP ROLE parts_reader")
