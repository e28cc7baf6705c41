"""PostgreSQL binary COPY of fixed-length ``float8[]`` rows, encoded and decoded with numpy.

A table whose rows all hold a 1-D, NULL-free ``float8[]`` of the same length has fixed-size
records in the binary COPY format, so a whole chunk of rows is one numpy structured array:
no per-value Python objects in either direction. Decoding checks every record's fixed fields
(field count, lengths, array header, element lengths) and refuses anything else.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import psycopg
from psycopg import sql

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # flags 0, no extension area
TRAILER = b"\xff\xff"
FLOAT8OID = 701


def _array_fields(d: int) -> list[tuple[str, object]]:
    """The binary send form of a 1-D ``float8[]`` of length ``d`` (header, then len/value)."""
    elem = np.dtype([("len", ">i4"), ("v", ">f8")])
    return [("alen", ">i4"), ("ndim", ">i4"), ("hasnull", ">i4"), ("elemtype", ">i4"),
            ("dim", ">i4"), ("lb", ">i4"), ("x", elem, (d,))]


def load_dtype(d: int) -> np.dtype:
    """Record of ``COPY t (id int4, x float8[], y int4) FROM STDIN (FORMAT BINARY)``."""
    return np.dtype([("nf", ">i2"), ("idlen", ">i4"), ("id", ">i4"), *_array_fields(d),
                     ("ylen", ">i4"), ("y", ">i4")])


def export_dtype(d: int) -> np.dtype:
    """Record of ``COPY (SELECT x float8[], y int4, holdout bool) TO STDOUT (FORMAT BINARY)``."""
    return np.dtype([("nf", ">i2"), *_array_fields(d), ("ylen", ">i4"), ("y", ">i4"),
                     ("vlen", ">i4"), ("v", "u1")])


def encode_rows(ids: np.ndarray, X: np.ndarray, y: np.ndarray) -> bytes:
    """Binary COPY records for (id, x, y) rows, without the file header or trailer."""
    n, d = X.shape
    rec = np.empty(n, dtype=load_dtype(d))
    rec["nf"] = 3
    rec["idlen"] = 4
    rec["id"] = ids
    rec["alen"] = 20 + 12 * d
    rec["ndim"], rec["hasnull"], rec["elemtype"], rec["dim"], rec["lb"] = 1, 0, FLOAT8OID, d, 1
    rec["x"]["len"] = 8
    rec["x"]["v"] = X
    rec["ylen"] = 4
    rec["y"] = y
    return rec.tobytes()


def copy_in(conn: psycopg.Connection, table: str, chunks: Iterator[tuple[np.ndarray, ...]]
            ) -> int:
    """Stream ``(ids, X, y)`` chunks into ``table(id, x, y)``; returns the rows written."""
    n = 0
    with conn.cursor() as cur, cur.copy(
            sql.SQL("COPY {} (id, x, y) FROM STDIN (FORMAT BINARY)").format(
                sql.Identifier(table))) as cp:
        cp.write(HEADER)
        for ids, X, y in chunks:
            cp.write(encode_rows(ids, X, y))
            n += len(ids)
        cp.write(TRAILER)
    return n


class ExportDecoder:
    """Incremental decoder of an export stream into preallocated float64 ``X``, ``y``, ``v``."""

    def __init__(self, d: int, capacity: int, parse_bytes: int = 8 << 20) -> None:
        self.d = d
        self.dtype = export_dtype(d)
        self.size = self.dtype.itemsize
        self.X = np.empty((max(capacity, 1), d))
        self.y = np.empty(max(capacity, 1), dtype=np.int32)
        self.v = np.empty(max(capacity, 1), dtype=bool)
        self.n = 0
        self.buf = bytearray()
        self.header_seen = False
        self.done = False
        self.parse_bytes = parse_bytes

    def feed(self, data: bytes | memoryview) -> None:
        """Add bytes from the COPY stream; decode complete records once enough are buffered."""
        self.buf += data
        if len(self.buf) >= self.parse_bytes:
            self._drain()

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode what is left; check the trailer; return ``X``, ``y`` and the holdout flags."""
        self._drain()
        if bytes(self.buf) != TRAILER:
            raise ValueError(f"unexpected end of the COPY stream ({len(self.buf)} bytes left)")
        return self.X[:self.n], self.y[:self.n], self.v[:self.n]

    def _drain(self) -> None:
        if not self.header_seen:
            if len(self.buf) < len(HEADER):
                return
            if bytes(self.buf[:len(HEADER)]) != HEADER:
                raise ValueError("not a binary COPY stream without header extension")
            del self.buf[:len(HEADER)]
            self.header_seen = True
        k = len(self.buf) // self.size  # a record is longer than the 2-byte trailer
        if k == 0:
            return
        rec = np.frombuffer(self.buf, dtype=self.dtype, count=k)
        self._check(rec)
        self._grow(self.n + k)
        self.X[self.n:self.n + k] = rec["x"]["v"]
        self.y[self.n:self.n + k] = rec["y"]
        self.v[self.n:self.n + k] = rec["v"] != 0
        self.n += k
        del rec
        del self.buf[:k * self.size]

    def _check(self, rec: np.ndarray) -> None:
        d = self.d
        fixed = ((rec["nf"] == 3) & (rec["alen"] == 20 + 12 * d) & (rec["ndim"] == 1)
                 & (rec["hasnull"] == 0) & (rec["elemtype"] == FLOAT8OID) & (rec["dim"] == d)
                 & (rec["ylen"] == 4) & (rec["vlen"] == 1))
        if not fixed.all() or not (rec["x"]["len"] == 8).all():
            raise ValueError("a row is not a 1-D, NULL-free float8[] of the expected length "
                             "with a non-NULL int label and holdout flag")

    def _grow(self, need: int) -> None:
        if need <= len(self.y):
            return
        cap = max(need, math.ceil(len(self.y) * 1.5))
        self.X = np.resize(self.X, (cap, self.d))
        self.y = np.resize(self.y, cap)
        self.v = np.resize(self.v, cap)


def export(conn: psycopg.Connection, query: sql.Composable, d: int, capacity: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``COPY (query) TO STDOUT (FORMAT BINARY)``; ``query`` selects x, y::int4, holdout."""
    dec = ExportDecoder(d, capacity)
    with conn.cursor() as cur, cur.copy(
            sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)) as cp:
        for data in cp:
            dec.feed(data)
    out = dec.finish()
    conn.rollback()
    return out
