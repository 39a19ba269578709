"""Run directories: `runs/<stem>-NNN` numbering, finding the newest, creating one for a run.

`pixforge train` without `--out` writes to the next free `runs/<config-stem>-NNN` (001 first);
`--resume` without `--out` continues the newest. Rank 0 decides and creates the folder, every
other rank receives its path, so all ranks of a DDP run write to the same place.

A fresh run remembers which of its outputs (RUN_OUTPUTS) were already in the folder, so a run
that fails before its first checkpoint takes back exactly what it added and nothing of the user's.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pixforge.errors import PixforgeError

from .checkpoint import RESUME_FILE
from .config import ExperimentConfig, load_config_json, save_config_json
from .data import DataError
from .init_from import describe_mismatches, mismatches
from .run_log import drop_logged_steps_after
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


def _architecture_change(run_dir: Path, saved: ExperimentConfig, cfg: ExperimentConfig) -> str | None:
    """Why `cfg` cannot continue a run saved with `saved` (None when its networks are the same).

    The resume state holds the weights of the saved networks: a `--set` that reshapes them would
    fail deep inside load_state_dict, so the fields are named here, before anything is written.
    """
    for section in ("generator", "discriminator"):
        diff = mismatches(getattr(saved, section), getattr(cfg, section))
        if diff:
            fields, sets = describe_mismatches(diff, "in the run", section)
            return (
                f"cannot resume {run_dir} with another {section} ({fields}): its resume state holds "
                f"the weights of the run's own; resume with the same one ({sets}) or start a new run "
                "from its generator with --set train.init_from=CHECKPOINT"
            )
    return None


# What a run writes directly into its folder (run_log.py: the logs, samples and TensorBoard;
# snapshots.py: checkpoints/), by name or glob pattern.
RUN_OUTPUTS = ("config.json", "checkpoints", "samples", "tensorboard", "stats.jsonl", "metric-*.jsonl")


@dataclass(frozen=True)
class FreshRun:
    """What was in a fresh run's folder before the run: all that a failed start leaves behind.

    Attributes:
        made_folder: the run directory did not exist (it is removed whole).
        kept: paths (relative, "/"-separated) of the run outputs already there and of everything
            under them, e.g. a samples/ folder of the user's with its images.
    """

    made_folder: bool
    kept: frozenset[str] = frozenset()


def _run_outputs(run_dir: Path) -> set[str]:
    """Relative paths of the RUN_OUTPUTS entries now in `run_dir` and of everything under them."""
    found: set[str] = set()
    if not run_dir.is_dir():
        return found
    for pattern in RUN_OUTPUTS:
        for entry in run_dir.glob(pattern):
            found.add(entry.name)
            if entry.is_dir() and not entry.is_symlink():
                found.update(p.relative_to(run_dir).as_posix() for p in entry.rglob("*"))
    return found


def open_run_dir(
    rt: Runtime, cfg: ExperimentConfig, run_dir: Path | None, runs_root: Path, stem: str, resume: bool
) -> tuple[Path, FreshRun | None]:
    """Create (or, on resume, reuse) the run directory on rank 0 and share its path with all ranks.

    A fresh run's config.json is written here; on resume it is left as it is until the resume
    state has loaded (write_run_config), so a resume that fails does not change the run.

    Returns:
        (the run directory, for a fresh run what was in it before: what discard_unstarted_run
        must leave there; None on resume, whose folder is never discarded)

    Raises:
        DataError: resuming a folder without a resume state or with other networks, starting over
            an existing run, or a path that cannot be a folder.
    """
    problem, fresh = None, None
    if rt.is_main:
        if run_dir is None:
            run_dir = next_run_dir(runs_root, stem)
        run_dir = Path(run_dir)
        saved = run_dir / "config.json"
        if resume:
            if not (run_dir / "checkpoints" / RESUME_FILE).is_file():
                problem = f"nothing to resume in {run_dir} (no checkpoints/{RESUME_FILE})"
            elif saved.is_file():
                problem = _architecture_change(run_dir, load_config_json(saved), cfg)
        elif saved.exists():
            problem = f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        if problem is None:
            if not resume:
                fresh = FreshRun(not run_dir.exists(), frozenset(_run_outputs(run_dir)))
            try:
                (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
                (run_dir / "samples").mkdir(exist_ok=True)
            except OSError as exc:  # a file in the way (FileExistsError / NotADirectoryError), no rights
                problem = f"cannot create the run directory {run_dir}: {exc.strerror or exc}"
            else:
                if not resume:
                    save_config_json(cfg, saved)
    run_dir, problem, fresh = broadcast_object(rt, (str(run_dir), problem, fresh))
    if problem:
        raise DataError(problem)
    return Path(run_dir), fresh


def write_run_config(rt: Runtime, cfg: ExperimentConfig, run_dir: Path, step: int) -> None:
    """Once a resume state has loaded: record the resumed run's config (with its `--set`
    overrides) and drop the log lines written after that state's `step` (rank 0).

    Lines past the resume step come from training whose checkpoint was lost (a kill -9); the
    resumed run logs those steps again, so kept, they would appear twice.
    """
    if rt.is_main:
        save_config_json(cfg, run_dir / "config.json")
        drop_logged_steps_after(run_dir, step)


@contextlib.contextmanager
def resume_load_errors(run_dir: Path):
    """Turn a resume state that does not load into this run's networks and optimisers into one
    DataError line.

    open_run_dir already refuses other networks by their config; this catches the rest (a config.json
    edited by hand, or written by a resume that then failed), whose torch errors would otherwise end
    the run with a traceback.
    """
    try:
        yield
    except PixforgeError:
        raise
    except (RuntimeError, ValueError, KeyError) as exc:
        # load_state_dict's first line only names the class; the second names the tensor at fault.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = f"no {exc} entry" if isinstance(exc, KeyError) else " ".join(lines[:2]) or type(exc).__name__
        raise DataError(
            f"cannot resume {run_dir}: its resume state does not fit this config ({first}); resume with "
            "the settings it was trained with"
        ) from exc


def discard_unstarted_run(rt: Runtime, run_dir: Path, fresh: FreshRun) -> None:
    """Take back what a fresh run added to `run_dir` when it failed before its first checkpoint
    (rank 0): the whole folder if the run created it, else only the run outputs that were not in
    it before (`fresh`, from open_run_dir); everything else there is the user's.

    Left behind, they would hold a config.json and nothing to resume, so the same command, once the
    data is fixed, would be refused with "already holds a run". A run that wrote any file under
    checkpoints/ is kept: that is training someone may want back.
    """
    if not rt.is_main or not run_dir.is_dir():
        return
    added = _run_outputs(run_dir) - fresh.kept
    if any(rel.startswith("checkpoints/") and (run_dir / rel).is_file() for rel in added):
        return
    if fresh.made_folder:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for rel in sorted(added, reverse=True):  # a folder's files before the folder
        path = run_dir / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
