"""The per-image loop of the reference-based tasks (super-resolution, colourisation, paired).

Every readable image of every group (see files.image_groups) goes through the task's `measure`;
each group's records become one table row, all groups together an extra "all" row. An image the
task cannot score (MetricError) or cannot read is skipped with its reason, never fatal; `measure`
returns None for an image the task leaves out on purpose (counted in `left_out`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..metrics import MetricError
from .files import image_groups, load_images, progress
from .report import Column, SampleCollector, TaskReport

# image -> (metrics record, sample row of images) or None to leave the image out
Measure = Callable[[np.ndarray], "tuple[dict, list[np.ndarray]] | None"]
# (row name, records) -> table row
RowMaker = Callable[[str, list[dict]], dict]
# a group's files -> None, or raises EvalError when the folder is not laid out as the task needs
FolderCheck = Callable[[list[str]], None]


@dataclass
class GroupResults:
    """What the loop measured: table rows, per-image records, skipped files, sample rows and how
    many images `measure` left out."""

    rows: list[dict]
    per_image: list[dict]
    skipped: list[dict]
    samples: list[list[np.ndarray]]
    left_out: int = 0

    @property
    def summary(self) -> dict:
        """The last row ("all" when there are several groups) without its name."""
        return {k: v for k, v in self.rows[-1].items() if k != "name"} if self.rows else {}

    def counts(self, **more: int) -> dict[str, int]:
        """Images measured and skipped, plus task-specific counts."""
        return {"images": len(self.per_image), **more, "skipped": len(self.skipped)}

    def skipped_notes(self) -> list[str]:
        """A report note about skipped files, if any."""
        if not self.skipped:
            return []
        return [
            f"{len(self.skipped)} image(s) skipped "
            "(unreadable or too small; listed in results.json with --out)"
        ]

    def extra(self) -> dict:
        """The skipped files with their reasons, for results.json."""
        return {"skipped": self.skipped} if self.skipped else {}

    def report(
        self,
        task: str,
        columns: list[Column],
        sample_labels: list[str],
        notes: list[str],
        counts: dict[str, int] | None = None,
        extra: dict | None = None,
    ) -> TaskReport:
        """The task's report of these results: the task's notes, then the skipped-files note;
        `counts` defaults to `self.counts()`; `extra` gets the skipped files added."""
        return TaskReport(
            task=task,
            columns=columns,
            rows=self.rows,
            summary=self.summary,
            per_image=self.per_image,
            samples=self.samples,
            sample_labels=sample_labels,
            counts=self.counts() if counts is None else counts,
            notes=[*notes, *self.skipped_notes()],
            extra={**(extra or {}), **self.extra()},
        )


def measure_groups(
    data: Path,
    max_images: int,
    n_samples: int,
    measure: Measure,
    make_row: RowMaker,
    check_layout: FolderCheck | None = None,
) -> GroupResults:
    """Run `measure` over every image group of `data` (at most `max_images` per group, 0 = all).

    `check_layout` sees every group's files before any image is measured, so a wrongly laid out
    folder fails at once, not after the model has run over the groups before it.
    """
    groups = image_groups(data, max_images)
    if check_layout is not None:
        for _, files in groups:
            check_layout(files)
    per_image: list[dict] = []
    rows: list[dict] = []
    skipped: list[dict] = []
    samples = SampleCollector(n_samples)
    left_out = 0
    for name, files in groups:
        records: list[dict] = []
        for path, image in progress(load_images(files, skipped), name, len(files)):
            try:
                result = measure(image)
            except MetricError as exc:
                skipped.append({"file": path, "reason": str(exc)})
                continue
            if result is None:
                left_out += 1
                continue
            record, sample = result
            records.append({"set": name, "file": Path(path).name, **record})
            samples.add(sample, first=len(records) == 1)
        if records:
            rows.append(make_row(name, records))
        per_image.extend(records)
    if len(rows) > 1:
        rows.append(make_row("all", per_image))
    return GroupResults(rows, per_image, skipped, samples.rows(), left_out)
