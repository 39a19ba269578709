"""Server configuration: frozen dataclasses built once from defaults < YAML < env < CLI flags.

Every key is documented in ``docs/serving.md`` (a test checks that each key below appears there).
Each component receives only its own section (the engine gets :class:`EngineConfig`, the batcher
:class:`BatchingConfig`, ...), never the whole config.

Keys are addressed by dotted paths (``batching.max_batch_size``). Environment variables are
``PIXFORGE_`` + the path in upper case with dots as underscores (``PIXFORGE_BATCHING_MAX_BATCH_SIZE``,
``PIXFORGE_PORT``); ``PIXFORGE_TOKEN`` and ``PIXFORGE_TOKEN_FILE`` are short aliases of
``auth.token`` / ``auth.token_file``. Unknown ``PIXFORGE_*`` variables are ignored (other pixforge
tools use their own); unknown YAML keys are an error.

Values are converted to each field's type by :mod:`pixforge.settings`, the same rules as the
training config's: booleans accept ``true/false``, ``yes/no``, ``on/off`` and ``1/0`` (any case),
lists and ``pins`` may be comma-separated text (``cuda,cpu``, ``sr=2,colorize=1``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pixforge.errors import SettingsError
from pixforge.repository import PRECISIONS
from pixforge.settings import build, suggest

from .errors import ServerConfigError

# openvino is onnxruntime-openvino's OpenVINOExecutionProvider: CPU-class, opt-in per server.
PROVIDERS = ("tensorrt", "cuda", "openvino", "cpu")
CUDNN_SEARCH = ("HEURISTIC", "EXHAUSTIVE")
ARENA_STRATEGIES = ("kSameAsRequested", "kNextPowerOfTwo")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
NORM_STAT_METHODS = ("exact", "downscaled", "per_tile")  # service/norm_stats.py METHODS
ENGINE_PRECISIONS = ("auto", *PRECISIONS)
MIB = 1024 * 1024
# The largest limits.max_message_bytes: gRPC's own ceiling sits a quarter above it and must stay
# within gRPC's int32 lengths.
MAX_MESSAGE_BYTES = 1536 * MIB
INT32_MAX = (1 << 31) - 1
# gRPC takes the connection durations in milliseconds as C ints: about 24.8 days at most.
MAX_CONNECTION_SECONDS = INT32_MAX // 1000


def _doc(text: str) -> dict:
    return {"doc": text}


def setting(default: Any, doc: str) -> Any:
    """A config field with its default and the one-line doc the reference table is built from."""
    return field(default=default, metadata=_doc(doc))


@dataclass(frozen=True)
class EngineConfig:
    """onnxruntime session settings (one session per model version)."""

    providers: tuple[str, ...] = setting(
        ("cuda", "cpu"),
        "execution providers in order of preference: tensorrt (opt-in), cuda, "
        "openvino (opt-in, needs onnxruntime-openvino), cpu",
    )
    device_id: int = setting(0, "GPU index for cuda/tensorrt")
    intra_op_threads: int = setting(0, "CPU threads per session; 0 = CPUs available to the process")
    inter_op_threads: int = setting(1, "threads running independent graph nodes in parallel")
    allow_spinning: bool = setting(
        False, "let idle ORT threads busy-wait (lower latency, burns CPU beside other models)"
    )
    cudnn_conv_algo_search: str = setting(
        "HEURISTIC",
        "HEURISTIC or EXHAUSTIVE (needs batching.shape_bucket > 0: it re-benchmarks every new HxW)",
    )
    cudnn_max_workspace: bool = setting(True, "let cuDNN use its largest workspace (faster convs)")
    gpu_mem_limit_mb: int = setting(0, "CUDA arena limit per session in MiB; 0 = no limit")
    arena_extend_strategy: str = setting(
        "kSameAsRequested", "CUDA arena growth: kSameAsRequested or kNextPowerOfTwo"
    )
    precision: str = setting(
        "auto",
        "which precision variant of a model to run: auto (CPU: int8 where the CPU has VNNI/AMX or "
        "the int8 file's export measured it >= 5% faster on a CPU like this one, else fp32; GPU: "
        "fp16, then fp32), or fp32 / fp16 / bf16 / int8 (that variant where a model has it, else "
        "auto's choice)",
    )
    fp16: bool = setting(False, "TensorRT builds fp16 engines (from whichever file runs)")
    trt_engine_cache_path: str = setting("", "TensorRT engine cache folder; '' = <models>/.trt_cache")
    trt_max_workspace_mb: int = setting(4096, "TensorRT builder workspace in MiB")
    warmup: bool = setting(True, "run one inference at load; a model is READY only after it")
    warmup_size: int = setting(0, "warm-up image edge in pixels; 0 = the model's tile size")


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching (per model version)."""

    max_batch_size: int = setting(8, "most images (or tiles) in one inference call")
    max_queue_delay_ms: float = setting(
        5.0,
        "how long the first queued image waits for others to share its batch when the engine is busy "
        "(an idle engine runs it at once)",
    )
    queue_size: int = setting(64, "requests waiting or running per model; one more is RESOURCE_EXHAUSTED")
    shape_bucket: int = setting(
        64,
        "pad images smaller than a tile up to a multiple of this so different sizes batch "
        "together and the GPU sees few shapes; 0 = pad only to size_multiple",
    )


@dataclass(frozen=True)
class TilingConfig:
    """Tiling of large images."""

    tile_size: int = setting(0, "tile edge in input pixels; 0 = the model's tile_size metadata")
    tile_overlap: int = setting(32, "overlap between neighbouring tiles in input pixels")
    min_tile_size: int = setting(64, "smallest tile the out-of-memory retry goes down to")
    max_tile_size: int = setting(2048, "largest tile_size a request may ask for")
    norm_statistics: str = setting(
        "exact",
        "how tiles of a model with per-image normalisation are normalised: exact (the whole "
        "image's statistics, one extra pass over the tiles per norm layer), downscaled (statistics "
        "of a downscaled copy: one cheap extra pass, approximate), per_tile (each tile its own: "
        "fastest, tone changes between tiles)",
    )


@dataclass(frozen=True)
class LimitsConfig:
    """Size limits (memory stays bounded up to these)."""

    max_input_pixels: int = setting(64_000_000, "largest decoded input, in pixels")
    max_output_pixels: int = setting(64_000_000, "largest output (input x scale^2), in pixels")
    max_message_bytes: int = setting(64 * MIB, "largest gRPC message, both directions")


@dataclass(frozen=True)
class ColorizationConfig:
    """Colourisation of large photos."""

    render_size: int = setting(
        512,
        "longest side the model runs at; chroma is upscaled to full size and joined with the "
        "full-resolution luminance",
    )


@dataclass(frozen=True)
class AdmissionConfig:
    """Admission control (service/admission.py): what may wait for a worker, and what is refused."""

    max_queued: int = setting(64, "most requests waiting for a worker; beyond: RESOURCE_EXHAUSTED at once")
    max_queued_seconds: float = setting(
        30.0, "most estimated seconds of work waiting (cost = pixels x the model's measured speed)"
    )


@dataclass(frozen=True)
class StreamConfig:
    """TranslateStream settings."""

    max_in_flight: int = setting(
        4,
        "items of one stream in the server at once, answers not yet written to the client "
        "included; the server stops reading beyond it",
    )
    max_unsent_bytes: int = setting(
        0,
        "bytes of stream responses computed but not yet written, all streams together (clients "
        "that read slowly or not at all); while they reach it no stream reads a new item; "
        "0 = workers x max_in_flight x limits.max_message_bytes",
    )

    def unsent_budget(self, workers: int, max_message_bytes: int) -> int:
        """``max_unsent_bytes``, or ``workers`` x ``max_in_flight`` x ``max_message_bytes`` when it
        is 0."""
        if self.max_unsent_bytes > 0:
            return self.max_unsent_bytes
        return workers * self.max_in_flight * max_message_bytes


@dataclass(frozen=True)
class ConnectionConfig:
    """HTTP/2 connection limits of the gRPC port (gRPC server options, see docs/serving.md)."""

    max_concurrent_streams: int = setting(
        100,
        "calls (HTTP/2 streams) one connection may have open at once, probes included; a client's "
        "further calls wait in the client until one ends, so one connection cannot hold every "
        "max_concurrent_rpcs slot",
    )
    keepalive_time_seconds: float = setting(
        60.0,
        "the server pings a connection after this long without activity, so a vanished or "
        "half-open peer is found and its calls are freed (and idle NAT/balancer state kept alive)",
    )
    keepalive_timeout_seconds: float = setting(
        20.0, "a connection whose peer does not answer the keepalive ping within this is closed"
    )
    min_ping_interval_seconds: float = setting(
        10.0,
        "shortest interval between a client's own keepalive pings the server accepts (with or "
        "without calls); a client pinging more often is disconnected (GOAWAY too_many_pings) "
        "after two such pings",
    )
    max_idle_seconds: float = setting(
        300.0,
        "a connection without any open call for this long is closed gracefully (GOAWAY; gRPC "
        "clients reconnect on their next call); 0 = never",
    )
    max_age_seconds: float = setting(
        0.0,
        "connections older than this (+-10% jitter) get GOAWAY, so clients open new ones (spreads "
        "long-lived clients over new replicas behind an L4 balancer); their calls go on for "
        "max_age_grace_seconds; 0 = no age limit",
    )
    max_age_grace_seconds: float = setting(
        0.0,
        "calls still open on a connection past max_age_seconds are cancelled after this long; "
        "0 = never (a long stream is never cut)",
    )


@dataclass(frozen=True)
class AuthConfig:
    """Optional bearer-token authentication (off when no token is set)."""

    token: str = field(
        default="", repr=False, metadata=_doc("accepted token (prefer PIXFORGE_TOKEN or token_file)")
    )
    token_file: str = setting("", "file with accepted tokens, one per line (rotation)")
    tokens: tuple[str, ...] = field(
        default=(), repr=False, metadata=_doc("resolved: token + token_file lines")
    )

    @property
    def enabled(self) -> bool:
        """Whether calls need a bearer token."""
        return bool(self.tokens)


@dataclass(frozen=True)
class TLSConfig:
    """Optional TLS / mutual TLS."""

    cert_file: str = setting("", "PEM server certificate chain; enables TLS")
    key_file: str = setting("", "PEM private key of cert_file")
    client_ca_file: str = setting("", "PEM CA bundle; when set clients must present a cert (mTLS)")

    @property
    def enabled(self) -> bool:
        """Whether the server listens with TLS."""
        return bool(self.cert_file)


@dataclass(frozen=True)
class ServiceConfig:
    """Everything `pixforge serve` needs. Build it with :func:`load_config`."""

    models: str = setting("", "model repository; '' = the bundled default ($PIXFORGE_MODELS or models/)")
    host: str = setting("0.0.0.0", "address the gRPC server binds")
    port: int = setting(50051, "gRPC port; 0 = pick a free one (the log line says which)")
    http_port: int = setting(
        8000,
        "KServe v2 HTTP/REST port (on host, with auth and tls like the gRPC port; also serves "
        "/metrics); 0 disables, -1 picks a free one",
    )
    metrics_port: int = setting(9090, "Prometheus HTTP port; 0 disables, -1 picks a free one")
    metrics_host: str = setting(
        "127.0.0.1",
        "address of the metrics endpoint: loopback only unless set (0.0.0.0 to be scraped from "
        "another host or through a container's published port); '' = host. It follows auth "
        "(Authorization: Bearer <token>) and tls (HTTPS, mTLS) like the gRPC port",
    )
    poll_seconds: float = setting(0.0, "re-scan the repository every N seconds; 0 = only on SIGHUP")
    max_workers: int = setting(
        0,
        "requests processed at once (decode, tiles through the batchers, encode), each on a worker "
        "thread; more wait in the admission queue; 0 = 2 x CPUs (at least 2): more running at "
        "once only shares the CPU, so each finishes later",
    )
    max_concurrent_rpcs: int = setting(
        4096,
        "most open RPCs (idle streams included; health and readiness probes exempt); beyond: "
        "RESOURCE_EXHAUSTED. An open RPC holds no thread, only a little memory",
    )
    max_concurrent_streaming_rpcs: int = setting(
        0,
        "most open streaming RPCs (TranslateStream, KServe ModelStreamInfer, reflection), counted "
        "within max_concurrent_rpcs, so idle streams cannot take the slots of unary calls; beyond: "
        "RESOURCE_EXHAUSTED; 0 = three quarters of max_concurrent_rpcs",
    )
    max_health_watches: int = setting(
        1000,
        "most open grpc.health Watch streams (they need no token and are not counted in "
        "max_concurrent_rpcs); beyond: RESOURCE_EXHAUSTED. Check calls are not limited",
    )
    codec_workers: int = setting(
        0, "threads running the images of one KServe request concurrently; 0 = 4 x CPUs (max 32)"
    )
    grace_seconds: float = setting(10.0, "on SIGTERM, time in-flight requests get to finish")
    kserve: bool = setting(
        True,
        "also serve the KServe v2 / Triton gRPC protocol (inference.GRPCInferenceService) on the same port",
    )
    model_control: bool = setting(
        False,
        "allow explicit model control: the KServe RepositoryModelLoad/Unload calls (Triton's "
        "--model-control-mode=explicit) load and unload the models of the read-only repository; "
        "off: they answer FAILED_PRECONDITION",
    )
    strict_readiness: bool = setting(
        True,
        "ready (health SERVING, /v2/health/ready 200) only while every model of the repository has a "
        "READY version, as Triton's --strict-readiness; false: while at least one model is READY. "
        "An empty repository is ready either way",
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = setting("text", "text or json (one JSON object per line)")
    pins: Mapping[str, int] = field(
        default_factory=dict, metadata=_doc("model name -> version to serve instead of the highest ready one")
    )
    engine: EngineConfig = field(default_factory=EngineConfig, metadata=_doc("onnxruntime settings"))
    batching: BatchingConfig = field(default_factory=BatchingConfig, metadata=_doc("dynamic batching"))
    tiling: TilingConfig = field(default_factory=TilingConfig, metadata=_doc("tiling of large images"))
    limits: LimitsConfig = field(default_factory=LimitsConfig, metadata=_doc("size limits"))
    colorization: ColorizationConfig = field(
        default_factory=ColorizationConfig, metadata=_doc("colourisation")
    )
    stream: StreamConfig = field(default_factory=StreamConfig, metadata=_doc("TranslateStream"))
    connection: ConnectionConfig = field(
        default_factory=ConnectionConfig, metadata=_doc("HTTP/2 connection limits and keepalive")
    )
    admission: AdmissionConfig = field(
        default_factory=AdmissionConfig, metadata=_doc("admission control of inference requests")
    )
    auth: AuthConfig = field(default_factory=AuthConfig, metadata=_doc("bearer-token auth"))
    tls: TLSConfig = field(default_factory=TLSConfig, metadata=_doc("TLS / mTLS"))

    @property
    def repository(self) -> Path:
        """The model repository folder this config serves."""
        if self.models:
            return Path(self.models)
        from pixforge.repository import default_repository

        return default_repository()


SECTIONS = {f.name: f.type for f in dataclasses.fields(ServiceConfig)}
ENV_ALIASES = {"PIXFORGE_TOKEN": "auth.token", "PIXFORGE_TOKEN_FILE": "auth.token_file"}
_RESOLVED_ONLY = {"auth.tokens"}  # computed, never set by the user


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(ServiceConfig)
    return {name: t for name, t in hints.items() if isinstance(t, type) and dataclasses.is_dataclass(t)}


def config_keys() -> dict[str, str]:
    """Every settable dotted key with its documentation string.

    Returns:
        ``{"port": "gRPC port ...", "batching.max_batch_size": "...", ...}`` in declaration order.
    """
    sections = _section_classes()
    keys: dict[str, str] = {}
    for f in dataclasses.fields(ServiceConfig):
        if f.name in sections:
            for sf in dataclasses.fields(sections[f.name]):
                key = f"{f.name}.{sf.name}"
                if key not in _RESOLVED_ONLY:
                    keys[key] = sf.metadata.get("doc", "")
        else:
            keys[f.name] = f.metadata.get("doc", "")
    return keys


def env_name(key: str) -> str:
    """The environment variable that sets a dotted key.

    ``batching.max_batch_size`` -> ``PIXFORGE_BATCHING_MAX_BATCH_SIZE``.
    """
    return "PIXFORGE_" + key.replace(".", "_").upper()


def _flatten_yaml(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    sections = _section_classes()
    valid = config_keys()
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if name in sections:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ServerConfigError(f"{source}: {name!r} must be a mapping of its keys, got {value!r}")
            for sub, sub_value in value.items():
                key = f"{name}.{sub}"
                if key not in valid:
                    options = [k.split(".", 1)[1] for k in valid if k.startswith(name + ".")]
                    raise ServerConfigError(
                        f"{source}: unknown key {key!r}{suggest(sub, options)} "
                        f"(valid {name} keys: {', '.join(options)})"
                    )
                flat[key] = sub_value
        elif name in valid:
            flat[name] = value
        else:
            raise ServerConfigError(
                f"{source}: unknown key {name!r}{suggest(name, SECTIONS)} "
                f"(valid top-level keys: {', '.join(SECTIONS)})"
            )
    return flat


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a server YAML file into flat ``{dotted key: raw value}``.

    Raises:
        ServerConfigError: missing/unreadable file, bad YAML or an unknown key.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ServerConfigError(f"cannot read server config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ServerConfigError(f"server config {path} is not UTF-8 text (a YAML file is)") from None
    except yaml.YAMLError as exc:
        raise ServerConfigError(f"server config {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ServerConfigError(f"server config {path} must be a mapping of keys, got {type(data).__name__}")
    return _flatten_yaml(data, str(path))


# PIXFORGE_* variables other tools read (docker-compose interpolation, the Makefile), which a
# server's environment may well carry: the misspelling check below leaves them alone.
OTHER_TOOLS_ENV = frozenset(
    {
        "PIXFORGE_IMAGE",
        "PIXFORGE_CPU_IMAGE",
        "PIXFORGE_TRAINER_IMAGE",
        "PIXFORGE_GPU",
        "PIXFORGE_UID",
        "PIXFORGE_GID",
        "PIXFORGE_DATA_DIR",
        "PIXFORGE_RUNS_DIR",
        "PIXFORGE_MODELS_DIR",
        "PIXFORGE_GRPC_PUBLISH",
        "PIXFORGE_HTTP_PUBLISH",
        "PIXFORGE_METRICS_PUBLISH",
        "PIXFORGE_EDGE_PUBLISH",
    }
)


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """One line per ``PIXFORGE_*`` variable that names no config key (a likely misspelling).

    Warned about, not refused: the variable may belong to a newer or older release sharing the
    environment, and refusing would take a running deployment down over a harmless leftover.
    """
    known = {env_name(k) for k in config_keys()} | set(ENV_ALIASES) | OTHER_TOOLS_ENV
    return [
        f"environment variable {name} is not a server setting and is ignored{suggest(name, known)}"
        for name in sorted(env)
        if name.startswith("PIXFORGE_") and name not in known
    ]


def read_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Pick the ``PIXFORGE_*`` variables that name a config key (others are ignored)."""
    by_env = {env_name(k): k for k in config_keys()}
    by_env.update(ENV_ALIASES)
    return {by_env[name]: value for name, value in env.items() if name in by_env}


def _read_tokens(token: str, token_file: str) -> tuple[str, ...]:
    tokens = [token.strip()] if token.strip() else []
    if token_file:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ServerConfigError(
                f"auth.token_file: cannot read {token_file}: {exc.strerror or exc}"
            ) from None
        file_tokens = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not file_tokens:
            raise ServerConfigError(f"auth.token_file: {token_file} holds no token")
        tokens += file_tokens
    return tuple(dict.fromkeys(tokens))


def build_config(values: Mapping[str, Any], source: str = "config") -> ServiceConfig:
    """Build and validate a ServiceConfig from flat ``{dotted key: value}`` (unset keys keep defaults).

    Raises:
        ServerConfigError: an unknown key, a badly typed value or a failed check; the message names the key.
    """
    valid = config_keys()
    nested: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in valid:
            raise ServerConfigError(f"{source}: unknown key {key!r}{suggest(key, valid)}")
        if "." in key:
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = raw
        else:
            nested[key] = raw
    try:
        cfg = build(ServiceConfig, nested)
    except SettingsError as exc:
        raise ServerConfigError(f"{source}: bad value for {exc.key!r}: {exc.reason}") from None
    engine = dataclasses.replace(cfg.engine, providers=tuple(p.strip().lower() for p in cfg.engine.providers))
    auth = dataclasses.replace(cfg.auth, tokens=_read_tokens(cfg.auth.token, cfg.auth.token_file))
    cfg = dataclasses.replace(cfg, engine=engine, auth=auth)
    validate(cfg)
    return cfg


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ServerConfigError(f"{key}: {message}")


# Numeric keys and their bounds: key -> (lowest, highest or None for no upper bound).
_BOUNDS: dict[str, tuple[int, int | None]] = {
    "port": (0, 65535),
    "metrics_port": (-1, 65535),
    "http_port": (-1, 65535),
    "poll_seconds": (0, None),
    "max_concurrent_rpcs": (1, None),
    "max_concurrent_streaming_rpcs": (0, None),
    "max_health_watches": (1, None),
    "connection.max_concurrent_streams": (1, INT32_MAX),
    "admission.max_queued": (0, None),
    "codec_workers": (0, None),
    "grace_seconds": (0, None),
    "engine.device_id": (0, None),
    "engine.intra_op_threads": (0, None),
    "engine.inter_op_threads": (1, None),
    "engine.gpu_mem_limit_mb": (0, None),
    "engine.trt_max_workspace_mb": (1, None),
    "engine.warmup_size": (0, None),
    "batching.max_batch_size": (1, 1024),
    "batching.max_queue_delay_ms": (0, 10_000),
    "batching.queue_size": (1, None),
    "batching.shape_bucket": (0, None),
    "tiling.tile_size": (0, None),
    "tiling.tile_overlap": (0, None),
    "tiling.min_tile_size": (8, None),
    "limits.max_input_pixels": (1, None),
    "limits.max_output_pixels": (1, None),
    "limits.max_message_bytes": (1024, MAX_MESSAGE_BYTES),
    "colorization.render_size": (16, None),
    "stream.max_in_flight": (1, None),
    "stream.max_unsent_bytes": (0, None),
}


def _check_bounds(cfg: ServiceConfig) -> None:
    for key, (low, high) in _BOUNDS.items():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        if high is None:
            _check(value >= low, key, f"must be >= {low}, got {value}")
        else:
            _check(low <= value <= high, key, f"must be within {low}..{high}, got {value}")


def validate(cfg: ServiceConfig) -> None:
    """Check every value range and cross-key rule.

    Raises:
        ServerConfigError: naming the first offending key.
    """
    _check_bounds(cfg)
    _check(bool(cfg.host), "host", "must not be empty")
    _check(
        cfg.max_workers == 0 or cfg.max_workers >= 2,
        "max_workers",
        f"must be 0 or >= 2, got {cfg.max_workers}",
    )
    _check(
        cfg.admission.max_queued_seconds > 0,
        "admission.max_queued_seconds",
        f"must be > 0, got {cfg.admission.max_queued_seconds}",
    )
    _check(cfg.log_level.upper() in LOG_LEVELS, "log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    _check(cfg.log_format in LOG_FORMATS, "log_format", f"must be one of {', '.join(LOG_FORMATS)}")
    for name, version in cfg.pins.items():
        _check(version >= 1, "pins", f"version of {name!r} must be >= 1, got {version}")
    _check(
        cfg.max_concurrent_streaming_rpcs <= cfg.max_concurrent_rpcs,
        "max_concurrent_streaming_rpcs",
        f"must be <= max_concurrent_rpcs ({cfg.max_concurrent_rpcs}), got "
        f"{cfg.max_concurrent_streaming_rpcs} (streams are counted within it); 0 = three quarters of it",
    )
    c = cfg.connection
    for name in ("keepalive_time_seconds", "keepalive_timeout_seconds"):
        value = getattr(c, name)
        _check(
            0 < value <= MAX_CONNECTION_SECONDS,
            f"connection.{name}",
            f"must be within 0 (exclusive)..{MAX_CONNECTION_SECONDS}, got {value}",
        )
    for name in ("min_ping_interval_seconds", "max_idle_seconds", "max_age_seconds", "max_age_grace_seconds"):
        value = getattr(c, name)
        _check(
            0 <= value <= MAX_CONNECTION_SECONDS,
            f"connection.{name}",
            f"must be within 0..{MAX_CONNECTION_SECONDS}, got {value}",
        )

    e = cfg.engine
    _check(bool(e.providers), "engine.providers", "must list at least one provider")
    for p in e.providers:
        _check(
            p in PROVIDERS, "engine.providers", f"unknown provider {p!r} (choose from {', '.join(PROVIDERS)})"
        )
    _check(len(set(e.providers)) == len(e.providers), "engine.providers", "lists a provider twice")
    _check(
        e.precision in ENGINE_PRECISIONS,
        "engine.precision",
        f"must be one of {', '.join(ENGINE_PRECISIONS)}, got {e.precision!r}",
    )
    _check(
        e.cudnn_conv_algo_search in CUDNN_SEARCH,
        "engine.cudnn_conv_algo_search",
        f"must be HEURISTIC or EXHAUSTIVE, got {e.cudnn_conv_algo_search!r} (DEFAULT picks slow algorithms)",
    )
    _check(
        e.cudnn_conv_algo_search != "EXHAUSTIVE" or cfg.batching.shape_bucket > 0,
        "engine.cudnn_conv_algo_search",
        "EXHAUSTIVE re-benchmarks every new image size: set batching.shape_bucket > 0 or use HEURISTIC",
    )
    _check(
        e.arena_extend_strategy in ARENA_STRATEGIES,
        "engine.arena_extend_strategy",
        f"must be one of {', '.join(ARENA_STRATEGIES)}",
    )

    t = cfg.tiling
    _check(
        t.norm_statistics in NORM_STAT_METHODS,
        "tiling.norm_statistics",
        f"must be one of {', '.join(NORM_STAT_METHODS)}, got {t.norm_statistics!r}",
    )
    _check(t.max_tile_size >= t.min_tile_size, "tiling.max_tile_size", "must be >= tiling.min_tile_size")
    _check(
        t.tile_size == 0 or t.min_tile_size <= t.tile_size <= t.max_tile_size,
        "tiling.tile_size",
        "must be 0 or within tiling.min_tile_size..tiling.max_tile_size",
    )

    tls = cfg.tls
    _check(
        bool(tls.cert_file) == bool(tls.key_file),
        "tls.key_file",
        "tls.cert_file and tls.key_file go together",
    )
    _check(
        not tls.client_ca_file or tls.enabled,
        "tls.client_ca_file",
        "mTLS needs tls.cert_file and tls.key_file",
    )
    for key, path in (
        ("tls.cert_file", tls.cert_file),
        ("tls.key_file", tls.key_file),
        ("tls.client_ca_file", tls.client_ca_file),
    ):
        _check(not path or Path(path).is_file(), key, f"no such file: {path}")


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> ServiceConfig:
    """Resolve the server config: defaults < YAML file < environment < overrides (CLI flags).

    Args:
        path: optional YAML file (see docs/serving.md).
        overrides: flat ``{dotted key: value}``, e.g. from CLI flags; None values are skipped.
        env: environment to read ``PIXFORGE_*`` from (default: ``os.environ``; pass ``{}`` to ignore it).

    Returns:
        The validated, frozen ServiceConfig.

    Raises:
        ServerConfigError: with a message naming the file/variable and key at fault.
    """
    values: dict[str, Any] = {}
    if path:
        values.update(read_yaml(path))
    env_values = read_env(os.environ if env is None else env)
    values.update(env_values)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_config(values, source=str(path) if path else "config")


def config_from_args(args, env: Mapping[str, str] | None = None) -> ServiceConfig:
    """Build the config for `pixforge serve` from its parsed argparse namespace.

    Args:
        args: namespace with ``config``, ``models``, ``port``, ``host``, ``http_port``,
            ``metrics_port``, ``metrics_host``, ``poll``.
        env: environment (default ``os.environ``).
    """
    overrides = {
        "models": getattr(args, "models", None),
        "port": getattr(args, "port", None),
        "host": getattr(args, "host", None),
        "http_port": getattr(args, "http_port", None),
        "metrics_port": getattr(args, "metrics_port", None),
        "metrics_host": getattr(args, "metrics_host", None),
        "poll_seconds": getattr(args, "poll", None),
    }
    return load_config(getattr(args, "config", None), overrides, env)


def config_to_dict(cfg: ServiceConfig) -> dict[str, Any]:
    """The resolved config as JSON-able nested dicts, secrets redacted (for logs and --dry-run)."""
    out = dataclasses.asdict(cfg)
    out["pins"] = dict(cfg.pins)
    out["models"] = str(cfg.repository)
    auth = out["auth"]
    auth["token"] = "***" if auth["token"] else ""
    auth["tokens"] = f"{len(cfg.auth.tokens)} token(s)"
    return json.loads(json.dumps(out, default=str))


def available_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2/v1 CPU quota (containers)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = None
    try:
        parts = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if parts and parts[0] != "max":
            quota = int(parts[0]) / int(parts[1])
    except (OSError, ValueError, IndexError):
        try:
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if q > 0 and p > 0:
                quota = q / p
        except (OSError, ValueError):
            pass
    if quota:
        count = min(count, max(1, int(quota + 0.5)))
    return max(1, count)


# Float accumulators of about one tile row per running request (docs/serving.md "Resource use");
# an allowance, since their size depends on the image width and tile size of each request.
TILE_ROW_ALLOWANCE = 64 << 20


def worker_count(config: ServiceConfig, cpus: int | None = None) -> int:
    """Requests processed at once: ``max_workers``, or 2 x CPUs (at least 2) when it is 0."""
    return config.max_workers or max(2, 2 * (cpus or available_cpus()))


def streaming_rpc_limit(config: ServiceConfig) -> int:
    """Most open streaming RPCs: ``max_concurrent_streaming_rpcs``, or three quarters of
    ``max_concurrent_rpcs`` (at least 1) when it is 0, so unary calls keep a quarter of the slots."""
    return config.max_concurrent_streaming_rpcs or max(1, config.max_concurrent_rpcs * 3 // 4)


def request_memory_bound(config: ServiceConfig, cpus: int | None = None) -> int:
    """Bytes the requests can hold at worst, models and the runtime not included.

    The formula of docs/serving.md "Resource use": each running request holds its message, its
    decoded input (at most 4 bytes a pixel), its uint8 RGB output, its encoded response and a tile
    row of accumulators; each queued request holds its message; and the responses that streams
    computed but could not write yet hold at most ``stream.max_unsent_bytes`` (a stream item is
    admitted only below it, so the responses of the items running or queued then can add to it:
    their messages are counted already). Operators size a container's memory limit from it
    (deploy/k8s does, tested).

    Args:
        config: the resolved server config.
        cpus: CPUs the server gets (default: this machine's, as the server counts them).
    """
    limits = config.limits
    workers = worker_count(config, cpus)
    one_request = (
        4 * limits.max_input_pixels
        + 3 * limits.max_output_pixels
        + limits.max_message_bytes
        + TILE_ROW_ALLOWANCE
    )
    messages = config.admission.max_queued + workers
    unsent = config.stream.unsent_budget(workers, limits.max_message_bytes)
    return workers * one_request + messages * limits.max_message_bytes + unsent
