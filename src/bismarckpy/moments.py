"""Feature means and variances as a mergeable aggregate (Welford per row, Chan's merge).

Used before training to standardise features; the state is a float64 buffer
``[n, mean[d], m2[d]]`` so partial states from parallel workers combine exactly.
"""

from __future__ import annotations

import numpy as np

from .pack import read_block

_F8 = np.dtype("<f8")


def transition(state: bytes | None, x) -> bytes | None:
    """Add one feature vector (floats, or a ``float8[]``'s in-memory bytes); NULL is ignored."""
    if x is None:
        return state
    if isinstance(x, (bytes, bytearray, memoryview)):
        xv = np.frombuffer(x, dtype=_F8, offset=20)  # 1-D, no NULLs: checked by the caller
    else:
        xv = np.array(x, dtype=_F8)
    if state is None:
        s = np.zeros(1 + 2 * len(xv), dtype=_F8)
    else:
        s = np.frombuffer(state, dtype=_F8).copy()
    d = (len(s) - 1) // 2
    n = s[0] + 1.0
    mean, m2 = s[1:1 + d], s[1 + d:]
    delta = xv - mean
    mean += delta / n
    m2 += delta * (xv - mean)
    s[0] = n
    return s.tobytes()


def merge(a: bytes | None, b: bytes | None) -> bytes | None:
    """Combine two partial states (Chan et al.'s parallel variance)."""
    if a is None:
        return b
    if b is None:
        return a
    sa = np.frombuffer(a, dtype=_F8).copy()
    sb = np.frombuffer(b, dtype=_F8)
    d = (len(sa) - 1) // 2
    na, nb = sa[0], sb[0]
    n = na + nb
    delta = sb[1:1 + d] - sa[1:1 + d]
    sa[1:1 + d] += delta * (nb / n)
    sa[1 + d:] += sb[1 + d:] + delta * delta * (na * nb / n)
    sa[0] = n
    return sa.tobytes()


def decode(state: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    """Return ``(n, mean, population variance)``."""
    s = np.frombuffer(state, dtype=_F8)
    d = (len(s) - 1) // 2
    n = s[0]
    return int(n), s[1:1 + d].copy(), s[1 + d:] / max(n, 1.0)


def transition_block(state: bytes | None, block: bytes | None, d: int,
                     itemsize: int) -> bytes | None:
    """Add a packed block (:mod:`bismarckpy.pack`) in one step: its label, then its features."""
    if block is None:
        return state
    features, labels = read_block(block, d, itemsize)
    X = np.column_stack([labels, features])
    if X.shape[0] == 0:
        return state
    mean = X.mean(axis=0)
    block = np.concatenate([[float(X.shape[0])], mean, ((X - mean) ** 2).sum(axis=0)])
    return merge(state, block.astype(_F8).tobytes())
