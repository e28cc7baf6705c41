"""What the server tells a connection besides results: its NOTICEs and WARNINGs, for tests."""

from __future__ import annotations

import psycopg


def collect(conn: psycopg.Connection) -> list[str]:
    """A list that fills with ``"SEVERITY: message"`` for every notice ``conn`` receives from
    now on (progress NOTICEs, the runs' WARNINGs)."""
    out: list[str] = []
    conn.add_notice_handler(lambda d: out.append(f"{d.severity}: {d.message_primary}"))
    return out
