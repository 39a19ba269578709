"""Engine suite: PyTorch eager vs torch.compile vs onnxruntime on the same generators and inputs.

For each generator (junyanz ``unet_256`` / ``resnet_9blocks`` and the architectures of our shipped
models; tiny ones with ``--quick``), image size and batch size, the variants run interleaved
(A B C A B C ...) so that every variant sees the same background load, and every ratio is the
median of the per-round ratios. Variants:

- ``eager``: the float NCHW network in inference semantics, ``torch.no_grad``.
- ``compile``: the same module through ``torch.compile`` (compile time reported separately).
- ``ort``: the same network exported to float NCHW ONNX, CPU provider with tuned session options
  (graph optimisation ALL, intra-op threads = ``--threads``, sequential execution, memory pattern).
- ``ort_uint8``: the served graph (uint8 NHWC in/out, pixel conversions inside), same options.
- ``ort_uint8_fp16`` / ``ort_uint8_int8``: the served graph's precision variants on the CPU
  provider: the exporter's ``model.fp16.onnx`` and an int8 QDQ graph from the exporter's quantiser
  (every convolution, calibrated on smooth synthetic images of the first case's size).
- ``ort_uint8_openvino``: the served graph on onnxruntime-openvino's OpenVINO provider (CPU, same
  threads), only where onnxruntime has that provider (``engine.providers: [openvino, cpu]``).
- on a usable GPU: ``eager_cuda`` (+ ``_fp16`` autocast), ``ort_cuda`` (+ the fp16 variant) and
  ``ort_trt`` (+ fp16 engines) when onnxruntime has those providers.

Goals: onnxruntime CPU >= 1.3x PyTorch eager (a case that misses it gets an operator profile of both
runtimes), and the *served* model (``ort_uint8`` in the precision the server picks on this CPU,
:func:`served_engine`) >= 1.0x ``torch.compile`` fp32 at batch 1 on every
shipped model. Each case also gets GFLOP/s (2 x the generator's multiply-accumulates per image x
images/s, :func:`.models.count_macs`) and that as a share of this CPU's practical fp32 peak (the
best of a few ``torch.matmul`` runs on square matrices, same thread count, measured once per run).
The report starts with the CPU's vector extensions (AVX2 / AVX-512 / VNNI / AMX). Cases whose
single call is estimated above ``--max-call-seconds`` are skipped and listed as such.
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .report import SuiteRecord, Table
from .stats import interleave, progress, round_ratios, summarize

GOAL_RATIO = 1.3
SERVED_GOAL_RATIO = 1.0  # served model (the precision the server picks here) vs torch.compile fp32, batch 1
CPU_ENGINES = (
    "eager",
    "compile",
    "ort",
    "ort_uint8",
    "ort_uint8_fp16",
    "ort_uint8_int8",
    "ort_uint8_openvino",
)
GPU_ENGINES = ("eager_cuda", "eager_cuda_fp16", "ort_cuda", "ort_cuda_fp16", "ort_trt", "ort_trt_fp16")
# torch.compile takes tens of seconds per shape; the precision variants take a second to make
QUICK_ENGINES = ("eager", "ort", "ort_uint8", "ort_uint8_fp16", "ort_uint8_int8")
# The served graph's CPU engine per precision variant (the server has no bf16 CPU variant to measure).
PRECISION_ENGINES = {"fp32": "ort_uint8", "fp16": "ort_uint8_fp16", "int8": "ort_uint8_int8"}
CALIBRATION_IMAGES = 2
PROFILE_TOP = 8


def cpu_session_options(threads: int):
    """The tuned CPU session options every ORT variant uses (also for the profile)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = True
    opts.enable_cpu_mem_arena = True
    opts.log_severity_level = 3
    return opts


SESSION_SETTINGS = {
    "graph_optimization_level": "ORT_ENABLE_ALL",
    "execution_mode": "ORT_SEQUENTIAL",
    "intra_op_num_threads": "--threads",
    "inter_op_num_threads": 1,
    "enable_mem_pattern": True,
    "enable_cpu_mem_arena": True,
}


def _resolve(settings) -> dict:
    from .models import FULL_MODELS, QUICK_MODELS

    quick = settings.quick
    return {
        "models": settings.models or (QUICK_MODELS[:1] if quick else FULL_MODELS),
        "sizes": settings.sizes or ([64] if quick else [256, 512]),
        "batches": settings.batches or ([1] if quick else [1, 4, 16]),
        "duration": settings.duration or (1.0 if quick else 10.0),
        "rounds": settings.rounds or (2 if quick else 4),
        "threads": settings.resolved_threads(),
        "max_call_seconds": settings.max_call_seconds,
        "peak_matrix": 2048 if quick else 4096,
        "peak_repeats": 3 if quick else 5,
    }


def matmul_peak(threads: int, n: int, repeats: int) -> dict:
    """This CPU's practical fp32 peak: the best of ``repeats`` ``torch.matmul`` runs of two n x n
    fp32 matrices (after one warm-up) on ``threads`` intra-op threads, in GFLOP/s (2 n^3 / time)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        out = torch.empty(n, n)
        torch.matmul(a, b, out=out)
        best = math.inf
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            torch.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(previous)
    return {
        "gflops": round(2 * n**3 / best / 1e9, 2),
        "matrix": n,
        "threads": threads,
        "repeats": repeats,
        "best_s": round(best, 4),
    }


def _peak_line(peak: dict) -> str:
    """``67.7 GFLOP/s: torch.matmul 2048x2048, 1 thread, best of 3``."""
    threads = f"{peak['threads']} thread{'s' if peak['threads'] != 1 else ''}"
    return (
        f"{peak['gflops']:.1f} GFLOP/s: torch.matmul {peak['matrix']}x{peak['matrix']}, {threads}, "
        f"best of {peak['repeats']}"
    )


def gflops(macs_per_image: int | None, images_per_s: float | None) -> float | None:
    """GFLOP/s of a case: 2 FLOPs per multiply-accumulate x MACs per image x images per second."""
    if not macs_per_image or not images_per_s or not math.isfinite(images_per_s):
        return None
    return round(2 * macs_per_image * images_per_s / 1e9, 3)


def served_engine(
    available: set[str] | list[str] | dict,
    order: tuple[str, ...],
    ms_per_image: dict[str, float] | None = None,
) -> tuple[str, str] | None:
    """(precision, engine) of the served graph the server would run: the first precision of
    ``order`` (:func:`pixforge.service.engine.auto_order`) whose CPU engine is ``available``.

    With ``order`` fp32-first (a CPU without VNNI/AMX) and both fp32 and int8 measured in
    ``ms_per_image`` ({engine: ms}), int8 when it ran at least
    :data:`pixforge.service.engine.MIN_INT8_SPEEDUP` faster: the speed-up an export records in the
    int8 file, which is what the server follows on such a CPU.
    """
    from pixforge.service.engine import MIN_INT8_SPEEDUP

    fp32, int8 = PRECISION_ENGINES["fp32"], PRECISION_ENGINES["int8"]
    times = ms_per_image or {}
    if order[:1] == ("fp32",) and {fp32, int8} <= set(available) and fp32 in times and int8 in times:
        if times[fp32] / times[int8] >= MIN_INT8_SPEEDUP:
            return "int8", int8
    for precision in order:
        engine = PRECISION_ENGINES.get(precision)
        if engine in available:
            return precision, engine
    return None


def served_goal(cases: list[dict], scope: str) -> dict:
    """The served-vs-compile goal over ``cases`` (``{"case": str, "ratio": float}``, batch 1 only),
    in the form of ``SuiteRecord.goals``."""
    goal = (
        f"served model (its precision variant the server picks here) >= {SERVED_GOAL_RATIO}x "
        f"torch.compile fp32, batch 1 ({scope})"
    )
    if not cases:
        return {
            "goal": goal,
            "value": None,
            "met": None,
            "detail": "no batch-1 case ran both torch.compile and the served graph "
            "(--quick leaves compile out: add --engines ...,compile)",
        }
    ratios = [c["ratio"] for c in cases]
    geo = math.exp(sum(math.log(max(r, 1e-9)) for r in ratios) / len(ratios))
    missed = [c for c in cases if not c["ratio"] >= SERVED_GOAL_RATIO]
    return {
        "goal": goal,
        "value": f"{geo:.2f}x geometric mean, {min(ratios):.2f}x-{max(ratios):.2f}x over {len(ratios)} cases",
        "met": not missed,
        "detail": "met in every case"
        if not missed
        else "missed in " + ", ".join(f"{c['case']} ({c['ratio']:.2f}x)" for c in missed),
    }


def _gpu_state() -> tuple[bool, bool, bool, str]:
    """(torch CUDA usable, ORT CUDA usable, ORT TensorRT usable, note)."""
    import torch

    from pixforge.service.engine import probe_gpu

    gpu = probe_gpu()
    return torch.cuda.is_available(), gpu.cuda, gpu.tensorrt, gpu.reason


def _openvino(threads: int = 0) -> list:
    """The OpenVINO provider entry exactly as the server builds it (``threads`` 0: every CPU the
    process may use), [] where onnxruntime has no such provider."""
    from pixforge.service.config import EngineConfig
    from pixforge.service.engine import probe_gpu, select_providers

    config = EngineConfig(providers=("openvino",), intra_op_threads=threads)
    providers, _ = select_providers(config, probe_gpu())
    return providers


def _engines(settings, torch_cuda: bool, ort_cuda: bool, ort_trt: bool) -> list[str]:
    wanted = settings.engines or list(QUICK_ENGINES if settings.quick else CPU_ENGINES) + list(GPU_ENGINES)
    unknown = [e for e in wanted if e not in CPU_ENGINES + GPU_ENGINES]
    if unknown:
        raise ValueError(
            f"--engines: unknown {', '.join(unknown)}; valid: {', '.join(CPU_ENGINES + GPU_ENGINES)}"
        )
    usable = {
        "eager_cuda": torch_cuda,
        "eager_cuda_fp16": torch_cuda,
        "ort_cuda": ort_cuda,
        "ort_cuda_fp16": ort_cuda,
        "ort_trt": ort_trt,
        "ort_trt_fp16": ort_trt,
        # onnxruntime-openvino replaces onnxruntime(-gpu): most machines lack it, so it is left out
        # without a note unless --engines asked for it.
        "ort_uint8_openvino": bool(_openvino()),
    }
    out = [e for e in wanted if usable.get(e, True)]
    if "eager" not in out:
        out.insert(0, "eager")  # every ratio is against eager
    return out


class _Model:
    """One generator with its exports and lazily built callables per variant."""

    def __init__(self, spec, workdir: Path, threads: int, need_fp16: bool):
        import torch

        from .models import build, export_float, export_served, inference_module, variant_path

        self.spec = spec
        self.threads = threads
        self.workdir = workdir
        generator = build(spec)
        self.multiple = int(generator.size_multiple)
        self.module = inference_module(generator).eval()
        self.float_path = export_float(generator, spec, workdir / f"{spec.name}.float.onnx")
        self.fp16_path: Path | None = None
        self.fp16_error = ""
        served = None
        if need_fp16:  # one export writes model.onnx and model.fp16.onnx beside it
            try:
                served = export_served(generator, spec, workdir / "repo", fp16=True)
                self.fp16_path = variant_path(served, "fp16")
            except Exception as exc:  # noqa: BLE001 - only the fp16 variant is lost; it reports why
                self.fp16_error = _first_line(exc)
        self.served_path = served or export_served(
            generator, spec, workdir / "repo", name=f"{spec.name}_fp32"
        )
        self.int8_path: Path | None = None
        self.int8_error = ""
        self.int8_calibration: int | None = None
        self._macs: dict[int, int] = {}
        self._sessions: dict[str, object] = {}
        self.compile_s: dict[str, float] = {}
        self._cuda_module = None
        self.torch = torch

    def inputs(self, size: int, batch: int) -> tuple:
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (batch, self.spec.config.in_channels, size, size)).astype(np.float32)
        u8 = rng.integers(0, 256, (batch, size, size, self.spec.served_channels), dtype=np.uint8)
        return x, u8

    def macs(self, size: int) -> int:
        """Multiply-accumulates of the generator on one size x size image (counted once per size)."""
        from .models import count_macs

        if size not in self._macs:
            self._macs[size] = count_macs(self.module, (1, self.spec.config.in_channels, size, size))
        return self._macs[size]

    def _int8(self, size: int) -> Path:
        """The int8 QDQ variant of the served graph, made on first use, calibrated at ``size``."""
        from .models import quantize_served, smooth_images

        if self.int8_path is None:
            if self.int8_error:
                raise RuntimeError(self.int8_error)
            try:
                images = smooth_images(size, self.spec.served_channels, CALIBRATION_IMAGES)
                self.int8_path = quantize_served(
                    self.served_path, self.workdir / f"{self.spec.name}.int8.onnx", images
                )
                self.int8_calibration = size
            except Exception as exc:
                self.int8_error = f"int8 quantisation failed: {_first_line(exc)}"
                raise RuntimeError(self.int8_error) from exc
        return self.int8_path

    def _session(self, key: str, path: Path, providers: list):
        import onnxruntime as ort

        if key not in self._sessions:
            self._sessions[key] = ort.InferenceSession(
                str(path), sess_options=cpu_session_options(self.threads), providers=providers
            )
        return self._sessions[key]

    def call(self, engine: str, x: np.ndarray, u8: np.ndarray) -> Callable[[], object]:
        """The no-argument call timed for ``engine`` on these inputs."""
        torch = self.torch
        if engine in ("eager", "compile"):
            xt = torch.from_numpy(x)
            module = self.module
            if engine == "compile":
                # A fresh compile per case: dynamo's recompile limit (8 per code object, shared by every
                # module of one class) would otherwise silently fall back to eager after a few shapes.
                torch._dynamo.reset()
                module = torch.compile(self.module, dynamic=False)

            def run():
                with torch.no_grad():
                    return module(xt)

            return run
        if engine.startswith("eager_cuda"):
            if self._cuda_module is None:  # a copy: .to() moves in place and eager must stay on the CPU
                self._cuda_module = copy.deepcopy(self.module).to("cuda")
            module = self._cuda_module
            amp = engine.endswith("fp16")

            def run_cuda():
                with (
                    torch.no_grad(),
                    torch.autocast("cuda", torch.float16) if amp else contextlib.nullcontext(),
                ):
                    out = module(torch.from_numpy(x).to("cuda", non_blocking=True))
                    return out.float().cpu()  # includes both copies, like the ORT variants

            return run_cuda
        if engine == "ort":
            sess = self._session("ort", self.float_path, ["CPUExecutionProvider"])
            return lambda: sess.run(None, {"input": x})
        if engine == "ort_uint8":
            sess = self._session("ort_uint8", self.served_path, ["CPUExecutionProvider"])
            return lambda: sess.run(None, {"image": u8})
        if engine == "ort_uint8_fp16":
            if self.fp16_path is None:
                raise RuntimeError(f"fp16 export failed: {self.fp16_error}")
            sess = self._session(engine, self.fp16_path, ["CPUExecutionProvider"])
            return lambda: sess.run(None, {"image": u8})
        if engine == "ort_uint8_int8":
            sess = self._session(engine, self._int8(u8.shape[1]), ["CPUExecutionProvider"])
            return lambda: sess.run(None, {"image": u8})
        if engine == "ort_uint8_openvino":
            sess = self._session(engine, self.served_path, [*_openvino(self.threads), "CPUExecutionProvider"])
            return lambda: sess.run(None, {"image": u8})
        if engine == "ort_cuda":
            sess = self._session(engine, self.served_path, ["CUDAExecutionProvider", "CPUExecutionProvider"])
            return lambda: sess.run(None, {"image": u8})
        if engine == "ort_cuda_fp16":
            if self.fp16_path is None:
                raise RuntimeError(f"fp16 export failed: {self.fp16_error}")
            sess = self._session(engine, self.fp16_path, ["CUDAExecutionProvider", "CPUExecutionProvider"])
            return lambda: sess.run(None, {"image": u8})
        if engine.startswith("ort_trt"):
            trt = {
                "trt_fp16_enable": engine.endswith("fp16"),
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(self.served_path.parent / ".trt_cache"),
            }
            sess = self._session(
                engine,
                self.served_path,
                [("TensorrtExecutionProvider", trt), "CUDAExecutionProvider", "CPUExecutionProvider"],
            )
            return lambda: sess.run(None, {"image": u8})
        raise ValueError(f"unknown engine {engine}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _estimate_probe(model: _Model, size: int) -> float:
    """Seconds of one eager batch-1 call at ``size`` (after one warm-up call)."""
    x, u8 = model.inputs(size, 1)
    fn = model.call("eager", x, u8)
    fn()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _profile(model: _Model, x: np.ndarray, u8: np.ndarray) -> dict:
    from .profiles import ort_op_profile, torch_op_profile

    ort_prof = ort_op_profile(
        model.float_path, lambda: cpu_session_options(model.threads), {"input": x}, runs=2
    )
    torch_prof = torch_op_profile(model.call("eager", x, u8), runs=2)
    return {"ort": ort_prof, "torch": torch_prof}


def _profile_table(title: str, prof: dict) -> Table:
    o, t = prof["ort"]["ops"][:PROFILE_TOP], prof["torch"]["ops"][:PROFILE_TOP]
    rows = []
    for i in range(max(len(o), len(t))):
        a = o[i] if i < len(o) else {}
        b = t[i] if i < len(t) else {}
        rows.append(
            [
                i + 1,
                a.get("op"),
                a.get("ms"),
                _pct(a.get("share")),
                b.get("op"),
                b.get("ms"),
                _pct(b.get("share")),
            ]
        )
    note = (
        f"onnxruntime run {prof['ort']['run_ms']:.1f} ms (kernels {prof['ort']['kernel_ms']:.1f} ms); "
        f"PyTorch eager run {prof['torch']['run_ms']:.1f} ms; per call, averaged over the profiled runs"
    )
    return Table(
        title, ["#", "onnxruntime op", "ms", "share", "PyTorch op (self CPU)", "ms", "share"], rows, note
    )


def _pct(share: float | None) -> str | None:
    return None if share is None else f"{share * 100:.1f} %"


def _profile_note(case: str, prof: dict) -> str:
    top_o = ", ".join(f"{r['op']} {r['share'] * 100:.0f} %" for r in prof["ort"]["ops"][:3])
    top_t = ", ".join(f"{r['op']} {r['share'] * 100:.0f} %" for r in prof["torch"]["ops"][:3])
    conv_o = sum(r["share"] for r in prof["ort"]["ops"] if "conv" in r["op"].lower())
    conv_t = sum(r["share"] for r in prof["torch"]["ops"] if "conv" in r["op"].lower())
    return (
        f"{case}: onnxruntime spends its kernel time in {top_o}; PyTorch in {top_t}. Convolutions "
        f"take {conv_o * 100:.0f} % (onnxruntime) vs {conv_t * 100:.0f} % (PyTorch) of the time: where "
        "both are convolution-bound, both runtimes run comparable CPU convolution kernels and the "
        "remaining gap comes from the ops around them (normalisation, padding, layout reorders)."
    )


def _ms_per_image(summaries: dict) -> dict[str, float]:
    """{engine: ms per image} from the case's throughput summaries (engines that ran)."""
    return {e: 1000.0 / v["images_per_s"] for e, v in summaries.items() if v.get("images_per_s")}


def _served_row(
    spec,
    size: int,
    batch: int,
    measured,
    summaries: dict,
    calls: dict,
    order: tuple[str, ...],
    shipped_only: bool,
) -> tuple[list, dict | None]:
    """One row of the served-vs-compile table, and its goal case (None for a case outside the goal:
    batch > 1, or a reference model when ``shipped_only``)."""
    served = served_engine(calls, order, _ms_per_image(summaries))
    assert served is not None and "compile" in calls
    precision, engine = served
    r = round_ratios(measured, "compile", engine)
    variants = [e for e in PRECISION_ENGINES.values() if e in calls]
    fastest = max(variants, key=lambda e: summaries[e].get("images_per_s") or 0.0)
    fastest_ratio = round_ratios(measured, "compile", fastest)["median"]
    in_goal = batch == 1 and (spec.shipped or not shipped_only)
    met = bool(r["median"] >= SERVED_GOAL_RATIO)
    row = [
        spec.name,
        size,
        batch,
        f"{engine} ({precision})",
        summaries[engine]["images_per_s"],
        summaries["compile"]["images_per_s"],
        r["median"],
        r["min"],
        r["max"],
        f"{fastest} ({fastest_ratio:.2f}x)",
        ("met" if met else "not met")
        if in_goal
        else ("– (batch > 1)" if batch > 1 else "– (reference model)"),
    ]
    case = {"model": spec.name, "case": f"{spec.name} {size}²", "ratio": r["median"]}
    return row, case if in_goal else None


def run_suite(settings) -> SuiteRecord:
    """Measure every (model, size, batch) case on every applicable engine.

    Returns:
        The suite record: the CPU and its practical peak, a throughput/latency table with GFLOP/s,
        the multiply-accumulates per model, ratio tables with the goals per case, operator profiles
        for cases that missed the onnxruntime-vs-eager goal, and a throughput plot.
    """
    import torch

    from pixforge.hardware import fast_int8
    from pixforge.service.engine import MIN_INT8_SPEEDUP, auto_order

    from .env import cpu_line
    from .models import model_specs

    cfg = _resolve(settings)
    torch.set_num_threads(cfg["threads"])
    torch_cuda, ort_cuda, ort_trt, gpu_note = _gpu_state()
    engines = _engines(settings, torch_cuda, ort_cuda, ort_trt)
    specs = model_specs(cfg["models"])
    order = auto_order(False)
    shipped_only = any(spec.shipped for spec in specs)  # the served goal is about shipped models
    progress(f"engine: fp32 matmul peak ({cfg['peak_matrix']}², {cfg['threads']} threads)")
    peak = matmul_peak(cfg["threads"], cfg["peak_matrix"], cfg["peak_repeats"])
    record = SuiteRecord(
        suite="engine",
        title="Inference engines: PyTorch eager vs torch.compile vs onnxruntime",
        description=(
            "Generators with random weights (speed does not depend on them), float NCHW input for the "
            "PyTorch and `ort` variants, uint8 NHWC for the served graph (`ort_uint8`) and its precision "
            "variants (`ort_uint8_fp16`: the exporter's fp16 file; `ort_uint8_int8`: int8 QDQ convolutions "
            "from the exporter's quantiser, calibrated on synthetic images), all on the CPU provider "
            "(`ort_uint8_openvino`, only where onnxruntime-openvino is installed: its OpenVINO provider). "
            "All variants of a case run interleaved; `x eager` is the median of the per-round throughput "
            "ratios. GFLOP/s counts 2 FLOPs per multiply-accumulate of the generator's convolutions; "
            "`% peak` divides it by this CPU's practical fp32 peak (best `torch.matmul` of two square "
            "matrices, same threads), int8 and fp16 rows included. "
            f"Goals: onnxruntime CPU >= {GOAL_RATIO}x PyTorch eager; the served model (the precision "
            f"variant the server picks on this CPU) >= {SERVED_GOAL_RATIO}x torch.compile fp32 at batch 1 "
            "on every shipped model."
        ),
        quick=settings.quick,
        settings={
            **cfg,
            "engines": engines,
            "session_options": SESSION_SETTINGS,
            "gpu_note": gpu_note,
            "peak": peak,
            "served_precision_order": list(order),
            "fast_int8": fast_int8(),
            "int8_calibration": f"{CALIBRATION_IMAGES} smooth synthetic images at each model's first size",
        },
        headline=[
            cpu_line(),
            f"int8 kernels fast here (VNNI / AMX-INT8): {'yes' if fast_int8() else 'no'}; the server's CPU "
            f"precision order: {', '.join(order)}"
            + (
                ""
                if fast_int8()
                else f" (int8 first for an int8 file measured >= {MIN_INT8_SPEEDUP}x faster)"
            ),
            f"practical fp32 peak: {_peak_line(peak)}",
        ],
    )
    record.results.append({"peak": peak})
    if not (ort_cuda or torch_cuda):
        record.notes.append(f"GPU variants not run: {gpu_note or 'no CUDA device'}")
    elif not ort_cuda:
        record.notes.append(f"onnxruntime CUDA/TensorRT variants not run: {gpu_note or 'no CUDA provider'}")
    dropped = [e for e in (settings.engines or []) if e not in engines]
    if dropped:
        record.notes.append(f"requested but not usable here: {', '.join(dropped)}")
    main_rows, ratio_rows, served_rows, skipped_rows, mac_rows = [], [], [], [], []
    served_cases: list[dict] = []
    plot_series: dict[str, dict] = {e: {"label": e, "x": [], "y": []} for e in engines}
    ratios_all: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pixforge-bench-engine-") as tmp:
        for spec in specs:
            progress(f"engine: exporting {spec.name}")
            need_fp16 = any(e in engines for e in ("ort_cuda_fp16", "ort_uint8_fp16"))
            model = _Model(spec, Path(tmp), cfg["threads"], need_fp16=need_fp16)
            sizes = [s for s in cfg["sizes"] if s % model.multiple == 0]
            for s in cfg["sizes"]:
                if s % model.multiple:
                    skipped_rows.append([spec.name, s, "-", f"size not a multiple of {model.multiple}"])
            if not sizes:
                continue
            probe = _estimate_probe(model, sizes[0])
            macs = {size: model.macs(size) for size in sizes}
            out_px = (sizes[0] * spec.scale) ** 2
            mac_rows.append(
                [
                    spec.name,
                    round(macs[sizes[0]] / out_px),
                    ", ".join(f"{s}²: {macs[s] / 1e9:.3g}" for s in sizes),
                    spec.description,
                ]
            )
            record.results.extend(
                {
                    "model": spec.name,
                    "size": s,
                    "macs_per_image": m,
                    "macs_per_output_pixel": m / (s * spec.scale) ** 2,
                }
                for s, m in macs.items()
            )
            profiled = False
            for size in sizes:
                for batch in cfg["batches"]:
                    est = probe * batch * (size / sizes[0]) ** 2
                    if est > cfg["max_call_seconds"]:
                        skipped_rows.append(
                            [
                                spec.name,
                                size,
                                batch,
                                f"estimated {est:.0f} s per call > --max-call-seconds "
                                f"{cfg['max_call_seconds']:.0f}",
                            ]
                        )
                        continue
                    case = f"{spec.name} {size}² b{batch}"
                    progress(f"engine: {case} (about {est:.2f} s per eager call)")
                    x, u8 = model.inputs(size, batch)
                    calls, errors = {}, {}
                    for e in engines:
                        try:
                            fn = model.call(e, x, u8)
                            if e == "compile":
                                t = time.perf_counter()
                                fn()
                                model.compile_s[case] = round(time.perf_counter() - t, 1)
                            calls[e] = fn
                        except Exception as exc:  # noqa: BLE001 - one variant failing must not end the suite
                            errors[e] = _first_line(exc)
                    measured = interleave(calls, duration=cfg["duration"], rounds=cfg["rounds"], warmup=1)
                    summaries = {}
                    for e in engines:
                        if e in errors:
                            main_rows.append([spec.name, size, batch, e, *[None] * 6, f"failed: {errors[e]}"])
                            continue
                        summ = summaries[e] = summarize(measured.latencies[e], batch)
                        ratio = round_ratios(measured, "eager", e)["median"] if e != "eager" else 1.0
                        rate = gflops(macs[size], summ["images_per_s"])
                        share = (
                            None
                            if rate is None or e in GPU_ENGINES
                            else round(100 * rate / peak["gflops"], 2)
                        )
                        note = f"compile {model.compile_s.get(case)} s" if e == "compile" else ""
                        main_rows.append(
                            [
                                spec.name,
                                size,
                                batch,
                                e,
                                summ["images_per_s"],
                                summ["p50_ms"],
                                summ["p99_ms"],
                                ratio,
                                rate,
                                share,
                                note,
                            ]
                        )
                        plot_series[e]["x"].append(case)
                        plot_series[e]["y"].append(summ["images_per_s"])
                        record.results.append(
                            {
                                "model": spec.name,
                                "size": size,
                                "batch": batch,
                                "engine": e,
                                **summ,
                                "ratio_vs_eager": ratio,
                                "gflops": rate,
                                "percent_of_peak": share,
                            }
                        )
                    if "compile" in calls and served_engine(calls, order):
                        row, goal_case = _served_row(
                            spec, size, batch, measured, summaries, calls, order, shipped_only
                        )
                        served_rows.append(row)
                        if goal_case:
                            served_cases.append(goal_case)
                    if "ort" in calls:
                        r = round_ratios(measured, "eager", "ort")
                        met = bool(r["median"] >= GOAL_RATIO)
                        ratios_all.append(r["median"])
                        ratio_rows.append(
                            [
                                spec.name,
                                size,
                                batch,
                                r["median"],
                                r["min"],
                                r["max"],
                                "met" if met else "not met",
                            ]
                        )
                        if not met and not profiled:
                            profiled = True  # one profile per model: the first case that missed the goal
                            progress(f"engine: profiling {case}")
                            prof = _profile(model, x, u8)
                            record.tables.append(
                                _profile_table(f"Where the time goes: {case} (missed the goal)", prof)
                            )
                            record.notes.append(_profile_note(case, prof))
                            record.results.append({"profile": case, **prof})
            if model.int8_calibration:
                record.notes.append(
                    f"{spec.name}: int8 variant calibrated on {CALIBRATION_IMAGES} synthetic images of "
                    f"{model.int8_calibration}² (MinMax, every convolution int8)"
                )
    front = [
        Table(
            "Throughput and latency per case",
            [
                "model",
                "size",
                "batch",
                "engine",
                "images/s",
                "p50 ms",
                "p99 ms",
                "x eager",
                "GFLOP/s",
                "% peak",
                "note",
            ],
            main_rows,
            "x eager: median over interleaved rounds of eager time / variant time (>1 = faster than eager); "
            "GFLOP/s: 2 x multiply-accumulates per image x images/s; % peak: of the practical fp32 peak "
            f"({_peak_line(peak)}), "
            "also for the int8 / fp16 rows; none for GPU rows",
        )
    ]
    if mac_rows:
        front.append(
            Table(
                "Multiply-accumulates per model",
                ["model", "MACs per output pixel", "GMAC per image", "generator"],
                mac_rows,
                "convolution and linear layers, counted by forward hooks (normalisation, activations and "
                "pixel conversions are not counted); an x4 model has 16 output pixels per input pixel",
            )
        )
    if ratio_rows:
        front.append(
            Table(
                f"onnxruntime CPU vs PyTorch eager (goal >= {GOAL_RATIO}x)",
                ["model", "size", "batch", "median ratio", "min round", "max round", "goal"],
                ratio_rows,
            )
        )
    if served_rows:
        front.append(
            Table(
                f"Served model vs torch.compile fp32 (goal >= {SERVED_GOAL_RATIO}x at batch 1)",
                [
                    "model",
                    "size",
                    "batch",
                    "served",
                    "served images/s",
                    "compile images/s",
                    "median ratio",
                    "min round",
                    "max round",
                    "fastest variant",
                    "goal",
                ],
                served_rows,
                "served: the uint8 graph in the precision a CPU server runs: the first of "
                f"{', '.join(order)} that ran here"
                + (
                    ""
                    if fast_int8()
                    else f", int8 when it ran >= {MIN_INT8_SPEEDUP}x faster than fp32 here (the speed-up "
                    "an export records in the int8 file, which the server follows on this CPU class)"
                )
                + "; ratio: median over interleaved rounds of compile time / served time "
                "(>1 = the served model is faster)",
            )
        )
    record.tables[:0] = front
    if skipped_rows:
        record.tables.append(Table("Skipped cases", ["model", "size", "batch", "why"], skipped_rows))
    if ratios_all:
        geo = math.exp(sum(math.log(max(r, 1e-9)) for r in ratios_all) / len(ratios_all))
        met_all = all(r >= GOAL_RATIO for r in ratios_all)
        record.goals.append(
            {
                "goal": f"onnxruntime CPU >= {GOAL_RATIO}x PyTorch eager (every case)",
                "value": f"{geo:.2f}x geometric mean, {min(ratios_all):.2f}x-{max(ratios_all):.2f}x over "
                f"{len(ratios_all)} cases",
                "met": met_all,
                "detail": "met in every case"
                if met_all
                else f"met in {sum(r >= GOAL_RATIO for r in ratios_all)} of {len(ratios_all)} cases",
            }
        )
    else:
        record.goals.append(
            {
                "goal": f"onnxruntime CPU >= {GOAL_RATIO}x PyTorch eager",
                "value": None,
                "met": None,
                "detail": "no case ran the ort variant",
            }
        )
    record.goals.append(
        served_goal(
            served_cases,
            "every shipped model" if shipped_only else "no shipped model measured: every model measured",
        )
    )
    record.add_case_bars(
        "engine_throughput.png",
        "Throughput per case and engine (higher is better)",
        list(plot_series.values()),
        logy=True,
    )
    return record
