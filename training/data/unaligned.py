"""`unaligned` datasets (CycleGAN): two folders of unpaired images, domain A and domain B.

Training items pair A file `index % len(A)` with a B file drawn from the item's RNG (junyanz's
default, unpaired sampling); evaluation items pair A[i % len(A)] with B[i % len(B)]. The length is
max(len(A), len(B)), like junyanz.
"""

from __future__ import annotations

import numpy as np

from .base import KeyedDataset, too_small_is_bad
from .transforms import Geometry


class UnalignedDataset(KeyedDataset):
    """Items: {"real_a", "real_b"} float (3, H, W) in [-1, 1], "path_a", "path_b"."""

    def __init__(self, files_a: list[str], files_b: list[str], geometry: Geometry, *, seed: int, train: bool):
        super().__init__(seed, train)
        if not files_a or not files_b:
            raise ValueError("both domains need at least one file")
        self.files_a = list(files_a)
        self.files_b = list(files_b)
        self.geometry = geometry

    def __len__(self) -> int:
        return max(len(self.files_a), len(self.files_b))

    def _one(self, path: str, rng: np.random.Generator | None):
        with too_small_is_bad(path):
            (img,) = self.geometry.apply([self.read_image(path)], rng)
        return self.to_unit_tensor(img)

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        path_a = self.files_a[index % len(self.files_a)]
        if rng is not None:
            path_b = self.files_b[int(rng.integers(0, len(self.files_b)))]
        else:
            path_b = self.files_b[index % len(self.files_b)]
        return {
            "real_a": self._one(path_a, rng),
            "real_b": self._one(path_b, rng),
            "path_a": path_a,
            "path_b": path_b,
        }
