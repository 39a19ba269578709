"""Datasets: splits and layouts, pair geometry, SR/colourisation items, bad-file skipping, sampler."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from training_helpers import make_aligned, make_photos, make_unaligned, smooth_image, write_rgb

from pixforge.training.config import DataConfig
from pixforge.training.data import (
    BadFileWarning,
    DataError,
    EpochSampler,
    SkipTracker,
    build_datasets,
    downscale,
    load_eval_items,
    make_train_loader,
)
from pixforge.training.data.files import holdout_split, list_images
from pixforge.training.data.transforms import Geometry
from pixforge.training.image_ops import lab_output_to_rgb


def test_aligned_split_direction_and_shared_crop(tmp_path):
    root = make_aligned(tmp_path / "d", n_train=3, n_val=2)
    cfg = DataConfig(mode="aligned", direction="AtoB", load_size=40, crop_size=32)
    bundle = build_datasets(cfg, root, size_multiple=8, seed=0)
    assert len(bundle.train) == 3 and len(bundle.val) == 2
    item = bundle.train[(0, 5)]
    assert item["input"].shape == item["target"].shape == (3, 32, 32)
    # B is A's inverse: the same crop/flip on both halves keeps input + target == 0 (+- resize rounding)
    assert float((item["input"] + item["target"]).abs().mean()) < 0.02
    btoa = build_datasets(
        DataConfig(mode="aligned", direction="BtoA", load_size=40, crop_size=32),
        root,
        size_multiple=8,
        seed=0,
    )
    other = btoa.train[(0, 5)]
    assert torch.equal(other["input"], item["target"]) and torch.equal(other["target"], item["input"])


def test_augmentation_is_a_function_of_the_key(aligned_data):
    bundle = build_datasets(
        DataConfig(mode="aligned", load_size=48, crop_size=32), aligned_data, size_multiple=8, seed=3
    )
    a, b = bundle.train[(1, 0)], bundle.train[(1, 0)]
    assert torch.equal(a["input"], b["input"])
    crops = {tuple(bundle.train[(1, e)]["input"][0, 0, :4].tolist()) for e in range(6)}
    assert len(crops) > 1  # different epochs -> different crops


def test_eval_items_are_deterministic_and_whole(aligned_data):
    bundle = build_datasets(
        DataConfig(mode="aligned", load_size=48, crop_size=32), aligned_data, size_multiple=8, seed=0
    )
    first, second = load_eval_items(bundle.val), load_eval_items(bundle.val)
    assert len(first) == 2 and all(
        torch.equal(x["input"], y["input"]) for x, y in zip(first, second, strict=True)
    )


def test_unaligned_layout_and_validation(unaligned_data):
    bundle = build_datasets(
        DataConfig(mode="unaligned", load_size=34, crop_size=32), unaligned_data, size_multiple=4, seed=0
    )
    assert len(bundle.train) == 4 and len(bundle.val) == 2
    item = bundle.train[(2, 0)]
    assert item["real_a"].shape == item["real_b"].shape == (3, 32, 32)
    assert "trainA" in item["path_a"] and "trainB" in item["path_b"]
    assert any("testA" in line for line in bundle.summary)


def test_unaligned_without_test_holds_out(tmp_path):
    root = make_unaligned(tmp_path / "u", n=6, test=False)
    bundle = build_datasets(
        DataConfig(mode="unaligned", load_size=34, crop_size=32, val_holdout=2), root, size_multiple=4, seed=0
    )
    assert len(bundle.train) == 4 and len(bundle.val) == 2  # 6 files, val_holdout 2 -> 2 held out per domain


def test_unaligned_missing_folder(tmp_path):
    (tmp_path / "trainA").mkdir()
    with pytest.raises(DataError, match="trainB"):
        build_datasets(DataConfig(mode="unaligned"), tmp_path, size_multiple=4, seed=0)


def test_super_resolution_pairs(photo_data):
    cfg = DataConfig(mode="super_resolution", scale=2, crop_size=16, val_holdout=2)
    bundle = build_datasets(cfg, photo_data, size_multiple=4, seed=0)
    item = bundle.train[(0, 0)]
    assert item["input"].shape == (3, 8, 8) and item["target"].shape == (3, 16, 16)
    val = load_eval_items(bundle.val)
    assert val and all(v["target"].shape[-1] == 2 * v["input"].shape[-1] for v in val)
    assert all(v["target"].shape[-1] % 8 == 0 for v in val)  # whole image, cut to scale * size_multiple


@pytest.mark.parametrize("method", ["bicubic_aa", "cv2_cubic"])
def test_downscale_keeps_flat_images_flat(method):
    flat = np.full((24, 36, 3), 97, np.uint8)
    lr = downscale(flat, 3, method)
    assert lr.shape == (8, 12, 3) and lr.dtype == np.uint8 and np.all(lr == 97)


def test_bicubic_aa_antialiases():
    # a 1-px checkerboard has no energy below Nyquist/4: antialiasing averages it to grey
    checker = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)[:, :, None].repeat(3, 2)
    assert np.abs(downscale(checker, 4, "bicubic_aa").astype(int) - 128).max() <= 2


def test_sr_degradations_change_the_input(photo_data):
    plain = build_datasets(
        DataConfig(mode="super_resolution", scale=2, crop_size=16), photo_data, size_multiple=4, seed=0
    ).train[(0, 0)]
    noisy = build_datasets(
        DataConfig(
            mode="super_resolution",
            scale=2,
            crop_size=16,
            noise_sigma=20,
            jpeg_quality=30,
            blur_sigma=2,
            degrade_prob=1.0,
        ),
        photo_data,
        size_multiple=4,
        seed=0,
    ).train[(0, 0)]
    assert noisy["input"].shape == plain["input"].shape
    assert not torch.equal(noisy["input"], plain["input"])


def test_colorization_items_are_lab(photo_data):
    bundle = build_datasets(
        DataConfig(mode="colorization", preprocess="crop", crop_size=32), photo_data, size_multiple=8, seed=0
    )
    item = bundle.train[(0, 0)]
    assert item["input"].shape == (1, 32, 32) and item["target"].shape == (2, 32, 32)
    assert item["input"].min() >= -1.0 and item["input"].max() <= 1.0
    # recombining L and ab gives back the RGB crop
    rgb = lab_output_to_rgb(item["input"], item["target"])
    assert rgb.shape == (3, 32, 32) and 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0


def _ramp(size: int) -> np.ndarray:
    """An image whose value is its column index: a crop's value span is its width in the photo."""
    return np.repeat(np.tile(np.arange(size, dtype=np.uint8), (size, 1))[:, :, None], 3, axis=2)


def _spans(zoom: Geometry, seeds: int) -> list[int]:
    """How wide a window of a 240-pixel ramp each of `seeds` training crops was cut from."""
    img, crop = _ramp(240), zoom.crop_size
    spans = []
    for seed in range(seeds):
        (out,) = zoom.apply([img], np.random.default_rng(seed))
        assert out.shape == (crop, crop, 3)
        spans.append(int(out[0, -1, 0]) - int(out[0, 0, 0]) + 1)
    return spans


def test_zoomed_crops_see_up_to_one_over_scale_min_of_the_photo():
    crop = 64
    spans = _spans(Geometry("crop", 0, crop, False, 8, scale_min=0.5), 40)
    assert min(spans) >= crop - 2 and max(spans) <= 2 * crop + 2
    assert max(spans) > 1.5 * crop  # some crops really are zoomed out
    assert np.median(spans) < 1.6 * crop  # log-uniform: half the draws below s = 0.71


def test_zoomed_in_crops_see_down_to_one_over_scale_max_of_the_photo():
    crop = 64
    spans = _spans(Geometry("crop", 0, crop, False, 8, scale_max=4.0), 40)
    assert min(spans) >= crop / 4 - 2 and max(spans) <= crop + 2
    assert min(spans) < crop / 2  # some crops really are enlarged
    assert crop / 2 - 4 < np.median(spans) < crop / 2 + 6  # log-uniform: median s = 2


def test_zoom_range_spans_both_ways():
    crop = 64
    spans = _spans(Geometry("crop", 0, crop, False, 8, scale_min=0.5, scale_max=2.0), 60)
    assert min(spans) < crop * 0.8 and max(spans) > crop * 1.25


def test_zoom_is_training_only_and_off_by_default():
    img = _ramp(128)
    zoom = Geometry("crop", 0, 64, True, 8, scale_min=0.5)
    plain = Geometry("crop", 0, 64, True, 8)
    # evaluation: the same centre crop at native scale
    assert np.array_equal(zoom.apply([img], None)[0], plain.apply([img], None)[0])
    # scale_min 1 draws exactly what the plain crop draws (old recipes reproduce)
    one = Geometry("crop", 0, 64, True, 8, scale_min=1.0)
    a = one.apply([img], np.random.default_rng(3))[0]
    assert np.array_equal(a, plain.apply([img], np.random.default_rng(3))[0])
    # scale_max 1 too
    assert np.array_equal(
        Geometry("crop", 0, 64, True, 8, scale_max=1.0).apply([img], np.random.default_rng(3))[0], a
    )
    # a photo no larger than the crop cannot be zoomed out: native scale, never upsampled
    small = _ramp(64)
    for seed in range(4):
        got = zoom.apply([small], np.random.default_rng(seed))[0]
        assert np.array_equal(got, plain.apply([small], np.random.default_rng(seed))[0])


def test_gray_photo_has_zero_ab(tmp_path):
    gray = np.full((32, 32, 3), 120, np.uint8)
    write_rgb(tmp_path / "g" / "0.png", gray)
    write_rgb(tmp_path / "g" / "1.png", gray)
    bundle = build_datasets(
        DataConfig(mode="colorization", preprocess="none", val_holdout=0),
        tmp_path / "g",
        size_multiple=8,
        seed=0,
    )
    assert float(bundle.train[(0, 0)]["target"].abs().max()) < 1e-3


def test_split_prefers_train_and_val_folders_and_never_trains_on_test(tmp_path):
    rng = np.random.default_rng(0)
    for sub in ("a", "test/x", "val/y"):
        write_rgb(tmp_path / sub / "img.png", smooth_image(rng, 16, 16))
    (tmp_path / "README.md").write_text("not an image")
    bundle = build_datasets(
        DataConfig(mode="colorization", preprocess="none"), tmp_path, size_multiple=8, seed=0
    )
    assert len(bundle.train) == 1 and "a" in bundle.train.files[0]
    assert len(bundle.val) == 1 and "val" in bundle.val.files[0]
    assert any("ignored 1 non-image" in line for line in bundle.summary)


def test_holdout_is_stable_and_capped(tmp_path):
    files = [str(tmp_path / f"{i}.png") for i in range(50)]
    train, held = holdout_split(files, tmp_path, 16)
    assert len(held) == 10 and len(train) == 40 and not set(train) & set(held)
    train2, held2 = holdout_split(files + [str(tmp_path / "new.png")], tmp_path, 16)
    assert len(set(held) & set(held2)) >= 9  # adding a file barely moves the held-out set


def test_missing_and_empty_data(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_datasets(DataConfig(), tmp_path / "nope", size_multiple=8, seed=0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no training images"):
        build_datasets(DataConfig(), tmp_path / "empty", size_multiple=8, seed=0)


def _folder_with_bad_files(root):
    make_photos(root, n=4, h=32, w=32)
    (root / "sub" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20)
    (root / "sub" / "text.png").write_text("this is a text file with an image extension\n")
    (root / "sub" / "notes.txt").write_text("ignored: not an image extension\n")
    write_rgb(root / "sub" / "tiny.png", np.zeros((8, 8, 3), np.uint8))  # smaller than the crop
    return root


def _bad_files_bundle(root):
    """Colourisation datasets (16 px crops, no validation) over `_folder_with_bad_files`."""
    cfg = DataConfig(mode="colorization", preprocess="crop", crop_size=16, val_holdout=0)
    return build_datasets(cfg, root, size_multiple=8, seed=0)


def test_bad_files_are_skipped_counted_and_warned(tmp_path):
    root = _folder_with_bad_files(tmp_path / "bad")
    files, ignored = list_images(root)
    assert len(files) == 7 and ignored == 1
    bundle = _bad_files_bundle(root)
    sampler = EpochSampler(len(bundle.train), batch_size=1, seed=0)
    loader = make_train_loader(bundle.train, sampler, num_workers=0, pin_memory=False)
    tracker = SkipTracker()
    with pytest.warns(BadFileWarning) as record:
        for epoch in range(2):  # a full pass over every index, twice: never a crash
            sampler.set_epoch(epoch)
            batches = [b for b in loader]
            assert len(batches) == 7
            for b in batches:
                tracker.record(b["skipped"])
                assert b["input"].shape == (1, 1, 16, 16)
    assert tracker.count == 3
    assert {p.rsplit("/", 1)[-1] for p in tracker.files} == {"corrupt.jpg", "text.png", "tiny.png"}
    assert len(record) == 3  # one warning per file, not per encounter
    assert "smaller than" in next(r for p, r in tracker.files.items() if p.endswith("tiny.png"))


def test_bad_files_skipped_in_loader_workers(tmp_path):
    bundle = _bad_files_bundle(_folder_with_bad_files(tmp_path / "bad"))
    sampler = EpochSampler(len(bundle.train), batch_size=2, seed=0)
    loader = make_train_loader(bundle.train, sampler, num_workers=1, pin_memory=False)
    tracker = SkipTracker()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadFileWarning)
        for b in loader:
            tracker.record(b["skipped"])
    # One full pass meets every bad file once; its record crosses the worker boundary in a batch.
    assert tracker.count == 3
    assert {p.rsplit("/", 1)[-1] for p in tracker.files} == {"corrupt.jpg", "text.png", "tiny.png"}


def test_all_bad_files_is_a_data_error(tmp_path):
    root = tmp_path / "allbad"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(b"nope")
    bundle = build_datasets(
        DataConfig(mode="colorization", preprocess="none", val_holdout=0), root, size_multiple=8, seed=0
    )
    with pytest.raises(DataError, match="unusable"):
        bundle.train[(0, 0)]


def test_sampler_shards_resumes_and_reshuffles():
    full = EpochSampler(10, batch_size=2, seed=1)
    full.set_epoch(3)
    order = list(full)
    assert len(order) == 10 and all(e == 3 for _, e in order)
    resumed = EpochSampler(10, batch_size=2, seed=1)
    resumed.set_epoch(3, start_batch=2)
    assert list(resumed) == order[4:]
    ranks = [EpochSampler(10, batch_size=2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(3)
    idx0, idx1 = [i for i, _ in ranks[0]], [i for i, _ in ranks[1]]
    assert len(idx0) == len(idx1) == 4 and not set(idx0) & set(idx1)  # 5 per rank, 2 whole batches
    full.set_epoch(4)
    assert [i for i, _ in full] != [i for i, _ in order]


def test_cv2_decode_matches_codec_for_photos(photo_data):
    # the datasets decode through pixforge.codec: RGB order, like cv2.imread + BGR2RGB
    from pixforge.training.data.files import read_rgb

    path = next(photo_data.rglob("*.png"))
    assert np.array_equal(read_rgb(path), cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))


def test_cache_images_decodes_each_file_once(photo_data, monkeypatch):
    from pixforge.training.data import base

    cfg = DataConfig(mode="super_resolution", scale=2, crop_size=16, cache_images=True)
    bundle = build_datasets(cfg, photo_data, size_multiple=1, seed=0)
    calls = []
    real = base.read_rgb
    monkeypatch.setattr(base, "read_rgb", lambda path: calls.append(path) or real(path))
    n = len(bundle.train)
    first = [bundle.train[(i, 0)]["target"] for i in range(n)]
    second = [bundle.train[(i, 1)]["target"] for i in range(n)]
    assert len(calls) == n  # the second epoch crops from memory
    assert any(not torch.equal(a, b) for a, b in zip(first, second, strict=True))  # new crops each epoch
    uncached = build_datasets(
        DataConfig(mode="super_resolution", scale=2, crop_size=16), photo_data, size_multiple=1, seed=0
    )
    for i in range(n):
        assert torch.equal(uncached.train[(i, 1)]["target"], second[i])  # caching changes nothing else
