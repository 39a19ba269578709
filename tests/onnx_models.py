"""Tiny contract-valid ONNX models written with onnx.helper (no torch), for any area's tests.

Like loopback.py this sits at the top of tests/, which pytest puts on sys.path, so every area can
import it: tests/service builds its model repository from it and tests/deploy its one model.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from pixforge.contract import INPUT_NAME, OUTPUT_NAME

OPSET = 17


def contract_metadata(
    task: str, scale: int, cin: int, cout: int, size_multiple: int, tile: int, **extra: str
) -> dict[str, str]:
    """The metadata_props of a contract-valid model; ``extra`` adds or overrides keys."""
    meta = {
        "pixforge.contract": "1",
        "task": task,
        "scale": str(scale),
        "input_channels": str(cin),
        "output_channels": str(cout),
        "size_multiple": str(size_multiple),
        "tile_size": str(tile),
        "description": f"test model ({task})",
        "precision": "fp32",
    }
    meta.update(extra)
    return meta


def save_model(
    path: Path,
    nodes,
    inits,
    cin: int,
    cout: int,
    meta: dict[str, str] | None,
    in_type=TensorProto.UINT8,
    out_type=TensorProto.UINT8,
) -> Path:
    """Check and write a graph from the contract's input [N, H, W, cin] to its output [N, H2, W2, cout].

    Args:
        path: the model file (``<repo>/<name>/<version>/model.onnx``); its folders are made.
        nodes, inits: the graph's nodes and initializers.
        meta: metadata_props (see :func:`contract_metadata`); None writes none.
    """
    inp = helper.make_tensor_value_info(INPUT_NAME, in_type, ["N", "H", "W", cin])
    out = helper.make_tensor_value_info(OUTPUT_NAME, out_type, ["N", "H2", "W2", cout])
    graph = helper.make_graph(nodes, "g", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    if meta:
        for k, v in meta.items():
            model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
