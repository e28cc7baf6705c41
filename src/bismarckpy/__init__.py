"""bismarckpy engine: the model math and training loop that run inside PostgreSQL.

Everything under this package imports only numpy and the standard library, because the
extension ships it into the server's PL/Python (see ``sql/bismarck.sql``).
"""

__version__ = "0.2.0"


def load_ipython_extension(ipython):  # %load_ext bismarckpy (notebook front door)
    from bismarck_controller.notebook import load_ipython_extension as _load
    _load(ipython)
