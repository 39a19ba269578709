"""The evaluation loop shared by the reference-based tasks: rows per group, skips never fatal."""

from __future__ import annotations

import cv2
import numpy as np

from pixforge.training.metrics import MetricError
from pixforge.training.model_eval.groups import measure_groups


def _write(path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), value, np.uint8))


def test_measure_groups_rows_per_group_skips_and_leaves_out(tmp_path):
    _write(tmp_path / "a" / "1.png", 10)
    _write(tmp_path / "a" / "2.png", 20)
    _write(tmp_path / "b" / "1.png", 30)
    _write(tmp_path / "b" / "2.png", 40)  # left out by the task (None)
    _write(tmp_path / "b" / "3.png", 50, size=4)  # the task cannot score it
    (tmp_path / "b" / "4.png").write_bytes(b"not a png")  # unreadable

    def measure(image):
        if image.shape[0] < 8:
            raise MetricError("too small")
        if image[0, 0, 0] == 40:
            return None
        return {"v": float(image[0, 0, 0])}, [image]

    def make_row(name, records):
        return {"name": name, "images": len(records), "v": float(np.mean([r["v"] for r in records]))}

    found = measure_groups(tmp_path, 0, 2, measure, make_row)

    assert [(r["name"], r["images"], r["v"]) for r in found.rows] == [
        ("a", 2, 15.0),
        ("b", 1, 30.0),
        ("all", 3, 20.0),
    ]
    assert found.summary == {"images": 3, "v": 20.0}
    files = [(r["set"], r["file"]) for r in found.per_image]
    assert files == [("a", "1.png"), ("a", "2.png"), ("b", "1.png")]
    assert sorted(s["file"].rsplit("/", 1)[-1] for s in found.skipped) == ["3.png", "4.png"]
    assert found.left_out == 1
    assert found.counts(extra=1) == {"images": 3, "extra": 1, "skipped": 2}
    assert found.skipped_notes() == [
        "2 image(s) skipped (unreadable or too small; listed in results.json with --out)"
    ]
    assert found.extra() == {"skipped": found.skipped}
    # samples prefer each group's first image
    assert [int(s[0][0, 0, 0]) for s in found.samples] == [10, 30]


def test_measure_groups_single_folder_has_no_all_row(tmp_path):
    _write(tmp_path / "x.png", 7)
    found = measure_groups(tmp_path, 0, 4, lambda im: ({"v": 1.0}, [im]), lambda n, r: {"name": n})
    assert found.rows == [{"name": "all"}]
    assert found.skipped == [] and found.skipped_notes() == [] and found.extra() == {}
    assert found.left_out == 0
