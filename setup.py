"""Package layout: the repository's top-level folders are installed under `pixforge.*`.

`service/` -> `pixforge.service`, `training/` -> `pixforge.training`, `clients/` -> `pixforge.clients`,
`bench/` -> `pixforge.bench`,
so no bare `service`/`training`/`clients` module lands in site-packages. Everything else about the
distribution lives in pyproject.toml; this file computes the package map, which pyproject's
static tables cannot express for nested sub-packages, and generates the gRPC stubs at build time.
"""

import importlib.util
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
CODEGEN = HERE / "tools" / "codegen.py"

FOLDERS = {
    "service": "pixforge.service",
    "training": "pixforge.training",
    "clients": "pixforge.clients",
    "bench": "pixforge.bench",
}

packages = find_packages(include=["pixforge", "pixforge.*"])
package_dir = {"pixforge": "pixforge"}
for folder, name in FOLDERS.items():
    package_dir[name] = folder
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(where=folder)]


def generate_stubs() -> None:
    """Write pixforge/v1 and pixforge/kserve/v2 stubs from the protos (tools/codegen.py).

    Why at build time: the stubs are not committed (see tools/codegen.py), so every build or
    install, editable ones included, makes them from the protos it ships with.
    """
    if not CODEGEN.exists():
        # A source tree without the generator (an sdist built elsewhere) must bring its stubs.
        if not (HERE / "pixforge" / "v1" / "translation_pb2.py").exists():
            raise SystemExit("tools/codegen.py is missing and there are no generated stubs to package")
        return
    spec = importlib.util.spec_from_file_location("pixforge_codegen", CODEGEN)
    assert spec is not None and spec.loader is not None
    codegen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(codegen)
    codegen.generate(codegen.OUT_ROOT)


class BuildPyWithStubs(build_py):
    """build_py that generates the gRPC stubs first (also run by editable installs)."""

    def run(self) -> None:
        generate_stubs()
        super().run()


setup(packages=packages, package_dir=package_dir, cmdclass={"build_py": BuildPyWithStubs})
