"""Tiling suite, part 2: does tiled output equal whole-image output, for each shipped model?

For every model of a repository (default: the bundled ``models/``), one photo is translated by a
fresh ``pixforge serve`` process twice: with the model's own tile size (the default path), and with
a tile large enough to hold the whole image. The table gives both times, both peak server
memories (VmHWM, one process each) and the difference of the two outputs in grey levels (mean and
99th percentile; the goal is <= 1 and <= 6 for fp32 models). Colourisation models are rendered at
``render_size`` by design; their request sets ``render_size`` to the image so the tiles are real.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from pixforge.service.config import MAX_MESSAGE_BYTES

from .report import SuiteRecord, Table
from .serverproc import ServerProcess, base_server_config, png_bytes, sample_image
from .stats import progress

GOAL_MEAN, GOAL_P99 = 1.0, 6.0
WHOLE_TILE = 2048  # the largest tile a request may ask for (tiling.max_tile_size)


def _photo(path: str | None, size: int) -> tuple[np.ndarray, str]:
    if not path:
        return sample_image(size, size, seed=7), f"synthetic {size}x{size} image"
    import cv2

    from pixforge.codec import decode_image, to_channels

    pixels = to_channels(decode_image(Path(path).read_bytes()).pixels, 3)
    interp = cv2.INTER_AREA if min(pixels.shape[:2]) > size else cv2.INTER_CUBIC
    resized = cv2.resize(pixels, (size, size), interpolation=interp)
    return resized, f"{Path(path).name} resized to {size}x{size}"


def _translate(address: str, model: str, payload: bytes, tile: int, render: int):
    import grpc

    from pixforge.v1 import translation_pb2 as pb
    from pixforge.v1 import translation_pb2_grpc as pb_grpc

    options = pb.TranslateOptions(tile_size=tile, render_size=render)
    request = pb.TranslateRequest(model=model, image=payload, output_format="png", options=options)
    unlimited = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(address, options=unlimited) as channel:
        start = time.perf_counter()
        reply = pb_grpc.ImageTranslationStub(channel).Translate(request, timeout=3600)
        return reply, time.perf_counter() - start


def _tile_count(contract, size: int, tile: int, render: int) -> int:
    """Tiles of one request, planned as the server plans them (the reply does not carry it)."""
    from pixforge.service.tiling import plan_tiles

    if contract.task == "colorization" and not render:
        return 1
    plan = plan_tiles(
        size,
        size,
        tile=tile,
        overlap=32,
        size_multiple=contract.size_multiple,
        bucket=64,
        scale=contract.scale,
        radius=contract.receptive_radius,
    )
    return plan.n_tiles


def run_invariance(record: SuiteRecord, settings, threads: int, size: int) -> None:
    """Append the per-model tiled-vs-whole table and goal to ``record``."""
    from pixforge.codec import decode_image
    from pixforge.contract import load_contract
    from pixforge.repository import default_repository, latest_versions, scan_repository

    repo = Path(settings.extra.get("repo") or default_repository())
    image, label = _photo(settings.extra.get("image"), size)
    payload = png_bytes(image)
    rows, results = [], []
    latest = latest_versions(scan_repository(repo))
    with tempfile.TemporaryDirectory(prefix="pixforge-bench-invariance-") as tmp:
        for name in settings.extra.get("invariance_models") or sorted(latest):
            if name not in latest:
                continue
            version = latest[name].version
            contract = load_contract(latest[name].path)
            render = size if contract.task == "colorization" else 0
            outputs, times, peaks, tiles = {}, {}, {}, {}
            for mode, tile in (("tiled", 0), ("whole", WHOLE_TILE)):
                progress(f"tiling: {name} {size}x{size} {mode}")
                limits = {"max_message_bytes": MAX_MESSAGE_BYTES}
                server_cfg = {**base_server_config(threads), "limits": limits}
                with ServerProcess(repo, server_cfg, Path(tmp), f"{name}-{mode}") as server:
                    reply, seconds = _translate(server.address, name, payload, tile, render)
                    peaks[mode] = server.memory().get("peak_rss_mib")
                outputs[mode] = decode_image(reply.image).pixels.astype(np.int16)
                times[mode] = seconds
                tiles[mode] = _tile_count(contract, size, tile or contract.tile_size, render)
            diff = np.abs(outputs["tiled"] - outputs["whole"])
            mean, p99 = float(diff.mean()), float(np.percentile(diff, 99))
            rows.append(
                [
                    name,
                    contract.version,
                    len(contract.norm_channels),
                    contract.receptive_radius or None,
                    tiles["tiled"],
                    round(times["tiled"], 2),
                    round(times["whole"], 2),
                    peaks["tiled"],
                    peaks["whole"],
                    round(mean, 3),
                    round(p99, 1),
                    int(diff.max()),
                ]
            )
            results.append(
                {
                    "model": name,
                    "version": version,
                    "contract": contract.version,
                    "precision": contract.metadata.get("precision"),
                    "norm_layers": len(contract.norm_channels),
                    "tiles": tiles["tiled"],
                    "time_tiled_s": times["tiled"],
                    "time_whole_s": times["whole"],
                    "peak_rss_tiled_mib": peaks["tiled"],
                    "peak_rss_whole_mib": peaks["whole"],
                    "diff_mean": mean,
                    "diff_p99": p99,
                    "diff_max": int(diff.max()),
                }
            )
    record.results.append({"invariance": results, "image": label})
    record.tables.append(
        Table(
            f"Tiled vs whole-image output per model ({label})",
            [
                "model",
                "contract",
                "norm layers",
                "receptive radius px",
                "tiles",
                "tiled s",
                "whole s",
                "tiled peak RSS MiB",
                "whole peak RSS MiB",
                "mean abs diff",
                "p99 abs diff",
                "max abs diff",
            ],
            rows,
            "tiled = the model's own tile size and the server's default tiling.norm_statistics (exact); "
            f"whole = tile_size {WHOLE_TILE}; one fresh server per run, so each peak is its own. "
            "Colourisation requests set render_size to the image size.",
        )
    )
    fp32 = [r for r in results if r["precision"] != "fp16"]
    worst = max(fp32, key=lambda r: r["diff_p99"], default=None)
    record.goals.append(
        {
            "goal": f"tiled = whole: mean <= {GOAL_MEAN}, p99 <= {GOAL_P99} grey levels (fp32 models)",
            "value": None
            if worst is None
            else f"worst: {worst['model']} mean {worst['diff_mean']:.2f}, p99 {worst['diff_p99']:.0f}",
            "met": None
            if worst is None
            else all(r["diff_mean"] <= GOAL_MEAN and r["diff_p99"] <= GOAL_P99 for r in fp32),
            "detail": "; ".join(f"{r['model']}: {r['diff_mean']:.2f} / {r['diff_p99']:.0f}" for r in results),
        }
    )
