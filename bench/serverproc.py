"""The real server as a subprocess, its memory, and closed-loop gRPC load from client threads.

The serving, batching and tiling suites run ``pixforge serve`` exactly as a user does (its own
process, a YAML config, a model repository), so the figures include process start-up choices,
gRPC, PNG decode/encode and the batcher, and the server's peak memory can be read from
``/proc/<pid>/status`` without the benchmark's own allocations mixed in. Clients are threads of
the bench process, each with its own channel (like independent callers); the gRPC C core and
OpenCV release the GIL, so a handful of client threads do not limit a 2-16 way load.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from . import BenchError

MIB = 1024 * 1024
READY_TIMEOUT_S = 120.0


def free_port() -> int:
    """A TCP port free right now on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_memory_mib(pid: int) -> dict:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process in MiB; empty if unknown."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = {"VmRSS:": "rss_mib", "VmHWM:": "peak_rss_mib"}.get(line.split(" ", 1)[0].split("\t")[0])
            if key:
                out[key] = round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return out


class ServerProcess:
    """``pixforge serve`` in a child process on a free loopback port.

    Args:
        repo: model repository folder.
        config: server config as nested YAML-able dicts (``{"batching": {"max_batch_size": 1}}``);
            host, port and metrics are set here.
        workdir: where the YAML file and the server log go.
        name: label for the log file and error messages.

    Use as a context manager; ``address`` is ``127.0.0.1:PORT`` once :meth:`start` returned.
    """

    def __init__(self, repo: Path, config: dict, workdir: Path, name: str = "server"):
        self.repo = Path(repo)
        self.config = dict(config)
        self.workdir = Path(workdir)
        self.name = name
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"{name}.log"

    def start(self) -> ServerProcess:
        """Start the server and wait until its health check says SERVING.

        Raises:
            BenchError: the server exited or did not become ready (the message quotes its log).
        """
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = {
            **self.config,
            "host": "127.0.0.1",
            "port": self.port,
            "metrics_port": 0,
            "http_port": 0,
            "models": str(self.repo),
            "log_level": self.config.get("log_level", "WARNING"),
        }
        cfg_path = self.workdir / f"{self.name}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        # PIXFORGE_* variables of the caller would silently change the measured config.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIXFORGE_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pixforge.cli", "serve", "--config", str(cfg_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise BenchError(f"{self.name} was not ready within {READY_TIMEOUT_S:.0f} s: {self.log_tail()}")

    def memory(self) -> dict:
        """The server's current and peak RSS (MiB)."""
        return proc_memory_mib(self.proc.pid) if self.proc else {}

    def log_tail(self, lines: int = 8) -> str:
        """The last lines of the server's log (for error messages)."""
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL after 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def base_server_config(threads: int) -> dict:
    """The server settings every suite shares: CPU provider order as shipped, fixed threads,
    the shipped worker count and admission settings."""
    return {
        "engine": {"intra_op_threads": threads},
        "grace_seconds": 2,
    }


# --------------------------------------------------------------------------- payloads and calls


def sample_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image (smooth gradients plus mild noise), so PNG sizes are realistic."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.dstack(
        [128 + 100 * np.sin(x / 37.0), 128 + 90 * np.cos(y / 23.0), 128 + 60 * np.sin((x + y) / 51.0)]
    )
    noise = np.random.default_rng(seed).normal(0, 6, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG-encode with the shared codec (what `pixforge convert` sends)."""
    from pixforge.codec import encode_image

    return encode_image(pixels, fmt="png")


_UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def _call_factory(address: str, stub_class, method: str, request, empty: Callable, timeout: float):
    """A factory of unary calls, one channel per call site (client thread); `empty(reply)` flags
    a reply without output, which is an error for a benchmark."""
    import grpc

    def make() -> Callable:
        channel = grpc.insecure_channel(address, options=_UNLIMITED)
        rpc = getattr(stub_class(channel), method)

        def call():
            reply = rpc(request, timeout=timeout)
            if empty(reply):
                raise BenchError(f"{method} returned no output")
            return reply

        call.channel = channel  # kept alive with the call; closed by the caller's garbage
        return call

    return make


def translate_call(
    address: str, model: str, payload: bytes, timeout: float = 600.0
) -> Callable[[], Callable]:
    """A factory of pixforge.v1 Translate calls (PNG in, PNG out), one channel per call site."""
    from pixforge.v1 import translation_pb2 as pb
    from pixforge.v1 import translation_pb2_grpc as pb_grpc

    request = pb.TranslateRequest(model=model, image=payload, output_format="png")
    return _call_factory(
        address, pb_grpc.ImageTranslationStub, "Translate", request, lambda r: not r.image, timeout
    )


def kserve_raw_call(
    address: str, model: str, batch: np.ndarray, timeout: float = 600.0
) -> Callable[[], Callable]:
    """A factory of KServe v2 ModelInfer calls with the uint8 NHWC tensor in ``raw_input_contents``."""
    from pixforge.kserve.v2 import grpc_service_pb2 as kpb
    from pixforge.kserve.v2 import grpc_service_pb2_grpc as kpb_grpc

    tensor = kpb.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8", shape=list(batch.shape))
    request = kpb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[batch.tobytes()])
    return _call_factory(
        address,
        kpb_grpc.GRPCInferenceServiceStub,
        "ModelInfer",
        request,
        lambda r: not r.raw_output_contents,
        timeout,
    )


# --------------------------------------------------------------------------- closed-loop load


@dataclass
class LoadResult:
    """What :func:`closed_loop` measured at one concurrency level."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0
    first_error: str = ""

    @property
    def images_per_s(self) -> float:
        """Completed calls per second of wall time."""
        return len(self.latencies) / self.wall_s if self.wall_s > 0 else 0.0

    def merge(self, other: LoadResult) -> None:
        """Add another window's figures (interleaved rounds of the same level)."""
        self.latencies += other.latencies
        self.wall_s += other.wall_s
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error


def closed_loop(
    make_call: Callable[[], Callable], concurrency: int, duration: float, min_calls: int = 1
) -> LoadResult:
    """``concurrency`` client threads call back to back for ``duration`` seconds.

    Each thread makes one untimed warm-up call (connection set-up), then all start together.
    Every thread finishes the call it is in when time is up, and at least ``min_calls`` calls.

    Returns:
        Per-call latencies, the wall time of the timed window and the error count.
    """
    calls = [make_call() for _ in range(concurrency)]
    result = LoadResult(concurrency)
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(call: Callable) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - counted and reported, the load goes on
            with lock:
                result.errors += 1
                result.first_error = result.first_error or _short(exc)
        start.wait()
        done = 0
        while done < min_calls or time.perf_counter() < stop_at[0]:
            t = time.perf_counter()
            try:
                call()
            except Exception as exc:  # noqa: BLE001
                with lock:
                    result.errors += 1
                    result.first_error = result.first_error or _short(exc)
                done += 1
                continue
            with lock:
                result.latencies.append(time.perf_counter() - t)
            done += 1

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in calls]
    for th in threads:
        th.start()
    stop_at[0] = time.perf_counter() + 1e9  # set for real once every warm-up call is done
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration
    for th in threads:
        th.join()
    result.wall_s = time.perf_counter() - t0
    for c in calls:
        c.channel.close()
    return result


def _short(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    return (text or type(exc).__name__).splitlines()[0][:200]
