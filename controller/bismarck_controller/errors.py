"""Errors of the controller's set-up layer: the embedded database, connections and install.

A ``SetupError`` is something the user can fix; the CLI prints it as one paragraph, no traceback.
"""

from __future__ import annotations


class SetupError(Exception):
    """A set-up problem the user can fix: what went wrong and what to do (``hint``)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message.rstrip()
        self.hint = hint.rstrip() if hint else None

    def __str__(self) -> str:
        if not self.hint:
            return self.message
        sep = " " if self.message.endswith((".", ":", "?", "!")) else ". "
        return self.message + sep + self.hint
