"""Evaluation image sets: a data folder's images grouped per sub-folder, and a tolerant loader.

`sr/test` holding `Set5/`, `Set14/`, `BSD100/` gives one group per sub-folder (each searched
recursively), so a model card can quote each benchmark; a flat folder is one group named "all".
Images lying directly in a folder that also has sub-folders form a group named ".".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.files import IMAGE_EXTENSIONS, BadImageError, evenly_spaced, list_images, read_rgb
from .errors import EvalError


def image_groups(root: Path, max_images: int = 0) -> list[tuple[str, list[str]]]:
    """[(group name, sorted image paths)] of `root`; at most `max_images` per group (0 = all).

    Raises:
        EvalError: `root` is not a folder or holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise EvalError(f"data folder {root} does not exist or is not a folder")
    top = sorted(
        str(p)
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_EXTENSIONS)
    )
    groups = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files, _ = list_images(sub)
        if files:
            groups.append((sub.name, files))
    if top:
        groups.insert(0, ("." if groups else "all", top))
    if not groups:
        raise EvalError(f"no images under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return [(name, evenly_spaced(files, max_images)) for name, files in groups]


def domain_files(folder: Path) -> list[str]:
    """Every image under `folder` (recursive, sorted); [] when the folder does not exist."""
    return list_images(folder)[0] if folder.is_dir() else []


def load_images(paths: Iterable[str], skipped: list[dict]) -> Iterator[tuple[str, np.ndarray]]:
    """(path, uint8 RGB) per readable file; unreadable ones are appended to `skipped` with a reason."""
    for path in paths:
        try:
            yield path, read_rgb(path)
        except BadImageError as exc:
            skipped.append({"file": path, "reason": exc.reason})


def progress(iterable: Iterable, desc: str, total: int | None = None) -> Iterable:
    """A tqdm bar on stderr (shown only when stderr is a terminal)."""
    return tqdm(iterable, desc=desc, total=total, unit="img", leave=False, disable=None, dynamic_ncols=True)
