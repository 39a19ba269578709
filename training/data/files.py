"""Finding image files and splitting them into train / validation sets; decoding one file; a
file's SHA-256 (the provenance that exports, blends and evaluations record).

Folder conventions (general, not tied to one dataset; see docs/training.md "Dataset layouts"):

- Training files come from `DIR/train` when it exists, else from `DIR` itself. Search is recursive.
  When training from `DIR` itself, top-level split folders (`val`, `valid`, `validation`, `test`)
  are never trained on.
- Validation files come from the first existing folder of `DIR/val`, `DIR/valid`,
  `DIR/validation`, `DIR/test`. When none exists, a fixed subset of the training files is held
  out: the files whose SHA-1 of the relative path sorts first. It is stable across runs and does
  not shift when files are added elsewhere.
- Unaligned (CycleGAN) data: `DIR/trainA` + `DIR/trainB`, validated on `valA`/`valB` or
  `testA`/`testB` when both exist, else held-out subsets of each.

Only files with an image extension are listed; other files (README.md, .txt) are counted as
ignored. Decoding goes through `pixforge.codec` (the same decoder the server uses: EXIF
orientation, 16-bit -> 8-bit, gray -> RGB) and raises `BadImageError` for anything unreadable.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixforge.codec import decode_image, to_channels
from pixforge.errors import ImageDecodeError, ImageTooLargeError, PixforgeError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VAL_DIR_NAMES = ("val", "valid", "validation", "test")


class DataError(PixforgeError):
    """The data folder is missing, empty or does not have the layout the config asks for."""


class BadImageError(PixforgeError):
    """One file cannot be used (unreadable, corrupt, too small); the loader skips it.

    Attributes:
        path: the file.
        reason: a short human reason.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (checkpoints and models are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3) with the shared codec.

    Raises:
        BadImageError: the file cannot be read or decoded.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        decoded = decode_image(data)
    except (OSError, ImageDecodeError, ImageTooLargeError) as exc:
        raise BadImageError(str(path), str(exc) or type(exc).__name__) from None
    return np.ascontiguousarray(to_channels(decoded.pixels, 3))


def list_images(root: Path, exclude_dirs: tuple[Path, ...] = ()) -> tuple[list[str], int]:
    """All image files under `root` (recursive, sorted), skipping hidden entries and `exclude_dirs`.

    Returns:
        (sorted file paths, number of non-image files ignored)
    """
    files: list[str] = []
    ignored = 0
    excluded = {p.resolve() for p in exclude_dirs}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in excluded
        )
        for name in filenames:
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(str(here / name))
            else:
                ignored += 1
    files.sort()
    return files, ignored


def _find_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def holdout_split(files: list[str], root: Path, count: int) -> tuple[list[str], list[str]]:
    """Hold out up to `count` files (at most a fifth, at least one file left to train on).

    The held-out files are those whose SHA-1 of the path relative to `root` sorts first.

    Returns:
        (train files, held-out files), both sorted.
    """
    k = min(count, len(files) // 5 if len(files) >= 10 else len(files) // 2)
    if k <= 0:
        return list(files), []

    def key(path: str) -> str:
        return hashlib.sha1(os.path.relpath(path, root).encode("utf-8")).hexdigest()

    held = set(sorted(files, key=key)[:k])
    return [f for f in files if f not in held], sorted(held)


def evenly_spaced(items: list, limit: int) -> list:
    """At most `limit` items spread evenly over the list (first and last included); 0 = all."""
    if limit <= 0 or len(items) <= limit:
        return list(items)
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


@dataclass(frozen=True)
class FileSplit:
    """Files of one domain for training and validation, with where they came from."""

    train: list[str]
    val: list[str]
    train_source: str
    val_source: str  # a folder, "held-out subset of ...", or "none"
    ignored: int  # non-image files seen while listing


def split_files(root: Path, holdout: int, max_items: int = 0) -> FileSplit:
    """Train/val files for single-folder datasets (aligned, super_resolution, colorization)."""
    train_root = root / "train" if (root / "train").is_dir() else root
    val_root = _find_dir(root, VAL_DIR_NAMES)
    exclude = tuple(root / n for n in VAL_DIR_NAMES) if train_root == root else ()
    train, ignored = list_images(train_root, exclude)
    if not train:
        raise DataError(f"no training images under {train_root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return _split(train, ignored, train_root, val_root, holdout, max_items)


def split_unaligned(root: Path, holdout: int, max_items: int = 0) -> tuple[FileSplit, FileSplit]:
    """Train/val files of domains A and B (CycleGAN layout: trainA/ trainB/ [testA/ testB/])."""
    missing = [n for n in ("trainA", "trainB") if not (root / n).is_dir()]
    if missing:
        raise DataError(
            f"unaligned data needs {root}/trainA and {root}/trainB; missing: {', '.join(missing)}"
        )
    val_prefix = next(
        (p for p in ("val", "test") if (root / f"{p}A").is_dir() and (root / f"{p}B").is_dir()), None
    )
    splits = []
    for side in ("A", "B"):
        train_root = root / f"train{side}"
        train, ignored = list_images(train_root)
        if not train:
            raise DataError(f"no training images under {train_root}")
        val_root = root / f"{val_prefix}{side}" if val_prefix else None
        splits.append(_split(train, ignored, train_root, val_root, holdout, max_items))
    return splits[0], splits[1]


def _split(
    train: list[str], ignored: int, train_root: Path, val_root: Path | None, holdout: int, max_items: int
) -> FileSplit:
    """Validation from `val_root` when there is one, else held out of `train`; then `max_items`."""
    if val_root is not None:
        val, ignored_val = list_images(val_root)
        ignored += ignored_val
        val_source = str(val_root)
    else:
        train, val = holdout_split(train, train_root, holdout)
        val_source = f"held-out subset of {train_root} ({len(val)} files)" if val else "none"
    if max_items > 0:
        train = train[:max_items]
    return FileSplit(train, val, str(train_root), val_source, ignored)
