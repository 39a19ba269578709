"""Parity of an exported graph with the PyTorch module it came from, and fp16-vs-fp32 PSNR.

The export runs this by default and refuses to write a model that fails it (docs/model-contract.md):
for fp32, ONNX and PyTorch outputs may differ by at most 1 grey level on >= 99.9 % of the values,
on random and structured ("photo-like") images at two sizes, in one batch per size (so the dynamic
batch axis is exercised too). For fp16, the PSNR of the fp16 graph's output against the fp32 graph's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from pixforge.contract import INPUT_NAME
from pixforge.errors import PixforgeError

MIN_WITHIN_ONE = 0.999  # fraction of output values within 1 grey level (fp32)
MIN_FP16_PSNR_DB = 45.0
PSNR_CAP_DB = 100.0  # identical outputs: report a finite number so the JSON stays standard


class ParityError(PixforgeError, RuntimeError):
    """The exported graph does not reproduce the PyTorch module (message carries the numbers)."""


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def parity_sizes(size_multiple: int, base: int = 64) -> list[tuple[int, int]]:
    """Two (H, W) sizes, multiples of ``size_multiple``, differing from each other and from the traced one."""
    edge = round_up(max(base, size_multiple), size_multiple)
    return [(edge, edge), (edge + size_multiple, edge)]


def _photo_like(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    # Smooth colour gradients, soft blobs, a hard-edged disk and stripes, plus mild noise: textures a
    # network sees in real photos, unlike uniform noise.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / max(h - 1, 1), xx / max(w - 1, 1)
    img = np.stack([xx, yy, 1.0 - 0.5 * (xx + yy)], axis=-1)
    for _ in range(3):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - blob) + rng.uniform(0, 1, 3).astype(np.float32) * blob
    disk = ((yy - 0.5) ** 2 + (xx - 0.3) ** 2) < 0.02
    img[disk] = rng.uniform(0, 1, 3)
    img[:, (np.arange(w) // 4) % 6 == 0] *= 0.6
    img += rng.normal(0, 0.02, img.shape)
    return np.clip(np.floor(img * 255 + 0.5), 0, 255).astype(np.uint8)


def parity_batch(h: int, w: int, channels: int, seed: int = 0) -> np.ndarray:
    """A uint8 NHWC batch: uniform noise, a photo-like image and its grey version (channels replicated)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    photo = _photo_like(h, w, rng)
    luma = np.floor(photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5)
    gray = np.repeat(np.clip(luma, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    batch = np.stack([noise, photo, gray])
    return batch[..., :1] if channels == 1 else batch


def fit_image(image: np.ndarray, h: int, w: int, channels: int) -> np.ndarray:
    """Centre-crop (tiling by reflection when smaller) a decoded HWC image to (h, w, channels)."""
    if image.shape[2] != channels:
        image = np.repeat(image[..., :1], 3, axis=-1) if channels == 3 else image[..., :1]
    pad_h, pad_w = max(0, h - image.shape[0]), max(0, w - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(
            image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect" if min(image.shape[:2]) > 1 else "edge"
        )
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return np.ascontiguousarray(image[top : top + h, left : left + w])


def make_session(model: onnx.ModelProto | str | Path):
    """A CPU onnxruntime session (default graph optimisation: all levels) for an in-memory model
    or a model file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


@dataclass
class SizeReport:
    """Parity numbers for one batch."""

    label: str
    shape: list[int]  # input N, H, W, C
    max_diff: int
    mean_diff: float
    within_one: float  # fraction of values with |onnx - torch| <= 1


@dataclass
class ParityReport:
    """All parity numbers of one export (stored in model.json)."""

    sizes: list[SizeReport]
    max_diff: int
    mean_diff: float
    within_one: float
    passed: bool
    fp16_psnr_db: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [
            f"  {s.label:<22} {'x'.join(map(str, s.shape)):>14}  max {s.max_diff}  mean {s.mean_diff:.5f}  "
            f"within 1: {100 * s.within_one:.3f} %"
            for s in self.sizes
        ]
        out.append(
            f"  overall: max {self.max_diff}, mean {self.mean_diff:.5f}, within 1 grey level "
            f"{100 * self.within_one:.3f} % (need >= {100 * MIN_WITHIN_ONE:.1f} %)"
        )
        if self.fp16_psnr_db is not None:
            out.append(f"  fp16 vs fp32 PSNR: {self.fp16_psnr_db:.2f} dB (need >= {MIN_FP16_PSNR_DB:.0f} dB)")
        return out


def _compare(label: str, ref: np.ndarray, got: np.ndarray) -> SizeReport:
    if ref.shape != got.shape:
        raise ParityError(f"{label}: ONNX output shape {got.shape} != PyTorch output shape {ref.shape}")
    diff = np.abs(ref.astype(np.int16) - got.astype(np.int16))
    return SizeReport(label, [], int(diff.max()), float(diff.mean()), float((diff <= 1).mean()))


def parity_inputs(
    size_multiple: int, channels: int, extra_images: list[np.ndarray] = ()
) -> list[tuple[str, np.ndarray]]:
    """(label, uint8 NHWC batch) pairs: synthetic batches at two sizes plus any user images."""
    batches = []
    sizes = parity_sizes(size_multiple)
    for i, (h, w) in enumerate(sizes):
        batches.append((f"synthetic {h}x{w}", parity_batch(h, w, channels, seed=i)))
    for i, image in enumerate(extra_images):
        h, w = sizes[i % len(sizes)]
        batches.append((f"image #{i + 1} {h}x{w}", fit_image(image, h, w, channels)[None]))
    return batches


def check_parity(
    module: torch.nn.Module, model: onnx.ModelProto, inputs: list[tuple[str, np.ndarray]]
) -> ParityReport:
    """Run ``module`` (PyTorch) and ``model`` (onnxruntime CPU) on ``inputs`` and compare.

    Raises:
        ParityError: shapes differ or fewer than 99.9 % of values are within 1 grey level.
    """
    session = make_session(model)
    reports, diffs_sum, values, within, worst = [], 0.0, 0, 0.0, 0
    for label, batch in inputs:
        with torch.no_grad():
            ref = module(torch.from_numpy(batch)).numpy()
        got = session.run(None, {INPUT_NAME: batch})[0]
        rep = _compare(label, ref, got)
        rep.shape = list(batch.shape)
        reports.append(rep)
        diffs_sum += rep.mean_diff * ref.size
        within += rep.within_one * ref.size
        values += ref.size
        worst = max(worst, rep.max_diff)
    report = ParityReport(reports, worst, diffs_sum / values, within / values, passed=False)
    report.passed = report.within_one >= MIN_WITHIN_ONE
    if not report.passed:
        raise ParityError("ONNX output does not match PyTorch:\n" + "\n".join(report.lines()))
    return report


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays (capped at PSNR_CAP_DB for identical arrays)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10.0 * math.log10(255.0**2 / mse))


def fp16_psnr(
    fp32_model: onnx.ModelProto,
    fp16_model: onnx.ModelProto,
    inputs: list[tuple[str, np.ndarray]],
    min_psnr: float = MIN_FP16_PSNR_DB,
) -> float:
    """PSNR of the fp16 graph's outputs against the fp32 graph's, over all ``inputs``.

    Raises:
        ParityError: below ``min_psnr`` dB.
    """
    s32, s16 = make_session(fp32_model), make_session(fp16_model)
    ref = np.concatenate([s32.run(None, {INPUT_NAME: b})[0].ravel() for _, b in inputs])
    got = np.concatenate([s16.run(None, {INPUT_NAME: b})[0].ravel() for _, b in inputs])
    value = psnr(ref, got)
    if value < min_psnr:
        raise ParityError(
            f"fp16 graph is too far from fp32: PSNR {value:.2f} dB < {min_psnr:.0f} dB; export without --fp16"
        )
    return value
