"""Dispatch one evaluation to the task module that the model's contract names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import EvalError
from .report import TaskReport
from .runner import Runner


@dataclass(frozen=True)
class EvalOptions:
    """Settings of one evaluation.

    Attributes:
        max_images: at most this many images per set / direction (0 = all), spread evenly.
        source: style translation: the model's source domain "A" or "B" (None: from its metadata).
        classifier_steps: style translation: domain-classifier training steps.
        samples: rows of samples.png.
        seed: style translation: classifier seed.
    """

    max_images: int = 0
    source: str | None = None
    classifier_steps: int = 300
    samples: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_images < 0:
            raise EvalError(f"--max-images must be >= 0, got {self.max_images}")
        if self.classifier_steps < 1:
            raise EvalError(f"--classifier-steps must be >= 1, got {self.classifier_steps}")
        if self.source is not None and self.source.upper() not in ("A", "B"):
            raise EvalError(f"--source must be A or B, got {self.source!r}")


def evaluate(
    runner: Runner, data: str | Path, options: EvalOptions = EvalOptions(), reverse: Runner | None = None
) -> TaskReport:
    """Run the task's evaluation of `runner`'s model on `data`.

    Raises:
        EvalError: bad data layout, or a reverse model given for a task that has none.
    """
    task = runner.info.task
    data = Path(data)
    if reverse is not None and task != "style_translation":
        raise EvalError(
            f"--reverse-model applies to style_translation models; {runner.info.name!r} is {task}"
        )
    if task == "super_resolution":
        from .super_resolution import evaluate_super_resolution

        return evaluate_super_resolution(runner, data, options.max_images, options.samples)
    if task == "colorization":
        from .colorization import evaluate_colorization

        return evaluate_colorization(runner, data, options.max_images, options.samples)
    if task == "paired_translation":
        from .paired import evaluate_paired

        return evaluate_paired(runner, data, options.max_images, options.samples)
    if task == "style_translation":
        from .style_translation import evaluate_style

        return evaluate_style(
            runner,
            data,
            source=options.source,
            reverse=reverse,
            max_images=options.max_images,
            classifier_steps=options.classifier_steps,
            seed=options.seed,
            n_samples=options.samples,
        )
    raise EvalError(f"model {runner.info.name!r} has task {task!r}, which pixforge eval cannot measure")
