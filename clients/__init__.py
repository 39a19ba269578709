"""The client library's implementation and the batch-conversion CLI (torch-free).

Folder -> import name: `clients/` is installed as `pixforge.clients` (setup.py); its modules import
each other relatively and everything else as `pixforge.x` (docs/architecture.md).

Users import the library from `pixforge.client` (Client, AsyncClient, ClientConfig, the errors):
that is its one public path. The CLI commands live in `convert` (`pixforge convert`) and `health`
(`pixforge health`).

`from pixforge.clients import Client` (the public names straight from this package) still works
but is deprecated: it warns and forwards to `pixforge.client`.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    # Only the public names of pixforge.client are forwarded: anything else (a submodule such as
    # `convert` during `from pixforge.clients import convert`) must raise AttributeError.
    from pixforge import client

    if name not in client.__all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # `from pixforge.clients import Client` asks twice: the import system's hasattr() check in
    # importlib._bootstrap._handle_fromlist, then the import itself. Warn on the second only.
    if sys._getframe(1).f_globals.get("__name__") == "importlib._bootstrap":
        return getattr(client, name)
    warnings.warn(
        f"pixforge.clients.{name} is deprecated: import it from pixforge.client",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(client, name)
