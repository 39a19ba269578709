"""`aligned` datasets: one file holds the pair side by side, A | B (pix2pix facades, maps, ...).

The left half is A, the right half is B; `direction` says which is the input (facades
labels -> photo is `BtoA`). Both halves get the same crop and flip.
"""

from __future__ import annotations

import numpy as np

from .base import KeyedDataset, too_small_is_bad
from .files import BadImageError
from .transforms import Geometry


class AlignedDataset(KeyedDataset):
    """Items: {"input", "target"} float (3, H, W) in [-1, 1], and "path"."""

    def __init__(self, files: list[str], geometry: Geometry, *, direction: str, seed: int, train: bool):
        super().__init__(seed, train)
        self.files = list(files)
        self.geometry = geometry
        self.direction = direction

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        path = self.files[index]
        img = self.read_image(path)
        half = img.shape[1] // 2
        if half < 1:
            raise BadImageError(path, f"{img.shape[1]}x{img.shape[0]} cannot be split into A|B halves")
        with too_small_is_bad(path):
            a, b = self.geometry.apply([img[:, :half], img[:, half : 2 * half]], rng)
        src, dst = (a, b) if self.direction == "AtoB" else (b, a)
        return {"input": self.to_unit_tensor(src), "target": self.to_unit_tensor(dst), "path": path}
