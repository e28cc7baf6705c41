"""bismarck_controller: everything that runs outside the server.

The embedded database, extension install, the psycopg-driven training loop, the ``bismarck``
command line and the notebook helpers. The model math lives in the engine package ``bismarckpy``.
``%load_ext bismarck_controller`` is the notebook front door (:mod:`.notebook`).
"""

from typing import Any

from bismarckpy import __version__

__all__ = ["__version__", "load_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext bismarck_controller``: connect jupysql's ``%sql`` to the bismarck database."""
    from bismarck_controller.notebook import load_ipython_extension as load

    load(ipython)
