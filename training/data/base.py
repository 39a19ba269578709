"""Dataset plumbing shared by every data mode: per-item RNG keys and bad-file skipping.

Item keys. The training sampler yields `(index, epoch)` tuples instead of bare indices; a dataset
derives its augmentation RNG from `(seed, epoch, index)`. Augmentation is therefore a pure function
of the key: the same on every worker count, every rank layout and after a resume. Evaluation
datasets (`train=False`) take plain indices and use no randomness for geometry.

Bad files. `SkipBadFiles` wraps a dataset: when loading index i raises `BadImageError`, it tries
i+1, i+2, ... and returns the first good item, recording what it skipped in the item's "skipped"
field ("path<TAB>reason" lines). Loader workers are separate processes, so counts cannot live in
the dataset; the main process feeds each batch's "skipped" field to a `SkipTracker`, which warns
once per file and keeps the count.

The warning is a `BadFileWarning`, so callers can filter or record it as any Python warning, but
it is about the user's data, not pixforge's code: it prints as one `warning: skipping unusable
file PATH: REASON` line, without the default format's source location and the quoted
`tracker.record(...)` line of pixforge (`format_bad_file_warning`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from .files import BadImageError, DataError, read_rgb
from .transforms import TooSmallError

# After this many consecutive bad files we stop looking: the folder is mostly unusable.
MAX_CONSECUTIVE_BAD = 64


class BadFileWarning(UserWarning):
    """A training or validation file was skipped (unreadable, corrupt or too small)."""


_default_formatwarning = warnings.formatwarning


def format_bad_file_warning(message, category, filename, lineno, line=None) -> str:
    """`warnings.formatwarning` that prints a BadFileWarning as one plain line; any other warning
    goes to the format that was in place before this module was imported."""
    if isinstance(category, type) and issubclass(category, BadFileWarning):
        return f"warning: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


# Process-wide, but only BadFileWarning changes: the hook the warnings module offers for this.
warnings.formatwarning = format_bad_file_warning


@contextlib.contextmanager
def too_small_is_bad(path: str) -> Iterator[None]:
    """Report an image too small for its crop as a bad file (skipped and counted, see above)."""
    try:
        yield
    except TooSmallError as exc:
        raise BadImageError(path, str(exc)) from None


class KeyedDataset(Dataset):
    """Base class: `__getitem__((index, epoch))` -> `load(index, rng)`.

    Subclasses implement `__len__` and `load(index, rng)`, where `rng` is a numpy Generator for
    training items and None for evaluation items (deterministic centre crops, no flips).
    """

    def __init__(self, seed: int, train: bool):
        self.seed = int(seed)
        self.train = train
        # data.cache_images: keep every decoded image in memory (per loader worker) so an epoch
        # costs crops, not PNG decodes. Off by default: a large folder would not fit.
        self.cache_images = False
        self._decoded: dict[str, np.ndarray] = {}

    def read_image(self, path: str) -> np.ndarray:
        """uint8 RGB (H, W, 3) of `path`, decoded once when `cache_images` is on.

        Raises:
            BadImageError: the file cannot be decoded (never cached, so it is reported each time).
        """
        if not self.cache_images:
            return read_rgb(path)
        image = self._decoded.get(path)
        if image is None:
            # Crops and flips are views into this array: transforms must never write in place.
            image = self._decoded[path] = read_rgb(path)
        return image

    def rng_for(self, index: int, epoch: int) -> np.random.Generator | None:
        return np.random.default_rng([self.seed, epoch, index]) if self.train else None

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (int(key), 0)
        return self.load(int(index), self.rng_for(int(index), int(epoch)))

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        raise NotImplementedError

    @staticmethod
    def to_unit_tensor(img: np.ndarray) -> torch.Tensor:
        """uint8 HWC -> float CHW in [-1, 1] (the image_ops convention)."""
        from ..image_ops import hwc_uint8_to_unit_tensor

        return hwc_uint8_to_unit_tensor(np.ascontiguousarray(img))


class SkipBadFiles(Dataset):
    """Return the next readable item instead of failing on a bad file (see module docstring)."""

    def __init__(self, dataset: KeyedDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        # Forward attribute reads (train, files, ...) to the wrapped dataset.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (int(key), None)
        n = len(self.dataset)
        skipped: list[str] = []
        for attempt in range(min(n, MAX_CONSECUTIVE_BAD)):
            i = (int(index) + attempt) % n
            try:
                item = self.dataset[(i, epoch) if epoch is not None else i]
            except BadImageError as exc:
                skipped.append(f"{exc.path}\t{exc.reason}")
                continue
            item["skipped"] = "\n".join(skipped)
            return item
        first, _, reason = skipped[0].partition("\t") if skipped else (str(index), "", "")
        raise DataError(
            f"{len(skipped)} consecutive unusable files starting at {first}"
            + (f" ({reason})" if reason else "")
            + "; check the data folder"
        )


class SkipTracker:
    """Counts distinct skipped files across batches and warns once per file."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.events = 0

    def record(self, skipped_field) -> list[tuple[str, str]]:
        """Feed a batch's "skipped" field (a str or list of str); returns newly seen (path, reason)."""
        entries = [skipped_field] if isinstance(skipped_field, str) else list(skipped_field or [])
        new = []
        for entry in entries:
            for line in filter(None, entry.split("\n")):
                path, _, reason = line.partition("\t")
                self.events += 1
                if path not in self.files:
                    self.files[path] = reason
                    new.append((path, reason))
                    warnings.warn(f"skipping unusable file {path}: {reason}", BadFileWarning, stacklevel=2)
        return new

    @property
    def count(self) -> int:
        return len(self.files)
