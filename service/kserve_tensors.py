"""KServe v2 tensors <-> numpy for pixforge's one tensor pair (``image`` in, ``image_out`` out).

Pure conversion and validation with typed errors (no gRPC import): the servicer in
:mod:`pixforge.service.kserve` maps them to status codes through the same table as pixforge.v1.

Accepted input: one tensor named ``image``, datatype ``UINT8``, shape ``[N, H, W, C]`` (or
``[H, W, C]``, read as N = 1), its bytes either in ``raw_input_contents`` (what tritonclient sends)
or as typed elements in ``contents.uint_contents`` (the protocol's list for UINT8). The answer
always uses ``raw_output_contents``, as Triton does over gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pixforge.contract import INPUT_NAME, OUTPUT_NAME, ModelContract
from pixforge.kserve.v2 import grpc_service_pb2 as kpb

from .errors import InvalidRequestError
from .pipeline import TranslateOptions

DATATYPE = "UINT8"  # the protocol's name for the contract's uint8 images
# Request parameters that map onto pixforge.v1 TranslateOptions (tile_size, ...); other request
# parameters (Triton's priority, timeout, sequence_*) carry no meaning here and are ignored.
OPTION_PARAMETERS = ("tile_size", "tile_overlap", "render_size")
# Protocol features pixforge does not offer; asking for them is an error rather than silently ignored.
_UNSUPPORTED_INPUT_PARAMETERS = {"shared_memory_region": "shared-memory inputs"}
_UNSUPPORTED_OUTPUT_PARAMETERS = {
    "shared_memory_region": "shared-memory outputs",
    "classification": "classification outputs",
}
_TYPED_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)


@dataclass(frozen=True, eq=False)
class InputImages:
    """The decoded ``image`` input of a request.

    Attributes:
        images: uint8 (N, H, W, C), a read-only view of the request's bytes when they came raw.
        batched: False when the request sent ``[H, W, C]``; the output then drops N as well.
    """

    images: np.ndarray
    batched: bool


def parse_version(text: str, field_name: str = "model_version") -> int:
    """A protocol version string -> pixforge version number (0 = the served one).

    Args:
        text: "" (the version the server picks) or a decimal version >= 1.
        field_name: the request field, for the error message.

    Raises:
        InvalidRequestError: anything else.
    """
    text = text.strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) < 1:
        raise InvalidRequestError(
            f"{field_name} must be empty (latest) or a version number >= 1, got {text!r}"
        )
    return int(text)


def tensor_metadata(contract: ModelContract) -> tuple[list, list]:
    """ModelMetadata's (inputs, outputs) for a model contract: dynamic N, H, W, fixed channels.

    Args:
        contract: the model's contract.

    Returns:
        Lists of ``ModelMetadataResponse.TensorMetadata`` for ``image`` and ``image_out``.
    """
    tm = kpb.ModelMetadataResponse.TensorMetadata
    inputs = [tm(name=INPUT_NAME, datatype=DATATYPE, shape=[-1, -1, -1, contract.input_channels])]
    outputs = [tm(name=OUTPUT_NAME, datatype=DATATYPE, shape=[-1, -1, -1, contract.output_channels])]
    return inputs, outputs


def _int_parameter(name: str, param: kpb.InferParameter) -> int:
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidRequestError(f"parameter {name!r} must be an integer, got {kind or 'no value'}")
    value = int(getattr(param, kind))
    if value < 0:
        raise InvalidRequestError(f"parameter {name!r} must be >= 0, got {value}")
    return value


def request_options(request: kpb.ModelInferRequest) -> TranslateOptions:
    """The pixforge options a request sets through its parameters (0 = server default).

    Args:
        request: the infer request; ``tile_size``, ``tile_overlap`` and ``render_size`` are read.

    Raises:
        InvalidRequestError: one of them is not a non-negative integer.
    """
    values = {
        k: _int_parameter(k, request.parameters[k]) for k in OPTION_PARAMETERS if k in request.parameters
    }
    return TranslateOptions(
        tile_size=values.get("tile_size", 0),
        tile_overlap=values.get("tile_overlap", 0),
        render_size=values.get("render_size", 0),
    )


def check_requested_outputs(request: kpb.ModelInferRequest) -> None:
    """Refuse requested outputs pixforge cannot produce (every model has only ``image_out``).

    Raises:
        InvalidRequestError: an unknown output name or an unsupported output parameter.
    """
    for output in request.outputs:
        if output.name != OUTPUT_NAME:
            raise InvalidRequestError(
                f"unknown output {output.name!r}: pixforge models have one output, {OUTPUT_NAME!r}"
            )
        for key, what in _UNSUPPORTED_OUTPUT_PARAMETERS.items():
            if key in output.parameters:
                raise InvalidRequestError(f"{what} are not supported by pixforge (output {output.name!r})")


def _typed_elements(tensor: kpb.ModelInferRequest.InferInputTensor, count: int) -> np.ndarray:
    contents = tensor.contents
    used = [f for f in _TYPED_FIELDS if len(getattr(contents, f))]
    if used:
        raise InvalidRequestError(
            f"input {tensor.name!r} is UINT8: its elements go in contents.uint_contents, not {used[0]}"
        )
    values = contents.uint_contents
    if len(values) != count:
        raise InvalidRequestError(
            f"input {tensor.name!r} has {len(values)} elements in contents.uint_contents, "
            f"its shape {list(tensor.shape)} needs {count}"
        )
    array = np.fromiter(values, dtype=np.uint32, count=count)
    if count and int(array.max()) > 255:
        raise InvalidRequestError(
            f"input {tensor.name!r} has element value {int(array.max())}: UINT8 elements must be 0..255"
        )
    return array.astype(np.uint8)


def input_images(request: kpb.ModelInferRequest) -> InputImages:
    """Validate a request's inputs and return its images as uint8 (N, H, W, C).

    The channel count is checked against the model later, by the pipeline.

    Args:
        request: the infer request.

    Returns:
        The images and whether the request sent a batch dimension.

    Raises:
        InvalidRequestError: missing/unknown/duplicate inputs, a datatype other than UINT8, a shape
            that is not [N, H, W, C] / [H, W, C] with positive sizes, data whose size does not
            match the shape, or data given both raw and typed.
    """
    expected = f"one {DATATYPE} input named {INPUT_NAME!r} of shape [N, H, W, C]"
    if not request.inputs:
        raise InvalidRequestError(f"request has no inputs: send {expected}")
    names = [t.name for t in request.inputs]
    unknown = [n for n in names if n != INPUT_NAME]
    if unknown:
        raise InvalidRequestError(f"unknown input {unknown[0]!r}: pixforge models take {expected}")
    if len(names) > 1:
        raise InvalidRequestError(f"input {INPUT_NAME!r} is given {len(names)} times: send it once")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} input: "
            "the protocol needs exactly one per input"
        )
    tensor = request.inputs[0]
    for key, what in _UNSUPPORTED_INPUT_PARAMETERS.items():
        if key in tensor.parameters:
            raise InvalidRequestError(
                f"{what} are not supported by pixforge: send the data in raw_input_contents"
            )
    if tensor.datatype != DATATYPE:
        raise InvalidRequestError(
            f"input {INPUT_NAME!r} has datatype {tensor.datatype or '(none)'}: pixforge models take "
            f"{DATATYPE} images (values 0..255)"
        )
    shape = [int(d) for d in tensor.shape]
    if len(shape) not in (3, 4) or any(d < 1 for d in shape):
        raise InvalidRequestError(
            f"input {INPUT_NAME!r} has shape {shape}: expected [N, H, W, C] or [H, W, C] with positive sizes"
        )
    count = int(np.prod(shape, dtype=object))
    if raw:
        if tensor.HasField("contents"):
            raise InvalidRequestError(
                f"input {INPUT_NAME!r} has both raw_input_contents and contents: use one of them"
            )
        data = raw[0]
        if len(data) != count:
            raise InvalidRequestError(
                f"input {INPUT_NAME!r} has {len(data)} bytes of raw data, its shape {shape} needs {count}"
            )
        flat = np.frombuffer(data, dtype=np.uint8)
    elif tensor.HasField("contents"):
        flat = _typed_elements(tensor, count)
    else:
        raise InvalidRequestError(
            f"input {INPUT_NAME!r} carries no data: fill raw_input_contents or contents.uint_contents"
        )
    batched = len(shape) == 4
    return InputImages(flat.reshape(shape if batched else [1, *shape]), batched)


def output_tensor(
    images: np.ndarray, batched: bool
) -> tuple[kpb.ModelInferResponse.InferOutputTensor, bytes]:
    """The ``image_out`` tensor description and its raw bytes for a response.

    Args:
        images: uint8 (N, H', W', C') model outputs.
        batched: whether the request had a batch dimension (else N = 1 is dropped from the shape).

    Returns:
        (InferOutputTensor, raw little-endian row-major bytes).
    """
    shape = list(images.shape) if batched else list(images.shape[1:])
    tensor = kpb.ModelInferResponse.InferOutputTensor(name=OUTPUT_NAME, datatype=DATATYPE, shape=shape)
    return tensor, np.ascontiguousarray(images).tobytes()
