"""A tiny CNN that tells domain A from domain B: the judge of unpaired translation without references.

Images are resized to 64x64; the network is three strided 3x3 convolutions, global average
pooling and a linear layer (about 25k parameters), trained on CPU with one thread, Adam, balanced
batches and random horizontal flips, from a fixed seed (the global torch RNG is left untouched), so
the same data give the same classifier. A few hundred steps take seconds. Its held-out accuracy
must be reported next to any transfer rate it produces: a classifier that cannot separate the real
domains says nothing about translated images.
"""

from __future__ import annotations

import contextlib

import cv2
import numpy as np
import torch
from torch import nn

SIZE = 64  # classifier input edge in pixels


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 RGB images of any size -> (N, 3, SIZE, SIZE) float in [-1, 1]."""
    small = [
        cv2.resize(np.ascontiguousarray(img), (SIZE, SIZE), interpolation=cv2.INTER_AREA) for img in images
    ]
    return torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _net() -> nn.Module:
    layers: list[nn.Module] = []
    channels = 3
    for width in (16, 32, 64):
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 1))


@contextlib.contextmanager
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class DomainClassifier:
    """Binary classifier: probability that an image belongs to domain B.

    Args:
        steps: optimisation steps.
        batch_size: images per step (half from each domain).
        seed: weight init and batch sampling seed.
    """

    def __init__(self, steps: int = 300, batch_size: int = 32, seed: int = 0, lr: float = 2e-3):
        self.steps = steps
        self.batch_size = batch_size
        self.seed = seed
        self.lr = lr
        self.net: nn.Module | None = None

    def fit(self, images_a: list[np.ndarray], images_b: list[np.ndarray]) -> DomainClassifier:
        """Train on two non-empty lists of uint8 RGB images (A = label 0, B = label 1)."""
        xa, xb = to_tensor(images_a), to_tensor(images_b)
        half = max(1, self.batch_size // 2)
        with _single_thread(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            net = _net()
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)
            labels = torch.cat([torch.zeros(half, 1), torch.ones(half, 1)])
            loss_fn = nn.BCEWithLogitsLoss()
            net.train()
            for _ in range(self.steps):
                ia = torch.randint(len(xa), (half,), generator=gen)
                ib = torch.randint(len(xb), (half,), generator=gen)
                x = torch.cat([xa[ia], xb[ib]])
                flip = torch.rand(len(x), generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
                loss = loss_fn(net(x), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.net = net.eval()
        return self

    def prob_b(self, images: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """P(domain B) per image, shape (N,)."""
        if self.net is None:
            raise RuntimeError("DomainClassifier.prob_b called before fit")
        if not images:
            return np.zeros(0)
        out = []
        with _single_thread(), torch.no_grad():
            for i in range(0, len(images), batch_size):
                out.append(torch.sigmoid(self.net(to_tensor(images[i : i + batch_size]))).flatten().numpy())
        return np.concatenate(out).astype(np.float64)
