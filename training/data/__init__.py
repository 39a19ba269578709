"""Training data: file discovery and splits, the four dataset kinds, bad-file skipping, loaders.

Entry point: `build_datasets(data_cfg, root, size_multiple=..., seed=...)` returns the training
dataset (wrapped in `SkipBadFiles`) and the validation dataset, plus a human summary of where the
files came from. Folder conventions are documented in `files.py` and docs/training.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .aligned import AlignedDataset
from .base import BadFileWarning, KeyedDataset, SkipBadFiles, SkipTracker
from .colorization import ColorizationDataset
from .files import BadImageError, DataError, evenly_spaced, split_files, split_unaligned
from .loader import EpochSampler, make_train_loader
from .super_resolution import SuperResolutionDataset, downscale
from .transforms import Geometry
from .unaligned import UnalignedDataset

__all__ = [
    "BadFileWarning",
    "BadImageError",
    "DataError",
    "DataBundle",
    "EpochSampler",
    "KeyedDataset",
    "SkipBadFiles",
    "SkipTracker",
    "build_datasets",
    "downscale",
    "load_eval_items",
    "make_train_loader",
]


@dataclass
class DataBundle:
    """What the loop needs from the data folder."""

    train: SkipBadFiles
    val: SkipBadFiles | None
    summary: list[str]  # human lines: sources and counts


def build_datasets(cfg, root: str | Path, *, size_multiple: int, seed: int) -> DataBundle:
    """Build train/validation datasets for `cfg.mode` from the folder `root`.

    Args:
        cfg: the DataConfig.
        root: the `--data` folder.
        size_multiple: the generator's input size multiple (crops/whole images are cut to it).
        seed: the training seed (augmentation RNG keys derive from it).

    Raises:
        DataError: the folder is missing, has no images, or lacks the layout `cfg.mode` needs.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    geometry = Geometry(
        cfg.preprocess, cfg.load_size, cfg.crop_size, cfg.flip, size_multiple, cfg.scale_min, cfg.scale_max
    )
    if cfg.mode == "unaligned":
        split_a, split_b = split_unaligned(root, cfg.val_holdout, cfg.max_items)
        train = UnalignedDataset(split_a.train, split_b.train, geometry, seed=seed, train=True)
        val_a = evenly_spaced(split_a.val, cfg.val_max_images)
        val_b = evenly_spaced(split_b.val, cfg.val_max_images)
        val = UnalignedDataset(val_a, val_b, geometry, seed=seed, train=False) if val_a and val_b else None
        summary = [
            f"train A: {len(split_a.train)} files from {split_a.train_source}",
            f"train B: {len(split_b.train)} files from {split_b.train_source}",
            f"val A: {len(val_a)} of {len(split_a.val)} files from {split_a.val_source}",
            f"val B: {len(val_b)} of {len(split_b.val)} files from {split_b.val_source}",
        ]
        ignored = split_a.ignored + split_b.ignored
    else:
        split = split_files(root, cfg.val_holdout, cfg.max_items)
        val_files = evenly_spaced(split.val, cfg.val_max_images)
        make: Callable[..., KeyedDataset]
        if cfg.mode == "aligned":
            make = functools.partial(AlignedDataset, geometry=geometry, direction=cfg.direction, seed=seed)
        elif cfg.mode == "colorization":
            make = functools.partial(ColorizationDataset, geometry=geometry, seed=seed)
        elif cfg.mode == "super_resolution":
            make = functools.partial(
                SuperResolutionDataset,
                scale=cfg.scale,
                crop_size=cfg.crop_size,
                flip=cfg.flip,
                rot90=cfg.rot90,
                lr_resize=cfg.lr_resize,
                size_multiple=size_multiple,
                seed=seed,
                val_size=cfg.val_size,
                blur_sigma=cfg.blur_sigma,
                noise_sigma=cfg.noise_sigma,
                jpeg_quality=cfg.jpeg_quality,
                degrade_prob=cfg.degrade_prob,
            )
        else:
            raise DataError(f"unknown data mode {cfg.mode!r}")
        train = make(split.train, train=True)
        val = make(val_files, train=False) if val_files else None
        summary = [
            f"train: {len(split.train)} files from {split.train_source}",
            f"val: {len(val_files)} of {len(split.val)} files from {split.val_source}",
        ]
        ignored = split.ignored
    train.cache_images = cfg.cache_images
    if ignored:
        summary.append(f"ignored {ignored} non-image file(s) (README, text, ...)")
    return DataBundle(SkipBadFiles(train), SkipBadFiles(val) if val is not None else None, summary)


def load_eval_items(dataset: SkipBadFiles | None, tracker: SkipTracker | None = None) -> list[dict]:
    """Load every item of an evaluation dataset once (deterministic, so it is cached by the loop).

    Bad files are skipped (recorded in `tracker`); an item reached twice through skipping is kept once.
    """
    if dataset is None:
        return []
    items, seen = [], set()
    for i in range(len(dataset)):
        try:
            item = dataset[i]
        except DataError:  # the rest of the folder is unusable: evaluate what we have
            break
        if tracker is not None:
            tracker.record(item.get("skipped", ""))
        key = item.get("path") or (item.get("path_a"), item.get("path_b"))
        if key in seen:
            continue
        seen.add(key)
        items.append(item)
    return items
