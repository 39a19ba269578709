"""Where the time goes inside one inference: onnxruntime's and PyTorch's per-operator profiles.

:func:`ort_op_profile` runs a session with ``enable_profiling`` and sums the kernel time of every
node per operator type over the timed runs (warm-up runs are excluded by their ``model_run``
window); :func:`torch_op_profile` does the same with ``torch.profiler`` (self CPU time per aten
op). The engine suite puts both side by side to explain a gap between the two runtimes.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np


def ort_op_profile(
    model_path: Path,
    make_options: Callable[[], object],
    feed: dict[str, np.ndarray],
    *,
    runs: int = 3,
    warmup: int = 1,
    providers: list | None = None,
) -> dict:
    """Per-operator-type kernel time of an onnxruntime session.

    Args:
        model_path: the ONNX file.
        make_options: returns fresh ``SessionOptions`` (profiling is switched on here).
        feed: the input dict for ``session.run``.
        runs: timed runs averaged; warmup: runs before them, left out of the sums.
        providers: provider list (default CPU).

    Returns:
        ``{"run_ms": mean model_run time, "ops": [{"op", "ms", "share", "nodes"}], "providers": {...}}``,
        ops sorted by time, ``share`` of the summed kernel time.
    """
    import onnxruntime as ort

    options = make_options()
    with tempfile.TemporaryDirectory(prefix="pixforge-prof-") as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
        )
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs_ev = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[-runs:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in runs_ev]
    per_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    by_provider: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not any(a <= e["ts"] <= b for a, b in windows):
            continue
        args = e.get("args", {})
        op = args.get("op_name", "?")
        per_op[op] += e["dur"]
        nodes[op].add(e["name"])
        by_provider[args.get("provider", "?")] += e["dur"]
    total = sum(per_op.values()) or 1.0
    n = max(1, len(windows))
    ops = [
        {"op": op, "ms": round(us / n / 1000, 3), "share": round(us / total, 4), "nodes": len(nodes[op])}
        for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])
    ]
    run_ms = sum(b - a for a, b in windows) / n / 1000 if windows else float("nan")
    return {
        "run_ms": round(run_ms, 3),
        "kernel_ms": round(total / n / 1000, 3),
        "ops": ops,
        "providers": {k: round(v / total, 4) for k, v in by_provider.items()},
    }


def torch_op_profile(fn: Callable[[], object], *, runs: int = 3, warmup: int = 1) -> dict:
    """Self CPU time per aten operator of ``fn`` (a no-grad forward call), averaged over runs.

    Returns:
        ``{"run_ms", "ops": [{"op", "ms", "share", "calls"}]}`` sorted by time.
    """
    import time

    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    # Wall time without the profiler attached (its start-up and per-op hooks would inflate it).
    t = time.perf_counter()
    for _ in range(runs):
        fn()
    wall = (time.perf_counter() - t) / runs
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    rows = []
    for ev in prof.key_averages():
        self_us = ev.self_cpu_time_total
        if self_us <= 0:
            continue
        rows.append((ev.key, self_us, ev.count))
    total = sum(r[1] for r in rows) or 1.0
    return {
        "run_ms": round(wall * 1000, 3),
        "ops": [
            {"op": k, "ms": round(us / runs / 1000, 3), "share": round(us / total, 4), "calls": c // runs}
            for k, us, c in sorted(rows, key=lambda r: -r[1])
        ],
    }
