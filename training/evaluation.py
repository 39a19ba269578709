"""Validation: run generators on the fixed validation items, compute metrics, build sample rows.

Outputs are converted to uint8 with `image_ops` (exactly what the exported ONNX graph returns)
before any metric, so validation numbers describe the served model, not float tensors.

Per task (definitions in metrics.py):
- paired_translation: psnr, ssim (RGB), l1 (mean |output - target| in [-1, 1] units).
- super_resolution: psnr_y, ssim_y (BT.601 Y, `scale` px border cropped), psnr (RGB), and
  psnr_y_bicubic, the plain bicubic-upscaling baseline on the same images.
- colorization: psnr, ssim (RGB after recombining L with the predicted ab), l1 (on ab),
  colorfulness of outputs and of targets (a model collapsing to grey shows a low value).
- CycleGAN: cycle_psnr_a / cycle_psnr_b (A -> B -> A, B -> A -> B), color_dist_a2b =
  colour-histogram distance(fake_B, real_B) next to its no-op baseline color_dist_a2b_identity =
  distance(real_A, real_B), and the same for b2a.
- fid / fid_a2b / fid_b2a when an Inception weights file is configured.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from . import metrics as M
from .image_ops import float01_to_uint8, lab_output_to_rgb, unit_to_uint8
from .networks.common import bicubic_upsample


@dataclass
class EvalResult:
    """Metrics, sample-grid rows and the loss a plateau schedule monitors (lower is better)."""

    metrics: dict[str, float]
    rows: list[list[np.ndarray]] = field(default_factory=list)
    monitor: float = float("nan")


@contextlib.contextmanager
def eval_mode(*nets: torch.nn.Module):
    """Put networks in eval mode, restoring each one's previous mode afterwards."""
    modes = [n.training for n in nets]
    for n in nets:
        n.eval()
    try:
        yield
    finally:
        for n, mode in zip(nets, modes, strict=True):
            n.train(mode)


def rgb_uint8(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor in [-1, 1] -> uint8 (H, W, C)."""
    return unit_to_uint8(t.detach().float().cpu()).permute(1, 2, 0).contiguous().numpy()


def lab_uint8(l_input: torch.Tensor, ab: torch.Tensor) -> np.ndarray:
    """Colourisation tensors (L/50-1, ab/110) -> uint8 RGB (H, W, 3)."""
    rgb = lab_output_to_rgb(l_input.detach().float().cpu(), ab.detach().float().cpu())
    return float01_to_uint8(rgb).permute(1, 2, 0).contiguous().numpy()


def _run(net: torch.nn.Module, x: torch.Tensor, rt) -> torch.Tensor:
    with rt.autocast():
        y = net(rt.to_device(x[None]))
    return y.float().clamp(-1.0, 1.0)[0].cpu()


@torch.no_grad()
def evaluate_paired(
    generator: torch.nn.Module,
    items: list[dict],
    *,
    task: str,
    scale: int,
    rt,
    n_samples: int,
    fid: M.FIDScorer | None = None,
) -> EvalResult:
    """Validate a pix2pix-style generator (paired, super-resolution or colourisation items)."""
    values: dict[str, list[float]] = {}
    rows, outs, tgts = [], [], []

    def add(name: str, v: float) -> None:
        values.setdefault(name, []).append(v)

    with eval_mode(generator):
        for i, item in enumerate(items):
            x, target = item["input"], item["target"]
            y = _run(generator, x, rt)
            add("l1", float((y - target).abs().mean()))
            if task == "colorization":
                out, tgt, shown = (
                    lab_uint8(x, y),
                    lab_uint8(x, target),
                    lab_uint8(x, torch.zeros_like(target)),
                )
                add("colorfulness", M.colorfulness(out))
                add("colorfulness_target", M.colorfulness(tgt))
            else:
                out, tgt, shown = rgb_uint8(y), rgb_uint8(target), rgb_uint8(x)
            if task == "super_resolution":
                bicubic = rgb_uint8(bicubic_upsample(x[None].float(), scale)[0].clamp(-1, 1))
                add("psnr_y", M.psnr_y(out, tgt, border=scale))
                add("ssim_y", M.ssim_y(out, tgt, border=scale))
                add("psnr_y_bicubic", M.psnr_y(bicubic, tgt, border=scale))
                shown = np.repeat(np.repeat(shown, scale, axis=0), scale, axis=1)  # nearest, to HR size
            add("psnr", M.psnr(out, tgt))
            if min(out.shape[:2]) >= 11:
                add("ssim", M.ssim(out, tgt))
            outs.append(out)
            tgts.append(tgt)
            if i < n_samples:
                rows.append([shown, out, tgt])
    result = {k: M.mean_finite(v) for k, v in values.items()}
    if fid is not None and len(outs) >= 2:
        result["fid"] = fid.score(tgts, outs)
    return EvalResult(result, rows, result.get("l1", float("nan")))


@torch.no_grad()
def evaluate_cyclegan(
    g_a: torch.nn.Module,
    g_b: torch.nn.Module,
    items: list[dict],
    *,
    rt,
    n_samples: int,
    fid: M.FIDScorer | None = None,
) -> EvalResult:
    """Validate CycleGAN generators (G_A: A -> B, G_B: B -> A) without paired ground truth."""
    cyc_a, cyc_b, cyc_l1 = [], [], []
    real_a, real_b, fake_a, fake_b = [], [], [], []
    rows = []
    with eval_mode(g_a, g_b):
        for i, item in enumerate(items):
            a, b = item["real_a"], item["real_b"]
            fb = _run(g_a, a, rt)
            ra = _run(g_b, fb, rt)
            fa = _run(g_b, b, rt)
            rb = _run(g_a, fa, rt)
            cyc_l1.append(0.5 * float((ra - a).abs().mean() + (rb - b).abs().mean()))
            imgs = [rgb_uint8(t) for t in (a, fb, ra, b, fa, rb)]
            cyc_a.append(M.psnr(imgs[0], imgs[2]))
            cyc_b.append(M.psnr(imgs[3], imgs[5]))
            real_a.append(imgs[0])
            fake_b.append(imgs[1])
            real_b.append(imgs[3])
            fake_a.append(imgs[4])
            if i < n_samples:
                rows += [imgs[0:3], imgs[3:6]]
    result = {
        "cycle_psnr_a": M.mean_finite(cyc_a),
        "cycle_psnr_b": M.mean_finite(cyc_b),
        "color_dist_a2b": M.color_histogram_distance(fake_b, real_b),
        "color_dist_a2b_identity": M.color_histogram_distance(real_a, real_b),
        "color_dist_b2a": M.color_histogram_distance(fake_a, real_a),
        "color_dist_b2a_identity": M.color_histogram_distance(real_b, real_a),
    }
    if fid is not None and len(items) >= 2:
        result["fid_a2b"] = fid.score(real_b, fake_b)
        result["fid_b2a"] = fid.score(real_a, fake_a)
    return EvalResult(result, rows, float(np.mean(cyc_l1)) if cyc_l1 else float("nan"))
