"""Run directories: `runs/<stem>-NNN` numbering, finding the newest, creating one for a run.

`pixforge train` without `--out` writes to the next free `runs/<config-stem>-NNN` (001 first);
`--resume` without `--out` continues the newest. Rank 0 decides and creates the folder, every
other rank receives its path, so all ranks of a DDP run write to the same place.
"""

from __future__ import annotations

import re
from pathlib import Path

from .checkpoint import RESUME_FILE
from .config import ExperimentConfig, save_config_json
from .data import DataError
from .runtime import Runtime, broadcast_object

_RUN_RE = re.compile(r"^(?P<stem>.+)-(?P<num>\d{3,})$")


def _numbered_runs(runs_root: Path, stem: str) -> list[tuple[int, Path]]:
    """(number, path) of every runs_root/<stem>-NNN entry, sorted by number."""
    return sorted(
        (int(m.group("num")), p)
        for p in runs_root.glob(f"{stem}-*")
        if (m := _RUN_RE.match(p.name)) and m.group("stem") == stem
    )


def next_run_dir(runs_root: Path, stem: str) -> Path:
    """runs_root/<stem>-NNN with NNN one above the highest existing number (001 first)."""
    found = _numbered_runs(runs_root, stem)
    return runs_root / f"{stem}-{(found[-1][0] if found else 0) + 1:03d}"


def latest_run_dir(runs_root: Path, stem: str) -> Path | None:
    """The highest-numbered runs_root/<stem>-NNN folder, or None."""
    found = [path for _, path in _numbered_runs(runs_root, stem) if path.is_dir()]
    return found[-1] if found else None


def open_run_dir(
    rt: Runtime, cfg: ExperimentConfig, run_dir: Path | None, runs_root: Path, stem: str, resume: bool
) -> Path:
    """Create (or, on resume, reuse) the run directory on rank 0 and share its path with all ranks.

    Raises:
        DataError: resuming a folder without a resume state, or starting over an existing run.
    """
    problem = None
    if rt.is_main:
        if run_dir is None:
            run_dir = next_run_dir(runs_root, stem)
        run_dir = Path(run_dir)
        if resume:
            if not (run_dir / "checkpoints" / RESUME_FILE).is_file():
                problem = f"nothing to resume in {run_dir} (no checkpoints/{RESUME_FILE})"
        elif (run_dir / "config.json").exists():
            problem = f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        if problem is None:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "samples").mkdir(exist_ok=True)
            save_config_json(cfg, run_dir / "config.json")
    run_dir, problem = broadcast_object(rt, (str(run_dir), problem))
    if problem:
        raise DataError(problem)
    return Path(run_dir)
