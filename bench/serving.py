"""Serving suite: the real gRPC server under 1-16 concurrent clients vs the raw onnxruntime session.

One generator is exported with the real exporter into a temporary model repository and served by
``pixforge serve`` in a child process (shipped batching settings, ``--threads`` intra-op threads).
Client threads call pixforge.v1 ``Translate`` with a PNG (decode, inference, PNG encode on the
server) and KServe v2 ``ModelInfer`` with the uint8 tensor in ``raw_input_contents`` (no image
codec). The baseline is the same model.onnx in a raw :class:`~pixforge.service.engine.Engine`
(the server's own session options and threads) called back to back in this process. Rounds are
interleaved (raw, then each protocol and concurrency level) so every figure sees the same load.
Goal: the best served throughput reaches >= 90 % of the raw session's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .report import Plot, SuiteRecord, Table
from .serverproc import (
    LoadResult,
    ServerProcess,
    base_server_config,
    closed_loop,
    kserve_raw_call,
    png_bytes,
    sample_image,
    translate_call,
)
from .stats import progress, summarize

GOAL_FRACTION = 0.90
PROTOCOLS = ("translate_png", "kserve_raw")


def resolve(settings, full_model: str = "facades") -> dict:
    """The suite's settings after defaults (shared with the batching suite)."""
    quick = settings.quick
    return {
        "model": (settings.models or ["unet_tiny" if quick else full_model])[0],
        "size": (settings.sizes or [64 if quick else 256])[0],
        "concurrency": settings.concurrency or ([1, 4] if quick else [1, 2, 4, 8, 16]),
        "duration": settings.duration or (1.0 if quick else 10.0),
        "rounds": settings.rounds or (1 if quick else 3),
        "threads": settings.resolved_threads(),
    }


def export_model(name: str, repo: Path) -> tuple[Path, int]:
    """Export catalogue model ``name`` into ``repo``; returns (model.onnx, size multiple)."""
    from .models import build, export_served, model_specs

    spec = model_specs([name])[0]
    generator = build(spec)
    return export_served(generator, spec, repo), int(generator.size_multiple)


def check_size(size: int, multiple: int, model: str) -> None:
    """Reject image sizes the model cannot take without padding (the figures would mix in padding)."""
    if size % multiple:
        raise ValueError(f"--sizes: {size} is not a multiple of {model}'s size multiple {multiple}")


def raw_engine_call(model_path: Path, threads: int, batch: np.ndarray):
    """The raw session (server's Engine class and options) as a no-argument call."""
    from pixforge.service.config import EngineConfig
    from pixforge.service.engine import Engine

    engine = Engine(model_path, EngineConfig(intra_op_threads=threads), name="raw")
    return lambda: engine.run(batch)


def timed_window(fn, duration: float) -> LoadResult:
    """Sequential calls of ``fn`` for ``duration`` seconds, as a concurrency-1 LoadResult."""
    out = LoadResult(1)
    fn()  # warm-up
    t0 = time.perf_counter()
    end = t0 + duration
    while not out.latencies or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        out.latencies.append(time.perf_counter() - t)
    out.wall_s = time.perf_counter() - t0
    return out


def latency_plot(file: str, title: str, results: dict[str, dict[int, LoadResult]]) -> Plot:
    """p50 and p99 latency vs concurrency, one line pair per label."""
    series = []
    for label, by_c in results.items():
        xs = sorted(by_c)
        for q, key in ((50, "p50_ms"), (99, "p99_ms")):
            series.append(
                {"label": f"{label} p{q}", "x": xs, "y": [summarize(by_c[c].latencies).get(key) for c in xs]}
            )
    return Plot(file, title, "concurrent clients", "latency (ms)", series, logx=True, logy=True)


def throughput_plot(
    file: str,
    title: str,
    results: dict[str, dict[int, LoadResult]],
    baseline: float | None = None,
    baseline_label: str = "",
) -> Plot:
    """Throughput vs concurrency, one line per label (plus a flat baseline line)."""
    series = []
    for label, by_c in results.items():
        xs = sorted(by_c)
        series.append({"label": label, "x": xs, "y": [round(by_c[c].images_per_s, 3) for c in xs]})
    if baseline is not None and series:
        xs = sorted({x for s in series for x in s["x"]})
        series.append({"label": baseline_label, "x": xs, "y": [round(baseline, 3)] * len(xs)})
    return Plot(file, title, "concurrent clients", "images/s", series, logx=True)


def load_rows(label: str, by_c: dict[int, LoadResult], reference: float | None) -> list[list]:
    """Table rows: one per concurrency level."""
    rows = []
    for c in sorted(by_c):
        r = by_c[c]
        s = summarize(r.latencies)
        pct = 100 * r.images_per_s / reference if reference else None
        rows.append(
            [
                label,
                c,
                round(r.images_per_s, 3),
                s.get("p50_ms"),
                s.get("p99_ms"),
                len(r.latencies),
                r.errors,
                None if pct is None else round(pct, 1),
                r.first_error or "",
            ]
        )
    return rows


LOAD_COLUMNS = [
    "path",
    "clients",
    "images/s",
    "p50 ms",
    "p99 ms",
    "calls",
    "errors",
    "% of raw",
    "first error",
]


def run_suite(settings) -> SuiteRecord:
    """Serve one model and sweep client concurrency on both protocols, against the raw session.

    Returns:
        The suite record (table per protocol and level, goal, latency and throughput plots).
    """
    cfg = resolve(settings)
    record = SuiteRecord(
        suite="serving",
        title="Serving: gRPC server vs the raw onnxruntime session",
        description=(
            f"`pixforge serve` in its own process serving `{cfg['model']}` (random weights, exported with "
            f"the real exporter), {cfg['size']}x{cfg['size']} RGB images, shipped batching settings, "
            f"{cfg['threads']} intra-op threads. `translate_png`: pixforge.v1 Translate with a PNG (server "
            "decodes, infers, encodes PNG); `kserve_raw`: KServe v2 ModelInfer with raw uint8 tensor bytes. "
            "`raw`: the same model.onnx in the server's Engine class, called back to back in one thread. "
            f"Goal: best served throughput >= {GOAL_FRACTION:.0%} of raw."
        ),
        quick=settings.quick,
        settings=cfg,
    )
    image = sample_image(cfg["size"], cfg["size"])
    payload = png_bytes(image)
    batch = image[None]
    with tempfile.TemporaryDirectory(prefix="pixforge-bench-serving-") as tmp:
        repo = Path(tmp) / "repo"
        progress(f"serving: exporting {cfg['model']}")
        model_path, multiple = export_model(cfg["model"], repo)
        check_size(cfg["size"], multiple, cfg["model"])
        raw_call = raw_engine_call(model_path, cfg["threads"], batch)
        raw = LoadResult(1)
        served: dict[str, dict[int, LoadResult]] = {p: {} for p in PROTOCOLS}
        with ServerProcess(repo, base_server_config(cfg["threads"]), Path(tmp), "server") as server:
            makers = {
                "translate_png": translate_call(server.address, cfg["model"], payload),
                "kserve_raw": kserve_raw_call(server.address, cfg["model"], batch),
            }
            per = cfg["duration"] / cfg["rounds"]
            for r in range(cfg["rounds"]):
                progress(f"serving: round {r + 1}/{cfg['rounds']}")
                raw.merge(timed_window(raw_call, per))
                for proto in PROTOCOLS:
                    for c in cfg["concurrency"]:
                        res = closed_loop(makers[proto], c, per)
                        served[proto].setdefault(c, LoadResult(c)).merge(res)
            record.results.append({"server_memory_mib": server.memory()})
    raw_ips = raw.images_per_s
    raw_s = summarize(raw.latencies)
    rows = [["raw", 1, round(raw_ips, 3), raw_s["p50_ms"], raw_s["p99_ms"], len(raw.latencies), 0, 100.0, ""]]
    for proto in PROTOCOLS:
        rows += load_rows(proto, served[proto], raw_ips)
    record.tables.append(
        Table(
            "Throughput and latency vs concurrent clients",
            LOAD_COLUMNS,
            rows,
            "% of raw: served images/s / raw session images/s, measured in the same run",
        )
    )
    for proto in PROTOCOLS:
        for c, res in served[proto].items():
            record.results.append(
                {
                    "protocol": proto,
                    "concurrency": c,
                    "images_per_s": res.images_per_s,
                    "errors": res.errors,
                    **summarize(res.latencies),
                }
            )
    record.results.append({"protocol": "raw", "images_per_s": raw_ips, **raw_s})
    for proto in PROTOCOLS:
        best_c = max(served[proto], key=lambda c: served[proto][c].images_per_s)
        frac = served[proto][best_c].images_per_s / raw_ips if raw_ips else 0.0
        record.goals.append(
            {
                "goal": f"{proto}: served >= {GOAL_FRACTION:.0%} of raw onnxruntime at the best concurrency",
                "value": f"{frac:.0%} at {best_c} clients",
                "met": bool(frac >= GOAL_FRACTION),
                "detail": f"{served[proto][best_c].images_per_s:.2f} vs {raw_ips:.2f} images/s",
            }
        )
    errors = sum(r.errors for p in PROTOCOLS for r in served[p].values())
    if errors:
        record.notes.append(f"{errors} calls failed; the first error of each level is in the table")
    record.plots.append(latency_plot("serving_latency.png", "Served latency vs concurrency", served))
    record.plots.append(
        throughput_plot(
            "serving_throughput.png",
            "Served throughput vs concurrency",
            served,
            raw_ips,
            "raw onnxruntime (1 thread of calls)",
        )
    )
    return record
