"""KServe v2 tensors <-> numpy for pixforge's one tensor pair (``image`` in, ``image_out`` out).

Pure conversion and validation with typed errors (no gRPC import): the servicer in
:mod:`pixforge.service.kserve` maps them to status codes through the same table as pixforge.v1.
The checks that do not depend on the encoding (input names, datatype, shape, element values,
unsupported parameters, requested outputs, option parameters) are plain functions shared with
the HTTP/REST front (:mod:`pixforge.service.kserve_http`), so both protocols accept and refuse
the same requests with the same messages.

Accepted input: one tensor named ``image``, datatype ``UINT8``, shape ``[N, H, W, C]`` (or
``[H, W, C]``, read as N = 1), its bytes either in ``raw_input_contents`` (what tritonclient sends)
or as typed elements in ``contents.uint_contents`` (the protocol's list for UINT8). The answer
always uses ``raw_output_contents``, as Triton does over gRPC.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixforge.contract import INPUT_NAME, OUTPUT_NAME, ModelContract
from pixforge.kserve.v2 import grpc_service_pb2 as kpb

from .errors import InvalidRequestError
from .pipeline import TranslateOptions
from .text_limits import quote

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
EXPECTED_INPUT = f"one {DATATYPE} input named {INPUT_NAME!r} of shape [N, H, W, C]"
_TYPED_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)
# The numpy type and the value range of each integer datatype (JSON ``data`` checks).
INTEGER_DATATYPES = {
    name: np.dtype(name.lower())
    for name in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
}
# JSON's names for the Python types json.loads makes (messages).
_JSON_TYPES = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
# Only ASCII digits: str.isdigit() also accepts "¹" or fullwidth "１", which int() then refuses (or
# reads as another number), so a version or length in them must be refused, not crash as INTERNAL.
_ASCII_DIGITS = re.compile(r"[0-9]+")
_MAX_INT_DIGITS = 4300  # CPython's default int() limit on decimal strings (sys.int_info)


@dataclass(frozen=True, eq=False)
class InputImages:
    """The decoded ``image`` input of a request.

    Attributes:
        images: uint8 (N, H, W, C), a read-only view of the request's bytes when they came raw.
        batched: False when the request sent ``[H, W, C]``; the output then drops N as well.
    """

    images: np.ndarray
    batched: bool


def parse_ascii_int(text: str) -> int | None:
    """``text`` as a non-negative decimal integer, or None when it is anything else.

    Only ASCII digits, nothing around them: no sign, no whitespace, no "¹" or fullwidth digits
    (which str.isdigit() accepts). Leading zeros are read as the integer they spell ("01" is 1).
    More significant digits than int() converts (its 4300-digit guard would raise) also give None:
    no field of the protocol holds such a number.
    """
    if not _ASCII_DIGITS.fullmatch(text):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > _MAX_INT_DIGITS:
        return None
    return int(digits)


def parse_version(text: str, field_name: str = "model_version") -> int:
    """A protocol version string -> pixforge version number (0 = the served one).

    Triton reads versions as integers, so "01" names version 1; whitespace, signs and non-ASCII
    digits are refused rather than guessed at.

    Args:
        text: "" (the version the server picks) or a decimal version >= 1 in ASCII digits.
        field_name: the request field, for the error message.

    Raises:
        InvalidRequestError: anything else.
    """
    if not text:
        return 0
    number = parse_ascii_int(text)
    if number is None or number < 1:
        raise InvalidRequestError(
            f"{field_name} must be empty (latest) or a version number >= 1 in ASCII digits, got {quote(text)}"
        )
    return number


def tensor_specs(contract: ModelContract) -> tuple[list[dict], list[dict]]:
    """ModelMetadata's (inputs, outputs) for a model contract: dynamic N, H, W, fixed channels.

    Args:
        contract: the model's contract.

    Returns:
        ``{"name", "datatype", "shape"}`` of ``image`` and of ``image_out`` (the HTTP front's JSON).
    """
    inputs = [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, -1, -1, contract.input_channels]}]
    outputs = [{"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": [-1, -1, -1, contract.output_channels]}]
    return inputs, outputs


def tensor_metadata(contract: ModelContract) -> tuple[list, list]:
    """:func:`tensor_specs` as lists of ``ModelMetadataResponse.TensorMetadata`` (the gRPC front)."""
    tm = kpb.ModelMetadataResponse.TensorMetadata
    inputs, outputs = tensor_specs(contract)
    return [tm(**t) for t in inputs], [tm(**t) for t in outputs]


def check_option(name: str, value: int) -> int:
    """An option parameter's integer value, refused when negative."""
    if value < 0:
        raise InvalidRequestError(f"parameter {name!r} must be >= 0, got {value}")
    return value


def translate_options(values: dict[str, int]) -> TranslateOptions:
    """TranslateOptions from the checked :data:`OPTION_PARAMETERS` a request set (0 = default)."""
    return TranslateOptions(
        tile_size=values.get("tile_size", 0),
        tile_overlap=values.get("tile_overlap", 0),
        render_size=values.get("render_size", 0),
    )


def _int_parameter(name: str, param: kpb.InferParameter) -> int:
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidRequestError(f"parameter {name!r} must be an integer, got {kind or 'no value'}")
    return check_option(name, int(getattr(param, kind)))


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
    return translate_options(values)


def check_requested_outputs(request: kpb.ModelInferRequest) -> None:
    """Refuse requested outputs pixforge cannot produce (every model has only ``image_out``).

    Raises:
        InvalidRequestError: an unknown output name, an unsupported output parameter, or an output
            requested more than once.
    """
    for output in request.outputs:
        check_requested_output(output.name, output.parameters)
    check_requested_output_names([output.name for output in request.outputs])


def check_requested_output_names(names: Iterable[str]) -> None:
    """Refuse an output requested more than once (both fronts).

    Triton refuses it too: the response would carry the tensor twice, or one of two conflicting
    sets of output parameters would silently win.

    Raises:
        InvalidRequestError: a name given twice or more.
    """
    counts = Counter(names)
    for name, count in counts.items():
        if count > 1:
            raise InvalidRequestError(f"output {quote(name)} is requested {count} times: request it once")


def check_requested_output(name: str, parameters) -> None:
    """Refuse one requested output by name and parameter keys (both fronts).

    Raises:
        InvalidRequestError: a name other than ``image_out``, or shared-memory / classification.
    """
    if name != OUTPUT_NAME:
        raise InvalidRequestError(
            f"unknown output {name!r}: pixforge models have one output, {OUTPUT_NAME!r}"
        )
    for key, what in _UNSUPPORTED_OUTPUT_PARAMETERS.items():
        if key in parameters:
            raise InvalidRequestError(f"{what} are not supported by pixforge (output {name!r})")


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
    return uint8_elements(tensor.name, array)


def uint8_elements(name: str, array: np.ndarray) -> np.ndarray:
    """Integer elements as uint8, refused outside 0..255 (both fronts' typed/JSON data)."""
    check_element_range(name, DATATYPE, array)
    return array.astype(np.uint8)


def check_element_range(name: str, datatype: str, values: np.ndarray | list[int]) -> None:
    """Refuse integer elements outside an integer datatype's range.

    Raises:
        InvalidRequestError: "element value V: out of range for UINT8 (0..255)".
    """
    if not len(values):
        return
    info = np.iinfo(INTEGER_DATATYPES[datatype])
    if isinstance(values, np.ndarray):
        low, high = values.min(), values.max()
    else:
        low, high = min(values), max(values)
    # Python ints for the comparison: a numpy array of uint64 and a negative bound do not mix.
    low, high = int(low), int(high)
    bad = high if high > info.max else low if low < info.min else None
    if bad is not None:
        raise InvalidRequestError(
            f"input {name!r} has element value {bad}: out of range for {datatype} ({info.min}..{info.max})"
        )


def json_elements(name: str, datatype: str, data: Any, shape: list[int], count: int) -> np.ndarray:
    """A tensor's JSON ``data`` (flat, or nested as ``shape``) as a flat array of ``datatype``.

    JSON has one number type and its own booleans, and numpy would turn ``[true, 1]`` into
    integers and ``[1, 2**70]`` into floats or objects; the element types are therefore checked
    on the decoded values themselves: booleans only for BOOL, integers in range for the integer
    datatypes (values beyond int64 are reported as out of range, not as non-integers).

    Args:
        name: the input's name (messages).
        datatype: BOOL or an integer datatype (a key of :data:`INTEGER_DATATYPES`).
        data: the decoded JSON ``data`` value.
        shape, count: the tensor's checked shape and element count.

    Raises:
        InvalidRequestError: not a list, ragged, the wrong size or nesting, or elements of the
            wrong type or range.
    """
    if not isinstance(data, list):
        raise InvalidRequestError(
            f"input {name!r} data must be a JSON array, got {_JSON_TYPES.get(type(data), 'null')}"
        )
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidRequestError(
            f"input {name!r} data is a ragged nested list: send a flat list or one nested as {shape}"
        ) from None
    if array.size != count:
        raise InvalidRequestError(
            f"input {name!r} has {array.size} elements in data, its shape {shape} needs {count}"
        )
    if array.ndim > 1 and list(array.shape) != shape:
        raise InvalidRequestError(
            f"input {name!r} data is nested as {list(array.shape)}, its shape is {shape}: "
            "send a flat list or one nested as the shape"
        )
    flat = _flatten(data, array.ndim)
    kinds = set(map(type, flat))
    if datatype == "BOOL":
        if kinds - {bool}:
            raise InvalidRequestError(
                f"input {name!r} data holds non-boolean elements: BOOL elements are true or false"
            )
        return array.reshape(-1).astype(np.bool_)
    info = np.iinfo(INTEGER_DATATYPES[datatype])
    if bool in kinds:
        raise InvalidRequestError(
            f"input {name!r} data holds booleans (true/false): {datatype} elements are integers "
            f"{info.min}..{info.max}"
        )
    if kinds - {int}:
        raise InvalidRequestError(
            f"input {name!r} data holds non-integer elements: {datatype} elements are integers "
            f"{info.min}..{info.max}"
        )
    if array.dtype.kind in "iu":
        check_element_range(name, datatype, array.reshape(-1))
        return array.reshape(-1).astype(info.dtype)
    # Integers beyond int64 made numpy choose floats or objects: range and convert the exact ints.
    check_element_range(name, datatype, flat)
    return np.array(flat, dtype=info.dtype)


def _flatten(data: list, depth: int) -> list:
    """The elements of a list nested ``depth`` levels deep (as numpy read it), in order."""
    for _ in range(depth - 1):
        data = list(itertools.chain.from_iterable(data))
    return data


def check_inputs(names: list[str]) -> None:
    """One input, named ``image`` (both fronts).

    Raises:
        InvalidRequestError: no input, an unknown name, or ``image`` more than once.
    """
    if not names:
        raise InvalidRequestError(f"request has no inputs: send {EXPECTED_INPUT}")
    unknown = [n for n in names if n != INPUT_NAME]
    if unknown:
        raise InvalidRequestError(f"unknown input {unknown[0]!r}: pixforge models take {EXPECTED_INPUT}")
    if len(names) > 1:
        raise InvalidRequestError(f"input {INPUT_NAME!r} is given {len(names)} times: send it once")


def check_input_parameters(parameters, data_field: str) -> None:
    """Refuse input parameters asking for features pixforge lacks (shared memory).

    Args:
        parameters: the input tensor's parameter keys.
        data_field: where the data should go instead (for the message).
    """
    for key, what in _UNSUPPORTED_INPUT_PARAMETERS.items():
        if key in parameters:
            raise InvalidRequestError(f"{what} are not supported by pixforge: send the data in {data_field}")


def check_input_tensor(datatype: str, shape) -> tuple[list[int], int]:
    """Check the input's datatype and shape (both fronts).

    Returns:
        (shape as ints, element count).

    Raises:
        InvalidRequestError: a datatype other than UINT8 or a shape that is not [N, H, W, C] /
            [H, W, C] with positive sizes.
    """
    if datatype != DATATYPE:
        raise InvalidRequestError(
            f"input {INPUT_NAME!r} has datatype {datatype or '(none)'}: pixforge models take "
            f"{DATATYPE} images (values 0..255)"
        )
    shape = [int(d) for d in shape]
    if len(shape) not in (3, 4) or any(d < 1 for d in shape):
        raise InvalidRequestError(
            f"input {INPUT_NAME!r} has shape {shape}: expected [N, H, W, C] or [H, W, C] with positive sizes"
        )
    return shape, int(np.prod(shape, dtype=object))


def images_from_flat(flat: np.ndarray, shape: list[int]) -> InputImages:
    """The checked flat uint8 elements of ``shape`` as (N, H, W, C) images (N = 1 for [H, W, C])."""
    batched = len(shape) == 4
    return InputImages(flat.reshape(shape if batched else [1, *shape]), batched)


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
    check_inputs([t.name for t in request.inputs])
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} input: "
            "the protocol needs exactly one per input"
        )
    tensor = request.inputs[0]
    check_input_parameters(tensor.parameters, "raw_input_contents")
    shape, count = check_input_tensor(tensor.datatype, tensor.shape)
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
    return images_from_flat(flat, shape)


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
