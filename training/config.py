"""Experiment configuration: frozen dataclasses per concern, built once from YAML + `--set` overrides.

One `ExperimentConfig` holds the model kind, the task and one dataclass per concern:
`GeneratorConfig` / `DiscriminatorConfig` (owned by the registry), `DataConfig` and `TrainConfig`.
Each component later receives only its own dataclass, never the whole config, so what a component
depends on is visible in its signature and tests can build just that part.

Loading is: YAML (`yaml.safe_load`) -> apply `--set a.b=value` overrides (each value parsed with
`yaml.safe_load`, never `exec`/`eval`) -> fill task-derived defaults (channels, scale, discriminator
input) -> type-check and validate. Values are converted by the shared rules of `pixforge.settings`
(the same as the server's config: booleans accept true/false, yes/no, on/off, 1/0). Every failure
is an `ExperimentConfigError` whose message starts with the dotted key that is wrong, so the CLI
can print one line and exit 2. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pixforge.contract import TASKS
from pixforge.errors import SettingsError
from pixforge.settings import build, check_choice, unknown_key

from .registry import DiscriminatorConfig, GeneratorConfig, generator_preset
from .vocab import GAN_MODES

MODELS = ("pix2pix", "cyclegan")
DATA_MODES = ("aligned", "unaligned", "super_resolution", "colorization")
# data.mode -> the task its models serve (the contract's `task` metadata).
TASK_FOR_MODE = {
    "aligned": "paired_translation",
    "unaligned": "style_translation",
    "super_resolution": "super_resolution",
    "colorization": "colorization",
}
LR_SCHEDULES = ("linear", "step", "cosine", "plateau")
AMP_MODES = ("none", "bf16", "fp16")
RECON_LOSSES = ("l1", "l2", "huber")

# Closed vocabularies checked before anything is built; the message lists the valid values.
# Generator/discriminator fields are checked by the registry's own dataclasses (one owner).
CHOICES: dict[str, tuple[str, ...]] = {
    "model": MODELS,
    "task": tuple(TASKS),
    "data.mode": DATA_MODES,
    "data.direction": ("AtoB", "BtoA"),
    "data.preprocess": ("resize_and_crop", "crop", "scale_width", "none"),
    "data.lr_resize": ("bicubic_aa", "cv2_cubic"),
    "train.gan_mode": GAN_MODES,
    "train.lr_schedule": LR_SCHEDULES,
    "train.recon_loss": RECON_LOSSES,
    "train.amp": AMP_MODES,
    "train.device": ("auto", "cpu", "cuda"),
}


class ExperimentConfigError(SettingsError):
    """A training config value is missing, unknown, of the wrong type or out of range.

    Raised as ``ExperimentConfigError(key, message)``; the message starts with the key.

    Attributes:
        key: the dotted config key at fault (e.g. "train.lr_g").
        reason: the message without the key.
    """


# The name this error had before the server's config error got its own (ServerConfigError).
ConfigError = ExperimentConfigError


@dataclass(frozen=True)
class DataConfig:
    """How training/validation images are found, decoded and augmented (see docs/training.md)."""

    mode: str = "aligned"  # aligned | unaligned | super_resolution | colorization
    direction: str = "AtoB"  # aligned: which half is the input (facades labels->photo = BtoA)
    preprocess: str = "resize_and_crop"  # resize_and_crop | crop | scale_width | none
    load_size: int = 286  # resize target before cropping (resize_and_crop, scale_width)
    crop_size: int = 256  # training crop; super_resolution: the HIGH-resolution crop
    flip: bool = True  # random horizontal flip (same flip for input and target)
    scale_min: float = 1.0  # preprocess crop: zoom training crops by s in [scale_min, scale_max]
    scale_max: float = 1.0  # (s < 1 zooms out, s > 1 zooms in; both 1: native scale)
    max_items: int = 0  # use at most this many training files (0 = all); junyanz max_dataset_size
    # --- super_resolution only: LR inputs are made on the fly from HR crops
    scale: int = 4  # 2 | 3 | 4
    lr_resize: str = "bicubic_aa"  # bicubic_aa: antialiased bicubic (MATLAB imresize-like); cv2_cubic
    rot90: bool = True  # random 90-degree rotations (standard SR augmentation)
    blur_sigma: float = 0.0  # max Gaussian blur sigma (HR pixels) applied before downscaling; 0 = off
    noise_sigma: float = 0.0  # max Gaussian noise sigma (0..255 units) added to the LR; 0 = off
    jpeg_quality: int = 0  # min JPEG quality for LR re-compression, sampled in [q, 95]; 0 = off
    degrade_prob: float = 0.5  # probability of applying each enabled degradation
    cache_images: bool = False  # decode each training image once and keep it in memory (per worker)
    # --- validation split
    val_holdout: int = 16  # when no val/test folder exists: hold out this many files (fixed subset)
    val_max_images: int = 16  # evaluate at most this many validation images (evenly spaced subset)
    val_size: int = 0  # 0 = whole validation images; N = centre-crop them to N (target pixels)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, losses, precision, logging and checkpoint cadence."""

    # --- reproducibility and hardware
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms + no cudnn.benchmark
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | bf16 | fp16 (fp16 uses a GradScaler)
    channels_last: bool = False
    cudnn_benchmark: bool = True  # CUDA only; ignored when deterministic
    # --- fine-tuning: a fresh run's generator starts from these weights (init_from.py; CycleGAN:
    # init_from is G_A, init_from_b G_B): a pixforge checkpoint, a pixforge model.onnx or a junyanz .pth
    init_from: str | None = None
    init_from_b: str | None = None
    # --- length and batches
    batch_size: int = 1  # per process (under torchrun the global batch is batch_size * world_size)
    num_workers: int = 2
    n_epochs: int = 200  # total epochs when `steps` is 0 (junyanz: 100 constant + 100 decay)
    steps: int = 0  # total optimisation steps; overrides n_epochs when > 0
    # --- optimisation (Adam; TTUR = different lr_g / lr_d)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_schedule: str = "linear"  # linear | step | cosine | plateau
    lr_decay_start: float = 0.5  # linear: fraction of training after which lr decays linearly to 0
    lr_step_size: int = 10000  # step: multiply by lr_gamma every this many steps
    lr_gamma: float = 0.1  # step: factor; plateau: factor
    lr_min: float = 0.0  # cosine: final learning rate
    lr_patience: int = 5  # plateau: validations without improvement before reducing
    lr_threshold: float = 0.01  # plateau: relative improvement that counts
    # --- losses
    gan_mode: str = "vanilla"  # vanilla | lsgan | wgangp | hinge
    lambda_gan: float = 1.0
    lambda_l1: float = 100.0  # pix2pix reconstruction weight
    # pix2pix reconstruction loss under lambda_l1: l1; l2 (MSE: the PSNR-optimal loss, for a short
    # fine-tune of an L1-trained SR model); huber (quadratic below 0.1, linear above: colourisation)
    recon_loss: str = "l1"
    lambda_cycle: float = 10.0  # CycleGAN cycle-consistency weight
    lambda_identity: float = 0.5  # CycleGAN identity weight, relative to lambda_cycle
    lambda_gp: float = 10.0  # wgangp gradient penalty weight
    lambda_feat: float = 0.0  # discriminator feature-matching weight (pix2pixHD); 0 = off
    lambda_perceptual: float = 0.0  # VGG perceptual weight; needs vgg_weights; 0 = off
    vgg_weights: str | None = None  # path to VGG19 weights (state_dict) for the perceptual loss
    conditional_d: bool = True  # pix2pix: D sees (input, output) pairs, not outputs alone
    pool_size: int = 50  # CycleGAN image pool (history of fakes shown to D); 0 = off
    # --- NoGAN-style phases (pix2pix): G-only L1 pre-training, then D-only, then adversarial
    pretrain_steps: int = 0
    pretrain_d_steps: int = 0
    # --- EMA of the generator (what checkpoints and evaluation use when on)
    ema: bool = False
    ema_decay: float = 0.999
    # --- cadence (in steps; 0 disables) and outputs
    log_every: int = 10
    sample_every: int = 500
    val_every: int = 1000
    checkpoint_every: int = 1000
    # Also snapshot when this many minutes passed since the last one (0 = off), so a killed run
    # loses at most that much work whatever the step cadence.
    checkpoint_minutes: float = 10.0
    keep_checkpoints: int = 3  # newest generator checkpoints kept per generator (0 = keep all)
    n_samples: int = 4  # fixed validation images in each sample grid
    tensorboard: bool = True  # only if torch.utils.tensorboard is importable
    progress: bool = True  # tqdm bar (rank 0)
    fid_inception_weights: str | None = None  # Inception-v3 state_dict file enables the FID metric


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a training run needs, resolved and validated."""

    model: str = "pix2pix"
    task: str = "paired_translation"
    generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(arch="unet"))
    discriminator: DiscriminatorConfig = field(
        default_factory=lambda: DiscriminatorConfig(arch="patchgan", in_channels=6)
    )
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def color_space(self) -> str:
        return "lab" if self.task == "colorization" else "rgb"


SECTIONS: dict[str, type] = {
    "generator": GeneratorConfig,
    "discriminator": DiscriminatorConfig,
    "data": DataConfig,
    "train": TrainConfig,
}
TOP_LEVEL_SCALARS = ("model", "task")


# ----------------------------------------------------------------------------- parsing


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split one `--set a.b=value` into (["a", "b"], value); the value goes through yaml.safe_load.

    Raises:
        ExperimentConfigError: no '=' or an empty key.
    """
    if "=" not in text:
        raise ExperimentConfigError(
            text or "--set", "an override must look like key=value (e.g. train.lr_g=1e-4)"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ExperimentConfigError(text, "empty key in override")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ExperimentConfigError(key, f"cannot parse value {raw!r}: {yaml_problem(exc)}") from None
    # yaml reads '1e-4' as a string (YAML 1.1 wants a dot); users mean a float.
    if isinstance(value, str):
        try:
            value = float(value) if _looks_numeric(value) else value
        except ValueError:
            pass
    return key.split("."), value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(ch.isdigit() for ch in text) and text.strip().lower() not in ("nan", "inf", "-inf", "infinity")


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of `raw` with each `key=value` override applied (nested dicts created)."""
    out = json.loads(json.dumps(raw))  # deep copy of plain YAML data
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ExperimentConfigError(".".join(path[: i + 1]), "is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return out


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found wrong, and where, in a few words: its own text repeats the context and draws
    the offending line with a caret on lines of their own, which a one-line error cannot hold."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem:
        return " ".join(str(exc).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config file into a dict (ExperimentConfigError on a missing file or bad YAML)."""
    p = Path(path)
    if not p.is_file():
        raise ExperimentConfigError("config", f"file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ExperimentConfigError("config", f"{p} is not valid YAML: {yaml_problem(exc)}") from None
    except UnicodeDecodeError as exc:  # e.g. an image passed where the config goes
        raise ExperimentConfigError(
            "config",
            f"{p} is not a YAML text file (not UTF-8: byte {exc.object[exc.start]:#04x} at {exc.start})",
        ) from None
    except OSError as exc:
        raise ExperimentConfigError("config", f"cannot read {p}: {exc.strerror or exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ExperimentConfigError(
            "config", f"{p} must hold a mapping of sections, got {type(data).__name__}"
        )
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """YAML file + `--set` overrides -> a validated ExperimentConfig.

    Raises:
        ExperimentConfigError: naming the offending key.
    """
    return config_from_dict(apply_overrides(load_yaml(path), list(overrides)))


def config_from_dict(raw: dict) -> ExperimentConfig:
    """Build and validate an ExperimentConfig from plain data (YAML/JSON), filling derived defaults."""
    raw = dict(raw)
    known = set(SECTIONS) | set(TOP_LEVEL_SCALARS)
    for key in raw:
        if key not in known:
            raise ExperimentConfigError(key, unknown_key(key, known, "top-level key"))
    for name in SECTIONS:
        if raw.get(name) is None:
            raw[name] = {}
        if not isinstance(raw[name], dict):
            raise ExperimentConfigError(name, f"must be a mapping of keys, got {raw[name]!r}")
    data = _build(DataConfig, raw["data"], "data")
    train = _build(TrainConfig, raw["train"], "train")
    task = raw.get("task") or TASK_FOR_MODE.get(data.mode)
    model = raw.get("model") or ("cyclegan" if data.mode == "unaligned" else "pix2pix")
    _check_choice("model", model)
    _check_choice("task", task)

    # Task-derived defaults: only for keys the user did not write (written values are validated).
    gen_raw = dict(raw["generator"])
    preset = gen_raw.pop("preset", None)
    if preset is not None:
        try:
            base = dataclasses.asdict(generator_preset(str(preset)))
        except ValueError as exc:
            raise ExperimentConfigError("generator.preset", str(exc)) from None
        gen_raw = {**base, **gen_raw}
    gen_raw.setdefault("in_channels", 1 if task == "colorization" else 3)
    gen_raw.setdefault("out_channels", 2 if task == "colorization" else 3)
    gen_raw.setdefault("scale", data.scale if task == "super_resolution" else 1)
    if "arch" not in gen_raw:
        gen_raw["arch"] = "resnet" if model == "cyclegan" else "unet"
    generator = _build(GeneratorConfig, gen_raw, "generator")

    dis_raw = dict(raw["discriminator"])
    dis_raw.setdefault("arch", "patchgan")
    dis_raw.setdefault("in_channels", _discriminator_channels(model, generator, train))
    discriminator = _build(DiscriminatorConfig, dis_raw, "discriminator")

    cfg = ExperimentConfig(
        model=model, task=task, generator=generator, discriminator=discriminator, data=data, train=train
    )
    validate(cfg)
    return cfg


def _discriminator_channels(model: str, g: GeneratorConfig, train: TrainConfig) -> int:
    # pix2pix's conditional D sees cat(input, output); SR inputs are upsampled to the output size first.
    if model == "pix2pix" and train.conditional_d:
        return g.in_channels + g.out_channels
    return g.out_channels


def _check_choice(key: str, value: Any) -> None:
    check_choice(key, value, CHOICES, ExperimentConfigError)


def _build(cls: type, values: dict, section: str):
    """Instantiate dataclass `cls` from `values` by the rules of pixforge.settings."""
    return build(cls, values, section=section, choices=CHOICES, error=ExperimentConfigError)


# ----------------------------------------------------------------------------- validation


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ExperimentConfigError(key, message)


# Downsamplings of the ResNet generator (networks/resnet.py N_DOWNSAMPLING), repeated here so that
# a config validates without torch; a test checks generator_size_multiple against built networks.
_RESNET_DOWNSAMPLINGS = 2


def generator_size_multiple(g: GeneratorConfig) -> int:
    """The `size_multiple` (in input pixels) of the generator `g` describes, without building it."""
    if g.arch == "edsr":  # LR-space convolutions and a sub-pixel head: any size
        return 1
    net = 2 ** (g.depth if g.arch == "unet" else _RESNET_DOWNSAMPLINGS)
    # upsample bicubic: the network runs on the input upscaled by g.scale (networks/common.py).
    return net // math.gcd(net, g.scale) if g.scale > 1 and g.upsample == "bicubic" else net


def _size_multiple_source(g: GeneratorConfig) -> str:
    """The generator keys that set its size multiple, as the crop-size message names them."""
    keys = f"generator.arch {g.arch}" + (f", generator.depth {g.depth}" if g.arch == "unet" else "")
    if g.arch != "edsr" and g.scale > 1:
        keys += f", generator.upsample {g.upsample}"
    return keys


def check_crop_multiple(cfg: ExperimentConfig, size_multiple: int) -> None:
    """Training crops must be a multiple of what the generator divides by (super-resolution: of
    that times data.scale, since the crop is the HR target). Nothing to check with preprocess none,
    which cuts each image to a fitting size.

    Args:
        size_multiple: the generator's input size multiple (generator_size_multiple, or a built
            generator's `size_multiple`).

    Raises:
        ExperimentConfigError: on data.crop_size, naming the keys behind the multiple and the
            nearest crop sizes that fit.
    """
    data = cfg.data
    scale = data.scale if cfg.task == "super_resolution" else 1
    needed = size_multiple * scale
    if data.preprocess == "none" or data.crop_size % needed == 0:
        return
    source = _size_multiple_source(cfg.generator)
    if scale > 1:
        why = f"data.scale {scale} times the generator's size multiple {size_multiple} ({source})"
    else:
        why = f"the generator's size multiple ({source})"
    below = data.crop_size // needed * needed
    fits = " or ".join(str(n) for n in (below, below + needed) if n >= 8)
    raise ExperimentConfigError(
        "data.crop_size", f"must be a multiple of {needed}, {why}; got {data.crop_size}, use e.g. {fits}"
    )


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks that need the whole config. Raises ExperimentConfigError naming the key."""
    g, d, data, t = cfg.generator, cfg.discriminator, cfg.data, cfg.train
    # --- model / task / data mode agree
    if cfg.model == "cyclegan":
        _require(
            data.mode == "unaligned", "data.mode", "model cyclegan trains on unaligned data (trainA/trainB)"
        )
    else:
        _require(data.mode != "unaligned", "data.mode", "unaligned data needs model: cyclegan")
    expected_task = TASK_FOR_MODE[data.mode]
    _require(
        cfg.task == expected_task,
        "task",
        f"data.mode {data.mode} trains a {expected_task} model; got task {cfg.task!r}",
    )
    # --- channels and scale follow the task
    want_in, want_out = (1, 2) if cfg.task == "colorization" else (3, 3)
    _require(
        g.in_channels == want_in,
        "generator.in_channels",
        f"must be {want_in} for task {cfg.task} (got {g.in_channels})",
    )
    _require(
        g.out_channels == want_out,
        "generator.out_channels",
        f"must be {want_out} for task {cfg.task} (got {g.out_channels})",
    )
    # Before the multiples below, whose message would misdirect for a crop that cannot be one.
    _require(data.crop_size >= 8, "data.crop_size", f"must be >= 8; got {data.crop_size}")
    if cfg.task == "super_resolution":
        _require(data.scale in (2, 3, 4), "data.scale", f"must be 2, 3 or 4; got {data.scale}")
        _require(
            g.scale == data.scale, "generator.scale", f"must equal data.scale ({data.scale}); got {g.scale}"
        )
        _require(
            data.crop_size % data.scale == 0,
            "data.crop_size",
            f"the HR crop must be a multiple of data.scale ({data.scale}); got {data.crop_size}",
        )
        _require(
            data.val_size % data.scale == 0,
            "data.val_size",
            f"must be a multiple of data.scale ({data.scale}); got {data.val_size}",
        )
    else:
        _require(g.scale == 1, "generator.scale", f"only super_resolution models upscale; got {g.scale}")
    want_d = _discriminator_channels(cfg.model, g, t)
    _require(
        d.in_channels == want_d,
        "discriminator.in_channels",
        f"must be {want_d} for this model (got {d.in_channels})",
    )
    # --- sizes
    for key, value in (("generator.ngf", g.ngf), ("discriminator.ndf", d.ndf)):
        _require(value >= 1, key, f"must be >= 1; got {value}")
    # Said here, before any run directory exists, not first when the data loads.
    check_crop_multiple(cfg, generator_size_multiple(g))
    # Without resizing or cropping, images of different sizes cannot share a batch (the collate
    # step would stop the run with a tensor-size traceback at the first mixed batch).
    _require(
        data.preprocess != "none" or t.batch_size == 1,
        "train.batch_size",
        f"preprocess none keeps each image's own size, so batches hold one image; got {t.batch_size}",
    )
    if data.preprocess in ("resize_and_crop", "scale_width"):
        _require(
            data.load_size >= data.crop_size,
            "data.load_size",
            f"must be >= data.crop_size ({data.crop_size}) for preprocess {data.preprocess}",
        )
    for key, value in (
        ("data.max_items", data.max_items),
        ("data.val_holdout", data.val_holdout),
        ("data.val_max_images", data.val_max_images),
        ("data.val_size", data.val_size),
        ("data.jpeg_quality", data.jpeg_quality),
    ):
        _require(value >= 0, key, f"must be >= 0; got {value}")
    _require(data.jpeg_quality <= 95, "data.jpeg_quality", f"must be <= 95; got {data.jpeg_quality}")
    _require(0 < data.scale_min <= 1, "data.scale_min", f"must be in (0, 1]; got {data.scale_min}")
    _require(data.scale_max >= 1, "data.scale_max", f"must be >= 1; got {data.scale_max}")
    for key, value in (("data.scale_min", data.scale_min), ("data.scale_max", data.scale_max)):
        _require(
            value == 1 or data.preprocess == "crop",
            key,
            f"zooms the 'crop' preprocess only; got preprocess {data.preprocess}",
        )
    _require(data.blur_sigma >= 0, "data.blur_sigma", "must be >= 0")
    _require(data.noise_sigma >= 0, "data.noise_sigma", "must be >= 0")
    _require(0.0 <= data.degrade_prob <= 1.0, "data.degrade_prob", "must be in [0, 1]")
    # --- training length and optimisation
    _require(t.batch_size >= 1, "train.batch_size", f"must be >= 1; got {t.batch_size}")
    _require(t.num_workers >= 0, "train.num_workers", f"must be >= 0; got {t.num_workers}")
    _require(t.steps >= 0, "train.steps", f"must be >= 0; got {t.steps}")
    _require(t.steps > 0 or t.n_epochs >= 1, "train.n_epochs", "must be >= 1 when train.steps is 0")
    for key in ("lr_g", "lr_d"):
        _require(getattr(t, key) > 0, f"train.{key}", f"must be > 0; got {getattr(t, key)}")
    for key in ("beta1", "beta2"):
        _require(0.0 <= getattr(t, key) < 1.0, f"train.{key}", "must be in [0, 1)")
    _require(0.0 <= t.lr_decay_start <= 1.0, "train.lr_decay_start", "must be in [0, 1]")
    _require(t.lr_step_size >= 1, "train.lr_step_size", "must be >= 1")
    _require(0.0 < t.lr_gamma < 1.0, "train.lr_gamma", "must be in (0, 1)")
    _require(0.0 <= t.lr_min < min(t.lr_g, t.lr_d), "train.lr_min", "must be >= 0 and below lr_g and lr_d")
    _require(t.lr_patience >= 0, "train.lr_patience", "must be >= 0")
    _require(t.lr_threshold >= 0, "train.lr_threshold", "must be >= 0")
    for key in (
        "lambda_gan",
        "lambda_l1",
        "lambda_cycle",
        "lambda_identity",
        "lambda_gp",
        "lambda_feat",
        "lambda_perceptual",
    ):
        _require(getattr(t, key) >= 0, f"train.{key}", f"must be >= 0; got {getattr(t, key)}")
    if t.lambda_perceptual > 0:
        _require(
            bool(t.vgg_weights),
            "train.vgg_weights",
            "the perceptual loss needs a VGG19 weights file (set train.vgg_weights or lambda_perceptual=0)",
        )
        _require(Path(str(t.vgg_weights)).is_file(), "train.vgg_weights", f"file not found: {t.vgg_weights}")
        _require(
            cfg.task != "colorization",
            "train.lambda_perceptual",
            "the VGG perceptual loss needs RGB outputs; colourisation predicts ab",
        )
    if t.fid_inception_weights:
        _require(
            Path(t.fid_inception_weights).is_file(),
            "train.fid_inception_weights",
            f"file not found: {t.fid_inception_weights}",
        )
    _require(
        not t.init_from_b or cfg.model == "cyclegan",
        "train.init_from_b",
        "is CycleGAN's G_B; pix2pix has one generator (train.init_from)",
    )
    if cfg.model == "cyclegan":
        _require(
            t.lambda_feat == 0,
            "train.lambda_feat",
            "feature matching compares paired real/fake features: pix2pix only",
        )
        _require(
            t.lambda_perceptual == 0,
            "train.lambda_perceptual",
            "the perceptual loss needs a paired target: pix2pix only",
        )
        _require(t.pretrain_steps == 0, "train.pretrain_steps", "NoGAN pre-training is for pix2pix only")
        _require(t.pretrain_d_steps == 0, "train.pretrain_d_steps", "NoGAN pre-training is for pix2pix only")
    _require(t.pretrain_steps >= 0, "train.pretrain_steps", "must be >= 0")
    _require(t.pretrain_d_steps >= 0, "train.pretrain_d_steps", "must be >= 0")
    _require(t.pool_size >= 0, "train.pool_size", "must be >= 0")
    _require(0.0 < t.ema_decay < 1.0, "train.ema_decay", "must be in (0, 1)")
    for key in (
        "log_every",
        "sample_every",
        "val_every",
        "checkpoint_every",
        "checkpoint_minutes",
        "keep_checkpoints",
        "n_samples",
    ):
        _require(getattr(t, key) >= 0, f"train.{key}", f"must be >= 0; got {getattr(t, key)}")


# ----------------------------------------------------------------------------- output


def config_to_dict(cfg: ExperimentConfig) -> dict:
    """The resolved config as JSON-able plain data (what goes into config.json and checkpoints)."""
    return dataclasses.asdict(cfg)


def save_config_json(cfg: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as pretty JSON (atomically: temp file + os.replace)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(config_to_dict(cfg), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, p)


def load_config_json(
    path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentConfig:
    """Read a run directory's config.json (plus optional overrides) back into an ExperimentConfig."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExperimentConfigError("config", f"cannot read {path}: {exc}") from None
    return config_from_dict(apply_overrides(raw, list(overrides)))
