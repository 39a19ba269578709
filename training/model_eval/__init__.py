"""`pixforge eval`: re-measure a served model's quality on a folder of images.

Images go through the exported ONNX model exactly as a client's would (locally with onnxruntime,
or through a running server), then each task's metrics are computed on the uint8 results:

- super_resolution (`super_resolution.py`): Y-PSNR / Y-SSIM vs a bicubic baseline, sharpness.
- colorization (`colorization.py`): PSNR / SSIM vs the gray input, colourfulness.
- style_translation (`style_translation.py`): domain-classifier transfer rate, content and cycle PSNR.
- paired_translation (`paired.py`): PSNR / SSIM against the paired target.

`report.py` turns a result into a Markdown table, results.json, a per-image CSV and a sample grid.
"""

from .errors import EvalError
from .evaluate import EvalOptions, evaluate
from .report import TaskReport, markdown, write_outputs
from .runner import EvaluatedModel, Runner, open_runner

__all__ = [
    "EvalError",
    "EvalOptions",
    "EvaluatedModel",
    "Runner",
    "TaskReport",
    "evaluate",
    "markdown",
    "open_runner",
    "write_outputs",
]
