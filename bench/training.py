"""Training suite: pix2pix and CycleGAN training throughput (images/s) through the real loop.

Each case runs :func:`pixforge.training.loop.train` (the same function `pixforge train` calls)
for a few steps on a synthetic dataset written to a temporary folder, with validation, samples
and intermediate checkpoints switched off, and reads the per-step ``img_per_s`` the loop writes to
``stats.jsonl`` (benchmarks read the JSONL files, not stdout, whose wording may change). The first steps are
warm-up and left out. Data loading runs in the main process (``num_workers`` 0), so the figure
includes decoding and augmentation, as a 1-process run does.

Cases: our shipped configs (``facades.yaml``, ``style_translation.yaml``) and their junyanz
full-size variants (ngf/ndf 64, ``unet_256`` / ``resnet_9blocks``) at 256x256 (``--quick``: the
shipped configs at 64x64). On a CUDA machine each case also runs with AMP (bf16) and
channels_last, and GPU utilisation is sampled with ``nvidia-smi`` while it trains.
"""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .report import SuiteRecord, Table
from .stats import progress

CONFIG_DIR = Path(__file__).resolve().parent.parent / "training" / "configs"
# junyanz's sizes and his transposed-convolution upsampling (our presets use resize + conv)
JUNYANZ_PIX2PIX = [
    "generator.ngf=64",
    "generator.depth=8",
    "discriminator.ndf=64",
    "generator.upsample_conv=transpose",
]
JUNYANZ_CYCLEGAN = [
    "generator.ngf=64",
    "generator.n_blocks=9",
    "discriminator.ndf=64",
    "generator.upsample_conv=transpose",
]


def _cases(quick: bool) -> list[dict]:
    cases = [
        {"name": "pix2pix facades.yaml", "config": "facades", "overrides": []},
        {"name": "cyclegan style_translation.yaml", "config": "style_translation", "overrides": []},
    ]
    if not quick:
        cases.insert(
            1, {"name": "pix2pix junyanz unet_256", "config": "facades", "overrides": JUNYANZ_PIX2PIX}
        )
        cases.append(
            {
                "name": "cyclegan junyanz resnet_9blocks",
                "config": "style_translation",
                "overrides": JUNYANZ_CYCLEGAN,
            }
        )
    return cases


def _resolve(settings) -> dict:
    quick = settings.quick
    return {
        "size": (settings.sizes or [64 if quick else 256])[0],
        "steps": settings.steps or (2 if quick else 10),
        "warmup_steps": 1 if quick else 2,
        "batches": settings.batches or [1],
        "workers": settings.workers or [0],
        "images": max(4 if quick else 8, 2 * max(settings.batches or [1])),
        "threads": settings.resolved_threads(),
        "cases": [c["name"] for c in _cases(quick)],
    }


def _smooth(rng: np.random.Generator, size: int) -> np.ndarray:
    import cv2

    noise = cv2.GaussianBlur(rng.random((size, size, 3), dtype=np.float32), (0, 0), 3.0)
    lo, hi = noise.min(), noise.max()
    return np.round((noise - lo) / max(1e-6, hi - lo) * 255).astype(np.uint8)


def write_datasets(root: Path, size: int, n: int) -> dict[str, Path]:
    """Synthetic aligned (A|B pairs) and unaligned (trainA/trainB) datasets of ``n`` images each."""
    import cv2

    rng = np.random.default_rng(0)
    aligned, unaligned = root / "aligned", root / "unaligned"
    for i in range(n):
        a = _smooth(rng, size)
        (aligned / "train").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(aligned / "train" / f"{i}.png"), np.concatenate([a, 255 - a], axis=1))
        for side in ("A", "B"):
            (unaligned / f"train{side}").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(unaligned / f"train{side}" / f"{i}.png"), _smooth(rng, size))
    return {"pix2pix": aligned, "cyclegan": unaligned}


class GpuSampler:
    """Samples ``nvidia-smi`` GPU utilisation every half second in a thread (no-op without it)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._smi = shutil.which("nvidia-smi")
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(
                    [self._smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                ).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return

    def __enter__(self) -> GpuSampler:
        if self._smi:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(6)

    @property
    def mean(self) -> float | None:
        """Mean utilisation in percent (None without samples)."""
        return round(statistics.mean(self.samples), 1) if self.samples else None


def run_case(
    case: dict,
    variant: dict,
    cfg: dict,
    data: dict[str, Path],
    workdir: Path,
    batch: int = 1,
    workers: int = 0,
) -> dict:
    """Train one case at ``batch`` images per step, loading with ``workers`` processes, for
    warm-up + measured steps; return its figures."""
    from pixforge.training.config import load_config
    from pixforge.training.loop import train

    size = cfg["size"]
    overrides = [
        *case["overrides"],
        f"data.crop_size={size}",
        f"data.load_size={size}",
        "data.val_holdout=0",
        f"train.batch_size={batch}",
        f"train.num_workers={workers}",
        "train.log_every=1",
        "train.sample_every=0",
        "train.val_every=0",
        "train.checkpoint_every=0",
        "train.tensorboard=false",
        "train.progress=false",
        f"train.device={variant['device']}",
        f"train.amp={variant['amp']}",
        f"train.channels_last={str(variant['channels_last']).lower()}",
    ]
    exp = load_config(CONFIG_DIR / f"{case['config']}.yaml", overrides)
    run_dir = workdir / f"run-{abs(hash((case['name'], variant['name'], batch, workers))):x}"
    total = cfg["warmup_steps"] + cfg["steps"]
    t0 = time.perf_counter()
    with GpuSampler() as gpu:
        train(exp, data[exp.model], run_dir=run_dir, max_steps=total)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["img_per_s"] for r in rows if r.get("img_per_s")][cfg["warmup_steps"] :]
    batch = exp.train.batch_size
    step_s = [batch / r for r in rates if r > 0]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "case": case["name"],
        "variant": variant["name"],
        "model": exp.model,
        "size": size,
        "batch": batch,
        "workers": workers,
        "steps": len(step_s),
        "images_per_s": round(batch * len(step_s) / sum(step_s), 4) if step_s else None,
        "step_p50_ms": round(statistics.median(step_s) * 1000, 1) if step_s else None,
        "step_max_ms": round(max(step_s) * 1000, 1) if step_s else None,
        "wall_s": round(wall, 1),
        "gpu_util_pct": gpu.mean,
    }


def run_suite(settings) -> SuiteRecord:
    """Measure every case (and GPU variant when CUDA is usable).

    Returns:
        The suite record: a table of images/s per case and variant and a bar plot.
    """
    import torch

    cfg = _resolve(settings)
    torch.set_num_threads(cfg["threads"])
    variants = [{"name": "cpu fp32", "device": "cpu", "amp": "none", "channels_last": False}]
    if torch.cuda.is_available():
        variants = [
            {"name": "cuda fp32", "device": "cuda", "amp": "none", "channels_last": False},
            {"name": "cuda bf16 amp + channels_last", "device": "cuda", "amp": "bf16", "channels_last": True},
        ]
    cfg["variants"] = [v["name"] for v in variants]
    record = SuiteRecord(
        suite="training",
        title="Training throughput: pix2pix and CycleGAN",
        description=(
            "The real training loop (`pixforge.training.loop.train`) on synthetic "
            f"{cfg['size']}x{cfg['size']} data, batch size {', '.join(map(str, cfg['batches']))}, "
            f"{cfg['warmup_steps']} warm-up + {cfg['steps']} measured steps per case, "
            f"{cfg['threads']} torch threads, data loading with {', '.join(map(str, cfg['workers']))} worker "
            "processes (0: in the training process). images/s = images / summed "
            "step time from the loop's stats.jsonl. A CycleGAN step trains two generators and two "
            "discriminators on a batch of each domain."
        ),
        quick=settings.quick,
        settings=cfg,
    )
    rows = []
    series: dict[str, dict] = {v["name"]: {"label": v["name"], "x": [], "y": []} for v in variants}
    with tempfile.TemporaryDirectory(prefix="pixforge-bench-training-") as tmp:
        data = write_datasets(Path(tmp) / "data", cfg["size"], cfg["images"])
        for case in _cases(settings.quick):
            for variant in variants:
                for batch, workers in itertools.product(cfg["batches"], cfg["workers"]):
                    label = case["name"]
                    label += f" b{batch}" if len(cfg["batches"]) > 1 else ""
                    label += f" w{workers}" if len(cfg["workers"]) > 1 else ""
                    progress(f"training: {label} ({variant['name']})")
                    try:
                        res = run_case(case, variant, cfg, data, Path(tmp), batch, workers)
                    except Exception as exc:  # noqa: BLE001 - report the failure, measure the other cases
                        msg = (
                            str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                        )
                        rows.append(
                            [
                                case["name"],
                                variant["name"],
                                batch,
                                workers,
                                None,
                                None,
                                None,
                                None,
                                f"failed: {msg}",
                            ]
                        )
                        continue
                    record.results.append(res)
                    rows.append(
                        [
                            case["name"],
                            variant["name"],
                            batch,
                            workers,
                            res["images_per_s"],
                            res["step_p50_ms"],
                            res["step_max_ms"],
                            res["gpu_util_pct"],
                            "",
                        ]
                    )
                    if res["images_per_s"]:
                        series[variant["name"]]["x"].append(label)
                        series[variant["name"]]["y"].append(res["images_per_s"])
    record.tables.append(
        Table(
            f"Training throughput at {cfg['size']}x{cfg['size']}",
            [
                "case",
                "variant",
                "batch",
                "loader workers",
                "images/s",
                "step p50 ms",
                "step max ms",
                "GPU util %",
                "note",
            ],
            rows,
            "GPU util: mean nvidia-smi utilization.gpu while the case trained (– without a GPU)",
        )
    )
    if not torch.cuda.is_available():
        record.notes.append("no CUDA device: AMP / channels_last / GPU utilisation not measured")
    record.add_case_bars("training_throughput.png", "Training images/s per case", list(series.values()))
    return record
