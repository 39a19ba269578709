"""What `pip install pixforge[...]` gives a user: the extras, py.typed, `python -m pixforge`, and a CLI
that names a missing extra and stops quietly on a closed pipe."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import pixforge
from pixforge import cli

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
# What the engine, training and benchmarks import; the base install has none of them.
SERVER_ONLY = {
    "onnxruntime",
    "onnxruntime-gpu",
    "pyyaml",
    "prometheus-client",
    "grpcio-reflection",
    "aiohttp",
}
TRAIN_ONLY = {"torch", "onnx", "tensorboard"}
# Modules the client side may import at module level: the base install's requirements.
BASE_MODULES = {"grpc", "grpc_health", "google", "numpy", "cv2", "tqdm"}
# Import names of the server/train/bench dependencies, blocked to play a base install.
OPTIONAL_MODULES = sorted(cli.MODULE_EXTRAS)


def _names(requires: list[str], extra: str, project: str = "pixforge") -> set[str]:
    """Project names installed by `project[extra]` ('' = the base install), self-references expanded."""
    names: set[str] = set()
    todo, seen = [extra], set()
    while todo:
        current = todo.pop()
        seen.add(current)
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": current}):
                continue
            if canonicalize_name(req.name) == project:
                todo += [e for e in req.extras if e not in seen]
            else:
                names.add(canonicalize_name(req.name))
    return names


def _check_extras(requires: list[str]) -> None:
    base = _names(requires, "")
    assert base >= {"grpcio", "grpcio-health-checking", "protobuf", "numpy", "opencv-python-headless"}
    assert not base & (SERVER_ONLY | TRAIN_ONLY | {"matplotlib"}), f"the base install pulls {base}"
    server = _names(requires, "server")
    assert server & {"onnxruntime", "onnxruntime-gpu"} and {"pyyaml", "prometheus-client"} <= server
    assert not server & TRAIN_ONLY, "the server never needs torch"
    train = _names(requires, "train")
    assert {"torch", "onnx", "tensorboard", "pyyaml"} <= train and train & {"onnxruntime", "onnxruntime-gpu"}
    bench = _names(requires, "bench")
    assert {"matplotlib", "torch", "prometheus-client"} <= bench
    dev = _names(requires, "dev")
    assert server | train | bench | {"pytest", "pillow", "grpcio-tools", "ruff"} <= dev


def test_installed_distribution_extras(tmp_path):
    # From a folder outside the checkout: its (ignored, possibly stale) pixforge.egg-info must not
    # stand in for the installed distribution.
    code = "import importlib.metadata as m, json; print(json.dumps(m.requires('pixforge')))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    requires = json.loads(out)
    assert not _names(requires, "") & SERVER_ONLY, (
        "the installed metadata is from an older pyproject.toml: reinstall (make test does)"
    )
    _check_extras(requires)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (a build in the checkout would write into it)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in ("pixforge", "service", "clients", "training", "bench"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            ".",
        ],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("pixforge-*.whl")
    return built


def test_wheel_ships_py_typed_and_main_and_declares_the_extras(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = HeaderParser().parsestr(zf.read(meta).decode())
    assert {"pixforge/py.typed", "pixforge/__main__.py", "pixforge/v1/translation_pb2.pyi"} <= names
    assert {"server", "train", "bench", "dev"} <= set(metadata.get_all("Provides-Extra"))
    _check_extras(metadata.get_all("Requires-Dist"))


def test_py_typed_is_in_the_package():
    assert (Path(pixforge.__file__).parent / "py.typed").is_file()


def _module_level_imports(path: Path) -> set[str]:
    """Top-level names imported when the module loads (function bodies are lazy: left out)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                names.update(a.name.split(".")[0] for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names.add(child.module.split(".")[0])
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return names


@pytest.mark.parametrize("folder", ["clients", "pixforge"])
def test_client_side_imports_only_the_base_requirements(folder):
    stdlib = set(sys.stdlib_module_names)
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in _module_level_imports(path) - stdlib - BASE_MODULES - {"pixforge", "__future__"}:
            offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, "needs more than `pip install pixforge` at import time:\n" + "\n".join(offenders)


def _blocking(modules) -> str:
    """Python code that makes these imports fail as if their packages were not installed."""
    return f"import sys\nfor _m in {sorted(modules)!r}:\n    sys.modules[_m] = None\n"


def test_client_library_and_commands_work_without_any_extra(tmp_path):
    code = _blocking(OPTIONAL_MODULES) + (
        "import numpy as np\n"
        "from pixforge.client import Client, AsyncClient\n"
        "import pixforge.clients.convert, pixforge.clients.health, pixforge.contract\n"
        "from pixforge.codec import decode_image, encode_image\n"
        "img = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)\n"
        "assert (decode_image(encode_image(img, 'png')).pixels == img).all()\n"
        "from pixforge import cli\n"
        "sys.exit(cli.main(['health', '--server', '127.0.0.1:1', '--timeout', '0.5']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr  # 2 = not SERVING


def test_python_dash_m_pixforge():
    proc = subprocess.run([sys.executable, "-m", "pixforge", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: pixforge ") and "serve" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "pixforge", "--version"], capture_output=True, text=True)
    assert proc.stdout.strip() == f"pixforge {pixforge.__version__}"


@pytest.mark.parametrize(
    "blocked,argv,extra",
    [
        ("onnxruntime", ["models", "list", "--repo", str(MODELS)], "server"),
        ("yaml", ["serve", "--dry-run"], "server"),
        ("aiohttp", ["serve", "--dry-run"], "server"),
        ("torch", ["export", "g.pt", "--name", "n", "--repo", "r"], "train"),
        ("torch", ["train", "c.yaml", "--data", "d"], "train"),
    ],
)
def test_a_missing_extra_is_named_in_one_line(blocked, argv, extra, tmp_path):
    code = _blocking([blocked]) + "from pixforge import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"pixforge {argv[0]}: needs the {extra} extra")
    assert f"pip install 'pixforge[{extra}]'" in proc.stderr and repr(blocked) in proc.stderr


def test_missing_extra_names_the_commands_own_extra_first():
    def message(command, module):
        return cli.missing_extra(command, ModuleNotFoundError(f"No module named {module!r}", name=module))

    assert "pixforge[server]" in message("convert", "onnxruntime")  # convert --models
    assert "pixforge[train]" in message("eval", "onnxruntime")  # train brings the server extra
    assert "pixforge[bench]" in message("bench", "matplotlib")
    assert "pixforge[train]" in message("bench", "tensorboard")
    assert message("serve", "no_such_thing") is None  # not an extra's module: a real error


@pytest.mark.parametrize(
    "argv",
    [["models", "list", "--repo", str(MODELS)], ["models", "show", "facades", "--repo", str(MODELS)]],
)
def test_a_closed_stdout_pipe_ends_the_command_quietly(argv):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte, like `| head` after its last line
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pixforge", *argv], stdout=write, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 141  # 128 + SIGPIPE, what a shell reports for `yes | head`


def test_head_of_a_long_listing_has_no_traceback():
    cmd = f"{sys.executable} -m pixforge models show facades --repo {MODELS} | head -1"
    proc = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True)
    assert proc.stdout.startswith("facades version ")
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


def test_a_broken_pipe_elsewhere_is_still_an_error():
    # Only a closed stdout is a reader that went away; a pipe or socket of the command's own is a bug.
    code = (
        "import sys, types\nfrom pixforge import cli\nboom = types.ModuleType('boom')\n"
        "def run(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
        "boom.run = run\nsys.modules['boom'] = boom\ncli.COMMANDS['health'] = 'boom:run'\n"
        "sys.exit(cli.main(['health']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and "BrokenPipeError" in proc.stderr


def _make_dry_run(tmp_path, *args) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("no make")
    venv = tmp_path / "venv"  # not there: make lists every step of a fresh setup
    proc = subprocess.run(
        ["make", "-n", f"VENV={venv}", *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [line.strip() for line in proc.stdout.splitlines() if " pip " in line and " install " in line]


def test_make_serve_installs_the_server_extra_and_no_torch(tmp_path):
    installs = _make_dry_run(tmp_path, "serve")
    assert len(installs) == 1 and installs[0].endswith('install -e ".[server]"'), installs


def test_make_test_takes_the_torch_index_as_a_variable(tmp_path):
    torch_line, dev_line = _make_dry_run(tmp_path, "test")
    assert torch_line.endswith('install "torch==2.13.0"'), torch_line  # this machine: pip's own config
    assert dev_line.endswith('install -e ".[dev]"'), dev_line
    cpu = "https://download.pytorch.org/whl/cpu"
    torch_line, _ = _make_dry_run(tmp_path, "test", f"TORCH_INDEX={cpu}")
    assert torch_line.endswith(f'install "torch==2.13.0" --index-url "{cpu}"'), torch_line
