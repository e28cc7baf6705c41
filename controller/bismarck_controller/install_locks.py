"""What ``bismarck install`` waits for or refuses before it changes the extension.

- The extension's files are shared by every database of a cluster, while the installers'
  advisory lock (:data:`bismarck_controller.extension.INSTALL_LOCK`) is per database: two
  installs into two databases at once rewrote and removed each other's files ("no update path
  from 0.3.0.refresh"). :func:`files_lock` serialises the installs that write files with an
  exclusive ``flock`` of a file in the extension directory (only a client that can write
  there writes files at all).
- Replacing the extension's functions under a running call fails that call ("cache lookup
  failed"): :func:`refuse_while_running` takes :data:`bismarckpy.runlock.RUN_LOCK`
  exclusively for the installer's transaction, or refuses, naming the calls' processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg

from bismarck_controller.errors import SetupError
from bismarckpy.runlock import HOLDERS, TRY_EXCLUSIVE

#: The lock file in the extension directory (no extension file's name: the server ignores it).
LOCK_FILE = ".bismarck-install.lock"


@contextlib.contextmanager
def files_lock(ext_dir: Path | None) -> Iterator[None]:
    """Hold the cluster's installer lock on ``ext_dir`` (None, or a directory this client
    cannot write to: nothing to hold, as nothing is written there); waits for the holder."""
    fd = None
    if ext_dir is not None:
        with contextlib.suppress(OSError):
            fd = os.open(ext_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes
        yield
    finally:
        if fd is not None:
            os.close(fd)


def refuse_while_running(conn: psycopg.Connection) -> None:
    """Inside the transaction that replaces the extension's functions: hold RUN_LOCK to its
    end, or raise :class:`SetupError` naming the backends whose calls hold it."""
    row = conn.execute(TRY_EXCLUSIVE).fetchone()
    if row and row[0]:
        return
    pids = (conn.execute(HOLDERS).fetchone() or [[]])[0] or []
    database = conn.info.dbname
    listed = ", ".join(str(p) for p in pids) or "unknown"
    raise SetupError(
        f"bismarck calls are running in database {database} (backend process ids: {listed}); "
        "installing now would replace the extension's functions under them.",
        "Wait for them to finish (SELECT pid, query FROM pg_stat_activity shows them), or "
        "stop them with SELECT pg_cancel_backend(pid); then run `bismarck install` again.")
