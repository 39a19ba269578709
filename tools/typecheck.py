"""mypy on the torch-free packages as they are installed: pixforge, pixforge.service, pixforge.clients.

    python tools/typecheck.py [MYPY_ARGS...]     (`make typecheck`; part of `make test`)

setup.py installs service/ as pixforge.service and clients/ as pixforge.clients. mypy cannot follow
that mapping (nor the editable install's import hook): `mypy pixforge service clients` checks each
folder on its own and types every import across folders (pixforge.clients -> pixforge.service, the
pixforge.client re-exports, ...) as Any. So this script lays the installed package out as symlinks,
build/typecheck/pixforge/{pixforge's files, service -> service/, clients -> clients/}, runs mypy on
that view with the settings of [tool.mypy] in pyproject.toml (the generated stubs pixforge/v1 and
pixforge/kserve are imported, not checked), and prints the paths as they are in the repository.
Exits with mypy's status.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIEW = ROOT / "build" / "typecheck"
# Folder -> where it is installed inside pixforge/ (the torch-free ones; see setup.py).
MAPPED = {"service": "service", "clients": "clients"}


def build_view() -> Path:
    """(Re)create the symlink view; returns its pixforge/ folder."""
    pkg = VIEW / "pixforge"
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    for entry in sorted((ROOT / "pixforge").iterdir()):
        if entry.name == "__pycache__":
            continue
        (pkg / entry.name).symlink_to(entry)
    for folder, name in MAPPED.items():
        (pkg / name).symlink_to(ROOT / folder, target_is_directory=True)
    return pkg


def repo_paths(text: str) -> str:
    """pixforge/service/x.py -> service/x.py (and clients): the paths a developer opens."""
    for folder, name in MAPPED.items():
        text = re.sub(rf"(?<![\w/])pixforge/{name}/", f"{folder}/", text)
    return text


def main(argv: list[str]) -> int:
    build_view()
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--cache-dir",
        str(ROOT / ".mypy_cache"),
        *argv,
        "pixforge",
    ]
    env = {**os.environ, "MYPY_FORCE_COLOR": "0"}
    proc = subprocess.run(cmd, cwd=VIEW, capture_output=True, text=True, env=env)
    sys.stdout.write(repo_paths(proc.stdout))
    sys.stderr.write(repo_paths(proc.stderr))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
