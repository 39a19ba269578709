"""onnxruntime session wrapper: one :class:`Engine` per model version (no torch, no gRPC).

It picks the execution provider (TensorRT opt-in -> CUDA -> OpenVINO opt-in -> CPU, filtered by
what actually works on this machine), sets the session options a server wants, validates the model
contract, warms the session up, and runs uint8 NHWC batches. Provider failures are probed *before*
asking onnxruntime for them, so a CPU-only machine logs one clear line instead of onnxruntime's
multi-line "failed to load libcublasLt" errors.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pixforge.contract import (
    INPUT_NAME,
    KEY_INT8_SPEEDUP,
    KEY_NORM_CHANNELS,
    NORM_MODE_INPUT,
    NORM_STATS_INPUT,
    NORM_SUMS_OUTPUT,
    OUTPUT_NAME,
    TILE_CORE_INPUT,
    ModelContract,
    contract_from_session,
    parse_speedups,
    read_metadata,
)
from pixforge.errors import ContractError
from pixforge.hardware import fast_int8, int8_cpu_class
from pixforge.repository import PRECISIONS, variant_file, variant_files

from .config import EngineConfig, available_cpus
from .errors import InferenceError, OutOfMemoryError

log = logging.getLogger("pixforge.service.engine")

# Warnings such as "some nodes were not assigned to the preferred execution providers" are noise
# for a server that chose its providers on purpose; errors still show.
ort.set_default_logger_severity(3)

ORT_PROVIDER = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# OpenVINO (device_type CPU) is deliberately not here: it runs on the CPU, takes host memory
# inputs (no IO binding) and wants the CPU precision order.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# Precision variants in the order `engine.precision: auto` tries them, fastest first. On CPU fp16
# comes last: onnxruntime's CPU provider has few fp16 kernels, so an fp16 graph runs as fp32 with
# casts around most nodes and is measurably slower than the fp32 file. int8 comes first where the
# CPU has VNNI or AMX-INT8 (pixforge.hardware.fast_int8); on plain AVX2 whether it wins depends on
# the model (docs/serving.md, "Precision variants"), so there it comes first only for an int8 file
# whose export measured it faster (MIN_INT8_SPEEDUP). On GPU, fp16 (tensor cores) comes first.
AUTO_ORDER = {
    "cpu_int8": ("int8", "fp32", "bf16", "fp16"),
    "cpu": ("fp32", "int8", "bf16", "fp16"),
    "gpu": ("fp16", "bf16", "fp32", "int8"),
}


def auto_order(on_gpu: bool, files: dict[str, Path] | None = None) -> tuple[str, ...]:
    """The precisions `engine.precision: auto` tries, fastest first, on this machine.

    On a CPU without VNNI/AMX, int8 comes first for a version whose int8 file records a speed-up of
    at least :data:`MIN_INT8_SPEEDUP` measured on such a CPU (``files``: :func:`model_files`).
    """
    if on_gpu:
        return AUTO_ORDER["gpu"]
    if fast_int8():
        return AUTO_ORDER["cpu_int8"]
    if files and "int8" in files and recorded_int8_speedup(files["int8"]) >= MIN_INT8_SPEEDUP:
        return AUTO_ORDER["cpu_int8"]
    return AUTO_ORDER["cpu"]


# Substrings of onnxruntime/CUDA error messages that mean "out of device memory".
_OOM_MARKERS = (
    "out of memory",
    "failed to allocate memory",
    "cudaerrormemoryallocation",
    "cuda failure 2:",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "std::bad_alloc",
    "available memory of",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an onnxruntime exception reports an allocation failure (GPU or host)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(marker in text for marker in _OOM_MARKERS)


# --------------------------------------------------------------------------- provider probing


@dataclass(frozen=True)
class GpuStatus:
    """What this machine can run: usable GPU providers and, if none, why."""

    cuda: bool
    tensorrt: bool
    reason: str  # why CUDA (or TensorRT) is unusable; "" when both work


_gpu_status: GpuStatus | None = None
_gpu_lock = threading.Lock()


def _load_library(path: str, global_symbols: bool = False) -> str:
    """dlopen a library; return '' on success or the loader's first error line."""
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL if global_symbols else ctypes.RTLD_LOCAL)
    except OSError as exc:
        return str(exc).strip().splitlines()[0]
    return ""


def _cuda_device_count() -> tuple[int, str]:
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver (libcuda.so.1 not found)"
    if libcuda.cuInit(0) != 0:
        return 0, "the NVIDIA driver found no usable GPU (cuInit failed)"
    count = ctypes.c_int(0)
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return 0, "no CUDA device visible"
    return count.value, ""


def probe_gpu() -> GpuStatus:
    """Find out once per process whether the CUDA / TensorRT providers can really run.

    onnxruntime-gpu lists both providers as available whenever it is installed; whether the driver,
    a device and the CUDA/cuDNN/TensorRT libraries are present only shows when a session is made,
    with loud error logs. Loading the same libraries with ctypes first answers quietly.
    """
    global _gpu_status
    with _gpu_lock:
        if _gpu_status is not None:
            return _gpu_status
        available = ort.get_available_providers()
        capi = Path(ort.__file__).parent / "capi"
        cuda, trt, reason = False, False, ""
        if "CUDAExecutionProvider" not in available:
            reason = "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
        else:
            count, reason = _cuda_device_count()
            if count:
                err = _load_library(str(capi / "libonnxruntime_providers_shared.so"), global_symbols=True)
                err = err or _load_library(str(capi / "libonnxruntime_providers_cuda.so"))
                cuda = not err
                reason = f"CUDA libraries missing: {err}" if err else ""
        if cuda and "TensorrtExecutionProvider" in available:
            err = _load_library(str(capi / "libonnxruntime_providers_tensorrt.so"))
            trt = not err
            reason = f"TensorRT libraries missing: {err}" if err else ""
        _gpu_status = GpuStatus(cuda=cuda, tensorrt=trt, reason=reason)
        return _gpu_status


def select_providers(
    cfg: EngineConfig, gpu: GpuStatus, cache_dir: Path | None = None
) -> tuple[list, list[str]]:
    """Turn the configured provider preference into onnxruntime's provider list.

    Args:
        cfg: the engine config (``providers`` order, CUDA/TensorRT options).
        gpu: what :func:`probe_gpu` found.
        cache_dir: TensorRT engine cache folder.

    Returns:
        ``(providers, skipped)``: the list for ``InferenceSession(providers=...)`` (name or
        ``(name, options)``) and human notes on the configured providers that were left out.
    """
    providers: list = []
    skipped: list[str] = []
    for name in cfg.providers:
        if name == "tensorrt":
            if not gpu.tensorrt:
                skipped.append(f"tensorrt ({gpu.reason or 'unavailable'})")
                continue
            path = str(cache_dir or Path("trt_cache"))
            providers.append(
                (
                    ORT_PROVIDER[name],
                    {
                        "device_id": cfg.device_id,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": path,
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": path,
                        "trt_fp16_enable": cfg.fp16,
                        "trt_max_workspace_size": cfg.trt_max_workspace_mb * 1024 * 1024,
                    },
                )
            )
        elif name == "openvino":
            # Only onnxruntime-openvino has it; that package replaces onnxruntime(-gpu) rather than
            # sitting beside it, so asking onnxruntime is the whole probe (no libraries to dlopen).
            if ORT_PROVIDER[name] not in ort.get_available_providers():
                skipped.append("openvino (onnxruntime-openvino is not installed)")
                continue
            # OpenVINO runs its own thread pool; size it like the session's intra-op pool so that
            # engine.intra_op_threads bounds the server's CPU use with either provider.
            providers.append(
                (ORT_PROVIDER[name], {"device_type": "CPU", "num_of_threads": intra_op_threads(cfg)})
            )
        elif name == "cuda":
            if not gpu.cuda:
                skipped.append(f"cuda ({gpu.reason or 'unavailable'})")
                continue
            options = {
                "device_id": cfg.device_id,
                # DEFAULT picks slow algorithms; EXHAUSTIVE benchmarks each new shape (fine with buckets).
                "cudnn_conv_algo_search": cfg.cudnn_conv_algo_search,
                "cudnn_conv_use_max_workspace": "1" if cfg.cudnn_max_workspace else "0",
                "do_copy_in_default_stream": "1",
                "arena_extend_strategy": cfg.arena_extend_strategy,
            }
            if cfg.gpu_mem_limit_mb:
                options["gpu_mem_limit"] = cfg.gpu_mem_limit_mb * 1024 * 1024
            providers.append((ORT_PROVIDER[name], options))
        else:
            providers.append(ORT_PROVIDER[name])
    return providers, skipped


def model_files(reference: Path, metadata: dict[str, str] | None = None) -> dict[str, Path]:
    """{precision: file} of a model version: its variants and the reference ``model.onnx`` under
    the precision its metadata states (files from before that key existed were fp32). A variant
    file of the reference's own precision wins over the reference.

    Args:
        metadata: the reference's metadata when the caller has read it already (it is read from
            the file otherwise: the whole file, so a loader reads it once).
    """
    if metadata is None:
        metadata = read_metadata(reference)
    return {metadata.get("precision", "fp32"): reference, **variant_files(reference.parent)}


def choose_model_file(
    files: dict[str, Path], order: tuple[str, ...], requested: str = "auto"
) -> tuple[str, Path]:
    """(precision, file) to load among a version's files (:func:`model_files`).

    Args:
        order: precisions fastest first (:func:`auto_order`).
        requested: ``engine.precision``: "auto" or one precision (that file when the version has
            it, else as for "auto").
    """
    if requested in files:
        order = (requested,)
    precision = next((p for p in order if p in files), next(iter(files)))
    return precision, files[precision]


# An int8 variant runs first on a CPU without VNNI/AMX only when the exporter measured it at least
# this much faster than fp32 on a CPU of the same class (metadata int8_speedup): fp32 is the
# reference quality, and a few per cent is within what two timings of the same file differ by.
# Recorded at export rather than timed at load, so every process on a machine (a restarted server,
# `convert --models`, each replica) picks the same file and gives byte-identical outputs.
MIN_INT8_SPEEDUP = 1.05


def recorded_int8_speedup(path: Path) -> float:
    """The speed-up over fp32 the exporter measured for an int8 file on a CPU of this machine's
    class (:func:`pixforge.hardware.int8_cpu_class`); 0.0 when none is recorded or readable."""
    try:
        recorded = parse_speedups(read_metadata(path).get(KEY_INT8_SPEEDUP, ""))
    except ContractError:
        return 0.0  # the load itself will report the broken file
    return recorded.get(int8_cpu_class(), 0.0)


def intra_op_threads(cfg: EngineConfig) -> int:
    """Threads per session: ``engine.intra_op_threads``, or (0) every CPU the process may use."""
    return cfg.intra_op_threads or available_cpus()


def session_options(cfg: EngineConfig) -> ort.SessionOptions:
    """Session options for serving: full graph optimisation, threads sized to the CPUs we may use."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_mem_pattern = True
    opts.enable_cpu_mem_arena = True
    opts.intra_op_num_threads = intra_op_threads(cfg)
    opts.inter_op_num_threads = cfg.inter_op_threads
    opts.log_severity_level = 3
    spin = "1" if cfg.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return opts


# --------------------------------------------------------------------------- the engine


class Engine:
    """One onnxruntime session for one model version.

    Not thread-safe for concurrent :meth:`run` calls by design: the batcher gives each engine a
    single inference thread, which keeps GPU work ordered and lets ORT use all its intra-op threads.

    Args:
        path: the version's ``model.onnx``.
        config: engine settings.
        name: model name for log lines.
        cache_dir: TensorRT engine cache folder (created when TensorRT is used).

    Raises:
        ContractError: the file cannot be loaded or breaks the model contract.
        RuntimeError: no configured provider can run on this machine.
    """

    def __init__(self, path: str | Path, config: EngineConfig, name: str = "", cache_dir: Path | None = None):
        self.config = config
        self.name = name or Path(path).parent.parent.name
        gpu = probe_gpu()
        providers, skipped = select_providers(config, gpu, cache_dir)
        if not providers:
            raise RuntimeError(
                f"none of the configured providers ({', '.join(config.providers)}) can run here: "
                f"{'; '.join(skipped)}"
            )
        self.skipped = skipped
        reference = Path(path)
        on_gpu = any(provider_name(p) in GPU_PROVIDERS for p in providers)
        metadata = read_metadata(reference)  # one read of the file serves every check below
        files = model_files(reference, metadata)
        if metadata.get(KEY_NORM_CHANNELS) and _uses_openvino(providers):
            # onnxruntime-openvino (seen with 1.24.1) compiles initializers that are also graph
            # inputs as constants: the tiling-statistics feeds (norm_mode, norm_stats, tile_core)
            # would be ignored, so tiled images would come out normalised tile by tile (norm_sums
            # with one row). Such a model runs on the other providers (onnxruntime always adds the
            # CPU one), decided from the metadata so no session is built twice.
            providers = [p for p in providers if provider_name(p) != ORT_PROVIDER["openvino"]]
            providers = providers or [ORT_PROVIDER["cpu"]]
            self.skipped = [*skipped, "openvino (ignores this model's tiling-statistics inputs)"]
            log.warning(
                "model %s has per-image normalisation inputs, which the OpenVINO provider ignores; "
                "running it on %s",
                self.name,
                provider_name(providers[0]),
            )
        # every precision this version has on disk, in PRECISIONS order
        self.variants: tuple[str, ...] = tuple(p for p in PRECISIONS if p in files)
        if any(isinstance(p, tuple) and p[0] == "TensorrtExecutionProvider" for p in providers) and cache_dir:
            cache_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        order = auto_order(on_gpu, files)
        precision, path = choose_model_file(files, order, config.precision)
        if config.precision not in ("auto", precision):
            log.warning(
                "model %s has no %s variant; running %s (%s)",
                self.name,
                config.precision,
                precision,
                path.name,
            )
        try:
            self._session = _open_session(path, config, providers)
        except ContractError as exc:
            if path == reference or config.precision != "auto":
                raise
            # A broken variant that auto picked costs its speed, not the model: the reference
            # runs instead (asked for by name, it fails loudly above).
            log.warning("model %s: %s left out, running %s: %s", self.name, path.name, reference.name, exc)
            precision = metadata.get("precision", "fp32")
            path = reference
            self._session = _open_session(path, config, providers)
        self.path = path
        self.contract: ModelContract = contract_from_session(self._session)
        self.precision: str = self.contract.metadata.get("precision", "fp32")
        if self.precision != precision:
            raise ContractError(
                f"{path} says its precision is {self.precision!r}; a variant's file name must match "
                f"its precision ({variant_file(self.precision)})"
            )
        self.provider: str = self._session.get_providers()[0]
        # IO binding on GPU providers; the output lives on this device until copied back once.
        self.output_device: str | None = "cuda" if self.provider in GPU_PROVIDERS else None
        self.load_ms = (time.perf_counter() - start) * 1000.0
        self.warmup_ms = 0.0

    # -- running

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one uint8 NHWC batch.

        Args:
            batch: uint8 (N, H, W, input_channels), H and W multiples of ``size_multiple``.

        Returns:
            uint8 (N, H*scale, W*scale, output_channels).

        Raises:
            OutOfMemoryError: the provider could not allocate memory for this batch.
            InferenceError: any other runtime failure, or an output that breaks the contract.
        """
        c = self.contract
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != c.input_channels:
            raise InferenceError(
                f"engine {self.name}: expected uint8 (N,H,W,{c.input_channels}), got "
                f"{batch.dtype} {batch.shape}"
            )
        batch = np.ascontiguousarray(batch)
        try:
            out = self._run_session(batch)
        except Exception as exc:  # onnxruntime's exception classes are not importable portably
            raise self._run_error(exc, batch.shape) from exc
        n, h, w, _ = batch.shape
        expected = (n, h * c.scale, w * c.scale, c.output_channels)
        if out.dtype != np.uint8 or tuple(out.shape) != expected:
            raise InferenceError(
                f"model {self.name} broke its contract: returned {out.dtype} {tuple(out.shape)}, "
                f"expected uint8 {expected}"
            )
        return out

    def run_norm(
        self, batch: np.ndarray, modes: np.ndarray, stats: np.ndarray, cores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run a batch with the tiling-statistics inputs of a contract-2 model with norm layers
        (docs/model-contract.md "Tiling-invariant models"; the batcher's ``run_norm``).

        Args:
            batch: uint8 (N, H, W, C) tiles.
            modes: float32 (L,), per norm layer: 1 = frozen statistics, 2 = pooled over the batch.
            stats: float32 (N, S): per tile, each layer's frozen mean then variance.
            cores: float32 (N, 4): per tile, (top, bottom, left, right) of its core as fractions.

        Returns:
            (uint8 outputs as :meth:`run`, float32 (N, T) ``norm_sums``).

        Raises:
            OutOfMemoryError, InferenceError: as :meth:`run`.
        """
        c = self.contract
        if not c.norm_channels:
            raise InferenceError(f"model {self.name} has no normalisation statistics inputs")
        inputs = {
            INPUT_NAME: np.ascontiguousarray(batch),
            NORM_MODE_INPUT: np.asarray(modes, np.float32),
            NORM_STATS_INPUT: np.ascontiguousarray(stats, np.float32),
            TILE_CORE_INPUT: np.ascontiguousarray(cores, np.float32),
        }
        try:
            out, sums = self._session.run([OUTPUT_NAME, NORM_SUMS_OUTPUT], inputs)
        except Exception as exc:  # onnxruntime's exception classes are not importable portably
            raise self._run_error(exc, batch.shape) from exc
        return out, sums

    def _run_error(self, exc: BaseException, shape: tuple) -> Exception:
        """The domain error for an onnxruntime failure: out of memory (retried smaller) or not."""
        if is_out_of_memory(exc):
            return OutOfMemoryError(
                f"model {self.name} ran out of memory on {self.provider} for a batch of shape {shape}"
            )
        return InferenceError(f"model {self.name} failed: {_first_line(exc)}")

    def _run_session(self, batch: np.ndarray) -> np.ndarray:
        if self.output_device is not None:
            # IO binding: the input is copied host->device once, the output is allocated by ORT on the
            # device at its dynamic shape and copied back once; no hidden staging copies per run.
            binding = self._session.io_binding()
            binding.bind_cpu_input(INPUT_NAME, batch)
            binding.bind_output(OUTPUT_NAME, self.output_device, self.config.device_id)
            self._session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    def warmup(self, size: int = 0) -> float:
        """Run one zero image so the first request does not pay for allocation/algorithm search.

        Args:
            size: image edge in pixels (0: the model's tile size); rounded up to ``size_multiple``.

        Returns:
            The warm-up time in milliseconds.
        """
        c = self.contract
        edge = size or c.tile_size  # tiles are the shape the model sees most
        edge = -(-edge // c.size_multiple) * c.size_multiple
        start = time.perf_counter()
        self.run(np.zeros((1, edge, edge, c.input_channels), np.uint8))
        self.warmup_ms = (time.perf_counter() - start) * 1000.0
        return self.warmup_ms

    def close(self) -> None:
        """Drop the session (its memory is freed once no run holds it)."""
        self._session = None


def _uses_openvino(providers: list) -> bool:
    return any(provider_name(p) == ORT_PROVIDER["openvino"] for p in providers)


def provider_name(provider: str | tuple[str, dict]) -> str:
    """The name of one entry of :func:`select_providers`' list (a name or ``(name, options)``)."""
    return provider[0] if isinstance(provider, tuple) else provider


def _open_session(path: Path, config: EngineConfig, providers: list) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(config), providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ContractError(f"{path} is not a loadable ONNX model: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_providers(engines: list[Engine]) -> str:
    """One human phrase for the providers in use, e.g. 'CUDAExecutionProvider' or 'CPU, CUDA'."""
    names = sorted({e.provider for e in engines})
    return ", ".join(names) if names else "none"


def trt_cache_dir(cfg: EngineConfig, repository: Path) -> Path:
    """Where TensorRT engines are cached: the configured folder, else ``<repository>/.trt_cache``."""
    return Path(cfg.trt_engine_cache_path) if cfg.trt_engine_cache_path else Path(repository) / ".trt_cache"


def expected_provider(cfg: EngineConfig) -> str:
    """The onnxruntime provider a model loaded now would run on ('none' if no configured one works)."""
    providers, _ = select_providers(cfg, probe_gpu())
    return provider_name(providers[0]) if providers else "none"


def gpu_log_line(cfg: EngineConfig) -> str:
    """The single line the server logs about execution providers at start-up."""
    gpu = probe_gpu()
    wanted = [p for p in cfg.providers if p in ("tensorrt", "cuda")]
    if ("cuda" in wanted and gpu.cuda) or ("tensorrt" in wanted and gpu.tensorrt):
        kind = "TensorRT" if "tensorrt" in wanted and gpu.tensorrt else "CUDA"
        return f"execution provider: GPU ({kind}, device {cfg.device_id})"
    # No GPU provider runs: name the CPU-class provider that does (the first one onnxruntime gets;
    # it takes every node it supports) and why configured ones are unavailable.
    providers, _ = select_providers(cfg, gpu)
    first = provider_name(providers[0]) if providers else ""
    runs = {"OpenVINOExecutionProvider": "OpenVINO CPU", "CPUExecutionProvider": "CPU"}.get(first, "none")
    missing = [f"{', '.join(wanted)} unavailable: {gpu.reason or 'unknown reason'}"] if wanted else []
    if "openvino" in cfg.providers and ORT_PROVIDER["openvino"] not in ort.get_available_providers():
        missing.append("openvino unavailable: onnxruntime-openvino is not installed")
    return f"execution provider: {runs} ({'; '.join(missing) or 'configured'})"
