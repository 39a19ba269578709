"""What a loop reads: the training loader with its resumable sampler, the cached validation
items, the run length, and the optional FID scorer.

The datasets themselves live in `training/data/`; this module sizes them for a run (batch size,
world size, `train.steps` or `train.n_epochs`) and checks they can fill it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import check_crop_multiple
from .data import DataError, EpochSampler, SkipTracker, build_datasets, load_eval_items, make_train_loader
from .metrics import FIDScorer
from .run_context import RunContext


@dataclass
class TrainData:
    """The loader over the training set and what the loop needs to know about it."""

    loader: torch.utils.data.DataLoader
    sampler: EpochSampler
    val_items: list[dict]  # rank 0 only (empty elsewhere): validation runs on rank 0
    steps_per_epoch: int
    total_steps: int
    tracker: SkipTracker
    summary: list[str]


def build_train_data(ctx: RunContext, size_multiple: int) -> TrainData:
    """Datasets, the resumable sampler/loader, cached validation items and the run length.

    Raises:
        ExperimentConfigError: a crop size the generator cannot take.
        DataError: no usable data, or fewer images than one batch.
    """
    cfg, rt = ctx.cfg, ctx.rt
    data_cfg, t = cfg.data, cfg.train
    # Config validation said this already from the generator config; this is the built one's word
    # (and covers a config made without validation, e.g. by dataclasses.replace).
    check_crop_multiple(cfg, size_multiple)
    bundle = build_datasets(data_cfg, ctx.data_root, size_multiple=size_multiple, seed=t.seed)
    sampler = EpochSampler(len(bundle.train), t.batch_size, t.seed, rt.rank, rt.world_size)
    steps_per_epoch = sampler.batches_per_epoch()
    if steps_per_epoch == 0:
        raise DataError(
            f"{len(bundle.train)} training images cannot fill one batch of "
            f"{t.batch_size} x {rt.world_size} process(es); lower train.batch_size"
        )
    loader = make_train_loader(bundle.train, sampler, t.num_workers, pin_memory=rt.device.type == "cuda")
    tracker = SkipTracker()
    val_items = load_eval_items(bundle.val, tracker) if rt.is_main else []
    total = t.steps if t.steps > 0 else t.n_epochs * steps_per_epoch
    return TrainData(loader, sampler, val_items, steps_per_epoch, total, tracker, bundle.summary)


def make_fid(ctx: RunContext) -> FIDScorer | None:
    """The FID scorer when train.fid_inception_weights is set (rank 0 only)."""
    path = ctx.cfg.train.fid_inception_weights
    if not path or not ctx.rt.is_main:
        return None
    return FIDScorer(path, device=str(ctx.rt.device))
