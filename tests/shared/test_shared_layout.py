"""Project-wide rules: fresh generated stubs, the dependency direction, the CLI surface."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH_FREE = ["service", "clients", "pixforge"]


def test_generated_stubs_are_fresh():
    pytest.importorskip("grpc_tools")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "codegen.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", TORCH_FREE)
def test_serving_side_never_imports_torch_or_training(folder):
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in ("torch", "torchvision") or name.startswith("pixforge.training") or top == "training":
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, "torch-free code imports torch/training:\n" + "\n".join(offenders)


def test_top_level_folders_are_not_importable_as_bare_modules():
    # The distribution maps service/ etc. under pixforge.*; nothing named `service` is installed.
    code = (
        "import importlib.util,sys; sys.path=[p for p in sys.path if p not in ('', '.')]; "
        "print([n for n in ('service','training','clients') if importlib.util.find_spec(n)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/").stdout
    assert out.strip() == "[]"


def test_cli_help_lists_every_subcommand_and_imports_no_torch():
    code = (
        "import sys; from pixforge.cli import build_parser; build_parser().format_help(); "
        "print('torch' in sys.modules, 'grpc' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"], out.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "pixforge.cli", "--help"], capture_output=True, text=True
    ).stdout
    for sub in ("train", "export", "eval", "serve", "convert", "models", "bench", "health"):
        assert sub in help_text


@pytest.mark.parametrize("sub", ["train", "export", "serve", "convert", "models", "health", "bench", "eval"])
def test_each_subcommand_has_help(sub):
    proc = subprocess.run(
        [sys.executable, "-m", "pixforge.cli", sub, "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "usage: pixforge " + sub in proc.stdout


def test_fixed_flag_names_exist():
    from pixforge.cli import build_parser

    parser = build_parser()
    fixed = {
        "train": ["--data", "--out", "--max-steps", "--resume", "--set"],
        "export": [
            "--name",
            "--repo",
            "--version",
            "--fp16",
            "--opset",
            "--from",
            "--arch",
            "--norm",
            "--task",
        ],
        "serve": ["--models", "--port", "--config"],
        "convert": [
            "--server",
            "--model",
            "--output",
            "--recursive",
            "--glob",
            "--format",
            "--quality",
            "--concurrency",
            "--overwrite",
            "--suffix",
            "--dry-run",
        ],
    }
    sub_actions = next(a for a in parser._actions if a.dest == "command").choices
    for cmd, flags in fixed.items():
        options = {o for a in sub_actions[cmd]._actions for o in a.option_strings}
        missing = [f for f in flags if f not in options]
        assert not missing, f"{cmd} lacks {missing}"


def test_unshipped_subcommand_fails_cleanly():
    from pixforge import cli

    code = (
        "import sys; from pixforge import cli; cli.COMMANDS['bench'] = 'pixforge.no_such_module:run'; "
        "sys.exit(cli.main(['bench']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2 and "not available" in proc.stderr and "Traceback" not in proc.stderr
    assert "bench" in cli.COMMANDS
