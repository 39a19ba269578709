"""`aligned` datasets: one file holds the pair side by side, A | B (pix2pix facades, maps, ...).

The left half is A, the right half is B; `direction` says which is the input (facades labels ->
photo is `BtoA`). Both halves get the same crop and flip.

A folder whose files are mostly not pairs (a photo folder, a CycleGAN trainA/trainB set) is
refused when the dataset is built (see `ab_layout`): split down the middle, its photos would train
a model on half-photos without any error. A stray file of the wrong shape in a folder of pairs is
a bad file, skipped and counted like an unreadable one.
"""

from __future__ import annotations

import numpy as np

from .ab_layout import common_folder, is_pair_size, layout_problem, pair_rule, unaligned_folders
from .base import KeyedDataset, too_small_is_bad
from .files import BadImageError, DataError
from .transforms import Geometry


def check_pair_folder(files: list[str]) -> None:
    """Refuse `files` when most of them are not side-by-side A|B pairs.

    Raises:
        DataError: one line naming the folder, how many files are not pairs and what to do.
    """
    problem = layout_problem(files)
    if problem is None:
        return
    unaligned = unaligned_folders(common_folder(files))
    if unaligned:
        advice = f"it holds {unaligned}: for unpaired data set data.mode: unaligned"
    else:
        advice = "data.mode aligned needs A|B pair files; point --data at such a folder"
    raise DataError(f"{problem}; {advice}")


class AlignedDataset(KeyedDataset):
    """Items: {"input", "target"} float (3, H, W) in [-1, 1], and "path".

    Raises:
        DataError: most `files` are not A|B pairs (checked once, from their headers).
    """

    def __init__(self, files: list[str], geometry: Geometry, *, direction: str, seed: int, train: bool):
        super().__init__(seed, train)
        check_pair_folder(files)
        self.files = list(files)
        self.geometry = geometry
        self.direction = direction

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        path = self.files[index]
        img = self.read_image(path)
        height, width = img.shape[:2]
        if not is_pair_size(width, height):
            raise BadImageError(path, f"{width}x{height} is not a side-by-side A|B pair ({pair_rule()})")
        half = width // 2
        with too_small_is_bad(path):
            a, b = self.geometry.apply([img[:, :half], img[:, half : 2 * half]], rng)
        src, dst = (a, b) if self.direction == "AtoB" else (b, a)
        return {"input": self.to_unit_tensor(src), "target": self.to_unit_tensor(dst), "path": path}
