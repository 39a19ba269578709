"""`pixforge train CONFIG.yaml --data DIR [--out RUN_DIR] [--max-steps N] [--resume] [--set k=v] [--dry-run]`.

Parses the config once (YAML + overrides), validates it, trains, and prints where the samples,
logs and checkpoints are. The LAST line printed is exactly `checkpoint: PATH` (the generator
checkpoint `pixforge export` takes). Bad input (config key, missing or empty data folder) prints
one `pixforge train: error: ...` line and exits 2, without a traceback (line breaks in a message
are folded into spaces).

Run directories default to `runs/<config-stem>-NNN` under the current directory. `--resume`
continues `--out` (or, without it, the newest `runs/<config-stem>-NNN`) from its resume state,
using that run's saved config.json; `--set` overrides still apply on top and are reported.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pixforge.errors import PixforgeError, one_line

EXIT_BAD_INPUT = 2


def _err(message: str) -> int:
    print(f"pixforge train: error: {one_line(message)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _asked_for_tensorboard(args) -> bool:
    """Whether `train.tensorboard` was set explicitly (in the YAML file or by --set), not defaulted."""
    if any(text.split("=", 1)[0].strip() == "train.tensorboard" for text in args.set):
        return True
    from .config import load_yaml

    try:
        train = load_yaml(args.config).get("train")
    except PixforgeError:
        return False
    return isinstance(train, dict) and "tensorboard" in train


def _resolve(args):
    """(config, run_dir or None, run_name) from the CLI arguments; ExperimentConfigError/DataError if bad."""
    from .config import config_to_dict, load_config, load_config_json
    from .data import DataError
    from .run_dir import latest_run_dir

    stem = Path(args.config).stem
    run_dir = Path(args.out) if args.out else None
    if run_dir is not None:
        # Said before any work: otherwise a file in the way surfaces as an OSError once the run
        # directory is created, after the config and data have been read.
        there = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
        if there is not None and not there.is_dir():
            raise DataError(f"--out: {there} is a file, not a folder")
    if not args.resume:
        return load_config(args.config, args.set), run_dir, stem
    if run_dir is None:
        run_dir = latest_run_dir(Path("runs"), stem)
        if run_dir is None:
            raise DataError(f"--resume: no runs/{stem}-NNN directory to continue; pass --out RUN_DIR")
    saved = run_dir / "config.json"
    if not saved.is_file():
        raise DataError(f"--resume: {saved} not found")
    cfg = load_config_json(saved, args.set)
    if args.set:
        base = config_to_dict(load_config_json(saved))
        for line in _changed_keys(base, config_to_dict(cfg)):
            print(f"note: resuming with a changed setting: {line}", file=sys.stderr)
    return cfg, run_dir, stem


def run(args) -> int:
    """Entry point of `pixforge train` (argparse namespace from pixforge.cli)."""
    import torch  # noqa: F401  (fail early with the CLI's "needs the train extra" message)

    from .config import config_to_dict
    from .data import DataError, build_datasets
    from .loop import train
    from .meters import format_metrics

    if args.max_steps is not None and args.max_steps < 1:
        return _err("--max-steps must be >= 1")
    try:
        cfg, run_dir, stem = _resolve(args)
        if not Path(args.data).is_dir():
            raise DataError(f"--data: folder not found: {args.data}")
        if args.dry_run:
            from .init_from import initial_generators
            from .registry import build_generator

            multiple = build_generator(cfg.generator).size_multiple
            bundle = build_datasets(cfg.data, args.data, size_multiple=multiple, seed=cfg.train.seed)
            init = {} if args.resume else initial_generators(cfg)
            print(json.dumps(config_to_dict(cfg), indent=2))
            for line in bundle.summary:
                print(f"data: {line}")
            for name, source in init.items():
                print(f"{name} would start from {source.describe()}")
            print(f"run directory: {run_dir or f'runs/{stem}-NNN (next free number)'}")
            return 0

        def announce(ctx) -> None:
            if ctx.rt.is_main:
                print(f"run directory: {ctx.run_dir}", file=sys.stderr)
                for name, source in ctx.init.items():
                    print(f"{name} starts from {source.describe()}", file=sys.stderr)
                # A missing tensorboard package under the default `tensorboard: true` is said once,
                # when the run starts, not again on every --resume unless the user asked for it.
                if ctx.cfg.train.tensorboard and (
                    not ctx.log.tb_missing or not args.resume or _asked_for_tensorboard(args)
                ):
                    print(f"tensorboard: {ctx.log.tb_note}", file=sys.stderr)

        result = train(
            cfg,
            args.data,
            run_dir=run_dir,
            runs_root="runs",
            run_name=stem,
            max_steps=args.max_steps,
            resume=args.resume,
            on_start=announce,
        )
    # ExperimentConfigError, DataError, MetricError, PerceptualLossUnavailable (no torchvision): all
    # PixforgeError, printed as one line.
    except PixforgeError as exc:
        return _err(str(exc))

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    run_dir = result.run_dir
    for line in result.data_summary:
        print(f"data: {line}")
    print(f"trained {result.step} of {result.total_steps} steps; skipped files: {result.skipped_files}")
    print(f"samples: {run_dir / 'samples'}")
    print(f"logs: {run_dir / 'stats.jsonl'} (metrics: {run_dir}/metric-*.jsonl)")
    if result.validation_off:
        print(f"final metrics: none (validation off: {result.validation_off})")
    else:
        print(f"final metrics: {format_metrics(result.metrics)}")
    for name, path in result.other_checkpoints.items():
        print(f"{name} checkpoint: {path}")
    print(f"resume state: {run_dir / 'checkpoints' / 'resume-state.pt'}")
    if result.interrupted:
        print(
            f"interrupted after step {result.step}; continue with: pixforge train {args.config} "
            f"--data {args.data} --out {run_dir} --resume",
            file=sys.stderr,
            flush=True,
        )
    print(f"checkpoint: {result.checkpoint}")
    return 130 if result.interrupted else 0
