"""The one image codec: encoded bytes <-> uint8 HWC arrays, shared by the server and the clients.

Pure functions, no torch, no gRPC. Decoding sniffs the format from magic bytes (never from a file
extension), reads the declared dimensions from the header and refuses decompression bombs *before*
any pixel is decoded, applies the EXIF orientation, converts 16-bit to 8-bit, and keeps an alpha
channel aside (Real-ESRGAN style) so models only ever see gray or RGB. Every failure is a typed
error (`pixforge.errors`) with a human message.

Array convention: ``DecodedImage.pixels`` is uint8, shape (H, W, C) with C = 1 (gray) or 3 (RGB,
in RGB order); ``alpha`` is uint8 (H, W) or None.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from pixforge.errors import ImageDecodeError, ImageEncodeError, ImageTooLargeError

DEFAULT_MAX_PIXELS = 64_000_000
"""Default decode limit (64 MP): a 24 MP camera photo passes, a 60000x60000 bomb does not."""

INPUT_FORMATS = ("png", "jpeg", "webp", "bmp", "tiff")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
DEFAULT_QUALITY = 95
ENCODE_STRIP_ROWS = 256  # rows per strip when converting RGB to BGR(A) for the encoder

# cv2 would otherwise use every core per call; the server parallelises across requests instead.
cv2.setNumThreads(1)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image.

    Attributes:
        pixels: uint8 array (H, W, C), C = 1 (gray) or 3 (RGB order).
        alpha: uint8 array (H, W) when the file had an alpha channel, else None.
        format: the sniffed input format, one of INPUT_FORMATS.
        bit_depth: 8 or 16, the file's sample depth before conversion to uint8.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str
    bit_depth: int

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])


# --------------------------------------------------------------------------- format sniffing


def sniff_format(data: bytes) -> str:
    """Return the image format from magic bytes.

    Raises:
        ImageDecodeError: empty input or an unknown signature.
    """
    if not data:
        raise ImageDecodeError("empty image: 0 bytes received")
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    raise ImageDecodeError(
        f"not a supported image: unknown file signature {data[:8].hex()!r} "
        f"(supported: {', '.join(INPUT_FORMATS)})"
    )


def _need(data: bytes, end: int, fmt: str) -> None:
    if len(data) < end:
        raise ImageDecodeError(f"truncated {fmt.upper()} file: header ends after {len(data)} bytes")


def _png_size(data: bytes) -> tuple[int, int]:
    _need(data, 24, "png")
    if data[12:16] != b"IHDR":
        raise ImageDecodeError("corrupt PNG file: first chunk is not IHDR")
    w, h = struct.unpack(">II", data[16:24])
    return w, h


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ImageDecodeError("corrupt JPEG file: bad marker structure")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (seg_len,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            _need(data, i + 9, "jpeg")
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        if marker == 0xD9 or seg_len < 2:
            break
        i += 2 + seg_len
    raise ImageDecodeError("truncated or corrupt JPEG file: no frame header (SOF) found")


def _webp_size(data: bytes) -> tuple[int, int]:
    _need(data, 30, "webp")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        b = data[21:25]
        w = 1 + (((b[1] & 0x3F) << 8) | b[0])
        h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        return w, h
    if chunk == b"VP8X":
        w = 1 + int.from_bytes(data[24:27], "little")
        h = 1 + int.from_bytes(data[27:30], "little")
        return w, h
    raise ImageDecodeError(f"corrupt WebP file: unknown chunk {chunk!r}")


def _bmp_size(data: bytes) -> tuple[int, int]:
    _need(data, 26, "bmp")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:
        w, h = struct.unpack("<HH", data[18:22])
        return w, h
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)


def _tiff_ifd0(data: bytes) -> tuple[str, dict[int, int]]:
    """Parse the first IFD of a TIFF structure into {tag: first value} (short/long tags only)."""
    endian = "<" if data[:2] == b"II" else ">"
    _need(data, 8, "tiff")
    (offset,) = struct.unpack(endian + "I", data[4:8])
    _need(data, offset + 2, "tiff")
    (count,) = struct.unpack(endian + "H", data[offset : offset + 2])
    tags: dict[int, int] = {}
    for k in range(count):
        e = offset + 2 + 12 * k
        if e + 12 > len(data):
            break
        tag, typ, _n = struct.unpack(endian + "HHI", data[e : e + 8])
        if typ == 3:  # SHORT
            (val,) = struct.unpack(endian + "H", data[e + 8 : e + 10])
        elif typ == 4:  # LONG
            (val,) = struct.unpack(endian + "I", data[e + 8 : e + 12])
        else:
            continue
        tags[tag] = val
    return endian, tags


def _tiff_size(data: bytes) -> tuple[int, int]:
    _, tags = _tiff_ifd0(data)
    if 256 not in tags or 257 not in tags:
        raise ImageDecodeError("truncated or corrupt TIFF file: no ImageWidth/ImageLength tags")
    return tags[256], tags[257]


_SIZE_READERS = {
    "png": _png_size,
    "jpeg": _jpeg_size,
    "webp": _webp_size,
    "bmp": _bmp_size,
    "tiff": _tiff_size,
}


def read_header(data: bytes) -> tuple[str, int, int]:
    """Return (format, width, height) from the header alone, without decoding pixels.

    Raises:
        ImageDecodeError: unknown format or a header too short/corrupt to read.
    """
    fmt = sniff_format(data)
    try:
        w, h = _SIZE_READERS[fmt](data)
    except struct.error as exc:
        raise ImageDecodeError(f"truncated or corrupt {fmt.upper()} header") from exc
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"corrupt {fmt.upper()} header: {w}x{h} pixels")
    return fmt, w, h


# --------------------------------------------------------------------------- EXIF orientation


def _exif_block(data: bytes, fmt: str) -> bytes | None:
    """Return the TIFF-structured EXIF payload of a JPEG/PNG/WebP/TIFF file, if any."""
    if fmt == "tiff":
        return data
    if fmt == "jpeg":
        i = 2
        while i + 4 <= len(data) and data[i] == 0xFF:
            marker = data[i + 1]
            (seg_len,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
                return data[i + 10 : i + 2 + seg_len]
            if marker in (0xDA, 0xD9):
                return None
            i += 2 + seg_len
        return None
    if fmt == "png":
        i = 8
        while i + 8 <= len(data):
            (length,) = struct.unpack(">I", data[i : i + 4])
            ctype = data[i + 4 : i + 8]
            if ctype == b"eXIf":
                return data[i + 8 : i + 8 + length]
            if ctype in (b"IDAT", b"IEND"):
                return None
            i += 12 + length
        return None
    if fmt == "webp":
        i = 12
        while i + 8 <= len(data):
            ctype = data[i : i + 4]
            (length,) = struct.unpack("<I", data[i + 4 : i + 8])
            if ctype == b"EXIF":
                block = data[i + 8 : i + 8 + length]
                return block[6:] if block.startswith(b"Exif\x00\x00") else block
            i += 8 + length + (length & 1)
        return None
    return None


def exif_orientation(data: bytes, fmt: str | None = None) -> int:
    """Return the EXIF orientation (1..8) of an encoded image; 1 when absent or unreadable."""
    try:
        fmt = fmt or sniff_format(data)
        block = _exif_block(data, fmt)
        if not block or block[:4] not in (b"II*\x00", b"MM\x00*"):
            return 1
        _, tags = _tiff_ifd0(block)
    except (ImageDecodeError, struct.error):
        return 1
    value = tags.get(0x0112, 1)
    return value if 1 <= value <= 8 else 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip an (H, W[, C]) array so it displays upright for the given EXIF orientation."""
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return img[::-1, ::-1]
    if orientation == 4:
        return img[::-1]
    if orientation == 5:
        return np.swapaxes(img, 0, 1)
    if orientation == 6:
        return np.rot90(img, k=-1)
    if orientation == 7:
        return np.rot90(np.swapaxes(img, 0, 1), k=2)
    if orientation == 8:
        return np.rot90(img, k=1)
    return img


# --------------------------------------------------------------------------- decode / encode


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode an encoded image into uint8 pixels (+ alpha kept aside).

    Args:
        data: the file's bytes (PNG, JPEG, WebP, BMP or TIFF).
        max_pixels: refuse images whose header declares more pixels than this (0 = no limit).

    Returns:
        A DecodedImage with EXIF orientation applied and samples converted to 8 bits.

    Raises:
        ImageDecodeError: empty, truncated, corrupt or unsupported data.
        ImageTooLargeError: the header declares more than ``max_pixels`` pixels.
    """
    fmt, w, h = read_header(data)
    if max_pixels and w * h > max_pixels:
        raise ImageTooLargeError(
            f"image is {w}x{h} = {w * h / 1e6:.1f} MP, over the limit of {max_pixels / 1e6:.1f} MP"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageDecodeError(f"corrupt {fmt.upper()} file: {exc.msg.strip() or 'decoder error'}") from exc
    if img is None or img.size == 0:
        raise ImageDecodeError(f"truncated or corrupt {fmt.upper()} file: the decoder could not read it")

    bit_depth = 16 if img.dtype == np.uint16 else 8
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        # float TIFFs and the like: assume [0, 1] like most tools do.
        img = np.clip(np.nan_to_num(img.astype(np.float32)) * 255.0 + 0.5, 0, 255).astype(np.uint8)

    if img.ndim == 2:
        img = img[:, :, None]
    alpha = None
    c = img.shape[2]
    if c == 4:
        alpha = np.ascontiguousarray(img[:, :, 3])
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
    elif c == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif c == 2:  # gray + alpha
        alpha = np.ascontiguousarray(img[:, :, 1])
        img = img[:, :, :1]
    elif c != 1:
        raise ImageDecodeError(f"unsupported {fmt.upper()} image with {c} channels")
    if img.ndim == 2:
        img = img[:, :, None]

    orientation = exif_orientation(data, fmt)
    if orientation != 1:
        img = apply_orientation(img, orientation)
        if alpha is not None:
            alpha = apply_orientation(alpha, orientation)
    return DecodedImage(
        pixels=np.ascontiguousarray(img),
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
        format=fmt,
        bit_depth=bit_depth,
    )


def normalize_format(name: str) -> str:
    """Map a user-facing output format name to one of OUTPUT_FORMATS ('' -> 'png').

    Raises:
        ImageEncodeError: unknown format name.
    """
    key = (name or "png").strip().lower().lstrip(".")
    key = {"jpg": "jpeg"}.get(key, key)
    if key not in OUTPUT_FORMATS:
        raise ImageEncodeError(f"unknown output format {name!r}: choose one of {', '.join(OUTPUT_FORMATS)}")
    return key


def encode_image(
    pixels: np.ndarray,
    fmt: str = "png",
    quality: int = DEFAULT_QUALITY,
    alpha: np.ndarray | None = None,
    overwrite: bool = False,
) -> bytes:
    """Encode uint8 pixels to PNG/JPEG/WebP bytes.

    OpenCV encoders take BGR(A), so RGB pixels are converted in strips of ``ENCODE_STRIP_ROWS``
    rows: into a BGRA buffer when there is an alpha plane, and, with ``overwrite``, in place in
    ``pixels``. Besides the encoded bytes, the only full-size buffer this may allocate is then the
    BGR copy (without ``overwrite``) or the BGRA buffer (with alpha).

    Args:
        pixels: uint8 (H, W), (H, W, 1) gray or (H, W, 3) RGB.
        fmt: "png", "jpeg"/"jpg" or "webp".
        quality: 1..100 for JPEG/WebP (ignored for PNG).
        alpha: optional uint8 (H, W) alpha plane, written for PNG/WebP and dropped for JPEG.
        overwrite: the caller no longer needs ``pixels``: RGB is turned into BGR in place (the
            array is left in BGR order) instead of into a full-size copy.

    Returns:
        The encoded image.

    Raises:
        ImageEncodeError: bad array, bad quality or an encoder failure.
    """
    fmt = normalize_format(fmt)
    if pixels.dtype != np.uint8:
        raise ImageEncodeError(f"pixels must be uint8, got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise ImageEncodeError(f"pixels must be (H, W), (H, W, 1) or (H, W, 3); got {pixels.shape}")
    quality = int(quality or DEFAULT_QUALITY)
    if not 1 <= quality <= 100:
        raise ImageEncodeError(f"quality must be within 1..100, got {quality}")
    if alpha is not None and fmt != "jpeg":
        if alpha.shape != pixels.shape[:2]:
            raise ImageEncodeError(f"alpha shape {alpha.shape} does not match image {pixels.shape[:2]}")
        code = cv2.COLOR_GRAY2BGRA if pixels.ndim == 2 else cv2.COLOR_RGB2BGRA
        bgr = np.empty(pixels.shape[:2] + (4,), np.uint8)
        for r0 in range(0, pixels.shape[0], ENCODE_STRIP_ROWS):
            r1 = r0 + ENCODE_STRIP_ROWS
            bgr[r0:r1] = cv2.cvtColor(np.ascontiguousarray(pixels[r0:r1]), code)
            bgr[r0:r1, :, 3] = alpha[r0:r1]
    elif pixels.ndim == 2:
        bgr = pixels
    elif overwrite and pixels.flags.c_contiguous and pixels.flags.writeable:
        for r0 in range(0, pixels.shape[0], ENCODE_STRIP_ROWS):
            strip = pixels[r0 : r0 + ENCODE_STRIP_ROWS]
            strip[...] = cv2.cvtColor(strip, cv2.COLOR_RGB2BGR)
        bgr = pixels
    else:
        bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    params: list[int] = []
    if fmt == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    elif fmt == "png":
        # Speed over size (a server encodes every reply): zlib level 1 with the SUB filter on every
        # row and run-length matching. Measured on nine 256x256 photos (Set14, apple2orange), one
        # core: 1.8 ms and 115 KB on average vs 3.5 ms and 104 KB for level 1 with libpng's
        # adaptive filters; single images ranged up to 1.8x larger (flat synthetic images more).
        params = [
            cv2.IMWRITE_PNG_COMPRESSION, 1,
            cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB,
            cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
        ]  # fmt: skip
    ext = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}[fmt]
    try:
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr), params)
    except cv2.error as exc:
        raise ImageEncodeError(f"{fmt.upper()} encoder failed: {exc.msg.strip()}") from exc
    if not ok:
        raise ImageEncodeError(f"{fmt.upper()} encoder failed")
    return buf.tobytes()


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Adapt (H, W, C) uint8 pixels to 1 (luminance, BT.601) or 3 (RGB) channels."""
    c = pixels.shape[2]
    if c == channels:
        return pixels
    if channels == 1 and c == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)[:, :, None]
    if channels == 3 and c == 1:
        return np.repeat(pixels, 3, axis=2)
    raise ValueError(f"cannot adapt {c} channels to {channels}")
