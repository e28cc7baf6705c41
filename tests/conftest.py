"""Fixtures shared by all tests; every test runs against a real PostgreSQL server.

The server is ``$BISMARCK_TEST_DSN`` if set, else a Docker container when
``BISMARCK_TEST_DOCKER=1`` (needs a Docker engine and ``pip install -e '.[docker]'``), else the
embedded cluster. Each test session works in its own fresh database with the extension installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.rows
import pytest
from hypothesis import settings
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bismarck_controller import embedded, extension

REPO = Path(__file__).resolve().parents[1]

# Property tests: under CI=true every run draws the same examples (derandomize: the seed comes
# from each test's name), so a failure in CI fails again on a rerun and locally with CI=true;
# elsewhere each run draws new examples. print_blob prints the line that replays a failure
# (@reproduce_failure). No deadline: the machine's load must not fail a test.
# HYPOTHESIS_PROFILE=ci|dev picks one explicitly.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("dev", print_blob=True, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE")
                      or ("ci" if os.environ.get("CI", "").lower() == "true" else "dev"))


def _docker_server() -> Iterator[str]:
    """A container from docker/Dockerfile (PostgreSQL 15 with plpython3u, numpy, bismarck)."""
    if shutil.which("docker") is None:
        pytest.skip("BISMARCK_TEST_DOCKER=1 but there is no docker command")
    from testcontainers.core.image import DockerImage
    from testcontainers.postgres import PostgresContainer

    with DockerImage(path=str(REPO), dockerfile_path="docker/Dockerfile",
                     tag="bismarckpy-test:latest") as image, \
            PostgresContainer(str(image), username="postgres", password="bismarck",
                              dbname="bismarck", driver=None) as container:
        yield container.get_connection_url()


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A superuser DSN of the test server (its maintenance database)."""
    env = os.environ.get("BISMARCK_TEST_DSN")
    if env:
        yield env
    elif os.environ.get("BISMARCK_TEST_DOCKER") == "1":
        yield from _docker_server()
    else:
        embedded.ensure_running()
        yield embedded.url()


@pytest.fixture(scope="session")
def make_database(server_dsn: str) -> Iterator:
    """A factory ``make_database(suffix) -> dsn`` of fresh databases, dropped at session end."""
    created: list[str] = []

    def make(suffix: str = "") -> str:
        name = f"bismarck_test_{os.getpid()}{suffix}"
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return make_conninfo(server_dsn, dbname=name)

    yield make
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        for name in created:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@pytest.fixture(scope="session")
def dsn(make_database) -> str:
    """DSN of this session's fresh database ``bismarck_test_<pid>`` with bismarck installed."""
    test_dsn = make_database()
    extension.install(test_dsn)
    return test_dsn


class _ReusableConnection(psycopg.Connection):
    """A connection that remembers the notice handlers a test adds, to take them off after."""

    def add_notice_handler(self, callback) -> None:  # type: ignore[override]
        super().add_notice_handler(callback)
        self.__dict__.setdefault("_test_notice_handlers", []).append(callback)

    def reset_for_next_test(self) -> bool:
        """Back to a new session's state (what DISCARD ALL resets: settings, role, temp tables,
        cursors, advisory locks, LISTENs, plans; all but prepared statements, which psycopg
        keeps track of); False when it cannot be reused."""
        if self.closed or self.broken or \
                self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            return False
        for callback in self.__dict__.pop("_test_notice_handlers", []):
            with contextlib.suppress(ValueError):  # the test took it off itself
                self.remove_notice_handler(callback)
        try:
            self.autocommit = True
            self.row_factory = psycopg.rows.tuple_row
            self.execute("CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; "
                         "UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(); "
                         "DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES")
        except psycopg.Error:
            return False
        return True


# Idle connections of finished tests, by DSN. The first bismarck call in a new server process
# loads PL/Python, numpy and the engine (0.3-0.7 s); the next test's ``conn`` reuses the
# process, reset to a new session's state, instead of paying it again.
_idle: dict[str, list[_ReusableConnection]] = {}


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test database in a new session's state (its server
    process may be one an earlier test used, reset as by DISCARD ALL), closed or kept after."""
    idle = _idle.setdefault(dsn, [])
    connection = idle.pop() if idle else _ReusableConnection.connect(dsn, autocommit=True)
    try:
        yield connection
    finally:
        try:
            reusable = connection.reset_for_next_test()
        except Exception:
            reusable = False
        if reusable:
            idle.append(connection)
        else:
            connection.close()


@pytest.fixture(scope="session", autouse=True)
def _close_idle_connections() -> Iterator[None]:
    yield
    for idle in _idle.values():
        for connection in idle:
            connection.close()
    _idle.clear()


@pytest.fixture
def scratch_root() -> Iterator[Path]:
    """A data root for a throw-away embedded cluster under /tmp; stopped and removed after."""
    parent = Path(tempfile.mkdtemp(prefix="bismarck-test-", dir="/tmp"))
    parent.chmod(0o755)  # the server account (postgres, when root) must reach it
    root = parent / "data"
    try:
        yield root
    finally:
        cluster = embedded.Cluster(root)
        with contextlib.suppress(Exception):
            if cluster.status().running:
                cluster.stop()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def scratch_cluster(scratch_root: Path) -> embedded.Cluster:
    """A throw-away embedded cluster, initialized and running."""
    cluster = embedded.Cluster(scratch_root)
    cluster.start()
    return cluster
