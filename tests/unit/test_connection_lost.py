"""Which errors of a partition epoch say a shard's connection was lost."""

from __future__ import annotations

import pytest

from bismarckpy.execution import connection_lost


class _Error(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__("x")
        self.sqlstate = sqlstate


@pytest.mark.parametrize("state", ["08006", "08000", "08001", "57P01", "57P02", "57P03"])
def test_lost_connections(state: str) -> None:
    assert connection_lost(_Error(state))


@pytest.mark.parametrize("state", [None, "", "22023", "XX000", "57014", "42P01"])
def test_other_errors(state: str | None) -> None:
    assert not connection_lost(_Error(state))
    assert not connection_lost(ValueError("no sqlstate"))
