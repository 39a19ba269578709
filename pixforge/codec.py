"""The one image codec: encoded bytes <-> uint8 HWC arrays, shared by the server and the clients.

Pure functions, no torch, no gRPC. Decoding sniffs the format from magic bytes (never from a file
extension), reads the declared layout from the header (:func:`probe_image`) and refuses
decompression bombs *before* any pixel is decoded, applies the EXIF orientation (exactly once, as
Pillow's ``ImageOps.exif_transpose`` does, for every format), converts 16-bit and float samples to
8 bits, and keeps an alpha channel aside (Real-ESRGAN style) so models only ever see gray or RGB;
alpha always comes back straight: TIFF colour that libtiff premultiplied, or that the file stores
premultiplied (associated alpha), is divided back, and a gray PNG's transparent level (tRNS),
which OpenCV drops, becomes an alpha plane. Every failure is a typed error (`pixforge.errors`)
with a human message.

Array convention: ``DecodedImage.pixels`` is uint8, shape (H, W, C) with C = 1 (gray) or 3 (RGB,
in RGB order); ``alpha`` is uint8 (H, W) or None.

Header = decoder. The header is read the way the decoding library reads it, so the size that is
checked is the size that gets allocated: the TIFF parser takes the *first* of duplicated tags, as
libtiff does, and refuses an IFD whose layout tags (ImageWidth, ImageLength, BitsPerSample, ...)
appear twice with different values; only the first IFD (page) matters, since OpenCV decodes
nothing else. After decoding, the array must have the declared size or the image is refused.

Memory of one decode. For an image of W x H pixels whose decoder output (OpenCV's
IMREAD_UNCHANGED array) has C channels of B bytes (B = 1 for 1- to 8-bit files, 2 for 10- to
16-bit ones, 4 or 8 for 32/64-bit TIFF samples), :attr:`ImageInfo.peak_bytes` is::

    peak = W*H*C*B + max(D, W*H*C*B)          (+ about 2 MiB of conversion strips)

    W*H*C*B  the decoder's output array: 16-bit files stay 16-bit until converted here.
    D        the decoding library's own full-size buffers, live while it decodes: 0 for PNG, BMP
             and baseline JPEG; 3*W*H*C*B for an animated PNG (its frame buffers); 2 bytes per
             coefficient (~2*W*H*components, less with chroma subsampling) for a progressive or
             multi-scan JPEG; 4*W*H for lossless WebP, 5*W*H for lossy WebP with alpha, 12*W*H for
             animated WebP; for TIFF its strip or tile buffer, sized from RowsPerStrip or
             TileWidth x TileLength (not from the image: a tiny image can declare huge tiles), at
             4 + SamplesPerPixel bytes per pixel for 8-bit files (libtiff reads them as RGBA).
    second W*H*C*B: cv2.imdecode returns its array to Python as a copy, so for a moment it exists
             twice. The uint8 result (W*H*C bytes; made in place for 8-bit gray/RGB) and the
             EXIF rotation (one more result-sized array) come after the first copy is freed and
             never need more than that.

So an 8-bit gray image costs 2 bytes per pixel, 8-bit RGB 6, 8-bit RGBA 8, 16-bit RGB 12, 16-bit
RGBA 16, float32 RGB TIFF 24, a progressive 4:4:4 JPEG 9. :func:`decode_image` refuses an image
whose ``peak`` is over ``max_bytes``, by default ``max_pixels * DECODE_BYTES_PER_PIXEL`` (8: an
8-bit RGBA PNG at the pixel limit), so every still 8-bit PNG up to ``max_pixels`` passes and
costlier images get proportionally fewer pixels (16-bit RGB: 2/3 of ``max_pixels``). A server's
decode memory is then at most (concurrent decodes) x ``max_bytes``, plus the encoded inputs.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from pixforge.errors import ImageDecodeError, ImageEncodeError, ImageTooLargeError

DEFAULT_MAX_PIXELS = 64_000_000
"""Default decode limit (64 MP): a 24 MP camera photo passes, a 60000x60000 bomb does not."""

DECODE_BYTES_PER_PIXEL = 8
"""Decode memory allowed per pixel of ``max_pixels`` when no ``max_bytes`` is given: the peak of an
8-bit RGBA PNG (its 4-byte decoder array, twice), so every still 8-bit PNG within the pixel limit
fits."""

INPUT_FORMATS = ("png", "jpeg", "webp", "bmp", "tiff")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
DEFAULT_QUALITY = 95
ENCODE_STRIP_ROWS = 256  # rows per strip when converting RGB to BGR(A) for the encoder
DECODE_STRIP_BYTES = 1 << 20  # bytes of a 4-byte-per-sample temporary per decode conversion strip

# cv2 would otherwise use every core per call; the server parallelises across requests instead.
cv2.setNumThreads(1)


@dataclass(frozen=True)
class ImageInfo:
    """What an encoded image's header declares, read without decoding a pixel (:func:`probe_image`).

    Attributes:
        format: the sniffed format, one of INPUT_FORMATS.
        width, height: the stored size, before any EXIF rotation (rotation swaps them in the
            decoded image, never changes their product).
        channels: channels of the decoder's array: 1 (gray), 2 (gray + alpha), 3 or 4 (+ alpha).
        bit_depth: bits per sample of the decoder's array: 8 (1- to 8-bit files), 16, 32 or 64.
        orientation: the EXIF / TIFF orientation, 1..8 (1 = as stored).
        decoder_bytes: the decoding library's own full-size buffers besides its output array
            (``D`` in the module's memory formula).
    """

    format: str
    width: int
    height: int
    channels: int
    bit_depth: int
    orientation: int = 1
    decoder_bytes: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoder's output array: W * H * C * B."""
        return self.pixels * self.channels * (self.bit_depth // 8)

    @property
    def peak_bytes(self) -> int:
        """Estimated peak bytes of :func:`decode_image` for this image (the module's formula)."""
        return self.decoded_bytes + max(self.decoder_bytes, self.decoded_bytes)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image.

    Attributes:
        pixels: uint8 array (H, W, C), C = 1 (gray) or 3 (RGB order).
        alpha: uint8 array (H, W) when the file had an alpha channel, else None.
        format: the sniffed input format, one of INPUT_FORMATS.
        bit_depth: 8, 16, 32 or 64, the decoder's sample depth before conversion to uint8.
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


# --------------------------------------------------------------------------- header parsing
#
# Each reader returns (width, height, channels, bit_depth, decoder_bytes) as OpenCV's decoder for
# that format will see them with IMREAD_UNCHANGED (see the module docstring).

_Layout = tuple[int, int, int, int, int]
_MAX_CHUNKS = 4096  # PNG / WebP chunks walked before the image data; real files have a few dozen


def _need(data: bytes, end: int, fmt: str) -> None:
    if len(data) < end:
        raise ImageDecodeError(f"truncated {fmt.upper()} file: header ends after {len(data)} bytes")


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, offset of its data, length) of each PNG chunk in file order, while a chunk header fits."""
    i = 8
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        yield data[i + 4 : i + 8], i + 8, length
        i += 12 + length  # length, type, data, CRC


def _webp_chunks(data: bytes, i: int = 12) -> Iterator[tuple[bytes, int, int]]:
    """(FourCC, offset of its data, length) of each RIFF chunk from offset i, while a chunk header fits."""
    while i + 8 <= len(data):
        (length,) = struct.unpack("<I", data[i + 4 : i + 8])
        yield data[i : i + 4], i + 8, length
        i += 8 + length + (length & 1)  # chunks are padded to an even size


_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}  # OpenCV turns gray + alpha into BGRA
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _png_layout(data: bytes) -> _Layout:
    _need(data, 26, "png")
    if data[12:16] != b"IHDR":
        raise ImageDecodeError("corrupt PNG file: first chunk is not IHDR")
    w, h = struct.unpack(">II", data[16:24])
    depth, color = data[24], data[25]
    if color not in _PNG_CHANNELS or depth not in _PNG_DEPTHS[color]:
        raise ImageDecodeError(f"corrupt PNG header: bit depth {depth} with color type {color}")
    channels = _PNG_CHANNELS[color]
    frames = 1
    # The chunks before the image data: tRNS and acTL change the layout.
    for n, (ctype, start, _length) in enumerate(_png_chunks(data)):
        if n == _MAX_CHUNKS:
            raise ImageDecodeError(f"unsupported PNG file: over {_MAX_CHUNKS} chunks before the image data")
        if ctype in (b"IDAT", b"IEND"):
            break
        if ctype == b"tRNS" and color in (2, 3):
            channels = 4  # OpenCV expands a transparent colour / palette entry into an alpha channel
        elif ctype == b"acTL" and start + 4 <= len(data):
            (frames,) = struct.unpack(">I", data[start : start + 4])
    bits = 16 if depth == 16 else 8
    # APNG: OpenCV composes the first frame through three more full-size buffers.
    extra = 3 * w * h * channels * (bits // 8) if frames > 1 else 0
    return w, h, channels, bits, extra


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
# A run of fill bytes (0xFF): the last one is the 0xFF of the marker that follows.
_JPEG_FILL = re.compile(rb"\xff*")
# The end of a scan's entropy-coded data: a marker, i.e. 0xFF (the last of any fill bytes) followed
# by neither a stuffed 0x00 nor a restart marker (RST0-7 sit inside the data). Two bytes starting
# with a literal, so the search never backtracks (``\xff+[^...]`` did, taking quadratic time over a
# run of fill bytes: 3 minutes for 100 KB of them after an SOS).
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Bytes a regular expression reads per call: the GIL is not released during one, so a crafted
# 60 MB run is read a window at a time (at most ~20 ms each) and other threads (the server's event
# loop) get their turn between windows.
_JPEG_WINDOW = 1 << 20
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: no segment follows
MAX_JPEG_SCANS = 100
"""Most scans a JPEG may have. libjpeg decodes every scan over the whole image and only warns about
a nonsensical progression, so a file that repeats one small scan is a CPU bomb (20 000 scans of
117 bytes each took 148 s to decode at 64 MP). Encoders write 1 (baseline), 3 to 4 (multi-scan)
or about 10 (progressive; mozjpeg's optimised scripts a few more)."""
MAX_JPEG_MARKERS = 4096
"""Most markers the header walk of a JPEG reads (segments and standalone markers, from SOI to EOI;
fill bytes and the restart markers inside a scan's data are skipped at C speed and not counted).
Each marker is a step in Python, so without a cap a crafted file of 2-byte standalone markers or
4-byte comments kept the walk (and the server's event loop) busy for 10 to 30 s per 60 MB. Real
files have a few dozen: APPn (EXIF, XMP, an ICC profile split over at most 255 APP2 segments),
DQT, SOF, DHT and, per scan (at most :data:`MAX_JPEG_SCANS`), an SOS and perhaps a DHT."""


def _jpeg_next_marker(data: bytes, i: int) -> int:
    """Offset of the 0xFF of the first marker at or after ``i`` (junk and fill bytes skipped), or -1."""
    n = len(data)
    i = data.find(b"\xff", i)
    if i < 0:
        return -1
    while True:  # the run of fill bytes, a window at a time
        stop = min(n, i + _JPEG_WINDOW)
        run = _JPEG_FILL.match(data, i, stop)  # always a match: \xff* takes the empty string too
        i = run.end() if run is not None else i
        if i < stop:
            return i - 1
        if stop == n:
            return -1


def _jpeg_scan_end(data: bytes, i: int) -> int:
    """Offset of the 0xFF of the marker ending the entropy-coded data that starts at ``i``, or -1."""
    n = len(data)
    while i < n:
        # A window and the byte after it: a marker that starts in the window is found whole.
        found = _JPEG_SCAN_END.search(data, i, min(n, i + _JPEG_WINDOW + 1))
        if found is not None:
            return found.start()
        i += _JPEG_WINDOW
    return -1


def _jpeg_segments(data: bytes, i: int) -> Iterator[tuple[int, int, int]]:
    """(marker, offset of its 0xFF, segment length) of each marker segment from offset ``i``.

    Read as libjpeg reads them: junk bytes before a marker are skipped (libjpeg warns about
    "extraneous bytes before marker" and reads on), so are fill bytes; standalone markers (SOI,
    TEM, RST0-7) carry no segment; a scan's entropy-coded data is skipped to its end marker (a
    byte search for SOS or EOI would stop at one hidden in a comment or APPn payload). Stops at
    EOI, a bad length or the end of the data. Junk, fill bytes and scan data are skipped in C (a
    window at a time, never backtracking): only the markers are steps in Python, and they are
    counted.

    Raises:
        ImageDecodeError: more than :data:`MAX_JPEG_MARKERS` markers before EOI or the end.
    """
    n = len(data)
    markers = 0
    while True:
        i = _jpeg_next_marker(data, i)
        if i < 0:
            return
        marker = data[i + 1]
        if marker == 0xD9:  # EOI
            return
        markers += 1
        if markers > MAX_JPEG_MARKERS:
            raise ImageDecodeError(
                f"unsupported JPEG file: over {MAX_JPEG_MARKERS} markers (real files have a few dozen: "
                "a crafted file, or a broken encoder)"
            )
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if i + 4 > n:
            return
        (seg_len,) = struct.unpack(">H", data[i + 2 : i + 4])
        yield marker, i, seg_len
        if seg_len < 2:
            return
        i += 2 + seg_len
        if marker == 0xDA:
            i = _jpeg_scan_end(data, i)
            if i < 0:
                return


def _count_scans(segments: Iterator[tuple[int, int, int]]) -> int:
    """The number of scans (SOS segments) among ``segments`` (read to their end).

    Raises:
        ImageDecodeError: more than :data:`MAX_JPEG_SCANS` (or what the walk raises).
    """
    scans = 0
    for marker, _, _ in segments:
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageDecodeError(
                    f"unsupported JPEG file: over {MAX_JPEG_SCANS} scans (the decoder re-reads the whole "
                    "image for each scan: a decompression bomb, or a broken encoder)"
                )
    return scans


def _jpeg_layout(data: bytes) -> _Layout:
    segments = _jpeg_segments(data, 2)  # one walk: the markers before and after SOF count together
    for marker, i, _seg_len in segments:
        if marker in _JPEG_SOF:
            _need(data, i + 10, "jpeg")
            precision = data[i + 4]
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            ncomp = data[i + 9]
            _need(data, i + 10 + 3 * ncomp, "jpeg")
            if ncomp not in (1, 3, 4):
                raise ImageDecodeError(f"unsupported JPEG file with {ncomp} components")
            factors = [(data[i + 11 + 3 * k] >> 4, data[i + 11 + 3 * k] & 15) for k in range(ncomp)]
            if any(not (1 <= fh <= 4 and 1 <= fv <= 4) for fh, fv in factors):
                raise ImageDecodeError("corrupt JPEG file: bad sampling factors")
            extra = 0
            # Progressive and multi-scan files are decoded through whole-image coefficient buffers
            # (2 bytes per coefficient).
            scans = _count_scans(segments)  # the rest of the walk, from the end of SOF
            if marker in _JPEG_PROGRESSIVE or scans > 1:
                hmax = max(fh for fh, _ in factors)
                vmax = max(fv for _, fv in factors)
                mcu_x = -(-w // (8 * hmax))
                mcu_y = -(-h // (8 * vmax))
                extra = sum(mcu_x * 8 * fh * mcu_y * 8 * fv * 2 for fh, fv in factors)
            return w, h, (1 if ncomp == 1 else 3), (16 if precision > 8 else 8), extra
    raise ImageDecodeError("truncated or corrupt JPEG file: no frame header (SOF) found")


def _webp_layout(data: bytes) -> _Layout:
    _need(data, 30, "webp")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF, 3, 8, 0
    if chunk == b"VP8L":
        b = data[21:25]
        w = 1 + (((b[1] & 0x3F) << 8) | b[0])
        h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        alpha = (b[3] >> 4) & 1
        return w, h, (4 if alpha else 3), 8, 4 * w * h  # libwebp decodes lossless into ARGB
    if chunk == b"VP8X":
        flags = data[20]
        w = 1 + int.from_bytes(data[24:27], "little")
        h = 1 + int.from_bytes(data[27:30], "little")
        if flags & 0x02:  # animation: canvas + previous canvas + a frame decoder
            return w, h, 4, 8, 12 * w * h
        kinds = set()
        for n, (kind, _start, _length) in enumerate(_webp_chunks(data, 30)):
            if n == _MAX_CHUNKS:
                raise ImageDecodeError(f"unsupported WebP file: over {_MAX_CHUNKS} chunks")
            kinds.add(kind)
        alpha = bool(flags & 0x10) or b"ALPH" in kinds or b"VP8L" in kinds
        if b"VP8L" in kinds:
            extra = 4 * w * h
        elif alpha:
            extra = 5 * w * h  # the alpha plane and its (lossless) decoder
        else:
            extra = 0
        return w, h, (4 if alpha else 3), 8, extra
    raise ImageDecodeError(f"corrupt WebP file: unknown chunk {chunk!r}")


def _bmp_layout(data: bytes) -> _Layout:
    _need(data, 26, "bmp")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:
        w, h, _, bpp = struct.unpack("<HHHH", data[18:26])
    else:
        _need(data, 30, "bmp")
        w, h, _, bpp = struct.unpack("<iiHH", data[18:30])
    # 32-bit files may carry alpha; palette files may be gray: count the larger layout.
    return abs(w), abs(h), (4 if bpp == 32 else 3), 8, 0


_TIFF_INT_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "l", 13: "I", 16: "Q", 17: "q", 18: "Q"}
_TIFF_TAG_NAMES = {
    256: "ImageWidth",
    257: "ImageLength",
    258: "BitsPerSample",
    262: "PhotometricInterpretation",
    274: "Orientation",
    277: "SamplesPerPixel",
    278: "RowsPerStrip",
    284: "PlanarConfiguration",
    322: "TileWidth",
    323: "TileLength",
    339: "SampleFormat",
}
_TIFF_EXTRA_SAMPLES = 338  # 1 = associated (premultiplied) alpha, 2 = unassociated alpha
_TIFF_MAX_VALUES = 4  # values read per tag (BitsPerSample has one per sample; the first counts)


def _tiff_entries(data: bytes, wanted: frozenset[int] | set[int]) -> dict[int, list[tuple[int, ...]]]:
    """Parse the first IFD of a TIFF structure: {tag: [values of each entry, in file order]}.

    Only integer-typed entries of the ``wanted`` tags are kept; each keeps its first few values.
    """
    endian = "<" if data[:2] == b"II" else ">"
    _need(data, 8, "tiff")
    (offset,) = struct.unpack(endian + "I", data[4:8])
    _need(data, offset + 2, "tiff")
    (count,) = struct.unpack(endian + "H", data[offset : offset + 2])
    tags: dict[int, list[tuple[int, ...]]] = {}
    for k in range(count):
        e = offset + 2 + 12 * k
        if e + 12 > len(data):
            break
        tag, typ, n = struct.unpack(endian + "HHI", data[e : e + 8])
        if tag not in wanted:
            continue
        code = _TIFF_INT_TYPES.get(typ)
        if code is None or n == 0:
            raise ImageDecodeError(f"corrupt TIFF header: tag {_TIFF_TAG_NAMES.get(tag, tag)} has type {typ}")
        size = struct.calcsize(code)
        m = min(n, _TIFF_MAX_VALUES)
        if size * n <= 4:
            start = e + 8
        else:
            (start,) = struct.unpack(endian + "I", data[e + 8 : e + 12])
            _need(data, start + size * m, "tiff")
        values = struct.unpack(endian + code * m, data[start : start + size * m])
        tags.setdefault(tag, []).append(values)
    return tags


def _tiff_ifd0(data: bytes) -> tuple[str, dict[int, int]]:
    """Parse the first IFD of a TIFF structure into {tag: first value} (short/long tags only).

    The first entry of a duplicated tag wins, as in libtiff.
    """
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
        tags.setdefault(tag, val)
    return endian, tags


def _tiff_layout(data: bytes) -> _Layout:
    entries = _tiff_entries(data, frozenset(_TIFF_TAG_NAMES))
    for tag, seen in entries.items():
        if len(set(seen)) > 1:
            listed = ", ".join("/".join(str(v) for v in values) for values in seen)
            raise ImageDecodeError(
                f"ambiguous TIFF header: {_TIFF_TAG_NAMES[tag]} (tag {tag}) is given {len(seen)} times "
                f"with different values ({listed})"
            )
    tags = {tag: seen[0][0] for tag, seen in entries.items()}
    if 256 not in tags or 257 not in tags:
        raise ImageDecodeError("truncated or corrupt TIFF file: no ImageWidth/ImageLength tags")
    w, h = tags[256], tags[257]
    # The channels and depth OpenCV's TIFF decoder (readHeader) gives the image.
    photometric = tags.get(262, 2)
    gray = photometric in (0, 1)
    bps = tags.get(258, 1)
    spp = tags.get(277, 1 if gray else 3)
    if not 1 <= spp <= 4:
        raise ImageDecodeError(f"unsupported TIFF image with {spp} samples per pixel")
    if photometric == 3 and bps > 8:
        # Palette indices have at most 8 bits (TIFF 6.0); OpenCV hands such a file over as raw
        # wide samples, about ten times what an 8-bit RGB estimate would allow for.
        raise ImageDecodeError(f"unsupported TIFF palette image with {bps} bits per sample (at most 8)")
    if photometric == 32845 and spp == 3:  # LogLuv: decoded to float XYZ
        bits, channels = 32, 3
    else:
        if bps > 8 and (photometric > 2 or spp not in (1, 3, 4)):
            bps = 8
        if bps in (1, 4, 8):
            bits = 8
            channels = 3 if photometric == 3 else (1 if gray else spp)
        elif bps in (10, 12, 14, 16):
            bits, channels = 16, (1 if gray else spp)
        elif bps in (32, 64):
            bits, channels = bps, spp
        else:
            raise ImageDecodeError(f"unsupported TIFF image with {bps} bits per sample")
    # The decoder's strip / tile buffer (OpenCV readData); 8-bit files are read as RGBA through a
    # second, libtiff-owned buffer of the raw strip or tile.
    tiled = 322 in tags
    tile_w = (tags.get(322) if tiled else w) or w
    tile_h = tags.get(323 if tiled else 278, 0)
    if tile_h == 0 or not tiled:
        # A strip is never taller than the image (RowsPerStrip may be any larger number, 2**32-1
        # by default): libtiff sizes its buffer by the rows the strip actually has.
        tile_h = h if tile_h == 0 else min(tile_h, h)
    tile = tile_w * tile_h
    sample_bytes = -(-bps // 8)
    if bits == 8:
        buffers = tile * (4 + spp * sample_bytes)
    else:
        buffers = tile * spp * sample_bytes * (2 if bps < bits else 1)
    # (Orientations 5-8 also cost a transpose copy of the decoder's array: covered by the formula's
    # second copy of that array.)
    return w, h, channels, bits, buffers


_LAYOUT_READERS = {
    "png": _png_layout,
    "jpeg": _jpeg_layout,
    "webp": _webp_layout,
    "bmp": _bmp_layout,
    "tiff": _tiff_layout,
}


def probe_image(data: bytes) -> ImageInfo:
    """Read an encoded image's layout from its header alone, without decoding pixels.

    This is what :func:`decode_image` checks against its limits; callers can use it to check
    derived sizes (say, a model's output, ``width * height * scale**2``) before paying for a decode.

    Raises:
        ImageDecodeError: unknown format, or a header that is truncated, corrupt, ambiguous
            (a TIFF layout tag given twice with different values) or unsupported.
    """
    fmt = sniff_format(data)
    try:
        w, h, channels, bits, extra = _LAYOUT_READERS[fmt](data)
    except struct.error as exc:
        raise ImageDecodeError(f"truncated or corrupt {fmt.upper()} header") from exc
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"corrupt {fmt.upper()} header: {w}x{h} pixels")
    return ImageInfo(fmt, w, h, channels, bits, exif_orientation(data, fmt), extra)


def read_header(data: bytes) -> tuple[str, int, int]:
    """Return (format, width, height) from the header alone, without decoding pixels.

    Raises:
        ImageDecodeError: as :func:`probe_image`.
    """
    info = probe_image(data)
    return info.format, info.width, info.height


def decode_budget(max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = None) -> int:
    """The decode-memory limit in bytes (0 = none): ``max_bytes``, else ``max_pixels * 8``."""
    if max_bytes is not None:
        return max(0, int(max_bytes))
    return max(0, int(max_pixels)) * DECODE_BYTES_PER_PIXEL


def check_limits(info: ImageInfo, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = None) -> None:
    """Refuse an image whose header declares more pixels, or more decode memory, than allowed.

    Args:
        info: the header, from :func:`probe_image`.
        max_pixels: the pixel limit (0 = none).
        max_bytes: the limit on :attr:`ImageInfo.peak_bytes` (0 = none; None = ``max_pixels *
            DECODE_BYTES_PER_PIXEL``).

    Raises:
        ImageTooLargeError: over either limit.
    """
    w, h = info.width, info.height
    if max_pixels and w * h > max_pixels:
        raise ImageTooLargeError(
            f"image is {w}x{h} = {w * h / 1e6:.1f} MP, over the limit of {max_pixels / 1e6:.1f} MP"
        )
    budget = decode_budget(max_pixels, max_bytes)
    if budget and info.peak_bytes > budget:
        how = (
            f"{max_pixels / 1e6:g} MP x {DECODE_BYTES_PER_PIXEL} bytes per pixel"
            if max_bytes is None
            else "the decode memory limit"
        )
        raise ImageTooLargeError(
            f"image is {w}x{h} with {info.channels} channel(s) of {info.bit_depth} bits: decoding it "
            f"needs about {_megabytes(info.peak_bytes)}, over the limit of {_megabytes(budget)} ({how})"
        )


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


# --------------------------------------------------------------------------- EXIF orientation


def _exif_block(data: bytes, fmt: str) -> bytes | None:
    """Return the TIFF-structured EXIF payload of a JPEG/PNG/WebP/TIFF file, if any.

    Each walk is bounded (none found past the bound): JPEG segments by :data:`MAX_JPEG_MARKERS`,
    WebP chunks by ``_MAX_CHUNKS``, PNG chunks (the IDAT chunks before an eXIf at the end count
    too) by ``_MAX_CHUNKS`` or one per KiB of the file, whichever is more: a crafted file of
    empty chunks cannot make it a step in Python per dozen bytes.
    """
    if fmt == "tiff":
        return data
    if fmt == "jpeg":
        i = 2
        for _ in range(MAX_JPEG_MARKERS):
            if i + 4 > len(data) or data[i] != 0xFF:
                return None
            marker = data[i + 1]
            (seg_len,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
                return data[i + 10 : i + 2 + seg_len]
            if marker in (0xDA, 0xD9):
                return None
            i += 2 + seg_len
        return None
    if fmt == "png":
        # Before or after the image data: the PNG extension allows both, and Pillow reads both.
        most = max(_MAX_CHUNKS, len(data) >> 10)
        for n, (ctype, start, length) in enumerate(_png_chunks(data)):
            if n == most:
                return None
            if ctype == b"eXIf":
                return data[start : start + length]
            if ctype == b"IEND":
                return None
        return None
    if fmt == "webp":
        for n, (ctype, start, length) in enumerate(_webp_chunks(data)):
            if n == _MAX_CHUNKS:
                return None
            if ctype == b"EXIF":
                block = data[start : start + length]
                return block[6:] if block.startswith(b"Exif\x00\x00") else block
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


def _codec_orientation(info: ImageInfo) -> int:
    """The rotation this module applies after decoding: OpenCV's TIFF decoder applies its own."""
    return 1 if info.format == "tiff" else info.orientation


def _strip_rows(row_bytes: int) -> int:
    return max(1, DECODE_STRIP_BYTES // max(1, row_bytes))


def _to_uint8(strip: np.ndarray) -> np.ndarray:
    """One strip's samples as uint8 (16-bit: rounded /257; other integers: their type's range onto
    0..255; float: [0, 1] -> 0..255)."""
    if strip.dtype == np.uint8:
        return strip
    if strip.dtype == np.uint16:
        t = strip.astype(np.uint32)
        t += 128
        t //= 257
        return t.astype(np.uint8)
    if strip.dtype.kind in "iu":
        # Signed and 32-bit TIFF samples: the full range of the type, as for 16 bits (reading them
        # as floats in [0, 1] would make every positive sample white).
        info = np.iinfo(strip.dtype)
        d = strip.astype(np.float64)
        d -= info.min
        d *= 255.0 / (float(info.max) - float(info.min))
        d += 0.5
        return d.astype(np.uint8)
    # float TIFFs and the like: assume [0, 1] like most tools do.
    f = strip.astype(np.float32)
    np.nan_to_num(f, copy=False)
    f *= 255.0
    f += 0.5
    np.clip(f, 0, 255, out=f)
    return f.astype(np.uint8)


def _convert(raw: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The decoder's (H, W[, C]) array -> uint8 RGB/gray pixels (H, W, 1|3) + alpha, strip by strip.

    8-bit gray/RGB is converted in place; anything else into new uint8 arrays, a strip at a time,
    so besides the decoder's array only the result and one small strip exist.
    """
    if raw.ndim == 2:
        raw = raw[:, :, None]
    h, w, c = raw.shape
    if c not in (1, 2, 3, 4):
        raise ImageDecodeError(f"unsupported {fmt.upper()} image with {c} channels")
    if raw.dtype == np.uint8 and c in (1, 3) and raw.flags.c_contiguous and raw.flags.writeable:
        if c == 3:
            rows = _strip_rows(w * 3)
            for r0 in range(0, h, rows):
                strip = raw[r0 : r0 + rows]
                strip[...] = cv2.cvtColor(strip, cv2.COLOR_BGR2RGB)
        return raw, None
    pixels = np.empty((h, w, 3 if c >= 3 else 1), np.uint8)
    alpha = np.empty((h, w), np.uint8) if c in (2, 4) else None
    rows = _strip_rows(w * c * 4)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        strip = _to_uint8(raw[r0:r1])
        if c == 3:
            pixels[r0:r1] = cv2.cvtColor(strip, cv2.COLOR_BGR2RGB)
        elif c == 4:
            pixels[r0:r1] = cv2.cvtColor(strip, cv2.COLOR_BGRA2RGB)
        else:
            pixels[r0:r1, :, 0] = strip[:, :, 0]
        if alpha is not None:
            alpha[r0:r1] = strip[:, :, c - 1]
    return pixels, alpha


def _tiff_extra_sample(data: bytes) -> int:
    """A TIFF's first ExtraSamples value: 1 associated (premultiplied) alpha, 2 unassociated, 0 else."""
    try:
        extra = _tiff_entries(data, {_TIFF_EXTRA_SAMPLES}).get(_TIFF_EXTRA_SAMPLES)
    except ImageDecodeError:
        return 0
    return extra[0][0] if extra and extra[0][0] in (1, 2) else 0


def _tiff_premultiplied(data: bytes, bit_depth: int) -> bool:
    """Whether OpenCV hands a TIFF's colour over premultiplied by its alpha.

    Associated alpha is stored premultiplied, and OpenCV passes it on as it is, at any depth.
    Unassociated alpha is stored straight, but 8-bit files go through libtiff's RGBA interface,
    which premultiplies it; deeper files are read as stored.
    """
    extra = _tiff_extra_sample(data)
    return extra == 1 or (extra == 2 and bit_depth == 8)


def _unpremultiply(pixels: np.ndarray, alpha: np.ndarray) -> None:
    """Undo premultiplied colour in place: colour = round(colour * 255 / alpha), strip by strip.

    For TIFF colour that is stored premultiplied (associated alpha) or that libtiff's RGBA
    interface premultiplied (8-bit unassociated alpha, round(c * a / 255)): the nearest inverse
    (exact where a = 255, within 255 / (2a) elsewhere). Fully transparent pixels stay black: their
    colour is gone.
    """
    h, w, c = pixels.shape
    rows = _strip_rows(w * c * 4)
    for r0 in range(0, h, rows):
        a = alpha[r0 : r0 + rows, :, None].astype(np.uint32)
        t = pixels[r0 : r0 + rows].astype(np.uint32)
        t *= 255
        t += a // 2
        np.floor_divide(t, a, out=t, where=a > 0)
        t[np.broadcast_to(a == 0, t.shape)] = 0
        np.minimum(t, 255, out=t)
        pixels[r0 : r0 + rows] = t


def _png_gray_key_alpha(data: bytes, raw: np.ndarray) -> np.ndarray | None:
    """The alpha plane of a gray PNG whose tRNS chunk names one transparent gray level, or None.

    OpenCV expands a transparent colour of an RGB or palette PNG into an alpha channel but hands a
    gray one over without it; this compares the decoder's raw samples (before any conversion to
    8 bits, so a 16-bit key matches exactly) with the key: 0 where equal, else 255.
    """
    depth, color = data[24], data[25]
    if color != 0:
        return None
    for ctype, start, length in _png_chunks(data):
        if ctype in (b"IDAT", b"IEND"):
            return None
        if ctype == b"tRNS":
            if length < 2 or start + 2 > len(data):
                return None
            (key,) = struct.unpack(">H", data[start : start + 2])
            if depth < 8:  # libpng scales 1-, 2- and 4-bit samples to 8 bits, so the key too
                key = (key & ((1 << depth) - 1)) * (255 // ((1 << depth) - 1))
            return np.where(raw == key, np.uint8(0), np.uint8(255))
    return None


def _rotate(img: np.ndarray, orientation: int) -> np.ndarray:
    """:func:`apply_orientation` into one new contiguous array (OpenCV: fast, one allocation)."""
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        out = cv2.transpose(img)
        cv2.flip(out, -1, dst=out)  # in place
        return out
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    max_bytes: int | None = None,
    check: Callable[[ImageInfo], object] | None = None,
) -> DecodedImage:
    """Decode an encoded image into uint8 pixels (+ alpha kept aside).

    Nothing is decoded before the header (:func:`probe_image`) has passed ``max_pixels``,
    ``max_bytes`` and ``check``.

    Args:
        data: the file's bytes (PNG, JPEG, WebP, BMP or TIFF).
        max_pixels: refuse images whose header declares more pixels than this (0 = no limit).
        max_bytes: refuse images whose decode would need more memory than this, per the module's
            formula (:attr:`ImageInfo.peak_bytes`). None: ``max_pixels * DECODE_BYTES_PER_PIXEL``;
            0: no limit.
        check: called with the header's ImageInfo after the limits pass and before decoding; it
            refuses the image by raising (e.g. ImageTooLargeError for a model's output size).

    Returns:
        A DecodedImage with EXIF orientation applied and samples converted to 8 bits.

    Raises:
        ImageDecodeError: empty, truncated, corrupt, ambiguous or unsupported data.
        ImageTooLargeError: over ``max_pixels`` or ``max_bytes``.
        Whatever ``check`` raises.
    """
    info = probe_image(data)
    check_limits(info, max_pixels, max_bytes)
    if check is not None:
        check(info)
    fmt = info.format
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageDecodeError(f"corrupt {fmt.upper()} file: {exc.msg.strip() or 'decoder error'}") from exc
    if img is None or img.size == 0:
        raise ImageDecodeError(f"truncated or corrupt {fmt.upper()} file: the decoder could not read it")
    if sorted(img.shape[:2]) != sorted((info.height, info.width)):
        raise ImageDecodeError(
            f"corrupt {fmt.upper()} file: the header declares {info.width}x{info.height} but the "
            f"decoder produced {img.shape[1]}x{img.shape[0]}"
        )
    bit_depth = img.dtype.itemsize * 8
    key_alpha = _png_gray_key_alpha(data, img) if fmt == "png" and img.ndim == 2 else None
    pixels, alpha = _convert(img, fmt)
    del img  # (a no-op for 8-bit gray/RGB, converted in place)
    if fmt == "tiff" and alpha is not None and _tiff_premultiplied(data, bit_depth):
        _unpremultiply(pixels, alpha)  # models see straight colour; the alpha is re-attached as is
    if key_alpha is not None:
        alpha = key_alpha
    orientation = _codec_orientation(info)
    if orientation != 1:
        pixels = _rotate(pixels, orientation)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if alpha is not None:
            alpha = _rotate(alpha, orientation)
    return DecodedImage(pixels=pixels, alpha=alpha, format=fmt, bit_depth=bit_depth)


# The largest side each output format can store: WebP's 14-bit sizes, JPEG's (libjpeg's) 65500;
# PNG's 2**31 - 1 is beyond any pixel limit.
MAX_OUTPUT_SIDE = {"webp": 16383, "jpeg": 65500}


def check_output_size(fmt: str, width: int, height: int) -> None:
    """Refuse an output the format cannot store, before anything is computed for it.

    Raises:
        ImageTooLargeError: a side over the format's limit (the message says which, and PNG).
    """
    fmt = normalize_format(fmt)
    limit = MAX_OUTPUT_SIDE.get(fmt)
    if limit is not None and max(width, height) > limit:
        raise ImageTooLargeError(
            f"a {width}x{height} output cannot be stored as {fmt.upper()}, which holds at most {limit} "
            "pixels per side: ask for output_format png"
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
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageEncodeError(f"cannot encode an empty image ({pixels.shape[1]}x{pixels.shape[0]} pixels)")
    check_output_size(fmt, pixels.shape[1], pixels.shape[0])
    if alpha is not None and alpha.dtype != np.uint8:
        raise ImageEncodeError(f"alpha must be uint8, got {alpha.dtype}")
    quality = int(quality or DEFAULT_QUALITY)
    if not 1 <= quality <= 100:
        raise ImageEncodeError(f"quality must be within 1..100, got {quality}")
    bgr: np.ndarray
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
