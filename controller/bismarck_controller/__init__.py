"""bismarck_controller: everything that runs outside the server.

The embedded database, extension install, the psycopg-driven training loop, the ``bismarck``
command line and the notebook helpers. The model math lives in the engine package ``bismarckpy``.
"""

from bismarckpy import __version__

__all__ = ["__version__"]
