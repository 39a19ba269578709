"""A private in-process server for `pixforge convert --models DIR` (no server to start by hand).

It is the real server (:func:`~pixforge.service.server.serve`: the same pipeline, limits, tiling,
batching and encoder), serving only the one model the conversion asks for, bound to 127.0.0.1 on
an ephemeral port with a random bearer token, so nothing else on the machine can use it, and with
no metrics or HTTP endpoints. The conversion talks to it with the ordinary client, so converting
in-process and through a served model give byte-identical files, and resume, the report and the
exit codes are the same code.

Only the named model is loaded (a temporary repository of links), so converting with one model of
a large repository does not load the others.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pixforge.repository import latest_versions, scan_repository, single_model_repository

from .config import build_config
from .errors import ServerConfigError
from .server import ServerHandle, serve


@dataclass
class LocalServer:
    """A running private server; ``address`` and ``token`` are for the client. Close it when done."""

    handle: ServerHandle
    token: str
    workdir: Path
    previous_log_level: int = logging.NOTSET  # restored on close: the level is process-wide

    @property
    def address(self) -> str:
        return self.handle.address

    def close(self) -> None:
        """Stop the server (in-flight work is cancelled) and remove the temporary repository."""
        try:
            self.handle.stop(0)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            logging.getLogger("pixforge.service").setLevel(self.previous_log_level)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def available_models(repository: Path) -> list[str]:
    """Names of the models in a repository folder (any version present)."""
    return sorted(latest_versions(scan_repository(repository)))


def check_model(repository: str | Path, model: str) -> None:
    """Check ``repository`` is a model repository holding ``model`` (no model is loaded).

    Raises:
        ServerConfigError: not a folder, or no such model (the message lists the models it has).
    """
    repo = Path(repository)
    if not repo.is_dir():
        raise ServerConfigError(f"--models {repo} is not a folder")
    names = available_models(repo)
    if model not in names:
        have = ", ".join(names) if names else "none"
        raise ServerConfigError(f"model {model!r} is not in {repo} (it has: {have})")


def start_local_server(repository: str | Path, model: str, *, log_level: str = "ERROR") -> LocalServer:
    """Load ``model`` from ``repository`` into a private server and wait until it is ready.

    Args:
        repository: a model repository folder (``<name>/<version>/model.onnx``).
        model: the model to serve.
        log_level: level of the server's own log lines (to stderr); the conversion reports each
            failed file itself, so the default keeps the server's per-request warnings out.

    Raises:
        ServerConfigError: the folder is not a repository or has no such model (the message lists the
            models it has), or the model failed to load (the message says why).
    """
    repo = Path(repository)
    check_model(repo, model)
    service_log = logging.getLogger("pixforge.service")
    previous = service_log.level
    # Quiet while the model loads: a load failure is logged by the repository and then raised
    # below with the same reason, and the user should read it once.
    service_log.setLevel(logging.CRITICAL)
    workdir = Path(tempfile.mkdtemp(prefix="pixforge-convert-"))
    try:
        private = single_model_repository(repo, model, workdir)
        token = secrets.token_urlsafe(24)
        values = {
            "models": str(private),
            "host": "127.0.0.1",
            "port": 0,
            "metrics_port": 0,
            "http_port": 0,
            "auth.token": token,
            "log_level": log_level,
            "grace_seconds": 0,
        }
        handle = serve(build_config(values, source="convert --models"))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        service_log.setLevel(previous)
        raise
    service_log.setLevel(log_level)
    local = LocalServer(handle, token, workdir, previous)
    row = handle.registry.describe(model)
    if row.contract is None:
        local.close()
        # The reason names the private repository's path, a temp folder deleted by now: say the
        # user's own path instead.
        reason = (row.error or row.state.value).replace(str(private), str(repo))
        raise ServerConfigError(f"model {model!r} in {repo} failed to load: {reason}")
    return local
