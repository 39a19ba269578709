"""Torch -> ONNX for the uint8 export wrapper: export, check, shape inference, offline optimisation.

Exporter choice (on purpose): the legacy TorchScript exporter, ``torch.onnx.export(..., dynamo=False)``.
- It needs no onnxscript (the dynamo exporter does; we pin nothing extra for export).
- It traces one example and keeps N/H/W symbolic through ``dynamic_axes``, including the U-Net skip
  concatenations and the ``Resize``/``DepthToSpace`` of the super-resolution heads; the parity check
  then runs the graph at sizes it was not traced at, so a shape baked in by tracing fails the export.
- Its DeprecationWarning (and the expected "instance_norm ... train=True" note: per-image statistics
  are what we want) are silenced here only, around the one call.

Offline optimisation (on purpose): onnxruntime ``ORT_ENABLE_BASIC`` on fp32 graphs only. Basic
rewrites (constant folding, redundant-node elimination) are provider-independent; EXTENDED and
layout levels may bake provider-specific fused ops, and on an fp16 graph the CPU provider bakes its
fp32 fallback Casts into the saved file. The optimised graph is kept only if every node is still a
standard ONNX op; the server applies its own full optimisation for the provider it runs on.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from pixforge import __version__
from pixforge.contract import INPUT_NAME, OUTPUT_NAME
from pixforge.errors import PixforgeError


class OnnxExportError(PixforgeError, RuntimeError):
    """Exporting or checking the ONNX graph failed (message says which step)."""


def _quiet_export(module: torch.nn.Module, example: torch.Tensor, opset: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*instance_norm.*train=True.*")
        warnings.filterwarnings("ignore", message=r".*Constant folding - Only steps=1.*")
        # Shape-dependent Python in nn modules (e.g. norm input checks); a baked shape would fail parity.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "batch", 1: "height", 2: "width"},
                OUTPUT_NAME: {0: "batch", 1: "out_height", 2: "out_width"},
            },
            do_constant_folding=True,
        )
    return buffer.getvalue()


def _set_io_shapes(model: onnx.ModelProto, input_channels: int, output_channels: int) -> None:
    # Name the dynamic dims ourselves: the exporter's inferred names can alias (e.g. height == batch).
    for value, dims in (
        (model.graph.input[0], ("batch", "height", "width", input_channels)),
        (model.graph.output[0], ("batch", "out_height", "out_width", output_channels)),
    ):
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            dim = shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = d


def check_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker (full, with strict shape inference) then shape inference; returns the inferred model."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxExportError(f"the exported graph fails onnx.checker/shape inference: {exc}") from exc


def _prune_opsets(model: onnx.ModelProto) -> None:
    used = {node.domain for node in model.graph.node} | {""}
    keep = [op for op in model.opset_import if op.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def optimize_offline(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Run onnxruntime's BASIC graph optimisation offline.

    Returns:
        (model, optimised): the optimised model when it uses only standard ONNX ops, else the input.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="pixforge-ort-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(dst)
        options.log_severity_level = 3
        ort.InferenceSession(str(src), sess_options=options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(dst))
    if any(node.domain not in ("", "ai.onnx") for node in optimized.graph.node):
        return model, False
    _prune_opsets(optimized)
    del optimized.metadata_props[:]
    optimized.metadata_props.extend(model.metadata_props)
    optimized.producer_name, optimized.producer_version = model.producer_name, model.producer_version
    return check_model(optimized), True


def export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    *,
    opset: int,
    input_channels: int,
    output_channels: int,
    metadata: dict[str, str],
    optimize: bool = True,
) -> tuple[onnx.ModelProto, bool]:
    """Export the uint8 wrapper to a checked ONNX model carrying ``metadata``.

    Args:
        module: the Uint8ImageModel, in eval mode.
        example: a uint8 NHWC example input used for tracing (batch >= 2, H != W, so that neither
            the batch size nor a square shape gets baked into the graph).
        opset: ONNX opset version.
        input_channels / output_channels: the fixed channel dims of the I/O signature.
        metadata: metadata_props to store.
        optimize: run :func:`optimize_offline` (fp32 graphs only; see the module docstring).

    Returns:
        (model, optimised).
    """
    try:
        with torch.no_grad():
            raw = _quiet_export(module, example, opset)
    except Exception as exc:  # the exporter raises many types; the user needs the step and the cause
        raise OnnxExportError(
            f"torch.onnx.export (TorchScript exporter, opset {opset}) failed: {exc}"
        ) from exc
    model = onnx.load_from_string(raw)
    _set_io_shapes(model, input_channels, output_channels)
    model.producer_name, model.producer_version = "pixforge", __version__
    onnx.helper.set_model_props(model, metadata)
    model = check_model(model)
    optimised = False
    if optimize:
        model, optimised = optimize_offline(model)
    return model, optimised
