"""`pixforge bench overload`: the real server past its capacity (goodput, refusals, memory, waste).

For one bundled model (default ``sr-x4`` from ``--repo``, default ``models/``) and two image sizes
(small and large LR inputs), in a ``pixforge serve`` subprocess with the shipped defaults:

1. **Capacity**: closed-loop clients at 1, 2 and 4 in flight; the best images/s is the capacity.
2. **Overload**: open-loop arrivals (Poisson) at 2x and 4x that capacity for ``--duration``
   seconds, every call with a deadline of ``DEADLINE_FACTOR`` x the single-client latency (at
   least 1 s). Reported: goodput (successful images/s as a fraction of capacity), the share
   refused (RESOURCE_EXHAUSTED) and expired (DEADLINE_EXCEEDED), refusal latency p50/p99, the
   server's RSS sampled during the run, and the server's **CPU seconds after the last caller's
   deadline** (measured from /proc over the next seconds; an idle server's baseline is subtracted):
   work done for callers who had already gone.

Calls are asynchronous gRPC futures fired by one scheduler thread, so arrivals do not wait for
answers (a closed loop would slow its own arrivals and hide overload). Nothing here asserts a
timing; the goals are printed with the figures.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from pixforge.repository import single_model_repository

from . import BenchError
from .report import SuiteRecord, Table
from .serverproc import ServerProcess, closed_loop, png_bytes, sample_image, translate_call
from .stats import percentile, progress

DEFAULT_MODEL = "sr-x4"
DEFAULT_SIZES = (64, 192)  # LR edges: small and large requests
QUICK_SIZES = (32,)
OVERLOAD_FACTORS = (2, 4)
DEADLINE_FACTOR = 8.0
AFTER_WINDOW_S = 3.0
GOALS = {"goodput_2x": 0.80, "refusal_p99_ms": 50.0, "cpu_after_deadline_s": 0.05}


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process in seconds (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _repo_with(model: str, source: Path, tmp: Path) -> Path:
    """A repository holding only ``model`` (links to the source's files, so nothing is copied)."""
    if not (source / model).is_dir():
        raise BenchError(f"model {model!r} is not in {source}: pass --repo or --models")
    return single_model_repository(source, model, tmp)


def open_loop(
    address: str, model: str, payload: bytes, rate: float, duration: float, deadline: float, seed: int
):
    """Poisson arrivals at ``rate``/s for ``duration`` s; returns per-call (code, latency) and end time."""
    import grpc

    from pixforge.v1 import translation_pb2 as pb
    from pixforge.v1 import translation_pb2_grpc as pb_grpc

    channels = [
        grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", -1)]) for _ in range(4)
    ]
    stubs = [pb_grpc.ImageTranslationStub(c) for c in channels]
    request = pb.TranslateRequest(model=model, image=payload, output_format="png")
    rng = np.random.default_rng(seed)
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    pending = []
    start = time.perf_counter()
    t = start
    i = 0
    while t - start < duration:
        t += rng.exponential(1.0 / rate)
        delay = t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter()
        future = stubs[i % len(stubs)].Translate.future(request, timeout=deadline)
        i += 1

        def done(f, sent=sent):
            code = f.code().name if f.exception() is not None else "OK"
            with lock:
                results.append((code, time.perf_counter() - sent))

        future.add_done_callback(done)
        pending.append(future)
    last_deadline = time.perf_counter() + deadline
    for f in pending:
        try:
            f.result()
        except Exception:  # noqa: BLE001 - the code is recorded by the callback
            pass
    time.sleep(0.05)
    for c in channels:
        c.close()
    return results, last_deadline, len(pending)


def run_suite(settings) -> SuiteRecord:
    """Capacity, then 2x and 4x overload, per image size."""
    from pixforge.repository import default_repository

    model = (settings.models or [DEFAULT_MODEL])[0]
    sizes = settings.sizes or list(QUICK_SIZES if settings.quick else DEFAULT_SIZES)
    duration = settings.duration or (2.0 if settings.quick else 10.0)
    source = Path(settings.extra.get("repo") or default_repository())
    threads = settings.resolved_threads()
    record = SuiteRecord(
        suite="overload",
        title="Overload: goodput, refusals and memory past capacity",
        description=(
            f"`pixforge serve` (shipped defaults, {threads} intra-op threads) serving `{model}`; PNG "
            "Translate calls. Capacity = best closed-loop images/s at 1, 2 or 4 clients; overload = "
            f"Poisson arrivals at {' and '.join(f'{f}x' for f in OVERLOAD_FACTORS)} capacity for "
            f"{duration:g} s, each call with a deadline of {DEADLINE_FACTOR:g}x the one-client latency "
            "(>= 1 s). Goodput = successful images/s / capacity. CPU after deadline = the server's CPU "
            f"seconds in the {AFTER_WINDOW_S:g} s after the last caller's deadline, minus an idle baseline."
        ),
        quick=settings.quick,
        settings={"model": model, "sizes": sizes, "duration_s": duration, "threads": threads},
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="pixforge-bench-overload-") as tmp:
        repo = _repo_with(model, source, Path(tmp))
        config = {"engine": {"intra_op_threads": threads}, "grace_seconds": 2}
        with ServerProcess(repo, config, Path(tmp), "server") as server:
            pid = server.proc.pid
            t0 = _cpu_seconds(pid)
            time.sleep(AFTER_WINDOW_S)
            idle_cpu = _cpu_seconds(pid) - t0
            for size in sizes:
                payload = png_bytes(sample_image(size, size, seed=size))
                make = translate_call(server.address, model, payload)
                capacity, one_latency = 0.0, None
                for c in (1, 2, 4):
                    progress(f"overload: {size}px capacity at {c} clients")
                    res = closed_loop(make, c, max(1.0, duration / 3))
                    if c == 1 and res.latencies:
                        one_latency = float(np.median(res.latencies))
                    capacity = max(capacity, res.images_per_s)
                if capacity <= 0 or one_latency is None:
                    raise BenchError(f"no successful call at {size}px: {res.first_error}")
                deadline = max(1.0, DEADLINE_FACTOR * one_latency)
                rows.append([f"{size}px", "capacity", round(capacity, 2), 1.0, "", "", "", "", "", ""])
                for factor in OVERLOAD_FACTORS:
                    progress(f"overload: {size}px at {factor}x capacity")
                    rss: list[float] = []
                    stop = threading.Event()

                    def sample(rss=rss, stop=stop):
                        while not stop.wait(0.25):
                            rss.append(_rss_mib(pid))

                    sampler = threading.Thread(target=sample, daemon=True)
                    sampler.start()
                    results, last_deadline, sent = open_loop(
                        server.address, model, payload, factor * capacity, duration, deadline, seed=factor
                    )
                    wait = last_deadline - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    c0 = _cpu_seconds(pid)
                    time.sleep(AFTER_WINDOW_S)
                    after = max(0.0, _cpu_seconds(pid) - c0 - idle_cpu)
                    stop.set()
                    sampler.join()
                    ok = [lat for code, lat in results if code == "OK"]
                    refused = [lat for code, lat in results if code == "RESOURCE_EXHAUSTED"]
                    expired = sum(1 for code, _ in results if code == "DEADLINE_EXCEEDED")
                    other = len(results) - len(ok) - len(refused) - expired
                    goodput = len(ok) / duration / capacity
                    row = [
                        f"{size}px",
                        f"{factor}x",
                        round(len(ok) / duration, 2),
                        round(goodput, 3),
                        f"{len(refused)}/{sent}",
                        f"{expired}/{sent}" + (f" (+{other} other)" if other else ""),
                        round(1000 * percentile(refused, 50), 1) if refused else "",
                        round(1000 * percentile(refused, 99), 1) if refused else "",
                        f"{min(rss):.0f}-{max(rss):.0f}" if rss else "",
                        round(after, 2),
                    ]
                    rows.append(row)
                    record.results.append(
                        {
                            "size": size,
                            "factor": factor,
                            "capacity_images_per_s": capacity,
                            "deadline_s": deadline,
                            "sent": sent,
                            "ok": len(ok),
                            "refused": len(refused),
                            "expired": expired,
                            "other": other,
                            "goodput": goodput,
                            "ok_p50_ms": 1000 * percentile(ok, 50) if ok else None,
                            "refusal_p50_ms": 1000 * percentile(refused, 50) if refused else None,
                            "refusal_p99_ms": 1000 * percentile(refused, 99) if refused else None,
                            "rss_mib": rss,
                            "cpu_after_deadline_s": after,
                        }
                    )
            record.results.append({"server_memory_mib": server.memory(), "idle_cpu_s": idle_cpu})
    record.tables.append(
        Table(
            "Goodput past capacity",
            [
                "image",
                "load",
                "ok images/s",
                "goodput",
                "refused",
                "expired",
                "refusal p50 ms",
                "refusal p99 ms",
                "server RSS MiB",
                "CPU s after deadline",
            ],
            rows,
            "goodput: successful images/s / capacity; refused: RESOURCE_EXHAUSTED at once (admission); "
            "expired: DEADLINE_EXCEEDED",
        )
    )
    twos = [r for r in record.results if r.get("factor") == 2]
    if twos:
        worst = min(r["goodput"] for r in twos)
        record.goals.append(
            {
                "goal": f"goodput at 2x overload >= {GOALS['goodput_2x']:.0%} of capacity",
                "value": round(worst, 3),
                "met": worst >= GOALS["goodput_2x"],
                "detail": "worst image size",
            }
        )
    p99s = [r["refusal_p99_ms"] for r in twos if r.get("refusal_p99_ms") is not None]
    if p99s:
        record.goals.append(
            {
                "goal": f"refusal p99 < {GOALS['refusal_p99_ms']:g} ms at 2x overload",
                "value": round(max(p99s), 1),
                "met": max(p99s) < GOALS["refusal_p99_ms"],
                "detail": "worst image size (4x is in the table)",
            }
        )
    afters = [r["cpu_after_deadline_s"] for r in record.results if "cpu_after_deadline_s" in r]
    if afters:
        record.goals.append(
            {
                "goal": "no CPU spent after the callers' deadlines",
                "value": round(max(afters), 2),
                "met": max(afters) <= GOALS["cpu_after_deadline_s"],
                "detail": f"worst case, CPU seconds in {AFTER_WINDOW_S:g} s (idle baseline subtracted)",
            }
        )
    return record
