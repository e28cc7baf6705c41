"""A shared database: no search-path attacks, the access model, runs that never stall others.

Real server, several login roles: ``admin`` (the test superuser), ``alice`` and ``bob`` (members
of ``bismarck_user``), ``mallory`` (a member too, who plants look-alike functions and operators)
and ``carol`` (not a member). Roles are cluster-wide, so their names carry this process's id.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bismarck_controller import embedded, extension, training
from bismarck_controller.cli import main as cli_main
from bismarckpy import shared_model
from bismarckpy.kinds import glm

PINNED = "search_path=pg_catalog, pg_temp"
# The SECURITY DEFINER functions: the only writers of the registry (members only read it).
BOOKKEEPING = ("_claim_model", "_store_model", "_delete_versions", "_set_grant",
               "_begin_run", "_record_epoch", "_end_run", "_dead_runs", "_forget_work",
               "_register_packed")
USERS = ("alice", "bob", "mallory", "carol")


@dataclass
class Roles:
    """DSNs of the test database for the superuser and each test role."""

    admin: str
    dsns: dict[str, str]
    names: dict[str, str]

    def connect(self, who: str, **kwargs: object) -> psycopg.Connection:
        return psycopg.connect(self.admin if who == "admin" else self.dsns[who],
                               autocommit=True, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def roles(make_database) -> Iterator[Roles]:
    """A fresh database with bismarck, the test roles and a schema of her own for each user."""
    dsn = make_database("_security")
    extension.install(dsn)
    names = {u: f"bsec_{u}_{os.getpid()}" for u in USERS}
    password = secrets.token_urlsafe(12)
    with psycopg.connect(dsn, autocommit=True) as admin:
        for who, name in names.items():
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)))
            admin.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                sql.Identifier(who), sql.Identifier(name)))
            admin.execute(sql.SQL("ALTER ROLE {} SET search_path = {}, public").format(
                sql.Identifier(name), sql.Identifier(who)))
            if who != "carol":
                admin.execute(sql.SQL("GRANT bismarck_user TO {}").format(sql.Identifier(name)))
        admin.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")
    dsns = {who: make_conninfo(dsn, user=name, password=password)
            for who, name in names.items()}
    yield Roles(dsn, dsns, names)
    with psycopg.connect(dsn, autocommit=True) as admin:
        for name in names.values():
            admin.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


PATIENTS = """
CREATE TABLE patients (id int, treatment int, trait_anxiety float8, second_attack boolean);
INSERT INTO patients VALUES (1, 1, 70, true), (2, 1, 80, true), (3, 1, 50, false),
  (4, 0, 60, true), (5, 0, 40, false), (6, 0, 65, true), (7, 0, 75, true), (8, 0, 80, true),
  (9, 0, 70, true), (10, 0, 60, true), (11, 1, 65, false), (12, 1, 50, false),
  (13, 1, 45, false), (14, 1, 35, false), (15, 1, 40, false), (16, 1, 50, false),
  (17, 0, 55, false), (18, 0, 45, false), (19, 0, 50, true), (20, 0, 60, false);
"""
FEATURES = ["treatment", "trait_anxiety"]


REGISTRY = ("_models", "model_names", "model_grants", "_training_run", "_training_epoch",
            "_packed_tables")
# Writes and locks a member might try on the registry directly: each is refused.
DIRECT_WRITES = [
    "INSERT INTO bismarck._training_run (model_name, source, params, backend_pid, work_schema) "
    "VALUES ('x', 'x', '{}', 0, 'finance')",
    "UPDATE bismarck._training_run SET work_schema = 'finance'",
    "UPDATE bismarck.model_names SET last_version = 0",
    "INSERT INTO bismarck.model_names (model_name) VALUES ('squat')",
    "INSERT INTO bismarck.model_grants (model_name, grantee, owner) VALUES ('m', "
    "current_user::text::regrole, current_user::text::regrole)",
    "INSERT INTO bismarck._models (model_name, version, loss, source, label, features, "
    "array_feature, coef, intercept, params, metrics, fitted) VALUES ('m', 99, 'logistic', 's', "
    "'l', '{a}', false, '{1}', 0, '{}', '{}', '{}')",
    "INSERT INTO bismarck._training_epoch (run_id, epoch) VALUES (1, 1)",
    "INSERT INTO bismarck._packed_tables (packed_table, source, label, features, array_feature, "
    "n_features, dtype, block_size, rows, skipped_rows, seed, owner) VALUES ('pg_class', 's', "
    "'l', '{a}', false, 1, 'float64', 1, 1, 0, 0, current_user::text::regrole)",
    "SELECT nextval('bismarck._training_run_run_id_seq')",
] + [f"DELETE FROM bismarck.{t}" for t in REGISTRY] + [
    f"TRUNCATE bismarck.{t}" for t in REGISTRY] + [
    f"BEGIN; LOCK TABLE bismarck.{t} IN {mode} MODE" for t in REGISTRY
    for mode in ("ACCESS EXCLUSIVE", "EXCLUSIVE", "SHARE ROW EXCLUSIVE", "SHARE")] + [
    f"BEGIN; SELECT 1 FROM bismarck.{t} FOR {lock}" for t in ("model_names", "_training_run")
    for lock in ("UPDATE", "NO KEY UPDATE", "SHARE", "KEY SHARE")] + [
    # tickets: members only insert their own, never read, change or lock others'
    "SELECT id FROM bismarck._tickets", "UPDATE bismarck._tickets SET pid = 0",
    "DELETE FROM bismarck._tickets", "TRUNCATE bismarck._tickets",
    "BEGIN; LOCK TABLE bismarck._tickets IN SHARE MODE"]


def _refused(conn: psycopg.Connection, statement: str) -> None:
    """The statement fails for lack of privilege (any open transaction is rolled back)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        conn.execute(statement)
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")


def _patients(conn: psycopg.Connection) -> None:
    conn.execute("DROP TABLE IF EXISTS patients")
    conn.execute(PATIENTS)


# --- 1. no search-path attacks ------------------------------------------------------------------


def test_every_function_is_pinned_and_none_is_definer_over_user_tables(
        roles: Roles) -> None:
    with roles.connect("admin") as conn:
        rows = conn.execute("""
            SELECT p.oid::regprocedure::text, p.prokind::text, p.proconfig, p.prosecdef
              FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
             WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
               AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bismarck')
        """).fetchall()
    assert len(rows) > 20
    unpinned = [name for name, kind, config, _ in rows
                if kind != "a" and PINNED not in (config or [])]
    assert unpinned == []
    definers = sorted(name.split("(")[0].removeprefix("bismarck.")
                      for name, _, _, definer in rows if definer)
    assert definers == sorted(BOOKKEEPING)
    with roles.connect("admin") as conn:
        for name, args, body in conn.execute("""
                SELECT p.proname::text, pg_get_function_arguments(p.oid), p.prosrc
                  FROM pg_proc p
                 WHERE p.pronamespace = 'bismarck'::regnamespace AND p.prosecdef"""):
            # each acts for the role of a ticket it redeems, and runs no dynamic SQL but CREATE
            # SCHEMA
            assert args.startswith("ticket uuid"), name
            assert "bismarck._redeem(ticket)" in body, name
            executes = [line.strip() for line in body.splitlines() if "EXECUTE" in line]
            assert executes == (["EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', "
                                 "work_schema,"] if name == "_begin_run" else []), name


_PLANT = r"""
DO $plant$
DECLARE
    names text[] := ARRAY['cardinality', 'hashtextextended', 'hashtext', 'array_position',
        'array_ndims', 'exp', 'ln', 'abs', 'set_config', 'current_setting', 'to_regclass',
        'to_regnamespace', 'parse_ident', 'format_type', 'setseed', 'random', 'now',
        'clock_timestamp', 'pg_backend_pid', 'quote_ident', 'has_table_privilege',
        'has_column_privilege', 'pg_has_role', 'pg_try_advisory_xact_lock', 'jsonb_build_object',
        'md5', 'substr', 'pg_relation_size', 'greatest', 'least', 'format', 'length',
        'array_length', 'round', 'sqrt', 'power', 'coalesce', 'textcat', 'float8', 'int4'];
    alternatives text[] := ARRAY['integer', 'bigint', 'numeric', 'double precision', 'text',
        'double precision[]', 'integer[]', 'numeric[]', 'real', 'boolean', 'bytea', 'jsonb'];
    ops text[] := ARRAY['=', '<>', '<', '<=', '>', '>=', '+', '-', '*', '/', '&', '%', '||',
        '&&', '^', '~'];
    f record;
    args text[];
    alt text;
    i int;
    n int := 0;
    l text;
    r text;
BEGIN
    FOR f IN SELECT p.proname::text AS name, p.proargtypes::regtype[]::text[] AS types,
                    p.prorettype::regtype::text AS ret
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY (names)
                AND NOT p.proretset AND p.prokind = 'f' AND p.pronargs BETWEEN 1 AND 3
    LOOP
        FOR i IN 1 .. cardinality(f.types) LOOP
            FOREACH alt IN ARRAY alternatives LOOP
                args := f.types;
                FOR j IN 1 .. cardinality(args) LOOP
                    IF args[j] IN ('anyelement', 'anycompatible', 'any', '"any"') THEN
                        args[j] := 'double precision';
                    ELSIF args[j] IN ('anyarray', 'anycompatiblearray') THEN
                        args[j] := 'double precision[]';
                    END IF;
                END LOOP;
                args[i] := alt;
                CONTINUE WHEN f.ret IN ('anyelement', 'anyarray', 'record', 'void', 'internal',
                                        'anycompatible', 'anycompatiblearray', 'trigger');
                BEGIN
                    EXECUTE format('CREATE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE sql AS '
                                   '$b$ SELECT CASE WHEN pg_catalog.nextval(%L) > 0 '
                                   'THEN NULL::%s END $b$',
                                   current_schema(), f.name, array_to_string(args, ', '),
                                   f.ret, 'public.planted_calls', f.ret);
                    n := n + 1;
                EXCEPTION WHEN duplicate_function OR invalid_function_definition
                          OR datatype_mismatch OR feature_not_supported THEN
                    NULL;
                END;
            END LOOP;
        END LOOP;
    END LOOP;
    FOREACH l IN ARRAY alternatives LOOP
        FOREACH r IN ARRAY alternatives LOOP
            EXECUTE format('CREATE FUNCTION %I.planted_op(%s, %s) RETURNS boolean LANGUAGE sql '
                           'AS $b$ SELECT pg_catalog.nextval(%L) < 0 $b$',
                           current_schema(), l, r, 'public.planted_calls');
            FOREACH alt IN ARRAY ops LOOP
                BEGIN
                    EXECUTE format('CREATE OPERATOR %I.%s (LEFTARG = %s, RIGHTARG = %s, '
                                   'FUNCTION = %I.planted_op)', current_schema(), alt, l, r,
                                   current_schema());
                    n := n + 1;
                EXCEPTION WHEN duplicate_function OR duplicate_object THEN
                    NULL;
                END;
            END LOOP;
        END LOOP;
    END LOOP;
    RAISE NOTICE 'planted %', n;
END
$plant$;
"""


@pytest.fixture(scope="module")
def planted(roles: Roles) -> Iterator[int]:
    """Mallory's look-alikes in public (made writable) and in her own schema; their count."""
    with roles.connect("admin") as admin:
        admin.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    notices: list[str] = []
    with roles.connect("mallory") as m:
        m.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        m.execute("CREATE SEQUENCE public.planted_calls")
        m.execute("GRANT USAGE, UPDATE ON SEQUENCE public.planted_calls TO PUBLIC")
        for schema in ("public", "mallory"):
            m.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
            m.execute(_PLANT)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            m.execute("CREATE FUNCTION bismarck.cardinality(float8[]) RETURNS int "
                      "LANGUAGE sql AS 'SELECT 1'")
    total = sum(int(n.split()[1]) for n in notices if n.startswith("planted "))
    yield total
    with roles.connect("admin") as admin:
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")


def _calls(conn: psycopg.Connection) -> int:
    last, called = conn.execute("SELECT last_value, is_called FROM public.planted_calls"
                                ).fetchone()
    return int(last) if called else 0


def test_planted_lookalikes_never_run(roles: Roles, planted: int) -> None:
    assert planted > 1000
    victim_path = "-c search_path=public,mallory"
    with psycopg.connect(roles.admin, autocommit=True, options=victim_path) as su:
        # The plants work: unpinned SQL of the kind the engine runs would call them.
        su.execute("SELECT cardinality(ARRAY[1, 2]::float8[]), "
                   "hashtextextended('x', 1), 1.5::float8 = 1")
        assert _calls(su) > 0
        su.execute("SELECT setval('public.planted_calls', 1, false)")
        assert _calls(su) == 0

        su.execute("DROP TABLE IF EXISTS public.sec_data, public.sec_packed CASCADE")
        su.execute("CREATE TABLE public.sec_data AS SELECT i AS id, (i % 7)::float8 AS a, "
                   "(i % 3)::int AS b, ARRAY[i % 5, i % 2]::float8[] AS x, (i % 2) AS y, "
                   "(i % 11)::numeric AS t FROM generate_series(1, 400) i")
        su.execute("CREATE VIEW public.sec_view AS SELECT a, b, y FROM public.sec_data")
        trainings = [
            "('sec_data', 'y', ARRAY['a', 'b'], 'v_rows', packed => false, "
            "validation_fraction => 0.2, max_epochs => 2, seed => 1)",
            "('sec_data', 'y', ARRAY['x'], 'v_packed', validation_fraction => 0.2, "
            "max_epochs => 2, seed => 1, parallel => 2)",
            "('sec_data', 't', ARRAY['a', 'b'], 'v_squared', loss => 'squared', "
            "max_epochs => 2, seed => 1)",
            "('sec_view', 'y', ARRAY['a', 'b'], 'v_view', loss => 'hinge', shuffle => 'always',"
            " validation_fraction => 0.3, max_epochs => 2, seed => 1)",
        ]
        for args in trainings:
            su.execute("SELECT * FROM bismarck.train_glm" + args)
        su.execute("SELECT * FROM bismarck.pack('sec_data', 'y', ARRAY['a', 'b'], "
                   "'sec_packed', block_size => 16, seed => 3)")
        su.execute("SELECT * FROM bismarck.train_glm('sec_packed', 'y', ARRAY['a', 'b'], "
                   "'v_from_packed', validation_fraction => 0.3, max_epochs => 2, seed => 1)")
        su.execute("SELECT bismarck.predict('v_rows', ARRAY[a, b]::float8[]), "
                   "bismarck.predict_class('v_rows', ARRAY[a, b]::float8[]), "
                   "bismarck.predict('v_squared', ARRAY[a, b]::float8[]) FROM sec_data")
        for model in ("v_rows", "v_packed", "v_view", "v_from_packed"):
            table = "sec_view" if model == "v_view" else "sec_data"
            su.execute("SELECT * FROM bismarck.evaluate(%s, %s)", [model, table])
        su.execute("SELECT * FROM bismarck.evaluate('v_squared', 'sec_data')")
        su.execute("SELECT * FROM bismarck.models, bismarck.training_history, "
                   "bismarck.packed_tables")
        assert _calls(su) == 0

    # The CLI and the Python API: the loop over psycopg, with the same victim search path.
    with psycopg.connect(roles.admin, options=victim_path) as su:
        training.train(su, "sec_data", "y", ["a", "b"], "v_cli", max_epochs=2, seed=1,
                       validation_fraction=0.2, packed=False)
        training.pack(su, "sec_data", "y", ["a", "b"], "sec_packed_cli", seed=1)
        training.evaluate(su, "v_cli", "sec_data")
        training.predict(su, "v_cli", "sec_data", limit=5, classes=True)
        training.predict(su, "v_cli", "sec_data", output="sec_scored")
    dsn = make_conninfo(roles.admin, options=victim_path)
    result = CliRunner().invoke(cli_main, ["train", "sec_data", "--label", "y", "--features",
                                           "a,b", "--model", "v_cli2", "--max-epochs", "2",
                                           "--dsn", dsn])
    assert result.exit_code == 0, result.output
    with roles.connect("admin") as su:
        assert _calls(su) == 0
        assert su.execute("SELECT to_regclass('public.sec_scored') IS NOT NULL").fetchone() == (
            True,)


# --- 3. roles and ownership ---------------------------------------------------------------------


def test_bismarck_user_does_the_readme_session_on_its_own_table(roles: Roles) -> None:
    with roles.connect("alice") as a:
        _patients(a)
        row = a.execute("""
            SELECT model_name, version FROM bismarck.train_glm(
              source => 'patients', label => 'second_attack',
              features => ARRAY['treatment', 'trait_anxiety'],
              model_name => 'heart', loss => 'logistic', penalty => 'none',
              learning_rate => 'bold_driver', eta0 => 1, batch_size => 0,
              max_epochs => 50, seed => 42)""").fetchone()
        assert row[0] == "heart"
        model = a.execute("SELECT model_name, owner::text, source, fitted IS NOT NULL "
                          "FROM bismarck.models WHERE model_name = 'heart'").fetchone()
        assert model == ("heart", roles.names["alice"], "alice.patients", True)
        assert a.execute("SELECT count(*) FROM bismarck.training_history "
                         "WHERE model_name = 'heart'").fetchone()[0] > 0
        scored = a.execute(
            "SELECT bismarck.predict('heart', ARRAY[treatment, trait_anxiety]::float8[]), "
            "bismarck.predict_class('heart', ARRAY[treatment, trait_anxiety]::float8[], "
            "NULL::boolean) FROM patients").fetchall()
        assert len(scored) == 20
        metrics = dict(a.execute("SELECT * FROM bismarck.evaluate('heart', 'patients')"))
        assert 0 <= metrics["accuracy"] <= 1
        a.execute("SELECT * FROM bismarck.pack('patients', 'second_attack', "
                  "ARRAY['treatment', 'trait_anxiety'], 'patients_packed', seed => 1)")
        assert a.execute("SELECT packed_table::text, emptied FROM bismarck.packed_tables"
                         ).fetchall() == [("patients_packed", False)]
        a.execute("SELECT * FROM bismarck.train_glm('patients_packed', 'second_attack', "
                  "ARRAY['treatment', 'trait_anxiety'], 'heart_svm', loss => 'hinge', "
                  "max_epochs => 3)")
        assert a.execute("SELECT bismarck.delete_model('heart_svm')").fetchone() == (1,)
    with psycopg.connect(roles.dsns["alice"]) as conn:  # the CLI's loop, as alice
        result = training.train(conn, "patients", "second_attack", FEATURES, "heart_cli",
                                max_epochs=3, validation_fraction=0.2, seed=1)
        assert result.version == 1
    with roles.connect("admin") as admin:  # working schemas are gone with their runs
        assert admin.execute("SELECT count(*) FROM pg_namespace "
                             "WHERE nspname LIKE 'bismarck_work_%'").fetchone() == (0,)


def test_nothing_on_tables_it_cannot_read_and_nothing_without_the_role(roles: Roles) -> None:
    with roles.connect("bob") as b:
        b.execute("DROP TABLE IF EXISTS bob_secret")
        b.execute("CREATE TABLE bob_secret AS SELECT i::float8 AS a, i % 2 AS y "
                  "FROM generate_series(1, 50) i")
        b.execute("SELECT * FROM bismarck.train_glm('bob_secret', 'y', ARRAY['a'], "
                  "'bob_model', max_epochs => 2)")
    with roles.connect("alice") as a:
        for call in ("SELECT * FROM bismarck.train_glm('bob.bob_secret', 'y', ARRAY['a'])",
                     "SELECT * FROM bismarck.pack('bob.bob_secret', 'y', ARRAY['a'], 'p')",
                     "SELECT * FROM bismarck.evaluate('heart', 'bob.bob_secret')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match='permission denied for schema bob'):
                a.execute(call)
    with roles.connect("admin") as admin:  # readable schema, unreadable table
        admin.execute("GRANT USAGE ON SCHEMA bob TO PUBLIC")
    try:
        with roles.connect("alice") as a:
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="permission denied for table bob_secret"):
                a.execute("SELECT * FROM bismarck.train_glm('bob.bob_secret', 'y', ARRAY['a'])")
            assert a.execute("SELECT count(*) FROM bismarck.models "
                             "WHERE model_name = 'bob_model'").fetchone() == (0,)
    finally:
        with roles.connect("admin") as admin:
            admin.execute("REVOKE USAGE ON SCHEMA bob FROM PUBLIC")
    with roles.connect("carol") as c:  # not a member of bismarck_user
        c.execute("CREATE TABLE carol_t AS SELECT 1.0::float8 AS a, 1 AS y")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema bismarck"):
            c.execute("SELECT * FROM bismarck.train_glm('carol_t', 'y', ARRAY['a'])")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT * FROM bismarck.models")


def _partly_granted(admin: psycopg.Connection, table: str, columns: str, role: str) -> None:
    """public.<table> (id, a, b, y, ssn: 300 rows) with SELECT on ``columns`` only to role."""
    admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("public", table)))
    admin.execute(sql.SQL("CREATE TABLE {} AS SELECT i AS id, (i % 7)::float8 AS a, "
                          "(i % 5)::float8 AS b, (i % 2) AS y, i::text AS ssn "
                          "FROM generate_series(1, 300) i").format(
        sql.Identifier("public", table)))
    admin.execute(sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns.split(",")),
        sql.Identifier("public", table), sql.Identifier(role)))


def test_column_level_select_on_the_named_columns_is_enough(roles: Roles) -> None:
    with roles.connect("admin") as admin:
        _partly_granted(admin, "wide", "a,b,y", roles.names["alice"])
    with roles.connect("alice") as a:
        for options in ("", ", packed => false", ", validation_fraction => 0.3",
                        ", packed => false, validation_fraction => 0.3"):
            a.execute("SELECT * FROM bismarck.train_glm('public.wide', 'y', ARRAY['a', 'b'], "
                      "'wide', max_epochs => 2, seed => 1" + options + ")")
        a.execute("SELECT * FROM bismarck.pack('public.wide', 'y', ARRAY['a', 'b'], "
                  "'alice.wide_packed', seed => 1)")
        assert dict(a.execute("SELECT * FROM bismarck.evaluate('wide', 'public.wide')"))["rows"] \
            == 300
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            a.execute("SELECT ssn FROM public.wide")


def test_a_column_not_granted_is_named_with_the_grant_and_the_option_to_pass(
        roles: Roles) -> None:
    """Tester: SELECT on some columns gave 'permission denied for table' and no hint. Training,
    pack, evaluate and `bismarck predict` name the columns missing and what to do."""
    alice = roles.names["alice"]
    with roles.connect("admin") as admin:
        _partly_granted(admin, "partial", "a,y", alice)
        admin.execute("SELECT * FROM bismarck.train_glm('public.partial', 'y', ARRAY['a', 'b'], "
                      "'partial_ab', max_epochs => 2, seed => 1)")
        admin.execute("SELECT bismarck.grant_model('partial_ab', %s)", [alice])
    grant = f"GRANT SELECT (b) ON public.partial TO {alice}"
    with roles.connect("alice") as a:
        for call in ("train_glm('public.partial', 'y', ARRAY['a', 'b'], 'partial', "
                     "max_epochs => 2)",
                     "pack('public.partial', 'y', ARRAY['a', 'b'], 'alice.partial_packed')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
                a.execute(f"SELECT * FROM bismarck.{call}")
            diag = err.value.diag
            assert diag.message_primary == "permission denied for column b of public.partial"
            assert "You may read a, y." in diag.message_detail
            assert grant in diag.message_hint and "features => ARRAY" in diag.message_hint
            assert "--features" in diag.message_hint
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            a.execute("SELECT * FROM bismarck.evaluate('partial_ab', 'public.partial')")
        assert err.value.diag.message_primary == \
            "permission denied for column b of public.partial"
        assert grant in err.value.diag.message_hint
        assert a.execute("SELECT count(*) FROM bismarck.models WHERE model_name = 'partial'"
                         ).fetchone() == (0,)
        a.execute("SELECT * FROM bismarck.train_glm('public.partial', 'y', ARRAY['a'], "
                  "'partial_a', max_epochs => 2, seed => 1)")
    runner = CliRunner()
    out = runner.invoke(cli_main, ["predict", "partial_a", "public.partial",
                               "--dsn", roles.dsns["alice"]])
    assert out.exit_code != 0
    assert "permission denied for columns id, b, ssn of public.partial" in out.output
    assert "--columns a,y" in out.output
    out = runner.invoke(cli_main, ["predict", "partial_a", "public.partial", "--columns", "a,y",
                               "--limit", "2", "--dsn", roles.dsns["alice"]])
    assert out.exit_code == 0, out.output


def test_users_cannot_read_delete_or_shadow_each_others_models(roles: Roles) -> None:
    with roles.connect("alice") as a:
        _patients(a)
        a.execute("SELECT * FROM bismarck.train_glm('patients', 'second_attack', %s, "
                  "'alice_heart', max_epochs => 3)", [FEATURES])
    with roles.connect("bob") as b:
        _patients(b)
        assert b.execute("SELECT count(*) FROM bismarck.models "
                         "WHERE model_name = 'alice_heart'").fetchone() == (0,)
        assert b.execute("SELECT count(*) FROM bismarck.training_history "
                         "WHERE model_name = 'alice_heart'").fetchone() == (0,)
        for call in ("SELECT bismarck.predict('alice_heart', ARRAY[1, 2]::float8[])",
                     "SELECT bismarck.delete_model('alice_heart')",
                     "SELECT * FROM bismarck.evaluate('alice_heart', 'patients')"):
            with pytest.raises(psycopg.errors.UndefinedObject, match="does not exist"):
                b.execute(call)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to another"):
            b.execute("SELECT * FROM bismarck.train_glm('patients', 'second_attack', %s, "
                      "'alice_heart', max_epochs => 1)", [FEATURES])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            b.execute("SELECT fitted FROM bismarck._models")
        for write in DIRECT_WRITES:  # members only read the registry
            _refused(b, write)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="do not own"):
            b.execute("SELECT bismarck.grant_model('alice_heart', %s)", [roles.names["bob"]])
    with roles.connect("alice") as a:
        assert a.execute("SELECT count(*) FROM bismarck.models WHERE model_name = "
                         "'alice_heart'").fetchone() == (1,)
        a.execute("SELECT bismarck.grant_model('alice_heart', %s)", [roles.names["bob"]])
    with roles.connect("bob") as b:
        # granted: bob sees and uses it, but alice's table's statistics stay hidden
        assert b.execute("SELECT fitted IS NULL, coef IS NOT NULL FROM bismarck.models "
                         "WHERE model_name = 'alice_heart'").fetchone() == (True, True)
        p = b.execute("SELECT bismarck.predict('alice_heart', ARRAY[1, 60]::float8[])"
                      ).fetchone()[0]
        assert 0 <= p <= 1
        assert dict(b.execute("SELECT * FROM bismarck.evaluate('alice_heart', 'patients')"))[
            "rows"] == 20
        assert b.execute("SELECT count(*) FROM bismarck.training_history "
                         "WHERE model_name = 'alice_heart'").fetchone()[0] > 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to another"):
            b.execute("SELECT * FROM bismarck.train_glm('patients', 'second_attack', %s, "
                      "'alice_heart', max_epochs => 1)", [FEATURES])
    with roles.connect("admin") as admin:  # once bob may read the columns, he sees them too
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA alice TO {0}; GRANT SELECT "
                              "(second_attack, treatment, trait_anxiety) ON alice.patients "
                              "TO {0}").format(sql.Identifier(roles.names["bob"])))
    with roles.connect("bob") as b:
        assert b.execute("SELECT fitted IS NULL FROM bismarck.models "
                         "WHERE model_name = 'alice_heart'").fetchone() == (False,)
    with roles.connect("alice") as a:
        assert a.execute("SELECT bismarck.revoke_model('alice_heart', %s)",
                         [roles.names["bob"]]).fetchone() == (True,)
    with roles.connect("bob") as b:
        assert b.execute("SELECT count(*) FROM bismarck.models "
                         "WHERE model_name = 'alice_heart'").fetchone() == (0,)
    with roles.connect("alice") as a:
        a.execute("SELECT bismarck.grant_model('alice_heart', %s)", [roles.names["bob"]])
    with roles.connect("bob") as b:  # a grantee may delete
        assert b.execute("SELECT bismarck.delete_model('alice_heart')").fetchone() == (1,)


# --- the registry is written only by bismarck's bookkeeping functions ---------------------------


def test_members_hold_no_write_privilege_or_lock_on_the_registry(roles: Roles) -> None:
    with roles.connect("admin") as admin:
        rows = admin.execute("""
            SELECT c.oid::regclass::text, r.rolname::text, p.priv
              FROM pg_depend d JOIN pg_class c ON c.oid = d.objid,
                   pg_roles r,
                   unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                                'TRIGGER']) AS p(priv)
             WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'
               AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bismarck')
               AND c.relkind IN ('r', 'v') AND r.rolname = ANY (%s)
               AND NOT (c.oid = 'bismarck._tickets'::regclass AND p.priv = 'INSERT')
               AND (has_table_privilege(r.oid, c.oid, p.priv)
                    OR (p.priv IN ('INSERT', 'UPDATE', 'REFERENCES')
                        AND has_any_column_privilege(r.oid, c.oid, p.priv)))
        """, [list(roles.names.values())]).fetchall()
        assert rows == []
        assert admin.execute(
            "SELECT count(*) FROM pg_roles r WHERE r.rolname = ANY (%s) AND has_sequence_privilege("
            "r.oid, 'bismarck._training_run_run_id_seq', 'USAGE,UPDATE')",
            [list(roles.names.values())]).fetchone() == (0,)
    for who in ("alice", "mallory"):
        with roles.connect(who) as conn:
            for statement in DIRECT_WRITES:
                _refused(conn, statement)


def test_no_member_makes_another_roles_training_drop_or_fail(roles: Roles) -> None:
    """The tester's case and its kin: forged or stale run rows never drop others' schemas."""
    with roles.connect("admin") as admin:
        admin.execute("DROP SCHEMA IF EXISTS finance CASCADE")
        admin.execute("CREATE SCHEMA finance")
        admin.execute("CREATE TABLE finance.ledger AS SELECT 1 AS amount")
        bobs = "bismarck_work_00000000deadbeef"  # the pattern, but another role's schema
        admin.execute(f"DROP SCHEMA IF EXISTS {bobs} CASCADE")
        admin.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
            sql.Identifier(bobs), sql.Identifier(roles.names["bob"])))
        admin.execute("DROP TABLE IF EXISTS public.admin_patients")
        admin.execute(PATIENTS.replace("patients", "public.admin_patients"))
    with roles.connect("mallory") as m:
        _patients(m)
        _refused(m, DIRECT_WRITES[0])
        # nor through the bookkeeping functions, acting for another role: no forged ticket
        for call in ("SELECT bismarck._claim_model(gen_random_uuid(), 'x')",
                     "SELECT * FROM bismarck._begin_run(gen_random_uuid(), 'x', 'x', '{}', true)",
                     "SELECT * FROM bismarck._dead_runs(NULL)",
                     "SELECT bismarck._end_run(gen_random_uuid(), 1, 'failed', NULL, 'x')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="needs a ticket"):
                m.execute(call)
        m.execute("SELECT bismarck._claim_model(bismarck._ticket(), 'mallory_m')")
        run_id, schema = m.execute(
            "SELECT * FROM bismarck._begin_run(bismarck._ticket(), 'mallory_m', 'x', '{}', true)"
        ).fetchone()
        assert schema.startswith("bismarck_work_")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="still exists"):
            m.execute("SELECT * FROM bismarck._begin_run(bismarck._ticket(), 'mallory_m', 'x', "
                      "'{}', true)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to another"):
            m.execute("SELECT * FROM bismarck._begin_run(bismarck._ticket(), 'versions', 'x', "
                      "'{}', true)")
    with roles.connect("admin") as admin:
        # rows as an older version or a tampered backup might hold them: dead runs of alice and
        # of the superuser pointing at schemas that are not theirs
        admin.execute("SELECT bismarck._claim_model(bismarck._ticket(), 'forged')")
        for owner, target in (("alice", "finance"), ("alice", bobs), ("postgres", "finance"),
                              ("postgres", bobs)):
            admin.execute("INSERT INTO bismarck._training_run (model_name, source, params, "
                          "backend_pid, work_schema, owner) VALUES ('forged', 'x', '{}', 0, %s, "
                          "%s::regrole)", [target, roles.names.get(owner, owner)])
        assert admin.execute("SELECT version FROM bismarck.train_glm('admin_patients', "
                             "'second_attack', %s, 'admin_heart', max_epochs => 1)",
                             [FEATURES]).fetchone() == (1,)
    for who in ("alice", "bob"):
        with roles.connect(who) as conn:
            _patients(conn)
            assert conn.execute("SELECT version FROM bismarck.train_glm('patients', "
                                "'second_attack', %s, %s, max_epochs => 1)",
                                [FEATURES, f"{who}_after_forgery"]).fetchone() == (1,)
    with roles.connect("admin") as admin:
        assert admin.execute("SELECT to_regclass('finance.ledger') IS NOT NULL, "
                             "to_regnamespace(%s) IS NOT NULL", [bobs]).fetchone() == (True, True)
        assert admin.execute("SELECT count(*) FROM bismarck._training_run WHERE model_name = "
                             "'forged' AND (status = 'running' OR work_schema IS NOT NULL)"
                             ).fetchone() == (0,)
        admin.execute(f"DROP SCHEMA {bobs}")
        admin.execute("DROP SCHEMA finance CASCADE")
    with roles.connect("mallory") as m:  # her own leftover is hers to clean: her next training
        assert m.execute("SELECT version FROM bismarck.train_glm('patients', 'second_attack', "
                         "%s, 'mallory_m', max_epochs => 1)", [FEATURES]).fetchone() == (1,)
        assert m.execute("SELECT to_regnamespace(%s)", [schema]).fetchone() == (None,)
        assert m.execute("SELECT status, work_schema FROM bismarck._training_run "
                         "WHERE run_id = %s", [run_id]).fetchone() == ("interrupted", None)


def test_nobody_can_squat_a_model_name_or_stall_its_training(roles: Roles) -> None:
    train = ("SELECT version FROM bismarck.train_glm('patients', 'second_attack', %s, %s, "
             "max_epochs => 1)")
    with roles.connect("alice") as a:
        _patients(a)
        a.execute(train, [FEATURES, "squatted"])
    # advisory locks are anyone's (even a non-member's): bismarck uses none for names
    with roles.connect("carol") as carol, roles.connect("mallory") as m:
        carol.execute("SELECT pg_advisory_lock(hashtext('bismarck.model_names'), "
                      "hashtext('squatted'))")
        m.execute("SELECT pg_advisory_lock(hashtext('squatted'))")
        carol.execute("SELECT pg_advisory_lock(hashtext('bismarck.pack'), "
                      "hashtext('alice.squatted_packed'))")
        with roles.connect("alice") as a:
            a.execute("DROP TABLE IF EXISTS squatted_packed")
            assert a.execute("SELECT rows FROM bismarck.pack('patients', 'second_attack', %s, "
                             "'squatted_packed')", [FEATURES]).fetchone() == (20,)
        m.execute("BEGIN")
        for statement in ("SELECT 1 FROM bismarck.model_names WHERE model_name = 'squatted' "
                          "FOR KEY SHARE",
                          "LOCK TABLE bismarck.model_names IN ACCESS EXCLUSIVE MODE"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                m.execute(statement)
            m.execute("ROLLBACK")
            m.execute("BEGIN")
        m.execute("SELECT count(*) FROM bismarck.model_names")  # ACCESS SHARE: harmless
        with roles.connect("alice") as a:
            a.execute("SET lock_timeout = '30s'")
            assert a.execute(train, [FEATURES, "squatted"]).fetchone() == (2,)
        m.execute("ROLLBACK")
    # a new name being created by an open transaction: others wait at most about a second
    with roles.connect("bob") as b1, roles.connect("alice") as a:
        _patients(b1)
        b1.execute("BEGIN")
        b1.execute(train, [FEATURES, "contended"])
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable, match="being trained by another"):
            a.execute(train, [FEATURES, "contended"])
        assert time.monotonic() - started < 30  # bounded (1 s lock_timeout; generous margin)
        b1.execute("ROLLBACK")
        assert a.execute(train, [FEATURES, "contended"]).fetchone() == (1,)


def test_packed_registry_rows_never_attach_to_another_table(roles: Roles) -> None:
    with roles.connect("alice") as a:
        _patients(a)
        a.execute("DROP TABLE IF EXISTS reused_packed, dropped_packed")
        a.execute("SELECT * FROM bismarck.pack('patients', 'second_attack', %s, "
                  "'reused_packed')", [FEATURES])
        a.execute("SELECT * FROM bismarck.pack('patients', 'second_attack', %s, "
                  "'dropped_packed')", [FEATURES])
        a.execute("DROP TABLE dropped_packed")
    with roles.connect("bob") as b:
        _patients(b)
        bob_oid = b.execute("SELECT 'patients'::regclass::oid").fetchone()[0]
    with roles.connect("admin") as admin:  # as if bob's new table had reused the OID
        admin.execute("UPDATE bismarck._packed_tables SET packed_table = %s "
                      "WHERE packed_table = 'alice.reused_packed'::regclass", [bob_oid])
    with roles.connect("bob") as b:
        assert b.execute("SELECT count(*) FROM bismarck.packed_tables").fetchone() == (0,)
        assert b.execute("SELECT version FROM bismarck.train_glm('patients', 'second_attack', "
                         "%s, 'bob_reused', max_epochs => 1)", [FEATURES]).fetchone() == (1,)
    with roles.connect("alice") as a:  # packing forgets rows of dropped or re-owned tables
        a.execute("DROP TABLE IF EXISTS fresh_packed")
        a.execute("SELECT * FROM bismarck.pack('patients', 'second_attack', %s, "
                  "'fresh_packed')", [FEATURES])
    with roles.connect("admin") as admin:
        assert admin.execute("SELECT count(*) FROM bismarck._packed_tables p WHERE NOT EXISTS ("
                             "SELECT 1 FROM pg_class c WHERE c.oid = p.packed_table "
                             "AND c.relowner = p.owner)").fetchone() == (0,)


@pytest.mark.parametrize("hide", ["row-level security", "view"])
def test_fitted_stays_hidden_when_the_source_may_hide_rows(roles: Roles, hide: str) -> None:
    model = f"hidden_{hide.split()[0].replace('-', '_')}"
    with roles.connect("alice") as a:
        _patients(a)
        source = "patients"
        if hide == "view":
            a.execute("CREATE OR REPLACE VIEW few_patients AS SELECT * FROM patients "
                      "WHERE id < 15")
            source = "few_patients"
        else:
            a.execute("ALTER TABLE patients ENABLE ROW LEVEL SECURITY")
            a.execute(sql.SQL("CREATE POLICY only_some ON patients TO {} USING (id > 15)").format(
                sql.Identifier(roles.names["bob"])))
        a.execute("SELECT * FROM bismarck.train_glm(%s, 'second_attack', %s, %s, "
                  "max_epochs => 1)", [source, FEATURES, model])
        a.execute("SELECT bismarck.grant_model(%s, %s)", [model, roles.names["bob"]])
        a.execute(sql.SQL("GRANT USAGE ON SCHEMA alice TO {0}; GRANT SELECT ON {1} TO {0}").format(
            sql.Identifier(roles.names["bob"]), sql.Identifier(source)))
        assert a.execute("SELECT fitted IS NULL FROM bismarck.models WHERE model_name = %s",
                         [model]).fetchone() == (False,)  # the owner sees it
    with roles.connect("bob") as b:
        assert b.execute("SELECT fitted IS NULL, coef IS NOT NULL FROM bismarck.models "
                         "WHERE model_name = %s", [model]).fetchone() == (True, True)
    with roles.connect("alice") as a:
        a.execute("DROP VIEW IF EXISTS few_patients")
        a.execute("DROP TABLE patients")


def test_doctor_reports_who_may_create_in_schema_bismarck_and_strangers_there(
        roles: Roles) -> None:
    from bismarck_controller import doctor

    mallory = roles.names["mallory"]
    with roles.connect("admin") as admin:
        assert [c.state for c in doctor.schema_checks(admin)] == [doctor.OK, doctor.OK]
        admin.execute(sql.SQL("GRANT CREATE ON SCHEMA bismarck TO {}").format(
            sql.Identifier(mallory)))
        try:
            with roles.connect("mallory") as m:
                m.execute("CREATE FUNCTION bismarck.predict(model text, x text) RETURNS float8 "
                          "LANGUAGE sql AS 'SELECT 0::float8'")
                m.execute("CREATE TABLE bismarck.stash (x int)")
            checks = {c.name: c for c in doctor.schema_checks(admin)}
            assert checks["schema bismarck: who may create"].failed
            assert mallory in checks["schema bismarck: who may create"].detail
            detail = checks["schema bismarck: objects"].detail
            assert checks["schema bismarck: objects"].failed
            assert "bismarck.predict(text,text)" in detail and "bismarck.stash" in detail
            admin.execute(checks["schema bismarck: who may create"].fix.split(": ", 1)[1]
                          .removesuffix("."))  # the fix it names works
            checks = {c.name: c for c in doctor.schema_checks(admin)}
            assert checks["schema bismarck: who may create"].state == doctor.OK
        finally:
            admin.execute("DROP FUNCTION IF EXISTS bismarck.predict(text, text)")
            admin.execute("DROP TABLE IF EXISTS bismarck.stash")
            admin.execute(sql.SQL("REVOKE CREATE ON SCHEMA bismarck FROM {}").format(
                sql.Identifier(mallory)))
        assert [c.state for c in doctor.schema_checks(admin)] == [doctor.OK, doctor.OK]


# --- 5. versions and names ----------------------------------------------------------------------


def test_version_numbers_are_never_reused(roles: Roles) -> None:
    train = ("SELECT version FROM bismarck.train_glm('patients', 'second_attack', %s, "
             "'versions', max_epochs => 1)")
    with roles.connect("alice") as a:
        _patients(a)
        assert [a.execute(train, [FEATURES]).fetchone()[0] for _ in range(2)] == [1, 2]
        a.execute("SELECT bismarck.delete_model('versions', 2)")
        assert a.execute(train, [FEATURES]).fetchone() == (3,)
        a.execute("SELECT bismarck.delete_model('versions')")
        assert a.execute(train, [FEATURES]).fetchone() == (4,)
    with psycopg.connect(roles.dsns["alice"]) as conn:
        assert training.train(conn, "patients", "second_attack", FEATURES, "versions",
                              max_epochs=1).version == 5


def test_repeatable_read_and_concurrent_packs_give_clear_errors(roles: Roles) -> None:
    train = ("SELECT version FROM bismarck.train_glm('patients', 'second_attack', %s, "
             "'rr_model', max_epochs => 1)")
    with roles.connect("alice") as a:
        _patients(a)
    with roles.connect("alice") as t1, roles.connect("alice") as t2:
        t1.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        t2.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        t2.execute("SELECT 1")  # t2's snapshot is taken now
        assert t1.execute(train, [FEATURES]).fetchone() == (1,)
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable,
                           match='"rr_model" is being trained by another transaction'):
            t2.execute(train, [FEATURES])
        assert time.monotonic() - started < 5
        t2.execute("ROLLBACK")
        t2.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        t2.execute("SELECT 1")
        t1.execute("COMMIT")
        with pytest.raises(psycopg.errors.SerializationFailure,
                           match="got a new version after this transaction began"):
            t2.execute(train, [FEATURES])
        t2.execute("ROLLBACK")
        assert t2.execute(train, [FEATURES]).fetchone() == (2,)

        pack = ("SELECT packed_table FROM bismarck.pack('patients', 'second_attack', %s, "
                "'rr_packed')")
        t1.execute("BEGIN")
        t1.execute(pack, [FEATURES])
        with pytest.raises(psycopg.errors.LockNotAvailable,
                           match='another session is packing into "alice.rr_packed"'):
            t2.execute(pack, [FEATURES])
        t1.execute("COMMIT")
        with pytest.raises(psycopg.errors.DuplicateTable, match="already exists"):
            t2.execute(pack, [FEATURES])


def test_registry_stores_qualified_sources_and_lists_only_live_packed_tables(
        roles: Roles) -> None:
    with roles.connect("alice") as a:
        _patients(a)
        a.execute("DROP TABLE IF EXISTS gone_packed, crashed_packed")
        for name in ("gone_packed", "crashed_packed"):
            a.execute("SELECT * FROM bismarck.pack('patients', 'second_attack', %s, %s)",
                      [FEATURES, name])
        a.execute("SELECT * FROM bismarck.train_glm('patients', 'second_attack', %s, "
                  "'qualified', max_epochs => 1)", [FEATURES])
        assert a.execute("SELECT source FROM bismarck.models WHERE model_name = 'qualified'"
                         ).fetchone() == ("alice.patients",)
        a.execute("DROP TABLE gone_packed")
        a.execute("TRUNCATE crashed_packed")  # what crash recovery does to an unlogged table
        listed = dict(a.execute("SELECT packed_table::text, emptied FROM bismarck.packed_tables"
                                " WHERE source = 'alice.patients'").fetchall())
        assert "gone_packed" not in listed and listed["crashed_packed"] is True


# --- 2. and 4. working tables, killed runs, SIGTERM --------------------------------------------


def _cli_train(dsn: str, table: str, model: str, epochs: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bismarck_controller.cli", "train", table, "--label", "y",
         "--features", "a,b", "--model", model, "--max-epochs", str(epochs), "--tol", "0",
         "--packed", "--batch-size", "1", "--dsn", dsn],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_running(admin: psycopg.Connection, model: str, proc: subprocess.Popen) -> int:
    """The run id once the CLI's run has committed a first epoch."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        row = admin.execute("SELECT r.run_id FROM bismarck._training_run r JOIN "
                            "bismarck._training_epoch e USING (run_id) WHERE r.model_name = %s "
                            "AND r.status = 'running' LIMIT 1", [model]).fetchone()
        if row:
            return int(row[0])
        time.sleep(0.1)
    raise AssertionError("the CLI run did not start")


@pytest.fixture(scope="module")
def big_table(roles: Roles) -> str:
    with roles.connect("admin") as admin:
        admin.execute("DROP TABLE IF EXISTS public.sec_big")
        admin.execute("CREATE TABLE public.sec_big AS SELECT (i % 13)::float8 AS a, "
                      "(i % 7)::float8 AS b, i % 2 AS y FROM generate_series(1, 20000) i")
        admin.execute("GRANT SELECT ON public.sec_big TO bismarck_user")
    return "public.sec_big"


def test_sigterm_is_clean_like_sigint(roles: Roles, big_table: str) -> None:
    proc = _cli_train(roles.dsns["alice"], big_table, "terminated", 10000)
    with roles.connect("admin") as admin:
        run_id = _wait_running(admin, "terminated", proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode != 0
        status, schema = admin.execute("SELECT status, work_schema FROM bismarck._training_run "
                                       "WHERE run_id = %s", [run_id]).fetchone()
        assert (status, schema) == ("interrupted", None)
        assert admin.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE "
                             "'bismarck_work_%'").fetchone() == (0,)
        assert admin.execute("SELECT count(*) FROM bismarck._models WHERE model_name = "
                             "'terminated'").fetchone() == (0,)


def _one_epoch(dsn: str, model: str) -> float:
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT * FROM bismarck.train_glm('public.sec_small', 'y', "
                     "ARRAY['a', 'b'], %s, max_epochs => 1)", [model])
    return time.monotonic() - started


def test_a_killed_run_never_delays_another_training(roles: Roles, big_table: str) -> None:
    with roles.connect("admin") as admin:
        admin.execute("DROP TABLE IF EXISTS public.sec_small")
        admin.execute("CREATE TABLE public.sec_small AS SELECT (i % 5)::float8 AS a, "
                      "(i % 3)::float8 AS b, i % 2 AS y FROM generate_series(1, 500) i")
        admin.execute("GRANT SELECT ON public.sec_small TO bismarck_user")
    users = ("alice", "bob")
    for who in users:  # warm up the backends' engine imports once
        _one_epoch(roles.dsns[who], f"warm_{who}")
    baseline = {who: min(_one_epoch(roles.dsns[who], f"base_{who}") for _ in range(2))
                for who in users}

    # alice's client is killed mid-run: a 'running' row and a working schema stay behind
    proc = _cli_train(roles.dsns["alice"], big_table, "killed", 10000)
    with roles.connect("admin") as admin:
        run_id = _wait_running(admin, "killed", proc)
        proc.kill()
        proc.communicate(timeout=30)
        pid = admin.execute("SELECT backend_pid FROM bismarck._training_run WHERE run_id = %s",
                            [run_id]).fetchone()[0]
        deadline = time.monotonic() + 60
        while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                            [pid]).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.1)

        # A superuser's long SQL training claims the dead run's clean-up and holds it.
        def hold() -> None:
            with roles.connect("admin") as conn:
                conn.execute("SELECT * FROM bismarck.train_glm('public.sec_big', 'y', "
                             "ARRAY['a', 'b'], 'holder', max_epochs => 8, tol => 0, "
                             "batch_size => 1, packed => false)")

        holder = threading.Thread(target=hold)
        holder.start()
        deadline = time.monotonic() + 60
        while not admin.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE a.query LIKE '%''holder''%' AND l.locktype = 'transactionid'"
        ).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        waits: list[str] = []
        stop = threading.Event()

        def watch() -> None:
            with roles.connect("admin") as w:
                while not stop.is_set():
                    waits.extend(r[0] for r in w.execute(
                        "SELECT usename::text FROM pg_stat_activity WHERE wait_event_type = "
                        "'Lock' AND usename IN (%s, %s)",
                        [roles.names["alice"], roles.names["bob"]]))
                    time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            assert holder.is_alive()
            elapsed = {who: _one_epoch(roles.dsns[who], f"after_{who}") for who in users}
            with psycopg.connect(roles.dsns["alice"]) as conn:
                started = time.monotonic()
                # two epochs: one epoch of batches of 2 on these signal-free rows ends at its
                # noisy last iterate, above the class priors, which warns (averaging starts
                # with the second epoch)
                training.train(conn, "public.sec_small", "y", ["a", "b"], "after_cli",
                               max_epochs=2)
                elapsed["alice_cli"] = time.monotonic() - started
            assert holder.is_alive()  # the clean-up's locks were held all along
        finally:
            stop.set()
            watcher.join()
            holder.join()
        assert waits == []
        for who, seconds in elapsed.items():
            assert seconds < baseline[who.split("_")[0]] + 1.0, (who, seconds, baseline)
        status, schema = admin.execute("SELECT status, work_schema FROM bismarck._training_run "
                                       "WHERE run_id = %s", [run_id]).fetchone()
        assert (status, schema) == ("interrupted", None)
        assert admin.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE "
                             "'bismarck_work_%'").fetchone() == (0,)


# --- the migration from 0.1.0 keeps existing models -------------------------------------------


def test_upgrade_from_0_1_0_keeps_models_and_never_reuses_their_versions(
        make_database) -> None:
    with psycopg.connect(make_database("_v010")) as probe:
        ext_dir = extension.writable_extension_dir(probe)
    if ext_dir is None:
        pytest.skip("the test server's extension directory is not writable from here")
    old = (Path(__file__).parent / "data" / "bismarck--0.1.0.sql").read_text()
    script = ext_dir / "bismarck--0.1.0.sql"
    from bismarck_controller.embed import embed_engine

    script.write_text(embed_engine(old, extension.engine_modules(), "0.1.0"))
    extension.install_files(ext_dir)
    try:
        with psycopg.connect(make_database("_v010"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION bismarck VERSION '0.1.0' CASCADE")
            conn.execute("CREATE TABLE public.pts AS SELECT i::float8 AS a, i % 2 AS y "
                         "FROM generate_series(1, 40) i")
            for version in (1, 2):
                conn.execute("INSERT INTO bismarck.models (model_name, version, loss, source, "
                             "label, features, array_feature, coef, intercept, classes, params,"
                             " metrics, fitted) VALUES ('old', %s, 'logistic', 'pts', 'y', "
                             "'{a}', false, '{0.5}', -1, '{0,1}', '{}', '{}', '{}')", [version])
            conn.execute("INSERT INTO bismarck._training_run (model_name, source, params, "
                         "status, version) VALUES ('old', 'pts', '{}', 'succeeded', 3)")
            conn.execute("CREATE TABLE bismarck._train_7 (x bytea)")  # a 0.1.0 leftover
            # 0.1.0's README had users grant CREATE on the schema; one of them plants an
            # overload that a literal argument would resolve to
            planter = f"bsec_planter_{os.getpid()}"
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {0}; CREATE ROLE {0}; GRANT CREATE, USAGE "
                                 "ON SCHEMA bismarck TO {0}; GRANT CREATE ON SCHEMA bismarck "
                                 "TO PUBLIC").format(sql.Identifier(planter)))
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(planter)))
            conn.execute("CREATE FUNCTION bismarck.evaluate(model text, source text) RETURNS "
                         "TABLE (metric text, value float8) LANGUAGE sql AS "
                         "$$ SELECT 'planted'::text, 0::float8 $$")
            conn.execute("RESET ROLE")
            path = conn.execute("SHOW search_path").fetchone()

            assert extension.install(conn) == "Upgraded extension bismarck 0.1.0 -> " \
                f"{extension.version()}."
            assert conn.execute("SHOW search_path").fetchone() == path  # the script's is LOCAL

            assert conn.execute("SELECT version, owner::text = current_user FROM "
                                "bismarck.models ORDER BY version").fetchall() == [
                (1, True), (2, True)]
            assert conn.execute("SELECT round(bismarck.predict('old', ARRAY[2]::float8[])"
                                "::numeric, 3)").fetchone()[0] == pytest.approx(0.5)
            assert conn.execute("SELECT version FROM bismarck.train_glm('pts', 'y', "
                                "ARRAY['a'], 'old', max_epochs => 1)").fetchone() == (4,)
            assert conn.execute("SELECT to_regclass('bismarck._train_7')").fetchone() == (None,)
            assert conn.execute(
                "SELECT count(*) FROM pg_roles r WHERE NOT r.rolsuper AND has_schema_privilege("
                "r.oid, 'bismarck', 'CREATE')").fetchone() == (0,)
            from bismarck_controller import doctor

            checks = {c.name: c for c in doctor.schema_checks(conn)}
            assert checks["schema bismarck: who may create"].state == doctor.OK
            strangers = checks["schema bismarck: objects"]
            assert strangers.failed and "bismarck.evaluate(text,text)" in strangers.detail
            conn.execute("DROP FUNCTION bismarck.evaluate(text, text)")
            conn.execute(sql.SQL("REVOKE USAGE ON SCHEMA bismarck FROM {0}; DROP ROLE {0}")
                         .format(sql.Identifier(planter)))
            assert not any(c.failed for c in doctor.schema_checks(conn))
    finally:
        script.unlink(missing_ok=True)


# --- the migration from 0.2.0 keeps existing models (the registry for any kind) ----------------


def test_upgrade_from_0_2_0_keeps_models_as_glm_kind(make_database) -> None:
    """0.2.0's models become kind 'glm' with their stored form; coef, intercept, grants, owners,
    version numbers and predictions are unchanged, and new versions store the kind."""
    with psycopg.connect(make_database("_v020")) as probe:
        ext_dir = extension.writable_extension_dir(probe)
    if ext_dir is None:
        pytest.skip("the test server's extension directory is not writable from here")
    old = (Path(__file__).parent / "data" / "bismarck--0.2.0.sql").read_text()
    script = ext_dir / "bismarck--0.2.0.sql"
    from bismarck_controller.embed import embed_engine

    script.write_text(embed_engine(old, extension.engine_modules(), "0.2.0"))
    extension.install_files(ext_dir)
    reader = f"bsec_reader_{os.getpid()}"
    try:
        with psycopg.connect(make_database("_v020"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION bismarck VERSION '0.2.0' CASCADE")
            conn.execute("CREATE TABLE public.pts AS SELECT i::float8 AS a, i::float8 AS b, "
                         "(i % 2)::int AS y FROM generate_series(1, 40) i")
            conn.execute("INSERT INTO bismarck.model_names (model_name, last_version) "
                         "VALUES ('old', 2)")
            models = {1: ([0.5, -0.25], -1.0, "logistic", [0.0, 1.0]),
                      2: ([1e-300, 3.5e200], 2.5, "squared", None)}
            for version, (coef, intercept, loss, classes) in models.items():
                conn.execute("INSERT INTO bismarck._models (model_name, version, loss, source, "
                             "label, features, array_feature, coef, intercept, classes, params,"
                             " metrics, fitted) VALUES ('old', %s, %s, 'public.pts', 'y', "
                             "'{a,b}', false, %s, %s, %s, '{}', '{}', '{}')",
                             [version, loss, coef, intercept, classes])
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {0}; CREATE ROLE {0}; "
                                 "GRANT bismarck_user TO {0}").format(sql.Identifier(reader)))
            conn.execute("SELECT bismarck.grant_model('old', %s::regrole)", [reader])
            before = conn.execute("SELECT bismarck.predict('old', ARRAY[2, 3]::float8[], 1), "
                                  "bismarck.predict('old', ARRAY[2, 3]::float8[], 2)").fetchone()

            assert extension.install(conn) == "Upgraded extension bismarck 0.2.0 -> " \
                f"{extension.version()}."

            rows = conn.execute("SELECT version, kind, loss, coef, intercept, classes, stored, "
                                "owner::text = current_user FROM bismarck.models "
                                "ORDER BY version").fetchall()
            assert [r[0] for r in rows] == [1, 2]
            for (version, kind, loss, coef, intercept, classes, stored, mine) in rows:
                want_coef, want_intercept, want_loss, want_classes = models[version]
                assert (kind, loss, coef, intercept, classes, mine) == (
                    "glm", want_loss, want_coef, want_intercept, want_classes, True)
                # jsonb keeps the exact decimal of each float8: it reads back as the same float
                assert (stored["loss"], [float(c) for c in stored["coef"]],
                        float(stored["intercept"])) == (want_loss, want_coef, want_intercept)
            assert conn.execute("SELECT bismarck.predict('old', ARRAY[2, 3]::float8[], 1), "
                                "bismarck.predict('old', ARRAY[2, 3]::float8[], 2)"
                                ).fetchone() == before
            assert conn.execute("SELECT count(*) FROM bismarck.model_grants WHERE "
                                "grantee = %s::regrole", [reader]).fetchone() == (1,)
            version = conn.execute("SELECT version FROM bismarck.train_glm('pts', 'y', "
                                   "ARRAY['a', 'b'], 'old', max_epochs => 1)").fetchone()
            assert version == (3,)
            kind, stored, coef = conn.execute(
                "SELECT kind, stored, coef FROM bismarck.models WHERE version = 3").fetchone()
            assert kind == "glm" and stored["loss"] == "logistic"
            assert [float(c) for c in stored["coef"]] == coef
            # 0.3.0's other kinds work after the upgrade too: a matrix factorisation (its own
            # aggregate and functions) is stored in the one registry as kind 'mf'
            conn.execute("CREATE TABLE public.tri AS SELECT u::bigint AS u, i::bigint AS i, "
                         "(u + i)::float8 AS r FROM generate_series(1, 4) u, "
                         "generate_series(1, 3) i")
            conn.execute("SELECT * FROM bismarck.train_mf('tri', 'u', 'i', 'r', 'recs', "
                         "rank => 2, seed => 0, max_epochs => 2)")
            kind, stored, state = conn.execute(
                "SELECT kind, stored, state FROM bismarck.models WHERE model_name = 'recs'"
            ).fetchone()
            assert (kind, stored["rank"], stored["n_rows"], stored["n_cols"]) == ("mf", 2, 4, 3)
            assert bytes(state[:4]) == b"BMF1"
            assert conn.execute("SELECT bismarck.predict_mf('recs', 1, 1)").fetchone()[0] \
                is not None
            # a GLM row without its columns is refused by the table itself
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute("INSERT INTO bismarck._models (model_name, version, source, label, "
                             "features, array_feature, params, metrics, fitted, stored) VALUES "
                             "('old', 9, 'pts', 'y', '{a}', false, '{}', '{}', '{}', '{}')")
            from bismarck_controller import doctor

            assert not any(c.failed for c in doctor.schema_checks(conn))
            conn.execute(sql.SQL("REVOKE bismarck_user FROM {0}").format(sql.Identifier(reader)))
            conn.execute("SELECT bismarck.revoke_model('old', %s::regrole)", [reader])
    finally:
        script.unlink(missing_ok=True)
        with psycopg.connect(make_database("_v020"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(reader)))


# What lower-role code (bob's) tries when it runs inside a higher role's session: an index
# expression evaluated by the superuser's ANALYZE, or a SECURITY DEFINER function of bob's that
# the superuser or alice calls. Each statement's result (or error) goes to bob.attack_log.
_ATTACKS = [
    # the tester's original call (a caller argument) no longer exists
    "SELECT bismarck._set_grant({m}, current_user::text::regrole, true, "
    "session_user::text::regrole)",
    "SELECT bismarck._set_grant(bismarck._ticket(), {m}, current_user::text::regrole, true)",
    "SELECT bismarck.grant_model({m}, current_user::text::regrole)",
    "SELECT bismarck._delete_versions(bismarck._ticket(), {m}, NULL)",
    "SELECT bismarck.delete_model({m})",
    "SELECT bismarck._claim_model(bismarck._ticket(), {m})",
    "INSERT INTO bismarck._tickets (id, role) VALUES (gen_random_uuid(), "
    "session_user::text::regrole) RETURNING 'forged'",
    "SELECT count(*) FROM bismarck._tickets",
]
_ATTACK_FUNCTIONS = """
CREATE TABLE bob.attack_log (session_role text, acting_role text, attack text, outcome text);
CREATE TABLE bob.attack_rows AS SELECT 1 AS x;
CREATE FUNCTION bob.attack_all(x int) RETURNS int LANGUAGE plpgsql VOLATILE AS $f$
DECLARE
    s text;
    m text;
    r text;
BEGIN
    FOREACH m IN ARRAY ARRAY['victim_m', 'alice_victim'] LOOP
        FOREACH s IN ARRAY %(attacks)s LOOP
            s := replace(s, '{m}', quote_literal(m));
            BEGIN
                EXECUTE s INTO r;
            EXCEPTION WHEN others THEN
                r := 'error: ' || SQLERRM;
            END;
            INSERT INTO bob.attack_log VALUES (session_user, current_user, s, r);
        END LOOP;
    END LOOP;
    RETURN x;
END
$f$;
CREATE FUNCTION bob.attack(x int) RETURNS int LANGUAGE sql IMMUTABLE
    AS $f$ SELECT bob.attack_all(x) $f$;
CREATE FUNCTION bob.attack_definer() RETURNS int LANGUAGE sql SECURITY DEFINER
    AS $f$ SELECT bob.attack(1) $f$;
GRANT USAGE ON SCHEMA bob TO PUBLIC;
"""


def _victims_intact(roles: Roles) -> None:
    with roles.connect("admin") as admin:
        assert admin.execute("SELECT model_name, count(*) FROM bismarck._models "
                             "WHERE model_name IN ('victim_m', 'alice_victim') "
                             "GROUP BY 1 ORDER BY 1").fetchall() == [
            ("alice_victim", 1), ("victim_m", 1)]
        assert admin.execute("SELECT count(*) FROM bismarck.model_grants WHERE model_name IN "
                             "('victim_m', 'alice_victim')").fetchone() == (0,)


@pytest.fixture()
def attacker(roles: Roles) -> Iterator[None]:
    """bob's attack functions and index; victims: a superuser's and alice's models."""
    with roles.connect("admin") as admin:
        admin.execute("DROP TABLE IF EXISTS public.admin_patients")
        admin.execute(PATIENTS.replace("patients", "public.admin_patients"))
        admin.execute("SELECT bismarck.delete_model(model_name) FROM bismarck.models "
                      "WHERE model_name IN ('victim_m', 'alice_victim')")
        admin.execute("SELECT * FROM bismarck.train_glm('public.admin_patients', 'second_attack',"
                      " %s, 'victim_m', max_epochs => 1)", [FEATURES])
    with roles.connect("alice") as a:
        _patients(a)
        a.execute("SELECT * FROM bismarck.train_glm('patients', 'second_attack', %s, "
                  "'alice_victim', max_epochs => 1)", [FEATURES])
    attacks = "ARRAY[" + ", ".join(sql.quote(s) for s in _ATTACKS) + "]"
    with roles.connect("bob") as b:
        b.execute("DROP TABLE IF EXISTS bob.attack_log, bob.attack_rows")
        b.execute("DROP FUNCTION IF EXISTS bob.attack_definer(), bob.attack(int), "
                  "bob.attack_all(int)")
        b.execute(_ATTACK_FUNCTIONS.replace("%(attacks)s", attacks))
    yield
    with roles.connect("bob") as b:
        b.execute("DROP TABLE bob.attack_log, bob.attack_rows")
        b.execute("DROP FUNCTION bob.attack_definer(), bob.attack(int), bob.attack_all(int)")


def _outcomes(roles: Roles, session_role: str) -> list[tuple[str, str, str]]:
    with roles.connect("bob") as b:
        return b.execute("SELECT acting_role, attack, outcome FROM bob.attack_log "
                         "WHERE session_role = %s", [session_role]).fetchall()


def _acted_as_bob_only(roles: Roles, rows: list[tuple[str, str, str]]) -> None:
    assert len(rows) == 2 * len(_ATTACKS)
    for acting, attack, outcome in rows:
        assert acting == roles.names["bob"]
        if "_delete_versions" in attack:
            assert outcome == "0", attack  # bob owns and was granted nothing to delete
        elif "._tickets (id" in attack:
            assert outcome.startswith("error: new row") and "violates" in outcome, attack
        elif "FROM bismarck._tickets" in attack:
            assert outcome.startswith("error: permission denied"), attack
        else:
            assert outcome.startswith("error:"), attack
            assert any(w in outcome for w in ("do not own", "another role", "no model",
                                              "does not exist")), (attack, outcome)
    _victims_intact(roles)


def test_index_expression_run_by_a_superusers_analyze_acts_as_its_owner(
        roles: Roles, attacker: None) -> None:
    """The tester's attack: bob's index expression, evaluated by a superuser's ANALYZE."""
    with roles.connect("bob") as b:
        b.execute("CREATE INDEX attack_index ON bob.attack_rows ((bob.attack(x)))")
        b.execute("TRUNCATE bob.attack_log")
    admin_name = psycopg.conninfo.conninfo_to_dict(roles.admin)["user"]
    with roles.connect("admin") as admin:
        admin.execute("ANALYZE bob.attack_rows")
        # the only tickets: those bob's CREATE INDEX made for himself in his own session
        assert admin.execute("SELECT DISTINCT role::text FROM bismarck._tickets").fetchall() == [
            (roles.names["bob"],)]
        admin.execute("DELETE FROM bismarck._tickets")
    _acted_as_bob_only(roles, _outcomes(roles, admin_name))


@pytest.mark.parametrize("victim", ["admin", "alice"])
def test_definer_function_called_by_another_role_acts_as_its_owner(
        roles: Roles, attacker: None, victim: str) -> None:
    with roles.connect(victim) as conn:
        assert conn.execute("SELECT bob.attack_definer()").fetchone() == (1,)
    session_role = (psycopg.conninfo.conninfo_to_dict(roles.admin)["user"] if victim == "admin"
                    else roles.names[victim])
    _acted_as_bob_only(roles, _outcomes(roles, session_role))
    with roles.connect("bob") as b:  # and as bob it does act: his own model, granted by alice
        _patients(b)
        b.execute("SELECT * FROM bismarck.train_glm('patients', 'second_attack', %s, "
                  "'bob_shared', max_epochs => 1)", [FEATURES])
        b.execute("CREATE OR REPLACE FUNCTION bob.share() RETURNS boolean LANGUAGE sql "
                  "SECURITY DEFINER AS $f$ SELECT bismarck._set_grant(bismarck._ticket(), "
                  "'bob_shared', session_user::text::regrole, true) $f$")
        b.execute("GRANT EXECUTE ON FUNCTION bob.share() TO PUBLIC")
    with roles.connect("alice") as a:
        assert a.execute("SELECT bob.share()").fetchone() == (True,)
        assert a.execute("SELECT count(*) FROM bismarck.models "
                         "WHERE model_name = 'bob_shared'").fetchone() == (1,)
    with roles.connect("bob") as b:
        b.execute("DROP FUNCTION bob.share()")
        b.execute("SELECT bismarck.revoke_model('bob_shared', %s)", [roles.names["alice"]])
        b.execute("SELECT bismarck.delete_model('bob_shared')")


def test_no_role_forges_a_ticket_even_bypassing_row_level_security(roles: Roles) -> None:
    name = roles.names["mallory"]
    with roles.connect("admin") as admin:
        admin.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(name)))
    try:
        with roles.connect("mallory") as m:
            for values in ("gen_random_uuid(), 'postgres'",
                           f"gen_random_uuid(), '{roles.names['alice']}'"):
                with pytest.raises(psycopg.errors.CheckViolation):
                    m.execute(f"INSERT INTO bismarck._tickets (id, role) VALUES ({values})")
            with pytest.raises(psycopg.errors.CheckViolation):
                m.execute("INSERT INTO bismarck._tickets (id, pid) VALUES (gen_random_uuid(), 1)")
            # a ticket of another session is refused even with its id
            m.execute("INSERT INTO bismarck._tickets (id) VALUES "
                      "('00000000-0000-4000-8000-000000000001')")
        with roles.connect("mallory") as m, pytest.raises(
                psycopg.errors.InsufficientPrivilege, match="needs a ticket"):
            m.execute("SELECT * FROM bismarck._dead_runs('00000000-0000-4000-8000-000000000001')")
    finally:
        with roles.connect("admin") as admin:
            admin.execute(sql.SQL("ALTER ROLE {} NOBYPASSRLS").format(sql.Identifier(name)))
            admin.execute("DELETE FROM bismarck._tickets")


def test_a_group_role_never_owns_a_working_schema(roles: Roles) -> None:
    with roles.connect("alice") as a:
        a.execute("SET ROLE bismarck_user")
        a.execute("SELECT bismarck._claim_model(bismarck._ticket(), 'group_owned')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match="cannot own a working schema"):
            a.execute("SELECT * FROM bismarck._begin_run(bismarck._ticket(), 'group_owned', "
                      "'x', '{}', true)")
    with roles.connect("admin") as admin:
        admin.execute("DELETE FROM bismarck.model_names WHERE model_name = 'group_owned'")


def test_a_pack_never_waits_on_another_users_open_transaction(roles: Roles) -> None:
    """alice's open pack (which forgot her stale rows) does not stall bob's pack."""
    pack = "SELECT rows FROM bismarck.pack('patients', 'second_attack', %s, %s)"
    with roles.connect("alice") as a, roles.connect("bob") as b:
        _patients(a)
        _patients(b)
        a.execute("DROP TABLE IF EXISTS stale_packed, open_packed")
        b.execute("DROP TABLE IF EXISTS bob_packed")
        a.execute(pack, [FEATURES, "stale_packed"])
        a.execute("DROP TABLE stale_packed")  # a stale row of alice's
        a.execute("BEGIN")
        assert a.execute(pack, [FEATURES, "open_packed"]).fetchone() == (20,)
        b.execute("SET statement_timeout = '20s'")  # instead of hanging, the old code failed
        assert b.execute(pack, [FEATURES, "bob_packed"]).fetchone() == (20,)
        a.execute("COMMIT")


# Leftovers an administrator may have granted or planted on the registry: doctor fails on each,
# and `bismarck install` on the current version takes the grants back.
_LEFTOVER_GRANTS = [
    "GRANT TRIGGER, UPDATE ON bismarck._training_run TO {r}",
    "GRANT SELECT ON bismarck._tickets TO {r}",
    "GRANT SELECT (fitted) ON bismarck._models TO {r}",
    "GRANT USAGE ON SEQUENCE bismarck._training_run_run_id_seq TO {r}",
    "GRANT EXECUTE ON FUNCTION bismarck._redeem(uuid) TO {r}",
    "GRANT SELECT ON bismarck._tickets TO bismarck_user",
    "GRANT CREATE ON SCHEMA bismarck TO {r}",
]


@pytest.mark.parametrize("grant", _LEFTOVER_GRANTS)
def test_doctor_fails_on_leftover_grants_and_install_takes_them_back(
        roles: Roles, grant: str) -> None:
    from bismarck_controller import doctor

    carol = roles.names["carol"]
    statement = sql.SQL(grant.replace("{r}", "{}")).format(sql.Identifier(carol))
    with roles.connect("admin") as admin:
        names = ("registry privileges", "schema bismarck: who may create")
        assert all(c.state == doctor.OK for c in doctor.registry_checks(admin)
                   + doctor.schema_checks(admin) if c.name in names)
        admin.execute(statement)
        failed = [c for c in doctor.registry_checks(admin) + doctor.schema_checks(admin)
                  if c.failed]
        assert failed and all(c.fix for c in failed)
    assert "privileges re-applied" in extension.install(roles.admin)
    with roles.connect("admin") as admin:
        assert [c.name for c in doctor.registry_checks(admin) + doctor.schema_checks(admin)
                if c.failed] == []


@pytest.mark.parametrize(("plant", "drop"), [
    ("CREATE TRIGGER planted BEFORE INSERT ON bismarck._training_run FOR EACH ROW "
     "EXECUTE FUNCTION public.noop_trigger()", "DROP TRIGGER planted ON bismarck._training_run"),
    ("CREATE POLICY planted ON bismarck.model_grants FOR SELECT USING (true)",
     "DROP POLICY planted ON bismarck.model_grants"),
    ("CREATE RULE planted AS ON DELETE TO bismarck._tickets DO ALSO NOTHING",
     "DROP RULE planted ON bismarck._tickets"),
    ("CREATE INDEX planted ON bismarck._models ((public.noop_index(version)))",
     "DROP INDEX bismarck.planted"),
])
def test_doctor_fails_on_objects_planted_on_registry_tables(roles: Roles, plant: str,
                                                            drop: str) -> None:
    from bismarck_controller import doctor

    with roles.connect("admin") as admin:
        admin.execute("CREATE OR REPLACE FUNCTION public.noop_trigger() RETURNS trigger "
                      "LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'")
        admin.execute("CREATE OR REPLACE FUNCTION public.noop_index(int) RETURNS int "
                      "LANGUAGE sql IMMUTABLE AS 'SELECT $1'")
        admin.execute(plant)
        try:
            checks = {c.name: c for c in doctor.registry_checks(admin)}
            check = checks["registry tables: triggers, policies, rules, indexes"]
            assert check.failed and "planted" in check.detail and "DROP" in check.fix
        finally:
            admin.execute(drop)
        assert all(c.state == doctor.OK for c in doctor.registry_checks(admin))


def test_fitted_of_a_temporary_source_never_shows_through_anothers_pg_temp(
        roles: Roles) -> None:
    """bob trains on his temporary table; alice's own temporary table of that name (even in the
    same temporary schema, once bob's session is gone) never reveals bob's means."""
    with roles.connect("bob") as b:
        b.execute(PATIENTS.replace("CREATE TABLE patients", "CREATE TEMP TABLE tsecret")
                  .replace("INSERT INTO patients", "INSERT INTO tsecret"))
        b.execute("SELECT * FROM bismarck.train_glm('tsecret', 'second_attack', %s, "
                  "'temp_secret', max_epochs => 1)", [FEATURES])
        b.execute("SELECT bismarck.grant_model('temp_secret', %s)", [roles.names["alice"]])
        source, = b.execute("SELECT source FROM bismarck.models "
                            "WHERE model_name = 'temp_secret'").fetchone()
        assert source.startswith("pg_temp_") and source.endswith(".tsecret")
    for _ in range(2):  # a new session may even get bob's old temporary schema
        with roles.connect("alice") as a:
            a.execute(PATIENTS.replace("CREATE TABLE patients", "CREATE TEMP TABLE tsecret")
                      .replace("INSERT INTO patients", "INSERT INTO tsecret"))
            assert a.execute("SELECT fitted IS NULL, coef IS NOT NULL FROM bismarck.models "
                             "WHERE model_name = 'temp_secret'").fetchone() == (True, True)
    with roles.connect("bob") as b:
        b.execute("SELECT bismarck.delete_model('temp_secret')")


@pytest.mark.parametrize(("name", "ok"), [("m" * 200, True), ("m" * 201, False),
                                          ("é" * 200, True), ("é" * 201, False)])
def test_model_names_are_at_most_200_characters(roles: Roles, name: str, ok: bool) -> None:
    with roles.connect("alice") as a:
        _patients(a)
        train = ("SELECT version FROM bismarck.train_glm('patients', 'second_attack', %s, %s, "
                 "max_epochs => 1)")
        if ok:
            assert a.execute(train, [FEATURES, name]).fetchone() == (1,)
            a.execute("SELECT bismarck.delete_model(%s)", [name])
        else:
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most 200"):
                a.execute(train, [FEATURES, name])


def test_recommend_never_reads_a_source_another_role_chose(roles: Roles) -> None:
    """recommend_mf leaves out rated columns by reading the model's training source; a source
    that runs its owner's code (here a view calling bob's function) is read only by bob."""
    with roles.connect("bob") as b:
        b.execute("DROP VIEW IF EXISTS bob.rated_view")
        b.execute("DROP TABLE IF EXISTS bob.rated, bob.reads")
        b.execute("DROP FUNCTION IF EXISTS bob.spy(bigint)")
        b.execute("CREATE TABLE bob.reads (reader text)")
        b.execute("GRANT INSERT ON bob.reads TO PUBLIC")
        b.execute("CREATE FUNCTION bob.spy(bigint) RETURNS bigint LANGUAGE plpgsql AS $f$ "
                  "BEGIN INSERT INTO bob.reads VALUES (current_user); RETURN $1; END $f$")
        b.execute("CREATE TABLE bob.rated AS SELECT u::bigint, i::bigint, ((u * i) % 5)::float8 "
                  "AS r FROM generate_series(0, 19) AS u, generate_series(0, 12) AS i "
                  "WHERE (u + i) % 3 = 0")  # row 1 rated columns 2, 5, 8 and 11
        b.execute("CREATE VIEW bob.rated_view AS SELECT bob.spy(u) AS u, i, r FROM bob.rated")
        b.execute("GRANT SELECT ON bob.rated_view TO PUBLIC")
        b.execute("SELECT bismarck.delete_model(model_name) FROM bismarck.models "
                  "WHERE model_name = 'bob_mf'")
        b.execute("SELECT * FROM bismarck.train_mf('bob.rated_view', 'u', 'i', 'r', 'bob_mf', "
                  "rank => 2, max_epochs => 2)")
        b.execute("SELECT bismarck.grant_model('bob_mf', %s)", [roles.names["alice"]])
        b.execute("TRUNCATE bob.reads")
        mine = b.execute("SELECT col_id FROM bismarck.recommend_mf('bob_mf', 1, 20)").fetchall()
        assert sorted(c for (c,) in mine) == [0, 1, 3, 4, 6, 7, 9, 10, 12]
    with roles.connect("bob") as b:
        assert b.execute("SELECT count(*) > 0 FROM bob.reads").fetchone() == (True,)
        b.execute("TRUNCATE bob.reads")
    for who in ("admin", "alice"):
        with roles.connect(who) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="does not read the training source") as info:
                conn.execute("SELECT * FROM bismarck.recommend_mf('bob_mf', 1, 5)")
            assert "exclude_rated => false" in (info.value.diag.message_hint or "")
            assert "Traceback" not in str(info.value)
            everything = conn.execute("SELECT count(*) FROM bismarck.recommend_mf('bob_mf', 1, "
                                      "100, exclude_rated => false)").fetchone()
            assert everything == (13,)
    with roles.connect("bob") as b:
        assert b.execute("SELECT count(*) FROM bob.reads").fetchone() == (0,)
        b.execute("SELECT bismarck.delete_model('bob_mf')")
        b.execute("DROP VIEW bob.rated_view")
        b.execute("DROP TABLE bob.rated, bob.reads")
        b.execute("DROP FUNCTION bob.spy(bigint)")


# --- statement texts carry no model state or key ------------------------------------------------
# An outside tester (a member of pg_monitor and bismarck_user) read another role's model state
# and shared-mode key in the query text its parallel workers show in pg_stat_activity (the state
# was written into the epoch's SQL as a bytea literal), and wrote into that role's model with it.

#: A run of hex digits as long as a shared-mode key (16 bytes, 32 digits) or longer: a state
#: written as a bytea literal shows one. No statement of bismarck's holds one (its work
#: schemas' names hold 16).
LONG_HEX = re.compile(r"[0-9a-f]{32,}", re.IGNORECASE)
#: The head of a shared-mode init ("BSHM") in hex.
SHARED_HEX = shared_model.MAGIC[:4].hex()
WIDE_FEATURES = [f"f{i}" for i in range(6)]


def _secrets_in(text: str) -> list[str]:
    """What in ``text`` could be a state or key: long hex runs, the shared magic, a ``\\x``."""
    found = LONG_HEX.findall(text)
    lowered = text.lower()
    return found + ([SHARED_HEX] if SHARED_HEX in lowered else []) + (
        ["\\x"] if "\\x" in lowered else [])


@pytest.fixture(scope="module")
def wide(roles: Roles) -> str:
    """alice.wide: 120k rows of 6 features, about a second per parallel epoch."""
    with roles.connect("alice") as a:
        a.execute("SET search_path = pg_catalog")  # never mallory's look-alikes in public
        a.execute("DROP TABLE IF EXISTS alice.wide")
        a.execute("SELECT setseed(0.5)")
        a.execute("CREATE TABLE alice.wide AS SELECT " + ", ".join(
            f"random() AS {f}" for f in WIDE_FEATURES) + ", (random() < 0.5) AS y "
            "FROM generate_series(1, 120000)")
        a.execute("ANALYZE alice.wide")
    return "alice.wide"


@pytest.fixture
def monitor(roles: Roles) -> Iterator[str]:
    """mallory, a member of pg_monitor (she reads every session's query text) for one test."""
    name = sql.Identifier(roles.names["mallory"])
    with roles.connect("admin") as admin:
        admin.execute(sql.SQL("GRANT pg_monitor TO {}").format(name))
    yield "mallory"
    with roles.connect("admin") as admin:
        admin.execute(sql.SQL("REVOKE pg_monitor FROM {}").format(name))


class _Watcher(threading.Thread):
    """Reads, as ``who``, the query texts of ``user``'s backends (leader and parallel workers)
    in pg_stat_activity, every few milliseconds until stopped."""

    def __init__(self, roles: Roles, who: str, user: str) -> None:
        super().__init__(daemon=True)
        self.conn = roles.connect(who)
        self.user, self.stop = user, threading.Event()
        self.texts: set[tuple[str, str]] = set()

    def run(self) -> None:
        with self.conn:
            while not self.stop.is_set():
                for backend, text in self.conn.execute(
                        "SELECT backend_type, query FROM pg_stat_activity WHERE usename = %s "
                        "AND pid <> pg_backend_pid()", [self.user]):
                    self.texts.add((backend, text))
                time.sleep(0.003)

    def __enter__(self) -> _Watcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()


@pytest.mark.parametrize("front, call", [
    ("sql", "train_glm(%s, 'y', %s, %s, parallel => 2, max_epochs => 3, tol => NULL)"),
    ("sql", "train_glm(%s, 'y', %s, %s, parallel => 2, parallel_mode => 'shared', "
            "batch_size => 16, max_epochs => 3, tol => NULL)"),
    ("sql", "train_mlp(%s, 'y', %s, %s, hidden => ARRAY[4], parallel => 2, max_epochs => 2, "
            "tol => NULL)"),
    ("client", "shared"),
])
def test_no_model_state_or_key_in_any_query_text(roles: Roles, wide: str, monitor: str,
                                                  front: str, call: str) -> None:
    """A role in pg_monitor watching another role's parallel training sees each worker's
    statement, with its init state as ``$1``: never the state, nor a shared-mode key."""
    name = f"alice_private_{abs(hash(call)) % 10**6}"
    with _Watcher(roles, monitor, roles.names["alice"]) as watcher:
        if front == "sql":
            with roles.connect("alice") as a:
                a.execute("SELECT * FROM bismarck." + call, [wide, WIDE_FEATURES, name])
        else:
            with psycopg.connect(roles.dsns["alice"]) as a:
                training.train(a, wide, "y", WIDE_FEATURES, name, parallel=2,
                               parallel_mode=call, batch_size=16, max_epochs=3, tol=None)
    with roles.connect("alice") as a:
        workers = [w for (w,) in a.execute(
            "SELECT workers FROM bismarck.training_history WHERE model_name = %s "
            "ORDER BY run_id, epoch", [name])]
        a.execute("SELECT bismarck.delete_model(%s)", [name])
    assert workers and set(workers) == {2}, f"the epochs did not use 2 workers: {workers}"
    epochs = [t for b, t in watcher.texts if b == "parallel worker" and "bismarck._epoch" in t]
    assert epochs, f"no parallel worker's epoch was seen: {watcher.texts}"
    assert all("$1" in t for t in epochs), epochs
    leaks = {t[:300]: _secrets_in(t) for _, t in watcher.texts if _secrets_in(t)}
    assert not leaks, leaks


def _segment_of(conn: psycopg.Connection, pid: int, deadline: float) -> int:
    """The id of backend ``pid``'s shared-model segment, from its name (what any member can
    list); waits until it exists."""
    while time.monotonic() < deadline:
        for (seg,) in conn.execute("SELECT * FROM bismarck._shared_segments()"):
            head, seg_pid, seg_id = seg.split(".")
            if int(seg_pid) == pid:
                return int(seg_id, 16)
        time.sleep(0.01)
    raise AssertionError("the training's shared-model segment never appeared")


def test_nobody_writes_into_anothers_shared_model(roles: Roles, wide: str, monitor: str) -> None:
    """The tester's injection: mallory sees alice's segment (its name: backend pid and id) but
    not its key, so her epoch on it is refused, and alice's model is not moved."""
    with roles.connect("alice") as a:
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        done: list[BaseException | tuple] = []

        def train() -> None:
            try:
                done.append(a.execute(
                    "SELECT version FROM bismarck.train_glm(%s, 'y', %s, 'alice_shared', "
                    "parallel => 2, parallel_mode => 'shared', batch_size => 16, "
                    "max_epochs => 4, tol => NULL)", [wide, WIDE_FEATURES]).fetchone())
            except BaseException as exc:  # reported by the assertion below
                done.append(exc)

        run = threading.Thread(target=train)
        run.start()
        try:
            with _Watcher(roles, monitor, roles.names["alice"]) as watcher, \
                    roles.connect("mallory") as m:
                seg = _segment_of(m, pid, time.monotonic() + 60)
                while run.is_alive() and not any(
                        b == "parallel worker" and "bismarck._epoch" in t
                        for b, t in watcher.texts.copy()):
                    time.sleep(0.01)
                # the tester's way in: a shared init copied from a worker's query text
                observed = {h for _, t in watcher.texts.copy()
                            for h in re.findall(r"\\x(4253484d[0-9a-f]+)", t, re.IGNORECASE)}
                assert not observed, observed
                # what is left: the segment's name, with a guessed key
                inner = glm.initialize(len(WIDE_FEATURES), loss="logistic")
                for key in (secrets.token_bytes(16), bytes(16)):
                    forged = struct.pack("<8sqQ16s", shared_model.MAGIC, pid, seg, key) + inner
                    with pytest.raises(psycopg.errors.DataException,
                                       match="shared model of this epoch does not exist"):
                        m.execute("SELECT bismarck._epoch(bismarck._float8_array_bytes("
                                  "ARRAY[1e6, 1e6, 1e6, 1e6, 1e6, 1e6]), 1, %s)", [forged])
        finally:
            run.join()
        assert done and isinstance(done[0], tuple), done
        coef = a.execute("SELECT coef FROM bismarck.models WHERE model_name = 'alice_shared' "
                         "ORDER BY version DESC LIMIT 1").fetchone()[0]
        assert max(abs(c) for c in coef) < 10, coef
        a.execute("SELECT bismarck.delete_model('alice_shared')")


def _server_log() -> Path | None:
    """The embedded test server's log file (None for a server named by the environment)."""
    if os.environ.get("BISMARCK_TEST_DSN") or os.environ.get("BISMARCK_TEST_DOCKER") == "1":
        return None
    return embedded.default().log_file


def test_a_cancelled_epochs_errors_carry_no_key(roles: Roles, wide: str) -> None:
    """A shared-mode training whose parallel workers are cancelled mid-epoch: each worker logs
    its error with its statement (``STATEMENT:`` in the server log), and the leader passes it
    on with CONTEXT lines to the client; they name the epoch's statement with ``$1``, no key."""
    log = _server_log()
    offset = log.stat().st_size if log is not None else 0
    with roles.connect("alice") as a:
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        stop, cancelled = threading.Event(), []

        def cancel() -> None:
            with roles.connect("admin") as admin:
                _segment_of(admin, pid, time.monotonic() + 60)
                while not stop.is_set():  # the epoch's workers, until one is cancelled
                    workers = [w for (w,) in admin.execute(
                        "SELECT pid FROM pg_stat_activity WHERE leader_pid = %s AND pid <> %s",
                        [pid, pid])]
                    for w in workers:
                        if admin.execute("SELECT pg_cancel_backend(%s)", [w]).fetchone()[0]:
                            cancelled.append(w)
                    time.sleep(0.05)

        canceller = threading.Thread(target=cancel)
        canceller.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled) as info:
                a.execute("SELECT * FROM bismarck.train_glm(%s, 'y', %s, 'alice_cancelled', "
                          "parallel => 2, parallel_mode => 'shared', batch_size => 16, "
                          "max_epochs => 200, tol => NULL)", [wide, WIDE_FEATURES])
        finally:
            stop.set()
            canceller.join()
    assert cancelled, "no parallel worker was cancelled"
    d = info.value.diag
    told = "\n".join(filter(None, (d.message_primary, d.message_detail, d.message_hint,
                                    d.context, d.internal_query)))
    assert not _secrets_in(told), told
    if log is not None:
        time.sleep(0.5)  # the log is written by the server's processes
        with open(log, "rb") as fh:
            fh.seek(offset)
            written = fh.read().decode(errors="replace")
        statements = [line for line in written.splitlines()
                      if "STATEMENT:" in line and "bismarck._epoch" in line]
        assert statements and all("$1" in line for line in statements), written[-4000:]
        assert not _secrets_in(written), [line for line in written.splitlines()
                                          if _secrets_in(line)]
