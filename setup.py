"""Package layout: the repository's top-level folders are installed under `pixforge.*`.

`service/` -> `pixforge.service`, `training/` -> `pixforge.training`, `clients/` -> `pixforge.clients`,
`bench/` -> `pixforge.bench`,
so no bare `service`/`training`/`clients` module lands in site-packages. Everything else about the
distribution lives in pyproject.toml; this file only computes the package map, which pyproject's
static tables cannot express for nested sub-packages.
"""

from setuptools import find_packages, setup

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

setup(packages=packages, package_dir=package_dir)
