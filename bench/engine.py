"""Engine suite: PyTorch eager vs torch.compile vs onnxruntime on the same generators and inputs.

For each generator (junyanz ``unet_256`` / ``resnet_9blocks`` and our shipped configs; tiny ones
with ``--quick``), image size and batch size, the variants run interleaved (A B C A B C ...) so
that every variant sees the same background load, and the onnxruntime/eager ratio is the median
of the per-round ratios. Variants:

- ``eager``: the float NCHW network in inference semantics, ``torch.no_grad``.
- ``compile``: the same module through ``torch.compile`` (compile time reported separately).
- ``ort``: the same network exported to float NCHW ONNX, CPU provider with tuned session options
  (graph optimisation ALL, intra-op threads = ``--threads``, sequential execution, memory pattern).
- ``ort_uint8``: the served graph (uint8 NHWC in/out, pixel conversions inside), same options.
- on a usable GPU: ``eager_cuda`` (+ ``_fp16`` autocast), ``ort_cuda`` (+ the fp16 export) and
  ``ort_trt`` (+ fp16 engines) when onnxruntime has those providers.

The goal is onnxruntime CPU >= 1.3x PyTorch eager; a case that misses it gets an operator profile
of both runtimes (which kernels take the time). Cases whose single call is estimated above
``--max-call-seconds`` are skipped and listed as such.
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .report import SuiteRecord, Table
from .stats import interleave, progress, round_ratios, summarize

GOAL_RATIO = 1.3
CPU_ENGINES = ("eager", "compile", "ort", "ort_uint8")
GPU_ENGINES = ("eager_cuda", "eager_cuda_fp16", "ort_cuda", "ort_cuda_fp16", "ort_trt", "ort_trt_fp16")
QUICK_ENGINES = ("eager", "ort", "ort_uint8")  # torch.compile takes tens of seconds per shape
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
        "rounds": 2 if quick else 4,
        "threads": settings.resolved_threads(),
        "max_call_seconds": settings.max_call_seconds,
    }


def _gpu_state() -> tuple[bool, bool, bool, str]:
    """(torch CUDA usable, ORT CUDA usable, ORT TensorRT usable, note)."""
    import torch

    from pixforge.service.engine import probe_gpu

    gpu = probe_gpu()
    return torch.cuda.is_available(), gpu.cuda, gpu.tensorrt, gpu.reason


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
    }
    out = [e for e in wanted if usable.get(e, True)]
    if "eager" not in out:
        out.insert(0, "eager")  # every ratio is against eager
    return out


class _Model:
    """One generator with its exports and lazily built callables per variant."""

    def __init__(self, spec, workdir: Path, threads: int, need_fp16: bool):
        import torch

        from .models import build, export_float, export_served, inference_module

        self.spec = spec
        self.threads = threads
        generator = build(spec)
        self.multiple = int(generator.size_multiple)
        self.module = inference_module(generator).eval()
        self.float_path = export_float(generator, spec, workdir / f"{spec.name}.float.onnx")
        self.served_path = export_served(generator, spec, workdir / "repo")
        self.fp16_path, self.fp16_error = None, ""
        if need_fp16:
            try:
                self.fp16_path = export_served(
                    generator, spec, workdir / "repo", name=f"{spec.name}_fp16", fp16=True
                )
            except Exception as exc:  # noqa: BLE001 - only the fp16 variant is lost; it reports why
                self.fp16_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self._sessions: dict[str, object] = {}
        self.compile_s: dict[str, float] = {}
        self._cuda_module = None
        self.torch = torch

    def inputs(self, size: int, batch: int) -> tuple:
        rng = np.random.default_rng(0)
        c = self.spec.config.in_channels
        x = rng.uniform(-1, 1, (batch, c, size, size)).astype(np.float32)
        u8 = rng.integers(0, 256, (batch, size, size, c), dtype=np.uint8)
        return x, u8

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


def _estimate_probe(model: _Model, size: int) -> float:
    """Seconds of one eager batch-1 call at ``size`` (after one warm-up call)."""
    import time

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


def run_suite(settings) -> SuiteRecord:
    """Measure every (model, size, batch) case on every applicable engine.

    Returns:
        The suite record: a throughput/latency table, a ratio table with the goal per case,
        operator profiles for cases that missed the goal, and a throughput plot.
    """
    import torch

    from .models import model_specs

    cfg = _resolve(settings)
    torch.set_num_threads(cfg["threads"])
    torch_cuda, ort_cuda, ort_trt, gpu_note = _gpu_state()
    engines = _engines(settings, torch_cuda, ort_cuda, ort_trt)
    specs = model_specs(cfg["models"])
    record = SuiteRecord(
        suite="engine",
        title="Inference engines: PyTorch eager vs torch.compile vs onnxruntime",
        description=(
            "Generators with random weights (speed does not depend on them), float NCHW input for the "
            "PyTorch and `ort` variants, uint8 NHWC for the served graph (`ort_uint8`). All variants of a "
            "case run interleaved; `x eager` is the median of the per-round throughput ratios. "
            f"Goal: onnxruntime CPU >= {GOAL_RATIO}x PyTorch eager."
        ),
        quick=settings.quick,
        settings={**cfg, "engines": engines, "session_options": SESSION_SETTINGS, "gpu_note": gpu_note},
    )
    if not (ort_cuda or torch_cuda):
        record.notes.append(f"GPU variants not run: {gpu_note or 'no CUDA device'}")
    elif not ort_cuda:
        record.notes.append(f"onnxruntime CUDA/TensorRT variants not run: {gpu_note or 'no CUDA provider'}")
    dropped = [e for e in (settings.engines or []) if e not in engines]
    if dropped:
        record.notes.append(f"requested but not usable here: {', '.join(dropped)}")
    main_rows, ratio_rows, skipped_rows = [], [], []
    plot_series: dict[str, dict] = {e: {"label": e, "x": [], "y": []} for e in engines}
    ratios_all: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pixforge-bench-engine-") as tmp:
        for spec in specs:
            progress(f"engine: exporting {spec.name}")
            model = _Model(spec, Path(tmp), cfg["threads"], need_fp16="ort_cuda_fp16" in engines)
            sizes = [s for s in cfg["sizes"] if s % model.multiple == 0]
            for s in cfg["sizes"]:
                if s % model.multiple:
                    skipped_rows.append([spec.name, s, "-", f"size not a multiple of {model.multiple}"])
            if not sizes:
                continue
            probe = _estimate_probe(model, sizes[0])
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
                                import time

                                t = time.perf_counter()
                                fn()
                                model.compile_s[case] = round(time.perf_counter() - t, 1)
                            calls[e] = fn
                        except Exception as exc:  # noqa: BLE001 - one variant failing must not end the suite
                            errors[e] = (
                                str(exc).strip().splitlines()[0][:160]
                                if str(exc).strip()
                                else type(exc).__name__
                            )
                    measured = interleave(calls, duration=cfg["duration"], rounds=cfg["rounds"], warmup=1)
                    for e in engines:
                        if e in errors:
                            main_rows.append(
                                [spec.name, size, batch, e, None, None, None, None, f"failed: {errors[e]}"]
                            )
                            continue
                        summ = summarize(measured.latencies[e], batch)
                        ratio = round_ratios(measured, "eager", e)["median"] if e != "eager" else 1.0
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
                            }
                        )
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
    record.tables.insert(
        0,
        Table(
            "Throughput and latency per case",
            ["model", "size", "batch", "engine", "images/s", "p50 ms", "p99 ms", "x eager", "note"],
            main_rows,
            "x eager: median over interleaved rounds of eager time / variant time (>1 = faster than eager)",
        ),
    )
    if ratio_rows:
        record.tables.insert(
            1,
            Table(
                f"onnxruntime CPU vs PyTorch eager (goal >= {GOAL_RATIO}x)",
                ["model", "size", "batch", "median ratio", "min round", "max round", "goal"],
                ratio_rows,
            ),
        )
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
    record.add_case_bars(
        "engine_throughput.png",
        "Throughput per case and engine (higher is better)",
        list(plot_series.values()),
        logy=True,
    )
    return record
