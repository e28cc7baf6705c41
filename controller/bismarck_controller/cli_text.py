"""Values from the database or the user, printed literally by the ``bismarck`` commands.

A model, column, table, server or class name is data: any role may create a model named
``bad[/x]`` or a column named ``a<ESC>]0;title<BEL>`` and grant it to others. Printed as rich
markup the first breaks the command (``MarkupError``) or loses text (``churn[v2]`` shows as
``churn``); printed raw the second drives the reader's terminal. So every such value goes
through one of these before it reaches a console:

* :func:`visible` -- control characters as escapes (``\\x1b``, ``\\x07``, ``\\u202e``), for
  plain output (``click.echo``, error messages);
* :func:`markup` -- :func:`visible` and then escaped for rich markup, for f-strings that also
  carry markup (``[bold]...[/bold]``);
* :func:`cell` -- a rich ``Text`` (never parsed as markup) for table cells, headers and titles.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from rich.markup import escape
from rich.text import Text

#: Format characters that reorder or hide what follows them on a terminal (bidirectional
#: embeddings, overrides and isolates): shown as escapes like control characters.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def _escaped(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: Any, *, keep: str = "") -> str:
    """``str(value)`` with every control character (Unicode category Cc: C0, DEL, C1) and
    every bidirectional formatting character replaced by its escape: ESC is ``\\x1b``, a
    newline ``\\x0a``, U+202E ``\\u202e``. Characters in ``keep`` (e.g. ``"\\n"`` for a
    message of several lines) stay as they are. A backslash stays a backslash.
    """
    text = str(value)
    if text.isprintable() and not _BIDI.intersection(text):  # the common case, fast
        return text
    return "".join(_escaped(ch) if ch not in keep and (unicodedata.category(ch) == "Cc"
                                                       or ch in _BIDI) else ch
                   for ch in text)


def markup(value: Any) -> str:
    """``value`` for a rich markup string: control characters visible, ``[`` escaped, so
    ``f"[bold]{markup(name)}[/bold]"`` prints the name exactly."""
    return escape(visible(value))


def cell(value: Any, style: str = "") -> Text:
    """``value`` as a rich ``Text`` (a table cell, column header or title): printed literally,
    control characters visible."""
    return Text(visible(value), style=style)
