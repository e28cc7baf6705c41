"""What every ``bismarck`` command shares: the --dsn help and one-paragraph errors."""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click
import psycopg

from bismarck_controller.cli_text import visible
from bismarck_controller.errors import SetupError
from bismarck_controller.session import describe
from bismarckpy.errors import BismarckError

F = TypeVar("F", bound=Callable[..., Any])
DSN_HELP = "PostgreSQL URL or conninfo; default: $BISMARCK_DSN, else the embedded database."


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a service manager) stops a command as Ctrl-C does: cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def friendly(func: F) -> F:
    """Engine, server and set-up errors become a ClickException: message, detail, hint.

    SIGTERM is handled like SIGINT, so a terminated run cleans up as an interrupted one does.
    Control characters in the message (a name from the database) are shown as escapes.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with terminate_as_interrupt():
                return func(*args, **kwargs)
        except (BismarckError, psycopg.Error) as exc:
            raise click.ClickException(visible(describe(exc), keep="\n\t")) from None
        except SetupError as exc:
            raise click.ClickException(visible(exc, keep="\n\t")) from None

    return wrapper  # type: ignore[return-value]
