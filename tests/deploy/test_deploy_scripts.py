"""The build-time helpers the Dockerfile runs: deploy/wheel_requirements.py and deploy/check_gpu_libs.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile

import pytest
from deploy_helpers import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "deploy" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheel_requirements = _load("wheel_requirements")
check_gpu_libs = _load("check_gpu_libs")

METADATA = """Metadata-Version: 2.4
Name: pixforge
Version: 0.1.0
Requires-Dist: onnxruntime-gpu<2,>=1.20; platform_system == "Linux" and platform_machine == "x86_64"
Requires-Dist: onnxruntime<2,>=1.20; platform_system != "Linux" or platform_machine != "x86_64"
Requires-Dist: grpcio<2,>=1.85
Requires-Dist: Opencv_Python.Headless<6,>=4.9
Requires-Dist: torch<3,>=2.4; extra == "train"
Requires-Dist: pytest<10,>=8; extra == 'dev'
Provides-Extra: train

A long description: Requires-Dist: not-a-header
"""


def test_base_requirements_drop_extras_and_the_named_projects():
    lines = wheel_requirements.base_requirements(METADATA, {"onnxruntime", "ONNXRUNTIME_GPU"})
    assert lines == ["grpcio<2,>=1.85", "Opencv_Python.Headless<6,>=4.9"]


def test_base_requirements_keep_markers():
    lines = wheel_requirements.base_requirements(METADATA, {"grpcio"})
    assert lines[0].endswith('platform_system == "Linux" and platform_machine == "x86_64"')
    assert len(lines) == 3


EXTRAS_METADATA = """Metadata-Version: 2.4
Name: pixforge
Version: 0.1.0
Requires-Dist: grpcio<2,>=1.85
Provides-Extra: server
Requires-Dist: onnxruntime-gpu<2; (platform_system == "Linux" and python_version >= "3") and extra == "server"
Requires-Dist: PyYAML<7,>=6; extra == "server"
Provides-Extra: train
Requires-Dist: pixforge[server]; extra == "train"
Requires-Dist: torch<3,>=2.4; extra == 'train'
Provides-Extra: dev
Requires-Dist: pixforge[Train]; extra == "dev"
Requires-Dist: pytest<10,>=8; extra == "dev"

"""


def test_requirements_of_an_extra_lose_the_extra_clause_and_keep_their_markers():
    lines = wheel_requirements.requirements(EXTRAS_METADATA, {"server"}, {"grpcio"})
    assert lines == [
        'onnxruntime-gpu<2; platform_system == "Linux" and python_version >= "3"',
        "PyYAML<7,>=6",
    ]
    assert wheel_requirements.requirements(EXTRAS_METADATA) == ["grpcio<2,>=1.85"]


def test_an_extra_that_names_the_project_brings_that_extra():
    lines = wheel_requirements.requirements(EXTRAS_METADATA, {"dev"}, {"onnxruntime-gpu"})
    assert lines == ["grpcio<2,>=1.85", "PyYAML<7,>=6", "torch<3,>=2.4", "pytest<10,>=8"]


def test_an_unknown_extra_or_marker_is_an_error():
    with pytest.raises(ValueError, match="no extra gpu"):
        wheel_requirements.requirements(EXTRAS_METADATA, {"gpu"})
    odd_line = 'Requires-Dist: x; extra == "server" or os_name == "nt"\n'
    odd = EXTRAS_METADATA.replace("Provides-Extra: dev\n", odd_line)
    with pytest.raises(ValueError, match="cannot read the extra"):
        wheel_requirements.requirements(odd, {"server"})


def test_cli_reads_a_wheel(tmp_path):
    wheel = tmp_path / "pixforge-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pixforge-0.1.0.dist-info/METADATA", METADATA)
        zf.writestr("pixforge/__init__.py", "")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy" / "wheel_requirements.py"),
            str(wheel),
            "--drop",
            "onnxruntime",
            "--drop",
            "onnxruntime-gpu",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["grpcio<2,>=1.85", "Opencv_Python.Headless<6,>=4.9"]


def test_cli_rejects_a_non_wheel(tmp_path):
    bogus = tmp_path / "x.whl"
    bogus.write_text("not a zip")
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "wheel_requirements.py"), str(bogus)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "not a readable wheel" in result.stderr and "Traceback" not in result.stderr


def test_pyproject_dependencies_all_reach_the_cpu_image():
    """Every base and server dependency of pyproject.toml but onnxruntime(-gpu) is printed for build-cpu."""
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps, server = project["dependencies"], project["optional-dependencies"]["server"]
    lines = [f"Requires-Dist: {d}" for d in deps]
    for d in server:  # the way setuptools writes an extra's requirements into METADATA
        spec, _, env = d.partition(";")
        marker = f"({env.strip()}) and extra == 'server'" if env else "extra == 'server'"
        lines.append(f"Requires-Dist: {spec}; {marker}")
    metadata = "Metadata-Version: 2.1\nName: pixforge\nVersion: 0\nProvides-Extra: server\n"
    metadata += "\n".join(lines) + "\n"
    printed = {
        Requirement(line).name
        for line in wheel_requirements.requirements(metadata, {"server"}, {"onnxruntime", "onnxruntime-gpu"})
    }
    expected = {Requirement(d).name for d in deps + server} - {"onnxruntime", "onnxruntime-gpu"}
    assert printed == expected


def test_runtime_loaded_libraries_follow_the_cuda_major():
    assert check_gpu_libs.runtime_loaded_sonames("13.0") == [
        "libcudnn.so.9",
        "libcufft.so.12",
        "libnvrtc.so.13",
    ]
    assert check_gpu_libs.runtime_loaded_sonames("12.8") == [
        "libcudnn.so.9",
        "libcufft.so.11",
        "libnvrtc.so.12",
    ]


def test_gpu_check_reports_missing_cuda_libraries():
    """Here onnxruntime-gpu is installed without the nvidia-* packages: the check must say what is missing."""
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        pytest.skip("onnxruntime is not installed")
    if not getattr(info, "cuda_version", "") or not sys.platform.startswith("linux"):
        pytest.skip("needs the Linux onnxruntime-gpu build")
    problems = check_gpu_libs.check()
    if not problems:
        pytest.skip("this machine has every CUDA library onnxruntime needs")
    assert all("not found" in p for p in problems)
    assert not any("libcuda.so.1" in p for p in problems), "the driver library is the host's, never required"
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "check_gpu_libs.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1 and "cannot load" in result.stderr


def test_gpu_check_rejects_a_cpu_build(monkeypatch):
    import types

    fake_ort = types.ModuleType("onnxruntime")
    fake_ort.__version__ = "1.31.1"
    fake_ort.__file__ = "/nonexistent/onnxruntime/__init__.py"
    fake_capi = types.ModuleType("onnxruntime.capi")
    fake_info = types.ModuleType("onnxruntime.capi.build_and_package_info")
    fake_info.package_name, fake_info.cuda_version = "onnxruntime", ""
    fake_capi.build_and_package_info = fake_info
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_ort)
    monkeypatch.setitem(sys.modules, "onnxruntime.capi", fake_capi)
    monkeypatch.setitem(sys.modules, "onnxruntime.capi.build_and_package_info", fake_info)
    assert check_gpu_libs.check() == ["onnxruntime 1.31.1 is not a CUDA build"]
