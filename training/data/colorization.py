"""`colorization` datasets: any folder of colour photos; the model maps L to ab (CIE Lab).

The conversion is `pixforge.training.image_ops.rgb_to_lab_pair` — the same function the export
wrapper puts into the ONNX graph — so input scaling (L/50 - 1) and target scaling (ab/110) cannot
drift between training and serving. Grey photos are kept (their ab target is ~0).
"""

from __future__ import annotations

import numpy as np
import torch

from ..image_ops import rgb_to_lab_pair, uint8_to_float01
from .base import KeyedDataset, too_small_is_bad
from .transforms import Geometry


class ColorizationDataset(KeyedDataset):
    """Items: {"input": L (1, H, W), "target": ab (2, H, W)} and "path"."""

    def __init__(self, files: list[str], geometry: Geometry, *, seed: int, train: bool):
        super().__init__(seed, train)
        self.files = list(files)
        self.geometry = geometry

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        path = self.files[index]
        with too_small_is_bad(path):
            (img,) = self.geometry.apply([self.read_image(path)], rng)
        rgb01 = uint8_to_float01(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
        l_input, ab_target = rgb_to_lab_pair(rgb01)
        return {"input": l_input.contiguous(), "target": ab_target.contiguous(), "path": path}
