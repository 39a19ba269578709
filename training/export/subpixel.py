"""Sub-pixel (phase) rewrites of an exported graph, for onnxruntime's CPU convolution kernels.

Three patterns of exported generators run far below the speed of ordinary convolutions on
onnxruntime's CPU provider, whose fast convolutions are its NCHWc kernels (blocks of 8 output
channels on AVX2, 16 on AVX-512). Measured on the shipped models, 2-core AVX2, onnxruntime 1.31:

- ``ConvTranspose`` (the U-Net's 4x4 stride-2 upsampling) has no NCHWc kernel: it ran at about
  half the multiply-accumulates per second of ``Conv`` and took 103 of 163 ms of colourisation at
  512x512.
- nearest x2 ``Resize`` then a 3x3 ``Conv`` (resize-convolution upsampling) runs the convolution at
  the high resolution, where the 9 taps read only 4 distinct input pixels.
- a stride-1 ``Conv`` with fewer output channels than one NCHWc block (the ResNet's 7x7 RGB head,
  16 -> 3) keeps 3 of 8 lanes busy: 12.5 of 77 ms of apple2orange at 256x256.

Each becomes s*s "phase" computations at the low resolution whose outputs, channel c's phases
(a, b) adjacent (channel c*s*s + a*s + b), are interleaved into the image by one grouped
``ConvTranspose`` with one-hot s x s kernels and stride s: every output pixel is one input value
times 1.0, a copy (measured 2-10x faster than ``DepthToSpace`` for the same move).

- transposed convolution (kernel k = s*t, padding (k - s) / 2): phase (a, b) is a t x t
  convolution of the input with the kernel taps that land on it, padded per phase;
- nearest x2 + 3x3 convolution (zero padding 1): phase (a, b) is a 2x2 convolution of the
  low-resolution input with the taps that read the same pixel summed (4 taps instead of 9);
- narrow stride-1 convolution (odd kernel k, no padding): one stride-2 convolution with a
  (k + 1) x (k + 1) kernel giving all 4 phases of every output channel (3 -> 12 channels: the block
  fills), phase (a, b)'s kernel the original shifted by (a, b). (``SpaceToDepth`` then a
  (k + 1) / 2 kernel computes the same; its single-threaded copy made it 7 ms slower at 512x512.)
  The input's height and width must be even for every input the model accepts; they are probed by
  running the graph on the caller's inputs (multiples of the model's size multiple).

The function of the graph does not change: the same products are summed in another order (the
upsampling rewrite adds taps before multiplying), so outputs match to float rounding; the exporter's
parity check compares the rewritten graph with PyTorch, and only float32 graphs are rewritten.

The phase kernels are computed in the graph from the original weight tensors (Gather / MatMul /
Pad / Concat of initialisers), which keep their names: onnxruntime folds those nodes into constant
weights when it creates a session (before its NCHWc layout pass), the file stays the size of the
traced one, and ``pixforge export --from onnx`` still finds every weight by name. Node names start
with ``subpixel/``; the int8 quantiser folds the kernels first and leaves the interleave copies in
float.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

PREFIX = "subpixel/"
INTERLEAVE = "interleave"
MIN_PHASE_CHANNELS = 8  # one NCHWc block on AVX2: fewer output channels per phase run slower than before
NARROW_CHANNELS = 8  # a stride-1 conv with fewer output channels keeps lanes of its one block idle
NARROW_MIN_KERNEL = 3


@dataclass
class _Graph:
    """The graph being rewritten: initialisers by name, consumers by tensor, unique names, and
    the nodes of the rewrite in progress."""

    model: onnx.ModelProto
    # derived from the model in __post_init__, not arguments
    inits: dict[str, onnx.TensorProto] = field(init=False, default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(init=False, default_factory=dict)
    taken: set[str] = field(init=False, default_factory=set)
    # the next suffix to try per hint, so naming stays linear in the names made
    next_suffix: dict[str, int] = field(init=False, default_factory=dict)
    new_inits: list[onnx.TensorProto] = field(init=False, default_factory=list)
    nodes: list[onnx.NodeProto] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        g = self.model.graph
        self.inits = {i.name: i for i in g.initializer}
        for node in g.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            self.taken.update(node.output)
            self.taken.add(node.name)
        self.taken.update(self.inits)
        self.taken.update(v.name for v in list(g.input) + list(g.output))

    def name(self, hint: str) -> str:
        base = PREFIX + hint
        k = self.next_suffix.get(base, 0)
        while f"{base}_{k}" in self.taken:
            k += 1
        self.next_suffix[base] = k + 1
        self.taken.add(f"{base}_{k}")
        return f"{base}_{k}"

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.new_inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, out: str | None = None, **attrs) -> str:
        out = out or self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(hint), **attrs))
        return out

    def reshape(self, x: str, dims: list[int], hint: str) -> str:
        return self.op("Reshape", [x, self.const(np.array(dims, np.int64), "shape")], hint)

    def take(self) -> list[onnx.NodeProto]:
        nodes, self.nodes = self.nodes, []
        return nodes

    def weight(self, name: str) -> np.ndarray | None:
        """A float32 initialiser, or None (computed or other dtype: the node is left alone)."""
        if name not in self.inits:
            return None
        value = numpy_helper.to_array(self.inits[name])
        return value if value.dtype == np.float32 else None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _plain_2d(node: onnx.NodeProto) -> bool:
    """No dilation, no groups, explicit padding (what every rewrite assumes)."""
    return (
        _attr(node, "group", 1) == 1
        and all(d == 1 for d in _attr(node, "dilations", [1, 1]))
        and _attr(node, "auto_pad", "NOTSET") == "NOTSET"
    )


def _interleave(g: _Graph, phases: list[str], out: str, channels: int, s: int) -> None:
    """Interleave phase tensors (each N x C x H x W, phases (a, b) row-major) into ``out``
    (N x C x sH x sW); one tensor may already hold them all as channel c*s*s + a*s + b."""
    source = phases[0]
    if len(phases) > 1:
        # (N, C, 1, H, W) x s*s -> (N, C, s*s, H, W) -> (N, C*s*s, H, W): channel c's phases adjacent.
        axis = g.const(np.array([2], np.int64), "axis")
        lifted = [g.op("Unsqueeze", [ph, axis], "unsqueeze") for ph in phases]
        stacked = g.op("Concat", lifted, "concat", axis=2)
        shape = g.op("Shape", [phases[0]], "shape")
        target = g.op("Mul", [shape, g.const(np.array([1, s * s, 1, 1], np.int64), "phases")], "mul")
        source = g.op("Reshape", [stacked, target], "reshape")
    one_hot = np.zeros((channels * s * s, 1, s, s), np.float32)
    for c in range(channels):
        for a in range(s):
            for b in range(s):
                one_hot[c * s * s + a * s + b, 0, a, b] = 1.0
    g.op(
        "ConvTranspose",
        [source, g.const(one_hot, "one_hot")],
        INTERLEAVE,
        out=out,
        kernel_shape=[s, s],
        strides=[s, s],
        group=channels,
    )


def _transposed_taps(r: int, s: int, k: int, p: int) -> tuple[list[int], int, int]:
    """Phase r of a stride-s transposed convolution (kernel k = s*t, padding p): the kernel taps it
    uses, lowest input offset first, and its (before, after) padding of the input."""
    t = k // s
    first, top_offset = (r + p) % s, (r + p) // s
    taps = [first + s * (t - 1 - j) for j in range(t)]
    return taps, t - 1 - top_offset, top_offset


def _rewrite_transposed(g: _Graph, node: onnx.NodeProto) -> bool:
    w = g.weight(node.input[1])
    kernel, strides, pads = _attr(node, "kernel_shape"), _attr(node, "strides", [1, 1]), _attr(node, "pads")
    if (
        w is None
        or w.ndim != 4
        or not _plain_2d(node)
        or _attr(node, "output_shape") is not None
        or any(_attr(node, "output_padding", [0, 0]))
        or kernel is None
        or pads is None
    ):
        return False
    k, s, p = kernel[0], strides[0], pads[0]
    if kernel != [k, k] or strides != [s, s] or pads != [p] * 4 or s < 2 or k % s or k - 2 * p != s:
        return False
    c_out = w.shape[1]
    if c_out < MIN_PHASE_CHANNELS:
        return False
    phases = []
    for a in range(s):
        rows, top, bottom = _transposed_taps(a, s, k, p)
        for b in range(s):
            cols, left, right = _transposed_taps(b, s, k, p)
            # the phase's kernel, (in, out, k, k) -> (out, in, t, t), computed from the file's weight
            # tensor (which keeps its name); onnxruntime folds it to a constant when it loads the model
            taps = g.op("Gather", [node.input[1], g.const(np.array(rows, np.int64), "rows")], "taps", axis=2)
            taps = g.op("Gather", [taps, g.const(np.array(cols, np.int64), "cols")], "taps", axis=3)
            kernel_ab = g.op("Transpose", [taps], "phase_weight", perm=[1, 0, 2, 3])
            phases.append(
                g.op(
                    "Conv",
                    [node.input[0], kernel_ab, *node.input[2:3]],
                    "phase_conv",
                    kernel_shape=[len(rows), len(cols)],
                    pads=[top, left, bottom, right],
                )
            )
    _interleave(g, phases, node.output[0], c_out, s)
    return True


# nearest x2 then a 3x3 convolution: output row 2m reads input rows m-1 (tap 0) and m (taps 1, 2);
# row 2m+1 reads m (taps 0, 1) and m+1 (tap 2). Per phase: which taps each of its 2 rows sums.
_UPSAMPLE_TAPS = (((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1)))


def _nearest_x2(g: _Graph, node: onnx.NodeProto) -> bool:
    if node.op_type != "Resize" or len(node.input) != 3 or node.input[2] not in g.inits:
        return False
    scales = numpy_helper.to_array(g.inits[node.input[2]])
    return (
        _attr(node, "mode", "nearest") == "nearest"
        and _attr(node, "coordinate_transformation_mode") == "asymmetric"
        and _attr(node, "nearest_mode") == "floor"
        and scales.tolist() == [1.0, 1.0, 2.0, 2.0]
    )


def _rewrite_upsample_conv(g: _Graph, resize: onnx.NodeProto, conv: onnx.NodeProto) -> bool:
    w = g.weight(conv.input[1])
    if (
        w is None
        or w.shape[2:] != (3, 3)
        or not _plain_2d(conv)
        or _attr(conv, "strides", [1, 1]) != [1, 1]
        or _attr(conv, "pads") != [1, 1, 1, 1]
        or w.shape[0] < MIN_PHASE_CHANNELS
    ):
        return False
    phases = []
    for a in range(2):
        for b in range(2):
            # kernel_ab = rows_a @ w @ cols_b^T: the 2x2 kernel of summed taps, from the file's weight
            rows = g.const(np.array(_UPSAMPLE_TAPS[a], np.float32), "rows")
            cols = g.const(np.array(_UPSAMPLE_TAPS[b], np.float32).T.copy(), "cols")
            kernel_ab = g.op("MatMul", [g.op("MatMul", [rows, conv.input[1]], "taps"), cols], "phase_weight")
            phases.append(
                g.op(
                    "Conv",
                    [resize.input[0], kernel_ab, *conv.input[2:3]],
                    "phase_conv",
                    kernel_shape=[2, 2],
                    pads=[1 - a, 1 - b, a, b],
                )
            )
    _interleave(g, phases, conv.output[0], w.shape[0], 2)
    return True


def _narrow(g: _Graph, node: onnx.NodeProto) -> bool:
    w = g.weight(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
    return (
        w is not None
        and w.ndim == 4
        and w.shape[0] < NARROW_CHANNELS
        and w.shape[2] == w.shape[3] >= NARROW_MIN_KERNEL
        and w.shape[2] % 2  # odd: an even-sized input gives an even-sized output, 2 phases per axis
        and _plain_2d(node)
        and _attr(node, "strides", [1, 1]) == [1, 1]
        and not any(_attr(node, "pads", [0, 0, 0, 0]))
    )


def _rewrite_narrow(g: _Graph, node: onnx.NodeProto) -> None:
    c_out, c_in, k, _ = g.weight(node.input[1]).shape
    # Output (c, 2i+a, 2j+b) = sum w[c, :, dy, dx] x[:, 2i+a+dy, 2j+b+dx]: a stride-2 convolution
    # whose (k+1) x (k+1) kernel for phase (a, b) is w shifted by (a, b). Phases stack as c*4+a*2+b.
    per_phase = []
    axis = g.const(np.array([1], np.int64), "axis")
    for a in range(2):
        for b in range(2):
            pads = g.const(np.array([0, 0, a, b, 0, 0, 1 - a, 1 - b], np.int64), "pads")
            shifted = g.op("Pad", [node.input[1], pads], "shifted")
            per_phase.append(g.op("Unsqueeze", [shifted, axis], "phase"))
    stacked = g.op("Concat", per_phase, "stacked", axis=1)
    inputs = [node.input[0], g.reshape(stacked, [4 * c_out, c_in, k + 1, k + 1], "phase_weight")]
    if len(node.input) > 2 and node.input[2]:
        column = g.op("Unsqueeze", [node.input[2], axis], "bias")
        four = g.op("Expand", [column, g.const(np.array([c_out, 4], np.int64), "shape")], "bias")
        inputs.append(g.reshape(four, [4 * c_out], "phase_bias"))
    kernel = [k + 1, k + 1]
    phases = g.op("Conv", inputs, "phase_conv", kernel_shape=kernel, strides=[2, 2], pads=[0, 0, 0, 0])
    _interleave(g, [phases], node.output[0], c_out, 2)


def _even_inputs(model: onnx.ModelProto, tensors: list[str], probe_feeds: list[dict]) -> set[str]:
    """The tensors whose height and width were even for every probe input."""
    if not tensors or not probe_feeds:
        return set()
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    for name in tensors:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    even = set(tensors)
    for feed in probe_feeds:
        for name, value in zip(tensors, session.run(tensors, feed), strict=True):
            if value.ndim != 4 or value.shape[2] % 2 or value.shape[3] % 2:
                even.discard(name)
    return even


def probe_shapes(edge: int, multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (H, W) probe sizes :func:`subpixel_rewrites` needs: ``edge`` and ``edge + multiple``
    (consecutive multiples of the model's size multiple) in each dimension."""
    return (edge, edge + multiple), (edge + multiple, edge)


def subpixel_rewrites(
    model: onnx.ModelProto, probe_feeds: list[dict] = ()
) -> tuple[onnx.ModelProto, list[str]]:
    """Apply the module's rewrites wherever their pattern matches (see the module docstring).

    Args:
        model: a float32 graph (not modified).
        probe_feeds: input feeds at sizes the model accepts, among them two consecutive multiples
            of its size multiple in height and in width (:func:`probe_shapes`); the
            narrow-convolution rewrite applies only where the convolution's input was even-sized
            for all of them (none: never).

    Returns:
        (the rewritten model, one line per rewritten node saying what it became).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(model)
    outputs = {v.name for v in model.graph.output}
    narrow = [n for n in model.graph.node if _narrow(g, n)]
    even = _even_inputs(model, [n.input[0] for n in narrow], list(probe_feeds))
    narrow_even = {id(n) for n in narrow if n.input[0] in even}
    rewritten: list[onnx.NodeProto] = []
    notes: list[str] = []
    absorbed: set[int] = set()
    for node in model.graph.node:
        if id(node) in absorbed:
            continue
        label = node.name or node.output[0]
        if node.op_type == "ConvTranspose" and _rewrite_transposed(g, node):
            notes.append(f"{label}: ConvTranspose -> phase convolutions")
        elif _nearest_x2(g, node) and node.output[0] not in outputs:
            users = g.consumers.get(node.output[0], [])
            if len(users) == 1 and users[0].op_type == "Conv" and _rewrite_upsample_conv(g, node, users[0]):
                absorbed.add(id(users[0]))
                conv = users[0].name or users[0].output[0]
                notes.append(f"{conv}: nearest x2 + 3x3 Conv -> 2x2 phase convolutions")
        elif id(node) in narrow_even:
            _rewrite_narrow(g, node)
            notes.append(f"{label}: narrow Conv -> stride-2 phase convolution")
        rewritten.extend(g.take() or [node])
    if not notes:
        return model, []
    # An upsample rewrite emits its nodes where the Resize stood: the Conv's other inputs (weights) are
    # initialisers, so the order stays topological. The weights keep their names (a re-export from
    # the file reads them); only constants of this module are added.
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    model.graph.initializer.extend(g.new_inits)
    return model, notes


def interleave_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the interleave copies this module added (left in float by the int8 quantiser)."""
    return [n.name for n in model.graph.node if n.name.startswith(PREFIX + INTERLEAVE)]
