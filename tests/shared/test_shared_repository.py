"""The repository layout: which folders are versions (ASCII decimal names only)."""

from __future__ import annotations

import pytest

from pixforge.repository import MODEL_FILE, scan_repository, version_number


def test_version_folders_are_plain_ascii_decimals():
    assert [version_number(n) for n in ("1", "7", "120")] == [1, 7, 120]
    # "01" would be a second folder for version 1; the others are not decimal numbers in ASCII
    # ("¹" made int() raise inside the scan, "３" was read as version 3).
    for name in ("0", "01", "¹", "３", "٣", " 2", "2 ", "+2", "-2", "2.0", "v2", ""):
        assert version_number(name) is None, repr(name)


@pytest.mark.parametrize("odd", ["¹", "３", "01", " 2", "0"])
def test_scan_skips_folders_that_are_not_versions(tmp_path, odd):
    for name in ("1", odd):
        (tmp_path / "m" / name).mkdir(parents=True)
        (tmp_path / "m" / name / MODEL_FILE).write_bytes(b"onnx")
    assert [(e.name, e.version) for e in scan_repository(tmp_path)] == [("m", 1)]
