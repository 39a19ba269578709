"""One error family: every exception class pixforge defines derives from PixforgeError.

Walks every module of the installed packages (pixforge, pixforge.service, pixforge.training,
pixforge.clients, pixforge.bench), skipping the generated gRPC stubs; warnings (UserWarning
subclasses) are not errors and are left out.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from pixforge.errors import PixforgeError

ROOT = Path(__file__).resolve().parents[2]
# folder -> package (setup.py's map, plus the shared core itself)
PACKAGES = {
    "pixforge": "pixforge",
    "service": "pixforge.service",
    "training": "pixforge.training",
    "clients": "pixforge.clients",
    "bench": "pixforge.bench",
}
GENERATED = ("pixforge/v1", "pixforge/kserve")  # tools/codegen.py output
# Imports whose absence means an optional extra is not installed (the module is then skipped).
OPTIONAL = {"torch", "torchvision", "onnx", "onnxruntime", "matplotlib", "tensorboard", "aiohttp", "yaml"}


def _modules() -> list[str]:
    names = []
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(GENERATED) or path.name == "__main__.py":
                continue
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join([package, *parts]))
    return names


def _exception_classes():
    found: dict[type, None] = {}  # insertion-ordered set (an alias is the same class)
    skipped = []
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in OPTIONAL:
                skipped.append(name)
                continue
            raise
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                obj.__module__ == module.__name__
                and issubclass(obj, BaseException)
                and not issubclass(obj, Warning)
            ):
                found[obj] = None
    return list(found), skipped


def test_every_exception_class_derives_from_pixforge_error():
    found, skipped = _exception_classes()
    assert len(found) > 40, f"the walk found too few exception classes: {found}"
    strays = sorted(f"{c.__module__}.{c.__qualname__}" for c in found if not issubclass(c, PixforgeError))
    assert not strays, f"derive these from pixforge.errors.PixforgeError: {strays}"


def test_distinct_names_for_distinct_meanings():
    names: dict[str, set[str]] = {}
    found, _ = _exception_classes()
    for cls in found:
        names.setdefault(cls.__name__, set()).add(cls.__module__)
    clashes = {n: sorted(m) for n, m in names.items() if len(m) > 1 and not n.startswith("_")}
    assert not clashes, f"one exception name, several classes: {clashes}"


def test_old_names_still_work():
    service_errors = pytest.importorskip("pixforge.service.errors")
    assert service_errors.ConfigError is service_errors.ServerConfigError
    training_config = pytest.importorskip("pixforge.training.config")
    assert training_config.ConfigError is training_config.ExperimentConfigError
    from pixforge.clients import convert
    from pixforge.errors import UsageError

    assert convert.UsageError is UsageError
