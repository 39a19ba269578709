"""The model contract (docs/model-contract.md): the one module that reads and validates it.

A pixforge model is an ONNX file whose graph takes uint8 NHWC images and returns uint8 NHWC
images, with every normalisation and colour-space conversion inside the graph, and whose
``metadata_props`` describe it. The exporter writes these keys, the server and ``pixforge models``
read them back through :func:`load_contract`; nothing else parses metadata by hand.

No torch, no gRPC: onnxruntime is imported only by :func:`load_contract`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pixforge.errors import ContractError

CONTRACT_VERSION = "2"
# Version 1 files load as before; they lack what tiling-invariant inference needs (below).
SUPPORTED_VERSIONS = ("1", "2")
TASKS = ("super_resolution", "colorization", "style_translation", "paired_translation")

# metadata_props keys. REQUIRED ones must be present; the rest are informative.
KEY_CONTRACT = "pixforge.contract"
KEY_TASK = "task"
KEY_SCALE = "scale"
KEY_INPUT_CHANNELS = "input_channels"
KEY_OUTPUT_CHANNELS = "output_channels"
KEY_SIZE_MULTIPLE = "size_multiple"
KEY_TILE_SIZE = "tile_size"
REQUIRED_KEYS = (
    KEY_CONTRACT,
    KEY_TASK,
    KEY_SCALE,
    KEY_INPUT_CHANNELS,
    KEY_OUTPUT_CHANNELS,
    KEY_SIZE_MULTIPLE,
    KEY_TILE_SIZE,
)
OPTIONAL_KEYS = (
    "description",  # one line for humans
    "training_data",  # what it was trained on
    "training_config",  # JSON summary of the resolved training config
    "metrics",  # JSON object of the last validation's metrics
    "source_checkpoint_sha256",  # hash of the checkpoint it was exported from
    "export_date",  # ISO-8601 UTC
    "pixforge_version",  # exporter version
    "precision",  # "fp32" or "fp16" (I/O stay uint8 either way)
    "arch",  # generator architecture name from the training registry
    "receptive_radius",  # v2: input pixels on each side that can change an output pixel
    "norm_channels",  # v2: channels of each per-image norm layer ("16,32"), "" when there are none
    "int8_speedup",  # int8 variants: "<cpu class>:<fp32 time / int8 time>" measured at export
)
KEY_RECEPTIVE_RADIUS = "receptive_radius"
KEY_NORM_CHANNELS = "norm_channels"
KEY_INT8_SPEEDUP = "int8_speedup"


def parse_speedups(text: str) -> dict[str, float]:
    """``int8_speedup`` metadata ("no-vnni:1.12", or several comma-separated) as {cpu class: ratio};
    entries that do not parse are left out (an unknown format must not stop a model loading)."""
    out: dict[str, float] = {}
    for item in text.split(","):
        cls, _, ratio = item.strip().partition(":")
        try:
            out[cls] = float(ratio)
        except ValueError:
            continue
    return out


INPUT_NAME = "image"
OUTPUT_NAME = "image_out"
# Version 2 models with per-image normalisation also have these (docs/model-contract.md,
# "Tiling-invariant models"): optional inputs with defaults, and one more output.
NORM_MODE_INPUT = "norm_mode"
NORM_STATS_INPUT = "norm_stats"
TILE_CORE_INPUT = "tile_core"
NORM_SUMS_OUTPUT = "norm_sums"


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type (ONNX name like "uint8") and shape (ints, or None/str for dynamic dims)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class ModelContract:
    """What a valid pixforge model promises.

    Attributes:
        task: one of TASKS.
        scale: output size / input size (>= 1).
        input_channels: 1 (luminance) or 3 (RGB).
        output_channels: 1 or 3.
        size_multiple: input H and W must be multiples of this (server pads and crops back).
        tile_size: recommended tile edge in input pixels (a multiple of size_multiple).
        metadata: every metadata_props entry, verbatim.
        version: the contract version the file declares ("1" or "2").
        receptive_radius: (v2) input pixels on each side of an input pixel that can change the
            output at it; 0 when unknown (v1).
        norm_channels: (v2) channel count of each per-image normalisation layer, in graph order;
            empty for a norm-free model. Such layers read/write the statistics I/O.
    """

    task: str
    scale: int
    input_channels: int
    output_channels: int
    size_multiple: int
    tile_size: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    version: str = CONTRACT_VERSION
    receptive_radius: int = 0
    norm_channels: tuple[int, ...] = ()

    @property
    def tiling_invariant(self) -> bool:
        """Whether tiled inference can equal whole-image inference: a v2 file states its receptive
        field and exposes its normalisation statistics (v1 files do neither)."""
        return self.version != "1" and self.receptive_radius > 0

    @property
    def description(self) -> str:
        return self.metadata.get("description", "")

    @property
    def metrics(self) -> dict:
        try:
            value = json.loads(self.metadata.get("metrics", "{}"))
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    def to_metadata(self) -> dict[str, str]:
        """The metadata_props this contract is written as (required keys over any extras)."""
        out = dict(self.metadata)
        out.update(
            {
                KEY_CONTRACT: self.version,
                KEY_TASK: self.task,
                KEY_SCALE: str(self.scale),
                KEY_INPUT_CHANNELS: str(self.input_channels),
                KEY_OUTPUT_CHANNELS: str(self.output_channels),
                KEY_SIZE_MULTIPLE: str(self.size_multiple),
                KEY_TILE_SIZE: str(self.tile_size),
            }
        )
        if self.version != "1":
            out[KEY_RECEPTIVE_RADIUS] = str(self.receptive_radius)
            out[KEY_NORM_CHANNELS] = ",".join(str(c) for c in self.norm_channels)
        return out


def _int_key(
    meta: Mapping[str, str], key: str, allowed: Sequence[int] | None = None, minimum: int = 1
) -> int:
    raw = meta[key]
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ContractError(f"metadata {key!r} must be an integer, got {raw!r}") from None
    if allowed is not None and value not in allowed:
        raise ContractError(f"metadata {key!r} must be one of {list(allowed)}, got {value}")
    if value < minimum:
        raise ContractError(f"metadata {key!r} must be >= {minimum}, got {value}")
    return value


def _check_tensor(spec: TensorSpec, role: str, channels: int) -> None:
    if spec.dtype != "uint8":
        raise ContractError(f"{role} {spec.name!r} must be uint8 (images in, images out), got {spec.dtype}")
    if len(spec.shape) != 4:
        raise ContractError(f"{role} {spec.name!r} must be 4-D NHWC, got shape {list(spec.shape)}")
    c = spec.shape[3]
    if not isinstance(c, int):
        hint = " (it looks NCHW; the contract is NHWC)" if isinstance(spec.shape[1], int) else ""
        raise ContractError(
            f"{role} {spec.name!r} must have a fixed channel dimension last, got {list(spec.shape)}{hint}"
        )
    if c != channels:
        raise ContractError(f"{role} {spec.name!r} has {c} channels but metadata says {channels}")
    for axis, label in ((0, "batch"), (1, "height"), (2, "width")):
        if isinstance(spec.shape[axis], int):
            raise ContractError(
                f"{role} {spec.name!r} must have a dynamic {label} dimension, got {spec.shape[axis]}"
            )


def parse_contract(
    metadata: Mapping[str, str], inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> ModelContract:
    """Validate a model's metadata and I/O signature against the contract.

    Args:
        metadata: the ONNX metadata_props.
        inputs: the graph inputs.
        outputs: the graph outputs.

    Returns:
        The parsed ModelContract.

    Raises:
        ContractError: with a message naming the first broken rule.
    """
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ContractError(
            f"not a pixforge model: metadata is missing {', '.join(missing)} (see docs/model-contract.md)"
        )
    version = metadata[KEY_CONTRACT]
    if version not in SUPPORTED_VERSIONS:
        raise ContractError(
            f"model contract version {version!r} is not supported "
            f"(this server reads {', '.join(map(repr, SUPPORTED_VERSIONS))})"
        )
    if version != "1" and KEY_RECEPTIVE_RADIUS not in metadata:
        raise ContractError(f"a contract {version} model must state {KEY_RECEPTIVE_RADIUS!r} in its metadata")
    task = metadata[KEY_TASK]
    if task not in TASKS:
        raise ContractError(f"metadata 'task' must be one of {', '.join(TASKS)}, got {task!r}")
    contract = ModelContract(
        task=task,
        scale=_int_key(metadata, KEY_SCALE),
        input_channels=_int_key(metadata, KEY_INPUT_CHANNELS, (1, 3)),
        output_channels=_int_key(metadata, KEY_OUTPUT_CHANNELS, (1, 3)),
        size_multiple=_int_key(metadata, KEY_SIZE_MULTIPLE),
        tile_size=_int_key(metadata, KEY_TILE_SIZE),
        metadata=dict(metadata),
        version=version,
        receptive_radius=_int_key(metadata, KEY_RECEPTIVE_RADIUS, minimum=0) if version != "1" else 0,
        norm_channels=_channel_list(metadata.get(KEY_NORM_CHANNELS, "")) if version != "1" else (),
    )
    if contract.tile_size % contract.size_multiple:
        raise ContractError(
            f"metadata 'tile_size' {contract.tile_size} is not a multiple of "
            f"'size_multiple' {contract.size_multiple}"
        )
    if task != "super_resolution" and contract.scale != 1:
        raise ContractError(f"a {task} model must have scale 1, got {contract.scale}")
    # The statistics inputs have defaults (initialisers), so onnxruntime does not list them.
    want_outputs = 2 if contract.norm_channels else 1
    if len(inputs) != 1 or len(outputs) != want_outputs:
        raise ContractError(
            f"a pixforge model has exactly one input and {want_outputs} output(s)"
            f"{' (image_out, norm_sums)' if want_outputs == 2 else ''}, got {len(inputs)} and {len(outputs)}"
        )
    _check_tensor(inputs[0], "input", contract.input_channels)
    _check_tensor(outputs[0], "output", contract.output_channels)
    if want_outputs == 2 and outputs[1].name != NORM_SUMS_OUTPUT:
        raise ContractError(f"the second output must be {NORM_SUMS_OUTPUT!r}, got {outputs[1].name!r}")
    return contract


def _channel_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ContractError(
            f"metadata {KEY_NORM_CHANNELS!r} must be comma-separated integers, got {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise ContractError(f"metadata {KEY_NORM_CHANNELS!r} must list positive channel counts, got {text!r}")
    return values


_ORT_TYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16"}


def _ort_spec(arg) -> TensorSpec:
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), tuple(arg.shape))


def contract_from_session(session) -> ModelContract:
    """Validate a loaded onnxruntime.InferenceSession and return its contract."""
    meta = session.get_modelmeta().custom_metadata_map
    return parse_contract(
        meta, [_ort_spec(a) for a in session.get_inputs()], [_ort_spec(a) for a in session.get_outputs()]
    )


def load_contract(path: str | Path) -> ModelContract:
    """Open an ONNX file on the CPU provider, validate it and return its contract.

    Raises:
        ContractError: unreadable file or a broken contract.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ContractError(f"no model file at {path}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ContractError(
            f"{path} is not a loadable ONNX model: {str(exc).strip().splitlines()[0]}"
        ) from exc
    return contract_from_session(session)


# What every precision variant of a version must share with its reference model.onnx.
_VARIANT_FIELDS = ("task", "scale", "input_channels", "output_channels", "size_multiple", "norm_channels")


def check_variant(reference: ModelContract, variant: ModelContract, precision: str, path: str | Path) -> None:
    """Refuse a precision variant (``model.<precision>.onnx``) that is not the same model as the
    reference in another precision: its metadata must state that precision, and its task, scale,
    channels, size multiple and norm layers must equal the reference's (the server swaps one for
    the other).

    Raises:
        ContractError: naming which field differs.
    """
    stated = variant.metadata.get("precision", "fp32")
    if stated != precision:
        raise ContractError(f"{path} says its precision is {stated!r}, its file name says {precision!r}")
    for key in _VARIANT_FIELDS:
        theirs, ours = getattr(variant, key), getattr(reference, key)
        if theirs != ours:
            raise ContractError(f"{path}: {key} {theirs!r} differs from model.onnx's {ours!r}")


# ONNX ModelProto field numbers (onnx/onnx.proto3): metadata_props is `repeated
# StringStringEntryProto metadata_props = 14`, whose entries are `key = 1`, `value = 2`.
_METADATA_PROPS_FIELD = 14


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes | memoryview) -> list[tuple[int, bytes | memoryview]]:
    """(field number, bytes) of the length-delimited fields of one protobuf message; other wire
    types are skipped (the graph, tens of MB, is skipped by its length, never parsed)."""
    out = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            out.append((number, buf[pos : pos + length]))
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file, read without onnx or onnxruntime (the server picks a
    precision variant from them before it builds any session).

    Raises:
        ContractError: the file is missing or not a readable protobuf.
    """
    try:
        data = memoryview(Path(path).read_bytes())
        meta = {}
        for number, entry in _fields(data):
            if number == _METADATA_PROPS_FIELD:
                kv = dict(_fields(entry))
                meta[bytes(kv.get(1, b"")).decode()] = bytes(kv.get(2, b"")).decode()
        return meta
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ContractError(
            f"{path} is not a loadable ONNX model (its metadata cannot be read: {exc})"
        ) from exc
