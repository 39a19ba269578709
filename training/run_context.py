"""What a training loop is given (`RunContext`) and what it hands back (`TrainResult`).

`loop.train` builds the context once the process runtime, the run directory and the run log
exist; `loop_pix2pix.train_pix2pix` and `loop_cyclegan.train_cyclegan` take it and return the
result that `pixforge train` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import ExperimentConfig
from .init_from import SourceGenerator
from .run_log import RunLog
from .runtime import Runtime, StopRequest


@dataclass
class RunContext:
    """Everything a loop needs besides its networks."""

    cfg: ExperimentConfig
    rt: Runtime
    run_dir: Path
    data_root: Path
    log: RunLog
    stop: StopRequest = field(default_factory=StopRequest)
    # fine-tuning: the weights each named generator starts from (init_from.initial_generators;
    # empty on --resume, where the resume state has them; init_from.start_generator takes each out)
    init: dict[str, SourceGenerator] = field(default_factory=dict)

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    checkpoint: Path  # the generator checkpoint (G_A for CycleGAN)
    other_checkpoints: dict[str, Path]  # e.g. {"G_B": path}
    step: int
    total_steps: int
    metrics: dict[str, float]
    skipped_files: int
    data_summary: list[str] = field(default_factory=list)
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM after a whole step (resumable)
    # why no validation ran ("train.val_every is 0" / "no validation images"); None = validation on
    validation_off: str | None = None
