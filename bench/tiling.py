"""Tiling suite: time and peak server memory of x4 super-resolution vs input size (256..4096 px).

A x4 super-resolution generator is exported into a repository and served by a fresh
``pixforge serve`` process per input size, so each size's peak resident memory (``VmHWM``) is
its own. Images larger than the model's tile size go through the service's tiling path
(:mod:`pixforge.service.tiling`: overlapping tiles, batched, blended), so the model's working
memory depends on the tile, not on the image. What must grow with the image are the image
buffers alive at the server's peak, which is the PNG encode of the finished output: the request
PNG twice (the gRPC message, and the bytes the servicer reads out of it: protobuf hands out a copy),
the uint8 output array, and the response PNG twice (the encoder's buffer and the bytes copied out
of it; any encoder that returns Python bytes holds both for a moment). The decoded input is freed
before the encode. The table separates those buffers from the rest ("working memory": tile rows,
onnxruntime's arena, allocator slack), which is the figure that should stay flat.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from pixforge.service.config import MAX_MESSAGE_BYTES

from .report import Plot, SuiteRecord, Table
from .serverproc import MIB, ServerProcess, base_server_config, png_bytes, sample_image, translate_call
from .serving import export_model
from .stats import progress

FLAT_TOLERANCE_MIB = 256  # working memory may grow by this much from the smallest to the largest size
TILE_OVERLAP = 32


def _resolve(settings) -> dict:
    quick = settings.quick
    return {
        "model": (settings.models or ["sr_tiny"])[0],
        "sizes": settings.sizes or ([128, 256] if quick else [256, 512, 1024, 2048, 4096]),
        "threads": settings.resolved_threads(),
        "tile_overlap": TILE_OVERLAP,
    }


def _reps(size: int, quick: bool) -> int:
    return 2 if quick else (3 if size <= 1024 else 1)


def run_suite(settings) -> SuiteRecord:
    """One server per input size; one warm request, then timed requests; peak RSS per server.

    Returns:
        The suite record: time and memory per size, the flatness goal and two plots.
    """
    from pixforge.contract import load_contract
    from pixforge.service.tiling import plan_tiles

    cfg = _resolve(settings)
    record = SuiteRecord(
        suite="tiling",
        title="Tiling: time and peak memory vs image size (x4 super-resolution)",
        description=(
            f"`{cfg['model']}` (random weights) served by a fresh `pixforge serve` process per size "
            f"({cfg['threads']} intra-op threads); one pixforge.v1 Translate request per timing, PNG in "
            "and out. Peak RSS is the server's VmHWM; image buffers = what is alive at the peak (the PNG "
            "encode): 2 x PNG request (gRPC message + the bytes read from it) + output array + 2 x PNG "
            "response (encoder buffer + bytes); working memory = peak - idle - image buffers, which "
            "tiling should keep flat."
        ),
        quick=settings.quick,
        settings=cfg,
    )
    rows, points = [], []
    with tempfile.TemporaryDirectory(prefix="pixforge-bench-tiling-") as tmp:
        repo = Path(tmp) / "repo"
        progress(f"tiling: exporting {cfg['model']}")
        model_path, multiple = export_model(cfg["model"], repo)
        contract = load_contract(model_path)
        scale = contract.scale
        for size in cfg["sizes"]:
            if size % multiple:
                rows.append([size, *[None] * 8, f"skipped: not a multiple of {multiple}"])
                continue
            out_edge = size * scale
            payload = png_bytes(sample_image(size, size, seed=size))
            server_cfg = {
                **base_server_config(cfg["threads"]),
                "tiling": {"tile_overlap": TILE_OVERLAP},
                # room for the largest output (4096 px -> 16384 px = 268 MP) in one message
                "limits": {
                    "max_output_pixels": max(64_000_000, out_edge * out_edge),
                    "max_message_bytes": MAX_MESSAGE_BYTES,
                },
            }
            progress(f"tiling: {size}x{size} -> {out_edge}x{out_edge}")
            with ServerProcess(repo, server_cfg, Path(tmp), f"server{size}") as server:
                idle = server.memory()
                call = translate_call(server.address, cfg["model"], payload, timeout=3600)()
                times, inference_ms, reply_bytes = [], [], 0
                for _ in range(_reps(size, settings.quick)):
                    t = time.perf_counter()
                    reply = call()
                    times.append(time.perf_counter() - t)
                    inference_ms.append(reply.timing.inference_ms)
                    reply_bytes = len(reply.image)
                    del reply
                peak = server.memory()
                call.channel.close()
            plan = plan_tiles(
                size,
                size,
                tile=contract.tile_size,
                overlap=TILE_OVERLAP,
                size_multiple=multiple,
                bucket=64,
                scale=scale,
            )
            # The buffers alive at the peak (the encode): see the module docstring.
            buffers = (2 * len(payload) + out_edge * out_edge * 3 + 2 * reply_bytes) / MIB
            idle_mib, peak_mib = idle.get("peak_rss_mib"), peak.get("peak_rss_mib")
            working = peak_mib - idle_mib - buffers if idle_mib and peak_mib else None
            t_med = statistics.median(times)
            rows.append(
                [
                    size,
                    out_edge,
                    plan.n_tiles,
                    round(t_med, 3),
                    round(statistics.median(inference_ms) / 1000, 3),
                    idle_mib,
                    peak_mib,
                    round(buffers, 1),
                    None if working is None else round(working, 1),
                    "",
                ]
            )
            points.append((size, t_med, peak_mib, working, buffers))
            record.results.append(
                {
                    "size": size,
                    "output": out_edge,
                    "tiles": plan.n_tiles,
                    "times_s": times,
                    "inference_ms": inference_ms,
                    "idle": idle,
                    "peak": peak,
                    "image_buffers_mib": buffers,
                    "request_png_bytes": len(payload),
                    "reply_png_bytes": reply_bytes,
                    "working_mib": working,
                }
            )
    record.tables.append(
        Table(
            "Time and server memory per input size",
            [
                "input px",
                "output px",
                "tiles",
                "time s",
                "inference s",
                "idle RSS MiB",
                "peak RSS MiB",
                "image buffers MiB",
                "working MiB",
                "note",
            ],
            rows,
            f"tile {contract.tile_size} px (the model's metadata), overlap {TILE_OVERLAP} px; "
            "time = median client wall time per request",
        )
    )
    measured = [p for p in points if p[3] is not None]
    if len(measured) >= 2:
        growth = measured[-1][3] - measured[0][3]
        record.goals.append(
            {
                "goal": f"working memory flat across sizes (growth <= {FLAT_TOLERANCE_MIB} MiB)",
                "value": f"{measured[0][3]:.0f} MiB at {measured[0][0]} px, "
                f"{measured[-1][3]:.0f} MiB at {measured[-1][0]} px",
                "met": bool(growth <= FLAT_TOLERANCE_MIB),
                "detail": f"growth {growth:.0f} MiB",
            }
        )
    else:
        record.goals.append(
            {
                "goal": "working memory flat across sizes",
                "value": None,
                "met": None,
                "detail": "fewer than two sizes measured",
            }
        )
    if settings.extra.get("invariance", not settings.quick):  # 12 server starts: not a smoke run
        from .tiling_invariance import run_invariance

        run_invariance(record, settings, cfg["threads"], int(settings.extra.get("invariance_size", 1536)))
    if points:
        xs = [p[0] for p in points]
        record.plots.append(
            Plot(
                "tiling_memory.png",
                "Server peak memory vs input size",
                "input edge (px)",
                "MiB",
                [
                    {"label": "peak RSS", "x": xs, "y": [p[2] for p in points]},
                    {"label": "image buffers", "x": xs, "y": [round(p[4], 1) for p in points]},
                    {
                        "label": "working memory",
                        "x": xs,
                        "y": [None if p[3] is None else round(p[3], 1) for p in points],
                    },
                ],
                logx=True,
            )
        )
        record.plots.append(
            Plot(
                "tiling_time.png",
                "Time per request vs input size",
                "input edge (px)",
                "seconds",
                [{"label": "request", "x": xs, "y": [round(p[1], 4) for p in points]}],
                logx=True,
                logy=True,
            )
        )
    return record
