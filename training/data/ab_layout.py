"""Is a folder of A|B files really side-by-side pairs? One check for training and evaluation.

pix2pix-style (`aligned`) files hold the pair side by side, so a file is twice as wide as high
when its halves are square: facades, cityscapes, edges2shoes (512x256) and maps (1200x600) are all
exactly 2:1. A folder of ordinary photos (apple2orange's 256x256, a 4:3 or 3:2 camera photo, a
portrait) split down the middle trains or scores on half-photos without any error, so such a
folder is refused up front.

The criterion. Only the file's size is known, not the size of its halves, so the rule is on the
ratio: width / height within `RATIO_TOLERANCE` of 2 (1.75 to 2.25, halves within 1/8 of square).
That leaves room for an odd width or a few pixels of slack and refuses square, 4:3, 3:2 and
portrait photos (ratio 1.5 or less). It cannot tell pairs from a folder of 2:1 panoramas or 16:9
photos (1.78), and it refuses real pairs with clearly non-square halves (4:3 halves make an 8:3
file): make such halves square first.

The decision is a majority over header sizes (`pixforge.codec.probe_image`: no pixel is decoded),
at most `MAX_CHECKED` evenly spaced files per folder, so it costs milliseconds even on edges2shoes'
50k files. A folder whose files are mostly pairs is accepted; a stray misfit in it is then
skipped as a bad file when it is loaded (`is_pair_size`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pixforge.codec import probe_image
from pixforge.errors import ImageDecodeError

from .files import evenly_spaced

PAIR_RATIO = 2.0
RATIO_TOLERANCE = 0.25
MAX_CHECKED = 256  # files per folder: enough for a clear majority, cheap on any folder size
UNALIGNED_DIRS = (("trainA", "trainB"), ("testA", "testB"))


def is_pair_size(width: int, height: int) -> bool:
    """True when a `width` x `height` file can be an A|B pair (width / height about 2)."""
    return height > 0 and abs(width / height - PAIR_RATIO) <= RATIO_TOLERANCE


def pair_rule() -> str:
    """The rule in words, for messages."""
    low, high = PAIR_RATIO - RATIO_TOLERANCE, PAIR_RATIO + RATIO_TOLERANCE
    return f"width / height {low:g} to {high:g}, e.g. 512x256"


def display_size(path: str) -> tuple[int, int] | None:
    """(width, height) of an image file as decoded (EXIF rotation applied), from its header alone;
    None when the header cannot be read (the loader reports that file as bad later)."""
    try:
        with open(path, "rb") as fh:
            info = probe_image(fh.read())
    except (OSError, ImageDecodeError):
        return None
    # Orientations 5-8 turn the image by 90 degrees: the decoded image has width and height swapped.
    return (info.height, info.width) if info.orientation >= 5 else (info.width, info.height)


@dataclass(frozen=True)
class LayoutCheck:
    """The outcome of measuring a folder's files: how many were read, which are not pair-sized."""

    checked: int
    misfits: list[tuple[str, int, int]]  # (path, width, height)

    @property
    def mostly_not_pairs(self) -> bool:
        return len(self.misfits) * 2 > self.checked


def check_files(files: list[str]) -> LayoutCheck:
    """Measure up to MAX_CHECKED evenly spaced `files`; unreadable ones are left out of the count."""
    checked, misfits = 0, []
    for path in evenly_spaced(files, MAX_CHECKED):
        size = display_size(path)
        if size is None:
            continue
        checked += 1
        if not is_pair_size(*size):
            misfits.append((path, *size))
    return LayoutCheck(checked, misfits)


def common_folder(files: list[str]) -> Path:
    """The deepest folder holding every one of `files` (named in messages)."""
    return Path(os.path.commonpath([os.path.dirname(f) for f in files]))


def unaligned_folders(root: Path) -> str | None:
    """The CycleGAN folders of `root` ("trainA/ and trainB/", or testA/testB), else None."""
    for a, b in UNALIGNED_DIRS:
        if (root / a).is_dir() and (root / b).is_dir():
            return f"{a}/ and {b}/"
    return None


def layout_problem(files: list[str]) -> str | None:
    """A one-line description of what is wrong when most `files` are not A|B pairs, else None.
    Callers add what to do and raise their own error type."""
    if not files:
        return None
    found = check_files(files)
    if not found.mostly_not_pairs:
        return None
    folder = common_folder(files)
    path, width, height = found.misfits[0]
    first = os.path.relpath(path, folder)
    return (
        f"{folder}: {len(found.misfits)} of {found.checked} files checked are not side-by-side A|B "
        f"pairs ({pair_rule()}); first: {first} is {width}x{height}"
    )
