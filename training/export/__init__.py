"""Export a trained generator to a uint8-in / uint8-out ONNX model-repository entry.

See docs/model-contract.md. Public API:
- :func:`export_generator` with :class:`ExportConfig` (the whole pipeline),
- :class:`Uint8ImageModel` / :func:`to_inference_semantics` (the wrapper and eval-mode rewrite),
- errors: :class:`ExportError`, :class:`ParityError`, :class:`OnnxExportError`, :class:`RepositoryWriteError`.
"""

from .onnx_build import OnnxExportError, export_onnx
from .parity import ParityError, ParityReport
from .pipeline import ExportConfig, ExportError, ExportResult, default_tile_size, export_generator
from .wrapper import Uint8ImageModel, build_export_module, to_inference_semantics
from .writer import RepositoryWriteError, choose_version

__all__ = [
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "OnnxExportError",
    "ParityError",
    "ParityReport",
    "RepositoryWriteError",
    "Uint8ImageModel",
    "build_export_module",
    "choose_version",
    "default_tile_size",
    "export_generator",
    "export_onnx",
    "to_inference_semantics",
]
