"""What every ``bismarck`` command shares: the --dsn help and one-paragraph errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click
import psycopg

from bismarck_controller.errors import SetupError
from bismarck_controller.session import describe
from bismarckpy.errors import BismarckError

F = TypeVar("F", bound=Callable[..., Any])
DSN_HELP = "PostgreSQL URL or conninfo; default: $BISMARCK_DSN, else the embedded database."


def friendly(func: F) -> F:
    """Engine, server and set-up errors become a ClickException: message, detail, hint."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (BismarckError, psycopg.Error) as exc:
            raise click.ClickException(describe(exc)) from None
        except SetupError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]
