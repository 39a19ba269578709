"""One half of every A|B pair file written as an image of its own.

Aligned sets keep a pair side by side in one file (facades: photo | label map). A single-image task
such as colourisation can train on one side of them, here by writing that side out once, so its data
folder stays what every single-image task reads: a folder of photos. Used by
`tools/train_default_models.sh` to add the facades photos to the colourisation data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pixforge.codec import encode_image

from .files import BadImageError, DataError, list_images, read_rgb

HALVES = ("A", "B")


def write_pair_halves(src: Path, out: Path, half: str) -> int:
    """Write `half` ("A" = left, "B" = right) of each image under `src` as PNG under `out`.

    Sub-folders are kept; names keep their stem (`train/1.jpg` -> `out/train/1.png`). Returns the
    number of files written.

    Raises:
        DataError: `half` is not A or B, or `src` is not a folder or holds no image.
        BadImageError: a file cannot be decoded or is too narrow to split.
    """
    if half not in HALVES:
        raise DataError(f"half must be one of {', '.join(HALVES)}, got {half!r}")
    if not src.is_dir():
        raise DataError(f"{src} is not a folder")
    files, _ = list_images(src)
    if not files:
        raise DataError(f"no images under {src}")
    for path in files:
        image = read_rgb(path)
        width = image.shape[1] // 2
        if width < 1:
            raise BadImageError(path, f"{image.shape[1]}x{image.shape[0]} cannot be split into A|B halves")
        part = image[:, :width] if half == "A" else image[:, width : 2 * width]
        dest = (out / Path(path).relative_to(src)).with_suffix(".png")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(encode_image(np.ascontiguousarray(part), "png"))
    return len(files)
