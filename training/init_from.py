"""Fine-tuning: a fresh run's generator starts from another generator's weights (`train.init_from`).

The source may be any generator file pixforge reads:
- a pixforge generator checkpoint (`generator-step*.pt`, `G_A-*.pt`, a `tools/blend_generators.py`
  blend);
- a pixforge `model.onnx` (a shipped or exported model: the exporter keeps every weight under its
  PyTorch name, legacy.load_pixforge_onnx);
- a junyanz `latest_net_G.pth` / `*_net_G_A.pth` (legacy.load_junyanz_generator, architecture
  inferred from the tensors).

Only the generator's weights are taken. The discriminator, the optimisers, the schedule and the
data position start fresh: that is what sets fine-tuning apart from `--resume`, which continues one
run on the same data. On `--resume` the weights come from the run's own resume state and
`init_from` is not read again.

The config's generator must be the source's: every field that shapes the weights or the function
they compute must match. Only `init_type` / `init_gain` (how fresh weights are drawn) and `dropout`
(active in training only; junyanz's U-Net checkpoints do not record it) may differ. Matching names
is not enough on its own: instance norm has no weights, so `norm: none` would load instance-norm
weights without complaint and compute something else. The task must match too (a colourisation
generator predicts ab, an SR one pixels), where the source records it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pixforge.errors import PixforgeError

from . import legacy
from .checkpoint import CheckpointFormatError, GeneratorCheckpoint
from .config import ExperimentConfig
from .registry import GeneratorConfig, build_generator

if TYPE_CHECKING:  # run_context.py imports this module
    from .run_context import RunContext

FREE_FIELDS = ("init_type", "init_gain", "dropout")  # may differ between the source and the config


class InitFromError(PixforgeError, ValueError):
    """`train.init_from` names a file that cannot start this run's generator."""


@dataclasses.dataclass(frozen=True)
class SourceGenerator:
    """What a generator file holds: its config, float32 weights and task (None when not recorded)."""

    path: Path
    cfg: GeneratorConfig
    state_dict: dict[str, torch.Tensor]
    task: str | None
    kind: str  # "pixforge checkpoint" | "pixforge ONNX model" | "junyanz checkpoint"

    def describe(self) -> str:
        return f"{self.path} ({self.kind}, {len(self.state_dict)} tensors)"


def read_source(path: str | Path, key: str = "train.init_from") -> SourceGenerator:
    """Read the generator in `path` (any format in the module docstring); `key` names it in errors.

    Raises:
        InitFromError: no such file, or a file none of the readers accepts.
    """
    path = Path(path)
    if not path.is_file():
        raise InitFromError(f"{key}: file not found: {path}")
    try:
        if path.suffix.lower() == ".onnx":
            cfg, state, meta = legacy.load_pixforge_onnx(path)
            return SourceGenerator(path, cfg, state, meta.get("task") or None, "pixforge ONNX model")
        try:
            ckpt = GeneratorCheckpoint.load(path)
        except CheckpointFormatError as exc:
            if not exc.foreign:
                raise
            try:
                cfg, state = legacy.load_junyanz_generator(path)
            except legacy.LegacyCheckpointError as jz:
                raise InitFromError(
                    f"{key}: {path} is neither a pixforge generator checkpoint, a pixforge model.onnx "
                    f"nor a junyanz generator state dict ({jz})"
                ) from jz
            return SourceGenerator(path, cfg, state, None, "junyanz checkpoint")
        return SourceGenerator(path, ckpt.generator_cfg(), ckpt.state_dict, ckpt.task, "pixforge checkpoint")
    except InitFromError:
        raise
    except (CheckpointFormatError, legacy.LegacyCheckpointError) as exc:
        where = "" if str(path) in str(exc) else f"{path}: "  # the readers' messages often name it
        raise InitFromError(f"{key}: {where}{exc}") from exc
    except Exception as exc:  # torch.load's pickle / zip errors come in many types
        raise InitFromError(f"{key}: cannot read {path} as a generator: {exc}") from exc


def mismatches(source: GeneratorConfig, target: GeneratorConfig) -> dict[str, tuple[object, object]]:
    """{field: (source value, config value)} for the fields that must match but do not."""
    a, b = dataclasses.asdict(source), dataclasses.asdict(target)
    return {k: (a[k], b[k]) for k in a if k not in FREE_FIELDS and a[k] != b[k]}


def describe_mismatches(
    diff: dict[str, tuple[object, object]], there: str, section: str = "generator"
) -> tuple[str, str]:
    """A `mismatches` result as text: ("ngf: 8 here, 24 <there>", "--set <section>.ngf=24"), the
    differing fields and the overrides that would make the config match the other side again."""
    fields = ", ".join(f"{k}: {v[1]!r} here, {v[0]!r} {there}" for k, v in diff.items())
    sets = " ".join(f"--set {section}.{k}={v[0]}" for k, v in diff.items())
    return fields, sets


def initial_generators(cfg: ExperimentConfig) -> dict[str, SourceGenerator]:
    """The generators a fresh run of `cfg` starts from, by network name ("G"; CycleGAN "G_A", "G_B").

    Read and checked before the run directory exists, so a wrong file trains nothing and leaves
    nothing behind.

    Raises:
        InitFromError: unreadable file, another task, or another architecture (the message names
            the `--set` overrides that would match it).
    """
    keys = {"G_A": "init_from", "G_B": "init_from_b"} if cfg.model == "cyclegan" else {"G": "init_from"}
    found = {}
    for name, key in keys.items():
        path = getattr(cfg.train, key)
        if not path:
            continue
        source = read_source(path, f"train.{key}")
        if source.task is not None and source.task != cfg.task:
            raise InitFromError(
                f"train.{key}: {path} is a {source.task} generator; this run trains {cfg.task}"
            )
        diff = mismatches(source.cfg, cfg.generator)
        if diff:
            fields, sets = describe_mismatches(diff, "in the file")
            raise InitFromError(
                f"train.{key}: {path} ({source.kind}) holds another generator ({fields}); "
                f"train the same architecture: {sets}"
            )
        found[name] = source
    return found


def load_initial(generator: torch.nn.Module, source: SourceGenerator | None) -> torch.nn.Module:
    """`generator` with `source`'s weights (unchanged when `source` is None); returns it.

    Raises:
        InitFromError: the weights do not fit (a file whose config and tensors disagree).
    """
    if source is not None:
        try:
            generator.load_state_dict(source.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise InitFromError(f"cannot start from {source.path}: the weights do not fit: {first}") from exc
    return generator


def start_generator(ctx: RunContext, name: str) -> torch.nn.Module:
    """Generator `name` ("G"; CycleGAN "G_A", "G_B") of a loop: built from the config, with the
    `init_from` weights when fine-tuning, prepared for the runtime.

    The source's tensors leave `ctx.init` once loaded, so the run does not hold a second copy of
    the generator's weights for its whole length.
    """
    generator = load_initial(build_generator(ctx.cfg.generator), ctx.init.pop(name, None))
    return ctx.rt.prepare(generator, ctx.cfg.generator.norm)
