"""Typed errors shared by the codec, the model contract, the server and the clients.

Each carries a human message; the server maps them to gRPC status codes in one place.
"""


class PixforgeError(Exception):
    """Base class for every error pixforge raises on purpose."""


class ImageDecodeError(PixforgeError):
    """The bytes are not a decodable image (empty, truncated, random, unsupported format)."""


class ImageTooLargeError(PixforgeError):
    """The image's header declares more pixels than the configured limit (decompression bomb)."""


class ImageEncodeError(PixforgeError):
    """An image could not be encoded in the requested format."""


class ContractError(PixforgeError):
    """An ONNX model breaks docs/model-contract.md."""
