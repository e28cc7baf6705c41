"""The embedded PostgreSQL cluster that bismarck owns: created on first use, one per data root.

The data root is ``$BISMARCK_DATA`` if set; else ``/var/lib/bismarck`` when running as root
(root's home is 0700, so the ``postgres`` user that runs the server could not reach a cluster
inside it); else ``$XDG_DATA_HOME/bismarck`` or ``~/.local/share/bismarck``. It holds:

    pg/          a private PostgreSQL installation tree: copies of postgres, initdb, pg_ctl and
                 pg_config, symlinks to the system's lib and share directories, and a real
                 ``extension/`` directory that also holds the bismarck extension files.
                 PostgreSQL finds its share directory relative to its own binary, so
                 ``CREATE EXTENSION bismarck`` works without writing to /usr/share.
    pgdata/      the cluster (superuser ``postgres``, database ``bismarck``; clusters made by
                 earlier versions called their superuser ``bismarck``, like the extension's
                 schema, and are migrated at the next start, see ``_migrate_superuser``)
    run/         the Unix socket directory (0700; trust authentication on the socket)
    password     the superuser's password for TCP connections on 127.0.0.1 (0600)
    state.json   the TCP port, chosen free at initialization
    server.log   the server log

initdb refuses to run as root, so as root the server runs as the ``postgres`` system user and
the data root belongs to it. Nothing here ever deletes a data directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg

from bismarck_controller import build
from bismarck_controller.errors import SetupError

SUPERUSER = "postgres"
LEGACY_SUPERUSER = "bismarck"  # before 0.2.0: "$user" put the extension's schema first
DATABASE = "bismarck"
HOST = "127.0.0.1"
MIN_MAJOR = 15
BINARIES = ("postgres", "initdb", "pg_ctl", "pg_config")
#: glibc malloc settings of the embedded server (a caller's own values win). An epoch over page
#: groups allocates a few MB per buffer (``array_agg`` of its rows and their bytes); glibc maps
#: such blocks afresh and hands them back on every call, so every page faults again, buffer
#: after buffer (17,000 minor faults per training pass at 200k x 100). With a fixed mmap
#: threshold of 32 MB and a trim threshold of 128 MB a backend keeps that memory instead: the
#: first epoch and the training pass ran 14-17% faster side by side (benchmarks/malloc_ab.py,
#: 2026-12-01). The price: a backend may hold up to 128 MB it freed until it exits.
SERVER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
                 "MALLOC_TRIM_THRESHOLD_": str(128 * 2**20)}
#: OpenBLAS cores without AVX2: the ones a build of OpenBLAS falls back to when it does not know
#: the processor model (0.3.21, Debian 12's, calls a recent Xeon "Prescott"). Its float32
#: matrix-vector products, two per SGD step, then run 3-4x slower than with the cores the
#: processor's flags allow (512 x 100: 16-22 us against 4.5-5 us, 2026-12-01).
GENERIC_BLAS_CORES = frozenset({"prescott", "core2", "penryn", "dunnington", "nehalem", "atom",
                                "katmai", "coppermine", "northwood", "banias", "sandybridge",
                                "unknown"})
_AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


def blas_core(flags: set[str] | frozenset[str], detected: str | None) -> str | None:
    """The ``OPENBLAS_CORETYPE`` to give the server, or None to leave OpenBLAS's own choice.

    ``flags`` are the processor's (``/proc/cpuinfo``), ``detected`` the core OpenBLAS picked
    by itself (None: not OpenBLAS, or unknown). Only a generic fallback core
    (:data:`GENERIC_BLAS_CORES`) is overridden: by ``SkylakeX`` when the processor has
    AVX-512 (F, CD, BW, DQ, VL), by ``Haswell`` when it has AVX2 and FMA."""
    if detected is None or detected.strip().lower() not in GENERIC_BLAS_CORES:
        return None
    if flags >= _AVX512:
        return "SkylakeX"
    if flags >= {"avx2", "fma"}:
        return "Haswell"
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's flags (empty when ``cpuinfo`` cannot be read)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def openblas_core() -> str | None:
    """The core the system BLAS (``libblas.so.3``, what the server's numpy loads) picks when it
    is OpenBLAS, else None. Loading it into this process costs nothing the server does not."""
    import ctypes

    try:
        lib = ctypes.CDLL("libblas.so.3")
        name = lib.openblas_get_corename
    except (OSError, AttributeError):
        return None
    name.restype = ctypes.c_char_p
    got = name()
    return got.decode(errors="replace") if got else None


def server_env() -> dict[str, str]:
    """The environment the embedded server starts with, besides the caller's own (which wins):
    :data:`SERVER_MALLOC`, and ``OPENBLAS_CORETYPE`` when OpenBLAS would fall back to a generic
    core on a processor with AVX2 or AVX-512 (:func:`blas_core`)."""
    env = dict(SERVER_MALLOC)
    core = blas_core(cpu_flags(), openblas_core()) if "OPENBLAS_CORETYPE" not in os.environ \
        else None
    if core is not None:
        env["OPENBLAS_CORETYPE"] = core
    return env


SETTINGS = {
    "jit": "off",
    "synchronize_seqscans": "off",
    "max_parallel_workers_per_gather": "2",
}
#: ``shared_buffers`` of the embedded cluster: this share of the memory the server may use
#: (PostgreSQL's documented starting point for a database server, "Resource Consumption"),
#: between these bounds in MB. The pool stays resident once used, and the embedded cluster
#: shares its machine with the user's own work (a 6 GB pool left a 10M-row benchmark too
#: little memory for its in-memory peers): 2 GB holds a table of a few million rows.
SHARED_BUFFERS_SHARE = 0.25
SHARED_BUFFERS_MB = (128, 2048)


def memory_limit() -> int | None:
    """Bytes of memory the server may use: the machine's physical memory, or the control
    group's limit when it is lower (a container; cgroup v2 ``memory.max`` or v1
    ``memory.limit_in_bytes``). None when neither can be read."""
    try:
        found = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    except (ValueError, OSError):
        found = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            found.append(int(Path(path).read_text().strip()))  # "max": no limit (ValueError)
    found = [v for v in found if v > 0]
    return min(found) if found else None


def shared_buffers(memory: int | None) -> str:
    """The embedded cluster's ``shared_buffers`` for ``memory`` bytes (:func:`memory_limit`):
    :data:`SHARED_BUFFERS_SHARE` of it within :data:`SHARED_BUFFERS_MB`, PostgreSQL's default
    of 128MB when unknown.

    An epoch reads the table through these buffers: PostgreSQL's own default holds 128 MB, so
    at 1M rows x 100 features (868 MB) every page of every epoch was copied again from the
    operating system's cache, and page groups read by TID ranges (``shuffle => 'blocks'``)
    and a packed copy's TOAST chunks get no ring buffer either. By the backend's CPU seconds,
    interleaved (``benchmarks/buffers_ab.py``, load 4): a block epoch's training pass 1.49 ->
    1.32 s and a packed epoch 0.41 -> 0.31 s with a 2 GB pool
    (benchmarks/results/2026-12-02-shared-buffers-128MB-2GB-1000000x100.md)."""
    low, high = SHARED_BUFFERS_MB
    mb = low if memory is None else int(memory * SHARED_BUFFERS_SHARE) >> 20
    return f"{max(low, min(high, mb))}MB"


def settings() -> dict[str, str]:
    """The settings :meth:`EmbeddedCluster.start` writes to ``bismarck.conf`` (which
    ``postgresql.conf`` includes last; ``ALTER SYSTEM`` still overrides them)."""
    return {**SETTINGS, "shared_buffers": shared_buffers(memory_limit())}
APT_HINT = (
    "Install PostgreSQL with `apt-get install postgresql-15 postgresql-plpython3-15 python3-numpy` "
    "(or run `make deps`), or set BISMARCK_PG_BINDIR to the directory that holds postgres and "
    "initdb."
)


def data_root() -> Path:
    """The default data root: $BISMARCK_DATA, /var/lib/bismarck for root, else the user data dir."""
    env = os.environ.get("BISMARCK_DATA")
    if env:
        return Path(env).expanduser().absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/bismarck")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base.absolute() / "bismarck"


@dataclass(frozen=True)
class Installation:
    """A system PostgreSQL installation: its directories and version."""

    bindir: Path
    sharedir: Path
    pkglibdir: Path
    version: str

    @property
    def major(self) -> int:
        """The major version, e.g. 15."""
        match = re.search(r"(\d+)", self.version)
        return int(match.group(1)) if match else 0

    def has_plpython(self) -> bool:
        """Whether PL/Python 3 (postgresql-plpython3-<major>) is installed."""
        return (self.sharedir / "extension" / "plpython3u.control").exists()


def _candidate_bindirs() -> list[Path]:
    """Where to look for server binaries: BISMARCK_PG_BINDIR, /usr/lib/postgresql/*, pg_config."""
    env = os.environ.get("BISMARCK_PG_BINDIR")
    if env:
        return [Path(env)]
    found = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        if path.parent.name.isdigit():
            found.append((int(path.parent.name), path))
    dirs = [p for _, p in sorted(found, reverse=True)]
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.strip()
            if out:
                dirs.append(Path(out))
    return dirs


def find_installation(prefer_major: int | None = None) -> Installation:
    """Find the server binaries, preferring ``prefer_major``; SetupError when there are none."""
    found: list[Installation] = []
    for bindir in _candidate_bindirs():
        if not all((bindir / name).is_file() for name in BINARIES):
            continue
        try:
            out = subprocess.run(
                [str(bindir / "pg_config"), "--bindir", "--sharedir", "--pkglibdir", "--version"],
                capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
        except (OSError, subprocess.SubprocessError):
            continue
        if len(out) >= 4:
            found.append(Installation(Path(bindir), Path(out[1]), Path(out[2]), out[3].strip()))
    if not found:
        where = os.environ.get("BISMARCK_PG_BINDIR") or "/usr/lib/postgresql/*/bin and PATH"
        raise SetupError(
            f"The PostgreSQL server programs (postgres, initdb, pg_ctl, pg_config) were not "
            f"found in {where}.", APT_HINT)
    if prefer_major is not None:
        for inst in found:
            if inst.major == prefer_major:
                return inst
        raise SetupError(
            f"The embedded cluster was created by PostgreSQL {prefer_major}, but only "
            f"PostgreSQL {found[0].major} is installed.",
            f"Install postgresql-{prefer_major} again (`apt-get install postgresql-{prefer_major} "
            f"postgresql-plpython3-{prefer_major}`), or point BISMARCK_DATA at a new directory "
            f"to start a fresh cluster.")
    best = found[0]
    if best.major < MIN_MAJOR:
        raise SetupError(
            f"bismarck needs PostgreSQL {MIN_MAJOR} or newer, but found {best.version} in "
            f"{best.bindir}.", APT_HINT)
    return best


@dataclass(frozen=True)
class Account:
    """The system account that runs the server."""

    name: str
    uid: int
    gid: int


def server_account() -> Account:
    """The current user; ``postgres`` when running as root (initdb refuses root)."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise SetupError(
            "Running as root, the embedded server must run as the unprivileged system user "
            "`postgres`, which does not exist.",
            "Install postgresql-15 (it creates that user), or run bismarck as a normal user.",
        ) from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:port can be bound (with SO_REUSEADDR, as the server does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("'", "''") + "'"


@dataclass
class Status:
    """What ``bismarck db status`` reports about the embedded cluster."""

    root: Path
    initialized: bool
    running: bool
    port: int | None = None
    pid: int | None = None
    message: str = ""

    def __str__(self) -> str:
        if not self.initialized:
            text = f"not initialized (data root {self.root}); `bismarck db start` creates it"
        elif self.running:
            text = f"running on {HOST}:{self.port} (pid {self.pid}), data root {self.root}"
        else:
            text = f"stopped (port {self.port}), data root {self.root}"
        return text + (f"\n{self.message}" if self.message else "")


class Cluster:
    """The embedded cluster under one data root (default: ``data_root()``)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser().absolute() if root is not None else data_root()
        self.pgdata = self.root / "pgdata"
        self.rundir = self.root / "run"
        self.tree = self.root / "pg"
        self.password_file = self.root / "password"
        self.state_file = self.root / "state.json"
        self.log_file = self.root / "server.log"
        self.lock_file = self.root / ".lock"

    # --- public API ---------------------------------------------------------------------------

    def status(self) -> Status:
        """Initialized? running (the pid file's process answers on the socket)? which port?"""
        initialized = (self.pgdata / "PG_VERSION").is_file()
        port = self._port()
        if not initialized:
            return Status(self.root, False, False, port)
        pid = self._pid_from_file()
        if pid is None:
            return Status(self.root, True, False, port)
        if not _alive(pid):
            return Status(self.root, True, False, port, pid,
                          f"postmaster.pid names process {pid}, which is gone (a crash or "
                          f"reboot); `bismarck db start` starts the server normally.")
        if self._answers(port):
            return Status(self.root, True, True, port, pid)
        return Status(self.root, True, False, port, pid,
                      f"postmaster.pid names process {pid}, which is alive but does not answer "
                      f"as this cluster's server.")

    def start(self, port: int | None = None) -> Status:
        """Initialize the cluster if needed and start it; ``port`` asks for a specific port."""
        with self._locked():
            inst = self._installation()
            bindir = self._prepare_tree(inst)
            if not (self.pgdata / "PG_VERSION").is_file():
                self._initdb(bindir, port)
            current = self.status()
            if current.running:
                if port is not None and port != current.port:
                    raise SetupError(
                        f"The embedded server is already running on port {current.port}.",
                        f"Run `bismarck db stop` first to move it to port {port}.")
                current.message = self._migrate_superuser()
                return current
            message = self._choose_port(port)
            self._write_conf(self._port())
            self._make_rundir()
            self._pg_ctl_start(bindir)
            renamed = self._migrate_superuser()
            self._ensure_database()
            status = self.status()
            status.message = "\n".join(filter(None, [message, renamed]))
            return status

    def stop(self) -> Status:
        """Stop the server (fast shutdown) if it is running."""
        with self._locked():
            current = self.status()
            if not current.running:
                return current
            bindir = self._private_bindir(self._installation())
            result = self._run([str(bindir / "pg_ctl"), "stop", "-D", str(self.pgdata),
                                "-m", "fast", "-w", "-t", "60", "-s"])
            if result.returncode != 0:
                raise SetupError(
                    f"The embedded server did not stop: {_last_line(result.stderr)}",
                    f"See {self.log_file}; `bismarck db status` shows whether it is still up.")
            return self.status()

    def ensure_running(self) -> Status:
        """Initialize and start the cluster unless it already runs; safe to call concurrently."""
        current = self.status()
        if current.running:
            return current
        return self.start()

    def url(self, driver: str | None = None) -> str:
        """The TCP URL with password; ``driver="psycopg"`` gives ``postgresql+psycopg://``."""
        port = self._port()
        if port is None or not self.password_file.is_file():
            raise SetupError(f"The embedded cluster in {self.root} is not initialized.",
                             "Run `bismarck db start` first.")
        password = self.password_file.read_text().strip()
        scheme = "postgresql" if not driver else f"postgresql+{driver}"
        return (f"{scheme}://{SUPERUSER}:{quote(password, safe='')}@{HOST}:{port}/{DATABASE}")

    def socket_conninfo(self, dbname: str = DATABASE, user: str | None = None) -> str:
        """A libpq conninfo over the private Unix socket (trust authentication)."""
        return psycopg.conninfo.make_conninfo(host=str(self.rundir), port=self._port() or 5432,
                                              user=user or SUPERUSER, dbname=dbname)

    def extension_dir(self) -> Path:
        """The private tree's extension directory, where the bismarck files go."""
        return self._private_sharedir(self._installation()) / "extension"

    def installation(self) -> Installation:
        """The system installation this cluster runs on."""
        return self._installation()

    # --- installation tree --------------------------------------------------------------------

    def _installation(self) -> Installation:
        major = None
        version_file = self.pgdata / "PG_VERSION"
        with contextlib.suppress(OSError, ValueError):
            major = int(version_file.read_text().strip())
        return find_installation(prefer_major=major)

    def _layout(self, inst: Installation) -> tuple[Path, Path, Path]:
        """Relative bin, share and pkglib paths below the installation's common prefix."""
        prefix = Path(os.path.commonpath([inst.bindir, inst.sharedir]))
        try:
            return (inst.bindir.relative_to(prefix), inst.sharedir.relative_to(prefix),
                    inst.pkglibdir.relative_to(prefix))
        except ValueError:
            raise SetupError(
                f"The PostgreSQL installation in {inst.bindir} keeps its libraries in "
                f"{inst.pkglibdir}, outside {prefix}, so bismarck cannot mirror it.",
                "Set BISMARCK_PG_BINDIR to a standard Debian installation such as "
                "/usr/lib/postgresql/15/bin.") from None

    def _private_bindir(self, inst: Installation) -> Path:
        return self.tree / self._layout(inst)[0]

    def _private_sharedir(self, inst: Installation) -> Path:
        return self.tree / self._layout(inst)[1]

    def _prepare_tree(self, inst: Installation) -> Path:
        """Build or refresh the private installation tree; return its bin directory."""
        rel_bin, rel_share, rel_lib = self._layout(inst)
        bindir, sharedir, libdir = self.tree / rel_bin, self.tree / rel_share, self.tree / rel_lib
        bindir.mkdir(parents=True, exist_ok=True)
        stamp = self.tree / "installation.json"
        wanted = {"bindir": str(inst.bindir), "version": inst.version, "binaries": {
            name: [(inst.bindir / name).stat().st_size, (inst.bindir / name).stat().st_mtime_ns]
            for name in BINARIES}}
        current = None
        with contextlib.suppress(OSError, ValueError):
            current = json.loads(stamp.read_text())
        if current != wanted or not all((bindir / n).is_file() for n in BINARIES):
            for name in BINARIES:
                # Copies, not symlinks: PostgreSQL resolves symlinks to find its share directory.
                tmp = bindir / (name + ".new")
                shutil.copy2(inst.bindir / name, tmp)
                os.replace(tmp, bindir / name)
            stamp.write_text(json.dumps(wanted, indent=1))
        _symlink(libdir, inst.pkglibdir)
        sharedir.mkdir(parents=True, exist_ok=True)
        _mirror(inst.sharedir, sharedir, skip={"extension"})
        extdir = sharedir / "extension"
        extdir.mkdir(exist_ok=True)
        _mirror(inst.sharedir / "extension", extdir, skip=set(), keep_prefix="bismarck")
        build.install_files(extdir)
        return bindir

    # --- cluster ------------------------------------------------------------------------------

    def _initdb(self, bindir: Path, port: int | None) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise SetupError(
                f"{self.pgdata} exists but holds no complete cluster (an earlier initialization "
                f"may have been interrupted).",
                f"Move {self.pgdata} aside (bismarck never deletes it), then run "
                f"`bismarck db start` again.")
        if port is not None and not port_is_free(port):
            raise _port_in_use(port)
        password = secrets.token_urlsafe(24)
        self._write_private(self.password_file, password + "\n")
        result = self._run([
            str(bindir / "initdb"), "-D", str(self.pgdata), "-U", SUPERUSER,
            "--auth-local=trust", "--auth-host=scram-sha-256",
            f"--pwfile={self.password_file}", "--no-locale", "--encoding=UTF8"])
        if result.returncode != 0:
            raise SetupError(
                f"initdb failed to create the embedded cluster in {self.pgdata}: "
                f"{_last_line(result.stderr)}",
                "Fix the cause named there (disk space, permissions) and run "
                "`bismarck db start` again.")
        hba = ("# bismarck embedded cluster: trust on the private Unix socket (its directory is "
               "0700),\n# scram-sha-256 with the password in ../password on 127.0.0.1.\n"
               "local  all  all                 trust\n"
               "host   all  all  127.0.0.1/32   scram-sha-256\n")
        self._write_owned(self.pgdata / "pg_hba.conf", hba)
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write("\n# Settings of the bismarck embedded cluster (rewritten at each start).\n"
                       "include_if_exists = 'bismarck.conf'\n")
        self._save_state(port if port is not None else free_port())

    def _choose_port(self, requested: int | None) -> str:
        """Keep the stored port if free, else pick a new one; explain any change."""
        current = self._port()
        if requested is not None:
            if requested != current and not port_is_free(requested):
                raise _port_in_use(requested)
            self._save_state(requested)
            return ""
        if current is not None and port_is_free(current):
            return ""
        new = free_port()
        self._save_state(new)
        if current is None:
            return ""
        return (f"Port {current} on {HOST} is in use by another program, so the embedded server "
                f"now listens on port {new}; `bismarck db url` prints the new URL.")

    def _write_conf(self, port: int | None) -> None:
        lines = ["# Written by bismarck at each `bismarck db start`; put your own settings in "
                 "postgresql.conf.",
                 f"listen_addresses = {_conf_quote(HOST)}",
                 f"port = {port}",
                 f"unix_socket_directories = {_conf_quote(str(self.rundir))}"]
        lines += [f"{name} = {_conf_quote(value)}" for name, value in settings().items()]
        self._write_owned(self.pgdata / "bismarck.conf", "\n".join(lines) + "\n")

    def _make_rundir(self) -> None:
        self.rundir.mkdir(mode=0o700, exist_ok=True)
        self.rundir.chmod(0o700)
        self._own(self.rundir)

    def _pg_ctl_start(self, bindir: Path) -> None:
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        result = self._run([str(bindir / "pg_ctl"), "start", "-D", str(self.pgdata),
                            "-l", str(self.log_file), "-w", "-t", "60", "-s"], server_env())
        if result.returncode == 0:
            return
        log = ""
        with contextlib.suppress(OSError), open(self.log_file, errors="replace") as fh:
            fh.seek(offset)
            log = fh.read()
        raise self._diagnose(log, result.stderr)

    def _diagnose(self, log: str, stderr: str) -> SetupError:
        """Turn a failed start into a clear error using the new part of the server log."""
        text = log + "\n" + stderr
        if "lock file \"postmaster.pid\" already exists" in text:
            match = re.search(r"PID (\d+)", text)
            pid = match.group(1) if match else "?"
            return SetupError(
                f"{self.pgdata}/postmaster.pid names process {pid}, which is alive but is not "
                f"this cluster's server (its PID was probably reused after a crash or reboot), "
                f"so PostgreSQL refuses to start.",
                f"If no PostgreSQL server is using {self.pgdata}, remove "
                f"{self.pgdata}/postmaster.pid and run `bismarck db start` again.")
        if "could not bind" in text or "Address already in use" in text:
            return _port_in_use(self._port() or 0)
        if "database files are incompatible with server" in text:
            return SetupError(
                f"The cluster in {self.pgdata} was created by another PostgreSQL major version.",
                "Install that version again, or point BISMARCK_DATA at a new directory.")
        tail = " ".join(line.strip() for line in text.strip().splitlines()[-3:])
        return SetupError(
            f"The embedded PostgreSQL server did not start: {tail or 'no message'}.",
            f"Fix the cause named there (the full log is {self.log_file}) and run "
            f"`bismarck db start` again.")

    def _ensure_database(self) -> None:
        with psycopg.connect(self.socket_conninfo("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (DATABASE,)).fetchone()
            if not exists:
                conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(
                    psycopg.sql.Identifier(DATABASE)))

    def _answers(self, port: int | None) -> bool:
        if port is None:
            return False
        for user in dict.fromkeys((SUPERUSER, LEGACY_SUPERUSER)):
            try:
                with psycopg.connect(self.socket_conninfo("postgres", user), connect_timeout=5):
                    return True
            except psycopg.Error:
                continue
        return False

    def _migrate_superuser(self) -> str:
        """Rename the superuser of a cluster made before 0.2.0 (``bismarck``) to ``postgres``.

        A superuser named like the extension's schema put that schema first on its search path
        ("$user"), so its tables landed next to the registry. The bootstrap superuser cannot
        rename itself: a temporary superuser does it; the password stays the one in
        ``password``. Returns a message when something changed.
        """
        if SUPERUSER == LEGACY_SUPERUSER:
            return ""
        try:
            with psycopg.connect(self.socket_conninfo("postgres"), connect_timeout=10):
                return ""
        except psycopg.Error:
            pass
        helper = "bismarck_rename_superuser"
        sql = psycopg.sql
        try:
            with psycopg.connect(self.socket_conninfo("postgres", LEGACY_SUPERUSER),
                                 autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(
                    sql.Identifier(helper)))
            with psycopg.connect(self.socket_conninfo("postgres", helper),
                                 autocommit=True) as conn:
                conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(
                    sql.Identifier(LEGACY_SUPERUSER), sql.Identifier(SUPERUSER)))
            with psycopg.connect(self.socket_conninfo("postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(helper)))
                if self.password_file.is_file():
                    # ALTER ROLE takes no parameter: send the SCRAM verifier computed here (as
                    # psql's \password does), so no statement text holds the password.
                    verifier = conn.pgconn.encrypt_password(
                        self.password_file.read_text().strip().encode(), SUPERUSER.encode(),
                        b"scram-sha-256").decode()
                    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(SUPERUSER), sql.Literal(verifier)))
        except psycopg.Error as exc:
            raise SetupError(
                f"The embedded cluster's superuser is still called {LEGACY_SUPERUSER!r} and "
                f"could not be renamed to {SUPERUSER!r}: {exc.diag.message_primary or exc}",
                f"Rename it yourself (connect as another superuser: ALTER ROLE "
                f"{LEGACY_SUPERUSER} RENAME TO {SUPERUSER}), then run `bismarck db start`.") \
                from None
        return (f"The embedded cluster's superuser is now {SUPERUSER!r} (it was "
                f"{LEGACY_SUPERUSER!r}, which put the extension's schema first on its search "
                f"path); `bismarck db url` prints the new URL, the password is unchanged.")

    # --- files, ownership, processes ----------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Create and check the data root, then hold an exclusive lock on it."""
        account = server_account()
        if not self.root.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            self.root.chmod(0o700)  # holds the password file and the cluster
        self._check_owner(account)
        with open(self.lock_file, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _check_owner(self, account: Account) -> None:
        info = self.root.stat()
        if info.st_uid != account.uid:
            if os.geteuid() == 0 and info.st_uid == 0 and not any(self.root.iterdir()):
                os.chown(self.root, account.uid, account.gid)
                self.root.chmod(0o700)
            else:
                owner = _user_name(info.st_uid)
                if owner == "postgres":
                    run_as = "Run bismarck as root (the server then runs as postgres), or set "
                elif info.st_uid == 0:
                    run_as = "Set "
                else:
                    run_as = f"Run bismarck as {owner}, or set "
                raise SetupError(
                    f"The bismarck data directory {self.root} belongs to user {owner}, but the "
                    f"embedded server runs as {account.name}.",
                    f"{run_as}BISMARCK_DATA to a directory that user {account.name} owns (or "
                    f"that does not exist yet). Nothing was changed.")
        if os.geteuid() == 0 and account.uid != 0:
            probe = self._run(["/bin/sh", "-c", 'test -w "$1" && test -x "$1"', "sh",
                               str(self.root)])
            if probe.returncode != 0:
                raise SetupError(
                    f"The server runs as user {account.name}, which cannot reach {self.root} "
                    f"(a parent directory is private; root's home, for example, is 0700).",
                    "Set BISMARCK_DATA to a directory outside private homes, such as the default "
                    "/var/lib/bismarck.")

    def _run(self, args: list[str], extra_env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as the server account, without the caller's PG* settings
        (``extra_env``: variables to add, unless the caller's environment sets them)."""
        account = server_account()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        for key, value in (extra_env or {}).items():
            env.setdefault(key, value)
        kwargs: dict[str, object] = {}
        if os.geteuid() == 0 and account.uid != 0:
            kwargs = {"user": account.uid, "group": account.gid, "extra_groups": []}
        return subprocess.run(args, capture_output=True, text=True, env=env, cwd=self.root,
                              start_new_session=True, timeout=300, check=False,
                              **kwargs)  # type: ignore[call-overload]

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            account = server_account()
            os.chown(path, account.uid, account.gid, follow_symlinks=False)

    def _write_owned(self, path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".new")
        tmp.write_text(text)
        self._own(tmp)
        os.replace(tmp, path)

    def _write_private(self, path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        path.chmod(0o600)
        self._own(path)

    def _port(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return int(json.loads(self.state_file.read_text())["port"])
        return None

    def _save_state(self, port: int) -> None:
        self._write_owned(self.state_file, json.dumps({"port": port}) + "\n")

    def _pid_from_file(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        return None


def _port_in_use(port: int) -> SetupError:
    return SetupError(
        f"Port {port} on {HOST} is already in use by another program, so the embedded server "
        f"cannot listen on it.",
        "Stop that program, choose another port with `bismarck db start --port N`, or run "
        "`bismarck db start` without --port to let bismarck pick a free one.")


def _alive(pid: int) -> bool:
    """Whether ``pid`` could be our server: it exists and we may signal it (as PostgreSQL does)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _symlink(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target``, replacing an outdated symlink."""
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def _mirror(source: Path, dest: Path, skip: set[str], keep_prefix: str | None = None) -> None:
    """Symlink every entry of ``source`` into ``dest``; drop symlinks whose target vanished."""
    names = set()
    for entry in source.iterdir():
        if entry.name in skip or (keep_prefix and entry.name.startswith(keep_prefix)):
            continue
        names.add(entry.name)
        _symlink(dest / entry.name, entry)
    for entry in dest.iterdir():
        if entry.is_symlink() and entry.name not in names and entry.name not in skip:
            entry.unlink()


def default() -> Cluster:
    """The cluster under the default data root."""
    return Cluster()


def start(port: int | None = None) -> Status:
    """Start the default cluster (initializing it on first use)."""
    return default().start(port)


def stop() -> Status:
    """Stop the default cluster."""
    return default().stop()


def status() -> Status:
    """The default cluster's status."""
    return default().status()


def url(driver: str | None = None) -> str:
    """The default cluster's URL, e.g. ``postgresql://bismarck:PW@127.0.0.1:PORT/bismarck``."""
    return default().url(driver)


def ensure_running() -> Status:
    """Initialize and start the default cluster unless it runs already."""
    return default().ensure_running()
