"""Model repository layout (Triton style): ``<repo>/<model-name>/<version>/model.onnx``.

A version folder may also hold *precision variants* of the same network beside the reference
``model.onnx``: ``model.fp32.onnx``, ``model.fp16.onnx``, ``model.bf16.onnx``, ``model.int8.onnx``
(the name says the precision; the file's ``precision`` metadata must agree). The server picks the
one its execution provider runs fastest (docs/serving.md, "Precision variants").

Only the layout lives here (which files exist, which version wins); validating a file against
the model contract is :mod:`pixforge.contract`'s job and loading it is the server's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.onnx"
ENV_MODELS = "PIXFORGE_MODELS"
# Precisions a variant file may have, as in its name ``model.<precision>.onnx``.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# A version folder's name: a positive decimal number in ASCII digits, without leading zeros.
_VERSION_FOLDER = re.compile(r"[1-9][0-9]*")


def variant_file(precision: str) -> str:
    """The file name of a precision variant (``model.fp16.onnx``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return f"model.{precision}.onnx"


def variant_files(version_dir: str | Path) -> dict[str, Path]:
    """The precision variants present beside ``model.onnx``: {precision: path}."""
    version_dir = Path(version_dir)
    return {p: version_dir / variant_file(p) for p in PRECISIONS if (version_dir / variant_file(p)).is_file()}


@dataclass(frozen=True)
class ModelEntry:
    """One model version on disk."""

    name: str
    version: int
    path: Path  # .../<name>/<version>/model.onnx (the reference file)

    @property
    def files(self) -> list[Path]:
        """Every model file of this version: the reference, then its precision variants."""
        return [self.path, *variant_files(self.path.parent).values()]


def default_repository() -> Path:
    """The bundled default model repository: $PIXFORGE_MODELS, else ``models/`` of this checkout."""
    env = os.environ.get(ENV_MODELS)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "models"


def version_number(folder: str) -> int | None:
    """The version a folder name spells, or None when it is not a version folder.

    Only the plain decimal form in ASCII digits counts: "3", not "03" (which would be a second
    folder for version 3), " 3", "¹" or "３" (str.isdigit() accepts the last two, and int()
    then fails on "¹").
    """
    if not _VERSION_FOLDER.fullmatch(folder):
        return None
    return int(folder)


def scan_repository(repo: str | Path) -> list[ModelEntry]:
    """List every ``<name>/<version>/model.onnx`` under ``repo``, sorted by name then version.

    Folders whose name is not a positive integer are not versions and are ignored (a model folder
    may hold a README.md and sample images beside its versions); see :func:`version_number`.

    Raises:
        FileNotFoundError: ``repo`` is not a directory.
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise FileNotFoundError(f"model repository {repo} is not a directory")
    entries = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version_dir in model_dir.iterdir():
            version = version_number(version_dir.name)
            if version is not None and version_dir.is_dir():
                model_file = version_dir / MODEL_FILE
                if model_file.is_file():
                    entries.append(ModelEntry(model_dir.name, version, model_file))
    return sorted(entries, key=lambda e: (e.name, e.version))


def latest_versions(entries: list[ModelEntry]) -> dict[str, ModelEntry]:
    """Highest version per model name."""
    best: dict[str, ModelEntry] = {}
    for e in entries:
        if e.name not in best or e.version > best[e.name].version:
            best[e.name] = e
    return best


def single_model_repository(source: str | Path, model: str, folder: str | Path) -> Path:
    """A repository under ``folder`` holding only ``model`` of ``source``, as a link (nothing copied).

    A server started on it loads that one model instead of the whole repository (the in-process
    `convert --models`, the overload benchmark).

    Returns:
        The new repository folder (``folder/models``).
    """
    repo = Path(folder) / "models"
    repo.mkdir()
    (repo / model).symlink_to((Path(source) / model).resolve(), target_is_directory=True)
    return repo
