"""`pixforge.client`: the public import path of the Python client library.

    from pixforge.client import Client, AsyncClient, ClientError

Re-exports the clients package (`pixforge.clients`), which holds the implementation.
"""

from pixforge.clients import *  # noqa: F401,F403
from pixforge.clients import __all__  # noqa: F401
