"""pixforge.settings: one typed-settings engine behind the server, training and registry configs.

The rules (booleans, numbers, lists, nested sections, did-you-mean) must be the same wherever a
config is read, so the same value means the same thing in `pixforge serve` and `pixforge train`.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import pytest

from pixforge.errors import PixforgeError, SettingsError
from pixforge.settings import FALSE_WORDS, TRUE_WORDS, build, coerce, parse_bool

yaml = pytest.importorskip("yaml")  # both real configs read YAML (the server extra)

from pixforge.service.config import build_config  # noqa: E402
from pixforge.service.errors import ServerConfigError  # noqa: E402
from pixforge.training.config import ExperimentConfigError, config_from_dict  # noqa: E402

BOOLEAN_WORDS = [
    (True, True),
    (False, False),
    ("true", True),
    ("False", False),
    ("yes", True),
    ("NO", False),
    ("on", True),
    ("Off", False),
    ("1", True),
    ("0", False),
    (1, True),
    (0, False),
    (" yes ", True),
]
NOT_BOOLEANS = ["maybe", "", "2", 2, 0.5, None, [True]]


def _service_bool(value):
    return build_config({"engine.fp16": value}).engine.fp16


def _training_bool(value):
    return config_from_dict({"train": {"ema": value}}).train.ema


@pytest.mark.parametrize(("value", "expected"), BOOLEAN_WORDS)
def test_one_boolean_rule_for_server_and_training(value, expected):
    assert parse_bool(value) is expected
    assert _service_bool(value) is expected
    assert _training_bool(value) is expected


@pytest.mark.parametrize("value", NOT_BOOLEANS)
def test_non_booleans_are_refused_by_both_configs(value):
    with pytest.raises(ValueError):
        parse_bool(value)
    with pytest.raises(ServerConfigError, match=r"engine\.fp16.*true or false"):
        _service_bool(value)
    with pytest.raises(ExperimentConfigError, match=r"^train\.ema: must be true or false"):
        _training_bool(value)


def test_boolean_words_are_documented_for_both_configs():
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    for name in ("serving.md", "training.md"):
        text = (docs / name).read_text(encoding="utf-8")
        assert all(word in text for word in ("yes", "no", "on", "off")), name
    assert set(TRUE_WORDS) == {"true", "yes", "on", "1"}
    assert set(FALSE_WORDS) == {"false", "no", "off", "0"}


def test_unknown_keys_suggest_the_closest_valid_key():
    with pytest.raises(ServerConfigError, match=r"did you mean 'batching\.max_batch_size'"):
        build_config({"batching.max_bach_size": 4})
    with pytest.raises(ExperimentConfigError, match="did you mean 'lr_g'") as info:
        config_from_dict({"train": {"lr_gg": 1}})
    assert info.value.key == "train.lr_gg"
    with pytest.raises(ExperimentConfigError, match="did you mean 'train'"):
        config_from_dict({"trian": {}})
    with pytest.raises(SettingsError, match="did you mean 'ngf'"):
        from pixforge.training.registry import GeneratorConfig

        GeneratorConfig.from_dict({"arch": "unet", "ngff": 8})


def test_numbers_are_checked_the_same_way_by_both_configs():
    assert build_config({"batching.max_batch_size": "16"}).batching.max_batch_size == 16
    assert config_from_dict({"train": {"batch_size": "4"}}).train.batch_size == 4
    assert config_from_dict({"train": {"batch_size": 4.0}}).train.batch_size == 4
    for bad in (1.5, "two", True):
        with pytest.raises(ServerConfigError, match="must be an integer"):
            build_config({"batching.max_batch_size": bad})
        with pytest.raises(ExperimentConfigError, match="must be an integer"):
            config_from_dict({"train": {"batch_size": bad}})
    for bad in ("nan", float("inf"), False):
        with pytest.raises(ServerConfigError, match="finite number"):
            build_config({"poll_seconds": bad})
        with pytest.raises(ExperimentConfigError, match="finite number"):
            config_from_dict({"train": {"lr_g": bad}})


# ----------------------------------------------------------------------------- the engine itself


@dataclass(frozen=True)
class Inner:
    size: int = 1
    ratio: float = 0.5
    on: bool = False


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    tags: tuple[str, ...] = ()
    pair: tuple[int, int] = (0, 0)
    sizes: list[int] = field(default_factory=list)
    pins: Mapping[str, int] = field(default_factory=dict)
    limit: int | None = None
    mode: Literal["fast", "exact"] = "fast"

    def __post_init__(self) -> None:
        if self.name == "bad":
            raise ValueError("name must not be 'bad'")


def test_build_converts_every_field_type():
    cfg = build(
        Outer,
        {
            "name": 7,
            "inner": {"size": "3", "ratio": 1, "on": "yes"},
            "tags": "a, b,,c",
            "pair": ["1", 2.0],
            "sizes": [1, "2"],
            "pins": "sr=2, col=3",
            "limit": None,
            "mode": "exact",
        },
    )
    assert cfg == Outer(
        name="7",
        inner=Inner(size=3, ratio=1.0, on=True),
        tags=("a", "b", "c"),
        pair=(1, 2),
        sizes=[1, 2],
        pins={"sr": 2, "col": 3},
        limit=None,
        mode="exact",
    )
    assert build(Outer, {"name": "x", "limit": "5"}).limit == 5
    assert build(Outer, {"name": None}).name == ""  # null reads as the empty string
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({}, "name", "is required"),
        ({"name": "x", "inner": {"size": "big"}}, "inner.size", "must be an integer"),
        ({"name": "x", "inner": {"sise": 2}}, "inner.sise", "did you mean 'size'"),
        ({"name": "x", "inner": 3}, "inner", "mapping"),
        ({"name": "x", "pair": [1, 2, 3]}, "pair", "2 values"),
        ({"name": "x", "pins": "sr"}, "pins", "name=value"),
        ({"name": "x", "mode": "slow"}, "mode", "one of fast, exact"),
        ({"name": "x", "limit": "lots"}, "limit", "must be an integer"),
        ({"name": ["x"]}, "name", "must be a string"),
        ({"name": "bad"}, "name", "must not be 'bad'"),  # the dataclass's own check, keyed by field
    ],
)
def test_build_errors_start_with_the_dotted_key(data, key, fragment):
    with pytest.raises(SettingsError) as info:
        build(Outer, data, section="")
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert fragment in info.value.reason


def test_section_prefix_choices_and_error_class():
    class MyError(SettingsError):
        pass

    with pytest.raises(MyError) as info:
        build(Inner, {"size": 2, "on": "nope"}, section="outer.inner", error=MyError)
    assert info.value.key == "outer.inner.on"
    with pytest.raises(MyError, match=r"^outer\.inner\.size: must be one of 1, 2; got 3$"):
        build(Inner, {"size": 3}, section="outer.inner", choices={"outer.inner.size": (1, 2)}, error=MyError)
    assert coerce("4", int, "k") == 4
    with pytest.raises(SettingsError, match="^k: must be an integer"):
        coerce("four", int, "k")


def test_settings_errors_are_pixforge_value_errors():
    assert issubclass(SettingsError, PixforgeError) and issubclass(SettingsError, ValueError)
    assert issubclass(ExperimentConfigError, SettingsError)
    assert issubclass(ServerConfigError, PixforgeError)


def test_training_config_does_not_import_torch():
    code = "import sys; import pixforge.training.config; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr
