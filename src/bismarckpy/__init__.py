"""bismarckpy engine: the model math and training loop that run inside PostgreSQL.

Everything under this package imports only numpy and the standard library, because the
extension ships it into the server's PL/Python (see ``sql/bismarck.sql``).
"""

__version__ = "0.1.0"
