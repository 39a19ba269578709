"""CycleGAN image history buffer (Shrivastava et al.): D sees a mix of current and past fakes.

Unlike junyanz's pool (global `random`), the pool owns a seeded torch.Generator, and `state_dict()`
captures both the stored images and that RNG, so a resumed run draws exactly the same mix.
"""

from __future__ import annotations

from typing import Any

import torch


class ImagePool:
    """Buffer of up to `size` generated images; `size=0` disables it (query returns its input)."""

    def __init__(self, size: int = 50, seed: int = 0):
        if size < 0:
            raise ValueError(f"image pool size must be >= 0, got {size}")
        self.size = size
        self.images: list[torch.Tensor] = []
        self._rng = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch the same size as `images`: while the pool fills, the new images; after,
        each slot is with probability 1/2 a random stored image (swapped for the new one)."""
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
                continue
            if torch.rand((), generator=self._rng).item() > 0.5:
                idx = int(torch.randint(0, self.size, (), generator=self._rng))
                old = self.images[idx]
                self.images[idx] = image.clone()
                out.append(old.to(image.device))
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        """Plain-type state (CPU tensors) for `torch.save(..., weights_only=True)`-safe resume."""
        return {
            "size": self.size,
            "images": [img.detach().cpu().clone() for img in self.images],
            "rng_state": self._rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore images and RNG from `state_dict()` (images stay on CPU until returned)."""
        if int(state["size"]) != self.size:
            raise ValueError(f"image pool size mismatch: state has {state['size']}, pool has {self.size}")
        images = list(state["images"])
        if len(images) > self.size:
            raise ValueError(f"image pool state holds {len(images)} images for size {self.size}")
        self.images = [img.clone() for img in images]
        self._rng.set_state(state["rng_state"])
