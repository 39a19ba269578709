"""The one place for foreign and legacy formats: junyanz generators, contract-1 pixforge ONNX
files, and what earlier pixforge versions wrote into their own checkpoint files.

Earlier pixforge checkpoints (checkpoint.py reads them through the functions below):

- `load_weights_only` is `torch.load(weights_only=True)` that also accepts `TorchVersion`, the
  `str` subclass that early generator checkpoints stored as "torch_version";
  `upgrade_generator_entries` turns it back into a plain `str`.
- `RESUME_UPGRADES` maps an older resume-state format tag to a function returning the state in
  today's layout: `pixforge.resume/1` kept every network inline (nothing in
  `nets_in_checkpoints`).

`load_pixforge_onnx` reads a pixforge ONNX model back into a `(GeneratorConfig, state_dict,
metadata)` triple so it can be exported again under the current contract (e.g. contract 1 ->
2, which adds the tiling statistics). It works because the exporter keeps the PyTorch parameter
names as initializer names (``generator.<module path>``) and stores the generator config in the
metadata.

`load_junyanz_generator` converts `latest_net_G.pth` / `*_net_G_A.pth` state dicts (UnetGenerator
or ResnetGenerator) into a `(GeneratorConfig, state_dict)` pair for our modules:

- strips `module.` (DataParallel) and `_orig_mod.` (torch.compile) key prefixes;
- drops InstanceNorm `running_mean` / `running_var` / `num_batches_tracked` left by old PyTorch
  (their `__patch_instance_norm_state_dict`); our instance norm has no state at all;
- renames keys with a flat module table (`junyanz_key_map`); our U-Net / ResNet mirror their layer
  order, so the table is a 1:1 renaming of module paths;
- fills zero biases for norm="none" checkpoints (junyanz builds those convs without bias);
- infers channels, ngf, depth / n_blocks, norm and ResNet dropout from the tensors and checks them
  against what the caller asserted.

Note: junyanz's test.py runs without `--eval` by default (dropout and batch statistics active); our
export runs the converted generator in eval mode, which is the deterministic behaviour.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.torch_version import TorchVersion

from pixforge.errors import PixforgeError

from .registry import GeneratorConfig, build_generator

JUNYANZ_ARCHS = ("unet_128", "unet_256", "resnet_6blocks", "resnet_9blocks")
JUNYANZ_NORMS = ("batch", "instance", "none")
_PREFIXES = ("module.", "_orig_mod.")
_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class LegacyCheckpointError(PixforgeError, ValueError):
    """A junyanz checkpoint cannot be read or does not match the requested architecture."""


# --- earlier pixforge checkpoint files ---------------------------------------------------------


def load_weights_only(path: str | os.PathLike) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)`, also for files holding TorchVersion.

    Early generator checkpoints stored `torch.__version__` itself, a TorchVersion (a `str`
    subclass) that the weights_only unpickler refuses; allowing that one class keeps loading free
    of code execution for those files.
    """
    with torch.serialization.safe_globals([TorchVersion]):
        return torch.load(path, map_location="cpu", weights_only=True)


def upgrade_generator_entries(data: Mapping[str, Any]) -> dict[str, Any]:
    """A `pixforge.generator/1` dict with the entries early files typed differently made plain
    (TorchVersion "torch_version" -> str); every other entry is passed through unchanged."""
    out = dict(data)
    if isinstance(out.get("torch_version"), TorchVersion):
        out["torch_version"] = str(out["torch_version"])
    return out


def _resume_state_v1(state: dict[str, Any]) -> dict[str, Any]:
    # /1 stored every network inline, including the generator weights that /2 leaves to the
    # generator checkpoint of the same step: nothing to fetch from other files.
    return {**state, "nets_in_checkpoints": {}}


# older resume-state format tag -> the state in the current (`pixforge.resume/2`) layout
RESUME_UPGRADES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pixforge.resume/1": _resume_state_v1,
}


# --- key tables --------------------------------------------------------------------------------


def _unet_prefix(level: int) -> str:
    # Their outermost Sequential is `model.model`; its child 1 is the next block, whose own
    # Sequential nests the next one at index 3 (after LeakyReLU, Conv, Norm).
    if level == 0:
        return "model.model."
    return "model.model.1.model." + "3.model." * (level - 1)


def unet_key_map(depth: int) -> dict[str, str]:
    """junyanz UnetGenerator module path -> our UNetGenerator module path."""
    table = {}
    for i in range(depth):
        p, ours = _unet_prefix(i), f"levels.{i}."
        if i == 0:  # [downconv, submodule, uprelu, upconv, tanh]
            table.update({p + "0": ours + "down_conv", p + "3": ours + "up_conv"})
        elif i == depth - 1:  # [downrelu, downconv, uprelu, upconv, upnorm]
            table.update({p + "1": ours + "down_conv", p + "3": ours + "up_conv", p + "4": ours + "up_norm"})
        else:  # [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm, (dropout)]
            table.update(
                {
                    p + "1": ours + "down_conv",
                    p + "2": ours + "down_norm",
                    p + "5": ours + "up_conv",
                    p + "6": ours + "up_norm",
                }
            )
    return table


def resnet_key_map(n_blocks: int, dropout: bool) -> dict[str, str]:
    """junyanz ResnetGenerator module path -> our ResNetGenerator module path."""
    table = {
        "model.1": "stem.conv",
        "model.2": "stem.norm",
        "model.4": "down.0.conv",
        "model.5": "down.0.norm",
        "model.7": "down.1.conv",
        "model.8": "down.1.norm",
    }
    # conv_block: [pad, conv, norm, relu, (dropout), pad, conv, norm]
    second = 6 if dropout else 5
    for i in range(n_blocks):
        p = f"model.{10 + i}.conv_block."
        table.update(
            {
                p + "1": f"blocks.{i}.conv1",
                p + "2": f"blocks.{i}.norm1",
                p + str(second): f"blocks.{i}.conv2",
                p + str(second + 1): f"blocks.{i}.norm2",
            }
        )
    n = 10 + n_blocks
    table.update(
        {
            f"model.{n}": "up.0.conv",
            f"model.{n + 1}": "up.0.norm",
            f"model.{n + 3}": "up.1.conv",
            f"model.{n + 4}": "up.1.norm",
            f"model.{n + 7}": "head.conv",
        }
    )
    return table


def junyanz_key_map(cfg: GeneratorConfig) -> dict[str, str]:
    """Module-path table for a junyanz generator with the layout described by `cfg`."""
    if cfg.arch == "unet":
        return unet_key_map(cfg.depth)
    return resnet_key_map(cfg.n_blocks, cfg.dropout)


# --- loading ------------------------------------------------------------------------------------


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading `module.` / `_orig_mod.` (in any order, repeated) from every key."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def _read(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise LegacyCheckpointError(f"junyanz checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LegacyCheckpointError(f"cannot read {path} as a PyTorch state dict: {exc}") from exc
    if not isinstance(state, Mapping) or not state:
        raise LegacyCheckpointError(
            "a junyanz generator checkpoint is a non-empty state dict (e.g. latest_net_G.pth)"
        )
    state = {k: v for k, v in state.items() if k != "_metadata"}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise LegacyCheckpointError(
            f"not a plain state dict (non-tensor entries: {bad[:5]}); pass a junyanz *_net_G*.pth file"
        )
    return strip_prefixes(state)


def _split(key: str) -> tuple[str, str]:
    module, _, name = key.rpartition(".")
    return module, name


def _detect_family(state: Mapping[str, torch.Tensor]) -> str:
    if "model.model.0.weight" in state:
        return "unet"
    if "model.1.weight" in state and any(".conv_block." in k for k in state):
        return "resnet"
    raise LegacyCheckpointError(
        "not a junyanz UnetGenerator/ResnetGenerator state dict (expected 'model.model.0.weight' or "
        f"'model.1.weight'; first keys: {list(state)[:4]})"
    )


def _detect_unet_depth(state: Mapping[str, torch.Tensor]) -> int:
    depth = 1
    while any(k.startswith(_unet_prefix(depth)) for k in state):
        depth += 1
    return depth


def _detect_resnet(state: Mapping[str, torch.Tensor]) -> tuple[int, bool]:
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.conv_block\.", k))}
    n_blocks = len(blocks)
    if blocks != set(range(10, 10 + n_blocks)):
        raise LegacyCheckpointError(f"unexpected ResnetBlock positions {sorted(blocks)}")
    # The second conv sits at conv_block.5, or at .6 when a Dropout precedes its padding.
    w = state.get("model.10.conv_block.5.weight") if n_blocks else None
    dropout = n_blocks > 0 and (w is None or w.dim() != 4)
    return n_blocks, dropout


def _detect_norm(state: Mapping[str, torch.Tensor], table: Mapping[str, str]) -> str:
    norm_modules = [m for m, ours in table.items() if "norm" in ours.rsplit(".", 1)[-1]]
    if any(f"{m}.weight" in state for m in norm_modules):
        return "batch"
    conv_modules = [m for m, ours in table.items() if "conv" in ours.rsplit(".", 1)[-1]]
    # instance: every conv has a bias; none (junyanz): only the last conv(s) do.
    with_bias = sum(f"{m}.bias" in state for m in conv_modules)
    return "instance" if with_bias == len(conv_modules) else "none"


def load_junyanz_generator(
    source: str | Path | Mapping[str, torch.Tensor],
    arch: str | None = None,
    norm: str | None = None,
    dropout: bool | None = None,
) -> tuple[GeneratorConfig, dict[str, torch.Tensor]]:
    """Convert a junyanz generator checkpoint to our config + state dict.

    Args:
        source: path to `latest_net_G.pth` / `*_net_G_A.pth`, or an already loaded state dict.
        arch: their `--netG` (unet_128 | unet_256 | resnet_6blocks | resnet_9blocks); None = infer.
        norm: their `--norm` (batch | instance | none); None = infer from the tensors.
        dropout: their dropout setting (U-Net only; the ResNet's is inferred). Irrelevant for
            inference in eval mode; recorded in the config for fine-tuning.

    Returns:
        (GeneratorConfig, state_dict) that `build_generator(cfg).load_state_dict(sd)` accepts.

    Raises:
        LegacyCheckpointError: unreadable file, or contents that contradict `arch` / `norm`.
    """
    if arch is not None and arch not in JUNYANZ_ARCHS:
        raise LegacyCheckpointError(f"unknown junyanz arch {arch!r}; valid: {', '.join(JUNYANZ_ARCHS)}")
    if norm is not None and norm not in JUNYANZ_NORMS:
        raise LegacyCheckpointError(f"unknown norm {norm!r}; valid: {', '.join(JUNYANZ_NORMS)}")
    state = _read(source)
    family = _detect_family(state)

    if family == "unet":
        depth = _detect_unet_depth(state)
        found = {7: "unet_128", 8: "unet_256"}.get(depth, f"unet with {depth} downsamplings")
        if depth < 2:
            raise LegacyCheckpointError("U-Net checkpoint has no inner blocks")
        table = unet_key_map(depth)
        first, last = state["model.model.0.weight"], state.get("model.model.3.weight")
        if last is None:
            raise LegacyCheckpointError("U-Net checkpoint lacks the outermost up-conv 'model.model.3.weight'")
        ngf, in_ch, out_ch = first.shape[0], first.shape[1], last.shape[1]
        arch_fields = {"arch": "unet", "depth": depth, "dropout": bool(dropout)}
    else:
        n_blocks, res_dropout = _detect_resnet(state)
        found = f"resnet_{n_blocks}blocks"
        table = resnet_key_map(n_blocks, res_dropout)
        first, last = state["model.1.weight"], state.get(f"model.{17 + n_blocks}.weight")
        if last is None:
            raise LegacyCheckpointError(
                f"ResNet checkpoint lacks its output conv 'model.{17 + n_blocks}.weight'"
            )
        ngf, in_ch, out_ch = first.shape[0], first.shape[1], last.shape[0]
        if dropout is not None and dropout != res_dropout:
            raise LegacyCheckpointError(f"checkpoint was trained with dropout={res_dropout}, not {dropout}")
        arch_fields = {"arch": "resnet", "n_blocks": n_blocks, "dropout": res_dropout}

    if arch is not None and arch != found:
        raise LegacyCheckpointError(f"checkpoint holds a {found} generator, not {arch}; pass --arch {found}")
    found_norm = _detect_norm(state, table)
    if norm is not None and norm != found_norm:
        raise LegacyCheckpointError(f"checkpoint was trained with --norm {found_norm}, not {norm}")

    cfg = GeneratorConfig(in_channels=in_ch, out_channels=out_ch, ngf=ngf, norm=found_norm, **arch_fields)
    converted: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        module, name = _split(key)
        ours = table.get(module)
        if ours is None:
            unmapped.append(key)
            continue
        if found_norm == "instance" and name in _NORM_BUFFERS:
            continue  # stale InstanceNorm running stats from PyTorch < 0.4
        converted[f"{ours}.{name}"] = value.detach().clone()
    if unmapped:
        raise LegacyCheckpointError(
            f"{len(unmapped)} checkpoint key(s) do not fit the {found} layout, e.g. {unmapped[:5]}"
        )

    model = build_generator(cfg)
    expected = model.state_dict()
    for key, ref in expected.items():
        if key in converted:
            continue
        if key.endswith(".num_batches_tracked"):
            converted[key] = torch.zeros_like(ref)  # absent in pre-0.4.1 checkpoints
        elif key.endswith(".bias") and found_norm == "none":
            converted[key] = torch.zeros_like(ref)  # junyanz convs have no bias with norm none
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        raise LegacyCheckpointError(f"converted weights do not fit {found} ({cfg}): {exc}") from exc
    return cfg, converted


# --- pixforge ONNX files of an older contract --------------------------------------------------

ONNX_PREFIX = "generator."


def load_pixforge_onnx(path: str | Path) -> tuple[GeneratorConfig, dict[str, torch.Tensor], dict[str, str]]:
    """A pixforge ONNX model -> (GeneratorConfig, float32 state dict, metadata).

    Batch-norm running statistics are not in the file (the export uses per-image statistics);
    they are filled with 0 / 1, which the export's inference semantics never read.

    Raises:
        LegacyCheckpointError: not a pixforge export with a generator_config and named weights.
    """
    import json

    import numpy as np
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors of several types
        raise LegacyCheckpointError(f"cannot read {path} as ONNX: {exc}") from exc
    metadata = {p.key: p.value for p in model.metadata_props}
    if "generator_config" not in metadata:
        raise LegacyCheckpointError(f"{path} has no generator_config metadata (not a pixforge export)")
    try:
        cfg = GeneratorConfig.from_dict(json.loads(metadata["generator_config"]))
    except (ValueError, TypeError) as exc:
        raise LegacyCheckpointError(f"{path}: invalid generator_config metadata: {exc}") from exc
    state = {
        init.name[len(ONNX_PREFIX) :]: torch.from_numpy(numpy_helper.to_array(init).astype(np.float32))
        for init in model.graph.initializer
        if init.name.startswith(ONNX_PREFIX)
    }
    module = build_generator(cfg)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and k.rsplit(".", 1)[-1] not in _NORM_BUFFERS]
    if missing:
        # onnxruntime's offline optimisation shares identical constants (e.g. all-zero biases of an
        # untrained layer) under one name; such a file cannot be mapped back to its modules.
        raise LegacyCheckpointError(
            f"{path}: {len(missing)} weight(s) of the generator are not named in the file "
            f"(e.g. {', '.join(missing[:3])}); re-export it from its checkpoint instead"
        )
    for key, value in expected.items():
        if key not in state and key.rsplit(".", 1)[-1] in _NORM_BUFFERS:
            state[key] = (
                torch.zeros_like(value) if not key.endswith("running_var") else torch.ones_like(value)
            )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LegacyCheckpointError(
            f"{path}: the weights do not fit its generator_config: {str(exc).splitlines()[0]}"
        ) from exc
    return cfg, state, metadata
