"""When a connection may skip re-applying the extension's privileges.

Every connection to the embedded cluster runs ``extension.install``; on a current version that
re-ran the privilege block of sql/bismarck.sql (hundreds of REVOKE/GRANT statements, 0.1-0.3 s
per connection). The block's result depends only on the owners and access lists of schema
bismarck and of the extension's relations, columns and functions, and on the block itself
(the build). So after it runs, the fingerprint of those access lists and the build is kept in
the cluster's data root; a later connection that finds the same fingerprint knows the block
would change nothing and skips it. Any grant or revoke since (a leftover ``GRANT ... TO carol``)
changes the fingerprint, and the block runs again. ``bismarck install`` always runs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import psycopg

from bismarck_controller import embedded
from bismarck_controller.build import NAME, build_digest

#: The stamp file in the embedded cluster's data root: one fingerprint per line, newest last.
STAMP_NAME = "privileges-applied"
#: How many fingerprints the stamp keeps (one per database of the cluster, roughly).
STAMP_KEEP = 64

# Owner and access list of schema bismarck and of every relation, column (with an access list)
# and function of the extension, with the extension's owner: everything the privilege block
# reads. An access list is spelled out by aclexplode (role oids, not names; NULL, the
# default, apart from an empty list).
_FINGERPRINT = """
WITH ext AS (SELECT e.oid, e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = %(name)s),
members AS (
    SELECT d.classid, d.objid
      FROM pg_catalog.pg_depend d, ext
     WHERE d.deptype = 'e' AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
       AND d.refobjid = ext.oid),
acl(kind, obj, owner, acl) AS (
    SELECT 'n', n.oid, n.nspowner, n.nspacl FROM pg_catalog.pg_namespace n
     WHERE n.nspname = 'bismarck'
    UNION ALL
    SELECT 'r', c.oid, c.relowner, c.relacl
      FROM members m JOIN pg_catalog.pg_class c ON c.oid = m.objid
     WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
    UNION ALL
    SELECT 'a' || t.attnum, t.attrelid, 0, t.attacl
      FROM members m JOIN pg_catalog.pg_attribute t ON t.attrelid = m.objid
     WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND t.attacl IS NOT NULL
    UNION ALL
    SELECT 'p', p.oid, p.proowner, p.proacl
      FROM members m JOIN pg_catalog.pg_proc p ON p.oid = m.objid
     WHERE m.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass)
SELECT (SELECT ext.extowner::text FROM ext) || ';' || pg_catalog.string_agg(
           pg_catalog.format('%%s %%s %%s %%s', a.kind, a.obj, a.owner,
               CASE WHEN a.acl IS NULL THEN 'default' ELSE
                 (SELECT pg_catalog.string_agg(pg_catalog.format('%%s/%%s/%%s/%%s', x.grantor,
                         x.grantee, x.privilege_type, x.is_grantable), ','
                         ORDER BY x.grantor, x.grantee, x.privilege_type, x.is_grantable)
                    FROM pg_catalog.aclexplode(a.acl) AS x) END),
           ';' ORDER BY a.kind, a.obj)
  FROM acl a
"""


def fingerprint(conn: psycopg.Connection, digest: str | None = None) -> str | None:
    """A digest of the build (``digest``, default ``build_digest()``) and of every owner and
    access list the privilege block reads (None when the extension is not installed)."""
    with conn.transaction():
        # look-alike functions or operators of other roles (in public, say) must not run
        conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        row = conn.execute(_FINGERPRINT, {"name": NAME}).fetchone()
    if not row or row[0] is None:
        return None
    text = f"{digest or build_digest()}\n{conn.info.dbname}\n{row[0]}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _stamp_file(cluster: embedded.Cluster) -> Path:
    return cluster.root / STAMP_NAME


def _read(cluster: embedded.Cluster) -> list[str]:
    try:
        return _stamp_file(cluster).read_text(encoding="utf-8").split()
    except OSError:
        return []


def unchanged(conn: psycopg.Connection, cluster: embedded.Cluster | None,
              digest: str | None = None) -> bool:
    """Whether the privileges are as the privilege block of this build last left them, so
    running it again would change nothing (False when unknown: not embedded, no stamp)."""
    if cluster is None:
        return False
    current = fingerprint(conn, digest)
    return current is not None and current in _read(cluster)


def remember(conn: psycopg.Connection, cluster: embedded.Cluster | None,
             digest: str | None = None) -> None:
    """Record the privileges just left by the privilege block (best effort: an unwritable
    data root only means the next connection runs the block again)."""
    if cluster is None:
        return
    current = fingerprint(conn, digest)
    if current is None:
        return
    kept = [line for line in _read(cluster) if line != current][-(STAMP_KEEP - 1):] + [current]
    target = _stamp_file(cluster)
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(prefix=f".{STAMP_NAME}.", dir=cluster.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write("\n".join(kept) + "\n")
            os.replace(tmp, target)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise
