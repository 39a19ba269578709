"""What the CPU can do fast: the vector extensions that decide which precision runs quickest.

Torch-free; read by the server (which precision variant to run) and by the benchmarks (printed
next to every figure). Linux reads ``/proc/cpuinfo``; elsewhere nothing is known and every
function answers conservatively (no extension).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

# The extensions that change kernel speed, in the order benchmarks print them.
REPORTED_FLAGS = (
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
# An int8 convolution is clearly faster than fp32 when the CPU multiplies int8 pairs into int32
# in one instruction (VNNI, or AMX tiles). On plain AVX2 onnxruntime's u8s8 kernels need three
# instructions per step and can saturate int16 sums; measured on an AVX2-only CPU, sr-x4's int8
# variant was within noise of fp32 (docs/serving.md, "Precision variants"), so fp32 stays first.
INT8_FLAGS = ("avx_vnni", "avx512_vnni", "amx_int8")


@lru_cache(maxsize=1)
def _all_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_flags() -> list[str]:
    """The speed-relevant vector extensions this CPU has (a subset of :data:`REPORTED_FLAGS`)."""
    flags = _all_flags()
    return [f for f in REPORTED_FLAGS if f in flags]


def fast_int8() -> bool:
    """Whether int8 kernels beat fp32 on this CPU (it has VNNI or AMX-INT8)."""
    return any(f in _all_flags() for f in INT8_FLAGS)


def int8_cpu_class() -> str:
    """The class of int8 kernels this CPU gets: "vnni" (VNNI or AMX-INT8) or "no-vnni".

    An int8 variant's measured speed-up over fp32 (metadata ``int8_speedup``) is recorded under the
    exporting machine's class and only trusted by servers of the same class.
    """
    return "vnni" if fast_int8() else "no-vnni"
