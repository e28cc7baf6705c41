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


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test database, closed after the test."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


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
