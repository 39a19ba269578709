"""What a benchmark ran on: machine, library versions, providers, threads and machine load.

Every suite stores :func:`environment` in its JSON next to its figures, so a number is never
separated from the CPU, the library versions and the thread settings that produced it. Nothing here
needs torch: it is reported when it is importable (the serving suites run without it).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from pixforge.hardware import cpu_flags

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS")
PACKAGES = (
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "grpcio",
    "protobuf",
    "numpy",
    "opencv-python-headless",
    "matplotlib",
    "pixforge",
)


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# How the extensions of pixforge.hardware.REPORTED_FLAGS are printed.
FLAG_NAMES = {
    "avx2": "AVX2",
    "avx_vnni": "AVX-VNNI",
    "avx512f": "AVX-512F",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}


def flag_summary(flags: list[str]) -> str:
    """``cpu_flags()`` for people: the extensions present, then the families that are missing
    ("AVX2; no AVX-512, no VNNI, no AMX")."""
    present = [FLAG_NAMES.get(f, f) for f in flags]
    missing = [
        name
        for name, members in (
            ("AVX2", ("avx2",)),
            ("AVX-512", ("avx512f",)),
            ("VNNI", ("avx_vnni", "avx512_vnni")),
            ("AMX", ("amx_tile",)),
        )
        if not any(m in flags for m in members)
    ]
    text = ", ".join(present) or "none of AVX2 / AVX-512 / VNNI / AMX"
    if present and missing:
        text += "; " + ", ".join(f"no {m}" for m in missing)
    return text


def cpu_line() -> str:
    """``CPU: <model>, <extensions>``: the line every engine report starts with."""
    return f"CPU: {cpu_model()}, {flag_summary(cpu_flags())}"


def memory_gib() -> float | None:
    """Total RAM in GiB (``/proc/meminfo``), None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpus() -> list[dict]:
    """GPUs seen by ``nvidia-smi`` (name, memory, driver); empty without a driver."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append({"name": parts[0], "memory_mib": parts[1], "driver": parts[2]})
    return rows


def versions() -> dict[str, str]:
    """Installed versions of the packages whose speed we measure (absent ones left out)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def load_average() -> list[float]:
    """1/5/15-minute load averages (other processes competing for the CPUs show up here)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_seconds() -> dict:
    """CPU seconds used so far by the whole machine (/proc/stat, busy time) and by this process
    with its reaped children (the servers and workers a suite starts); None where unknown.

    The difference between the two over a suite is the CPU time *other* processes took: the
    figure that says whether the machine was quiet (a load average cannot: it counts the bench).
    """
    own = os.times()
    out = {"own": own.user + own.system + own.children_user + own.children_system, "machine": None}
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        out["machine"] = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return out


def foreign_cpu_fraction(start: dict, end: dict, seconds: float, cpus: int) -> float | None:
    """Share of the machine's CPU capacity that processes outside the bench used between two
    `cpu_seconds()` readings (0 = quiet; 1 = every CPU busy with something else)."""
    if start.get("machine") is None or end.get("machine") is None or seconds <= 0:
        return None
    foreign = (end["machine"] - start["machine"]) - (end["own"] - start["own"])
    return round(max(0.0, foreign) / (seconds * max(cpus, 1)), 3)


def torch_threads() -> dict:
    """torch's intra/inter-op thread counts, only if torch is already imported (no import here)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    return {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads()}


def providers() -> dict:
    """onnxruntime's compiled-in providers and which GPU ones can really run here."""
    import onnxruntime as ort

    from pixforge.service.engine import probe_gpu

    gpu = probe_gpu()
    return {
        "available": ort.get_available_providers(),
        "cuda_usable": gpu.cuda,
        "tensorrt_usable": gpu.tensorrt,
        "gpu_note": gpu.reason,
    }


def environment() -> dict:
    """The whole record stored in every suite's JSON."""
    from pixforge.service.config import available_cpus

    return {
        "machine": {
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "logical_cpus": os.cpu_count(),
            "cpus_available": available_cpus(),
            "memory_gib": memory_gib(),
            "gpus": gpus(),
            "os": f"{platform.system()} {platform.release()}",
        },
        "versions": versions(),
        "providers": providers(),
        "threads": {
            **{k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
            **torch_threads(),
        },
    }
