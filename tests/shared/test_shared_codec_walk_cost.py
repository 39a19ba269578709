"""What reading a header may cost: probe_image runs before admission (on the server's event loop for
small images), so the walks over a file's markers and chunks are bounded whatever the bytes.

JPEG: junk, fill bytes (0xFF runs) and a scan's entropy-coded data are skipped by C searches, a
window at a time, that never backtrack; every other marker (segments and standalone markers) is a
step in Python and is counted: past ``MAX_JPEG_MARKERS`` the file is refused. The EXIF walks of
JPEG, PNG and WebP stop at their bounds too. Real files walk exactly as before (compared with the
byte-at-a-time walk this replaced).
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from pixforge import codec
from pixforge.errors import ImageDecodeError

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
SOF = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 64, 64, 3) + bytes([1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0])
COM = b"\xff\xfe\x00\x02"  # an empty comment: the smallest segment
RST0, TEM = b"\xff\xd0", b"\xff\x01"


def _photo(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    img = np.dstack([x * 4 % 256, y * 5 % 256, (x + y) * 3 % 256]).astype(np.uint8)
    return cv2.add(img, np.random.default_rng(1).integers(0, 60, img.shape, dtype=np.uint8))


def _jpeg(params: tuple[int, ...] = (), gray: bool = False) -> bytes:
    img = cv2.cvtColor(_photo(), cv2.COLOR_BGR2GRAY) if gray else _photo()
    ok, buf = cv2.imencode(".jpg", img, list(params))
    assert ok
    return buf.tobytes()


def _old_segments(data: bytes, i: int) -> Iterator[tuple[int, int, int]]:
    """The walk this module replaced, a byte at a time (the behaviour to keep on real files)."""
    scan_end = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
    n = len(data)
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 2 > n:
            return
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0xD9:
            return
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
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
            end = scan_end.search(data, i)
            if end is None:
                return
            i = end.end() - 2


def _sof_offset(data: bytes) -> int:
    return next(i for marker, i, _ in _old_segments(data, 2) if marker in codec._JPEG_SOF)


def _messy(data: bytes) -> bytes:
    """``data`` with what libjpeg skips: fill bytes and junk before markers, standalone markers
    before the frame header, fill bytes before the end of the scan and before EOI."""
    sof = _sof_offset(data)
    head = data[2:sof].replace(b"\xff\xdb", b"\xff\xff\xff\xdb").replace(b"\xff\xe0", b"\x13\x37\xff\xe0")
    tail = data[sof:-2]
    return SOI + RST0 + TEM + head + b"\xff" * 5 + tail + b"\xff" * 700 + EOI


ENCODED = {
    "baseline": lambda: _jpeg((cv2.IMWRITE_JPEG_QUALITY, 90)),
    "progressive": lambda: _jpeg((cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
    "restart intervals": lambda: _jpeg((cv2.IMWRITE_JPEG_RST_INTERVAL, 1, cv2.IMWRITE_JPEG_QUALITY, 100)),
    "optimised progressive with restarts": lambda: _jpeg(
        (cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_OPTIMIZE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 2)
    ),
    "gray": lambda: _jpeg(gray=True),
    "messy progressive": lambda: _messy(_jpeg((cv2.IMWRITE_JPEG_PROGRESSIVE, 1))),
    "messy restarts": lambda: _messy(_jpeg((cv2.IMWRITE_JPEG_RST_INTERVAL, 1))),
}


# --------------------------------------------------------------------------- the same walk


@pytest.mark.parametrize("kind", sorted(ENCODED))
def test_real_files_walk_as_before(kind):
    data = ENCODED[kind]()
    assert list(codec._jpeg_segments(data, 2)) == list(_old_segments(data, 2))
    info = codec.probe_image(data)
    assert (info.width, info.height) == (64, 48)
    assert codec.decode_image(data).pixels.shape[:2] == (48, 64)


@pytest.mark.parametrize("kind", sorted(ENCODED))
def test_window_boundaries_change_nothing(kind, monkeypatch):
    """The C searches read a window at a time; a marker straddling two windows is still found."""
    data = ENCODED[kind]()
    expected = list(_old_segments(data, 2)), codec.probe_image(data)
    for window in (1, 2, 3, 7, 64):
        monkeypatch.setattr(codec, "_JPEG_WINDOW", window)
        assert (list(codec._jpeg_segments(data, 2)), codec.probe_image(data)) == expected, window


# --------------------------------------------------------------------------- the marker cap


@pytest.mark.parametrize(
    "name,data",
    [
        ("restart markers before SOF", SOI + RST0 * (codec.MAX_JPEG_MARKERS + 1) + SOF),
        ("TEM markers after SOF", SOI + SOF + TEM * codec.MAX_JPEG_MARKERS),
        ("empty comments after SOF", SOI + SOF + COM * codec.MAX_JPEG_MARKERS),
        ("empty APP0 segments before SOF", SOI + b"\xff\xe0\x00\x02" * codec.MAX_JPEG_MARKERS + SOF),
        ("standalone markers between junk", SOI + SOF + b"\xff\xd0\x00\x00" * codec.MAX_JPEG_MARKERS),
    ],
)
def test_a_flood_of_markers_is_refused(name, data):
    with pytest.raises(
        ImageDecodeError, match=f"unsupported JPEG file: over {codec.MAX_JPEG_MARKERS} markers"
    ):
        codec.probe_image(data)
    with pytest.raises(ImageDecodeError, match="markers"):
        codec.decode_image(data)


def test_the_cap_counts_every_marker_from_soi_to_eoi():
    """Segments and standalone markers, before and after the frame header, count together; EOI
    and fill bytes do not: a file of exactly MAX_JPEG_MARKERS markers passes, one more does not."""
    data = _jpeg((cv2.IMWRITE_JPEG_PROGRESSIVE, 1))
    walked = len(list(_old_segments(data, 2)))  # an encoder's file: segments only
    room = codec.MAX_JPEG_MARKERS - walked
    assert 0 < walked < 40 < room
    sof = _sof_offset(data)

    def padded(before: int, after: int) -> bytes:
        # Standalone markers and comments before SOF, comments after it; fill bytes everywhere.
        pre = (b"\xff\xff" + RST0) * (before // 2) + (b"\xff" * 3 + COM) * (before - before // 2)
        return data[:2] + pre + data[2:sof] + data[sof:-2] + COM * after + b"\xff" * 9 + EOI

    expected = codec.probe_image(data)
    assert codec.probe_image(padded(room // 2, room - room // 2)) == expected
    for before, after in ((room // 2 + 1, room - room // 2), (room // 2, room - room // 2 + 1)):
        with pytest.raises(ImageDecodeError, match=f"over {codec.MAX_JPEG_MARKERS} markers"):
            codec.probe_image(padded(before, after))


def test_fill_bytes_and_junk_are_not_steps():
    """Megabytes of fill bytes and junk between markers are skipped by C searches, not counted:
    the file reads as the clean one."""
    data = _jpeg((cv2.IMWRITE_JPEG_QUALITY, 90))
    sof = _sof_offset(data)
    junk = b"\x00" * 1_000_000 + b"\xff" * 1_000_000
    padded = data[:sof] + junk + data[sof:]
    assert codec.probe_image(padded) == codec.probe_image(data)
    assert [m for m, _, _ in codec._jpeg_segments(padded, 2)] == [
        m for m, _, _ in codec._jpeg_segments(data, 2)
    ]


def test_a_run_of_fill_bytes_in_scan_data_reads_in_linear_time():
    """The scan-end search used to backtrack through a run of 0xFF not ending in a marker (here: a
    stuffed zero) from each of its bytes: quadratic, 3 minutes for 100 KB after an SOS. Read in a
    child process (so the old behaviour fails the test instead of hanging it): 4 MB take
    milliseconds; the child has minutes."""
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])  # the codec under test, wherever the child starts
        from pixforge import codec
        data = sys.stdin.buffer.read()
        info = codec.probe_image(data)
        print(info.width, info.height, info.decoder_bytes)
        """
    )
    base = _jpeg((cv2.IMWRITE_JPEG_QUALITY, 90))
    data = base[:-2] + b"\xff" * 4_000_000 + b"\x00" + EOI
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(Path(codec.__file__).parents[1])],
            input=data,
            capture_output=True,
            timeout=120,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("probe_image did not read 4 MB of 0xFF in scan data within 120 s")
    assert done.stdout.split() == [b"64", b"48", b"0"]


# --------------------------------------------------------------------------- EXIF walks


def _exif(orientation: int) -> bytes:
    """A big-endian TIFF structure with one Orientation entry."""
    return (
        b"MM\x00*"
        + struct.pack(">IH", 8, 1)
        + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
        + b"\0" * 4
    )


def _counting(monkeypatch, name: str) -> list[int]:
    """Wrap codec.<name> (a chunk generator) to count the chunks it hands out."""
    count = [0]
    real = getattr(codec, name)

    def counted(*args, **kwargs):
        for chunk in real(*args, **kwargs):
            count[0] += 1
            yield chunk

    monkeypatch.setattr(codec, name, counted)
    return count


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _png(*chunks: bytes) -> bytes:
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    idat = _png_chunk(b"IDAT", zlib.compress(bytes(8 * 25)))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + b"".join(chunks) + _png_chunk(b"IEND", b"")


def test_png_exif_walk_is_bounded(monkeypatch):
    """Pillow reads an eXIf after the image data too, so the walk goes past IDAT: at most
    _MAX_CHUNKS chunks (or one per KiB of file) of it, not one per 12 bytes of a crafted file."""
    text = _png_chunk(b"tEXt", b"")
    assert codec.exif_orientation(_png(text * 100, _png_chunk(b"eXIf", _exif(6)))) == 6  # found after IDAT
    crafted = _png(text * (3 * codec._MAX_CHUNKS), _png_chunk(b"eXIf", _exif(6)))
    walked = _counting(monkeypatch, "_png_chunks")
    info = codec.probe_image(crafted)
    assert walked[0] <= codec._MAX_CHUNKS + 10  # the layout's walk (to IDAT) and the EXIF walk
    assert (info.width, info.height, info.orientation) == (8, 8, 1)


def test_png_exif_after_many_small_idat_chunks_is_still_read():
    """The bound grows with the file (one chunk per KiB), so a large PNG written in small IDAT
    chunks (more than _MAX_CHUNKS of them) keeps its eXIf at the end."""
    ok, buf = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (1200, 1500, 3), np.uint8))
    assert ok
    data = buf.tobytes()
    stream = b"".join(data[s : s + n] for t, s, n in codec._png_chunks(data) if t == b"IDAT")
    idats = [_png_chunk(b"IDAT", stream[k : k + 1024]) for k in range(0, len(stream), 1024)]
    assert len(idats) > codec._MAX_CHUNKS
    head = data[: 8 + 25]  # signature + IHDR
    rewritten = head + b"".join(idats) + _png_chunk(b"eXIf", _exif(6)) + _png_chunk(b"IEND", b"")
    info = codec.probe_image(rewritten)
    assert (info.width, info.height, info.orientation) == (1500, 1200, 6)
    assert codec.decode_image(rewritten).pixels.shape == (1500, 1200, 3)  # rotated by orientation 6


def test_webp_exif_walk_is_bounded(monkeypatch):
    vp8l = b"VP8L" + struct.pack("<I", 6) + b"\x2f\x07\xc0\x01\x00\x00"  # 8x8, no alpha
    exif = b"EXIF" + struct.pack("<I", 14 + 6) + _exif(3) + b"\0" * 6
    body = vp8l + b"JUNK\x00\x00\x00\x00" * (3 * codec._MAX_CHUNKS) + exif
    crafted = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
    walked = _counting(monkeypatch, "_webp_chunks")
    assert codec.exif_orientation(crafted) == 1  # past the bound: not read
    assert walked[0] <= codec._MAX_CHUNKS + 1


def test_jpeg_exif_walk_is_bounded():
    """The EXIF walk steps segment by segment from SOI; past MAX_JPEG_MARKERS it gives up (the
    layout walk refuses such a file anyway)."""
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(_exif(6))) + b"Exif\x00\x00" + _exif(6)
    assert codec.exif_orientation(SOI + COM * 100 + app1 + SOF + EOI) == 6
    crafted = SOI + b"\xff\xff\x00\x02" * (codec.MAX_JPEG_MARKERS + 1) + app1 + SOF + EOI
    assert codec.exif_orientation(crafted) == 1
