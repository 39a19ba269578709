"""Tiling-invariant normalisation: expose every per-image norm layer's statistics in the ONNX graph.

Exported generators normalise with each image's own statistics (instance norm, and batch norm in
pixforge's inference semantics). Run tile by tile, each tile would be normalised with *its*
statistics and the output would change tone from tile to tile. This module rewrites every
``InstanceNormalization`` node of an exported graph so a server can normalise every tile with the
statistics of the *whole image* instead (docs/model-contract.md, "Tiling-invariant models").

Extra inputs. They have default values (graph inputs backed by initialisers), so a caller that
feeds only ``image`` runs the original ``InstanceNormalization`` nodes, the same arithmetic and
speed as before the rewrite:

- ``norm_mode`` float32 [L], one value per norm layer: 0 = each image's own statistics (the
  default, the original node); 1 = the statistics given in ``norm_stats``; 2 = statistics pooled
  over the cores of all images of the batch (a self-consistent pass over a downscaled copy).
- ``norm_stats`` float32 [N, S]: per norm layer k, in graph order, the mean (C_k values) then the
  variance (C_k values) to normalise with in mode 1; S = 2 * sum(C_k).
- ``tile_core`` float32 [N, 4]: (top, bottom, left, right) of the part of each tile it accounts
  for, as fractions of the tile. A pixel (r, c) of an H x W feature map is in the core when
  (r + 0.5) / H is in [top, bottom) and (c + 0.5) / W in [left, right): the same rule at every
  resolution of the network, so cores that partition the image partition every feature map.

Extra output ``norm_sums`` float32 [N, T] (modes 1 and 2; zeros in mode 0): per norm layer k the
sum (C_k values), the sum of squares about the core's own mean (C_k values) and the pixel count
(1 value) of that layer's *input* over the core; T = sum(2 * C_k + 1). A server merges them over an
image's tiles (Chan et al.'s pairwise variance) into the image's mean and variance per layer.

The metadata key ``norm_channels`` lists the C_k ("16,32,64,...") so the server needs no knowledge
of the architecture. Pure ``onnx``: no torch, so files exported long ago can be rewritten too.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pixforge.errors import PixforgeError

MODE_INPUT = "norm_mode"
STATS_INPUT = "norm_stats"
CORE_INPUT = "tile_core"
SUMS_OUTPUT = "norm_sums"
EXTRA_INPUTS = (MODE_INPUT, STATS_INPUT, CORE_INPUT)
NORM_OPS = ("InstanceNormalization",)
UNSUPPORTED_NORM_OPS = ("BatchNormalization", "GroupNormalization", "LayerNormalization")


class NormStatsError(PixforgeError, ValueError):
    """The graph cannot be rewritten (an unexpected normalisation node or layout)."""


class _Builder:
    """Collects nodes and constants with unique names for one (sub)graph."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}/{hint}_{self._n}"

    def const(self, value, dtype=np.float32, hint: str = "c") -> str:
        """A constant; inside If branches constants must be nodes, so always emit a Constant node."""
        name = self.name(hint)
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def norm_channels(model: onnx.ModelProto) -> list[int]:
    """Channel count of each InstanceNormalization node, in graph order.

    Raises:
        NormStatsError: a norm layer whose scale is not a constant.
    """
    out = []
    for node in model.graph.node:
        if node.op_type in NORM_OPS:
            scale = _constant_value(model.graph, node.input[1])
            if scale is None:
                raise NormStatsError(f"{node.name}: the scale of an instance norm must be a constant")
            out.append(int(scale.size))
    return out


def _core_mask(b: _Builder, xf: str) -> str:
    """[N, 1, H, W] float mask of the feature-map pixels inside each image's tile core."""
    shape = b.op("Shape", [xf])
    half = b.const(0.5)
    masks = []
    for axis, (k_lo, k_hi) in ((2, (0, 1)), (3, (2, 3))):
        lo = b.op(
            "Slice",
            [CORE_INPUT, b.const([k_lo], np.int64), b.const([k_lo + 1], np.int64), b.const([1], np.int64)],
            "lo",
        )
        hi = b.op(
            "Slice",
            [CORE_INPUT, b.const([k_hi], np.int64), b.const([k_hi + 1], np.int64), b.const([1], np.int64)],
            "hi",
        )
        size = b.op("Gather", [shape, b.const(axis, np.int64)], "size", axis=0)
        index = b.op(
            "Cast", [b.op("Range", [b.const(0, np.int64), size, b.const(1, np.int64)])], to=TensorProto.FLOAT
        )
        pos = b.op("Div", [b.op("Add", [index, half]), b.op("Cast", [size], to=TensorProto.FLOAT)], "pos")
        inside = b.op("And", [b.op("GreaterOrEqual", [pos, lo]), b.op("Less", [pos, hi])], "inside")
        mask = b.op("Cast", [inside], to=TensorProto.FLOAT)  # [N, size]
        spread = [1, 3] if axis == 2 else [1, 2]  # -> [N, 1, H, 1] or [N, 1, 1, W]
        masks.append(b.op("Unsqueeze", [mask, b.const(spread, np.int64)]))
    return b.op("Mul", masks, "mask")


def _stats_branch(
    prefix: str, x: str, scale: str, bias: str, eps: float, dtype: int, c: int, offset: int, mode: str
) -> onnx.GraphProto:
    """Modes 1 and 2: normalise with frozen or batch-pooled statistics; report the core's sums."""
    b = _Builder(prefix)
    xf = b.op("Cast", [x], "xf", to=TensorProto.FLOAT) if dtype != TensorProto.FLOAT else x
    mask = _core_mask(b, xf)
    one = b.const(1.0)
    axes_hw = b.const([2, 3], np.int64)
    axes_nhw = b.const([0, 2, 3], np.int64)
    # sums over each image's core (the norm_sums output) ...
    count = b.op("ReduceSum", [mask, axes_hw], "count", keepdims=1)  # [N, 1, 1, 1]
    total = b.op("ReduceSum", [b.op("Mul", [xf, mask]), axes_hw], "sum", keepdims=1)  # [N, C, 1, 1]
    dev = b.op("Mul", [b.op("Sub", [xf, b.op("Div", [total, b.op("Max", [count, one])])]), mask])
    m2 = b.op("ReduceSum", [b.op("Mul", [dev, dev]), axes_hw], "m2", keepdims=1)
    # ... and pooled over the batch (mode 2)
    count_p = b.op("Max", [b.op("ReduceSum", [mask, axes_nhw], keepdims=1), one])
    mean_p = b.op("Div", [b.op("ReduceSum", [b.op("Mul", [xf, mask]), axes_nhw], keepdims=1), count_p])
    dev_p = b.op("Mul", [b.op("Sub", [xf, mean_p]), mask])
    var_p = b.op("Div", [b.op("ReduceSum", [b.op("Mul", [dev_p, dev_p]), axes_nhw], keepdims=1), count_p])
    # frozen statistics (mode 1)
    shape_c = b.const([-1, c, 1, 1], np.int64)
    axis1 = b.const([1], np.int64)

    def frozen(start: int) -> str:
        part = b.op("Slice", [STATS_INPUT, b.const([start], np.int64), b.const([start + c], np.int64), axis1])
        return b.op("Reshape", [part, shape_c])

    mean_f, var_f = frozen(offset), frozen(offset + c)
    use_frozen = b.op("Cast", [b.op("Less", [mode, b.const([1.5])])], to=TensorProto.FLOAT)
    use_frozen = b.op("Reshape", [use_frozen, b.const([1, 1, 1, 1], np.int64)])
    mean = b.op("Add", [mean_p, b.op("Mul", [use_frozen, b.op("Sub", [mean_f, mean_p])])], "mean")
    var = b.op("Add", [var_p, b.op("Mul", [use_frozen, b.op("Sub", [var_f, var_p])])], "var")
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(eps)])])], "inv_std")
    shape_1c = b.const([1, -1, 1, 1], np.int64)
    gamma = b.op("Reshape", [b.op("Cast", [scale], to=TensorProto.FLOAT), shape_1c])
    beta = b.op("Reshape", [b.op("Cast", [bias], to=TensorProto.FLOAT), shape_1c])
    y = b.op("Add", [b.op("Mul", [b.op("Mul", [b.op("Sub", [xf, mean]), inv]), gamma]), beta], "y")
    if dtype != TensorProto.FLOAT:
        y = b.op("Cast", [y], "y_cast", to=dtype)
    flat_c = b.const([-1, c], np.int64)
    outs = [
        b.op("Identity", [y], "out_y"),
        b.op("Reshape", [total, flat_c], "out_sum"),
        b.op("Reshape", [m2, flat_c], "out_m2"),
        b.op("Reshape", [count, b.const([-1, 1], np.int64)], "out_count"),
    ]
    return helper.make_graph(b.nodes, f"{prefix}_stats", [], _branch_outputs(outs, dtype))


def _branch_outputs(names: list[str], dtype: int) -> list[onnx.ValueInfoProto]:
    """If-branch outputs: the normalised tensor (the layer's dtype) and three float32 sums."""
    types = [dtype, TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT]
    return [helper.make_tensor_value_info(n, t, None) for n, t in zip(names, types, strict=True)]


def _plain_branch(prefix: str, node: onnx.NodeProto, eps: float, c: int, dtype: int) -> onnx.GraphProto:
    """Mode 0: the original node (epsilon ``eps``); zero sums of the right width."""
    b = _Builder(prefix)
    y = b.op("InstanceNormalization", list(node.input), "y", epsilon=eps)
    zeros_c = b.const(np.zeros((1, c), np.float32), hint="zeros_c")
    outs = [
        b.op("Identity", [y], "out_y"),
        b.op("Identity", [zeros_c], "out_sum"),
        b.op("Identity", [zeros_c], "out_m2"),
        b.op("Identity", [b.const(np.zeros((1, 1), np.float32))], "out_count"),
    ]
    return helper.make_graph(b.nodes, f"{prefix}_plain", [], _branch_outputs(outs, dtype))


def _elem_type(model: onnx.ModelProto, name: str) -> int:
    for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if info.name == name:
            return info.type.tensor_type.elem_type
    return TensorProto.FLOAT


def add_norm_statistics_io(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[int]]:
    """Rewrite every InstanceNormalization node for whole-image statistics (see the module doc).

    Args:
        model: an exported pixforge graph (left untouched).

    Returns:
        (the rewritten model, the channel count of each norm layer). A graph without
        normalisation layers comes back unchanged with an empty list.

    Raises:
        NormStatsError: a normalisation node the rewrite does not handle, or a graph that already
            has the statistics inputs.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if any(n.op_type in UNSUPPORTED_NORM_OPS for n in model.graph.node):
        raise NormStatsError("only InstanceNormalization layers can be made tiling-invariant")
    if any(i.name in EXTRA_INPUTS for i in model.graph.input):
        raise NormStatsError("the graph already has the norm statistics inputs")
    channels = norm_channels(model)
    if not channels:
        return model, []
    typed = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    top = _Builder("norm_stats")
    nodes: list[onnx.NodeProto] = []
    pieces: list[str] = []
    offset = 0
    # Every layer's mode (a 1-element tensor) and If condition (mode > 0), split once from norm_mode:
    # 3 nodes for the graph instead of 3 per layer (each small node costs a dispatch per run).
    ones = top.const(np.ones(len(channels)), np.int64, "ones")
    modes = [top.name("mode") for _ in channels]
    conds = [top.name("use_stats") for _ in channels]
    above = top.op("Greater", [MODE_INPUT, top.const(0.5)], "above")
    top.nodes += [
        helper.make_node("Split", [MODE_INPUT, ones], modes, name=top.name("split_modes"), axis=0),
        helper.make_node("Split", [above, ones], conds, name=top.name("split_conds"), axis=0),
    ]
    nodes.extend(top.nodes)
    top.nodes = []
    for node in graph.node:
        if node.op_type not in NORM_OPS:
            nodes.append(node)
            continue
        k = len(pieces) // 3
        c = channels[k]
        prefix = f"norm_stats/layer{k}"
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        dtype = _elem_type(typed, node.input[0])
        mode, cond = modes[k], conds[k]
        then_g = _stats_branch(
            prefix + "/then", node.input[0], node.input[1], node.input[2], eps, dtype, c, offset, mode
        )
        else_g = _plain_branch(prefix + "/else", node, eps, c, dtype)
        outs = [node.output[0], f"{prefix}/sum", f"{prefix}/m2", f"{prefix}/count"]
        nodes.append(
            helper.make_node("If", [cond], outs, name=f"{prefix}/if", then_branch=then_g, else_branch=else_g)
        )
        pieces += outs[1:]
        offset += 2 * c
    nodes.append(helper.make_node("Concat", pieces, [SUMS_OUTPUT], name="norm_stats/sums", axis=1))
    del graph.node[:]
    graph.node.extend(nodes)
    # Inputs backed by initialisers are optional; their values are the defaults (mode 0).
    defaults = {
        MODE_INPUT: (np.zeros(len(channels), np.float32), [len(channels)]),
        STATS_INPUT: (np.zeros((1, offset), np.float32), ["N", offset]),
        CORE_INPUT: (np.array([[0.0, 1.0, 0.0, 1.0]], np.float32), ["N", 4]),
    }
    for name, (value, dims) in defaults.items():
        graph.initializer.append(numpy_helper.from_array(value, name))
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    sums_size = sum(2 * c + 1 for c in channels)
    graph.output.append(helper.make_tensor_value_info(SUMS_OUTPUT, TensorProto.FLOAT, ["N", sums_size]))
    onnx.checker.check_model(model)
    return model, channels
