"""Write one model version into a Triton-style repository, atomically, never over an existing one.

``<repo>/<name>/<version>/model.onnx`` plus ``model.json`` (the same metadata and the parity report).
The version folder is assembled in a hidden temporary folder next to it, validated with
``pixforge.contract.load_contract`` and then renamed into place, so a server scanning the repository
never sees a half-written version (hidden and non-numeric folders are not versions).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import onnx

from pixforge.contract import ModelContract, check_variant, load_contract
from pixforge.errors import PixforgeError
from pixforge.repository import MODEL_FILE, variant_file, version_number

SIDECAR_FILE = "model.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RepositoryWriteError(PixforgeError, RuntimeError):
    """The model cannot be written where asked (bad name, version taken, file system error)."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model folder name, else raise RepositoryWriteError."""
    if not _NAME_RE.match(name or ""):
        raise RepositoryWriteError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit)"
        )
    return name


def existing_versions(repo: Path, name: str) -> list[int]:
    """Every numeric version folder of ``name`` (with or without a model file: numbers are never reused)."""
    model_dir = Path(repo) / name
    if not model_dir.is_dir():
        return []
    # The server's own rule for version folders, so both agree on what is a version ("¹" is not).
    versions = (version_number(p.name) for p in model_dir.iterdir() if p.is_dir())
    return sorted(v for v in versions if v is not None)


def choose_version(repo: Path, name: str, version: int | None) -> int:
    """``version`` if given and free, else the highest existing version + 1.

    Raises:
        RepositoryWriteError: ``version`` < 1 or already present.
    """
    taken = existing_versions(repo, name)
    if version is None:
        return (taken[-1] + 1) if taken else 1
    if version < 1:
        raise RepositoryWriteError(f"--version must be >= 1, got {version}")
    if version in taken:
        raise RepositoryWriteError(
            f"{Path(repo) / name / str(version)} already exists; versions are never overwritten "
            f"(omit --version to write version {taken[-1] + 1}, or delete that folder yourself)"
        )
    return version


def write_model_version(
    repo: Path,
    name: str,
    version: int,
    model: onnx.ModelProto,
    sidecar: dict,
    variants: dict[str, onnx.ModelProto] | None = None,
) -> tuple[Path, ModelContract]:
    """Write ``model``, its precision ``variants`` ({precision: model}, as
    ``model.<precision>.onnx``) and the sidecar as ``<repo>/<name>/<version>/``, atomically.

    Returns:
        (path of model.onnx, the contract read back from the written file).

    Raises:
        RepositoryWriteError: the version exists or the file system refused.
        pixforge.errors.ContractError: a written file does not pass load_contract, or a variant
            is not the reference in another precision (check_variant).
    """
    check_name(name)
    model_dir = Path(repo) / name
    final = model_dir / str(version)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RepositoryWriteError(f"cannot create {model_dir}: {exc.strerror or exc}") from exc
    if final.exists():
        raise RepositoryWriteError(f"{final} already exists; versions are never overwritten")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    try:
        onnx.save(model, str(tmp / MODEL_FILE))
        (tmp / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        contract = load_contract(tmp / MODEL_FILE)
        for precision, variant in (variants or {}).items():
            path = tmp / variant_file(precision)
            onnx.save(variant, str(path))
            check_variant(contract, load_contract(path), precision, path.name)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the server may run as another user
        try:
            # rename(2) fails on a non-empty target; the exists() check above covers an empty one.
            os.rename(tmp, final)
        except OSError as exc:
            raise RepositoryWriteError(
                f"cannot move the new version into {final}: {exc.strerror or exc}"
            ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / MODEL_FILE, contract
