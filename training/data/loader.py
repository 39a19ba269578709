"""Resumable, rank-sharded data loading.

`EpochSampler` is a DistributedSampler that also knows where it is: the order of epoch `e` is a
permutation seeded by (seed, e), split across ranks like DistributedSampler (padded so each rank
gets the same count), and `set_epoch(e, start_batch)` starts mid-epoch. It yields `(index,
epoch)` keys (see base.py) so augmentation is keyed too. Together with checkpointed (epoch,
batch position) this makes a resumed run read exactly the batches the uninterrupted run would.

The DataLoader gets its own `torch.Generator`: creating an iterator then never draws from the
global torch RNG (it otherwise does, once per epoch, for worker seeds), so resume and the global
RNG state stay in lock-step.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


# eq=False: a stateful sampler (set_epoch moves it), compared and hashed by identity. Sampler has
# no __init__ of its own to call.
@dataclass(eq=False)
class EpochSampler(Sampler):
    """Seeded per-epoch permutation, sharded by rank, startable at a batch offset."""

    n: int
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True
    epoch: int = field(init=False, default=0)
    start_batch: int = field(init=False, default=0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def rank_indices(self, epoch: int) -> list[int]:
        """This rank's indices for `epoch` (padded by wrapping so every rank gets the same count)."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n).tolist()
        else:
            order = list(range(self.n))
        per_rank = -(-self.n // self.world_size)
        total = per_rank * self.world_size
        order = (order * (-(-total // max(1, len(order)))))[:total]
        return order[self.rank : total : self.world_size]

    def batches_per_epoch(self) -> int:
        return (-(-self.n // self.world_size)) // self.batch_size

    def __iter__(self):
        # Only whole batches (drop_last): every step sees batch_size images on every rank.
        indices = self.rank_indices(self.epoch)[: self.batches_per_epoch() * self.batch_size]
        for idx in indices[self.start_batch * self.batch_size :]:
            yield (idx, self.epoch)

    def __len__(self) -> int:
        return max(0, (self.batches_per_epoch() - self.start_batch) * self.batch_size)


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: workers keep serving while the main process finishes
    # its step and writes a resumable snapshot (runtime.StopRequest).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_train_loader(
    dataset: Dataset, sampler: EpochSampler, num_workers: int, pin_memory: bool
) -> DataLoader:
    """A DataLoader over `sampler` (keep it: call `sampler.set_epoch` before each `iter()`)."""
    return DataLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=_ignore_sigint,
        generator=torch.Generator(),
    )
