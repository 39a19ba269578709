"""The int8 precision variant (``model.int8.onnx``): static QDQ quantisation calibrated on the
user's images, written only when the task metric stays within tolerance of the fp32 model.

Why this design (issue 25 measured a naive static QDQ export: 1.06-1.11x faster, instance-norm
models broken to 26 dB):
- Only convolutions are quantised (Conv, ConvTranspose), per output channel, weights int8 and
  activations uint8 without ``reduce_range``: the combination onnxruntime fuses into its u8s8
  QLinearConv kernels. Normalisation, colour conversion and the uint8 I/O stay in float, so the
  per-image statistics that instance norm needs are not quantised.
- Graphs with sub-pixel rewrites (subpixel.py) compute their phase kernels from the file's weights;
  those are folded into constants first (onnxruntime's BASIC offline pass) so the quantiser sees
  constant weights, and the interleave copies stay in float (they only move values).
- Activation ranges come from MinMax calibration on crops of the user's images (``--calibration``):
  the images the model will see, not random noise.
- Some layers cannot be quantised without visible loss (a fixed bicubic skip filter, the last
  convolution that writes pixels). They are found by measurement, not by name: each convolution is
  kept in float on its own, the ones whose float copy recovers most of the task metric are kept in
  float one by one until the metric is within tolerance; at most half stay float, else no variant.
- The gate is the task metric on the same images (:data:`TOLERANCES`): SR Y-PSNR against the
  ground truth within 0.1 dB of fp32, colourisation PSNR against the photo within 0.1 dB, each
  asked with a quarter of that margin on the calibration images (:data:`GATE_SHARE`);
  paired / style translation (no ground truth) PSNR of the int8 output against the fp32 output of
  at least 35 dB. A model that misses it gets no int8 file; the export says why.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from pixforge.codec import to_channels
from pixforge.contract import INPUT_NAME, OUTPUT_NAME, ModelContract
from pixforge.errors import PixforgeError

from ..data.super_resolution import downscale
from ..metrics import psnr, psnr_y
from .onnx_build import optimize_offline
from .parity import make_session
from .subpixel import interleave_nodes

QUANTIZED_OPS = ("Conv", "ConvTranspose")
# (metric name, compared with, tolerance): see the module docstring.
TOLERANCES = {
    "super_resolution": ("Y-PSNR vs ground truth (dB)", "fp32", 0.1),
    "colorization": ("PSNR vs photo (dB)", "fp32", 0.1),
    "paired_translation": ("PSNR vs fp32 output (dB)", "floor", 35.0),
    "style_translation": ("PSNR vs fp32 output (dB)", "floor", 35.0),
}
# The gate asks for half the tolerance on the calibration images, leaving the other half for
# images it did not see: sr-x4 calibrated on 16 BSD200 photos lost 0.04 dB on their crops but
# 0.15 dB on Set5 with the head convolution alone in fp32.
GATE_SHARE = 0.25
CALIBRATION_EDGE = 128  # input pixels per calibration crop: enough context, cheap to run
EVAL_EDGE = 256  # input pixels: the metric's crops (large enough for real structure)
MAX_FLOAT_SHARE = 0.5  # more convolutions than this kept in float: int8 brings nothing


class QuantizationError(PixforgeError, RuntimeError):
    """The int8 variant cannot be made (no images, onnxruntime's quantiser missing or failing)."""


@dataclass
class Int8Report:
    """How the int8 variant was judged."""

    metric: str
    fp32_value: float
    int8_value: float
    threshold: float  # the int8 value must be >= this
    kept_float: list[str] = field(default_factory=list)  # convolution nodes left in fp32
    quantized: int = 0  # convolution nodes in int8
    images: int = 0
    # {"cpu_class": ..., "ratio": fp32 time / int8 time, "edge": px, "ms": {...}} measured at export
    # (int8_speed.py)
    speedup: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "fp32": round(self.fp32_value, 4),
            "int8": round(self.int8_value, 4),
            "threshold": round(self.threshold, 4),
            "images": self.images,
            "quantized_convolutions": self.quantized,
            "kept_fp32": self.kept_float,
            **({"speedup": self.speedup} if self.speedup else {}),
        }

    @property
    def passed(self) -> bool:
        return self.int8_value >= self.threshold

    def lines(self) -> list[str]:
        verdict = "ok" if self.passed else "REFUSED"
        return [
            f"  int8 {self.metric} on {self.images} image(s): {self.int8_value:.3f} "
            f"(fp32 {self.fp32_value:.3f}, need >= {self.threshold:.3f}) {verdict}",
            f"  int8 convolutions: {self.quantized}; kept in fp32: {', '.join(self.kept_float) or 'none'}",
        ]


def _crop(image: np.ndarray, edge: int, multiple: int) -> np.ndarray:
    """Centred crop to at most ``edge`` pixels a side, both sides a multiple of ``multiple``."""
    h, w = image.shape[:2]
    ch = min(h, edge) // multiple * multiple
    cw = min(w, edge) // multiple * multiple
    if ch < multiple or cw < multiple:
        raise QuantizationError(f"a {w}x{h} image is smaller than the model's size multiple {multiple}")
    y, x = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(image[y : y + ch, x : x + cw])


@dataclass(frozen=True)
class Sample:
    """One image as the metric uses it: the model input and (where there is one) the truth."""

    input: np.ndarray
    target: np.ndarray | None


def task_samples(images: list[np.ndarray], contract: ModelContract) -> list[Sample]:
    """The metric's inputs and ground truths: SR takes each image as HR and feeds its antialiased
    bicubic downscale (the evaluation protocol); colourisation feeds the photo (the model uses its
    luminance) and compares with it; translations have no truth."""
    m, s = contract.size_multiple, contract.scale
    out = []
    for image in images:
        # What the server feeds the model: a gray photo repeated to RGB for an RGB model, the BT.601
        # luma of a colour one for a luminance model (calibration folders mix both).
        image = image if image.ndim == 3 else image[:, :, None]
        image = to_channels(np.ascontiguousarray(image[..., :3]), contract.input_channels)
        if contract.task == "super_resolution":
            hr = _crop(image, EVAL_EDGE * s, m * s)
            out.append(Sample(downscale(hr, s), hr))
        elif contract.task == "colorization":
            photo = _crop(image, EVAL_EDGE, m)
            out.append(Sample(photo, photo))
        else:
            out.append(Sample(_crop(image, EVAL_EDGE, m), None))
    return out


def run_model(model_path: Path, samples: list[Sample]) -> list[np.ndarray]:
    """The model's uint8 outputs for each sample (one image per call: sizes differ)."""
    session = make_session(model_path)
    return [session.run([OUTPUT_NAME], {INPUT_NAME: s.input[None]})[0][0] for s in samples]


def score(
    task: str, samples: list[Sample], outputs: list[np.ndarray], reference: list[np.ndarray], scale: int
) -> float:
    """The task metric, averaged over the samples (see :data:`TOLERANCES`)."""
    values = []
    for sample, out, ref in zip(samples, outputs, reference, strict=True):
        if task == "super_resolution":
            values.append(psnr_y(out, sample.target, scale))
        elif task == "colorization":
            values.append(psnr(out, sample.target))
        else:
            values.append(psnr(out, ref))
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.inf


def quantizable(fp32_path: Path, work: Path) -> tuple[Path, onnx.ModelProto, list[str]]:
    """The graph to quantise (its path and its parsed model) and the interleave copies to leave in
    float (subpixel.py).

    A graph with phase kernels computed from its weights is folded into constants first (written
    into ``work``): the quantiser needs constant weights to quantise per channel.
    """
    model = onnx.load(str(fp32_path))
    copies = interleave_nodes(model)
    if not copies:
        return fp32_path, model, []
    folded, done = optimize_offline(model)
    if not done:
        raise QuantizationError(f"{fp32_path}: its phase kernels could not be folded into constants")
    path = work / "folded.onnx"
    onnx.save(folded, str(path))
    return path, folded, copies


# onnxruntime.quantization's advice, logged on the root logger before and after each quantize_static.
PREPROCESS_ADVICE = (
    "Please consider to run pre-processing before quantization",
    "Please consider pre-processing before quantization",
)
ORT_DEFAULT_SEVERITY = 2  # onnxruntime's default logger severity (warning); it has no getter
ORT_ERRORS_ONLY = 3  # what pixforge's own sessions log at (SessionOptions.log_severity_level)


class _DropPreprocessAdvice(logging.Filter):
    """Drops the root-logger records that are :data:`PREPROCESS_ADVICE`; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and record.getMessage().startswith(PREPROCESS_ADVICE))


@contextlib.contextmanager
def quiet_quantizer():
    """Run quantize_static without the onnxruntime noise a user cannot act on: five lines per call,
    one call per trial (35 lines for a model whose sensitivity search tries 7 variants).

    - The advice to run ``onnxruntime.quantization.quant_pre_process`` first (two warnings). Not
      taken: its symbolic shape inference fails on these graphs ("Incomplete symbolic shape
      inference"), and without that its onnxruntime optimisation rewrites the graph (59 -> 45 nodes
      for a tiny U-Net), which changes what is quantised and the node names the sensitivity search
      keeps in float. A logging filter on the root logger drops exactly these two messages.
    - The calibration session's warnings ("Initializer norm_stats appears in graph inputs and will
      not be treated as constant ..."): the tiling inputs are graph inputs with default values on
      purpose (norm_stats.py). quantize_static takes no session options, so onnxruntime's default
      severity is raised to errors only, as pixforge's own sessions log, for the call; set back to
      onnxruntime's default afterwards.
    """
    import onnxruntime as ort

    root = logging.getLogger()
    advice = _DropPreprocessAdvice()
    root.addFilter(advice)
    # onnxruntime logs through logging.warning(), which calls logging.basicConfig() when the root
    # logger has no handler and so leaves a "WARNING:root:" stderr handler behind for the rest of the
    # process. The last-resort handler (what prints such records otherwise) stands in for the call.
    stand_in = None if root.handlers else (logging.lastResort or logging.NullHandler())
    if stand_in is not None:
        root.addHandler(stand_in)
    ort.set_default_logger_severity(ORT_ERRORS_ONLY)
    try:
        yield
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_SEVERITY)
        if stand_in is not None:
            root.removeHandler(stand_in)
        root.removeFilter(advice)


def _quantize(src: Path, dst: Path, calibration: list[np.ndarray], exclude: list[str]) -> None:
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as exc:  # pragma: no cover - onnxruntime always ships it
        raise QuantizationError(f"onnxruntime's quantisation tools are missing: {exc}") from exc

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{INPUT_NAME: c[None]} for c in calibration])

        def get_next(self):
            return next(self._items, None)

    with quiet_quantizer():
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=False,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
        )


def quantize_int8(
    fp32_path: Path,
    contract: ModelContract,
    images: list[np.ndarray],
    log: Callable[[str], None] = print,
) -> tuple[onnx.ModelProto | None, Int8Report]:
    """Make the int8 variant of an fp32 model file, or say why not.

    Args:
        fp32_path: the fp32 reference graph (uint8 I/O, metadata included).
        contract: its contract (task, scale, size multiple, input channels).
        images: uint8 RGB calibration images (HWC); also the metric's images.

    Returns:
        (int8 model with ``precision`` metadata "int8", report), or (None, report) when the
        metric misses its tolerance even with half the convolutions in float.

    Raises:
        QuantizationError: no images, or an image too small for the model.
    """
    if not images:
        raise QuantizationError("--int8 needs calibration images (--calibration DIR)")
    samples = task_samples(images, contract)
    calibration = [_crop(s.input, CALIBRATION_EDGE, contract.size_multiple) for s in samples]
    fp32_out = run_model(fp32_path, samples)
    metric, kind, tolerance = TOLERANCES[contract.task]
    fp32_value = score(contract.task, samples, fp32_out, fp32_out, contract.scale)
    threshold = fp32_value - tolerance * GATE_SHARE if kind == "fp32" else tolerance
    with tempfile.TemporaryDirectory(prefix="pixforge-int8-") as tmp:
        work = Path(tmp)
        source, parsed, copies = quantizable(fp32_path, work)
        convs = [n.name for n in parsed.graph.node if n.op_type in QUANTIZED_OPS and n.name not in copies]
        if not convs:
            raise QuantizationError(f"{fp32_path} has no convolutions to quantise")

        def trial(exclude: list[str], tag: str) -> tuple[Path, float]:
            path = work / f"{tag}.onnx"
            _quantize(source, path, calibration, exclude + copies)
            return path, score(contract.task, samples, run_model(path, samples), fp32_out, contract.scale)

        path, value = trial([], "all")
        log(f"  int8, every convolution quantised: {metric} {value:.3f} (fp32 {fp32_value:.3f})")
        kept: list[str] = []
        if value < threshold:
            # Sensitivity of each convolution: the metric with only that one kept in float.
            gains = []
            for i, name in enumerate(convs):
                gains.append((trial([name], f"keep{i}")[1], name))
            gains.sort(reverse=True)
            for _, name in gains[: max(1, int(len(convs) * MAX_FLOAT_SHARE))]:
                kept.append(name)
                path, value = trial(kept, f"kept{len(kept)}")
                log(f"  keeping {len(kept)} convolution(s) in fp32 (last: {name}): {metric} {value:.3f}")
                if value >= threshold:
                    break
        report = Int8Report(metric, fp32_value, value, threshold, kept, len(convs) - len(kept), len(samples))
        if not report.passed:
            return None, report
        model = onnx.load(str(path))
    _set_precision(model, "int8")
    return model, report


def _set_precision(model: onnx.ModelProto, precision: str) -> None:
    for prop in model.metadata_props:
        if prop.key == "precision":
            prop.value = precision
            return
    model.metadata_props.append(onnx.StringStringEntryProto(key="precision", value=precision))


def int8_variant(
    model: onnx.ModelProto,
    contract: ModelContract,
    images: list[np.ndarray],
    log: Callable[[str], None] = print,
) -> tuple[onnx.ModelProto | None, Int8Report]:
    """:func:`quantize_int8` for an in-memory fp32 model (the export's reference graph)."""
    with tempfile.TemporaryDirectory(prefix="pixforge-fp32-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        return quantize_int8(path, contract, images, log)
