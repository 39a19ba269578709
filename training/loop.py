"""Training entry point: set up the process (device, DDP, seeds), the run directory and logs,
then hand over to the loop of the configured model (loop_pix2pix / loop_cyclegan).

Usable from Python as well as from `pixforge train`:

    cfg = load_config("training/configs/facades.yaml", ["train.batch_size=4"])
    result = train(cfg, "/data/facades", max_steps=100)
    print(result.checkpoint)
"""

from __future__ import annotations

from pathlib import Path

from .config import ExperimentConfig
from .init_from import initial_generators
from .loop_cyclegan import train_cyclegan
from .loop_pix2pix import train_pix2pix
from .run_context import RunContext, TrainResult
from .run_dir import discard_unstarted_run, open_run_dir
from .run_log import RunLog
from .runtime import StopRequest, setup_runtime, teardown_runtime

LOOPS = {"pix2pix": train_pix2pix, "cyclegan": train_cyclegan}


def train(
    cfg: ExperimentConfig,
    data_root: str | Path,
    *,
    run_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    run_name: str = "run",
    max_steps: int | None = None,
    resume: bool = False,
    on_start=None,
) -> TrainResult:
    """Train `cfg` on the data folder `data_root`.

    Args:
        run_dir: the run directory; None = a new `runs_root/<run_name>-NNN`.
        max_steps: stop after this many steps in total (the schedule still spans the full run).
        resume: continue `run_dir` from its resume state.
        on_start: optional callback(RunContext, Runtime) called on every rank once the run
            directory exists (the CLI prints where things go).

    Returns:
        TrainResult (checkpoint paths, final metrics, step counts).

    Raises:
        ExperimentConfigError / DataError / InitFromError: bad settings, data or train.init_from
            file (nothing is trained). A run directory this call created is removed again when
            the run fails before its first checkpoint; a resume that fails leaves its run as it was.
    """
    t = cfg.train
    rt = setup_runtime(t.device, t.amp, t.channels_last, t.cudnn_benchmark, t.deterministic, t.seed)
    log, path, fresh = None, None, None
    try:
        # Before the run directory exists: a wrong init_from file trains nothing and leaves nothing.
        init = {} if resume else initial_generators(cfg)
        path, fresh = open_run_dir(
            rt, cfg, Path(run_dir) if run_dir else None, Path(runs_root), run_name, resume
        )
        log = RunLog(path, enabled=rt.is_main, tensorboard=t.tensorboard)
        with StopRequest() as stop:
            ctx = RunContext(
                cfg=cfg, rt=rt, run_dir=path, data_root=Path(data_root), log=log, stop=stop, init=init
            )
            if on_start is not None:
                on_start(ctx)
            return LOOPS[cfg.model](ctx, max_steps=max_steps, resume=resume)
    except BaseException:
        # Data, settings or Ctrl-C before the first checkpoint: what this call added to the run
        # directory holds nothing to resume and would only block the same --out on the next try.
        if log is not None:
            log.close()  # the tensorboard writer keeps files open in it
            log = None
        if fresh is not None:
            discard_unstarted_run(rt, path, fresh)
        raise
    finally:
        if log is not None:
            log.close()
        teardown_runtime(rt)
