"""`aligned` (A|B) training data must be side-by-side pairs: a photo folder is refused up front.

Split down the middle, a square photo makes two half-photos that train without any error; the
dataset refuses a folder whose files are mostly not ~2:1 (DataError, `pixforge train` exit 2) and
skips a stray misfit in a folder of pairs as a bad file.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from training_helpers import (
    TINY,
    TINY_TRAIN,
    make_aligned,
    make_photos,
    make_unaligned,
    smooth_image,
    write_rgb,
)

from pixforge.cli import main
from pixforge.training.config import DataConfig
from pixforge.training.data import DataError, build_datasets


def _aligned_cfg() -> DataConfig:
    return DataConfig(mode="aligned", direction="AtoB", load_size=40, crop_size=32, val_holdout=0)


def _refusal(root) -> str:
    with pytest.raises(DataError) as info:
        build_datasets(_aligned_cfg(), root, size_multiple=8, seed=0)
    return str(info.value)


def test_cyclegan_folder_is_refused_with_the_unaligned_hint(tmp_path):
    root = make_unaligned(tmp_path / "a2o")  # 32x32 photos in trainA/ trainB/ testA/ testB/
    message = _refusal(root)
    assert "\n" not in message
    assert message.startswith(f"{root}: 12 of 12 files checked are not side-by-side A|B pairs")
    assert "is 32x32" in message
    assert "trainA/ and trainB/" in message and "data.mode: unaligned" in message


def test_photo_folder_is_refused_without_the_unaligned_hint(tmp_path):
    root = make_photos(tmp_path / "photos", n=6, h=40, w=48)
    message = _refusal(root)
    assert "6 of 6 files checked are not side-by-side A|B pairs" in message and "is 48x40" in message
    assert "unaligned" not in message and "point --data at" in message


def test_pairs_near_two_to_one_are_accepted_and_a_stray_photo_is_skipped(tmp_path):
    root = tmp_path / "pairs"
    rng = np.random.default_rng(0)
    for i in range(4):
        a = smooth_image(rng, 32, 32)
        write_rgb(root / f"{i}.png", np.concatenate([a, 255 - a], axis=1))  # 64x32, exactly 2:1
    write_rgb(root / "odd.png", smooth_image(rng, 32, 66))  # 66x32: a few pixels of slack
    write_rgb(root / "stray.png", smooth_image(rng, 32, 32))  # a photo among pairs
    bundle = build_datasets(_aligned_cfg(), root, size_multiple=8, seed=0)
    items = [bundle.train[(i, 0)] for i in range(len(bundle.train))]
    skipped = {line for item in items for line in item["skipped"].split("\n") if line}
    reason = "32x32 is not a side-by-side A|B pair (width / height 1.75 to 2.25, e.g. 512x256)"
    assert skipped == {f"{root / 'stray.png'}\t{reason}"}
    assert {item["path"] for item in items} == {
        str(root / n) for n in ("0.png", "1.png", "2.png", "3.png", "odd.png")
    }


def test_a_separate_val_folder_of_photos_is_refused(tmp_path):
    root = make_aligned(tmp_path / "data", n_train=4, n_val=0)
    make_photos(root / "val", n=3)
    assert f"{root / 'val' / 'sub'}: 3 of 3 files checked" in _refusal(root)


def test_pixforge_train_on_a_cyclegan_folder_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_unaligned(tmp_path / "a2o")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY["aligned"], "train": TINY_TRAIN}))
    assert main(["train", "tiny.yaml", "--data", "a2o", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pixforge train: error: a2o: ") and len(err.strip().splitlines()) == 1, err
    assert "not side-by-side A|B pairs" in err and "data.mode: unaligned" in err


def test_pair_size_rule_and_header_sizes(tmp_path):
    from pixforge.training.data.ab_layout import check_files, display_size, is_pair_size

    for width, height in ((512, 256), (1200, 600), (513, 256), (560, 256)):  # facades, maps, slack
        assert is_pair_size(width, height), (width, height)
    for width, height in ((256, 256), (481, 321), (321, 481), (640, 480), (1024, 256)):
        assert not is_pair_size(width, height), (width, height)
    write_rgb(tmp_path / "p.png", np.zeros((10, 20, 3), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert display_size(str(tmp_path / "p.png")) == (20, 10)
    assert display_size(str(tmp_path / "bad.png")) is None
    found = check_files([str(tmp_path / "p.png"), str(tmp_path / "bad.png")])
    assert (found.checked, found.misfits, found.mostly_not_pairs) == (1, [], False)


def test_header_size_follows_exif_rotation(tmp_path):
    from PIL import Image

    from pixforge.training.data.ab_layout import display_size

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the decoded image is 32 wide, 64 high
    Image.new("RGB", (64, 32)).save(tmp_path / "r.jpg", exif=exif)
    assert display_size(str(tmp_path / "r.jpg")) == (32, 64)
