"""Parametrisations whose full cross product runs in ``make test-slow``.

A test over several axes (values × paths × options) runs every combination there; the default
suite runs a covering set of them that holds every value of every axis at least once, so it
still proves each path, value, option and failure kind, at a fraction of the cost.
"""

from __future__ import annotations

import itertools

import pytest


def cases(*axes: list, default: list[tuple], slow_only: tuple = ()) -> list:
    """Every combination of ``axes`` (their cross product) as pytest params.

    The combinations in ``default`` run in the default suite and the rest are marked slow.
    ``default`` must hold each value of every axis at least once (checked here; the values in
    ``slow_only`` excepted, which run only in the slow suite).
    """
    every = list(itertools.product(*axes))
    assert set(default) <= set(every), set(default) - set(every)
    for i, axis in enumerate(axes):
        assert {c[i] for c in default} == set(axis) - set(slow_only), (axis, default)
    return [pytest.param(*c, marks=() if c in default else pytest.mark.slow,
                         id="-".join(map(_id, c))) for c in every]


def _id(value: object) -> str:
    """A value's part of a test id: a tuple's items joined by commas, else ``str``."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def diagonal(*axes: list) -> list[tuple]:
    """Combinations that hold each value of every axis at least once: the k-th takes the
    (k mod length)-th value of each axis, for k up to the longest axis's length."""
    return [tuple(axis[k % len(axis)] for axis in axes)
            for k in range(max(len(axis) for axis in axes))]
