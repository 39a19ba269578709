"""`pixforge bench [suite] --out DIR`: benchmarks that print figures and write DIR/benchmarks.md.

Suites (one module each): ``engine`` (PyTorch eager / torch.compile / onnxruntime, GPU providers
when present), ``serving`` (the real gRPC server under concurrent clients vs the raw session),
``batching`` (dynamic batching on/off), ``tiling`` (time and peak memory vs image size),
``training`` (training steps per second) and ``overload`` (goodput, refusals, memory and wasted CPU
past the server's capacity). Each writes ``DIR/bench/<suite>.json``; the report is
rebuilt from every JSON present, so suites can be run separately. These are scripts, not tests:
nothing here asserts a timing.

Folder -> import name: `bench/` is installed as `pixforge.bench` (setup.py); its modules import
each other relatively and everything else as `pixforge.x` (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pixforge.errors import PixforgeError

from .stats import parse_int_list, parse_name_list, progress

SUITES = ("engine", "serving", "batching", "tiling", "training", "overload")


class BenchError(PixforgeError, RuntimeError):
    """A benchmark cannot run (missing dependency, bad flag); the message says what to do."""


@dataclass(frozen=True)
class Settings:
    """The parsed command line, shared by every suite (each resolves its own defaults from it).

    Attributes:
        out: report folder. quick: tiny smoke run. threads: intra-op threads for torch and
            onnxruntime (None = CPUs available). duration: seconds of measurement per case.
        sizes, batches, concurrency: lists from the flags (None = the suite's default).
        models, engines: names from the flags (None = the suite's default).
        steps: measured training steps. workers: data-loader worker counts (training suite).
        max_call_seconds: engine cases estimated slower are skipped.
        rounds: how many times the variants of a case alternate (None = the suite's default);
            more rounds make the median of the per-round ratios steadier on a noisy machine.
        tag: a name for this run (e.g. "gpu"), kept beside the untagged run in its own
            ``<suite>-<tag>.json`` and report section instead of replacing it.
    """

    out: Path
    quick: bool = False
    threads: int | None = None
    duration: float | None = None
    sizes: list[int] | None = None
    batches: list[int] | None = None
    concurrency: list[int] | None = None
    models: list[str] | None = None
    engines: list[str] | None = None
    steps: int | None = None
    workers: list[int] | None = None
    max_call_seconds: float = 30.0
    rounds: int | None = None
    tag: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_args(cls, args) -> Settings:
        """Build from the argparse namespace of `pixforge bench`.

        Raises:
            ValueError: a malformed list or a non-positive number (the message names the flag).
        """

        def ints(flag: str, text: str | None) -> list[int] | None:
            try:
                return parse_int_list(text, []) or None if text else None
            except ValueError as exc:
                raise ValueError(f"--{flag}: {exc}") from None

        def number(flag: str, low: float, *, strict: bool = False):
            value = getattr(args, flag.replace("-", "_"), None)
            if value is not None and (not math.isfinite(value) or (value <= low if strict else value < low)):
                raise ValueError(f"--{flag} must be a number {'>' if strict else '>='} {low}, got {value}")
            return value

        threads = number("threads", 1)
        duration = number("duration", 0, strict=True)
        steps = number("steps", 1)
        max_call = number("max-call-seconds", 0, strict=True)
        rounds = number("rounds", 1)
        tag = getattr(args, "tag", None) or ""
        if tag and not re.fullmatch(r"[a-z0-9][a-z0-9_]*", tag):
            raise ValueError(f"--tag must be lowercase letters, digits and '_', got {tag!r}")
        models = getattr(args, "models", None)
        engines = getattr(args, "engines", None)
        # Checked before minutes of measurement, not when the report or a later part needs them.
        out = Path(getattr(args, "out", "docs") or "docs")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; name a folder for the tables and plots")
        for flag in ("repo", "image"):
            given = getattr(args, flag, None)
            if given and not Path(given).exists():
                raise ValueError(f"--{flag} {given} does not exist")
        return cls(
            out=out,
            quick=bool(getattr(args, "quick", False)),
            threads=threads,
            duration=duration,
            sizes=ints("sizes", getattr(args, "sizes", None)),
            batches=ints("batches", getattr(args, "batches", None)),
            concurrency=ints("concurrency", getattr(args, "concurrency", None)),
            models=parse_name_list(models, []) or None if models else None,
            engines=parse_name_list(engines, []) or None if engines else None,
            steps=steps,
            workers=_workers(getattr(args, "workers", None)),
            max_call_seconds=max_call or 30.0,
            rounds=rounds,
            tag=tag,
            extra={
                k: v
                for k, v in (
                    ("repo", getattr(args, "repo", None)),
                    ("image", getattr(args, "image", None)),
                    ("invariance_size", getattr(args, "invariance_size", None)),
                )
                if v
            },
        )

    def resolved_threads(self) -> int:
        """The thread count actually used: the flag, else 1 for ``--quick``, else the CPUs available.

        Quick runs are smoke runs, typically on a machine busy with other work, where two spinning
        OpenMP threads per library on two contended cores can make a step 20x slower.
        """
        from pixforge.service.config import available_cpus

        return self.threads or (1 if self.quick else available_cpus())


def _workers(text: str | None) -> list[int] | None:
    """``--workers 0,8``: data-loader worker counts; 0 (load in the training process) is allowed."""
    if not text:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--workers: expected integers like 0,8, got {text!r}") from None
    if not values or min(values) < 0:
        raise ValueError(f"--workers: counts must be >= 0, got {text!r}")
    return values


def run_suite(name: str, settings: Settings) -> Path:
    """Run one suite, print its figures and write its JSON; returns the JSON path."""
    from .env import cpu_seconds, environment, foreign_cpu_fraction, load_average
    from .report import print_record, write_suite_json

    module = importlib.import_module(f"pixforge.bench.{name}")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start = load_average()
    cpu_start = cpu_seconds()
    t0 = time.perf_counter()
    progress(f"suite {name}: start (load average {load_start})")
    record = module.run_suite(settings)
    if settings.tag:
        record.apply_tag(settings.tag)
    duration = time.perf_counter() - t0
    load_end = load_average()
    env = environment()
    cpus = env.get("machine", {}).get("cpus_available") or os.cpu_count() or 1
    run_info = {
        "started": started,
        "duration_s": round(duration, 1),
        "load_start": load_start,
        "load_end": load_end,
        "command": " ".join(sys.argv),
        "foreign_cpu_fraction": foreign_cpu_fraction(cpu_start, cpu_seconds(), duration, cpus),
        "environment": env,
    }
    path = write_suite_json(record, settings.out, run_info)
    print_record(record)
    progress(f"suite {name}: done in {duration:.0f} s (load average {load_end}); wrote {path}")
    return path


def run(args) -> int:
    """Entry point of `pixforge bench` (flags: see pixforge/cli.py).

    Returns:
        0 when every requested suite ran and the report was written, 2 for a bad flag or a missing
        dependency, 1 when a suite failed (the others still run and are reported).
    """
    suite = getattr(args, "suite", "all") or "all"
    if suite != "all" and suite not in SUITES:
        print(
            f"pixforge bench: unknown suite {suite!r}; choose from {', '.join(SUITES)} or all",
            file=sys.stderr,
        )
        return 2
    try:
        settings = Settings.from_args(args)
    except ValueError as exc:
        print(f"pixforge bench: {exc}", file=sys.stderr)
        return 2
    from .report import ReportError, write_report

    failed = []
    for name in SUITES if suite == "all" else (suite,):
        try:
            run_suite(name, settings)
        except (BenchError, ValueError) as exc:
            print(f"pixforge bench {name}: {exc}", file=sys.stderr)
            if suite != "all":
                return 2
            failed.append(name)
        except ModuleNotFoundError as exc:
            print(
                f"pixforge bench {name}: needs {exc.name}: pip install torch==2.13.0 'pixforge[bench]'",
                file=sys.stderr,
            )
            if suite != "all":
                return 2
            failed.append(name)
    if getattr(args, "no_report", False):
        return 1 if failed else 0
    try:
        path = write_report(settings.out)
    except ReportError as exc:
        print(f"pixforge bench: {exc}", file=sys.stderr)
        return 2
    progress(f"report: {path}")
    return 1 if failed else 0
