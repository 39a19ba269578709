"""The codec against files built to hurt or to slip through: a JPEG that repeats its scans (a CPU
bomb), a scan count hidden behind a fake end marker, junk before a marker, palette TIFFs with wide
samples (a memory bomb), strips taller than the image, premultiplied TIFF alpha, gray PNG
transparency, signed TIFF samples, and outputs a format cannot store."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from pixforge import codec
from pixforge.errors import ImageDecodeError, ImageEncodeError, ImageTooLargeError


def _must_not_decode(*_args, **_kwargs):
    raise AssertionError("the decoder ran although the header should have been refused")


def _progressive_jpeg(h=64, w=64) -> bytes:
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    return buf.tobytes()


def _first_sos(data: bytes) -> int:
    """Offset of the first SOS marker, walking the segments before it by their lengths."""
    i = 2
    while data[i + 1] != 0xDA:
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        i += 2 + length
    return i


def _scans(data: bytes, start: int) -> int:
    """The scans the codec's header walk counts from offset ``start``."""
    return codec._count_scans(codec._jpeg_segments(data, start))


# --------------------------------------------------------------------------- JPEG


def test_a_jpeg_repeating_its_scans_is_refused_before_decoding(monkeypatch):
    data = _progressive_jpeg()
    start, end = _first_sos(data), data.rindex(b"\xff\xd9")
    scans = _scans(data, start)
    assert 2 <= scans <= codec.MAX_JPEG_SCANS  # an ordinary progressive file passes ...
    assert codec.decode_image(data).width == 64
    repeats = codec.MAX_JPEG_SCANS // scans + 1  # ... the same scans over and over do not
    bomb = data[:start] + data[start:end] * repeats + data[end:]
    monkeypatch.setattr(codec.cv2, "imdecode", _must_not_decode)
    with pytest.raises(ImageDecodeError, match=f"over {codec.MAX_JPEG_SCANS} scans"):
        codec.decode_image(bomb)


def test_scans_are_counted_past_an_end_marker_hidden_in_a_comment():
    data = _progressive_jpeg()
    start = _first_sos(data)
    payload = b"\xff\xd9 not the end \xff\xda"
    comment = b"\xff\xfe" + struct.pack(">H", 2 + len(payload)) + payload
    hidden = data[:start] + comment + data[start:]
    assert _scans(hidden, start) == _scans(data, start)
    assert codec.probe_image(hidden).decoder_bytes == codec.probe_image(data).decoder_bytes > 0


def test_junk_before_a_marker_is_skipped_as_libjpeg_does():
    ok, buf = cv2.imencode(".jpg", np.full((16, 24, 3), 128, np.uint8))
    data = buf.tobytes()
    dqt = data.index(b"\xff\xdb")
    junky = data[:dqt] + b"\x00\x13\x37" + data[dqt:]  # libjpeg: "3 extraneous bytes before marker"
    assert cv2.imdecode(np.frombuffer(junky, np.uint8), cv2.IMREAD_UNCHANGED) is not None
    decoded = codec.decode_image(junky)
    assert (decoded.width, decoded.height) == (24, 16)


# --------------------------------------------------------------------------- TIFF


def _tiff(pixels: np.ndarray, tags: dict[int, tuple[int, list[int]]] | None = None) -> bytes:
    """A little-endian, uncompressed, one-strip TIFF of (H, W, C) ``pixels`` (any integer dtype);
    ``tags`` override or add {tag: (type, values)} (3 = SHORT, 4 = LONG)."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    h, w, c = pixels.shape
    body = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    fmt = {"u": 1, "i": 2, "f": 3}[pixels.dtype.kind]
    entries = {
        256: (4, [w]),
        257: (4, [h]),
        258: (3, [pixels.dtype.itemsize * 8] * c),
        259: (3, [1]),
        262: (3, [1 if c in (1, 2) else 2]),
        273: (4, [0]),  # the strip's offset, set below
        277: (3, [c]),
        278: (4, [h]),
        279: (4, [len(body)]),
        284: (3, [1]),
        339: (3, [fmt] * c),
        **(tags or {}),
    }
    count = len(entries)
    outside = 8 + 2 + 12 * count + 4  # values over 4 bytes follow the IFD, then the strip
    extra = bytearray()
    packed = []
    for tag, (typ, values) in sorted(entries.items()):
        raw = struct.pack("<" + ("H" if typ == 3 else "I") * len(values), *values)
        packed.append((tag, typ, values, raw))
        if len(raw) > 4:
            extra += raw + b"\0" * (len(raw) & 1)
    strip_at = outside + len(extra)
    ifd, extra = bytearray(struct.pack("<H", count)), bytearray()
    for tag, typ, values, raw in packed:
        if tag == 273:
            raw = struct.pack("<I", strip_at)
        if len(raw) > 4:
            ifd += struct.pack("<HHII", tag, typ, len(values), outside + len(extra))
            extra += raw + b"\0" * (len(raw) & 1)
        else:
            ifd += struct.pack("<HHI", tag, typ, len(values)) + raw.ljust(4, b"\0")
    return b"II*\x00" + struct.pack("<I", 8) + bytes(ifd) + b"\0\0\0\0" + bytes(extra) + body


def test_a_palette_tiff_with_wide_samples_is_refused(monkeypatch):
    # OpenCV hands such a file over as raw 64-bit samples: a 2 MB file took 4 GB against an 8-bit
    # RGB estimate of 384 MB. Palette indices have at most 8 bits.
    data = _tiff(np.zeros((8, 8), np.uint16), {262: (3, [3])})
    monkeypatch.setattr(codec.cv2, "imdecode", _must_not_decode)
    with pytest.raises(ImageDecodeError, match="palette image with 16 bits per sample"):
        codec.decode_image(data)


def test_strips_taller_than_the_image_count_the_image_rows():
    pixels = np.arange(100 * 40, dtype=np.uint32).reshape(100, 40).astype(np.uint8)
    data = _tiff(pixels, {278: (4, [65536])})  # RowsPerStrip over ImageLength is legal
    assert codec.probe_image(data).decoder_bytes == 40 * 100 * (4 + 1)
    assert np.array_equal(codec.decode_image(data, max_pixels=5_000).pixels[:, :, 0], pixels)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_associated_alpha_comes_back_straight(dtype):
    # Straight colour 200 at alpha 64, stored premultiplied (ExtraSamples = 1): 50.
    full = np.iinfo(dtype).max
    rgba = np.zeros((4, 4, 4), dtype)
    rgba[..., :3] = round(200 / 255 * 64 / 255 * full)
    rgba[..., 3] = round(64 / 255 * full)
    decoded = codec.decode_image(_tiff(rgba, {338: (3, [1])}))
    assert decoded.alpha is not None and int(decoded.alpha[0, 0]) == 64
    assert abs(int(decoded.pixels[0, 0, 0]) - 200) <= 2  # not 50: the model sees straight colour


def test_signed_tiff_samples_keep_their_order():
    ramp = np.linspace(-12000, 13500, 64).astype(np.int16).reshape(8, 8)
    out = codec.decode_image(_tiff(ramp)).pixels[:, :, 0].ravel().astype(int)
    assert np.all(np.diff(out) >= 0) and len(set(out)) > 20  # a ramp, not black and white
    assert abs(out[0] - round((-12000 + 32768) * 255 / 65535)) <= 1


# --------------------------------------------------------------------------- PNG


def _png(depth: int, rows: list[list[int]], key: int) -> bytes:
    """A gray PNG (colour type 0) of ``depth`` bits with a tRNS key, packed by hand."""
    per_byte = 8 // depth if depth < 8 else 1
    raw = b""
    for row in rows:
        if depth == 16:
            line = b"".join(struct.pack(">H", v) for v in row)
        elif depth == 8:
            line = bytes(row)
        else:
            line = bytes(
                sum(v << (8 - depth * (k + 1)) for k, v in enumerate(row[i : i + per_byte]))
                for i in range(0, len(row), per_byte)
            )
        raw += b"\x00" + line

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", len(rows[0]), len(rows), depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"tRNS", struct.pack(">H", key))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "depth,rows,key",
    [
        (1, [[1, 0, 0, 1, 1, 0, 1, 0]], 1),
        (4, [[3, 7, 15, 7]], 7),
        (8, [[10, 60], [60, 10]], 60),
        (16, [[1000, 1001], [1001, 1000]], 1001),  # 1000 and 1001 are the same 8-bit level
    ],
)
def test_a_gray_png_transparent_level_becomes_alpha(depth, rows, key):
    decoded = codec.decode_image(_png(depth, rows, key))
    expected = np.where(np.array(rows) == key, 0, 255)
    assert decoded.alpha is not None and np.array_equal(decoded.alpha, expected)


# --------------------------------------------------------------------------- encode


@pytest.mark.parametrize("fmt,side", [("webp", 16383), ("jpeg", 65500)])
def test_outputs_a_format_cannot_store_are_refused_by_size(fmt, side):
    codec.check_output_size(fmt, side, 1)
    codec.check_output_size("png", 10 * side, 1)
    with pytest.raises(
        ImageTooLargeError, match=f"at most {side} pixels per side: ask for output_format png"
    ):
        codec.check_output_size(fmt, 1, side + 1)
    with pytest.raises(ImageTooLargeError, match=f"at most {side}"):
        codec.encode_image(np.zeros((1, side + 1, 3), np.uint8), fmt)


def test_encode_refuses_empty_images_and_non_uint8_alpha():
    with pytest.raises(ImageEncodeError, match="empty image"):
        codec.encode_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageEncodeError, match="alpha must be uint8"):
        codec.encode_image(np.zeros((2, 2, 3), np.uint8), alpha=np.ones((2, 2), np.float32))


def test_an_exif_chunk_after_the_image_data_still_orients_the_image():
    img = np.zeros((2, 4, 3), np.uint8)
    img[0, 0] = 255
    data = cv2.imencode(".png", img)[1].tobytes()
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHI", 0x0112, 3, 1) + struct.pack("<HH", 6, 0) + struct.pack("<I", 0)
    exif = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    iend = data.rindex(b"IEND") - 4
    late = data[:iend] + exif + data[iend:]  # after IDAT, before IEND
    decoded = codec.decode_image(late)
    assert decoded.pixels.shape[:2] == (4, 2)  # rotated 90 degrees clockwise, as Pillow does
    assert np.array_equal(decoded.pixels, np.rot90(img, -1))
