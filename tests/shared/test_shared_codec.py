"""The shared image codec: every input format, alpha/16-bit/EXIF handling and every failure mode."""

from __future__ import annotations

import io
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


def _png_chunk(ctype, payload):
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def _png(w, h, depth, color, raw_rows, before_idat=()):
    """A PNG written by hand: ``raw_rows`` is the filtered scanline data (filter byte per row)."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", ihdr), *before_idat, _png_chunk(b"IDAT", zlib.compress(raw_rows))]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + _png_chunk(b"IEND", b"")


def _png_header_only(w, h, depth=8, color=2):
    return _png(w, h, depth, color, b"\x00" * 100)


def _must_not_decode(*args, **kwargs):
    raise AssertionError("cv2.imdecode was called: the header check should have refused the image")


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
    for ext, name in (
        (".png", "png"),
        (".jpg", "jpeg"),
        (".webp", "webp"),
        (".bmp", "bmp"),
        (".tiff", "tiff"),
    ):
        fmt, w, h = codec.read_header(_encode_cv(img, ext))
        assert (fmt, w, h) == (name, 37, 21), ext


def test_to_channels():
    rgb = _rgb(4, 4)
    gray = codec.to_channels(rgb, 1)
    assert gray.shape == (4, 4, 1)
    assert codec.to_channels(gray, 3).shape == (4, 4, 3)
    assert codec.to_channels(rgb, 3) is rgb


# --------------------------------------------------------------------------- header = decoder, memory


def _tiff(entries, payload=b""):
    """A little-endian TIFF whose one IFD holds ``entries`` = (tag, type, value) in the given order
    (duplicates included); a None value is the offset of ``payload``, stored after the IFD."""
    data_at = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        value = data_at if value is None else value
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + payload


def _gray_tiff(sizes, pixels=None, bits=8, orientation=None):
    """An uncompressed one-strip gray TIFF with an ImageWidth/ImageLength pair per (w, h) in
    ``sizes`` (in that order) and the pixels of the first size."""
    w, h = sizes[0]
    if pixels is None:
        pixels = np.arange(w * h, dtype=np.uint16 if bits == 16 else np.uint8).reshape(h, w)
    payload = pixels.astype("<u2" if bits == 16 else np.uint8).tobytes()
    entries = [e for sw, sh in sizes for e in ((256, 3, sw), (257, 3, sh))]
    entries += [(258, 3, bits), (259, 3, 1), (262, 3, 1), (273, 4, None)]
    entries += [(274, 3, orientation)] if orientation else []
    entries += [(277, 3, 1), (278, 4, h), (279, 4, len(payload))]
    return _tiff(entries, payload)


def test_tiff_size_is_read_from_the_first_tag_and_conflicting_duplicates_are_refused(monkeypatch):
    # libtiff, which cv2.imdecode runs, takes the FIRST of two ImageWidth/ImageLength tags; a header
    # check reading the last one would check a size other than the one allocated.
    first_wins = _gray_tiff([(96, 80), (64, 64)])
    assert cv2.imdecode(np.frombuffer(first_wins, np.uint8), cv2.IMREAD_UNCHANGED).shape == (80, 96)
    agreeing = _gray_tiff([(64, 48), (64, 48)])  # a duplicate that agrees changes nothing
    assert codec.read_header(agreeing) == ("tiff", 64, 48)
    assert codec.decode_image(agreeing).pixels.shape == (48, 64, 1)

    # A decompression bomb seen in the wild: 12000 x 12000 first, 64 x 64 last, 64 x 64 pixels of data.
    bomb = _gray_tiff([(12000, 12000), (64, 64)], pixels=np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(codec.cv2, "imdecode", _must_not_decode)
    for data in (first_wins, bomb):
        with pytest.raises(
            ImageDecodeError, match=r"ambiguous TIFF header: ImageWidth \(tag 256\) is given 2"
        ):
            codec.read_header(data)
        with pytest.raises(ImageDecodeError, match="ambiguous TIFF header"):
            codec.decode_image(data)


def test_16bit_png_is_refused_before_decoding_when_its_decode_is_over_the_limit(monkeypatch):
    rgb8 = cv2.imencode(".png", np.zeros((100, 100, 3), np.uint8))[1].tobytes()
    rgb16 = cv2.imencode(".png", np.zeros((100, 100, 3), np.uint16))[1].tobytes()
    # max_pixels 10 000 -> 80 000 bytes of decode memory. Both are 10 000 pixels, but the decoder's
    # array (returned to Python as a copy, so twice) is 30 000 bytes in 8 bits, 60 000 in 16.
    monkeypatch.setattr(codec.cv2, "imdecode", _must_not_decode)
    with pytest.raises(ImageTooLargeError, match="3 channel.*16 bits.* 120.0 KB, over the limit of 80.0 KB"):
        codec.decode_image(rgb16, max_pixels=10_000)
    # A reported file: 7999 x 7999 16-bit RGB is under the default 64 MP but needs 768 MB (1.8 GB
    # before this check existed); the default allows 64 MP x 8 bytes = 512 MB.
    with pytest.raises(ImageTooLargeError, match="767.8 MB, over the limit of 512.0 MB"):
        codec.decode_image(_png_header_only(7999, 7999, depth=16))
    with pytest.raises(ImageTooLargeError, match="decode memory limit"):
        codec.decode_image(rgb16, max_pixels=0, max_bytes=100_000)
    assert codec.probe_image(_png_header_only(7999, 7999, depth=8)).peak_bytes <= 512_000_000
    monkeypatch.undo()
    assert codec.decode_image(rgb8, max_pixels=10_000).pixels.shape == (100, 100, 3)
    assert codec.decode_image(rgb16, max_pixels=10_000, max_bytes=0).bit_depth == 16  # 0: no byte limit


def test_probe_image_gives_the_decoders_layout_without_decoding(monkeypatch):
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, (12, 20), dtype=np.uint8)
    rgba = rng.integers(0, 256, (12, 20, 4), dtype=np.uint8)
    gray_alpha_rows = b"".join(b"\x00" + bytes(40) for _ in range(12))
    palette = [_png_chunk(b"PLTE", bytes(range(48))), _png_chunk(b"tRNS", b"\x00")]
    cases = {
        "png gray 8": cv2.imencode(".png", gray)[1].tobytes(),
        "png gray+alpha 8": _png(20, 12, 8, 4, gray_alpha_rows),  # OpenCV makes it BGRA
        "png palette+tRNS": _png(20, 12, 8, 3, b"".join(b"\x00" + bytes(20) for _ in range(12)), palette),
        "png rgba 8": cv2.imencode(".png", rgba)[1].tobytes(),
        "png gray 16": cv2.imencode(".png", gray.astype(np.uint16) * 257)[1].tobytes(),
        "png rgb 16": cv2.imencode(".png", rgba[..., :3].astype(np.uint16) * 257)[1].tobytes(),
        "jpeg gray": cv2.imencode(".jpg", gray)[1].tobytes(),
        "jpeg rgb progressive": cv2.imencode(".jpg", rgba[..., :3], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[
            1
        ].tobytes(),
        "webp lossless rgba": cv2.imencode(".webp", rgba, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes(),
        "webp lossy": cv2.imencode(".webp", rgba[..., :3])[1].tobytes(),
        "bmp rgb": cv2.imencode(".bmp", rgba[..., :3])[1].tobytes(),
        "tiff rgba 8": cv2.imencode(".tiff", rgba)[1].tobytes(),
        "tiff rgb 16": cv2.imencode(".tiff", rgba[..., :3].astype(np.uint16))[1].tobytes(),
        "tiff rgb float": cv2.imencode(".tiff", rgba[..., :3].astype(np.float32))[1].tobytes(),
        "tiff gray 16 by hand": _gray_tiff([(20, 12)], bits=16),
    }
    decoded = {}
    for name, data in cases.items():
        raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        decoded[name] = (
            raw.shape[1],
            raw.shape[0],
            1 if raw.ndim == 2 else raw.shape[2],
            raw.dtype.itemsize * 8,
        )
    monkeypatch.setattr(codec.cv2, "imdecode", _must_not_decode)
    for name, data in cases.items():
        info = codec.probe_image(data)
        assert (info.width, info.height, info.channels, info.bit_depth) == decoded[name], name
        assert info.decoded_bytes == 20 * 12 * info.channels * info.bit_depth // 8
        assert info.peak_bytes >= 2 * info.decoded_bytes, name
    # Progressive JPEG and lossless WebP decode through whole-image buffers of their own.
    assert codec.probe_image(cases["jpeg rgb progressive"]).decoder_bytes > 0
    assert codec.probe_image(cases["webp lossless rgba"]).decoder_bytes == 4 * 20 * 12
    assert codec.probe_image(cases["png rgb 16"]).peak_bytes == 2 * 20 * 12 * 3 * 2


def test_check_sees_the_header_before_any_decoding(monkeypatch):
    # What a server needs to refuse an x4 model's output before decoding the input.
    data = _encode_cv(_rgb(30, 40), ".png")
    seen = []

    def output_limit(info):
        seen.append((info.width, info.height, info.channels))
        if info.width * info.height * 4 * 4 > 10_000:
            raise ImageTooLargeError("output would be 160x120")

    monkeypatch.setattr(codec.cv2, "imdecode", _must_not_decode)
    with pytest.raises(ImageTooLargeError, match="output would be"):
        codec.decode_image(data, check=output_limit)
    assert seen == [(40, 30, 3)]


def test_tiff_tile_buffer_declared_in_the_header_is_counted(monkeypatch):
    # 64 x 64 pixels in a single 4096 x 4096 tile: a 16 KB file for which OpenCV allocates the whole
    # tile as RGBA (64 MiB) and libtiff the tile itself (16 MiB), whatever the image size.
    tile = zlib.compress(bytes(4096 * 4096), 9)
    entries = [(256, 3, 64), (257, 3, 64), (258, 3, 8), (259, 3, 8), (262, 3, 1), (277, 3, 1)]
    entries += [(322, 3, 4096), (323, 3, 4096), (324, 4, None), (325, 4, len(tile))]
    data = _tiff(entries, tile)
    monkeypatch.setattr(codec.cv2, "imdecode", _must_not_decode)
    with pytest.raises(ImageTooLargeError, match="needs about 83.9 MB"):
        codec.decode_image(data, max_pixels=1_000_000)
    info = codec.probe_image(data)
    assert (info.width, info.height) == (64, 64)
    assert info.decoder_bytes == 4096 * 4096 * (4 + 1)


def test_decoded_size_must_match_the_header(monkeypatch):
    data = _encode_cv(_rgb(16, 16), ".png")
    monkeypatch.setattr(codec.cv2, "imdecode", lambda buf, flags: np.zeros((4000, 4000, 3), np.uint8))
    with pytest.raises(ImageDecodeError, match="header declares 16x16 but the decoder produced 4000x4000"):
        codec.decode_image(data)


@pytest.mark.parametrize("bits", [8, 16])
def test_tiff_orientation_is_applied_once(bits):
    # OpenCV's TIFF decoder applies the Orientation tag itself: applying it again turned images.
    pixels = np.arange(6 * 10, dtype=np.uint16 if bits == 16 else np.uint8).reshape(6, 10) * (
        257 if bits == 16 else 1
    )
    data = _gray_tiff([(10, 6)], pixels=pixels, bits=bits, orientation=6)
    dec = codec.decode_image(data)
    expect = np.rot90(pixels, -1) // (257 if bits == 16 else 1)
    assert dec.pixels.shape == (10, 6, 1)
    np.testing.assert_array_equal(dec.pixels[..., 0], expect)


def _with_exif_orientation(png, orientation):
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHHI", 0x0112, 3, 1, orientation, 0, 0)
    return png[:33] + _png_chunk(b"eXIf", tiff) + png[33:]  # right after IHDR


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_exact_for_each_conversion_path(orientation):
    img = _rgb(6, 10, seed=orientation)
    alpha = np.arange(60, dtype=np.uint8).reshape(6, 10)
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    in_place = cv2.imencode(".png", bgr)[1].tobytes()  # 8-bit RGB: converted in place
    with_alpha = cv2.imencode(".png", np.dstack([bgr, alpha]))[1].tobytes()  # new arrays + alpha
    deep = cv2.imencode(".png", bgr.astype(np.uint16) * 257)[1].tobytes()  # 16-bit strips
    for data in (in_place, with_alpha, deep):
        dec = codec.decode_image(_with_exif_orientation(data, orientation))
        np.testing.assert_array_equal(dec.pixels, codec.apply_orientation(img, orientation))
        assert (dec.alpha is not None) is (data is with_alpha)
        if data is with_alpha:
            np.testing.assert_array_equal(dec.alpha, codec.apply_orientation(alpha, orientation))


# Pillow writes each format's orientation the way cameras and editors do (JPEG APP1, PNG eXIf, WebP
# EXIF chunk, TIFF Orientation tag) and ImageOps.exif_transpose is the reference reading of it.
_PIL_FORMATS = {
    "png": ("PNG", {}),
    "webp": ("WEBP", {"lossless": True, "exact": True}),
    "tiff": ("TIFF", {}),
    "jpeg": ("JPEG", {"quality": 95, "subsampling": 0}),
}


_PIL_MODES = [
    (fmt, mode)
    for fmt in _PIL_FORMATS
    for mode in ("RGB", "RGBA", "L")
    if not (fmt == "jpeg" and mode == "RGBA") and not (fmt == "webp" and mode == "L")  # no such files
]


@pytest.mark.parametrize("fmt,mode", _PIL_MODES)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(orientation, fmt, mode):
    """Every format, every orientation: applied exactly once, as Pillow's exif_transpose applies it."""
    image_mod = pytest.importorskip("PIL.Image")
    from PIL import ImageOps

    rng = np.random.default_rng(orientation)
    # 6x10, every pixel different: any flip, transpose or rotation (once or twice) changes it.
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    stored = rng.integers(0, 256, (6, 10, channels), dtype=np.uint8)
    stored[:3, :5] = 255  # a bright top-left quarter: the lossy JPEG case still shows the geometry
    if mode == "RGBA":
        stored[..., 3] |= 1  # no fully transparent pixel: its colour is not stored by every format
    pil_name, options = _PIL_FORMATS[fmt]
    exif = image_mod.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image_mod.fromarray(stored[..., 0] if mode == "L" else stored, mode).save(
        buf, pil_name, exif=exif, **options
    )
    data = buf.getvalue()
    opened = image_mod.open(io.BytesIO(data))
    assert opened.getexif().get(0x0112) == orientation, "Pillow did not store the orientation"
    ref = np.asarray(ImageOps.exif_transpose(opened).convert(mode))
    ref = ref[..., None] if mode == "L" else ref

    dec = codec.decode_image(data)
    assert dec.format == fmt
    assert codec.probe_image(data).orientation == orientation
    got = dec.pixels if dec.alpha is None else np.dstack([dec.pixels, dec.alpha])
    assert got.shape == ref.shape, f"{fmt} orientation {orientation}: {got.shape} != {ref.shape}"
    if fmt == "jpeg":  # lossy, and libjpeg versions may differ: close, with the geometry unmistakable
        assert np.abs(got.astype(int) - ref.astype(int)).mean() < 3
    elif fmt == "tiff" and mode == "RGBA":
        # libtiff hands 8-bit straight alpha over premultiplied (round(c * a / 255)); the codec
        # divides it back out, which is exact where a = 255 and within 255 / (2a) + 1 elsewhere.
        np.testing.assert_array_equal(got[..., 3], ref[..., 3])
        a = ref[..., 3:].astype(float)
        err = np.abs(got[..., :3].astype(int) - ref[..., :3].astype(int))
        assert (err <= np.where(a > 0, 255 / (2 * np.maximum(a, 1)) + 1, 255)).all(), err.max()
        assert (err[(a == 255)[..., 0]] == 0).all()
    else:
        np.testing.assert_array_equal(got, ref)
