"""Config loading: presets validate, --set parsing, errors name the key, JSON round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pixforge.training.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    load_config_json,
    parse_override,
    save_config_json,
)

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
PRESETS = ["facades", "super_resolution_x4", "colorization", "style_translation"]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_validates(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    expected = {
        "facades": ("pix2pix", "paired_translation"),
        "super_resolution_x4": ("pix2pix", "super_resolution"),
        "colorization": ("pix2pix", "colorization"),
        "style_translation": ("cyclegan", "style_translation"),
    }
    assert (cfg.model, cfg.task) == expected[name]


def test_facades_preset_is_labels_to_photo():
    assert load_config(CONFIGS / "facades.yaml").data.direction == "BtoA"


def test_task_defaults_fill_channels_and_scale():
    col = config_from_dict({"data": {"mode": "colorization"}})
    assert (col.generator.in_channels, col.generator.out_channels, col.discriminator.in_channels) == (1, 2, 3)
    # depth 5: the default U-Net (depth 8) on the x3 bicubic input needs crops in multiples of 768
    sr = config_from_dict(
        {"generator": {"depth": 5}, "data": {"mode": "super_resolution", "scale": 3, "crop_size": 96}}
    )
    assert sr.generator.scale == 3 and sr.discriminator.in_channels == 6
    cyc = config_from_dict({"data": {"mode": "unaligned"}})
    assert cyc.model == "cyclegan" and cyc.generator.arch == "resnet" and cyc.discriminator.in_channels == 3


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("train.lr_g=1e-4", ["train", "lr_g"], 1e-4),
        ("train.lr_g=0.001", ["train", "lr_g"], 0.001),
        ("train.batch_size=8", ["train", "batch_size"], 8),
        ("train.ema=true", ["train", "ema"], True),
        ("data.direction=BtoA", ["data", "direction"], "BtoA"),
        ("train.vgg_weights=", ["train", "vgg_weights"], None),
        ("a.b.c=[1, 2]", ["a", "b", "c"], [1, 2]),
        ("generator.norm='none'", ["generator", "norm"], "none"),
    ],
)
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


def test_override_is_yaml_not_code():
    # a Python expression stays a plain string: nothing is evaluated
    _, value = parse_override("train.vgg_weights=__import__('os').getcwd()")
    assert value == "__import__('os').getcwd()"


@pytest.mark.parametrize("text", ["train.lr_g", "=3", "train..lr=1"])
def test_bad_override_syntax(text):
    with pytest.raises(ConfigError):
        parse_override(text)


def test_overrides_apply_nested_and_leave_input_alone():
    raw = {"train": {"lr_g": 1.0}}
    out = apply_overrides(raw, ["train.lr_g=2", "data.crop_size=64"])
    assert out == {"train": {"lr_g": 2}, "data": {"crop_size": 64}} and raw == {"train": {"lr_g": 1.0}}


def test_load_config_applies_set(tmp_path):
    cfg = load_config(CONFIGS / "facades.yaml", ["train.lr_d=4e-4", "generator.ngf=8"])
    assert cfg.train.lr_d == 4e-4 and cfg.generator.ngf == 8


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"trian": {}}, "trian"),
        ({"train": {"lr_gg": 1}}, "train.lr_gg"),
        ({"train": {"batch_size": "two"}}, "train.batch_size"),
        ({"train": {"batch_size": 1.5}}, "train.batch_size"),
        ({"train": {"ema": "maybe"}}, "train.ema"),  # yes/no/on/off/1/0 are booleans (pixforge.settings)
        ({"train": {"gan_mode": "wgan"}}, "train.gan_mode"),
        ({"train": {"lr_schedule": "exp"}}, "train.lr_schedule"),
        ({"train": {"amp": "fp8"}}, "train.amp"),
        ({"train": {"lr_g": -1}}, "train.lr_g"),
        ({"train": {"beta1": 1.0}}, "train.beta1"),
        ({"generator": {"norm": "group"}}, "generator.norm"),
        ({"generator": {"ngf": 0}}, "generator.ngf"),
        ({"generator": {"preset": "unet_1024"}}, "generator.preset"),
        ({"discriminator": {"arch": "stylegan"}}, "discriminator.arch"),
        ({"data": {"mode": "paired"}}, "data.mode"),
        ({"data": {"crop_size": 256, "load_size": 128}}, "data.load_size"),
        ({"data": {"preprocess": "none"}, "train": {"batch_size": 2}}, "train.batch_size"),
        ({"data": {"preprocess": "crop", "scale_min": 0}}, "data.scale_min"),
        ({"data": {"preprocess": "crop", "scale_min": 1.5}}, "data.scale_min"),
        ({"data": {"preprocess": "resize_and_crop", "scale_min": 0.5}}, "data.scale_min"),
        ({"data": {"preprocess": "crop", "scale_max": 0.5}}, "data.scale_max"),
        ({"data": {"preprocess": "resize_and_crop", "scale_max": 2.0}}, "data.scale_max"),
        ({"data": {"mode": "super_resolution", "scale": 4, "crop_size": 66}}, "data.crop_size"),
        ({"data": {"mode": "super_resolution", "scale": 5, "crop_size": 100}}, "data.scale"),
        ({"data": {"mode": "colorization"}, "generator": {"in_channels": 3}}, "generator.in_channels"),
        ({"data": {"mode": "aligned"}, "model": "cyclegan"}, "data.mode"),
        ({"data": {"mode": "aligned"}, "task": "colorization"}, "task"),
        ({"data": {"mode": "aligned"}, "generator": {"scale": 2}}, "generator.scale"),
        ({"train": {"lambda_perceptual": 1.0}}, "train.vgg_weights"),
        ({"data": {"mode": "unaligned"}, "train": {"pretrain_steps": 10}}, "train.pretrain_steps"),
        ({"train": {"fid_inception_weights": "/no/such/file.pth"}}, "train.fid_inception_weights"),
        ({"discriminator": {"in_channels": 3}}, "discriminator.in_channels"),
    ],
)
def test_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}:")


U3 = {"arch": "unet", "depth": 3}  # a U-Net that divides by 8


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"generator": U3, "data": {"crop_size": 36, "load_size": 40}},
            "data.crop_size: must be a multiple of 8, the generator's size multiple (generator.arch "
            "unet, generator.depth 3); got 36, use e.g. 32 or 40",
        ),
        (
            {"data": {"mode": "unaligned", "crop_size": 30, "load_size": 32}},
            "data.crop_size: must be a multiple of 4, the generator's size multiple (generator.arch "
            "resnet); got 30, use e.g. 28 or 32",
        ),
        (  # bicubic: the net runs on the x2 input, so the LR input divides by 4 and the HR crop by 8
            {"generator": U3, "data": {"mode": "super_resolution", "scale": 2, "crop_size": 20}},
            "data.crop_size: must be a multiple of 8, data.scale 2 times the generator's size multiple "
            "4 (generator.arch unet, generator.depth 3, generator.upsample bicubic); got 20, use e.g. "
            "16 or 24",
        ),
        (
            {
                "generator": {**U3, "upsample": "pixelshuffle"},
                "data": {"mode": "super_resolution", "scale": 2, "crop_size": 24},
            },
            "must be a multiple of 16, data.scale 2 times the generator's size multiple 8",
        ),
    ],
)
def test_crop_size_must_fit_the_generator(raw, message):
    # Said by the config (before any run directory exists), not first when the data loads.
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert info.value.key == "data.crop_size" and message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_crop_size_below_8_is_said_before_any_multiple():
    # "must be a multiple of data.scale (4); got -3" sent users to -4, which fails next.
    with pytest.raises(ConfigError, match=r"^data.crop_size: must be >= 8; got -3$"):
        config_from_dict({"data": {"mode": "super_resolution", "scale": 4, "crop_size": -3}})


@pytest.mark.parametrize(
    "raw",
    [
        {"generator": U3, "data": {"crop_size": 40, "load_size": 48}},
        {"generator": U3, "data": {"preprocess": "none", "crop_size": 36}},  # cut to fit per image
        {"generator": {"arch": "edsr"}, "data": {"mode": "super_resolution", "scale": 3, "crop_size": 33}},
        {"generator": U3, "data": {"mode": "super_resolution", "scale": 3, "crop_size": 24}},
    ],
)
def test_crop_sizes_that_fit_still_load(raw):
    assert config_from_dict(raw).data.crop_size == raw["data"]["crop_size"]


@pytest.mark.parametrize(
    "generator",
    [
        {"arch": "unet", "depth": 3},
        {"arch": "unet", "depth": 5, "scale": 2},
        {"arch": "unet", "depth": 4, "scale": 3},
        {"arch": "unet", "depth": 4, "scale": 4, "upsample": "pixelshuffle"},
        {"arch": "resnet", "n_blocks": 1},
        {"arch": "resnet", "n_blocks": 1, "scale": 2},
        {"arch": "resnet", "n_blocks": 1, "scale": 3, "upsample": "pixelshuffle"},
        {"arch": "edsr", "n_blocks": 1},
        {"arch": "edsr", "n_blocks": 1, "scale": 4},
    ],
)
def test_generator_size_multiple_is_the_built_networks(generator):
    # The config computes it without torch; the networks are what training divides by.
    from pixforge.training.config import generator_size_multiple
    from pixforge.training.registry import GeneratorConfig, build_generator

    g = GeneratorConfig(**{"ngf": 4, **generator})
    assert generator_size_multiple(g) == build_generator(g).size_multiple


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean 'lr_g'"):
        config_from_dict({"train": {"lr_gg": 1}})


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    # PyYAML's problem and where, without its context lines and caret drawing
    with pytest.raises(
        ConfigError,
        match=r"not valid YAML: expected ',' or '\]', but got '<stream end>' at line 2, column 1$",
    ):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_resolved_config_json_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "style_translation.yaml", ["train.seed=7"])
    save_config_json(cfg, tmp_path / "config.json")
    again = load_config_json(tmp_path / "config.json")
    assert again == cfg
    assert config_to_dict(again)["train"]["seed"] == 7


def test_config_is_frozen():
    cfg = config_from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr_g = 1.0  # type: ignore[misc]


def test_docs_describe_every_data_and_train_key():
    # docs that nothing checks drift: every config key has a row in docs/training.md
    from pixforge.training.config import DataConfig, TrainConfig

    doc = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text(encoding="utf-8")
    missing = [
        f.name
        for cls in (DataConfig, TrainConfig)
        for f in dataclasses.fields(cls)
        if f"`{f.name}`" not in doc
    ]
    assert not missing, f"docs/training.md lacks: {missing}"
