"""What a client accepts as an image and how it hands results back.

Inputs: encoded bytes (sent as they are: the server sniffs the format), a file path (read as
bytes, never decoded here), or a uint8 numpy array (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4)
RGBA, encoded losslessly to PNG with the shared codec. Outputs: the server's encoded bytes, or,
on request, a uint8 array in the same layout (RGBA when the image has alpha).
"""

from __future__ import annotations

import os
import stat

import numpy as np

from pixforge.codec import decode_image, encode_image
from pixforge.errors import PixforgeError

ImageInput = bytes | bytearray | memoryview | str | os.PathLike | np.ndarray


class ImageInputError(PixforgeError, ValueError):
    """The value passed as an image is not bytes, a readable file or a valid array."""


def image_bytes(image: ImageInput) -> bytes:
    """Return the encoded bytes to send for a bytes / path / numpy input.

    Args:
        image: encoded bytes, a path to an image file, or a uint8 array.

    Returns:
        Encoded image bytes.

    Raises:
        ImageInputError: unsupported type, unreadable file, or a bad array.
    """
    if isinstance(image, bytes):
        return image
    if isinstance(image, (bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            return _read_regular_file(path)
        except OSError as exc:
            # The OSError stays the cause, so a caller can tell "cannot read" from a bad image.
            raise ImageInputError(f"cannot read image file {path!r}: {exc.strerror or exc}") from exc
    if isinstance(image, np.ndarray):
        return _encode_array(image)
    raise ImageInputError(f"an image must be bytes, a path or a numpy array, not {type(image).__name__}")


def _read_regular_file(path: str) -> bytes:
    """The bytes of a regular file. Anything else is refused before it is opened: a named pipe
    blocks its reader until a writer comes (forever), a device such as /dev/zero never ends.

    Raises:
        ImageInputError: the path is not a regular file.
        OSError: it cannot be read.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ImageInputError(
            f"cannot read image file {path!r}: not a regular file (a pipe, device or socket)"
        )
    # O_NONBLOCK: should the path become a pipe after the check, open() returns instead of waiting
    # for a writer, and fstat() refuses it; a regular file reads the same either way.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageInputError(f"cannot read image file {path!r}: not a regular file")
        return fh.read()


def _encode_array(array: np.ndarray) -> bytes:
    if array.dtype != np.uint8:
        raise ImageInputError(f"image arrays must be uint8, got {array.dtype}")
    alpha = None
    if array.ndim == 3 and array.shape[2] == 4:
        array, alpha = array[:, :, :3], array[:, :, 3]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))):
        raise ImageInputError(
            f"image arrays must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {array.shape}"
        )
    try:
        return encode_image(np.ascontiguousarray(array), "png", alpha=alpha)
    except PixforgeError as exc:
        raise ImageInputError(f"cannot encode the array as PNG: {exc}") from None


def decode_output(data: bytes) -> np.ndarray:
    """Decode a server response into a uint8 (H, W, C) array: C = 1 gray, 3 RGB, 4 RGBA (alpha)."""
    decoded = decode_image(data, max_pixels=0)
    pixels = decoded.pixels
    if decoded.alpha is not None:
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        pixels = np.dstack([pixels, decoded.alpha])
    return pixels
