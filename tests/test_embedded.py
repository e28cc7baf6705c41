"""The embedded cluster: lifecycle, URLs for every client, and the errors a user can hit."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from click.testing import CliRunner

from bismarck_controller import cli_db, embedded
from bismarck_controller.errors import SetupError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as others")


@pytest.fixture(scope="module")
def default_cluster() -> embedded.Cluster:
    """The default cluster, running (the one `bismarck db start` uses)."""
    embedded.ensure_running()
    return embedded.default()


def test_default_cluster_is_idempotent(default_cluster: embedded.Cluster) -> None:
    first = embedded.ensure_running()
    again = embedded.start()
    status = embedded.status()
    assert first.running and again.running and status.running
    assert first.pid == again.pid == status.pid
    assert first.port == again.port == status.port
    assert embedded.url() == embedded.url()


def test_url_works_with_psycopg(default_cluster: embedded.Cluster) -> None:
    url = embedded.url()
    assert url.startswith("postgresql://postgres:") and url.endswith("/bismarck")
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_user, current_database(), "
                           "current_setting('jit'), current_setting('synchronize_seqscans'), "
                           "current_setting('max_parallel_workers_per_gather')").fetchone()
    assert row == ("postgres", "bismarck", "off", "off", "2")


def test_url_works_with_sqlalchemy(default_cluster: embedded.Cluster) -> None:
    url = embedded.url("psycopg")
    assert url.startswith("postgresql+psycopg://")
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT 1 + 1")).scalar() == 2
    finally:
        engine.dispose()


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_url_works_with_psql(default_cluster: embedded.Cluster) -> None:
    out = subprocess.run(["psql", embedded.url(), "-Atc", "SELECT current_user"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "postgres"


def test_tcp_needs_the_password(default_cluster: embedded.Cluster) -> None:
    wrong = embedded.url().replace("postgres:", "postgres:wrong", 1)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong).close()


def test_private_files_are_private(default_cluster: embedded.Cluster) -> None:
    assert default_cluster.password_file.stat().st_mode & 0o777 == 0o600
    assert default_cluster.rundir.stat().st_mode & 0o777 == 0o700


def test_cli_db_commands(default_cluster: embedded.Cluster) -> None:
    runner = CliRunner()
    group = next(c for c in cli_db.COMMANDS if c.name == "db")
    status = runner.invoke(group, ["status"])
    assert status.exit_code == 0 and "running on 127.0.0.1" in status.output
    url = runner.invoke(group, ["url", "--driver", "psycopg"])
    assert url.exit_code == 0 and url.output.strip() == embedded.url("psycopg")
    start = runner.invoke(group, ["start"])
    assert start.exit_code == 0 and "running" in start.output


def test_fresh_cluster_lifecycle(scratch_root: Path) -> None:
    cluster = embedded.Cluster(scratch_root)
    assert not cluster.status().initialized
    with pytest.raises(SetupError, match="not initialized"):
        cluster.url()
    started = cluster.start()
    assert started.running and started.port
    tree_postgres = next((cluster.tree).rglob("bin/postgres"))
    assert not tree_postgres.is_symlink()
    assert (cluster.extension_dir() / "bismarck.control").is_file()
    with psycopg.connect(cluster.url()) as conn:
        sharedir = conn.execute("SHOW data_directory").fetchone()
        assert sharedir == (str(cluster.pgdata),)
        assert conn.execute("SELECT default_version FROM pg_available_extensions "
                            "WHERE name = 'bismarck'").fetchone() is not None
    stopped = cluster.stop()
    assert stopped.initialized and not stopped.running
    assert not cluster.stop().running
    assert cluster.start().port == started.port


def test_the_server_keeps_the_memory_it_frees(scratch_cluster: embedded.Cluster) -> None:
    """The postmaster (and so every backend) starts with glibc's fixed malloc thresholds (and
    an OpenBLAS core that uses the processor's vector units when OpenBLAS falls back)."""
    status = scratch_cluster.start()
    assert status.running and status.pid
    environ = Path(f"/proc/{status.pid}/environ").read_bytes().split(b"\0")
    for key, value in embedded.server_env().items():
        if key not in os.environ:  # the caller's own value wins
            assert f"{key}={value}".encode() in environ


def test_the_server_sizes_its_buffer_pool_to_the_memory(
        scratch_cluster: embedded.Cluster) -> None:
    """shared_buffers is a quarter of the memory the server may use, within 128 MB and 2 GB
    (PostgreSQL's own 128 MB default made every epoch over a table larger than that copy its
    pages again from the operating system's cache)."""
    gib = 1 << 30
    assert embedded.shared_buffers(4 * gib) == "1024MB"
    assert embedded.shared_buffers(256 << 20) == "128MB"
    assert embedded.shared_buffers(24 * gib) == "2048MB"
    assert embedded.shared_buffers(None) == "128MB"
    memory = embedded.memory_limit()
    assert memory is not None and memory > 0
    status = scratch_cluster.start()
    assert status.running
    with psycopg.connect(scratch_cluster.url()) as conn:
        got = conn.execute("SELECT setting::int8 * 8192 FROM pg_settings "
                           "WHERE name = 'shared_buffers'").fetchone()[0]
    assert f"{got >> 20}MB" == embedded.shared_buffers(memory)


def test_port_in_use(scratch_cluster: embedded.Cluster) -> None:
    cluster = scratch_cluster
    old_port = cluster.status().port
    cluster.stop()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", old_port))
        blocker.listen()
        with pytest.raises(SetupError, match=f"Port {old_port} .* already in use") as err:
            cluster.start(port=old_port)
        assert "--port" in str(err.value)
        moved = cluster.start()
    assert moved.running and moved.port != old_port
    assert f"Port {old_port}" in moved.message and "bismarck db url" in moved.message
    assert f":{moved.port}/" in cluster.url()


def test_stale_pid_file_of_a_dead_process(scratch_cluster: embedded.Cluster) -> None:
    cluster = scratch_cluster
    cluster.stop()
    gone = subprocess.Popen(["true"])
    gone.wait()
    pid_file = cluster.pgdata / "postmaster.pid"
    pid_file.write_text(f"{gone.pid}\n{cluster.pgdata}\n")
    status = cluster.status()
    assert not status.running and "gone" in status.message
    assert cluster.start().running


def test_stale_pid_file_of_a_live_process(scratch_cluster: embedded.Cluster) -> None:
    cluster = scratch_cluster
    cluster.stop()
    pid_file = cluster.pgdata / "postmaster.pid"
    account = embedded.server_account()
    as_server: dict = {}
    if os.geteuid() == 0:
        as_server = {"user": account.uid, "group": account.gid, "extra_groups": []}
    with subprocess.Popen(["sleep", "60"], **as_server) as other:
        try:
            pid_file.write_text(f"{other.pid}\n{cluster.pgdata}\n")
            status = cluster.status()
            assert not status.running and "does not answer" in status.message
            assert not cluster.stop().running  # never signals a process that is not ours
            assert other.poll() is None
            with pytest.raises(SetupError, match="postmaster.pid names process") as err:
                cluster.start()
            assert "remove" in str(err.value) and str(pid_file) in str(err.value)
            assert cluster.pgdata.is_dir()
        finally:
            other.kill()
    pid_file.unlink()
    assert cluster.start().running


@needs_root
def test_data_root_owned_by_another_user(scratch_root: Path) -> None:
    scratch_root.mkdir()
    keep = scratch_root / "keep.txt"
    keep.write_text("user data")
    os.chown(scratch_root, 65534, 65534)
    with pytest.raises(SetupError, match="belongs to user") as err:
        embedded.Cluster(scratch_root).start()
    assert "BISMARCK_DATA" in str(err.value)
    assert keep.read_text() == "user data" and scratch_root.stat().st_uid == 65534


@needs_root
def test_data_root_the_server_cannot_reach(scratch_root: Path) -> None:
    private = scratch_root.parent / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(SetupError, match="cannot reach") as err:
        embedded.Cluster(private / "data").start()
    assert "BISMARCK_DATA" in str(err.value)


def test_missing_binaries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BISMARCK_PG_BINDIR", str(tmp_path / "nowhere"))
    with pytest.raises(SetupError, match="apt-get install postgresql-15 postgresql-plpython3-15"):
        embedded.find_installation()


def test_data_root_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BISMARCK_DATA", str(tmp_path / "x"))
    assert embedded.data_root() == tmp_path / "x"
    monkeypatch.delenv("BISMARCK_DATA")
    if os.geteuid() == 0:
        assert embedded.data_root() == Path("/var/lib/bismarck")
    else:
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
        assert embedded.data_root() == tmp_path / "bismarck"


def test_concurrent_ensure_running(scratch_root: Path) -> None:
    code = ("import sys; from bismarck_controller import embedded; "
            "s = embedded.Cluster(sys.argv[1]).ensure_running(); print(s.port, s.pid)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(scratch_root)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]


def test_superuser_is_not_named_like_the_extension_schema(scratch_root: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster made before 0.2.0 (superuser ``bismarck``) is migrated by the next start."""
    monkeypatch.setattr(embedded, "SUPERUSER", embedded.LEGACY_SUPERUSER)
    cluster = embedded.Cluster(scratch_root)
    cluster.start()
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("bismarck",)
        conn.execute("CREATE SCHEMA bismarck")  # as the extension does
        conn.execute("CREATE TABLE kept AS SELECT 1 AS one")  # "$user": lands in bismarck
    cluster.stop()
    monkeypatch.undo()

    status = cluster.start()

    assert "superuser is now 'postgres'" in status.message
    with psycopg.connect(cluster.url(), autocommit=True) as conn:  # the same password
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        assert conn.execute("SELECT count(*) FROM bismarck.kept").fetchone() == (1,)
        conn.execute("CREATE TABLE fresh (a int)")  # "$user" no longer means schema bismarck
        assert conn.execute("SELECT 'fresh'::regclass::text").fetchone() == ("fresh",)
        assert conn.execute("SELECT to_regclass('public.fresh') IS NOT NULL").fetchone() == (
            True,)
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'bismarck%'"
                            " AND rolname <> 'bismarck_user'").fetchone() == (0,)
    assert cluster.start().message == ""


def test_db_start_installs_and_updates_the_extension(scratch_root: Path, monkeypatch) -> None:
    """`bismarck db start` leaves the extension usable, also when the server already ran."""
    from bismarck_controller import extension
    from bismarck_controller.cli import main

    monkeypatch.setenv("BISMARCK_DATA", str(scratch_root))
    monkeypatch.delenv("BISMARCK_DSN", raising=False)
    runner = CliRunner()
    first = runner.invoke(main, ["db", "start"])
    assert first.exit_code == 0, first.output
    assert f"Created extension bismarck {extension.version()}" in first.output
    cluster = embedded.Cluster(scratch_root)

    def installed() -> str | None:
        with psycopg.connect(cluster.url()) as conn:
            return extension.installed_version(conn)

    assert installed() == extension.version()
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute("DROP EXTENSION bismarck")
    again = runner.invoke(main, ["db", "start"])  # running already: installs all the same
    assert again.exit_code == 0, again.output
    assert installed() == extension.version()
    third = runner.invoke(main, ["db", "start"])
    assert third.exit_code == 0 and "installed and current" in third.output, third.output
