"""Packed storage: many rows per ``bytea`` block, as raw little-endian numpy buffers.

A block holds ``n`` rows of ``1 + d`` columns (the label, then the features) as per-column
float64 offsets plus an ``n × (1 + d)`` C-ordered matrix of residuals (float32 or float64)::

    MAGIC (8 bytes) | d (int32) | itemsize (int32) | offsets (1 + d float64) | residuals

A value is ``offset + residual``; the offset is the block's column minimum, so residuals carry
the column's spread and their precision does not depend on how far the column sits from zero
(``1e8 + r`` keeps ``r`` to float32's 7 digits). Class labels and integers below 2**24 (float32)
stay exact. Blocks are built in SQL by concatenating each row's ``float8[]`` in its in-memory
form (``bismarck._float8_array_bytes``: a 20-byte header, then the raw float8 values) and
converting the whole block here in one numpy call.

``MAGIC`` is a NaN in float32 and float64, which no block of the earlier format (raw values
only, all finite) can start with, so those are recognised and refused: pack them again.
"""

from __future__ import annotations

import struct

import numpy as np

from .errors import InvalidData

DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
DTYPE_CODES = {"float32": 4, "float64": 8}
MAGIC = b"BK\xc2\x7fv2\xf8\x7f"  # bytes 0-3, 4-7 and 0-7 are each a NaN
HEADER_BYTES = 16
_HEADER = 20  # ndim, data offset (0: no NULL bitmap), element type, length, lower bound
_FLOAT8OID = 701
_HEAD = struct.Struct("<8sii")  # MAGIC, d, itemsize
_F4, _F8 = np.dtype("<f4"), np.dtype("<f8")
#: Largest magnitude a float32 block can hold as a residual from its column minimum.
FLOAT32_SAFE = float(np.finfo(np.float32).max) / 2


def expected_header(d: int) -> bytes:
    """The in-memory header of a 1-D, NULL-free ``float8[]`` of length ``d``, lower bound 1."""
    return np.array([1, 0, _FLOAT8OID, d, 1], dtype="<i4").tobytes()


def build_block(raw_rows: bytes, raw_labels: bytes, d: int, dtype: str, seed: int) -> bytes:
    """Concatenated in-memory ``float8[]`` rows and their labels → one packed block.

    The block holds the label then the features of each row (see the module's layout). Rows
    are put in a random order (seeded), so per-row steps inside a block follow no table order
    and any leading share of a block is a random sample of it. Every row's header is checked:
    anything but a 1-D float8 array of length ``d`` without NULLs is refused rather than
    misread, and so is a value that the block's dtype cannot hold (never a silent ±inf).
    """
    width = _HEADER + 8 * d
    if len(raw_rows) % width:
        raise InvalidData("packed rows have an unexpected size",
                          detail=f"{len(raw_rows)} bytes is not a multiple of the {width}-byte "
                                 f"row of a {d}-element float8 array.",
                          hint="All feature arrays must have the same length and no NULLs.")
    rows = np.frombuffer(raw_rows, dtype=np.uint8).reshape(-1, width)
    header = np.frombuffer(expected_header(d), dtype=np.uint8)
    if not (rows[:, :_HEADER] == header).all():
        raise InvalidData("a packed row is not a 1-D float8 array of the expected length",
                          detail=f"Expected {d} elements, lower bound 1, no NULLs.",
                          hint="Check the feature arrays (cardinality, NULL elements).")
    head = np.frombuffer(raw_labels[:_HEADER], dtype="<i4")
    n = rows.shape[0]
    if len(raw_labels) != _HEADER + 8 * n or list(head) != [1, 0, _FLOAT8OID, n, 1]:
        raise InvalidData("the labels of a packed block do not match its rows",
                          detail=f"{n} rows; labels must be a NULL-free float8 array of as many.")
    values = np.empty((n, 1 + d), dtype=np.float64)
    values[:, 0] = np.frombuffer(raw_labels, dtype="<f8", offset=_HEADER)
    values[:, 1:] = np.ascontiguousarray(rows[:, _HEADER:]).view("<f8")
    order = np.random.default_rng(seed & (2**63 - 1)).permutation(n)
    return encode(values[order], dtype)


def encode(values: np.ndarray, dtype: str) -> bytes:
    """An ``n × (1 + d)`` float64 matrix (label, features) → a block of ``dtype`` residuals.

    Raises :class:`InvalidData` when a value is not finite or a residual does not fit ``dtype``
    (the callers check ranges first; this keeps a block from ever holding ±inf).
    """
    n, width = values.shape
    offsets = values.min(axis=0) if n else np.zeros(width)
    with np.errstate(over="ignore", invalid="ignore"):
        residuals = (values - offsets).astype(DTYPES[dtype])
    if not (np.isfinite(offsets).all() and np.isfinite(residuals).all()):
        raise InvalidData(
            f"a value is too large for a {dtype} block",
            detail=f"Packed blocks of {dtype} hold values up to about {_limit(dtype):.3g}.",
            hint="Use dtype => 'float64', or rescale the column.")
    head = MAGIC + np.array([width - 1, DTYPES[dtype].itemsize], dtype="<i4").tobytes()
    return head + offsets.astype("<f8").tobytes() + residuals.tobytes()


def _limit(dtype: str) -> float:
    return FLOAT32_SAFE if dtype == "float32" else float(np.finfo(np.float64).max) / 2


def parse_block(data: bytes, d: int, itemsize: int) -> tuple[np.ndarray, np.ndarray]:
    """A block's offsets (``1 + d`` float64) and residuals (``n × (1 + d)``, its own dtype).

    Raises :class:`InvalidData` for a block of the earlier format or of another shape.
    """
    if len(data) < HEADER_BYTES:
        raise stale_format()
    magic, got_d, got_size = _HEAD.unpack_from(data)  # struct: cheaper than numpy per call
    if magic != MAGIC:
        raise stale_format()
    start = HEADER_BYTES + 8 * (1 + d)
    if got_d != d or got_size != itemsize or (len(data) - start) % ((1 + d) * itemsize):
        raise InvalidData("a packed block does not match its table",
                          detail=f"Expected {d} features of {itemsize} bytes; the block holds "
                                 f"{got_d} of {got_size}.",
                          hint="Pack the source table again with bismarck.pack.")
    offsets = np.frombuffer(data, dtype=_F8, count=1 + d, offset=HEADER_BYTES)
    residuals = np.frombuffer(data, dtype=_F4 if itemsize == 4 else _F8, offset=start)
    return offsets, residuals.reshape(-1, 1 + d)


def stale_format() -> InvalidData:
    """The error for a block written by an earlier version (raw values, no offsets)."""
    return InvalidData(
        "packed table was written in an earlier block format",
        detail="Its blocks hold raw values without per-column offsets, which lost precision "
               "for columns far from zero.",
        hint="Pack it again: DROP TABLE it, then SELECT * FROM bismarck.pack(...).")


def read_block(data: bytes, d: int, itemsize: int) -> tuple[np.ndarray, np.ndarray]:
    """A block's features (``n × d`` float64) and labels (float64), offsets added back."""
    offsets, residuals = parse_block(data, d, itemsize)
    values = residuals.astype(np.float64) + offsets
    return values[:, 1:], values[:, 0]


def rows_as_records(X: np.ndarray) -> np.ndarray:
    """An ``n × d`` C-ordered float64 matrix as ``n`` opaque ``8·d``-byte records (a view).

    Gathering records copies each row with one ``memcpy``, whatever the alignment: the arrays
    PL/Python hands over sit 4 bytes off an 8-byte boundary (their header), where numpy's
    float64 gathers and reductions take a slow element-by-element path."""
    return X.view(np.dtype((np.void, 8 * X.shape[1]))).reshape(X.shape[0])
