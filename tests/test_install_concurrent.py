"""Concurrent `bismarck` commands on one cluster each check the installation
(``extension.install``): they take turns instead of failing with "tuple concurrently
updated" (two GRANTs of the same object at once), as an outside tester saw with three
`bismarck train` commands started together."""

from __future__ import annotations

import threading

from bismarck_controller import extension


def test_concurrent_installs_take_turns(dsn) -> None:
    errors: list[BaseException] = []

    def install() -> None:
        try:
            for _ in range(3):
                extension.install(dsn)
        except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
            errors.append(exc)

    threads = [threading.Thread(target=install) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
