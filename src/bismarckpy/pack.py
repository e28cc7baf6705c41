"""Packed storage: many rows per ``bytea`` block, as raw little-endian numpy buffers.

A block holds ``n`` rows as one C-ordered ``n × (1 + d)`` matrix (float32 or float64): the label,
then the features. Blocks are built in SQL by concatenating each row's ``float8[]`` in its
in-memory form (``bismarck._float8_array_bytes``: a 20-byte header, then the raw float8 values)
and converting the whole block here in one numpy call.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidData

DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
DTYPE_CODES = {"float32": 4, "float64": 8}
_HEADER = 20  # ndim, data offset (0: no NULL bitmap), element type, length, lower bound
_FLOAT8OID = 701


def expected_header(d: int) -> bytes:
    """The in-memory header of a 1-D, NULL-free ``float8[]`` of length ``d``, lower bound 1."""
    return np.array([1, 0, _FLOAT8OID, d, 1], dtype="<i4").tobytes()


def build_block(raw_rows: bytes, raw_labels: bytes, d: int, dtype: str, seed: int) -> bytes:
    """Concatenated in-memory ``float8[]`` rows and their labels → one packed block.

    The block is an ``n × (1 + d)`` matrix of ``dtype``: the label, then the features. Rows are
    put in a random order (seeded), so per-row steps inside a block follow no table order.
    Every row's header is checked: anything but a 1-D float8 array of length ``d`` without
    NULLs (the caller filters those) is refused rather than misread.
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
    block = np.empty((n, 1 + d), dtype=DTYPES[dtype])
    block[:, 0] = np.frombuffer(raw_labels, dtype="<f8", offset=_HEADER)
    block[:, 1:] = np.ascontiguousarray(rows[:, _HEADER:]).view("<f8")
    order = np.random.default_rng(seed & (2**63 - 1)).permutation(n)
    return block[order].tobytes()


def read_block(data: bytes, d: int, itemsize: int) -> tuple[np.ndarray, np.ndarray]:
    """A block's features (``n × d`` float64) and labels (float64)."""
    dt = DTYPES["float32"] if itemsize == 4 else DTYPES["float64"]
    block = np.frombuffer(data, dtype=dt).reshape(-1, 1 + d).astype(np.float64)
    return block[:, 1:], block[:, 0]
