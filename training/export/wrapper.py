"""The uint8-in / uint8-out export wrapper and the inference semantics of exported generators.

`Uint8ImageModel` puts every pixel conversion of docs/model-contract.md around a generator, using
only `pixforge.training.image_ops` (the one owner of pixel conventions), so the ONNX graph is
uint8 NHWC -> uint8 NHWC and no client re-derives ``(x - 0.5) / 0.5`` (docs/model-contract.md says why).

`to_inference_semantics` fixes what "eval mode" means for an exported model, on purpose:
- dropout is off (deterministic outputs; junyanz test.py leaves it on, we do not);
- normalisation uses each image's own statistics: BatchNorm2d becomes InstanceNorm2d with the
  BN's affine weight/bias. That is exactly what junyanz test.py computes (BN in train mode at
  batch size 1, see docs/model-contract.md), and it keeps a batched request's outputs independent of the
  other images in the batch. Our own generators use instance norm already, so for them
  eval() == train() apart from dropout.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .. import image_ops
from ..networks.common import bicubic_upsample, lr_size_multiple

COLOR_SPACES = ("rgb", "lab")
# Short tag stored in the metadata and the sidecar (docs/model-contract.md "Eval-mode semantics").
INFERENCE_SEMANTICS = "per_image_norm_statistics,dropout_off"


def _per_image_norm(bn: nn.modules.batchnorm._BatchNorm) -> nn.InstanceNorm2d:
    norm = nn.InstanceNorm2d(bn.num_features, eps=bn.eps, affine=bn.affine, track_running_stats=False)
    if bn.affine:
        with torch.no_grad():
            norm.weight.copy_(bn.weight)
            norm.bias.copy_(bn.bias)
    return norm


def to_inference_semantics(generator: nn.Module) -> tuple[nn.Module, list[str]]:
    """A deep copy of ``generator`` in pixforge's inference semantics, in eval mode.

    Args:
        generator: any generator module (left untouched).

    Returns:
        (module, notes): the rewritten copy and one human line per kind of change made.
    """
    module = copy.deepcopy(generator).float().cpu()  # export and parity run on the CPU
    counts = {"batch_norm": 0, "instance_norm_running_stats": 0, "dropout": 0}

    def rewrite(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, _per_image_norm(child))
                counts["batch_norm"] += 1
            elif isinstance(child, nn.InstanceNorm2d) and child.track_running_stats:
                # Old junyanz checkpoints carry instance-norm running stats; eval() would use them.
                setattr(
                    parent,
                    name,
                    nn.InstanceNorm2d(
                        child.num_features, eps=child.eps, affine=child.affine, track_running_stats=False
                    ),
                )
                if child.affine:
                    getattr(parent, name).load_state_dict({"weight": child.weight, "bias": child.bias})
                counts["instance_norm_running_stats"] += 1
            elif isinstance(child, nn.modules.batchnorm._BatchNorm):
                raise ValueError(
                    f"cannot export {type(child).__name__} at {name!r}: only 2-D batch norm is supported"
                )
            else:
                if isinstance(child, nn.modules.dropout._DropoutNd):
                    counts["dropout"] += 1
                rewrite(child)

    rewrite(module)
    module.eval()
    notes = []
    if counts["batch_norm"]:
        notes.append(
            f"{counts['batch_norm']} BatchNorm2d layer(s) use per-image statistics "
            "(InstanceNorm with the BN affine weights, as junyanz test.py at batch size 1)"
        )
    if counts["instance_norm_running_stats"]:
        notes.append(
            f"{counts['instance_norm_running_stats']} InstanceNorm2d layer(s) ignore stored running stats"
        )
    if counts["dropout"]:
        notes.append(f"{counts['dropout']} dropout layer(s) disabled")
    return module, notes


class Uint8ImageModel(nn.Module):
    """uint8 NHWC images in, uint8 NHWC images out, generator in the middle.

    Args:
        generator: maps (N, Cin, H, W) in [-1, 1] to (N, Cout, H*scale, W*scale) in [-1, 1].
        color_space: "rgb" (normalise x/127.5 - 1 and back) or "lab" (colourisation: the input is an
            RGB photo, the generator maps L/50 - 1 to ab/110, and the output recombines the input's
            L with the predicted ab into an RGB photo).
        compute_dtype: dtype the generator runs in (torch.float16 for fp16 export); the pixel
            conversions around it always run in float32.
    """

    def __init__(
        self, generator: nn.Module, color_space: str = "rgb", compute_dtype: torch.dtype = torch.float32
    ):
        super().__init__()
        if color_space not in COLOR_SPACES:
            raise ValueError(f"unknown color_space {color_space!r}; valid: {', '.join(COLOR_SPACES)}")
        self.generator = generator
        self.color_space = color_space
        self.compute_dtype = compute_dtype

    def _run_generator(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype == torch.float32:
            return self.generator(x)
        return self.generator(x.to(self.compute_dtype)).to(torch.float32)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2)  # NHWC -> NCHW, still uint8
        if self.color_space == "lab":
            l_input = image_ops.uint8_rgb_to_l_input(x)
            ab_out = self._run_generator(l_input)
            out = image_ops.float01_to_uint8(image_ops.lab_output_to_rgb(l_input, ab_out))
        else:
            out = image_ops.unit_to_uint8(self._run_generator(image_ops.uint8_to_unit(x)))
        return out.permute(0, 2, 3, 1)


def build_export_module(
    generator: nn.Module, color_space: str, fp16: bool = False
) -> tuple[Uint8ImageModel, list[str]]:
    """Wrap ``generator`` for export: inference semantics, pixel conversions, optional fp16 weights.

    Returns:
        (wrapper in eval mode, notes from :func:`to_inference_semantics`).
    """
    module, notes = to_inference_semantics(generator)
    dtype = torch.float16 if fp16 else torch.float32
    wrapper = Uint8ImageModel(module.to(dtype), color_space=color_space, compute_dtype=dtype)
    return wrapper.eval(), notes


NORM_LAYERS = (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)


class SelfEnsemble(nn.Module):
    """x8 geometric self-ensemble (EDSR's "+"): the mean of the generator over the 8 flips and
    90-degree rotations of its input, each output turned back.

    It costs 8 generator runs per image for a few tenths of a dB on SR benchmarks; the export
    writes it as a separate model (``--self-ensemble``), never as a default. Only generators
    without normalisation layers qualify: the tiling-statistics machinery of per-image norms is
    not replicated across the 8 passes, and a rotated pass sees the same receptive field, so the
    receptive radius and size multiple carry over unchanged.
    """

    def __init__(self, generator: nn.Module):
        super().__init__()
        norms = [type(m).__name__ for m in generator.modules() if isinstance(m, NORM_LAYERS)]
        if norms:
            raise ValueError(
                f"self-ensemble needs a generator without normalisation layers, found {sorted(set(norms))}"
            )
        self.generator = generator
        self.size_multiple = int(getattr(generator, "size_multiple", 1))
        if hasattr(generator, "receptive_radius"):  # exact radius from the architecture, if it has one
            self.receptive_radius = generator.receptive_radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The 8 symmetries of the square as (flipped dims, transpose H/W); flips and the transpose
        # are their own inverses, so output = flip(transpose(G(transpose(flip(x))))). (torch.rot90
        # has no ONNX export; transpose + flip covers the same group.)
        total = None
        for dims in ((), (3,), (2,), (2, 3)):
            for swap in (False, True):
                t = torch.flip(x, dims=dims) if dims else x
                if swap:
                    t = t.transpose(2, 3)
                y = self.generator(t)
                if swap:
                    y = y.transpose(2, 3)
                if dims:
                    y = torch.flip(y, dims=dims)
                total = y if total is None else total + y
        return total / 8.0


class PreUpsampled(nn.Module):
    """A scale-1 generator run on the bicubic-upsampled input (pix2pix-style super-resolution).

    Used for junyanz checkpoints trained on (bicubic-upsampled LR, HR) pairs: their generators do not
    upscale themselves. ``size_multiple`` is in input (LR) pixels.
    """

    def __init__(self, generator: nn.Module, scale: int):
        super().__init__()
        self.generator = generator
        self.scale = scale
        self.size_multiple = lr_size_multiple(int(generator.size_multiple), scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(bicubic_upsample(x, self.scale))
