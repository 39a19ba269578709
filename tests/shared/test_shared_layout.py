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


# The import rule (docs/architecture.md, "Folders and import names"): a folder installed under
# another name (service/ -> pixforge.service, ...) imports its own modules relatively, so grep, IDEs
# and ruff follow them by file location; anything in another folder is imported absolutely
# (`pixforge.codec`, `pixforge.service.config`). pixforge/ itself, whose path is its import name,
# imports absolutely throughout.
MAPPED_FOLDERS = {folder: f"pixforge.{folder}" for folder in ("service", "clients", "training", "bench")}
GENERATED = ("pixforge/v1/", "pixforge/kserve/")


def _import_style_offenders(folder: str) -> list[str]:
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(GENERATED):
            continue
        # The deepest relative import that stays inside the folder: 1 for service/x.py, 2 below.
        max_level = len(path.relative_to(ROOT / folder).parts)
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.ImportFrom) and node.level:
                if folder == "pixforge":
                    offenders.append(f"{rel}:{node.lineno}: relative import in pixforge/ (use pixforge.x)")
                elif node.level > max_level:
                    offenders.append(
                        f"{rel}:{node.lineno}: relative import leaves {folder}/ (use pixforge.x)"
                    )
                continue
            if folder == "pixforge":
                continue
            own = MAPPED_FOLDERS[folder]
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name == own or name.startswith(own + "."):
                    offenders.append(f"{rel}:{node.lineno}: absolute {name} inside {folder}/ (use from .)")
    return offenders


@pytest.mark.parametrize("folder", [*MAPPED_FOLDERS, "pixforge"])
def test_one_import_style_per_folder(folder):
    offenders = _import_style_offenders(folder)
    assert not offenders, "imports against the rule in docs/architecture.md:\n" + "\n".join(offenders)
