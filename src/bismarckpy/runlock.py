"""The lock between the extension's long calls and ``bismarck install``'s code changes.

Training, packing and evaluating hold a shared advisory lock of this key (per database) while
they run; an install that would replace the extension's functions (an upgrade, or new code
of the same version) takes it exclusively first, or refuses with the running calls' process
ids: a function replaced under a running call fails it with "cache lookup failed".
"""

from __future__ import annotations

#: The advisory lock key ("bismrun" in ASCII), apart from the installers' own key.
RUN_LOCK = 0x6269736D72756E

#: A call in the server holds it to the end of its transaction.
HOLD_IN_TRANSACTION = f"SELECT pg_catalog.pg_advisory_xact_lock_shared({RUN_LOCK}::int8)"
#: A run driven by a client holds it across its commits, released by :data:`RELEASE`.
HOLD_IN_SESSION = f"SELECT pg_catalog.pg_advisory_lock_shared({RUN_LOCK}::int8)"
RELEASE = f"SELECT pg_catalog.pg_advisory_unlock_shared({RUN_LOCK}::int8)"
#: An installer's try (true: no call is running; held to the end of its transaction).
TRY_EXCLUSIVE = f"SELECT pg_catalog.pg_try_advisory_xact_lock({RUN_LOCK}::int8)"
#: The other backends holding the lock in this database, as an ``int4[]`` of process ids.
HOLDERS = (
    "SELECT coalesce(array_agg(DISTINCT l.pid ORDER BY l.pid), '{}') FROM pg_catalog.pg_locks "
    "AS l JOIN pg_catalog.pg_database AS d ON d.oid = l.database "
    "WHERE d.datname = pg_catalog.current_database() AND l.locktype = 'advisory' "
    f"AND l.classid = {RUN_LOCK >> 32} AND l.objid = {RUN_LOCK & 0xFFFFFFFF} "
    "AND l.objsubid = 1 AND l.granted AND l.pid <> pg_catalog.pg_backend_pid()")
