"""The shared image codec: every input format, alpha/16-bit/EXIF handling and every failure mode."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from pixforge import codec
from pixforge.errors import ImageDecodeError, ImageEncodeError, ImageTooLargeError


def _rgb(h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[:, : w // 2, 0] = 255  # make the left half clearly red so channel order mistakes show
    return img


def _encode_cv(img_rgb, ext, params=()):
    bgr = cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR) if img_rgb.ndim == 3 and img_rgb.shape[2] == 3 else img_rgb
    ok, buf = cv2.imencode(ext, bgr, list(params))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext,fmt", [(".png", "png"), (".bmp", "bmp"), (".tiff", "tiff"), (".webp", "webp")])
def test_lossless_formats_round_trip_rgb(ext, fmt):
    img = _rgb()
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []  # >100 = lossless WebP
    dec = codec.decode_image(_encode_cv(img, ext, params))
    assert dec.format == fmt
    assert dec.pixels.shape == (24, 32, 3) and dec.pixels.dtype == np.uint8
    np.testing.assert_array_equal(dec.pixels, img)
    assert dec.alpha is None and dec.bit_depth == 8


def test_jpeg_decodes_close_and_in_rgb_order():
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 200  # red
    dec = codec.decode_image(_encode_cv(img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]))
    assert dec.format == "jpeg"
    assert abs(int(dec.pixels[..., 0].mean()) - 200) <= 3 and dec.pixels[..., 2].mean() < 5


def test_gray_png_stays_one_channel():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    dec = codec.decode_image(_encode_cv(gray, ".png"))
    assert dec.pixels.shape == (8, 8, 1)
    np.testing.assert_array_equal(dec.pixels[..., 0], gray)


def test_rgba_alpha_is_kept_aside_and_reattached():
    img = _rgb(10, 12)
    alpha = np.linspace(0, 255, 120, dtype=np.uint8).reshape(10, 12)
    bgra = np.dstack([cv2.cvtColor(img, cv2.COLOR_RGB2BGR), alpha])
    dec = codec.decode_image(cv2.imencode(".png", bgra)[1].tobytes())
    np.testing.assert_array_equal(dec.pixels, img)
    np.testing.assert_array_equal(dec.alpha, alpha)
    again = codec.decode_image(codec.encode_image(dec.pixels, "png", alpha=dec.alpha))
    np.testing.assert_array_equal(again.alpha, alpha)
    np.testing.assert_array_equal(again.pixels, img)


def test_16bit_png_is_scaled_to_8bit():
    img16 = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369  # 0..65535 in 16 steps
    dec = codec.decode_image(cv2.imencode(".png", img16)[1].tobytes())
    assert dec.bit_depth == 16 and dec.pixels.dtype == np.uint8
    np.testing.assert_array_equal(dec.pixels[..., 0], (np.arange(16).reshape(4, 4) * 17).astype(np.uint8))


def _jpeg_with_orientation(img_rgb, orientation):
    data = _encode_cv(img_rgb, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 100])
    # A minimal little-endian EXIF block: IFD0 with one SHORT tag 0x0112 (Orientation).
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHI", 0x0112, 3, 1) + struct.pack("<HH", orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + app1 + data[2:]


@pytest.mark.parametrize("orientation,expect", [(1, "same"), (3, "rot180"), (6, "rot90cw"), (8, "rot90ccw")])
def test_exif_orientation_is_applied(orientation, expect):
    img = np.zeros((16, 32, 3), np.uint8)
    img[:8, :16] = 255  # white block in the top-left corner
    data = _jpeg_with_orientation(img, orientation)
    assert codec.exif_orientation(data) == orientation
    dec = codec.decode_image(data).pixels
    refs = {
        "same": img,
        "rot180": img[::-1, ::-1],
        "rot90cw": np.rot90(img, -1),
        "rot90ccw": np.rot90(img, 1),
    }
    ref = refs[expect]
    assert dec.shape == ref.shape
    assert np.abs(dec.astype(int) - ref.astype(int)).mean() < 6


def test_encode_formats_and_quality():
    img = _rgb(40, 40)
    for fmt, magic in (("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("jpg", b"\xff\xd8"), ("webp", b"RIFF")):
        assert codec.encode_image(img, fmt, quality=80).startswith(magic)
    small = codec.encode_image(img, "jpeg", quality=10)
    big = codec.encode_image(img, "jpeg", quality=100)
    assert len(small) < len(big)
    with pytest.raises(ImageEncodeError, match="unknown output format"):
        codec.encode_image(img, "gif")
    with pytest.raises(ImageEncodeError, match="quality"):
        codec.encode_image(img, "jpeg", quality=101)
    with pytest.raises(ImageEncodeError, match="uint8"):
        codec.encode_image(img.astype(np.float32), "png")


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_encode_in_place_and_strips_round_trip_exactly(fmt):
    # Taller than one conversion strip, so strip boundaries are crossed. The in-place path must
    # give the same bytes as the copying one (WebP is lossy: compare bytes, not pixels).
    img = _rgb(codec.ENCODE_STRIP_ROWS * 2 + 37, 33, seed=3)
    reference = codec.encode_image(img, fmt)
    in_place = codec.encode_image(img.copy(), fmt, overwrite=True)
    assert in_place == reference
    if fmt == "png":
        np.testing.assert_array_equal(codec.decode_image(in_place).pixels, img)
    alpha = np.random.default_rng(4).integers(0, 256, img.shape[:2], dtype=np.uint8)
    decoded = codec.decode_image(codec.encode_image(img, "png", alpha=alpha))
    np.testing.assert_array_equal(decoded.pixels, img)
    np.testing.assert_array_equal(decoded.alpha, alpha)
    gray = img[:, :, 1].copy()
    decoded = codec.decode_image(codec.encode_image(gray, "png", alpha=alpha))
    np.testing.assert_array_equal(decoded.alpha, alpha)
    assert decoded.pixels.shape[:2] == gray.shape


def test_empty_input_is_a_typed_error():
    with pytest.raises(ImageDecodeError, match="empty"):
        codec.decode_image(b"")


def test_random_bytes_are_refused():
    data = np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    with pytest.raises(ImageDecodeError, match="signature"):
        codec.decode_image(b"\x00" + data)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp", ".tiff"])
def test_truncated_files_are_refused(ext):
    data = _encode_cv(_rgb(64, 64), ext)
    for cut in (10, len(data) // 2):
        with pytest.raises(ImageDecodeError):
            codec.decode_image(data[:cut])


def _png_header_only(w, h):
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 100)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk
        + struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png_header_only(60000, 60000)
    assert codec.read_header(bomb) == ("png", 60000, 60000)
    with pytest.raises(ImageTooLargeError, match="3600.0 MP"):
        codec.decode_image(bomb)
    with pytest.raises(ImageTooLargeError):
        codec.decode_image(_encode_cv(_rgb(100, 100), ".png"), max_pixels=5000)


def test_wrong_extension_does_not_matter():
    # A PNG saved under a .jpg name: the format is sniffed from the bytes, not the name.
    data = _encode_cv(_rgb(), ".png")
    assert codec.decode_image(data).format == "png"


def test_header_sizes_match_for_every_format():
    img = _rgb(21, 37)
    for ext in (".png", ".jpg", ".webp", ".bmp", ".tiff"):
        fmt, w, h = codec.read_header(_encode_cv(img, ext))
        assert (w, h) == (37, 21), ext


def test_to_channels():
    rgb = _rgb(4, 4)
    gray = codec.to_channels(rgb, 1)
    assert gray.shape == (4, 4, 1)
    assert codec.to_channels(gray, 3).shape == (4, 4, 3)
    assert codec.to_channels(rgb, 3) is rgb
