"""`pixforge bench` flag parsing: Settings.from_args and the exit codes of bad flags."""

from __future__ import annotations

import argparse

import pytest

from pixforge.bench import Settings
from pixforge.cli import build_parser, main


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


def test_settings_parse_lists_and_numbers(tmp_path):
    s = Settings.from_args(
        _args(
            "engine",
            "--out",
            str(tmp_path),
            "--sizes",
            "256, 512",
            "--batches",
            "1,4",
            "--concurrency",
            "1,2,8",
            "--models",
            "unet_256,facades",
            "--threads",
            "2",
            "--duration",
            "0.5",
            "--steps",
            "3",
            "--max-call-seconds",
            "7",
            "--rounds",
            "12",
            "--quick",
        )
    )
    assert s.out == tmp_path
    assert s.sizes == [256, 512] and s.batches == [1, 4] and s.concurrency == [1, 2, 8]
    assert s.models == ["unet_256", "facades"] and s.engines is None
    assert (s.threads, s.duration, s.steps, s.max_call_seconds, s.quick) == (2, 0.5, 3, 7.0, True)
    assert s.resolved_threads() == 2
    assert s.rounds == 12


def test_rounds_reach_the_suites(tmp_path):
    from pixforge.bench.engine import _resolve
    from pixforge.bench.serving import resolve

    default = Settings.from_args(_args("engine", "--out", str(tmp_path)))
    assert default.rounds is None
    assert (_resolve(default)["rounds"], resolve(default, full_model="x")["rounds"]) == (4, 3)
    more = Settings.from_args(_args("engine", "--out", str(tmp_path), "--rounds", "20"))
    assert (_resolve(more)["rounds"], resolve(more, full_model="x")["rounds"]) == (20, 20)


def test_settings_defaults(tmp_path):
    s = Settings.from_args(_args("all", "--out", str(tmp_path)))
    assert (s.sizes, s.batches, s.models, s.threads, s.max_call_seconds, s.quick) == (
        None,
        None,
        None,
        None,
        30.0,
        False,
    )
    from pixforge.service.config import available_cpus

    assert s.resolved_threads() == available_cpus()
    quick = Settings.from_args(_args("all", "--quick", "--out", str(tmp_path)))
    assert quick.resolved_threads() == 1  # smoke runs default to one thread per library


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--sizes", "256,abc"], "--sizes"),
        (["--batches", "0"], "--batches"),
        (["--concurrency", "-1"], "--concurrency"),
        (["--threads", "0"], "--threads"),
        (["--duration", "0"], "--duration"),
        (["--steps", "0"], "--steps"),
        (["--max-call-seconds", "-2"], "--max-call-seconds"),
        (["--rounds", "0"], "--rounds"),
        (["--tag", "../x"], "--tag"),
        (["--duration", "nan"], "--duration"),
        (["--max-call-seconds", "inf"], "--max-call-seconds"),
        (["--out", __file__], "--out"),  # an existing file
        (["--image", "no/such.png"], "--image"),
        (["--repo", "no/such/repo"], "--repo"),
    ],
)
def test_settings_reject_bad_values_naming_the_flag(argv, flag):
    # before any measurement: an existing file as --out or a missing --image / --repo used to
    # surface only after the suite ran (or minutes into it)
    with pytest.raises(ValueError, match=flag):
        Settings.from_args(_args("engine", *argv))


def test_cli_bad_flag_and_unknown_suite_exit_2(tmp_path, capsys):
    assert main(["bench", "nosuch", "--out", str(tmp_path)]) == 2
    assert "unknown suite 'nosuch'" in capsys.readouterr().err
    assert main(["bench", "engine", "--out", str(tmp_path), "--sizes", "x"]) == 2
    assert "--sizes" in capsys.readouterr().err
    assert not (tmp_path / "benchmarks.md").exists()


def test_cli_unknown_model_exits_2_with_the_valid_names(tmp_path, capsys):
    assert (
        main(["bench", "engine", "--quick", "--out", str(tmp_path), "--models", "nosuch", "--threads", "1"])
        == 2
    )
    err = capsys.readouterr().err
    assert "nosuch" in err and "unet_256" in err
