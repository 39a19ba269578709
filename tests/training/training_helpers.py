"""Shared helpers of the training tests: tiny generated image folders and tiny model configs (a
uniquely named module: conftest.py names collide across areas, so tests import these from here).

Images are smooth random fields (blurred noise) so there is something learnable; every network is
a few thousand parameters and every image 32x32, so a 20-step run takes about a second.
"""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.random((h, w, 3), dtype=np.float32), (0, 0), 2.0)
    lo, hi = noise.min(axis=(0, 1)), noise.max(axis=(0, 1))
    return np.round((noise - lo) / (hi - lo) * 255).astype(np.uint8)  # stretched to full contrast


def write_rgb(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def make_aligned(root: Path, n_train: int = 4, n_val: int = 2, size: int = 32, seed: int = 0) -> Path:
    """root/train and root/val with A|B pairs; B is A's colour inverse (a learnable mapping)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            a = smooth_image(rng, size, size)
            write_rgb(root / split / f"{i}.png", np.concatenate([a, 255 - a], axis=1))
    return root


def make_unaligned(root: Path, n: int = 4, size: int = 32, seed: int = 1, test: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    dirs = ("trainA", "trainB", "testA", "testB") if test else ("trainA", "trainB")
    for d in dirs:
        for i in range(n if d.startswith("train") else 2):
            img = smooth_image(rng, size, size)
            if d.endswith("B"):
                img[..., 0] = np.clip(img[..., 0].astype(int) + 80, 0, 255)  # domain B: redder
            write_rgb(root / d / f"{i}.jpg", img)
    return root


def make_photos(root: Path, n: int = 6, h: int = 40, w: int = 48, seed: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_rgb(root / "sub" / f"{i}.png", smooth_image(rng, h, w))
    return root


TINY = {
    "aligned": {
        "model": "pix2pix",
        "generator": {"arch": "unet", "ngf": 4, "depth": 3, "norm": "instance"},
        "discriminator": {"ndf": 4, "n_layers": 2},
        "data": {"mode": "aligned", "direction": "AtoB", "load_size": 34, "crop_size": 32},
    },
    "unaligned": {
        "model": "cyclegan",
        "generator": {"arch": "resnet", "ngf": 4, "n_blocks": 1},
        "discriminator": {"ndf": 4, "n_layers": 2},
        "data": {"mode": "unaligned", "load_size": 34, "crop_size": 32},
        "train": {"gan_mode": "lsgan", "pool_size": 4},
    },
    "super_resolution": {
        "generator": {"arch": "unet", "ngf": 4, "depth": 3, "norm": "none"},
        "discriminator": {"ndf": 4, "n_layers": 2},
        "data": {"mode": "super_resolution", "scale": 2, "crop_size": 16},
    },
    "colorization": {
        "generator": {"arch": "unet", "ngf": 4, "depth": 3},
        "discriminator": {"ndf": 4, "n_layers": 2},
        "data": {"mode": "colorization", "preprocess": "crop", "crop_size": 32},
    },
}
TINY_TRAIN = {
    "batch_size": 2,
    "num_workers": 0,
    "steps": 20,
    "progress": False,
    "log_every": 5,
    "sample_every": 0,
    "val_every": 0,
    "checkpoint_every": 0,
    "tensorboard": False,
}


def tiny_config(kind: str, **train_overrides):
    """A validated ExperimentConfig for `kind` (a TINY key) with train.* overrides."""
    from pixforge.training.config import config_from_dict

    raw = copy.deepcopy(TINY[kind])
    raw["train"] = {**TINY_TRAIN, **raw.get("train", {}), **train_overrides}
    return config_from_dict(raw)


def gather_model(repo: Path, name: str, task: str, indices=(1, 2, 0), scale: int = 1, **metadata) -> None:
    """repo/name/1/model.onnx: a uint8 NHWC ONNX model that permutes the colour channels (exact,
    instant; (1, 2, 0) rolls R <- G, G <- B, B <- R), with the model contract's metadata."""
    import onnx
    from onnx import TensorProto, helper

    from pixforge.contract import ModelContract

    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["n", "h", "w", 3])
    image_out = helper.make_tensor_value_info("image_out", TensorProto.UINT8, ["n", "h", "w", 3])
    idx = helper.make_tensor("idx", TensorProto.INT64, [3], list(indices))
    node = helper.make_node("Gather", ["image", "idx"], ["image_out"], axis=3)
    model = helper.make_model(
        helper.make_graph([node], name, [image], [image_out], initializer=[idx]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    contract = ModelContract(task, scale, 3, 3, size_multiple=4, tile_size=64, metadata=metadata)
    helper.set_model_props(model, contract.to_metadata())
    (repo / name / "1").mkdir(parents=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
