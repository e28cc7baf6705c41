"""Concurrent `bismarck` commands on one cluster each check the installation
(``extension.install``): they take turns instead of failing with "tuple concurrently
updated" (two GRANTs of the same object at once), as an outside tester saw with three
`bismarck train` commands started together."""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from bismarck_controller import extension, session
from bismarck_controller.errors import SetupError


def test_concurrent_installs_take_turns(dsn) -> None:
    errors: list[BaseException] = []

    def install() -> None:
        try:
            for _ in range(3):
                extension.install(dsn)
        except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
            errors.append(exc)

    threads = [threading.Thread(target=install) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors


def _fake_build(dsn: str) -> None:
    """Make the installed code look older than this client's: the next install re-creates the
    extension's functions (:func:`extension.refresh_code`), as after a change to the engine."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE OR REPLACE FUNCTION bismarck._build() RETURNS text LANGUAGE sql "
                  "AS $$SELECT 'older'$$")


def test_installs_into_two_databases_at_once_take_turns_on_the_files(make_database) -> None:
    """The databases of a cluster share the extension's files: two installs that re-create
    the functions at once wrote and removed each other's transient upgrade scripts ("no
    update path from 0.3.0.refresh")."""
    dsns = [make_database(f"_files_{i}") for i in range(3)]
    for d in dsns:
        extension.install(d)
    errors: list[BaseException] = []
    for _ in range(6):  # the old code failed about one round in six
        for d in dsns:
            _fake_build(d)
        start = threading.Barrier(len(dsns))

        def install(d: str, start: threading.Barrier = start) -> None:
            try:
                start.wait(60)
                extension.install(d)
            except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
                errors.append(exc)

        threads = [threading.Thread(target=install, args=(d,)) for d in dsns]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
    for d in dsns:
        with psycopg.connect(d) as c:
            assert extension.installed_build(c) == extension.build_digest()


def test_an_install_refuses_to_replace_functions_under_a_running_call(dsn, conn,
                                                                     monkeypatch) -> None:
    """A call that has not ended (here: its transaction is still open) holds the run lock; an
    install that would re-create the functions says which process to wait for, and goes
    ahead once it has ended. Before, the running call failed with "cache lookup failed" (or,
    as here, the install waited for the call's locks: the lock timeout ends that wait)."""
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=20s")
    conn.execute("DROP TABLE IF EXISTS busy, busy_packed")
    conn.execute("CREATE TABLE busy AS SELECT i AS id, (i % 2)::float8 AS y, i * 0.5 AS a "
                 "FROM generate_series(1, 200) AS i")
    with psycopg.connect(dsn) as running:
        pid = running.info.backend_pid
        running.execute("SELECT * FROM bismarck.pack('busy', 'y', ARRAY['a'], 'busy_packed')")
        _fake_build(dsn)
        with pytest.raises(SetupError, match=f"calls are running.*{pid}") as exc:
            extension.install(dsn)
        assert "bismarck install" in exc.value.hint
        running.commit()
    assert "re-created its functions" in extension.install(dsn)


def test_a_run_driven_by_the_client_holds_the_run_lock(dsn) -> None:
    with psycopg.connect(dsn) as c, session.running(c):
        _fake_build(dsn)
        with pytest.raises(SetupError, match="calls are running"):
            extension.install(dsn)
        assert c.info.transaction_status == TransactionStatus.IDLE
    assert "re-created its functions" in extension.install(dsn)
