"""bismarckpy engine: the model math and training loop that run inside PostgreSQL.

Everything under this package imports only numpy and the standard library, because the
extension ships it into the server's PL/Python (see ``sql/bismarck.sql``); it imports nothing
from the client package ``bismarck_controller`` (a test checks). The notebook front door is
``%load_ext bismarck_controller``.
"""

__version__ = "0.3.0"
