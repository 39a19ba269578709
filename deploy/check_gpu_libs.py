"""Fail the GPU image build when onnxruntime's CUDA provider could not find its libraries.

The onnxruntime-gpu wheel links its CUDA provider against the CUDA runtime, cuBLAS, cuRAND (and
loads cuDNN, cuFFT and NVRTC at run time) but looks for them only next to itself (RUNPATH
``$ORIGIN``). In the image they come from the ``nvidia-*`` pip packages of
``onnxruntime-gpu[cuda,cudnn]``, registered with the dynamic loader through
/etc/ld.so.conf.d. If that ever breaks (a new wheel layout, a renamed folder), the server would
start, log "CUDA libraries missing" and quietly serve on the CPU; this check turns it into a
build error instead.

Only ``libcuda.so.1`` may be missing: it belongs to the host's driver and the NVIDIA Container
Toolkit mounts it into the container at run time.

Usage: python check_gpu_libs.py   (exit 0 = every library resolves, 1 = some are missing)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

DRIVER_LIBRARIES = {"libcuda.so.1"}  # provided by the host driver at run time
_LDD_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)
_LDCONFIG_ENTRY = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)\s*$", re.MULTILINE)


def runtime_loaded_sonames(cuda_version: str) -> list[str]:
    """Libraries the CUDA provider dlopens when a session starts (not in its ELF NEEDED list).

    Args:
        cuda_version: the CUDA version onnxruntime was built with, e.g. "13.0".
    """
    major = int(cuda_version.split(".")[0])
    cufft_major = 12 if major >= 13 else 11  # cuFFT's soname runs one behind CUDA's since 12.x
    return ["libcudnn.so.9", f"libcufft.so.{cufft_major}", f"libnvrtc.so.{major}"]


def missing_in_ldd(library: Path) -> list[str]:
    """Sonames that ``ldd`` cannot resolve for ``library`` (driver libraries excluded)."""
    out = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=False).stdout
    return [name for name in _LDD_NOT_FOUND.findall(out) if name not in DRIVER_LIBRARIES]


def find_library(soname: str) -> Path | None:
    """Where the dynamic loader would find ``soname``: LD_LIBRARY_PATH first, then the ld.so cache."""
    for folder in filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":")):
        if (Path(folder) / soname).exists():
            return Path(folder) / soname
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        cache = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    for name, _flags, path in _LDCONFIG_ENTRY.findall(cache):
        if name == soname:
            return Path(path)
    return None


def check() -> list[str]:
    """Every problem found, as human-readable lines (empty when the CUDA provider can load)."""
    try:
        import onnxruntime
        from onnxruntime.capi import build_and_package_info as info
    except ImportError as exc:
        return [f"onnxruntime is not importable: {exc}"]
    cuda_version = getattr(info, "cuda_version", "")
    if not cuda_version:
        return [
            f"{getattr(info, 'package_name', 'onnxruntime')} {onnxruntime.__version__} is not a CUDA build"
        ]
    provider = Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not provider.is_file():
        return [f"{provider} does not exist"]
    problems = [f"{provider.name} needs {name}: not found" for name in missing_in_ldd(provider)]
    for soname in runtime_loaded_sonames(cuda_version):
        path = find_library(soname)
        if path is None:
            problems.append(f"{soname} (loaded at session start): not found")
            continue
        problems += [f"{soname} ({path}) needs {name}: not found" for name in missing_in_ldd(path)]
    return problems


def main() -> int:
    problems = check()
    if problems:
        print("onnxruntime CUDA provider cannot load:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("onnxruntime CUDA provider: every CUDA/cuDNN library resolves (libcuda.so.1: the host driver's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
