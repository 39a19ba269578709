"""Unpaired style translation (CycleGAN data: testA/ testB/ [trainA/ trainB/]): reference-free scores.

There is no ground truth for a translated image, so a small domain classifier
(`domain_classifier.py`) is trained to tell A from B: on trainA vs trainB when both exist, else on
the even-indexed testA/testB images. Its accuracy on held-out real images (all of testA/testB, or
the odd-indexed ones) is reported first, because the scores below mean something only if it is
high. On the held-out source images:

- transfer rate: share of translated images the classifier assigns to the target domain, next to
  the untranslated baseline (share of the raw source images it already assigns there);
- content PSNR: output vs input (RGB); a low value means the image was destroyed, not restyled;
- checkerboard: spectral energy at the 2- and 4-pixel periods of the output's luma against its
  neighbourhood (dB; `pixforge.training.metrics.checkerboard_db`), next to the same figure for the
  real input photos: the grid transposed convolutions leave shows as a gap between the two;
- with `--reverse-model`: cycle PSNR (source -> target -> source vs source) and the reverse
  direction's transfer rate, content PSNR and cycle PSNR on the held-out target images.

The source domain is A unless `--source B` is given or the model's metadata says `direction` BtoA.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from ..data.files import evenly_spaced
from ..metrics import checkerboard_db, psnr
from .domain_classifier import SIZE, DomainClassifier
from .errors import EvalError
from .files import domain_files, load_images, progress
from .report import Column, SampleCollector, TaskReport, aggregate
from .runner import Runner

MAX_CLASSIFIER_IMAGES = 400  # per domain, for training and for measuring accuracy
MIN_ACCURACY = 0.75  # below this balanced accuracy the transfer rates get a warning
KEYS = (
    "transfer_rate",
    "baseline_rate",
    "content_psnr",
    "cycle_psnr",
    "checkerboard_db",
    "checkerboard_db_input",
)
COLUMNS = [
    Column("transfer rate", ("transfer_rate",), "{:.1%}"),
    Column("untranslated baseline", ("baseline_rate",), "{:.1%}"),
    Column("content PSNR (dB)", ("content_psnr",), "{:.2f}"),
    Column("cycle PSNR (dB)", ("cycle_psnr",), "{:.2f}"),
    Column(
        "checkerboard output / input (dB)", ("checkerboard_db", "checkerboard_db_input"), "{:.2f} / {:.2f}"
    ),
]


def source_domain(metadata, requested: str | None) -> str:
    """ "A" or "B": the flag wins, else the model's `direction` metadata, else A."""
    if requested:
        return requested.upper()
    return "B" if metadata.get("direction") == "BtoA" else "A"


def _small(paths: list[str], skipped: list[dict]) -> list[np.ndarray]:
    return [
        cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for _, img in load_images(paths, skipped)
    ]


def train_classifier(
    root: Path, steps: int, seed: int = 0
) -> tuple[DomainClassifier, dict, dict[str, list[str]]]:
    """Fit the domain classifier and measure it on held-out real images.

    Returns:
        (classifier, facts for results.json, held-out real image paths per domain "A"/"B").

    Raises:
        EvalError: testA/testB missing or too small.
    """
    test = {d: domain_files(root / f"test{d}") for d in "AB"}
    missing = [f"test{d}" for d in "AB" if not (root / f"test{d}").is_dir()]
    if missing:
        raise EvalError(
            f"style-translation data needs {root}/testA and {root}/testB; missing: {', '.join(missing)}"
        )
    train = {d: domain_files(root / f"train{d}") for d in "AB"}
    if all(train.values()):
        fit_paths, held, fit_source = train, test, "trainA / trainB"
    else:
        fit_paths = {d: test[d][0::2] for d in "AB"}
        held = {d: test[d][1::2] for d in "AB"}
        fit_source = "even-indexed testA / testB images (no trainA / trainB)"
    for d in "AB":
        if not fit_paths[d] or not held[d]:
            raise EvalError(
                f"not enough images in {root}/test{d} to train and check the domain classifier "
                "(need 2 or more per domain, or trainA/trainB beside testA/testB)"
            )
    skipped: list[dict] = []
    fit = {d: _small(evenly_spaced(fit_paths[d], MAX_CLASSIFIER_IMAGES), skipped) for d in "AB"}
    clf = DomainClassifier(steps=steps, seed=seed).fit(fit["A"], fit["B"])
    check = {d: _small(evenly_spaced(held[d], MAX_CLASSIFIER_IMAGES), skipped) for d in "AB"}
    acc_a = float(np.mean(clf.prob_b(check["A"]) < 0.5)) if check["A"] else math.nan
    acc_b = float(np.mean(clf.prob_b(check["B"]) >= 0.5)) if check["B"] else math.nan
    facts = {
        "trained_on": fit_source,
        "train_images": {d: len(fit[d]) for d in "AB"},
        "heldout_images": {d: len(check[d]) for d in "AB"},
        "steps": steps,
        "input_size": SIZE,
        "accuracy_a": acc_a,
        "accuracy_b": acc_b,
        "balanced_accuracy": (acc_a + acc_b) / 2,
        "unreadable": len(skipped),
    }
    return clf, facts, held


def _direction(
    forward: Runner,
    backward: Runner | None,
    clf: DomainClassifier,
    paths: list[str],
    src: str,
    samples: SampleCollector,
    skipped: list[dict],
) -> list[dict]:
    """Translate `paths` (domain `src`) with `forward`; per-image classifier and PSNR figures."""
    dst = "B" if src == "A" else "A"
    name = f"{src}→{dst}"
    records, inputs, outputs = [], [], []
    for path, real in progress(load_images(paths, skipped), name, len(paths)):
        fake = forward(real)
        record = {
            "direction": name,
            "file": Path(path).name,
            "content_psnr": math.nan,
            "cycle_psnr": math.nan,
        }
        if fake.shape == real.shape:
            record["content_psnr"] = psnr(fake, real)
        if min(real.shape[:2]) >= 16 and real.ndim == 3 and real.shape[2] == 3:
            record["checkerboard_db_input"] = checkerboard_db(real)
        if min(fake.shape[:2]) >= 16 and fake.ndim == 3 and fake.shape[2] == 3:
            record["checkerboard_db"] = checkerboard_db(fake)
        row = [real, fake]
        if backward is not None:
            rec = backward(fake)
            if rec.shape == real.shape:
                record["cycle_psnr"] = psnr(rec, real)
            row.append(rec)
        samples.add(row, first=not records)
        inputs.append(cv2.resize(real, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
        outputs.append(cv2.resize(fake, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
        records.append(record)
    if records:
        p_in, p_out = clf.prob_b(inputs), clf.prob_b(outputs)
        if dst == "A":
            p_in, p_out = 1.0 - p_in, 1.0 - p_out
        for record, pi, po in zip(records, p_in, p_out, strict=True):
            record.update(
                p_target_input=float(pi),
                p_target_output=float(po),
                baseline_rate=float(pi >= 0.5),
                transfer_rate=float(po >= 0.5),
            )
    return records


def evaluate_style(
    runner: Runner,
    data: Path,
    *,
    source: str | None = None,
    reverse: Runner | None = None,
    max_images: int = 0,
    classifier_steps: int = 300,
    seed: int = 0,
    n_samples: int = 4,
) -> TaskReport:
    """Evaluate an unpaired translation model (and optionally its reverse) on a CycleGAN folder."""
    root = Path(data)
    if not root.is_dir():
        raise EvalError(f"data folder {root} does not exist or is not a folder")
    src = source_domain(runner.info.metadata, source)
    dst = "B" if src == "A" else "A"
    clf, facts, held = train_classifier(root, classifier_steps, seed)
    skipped: list[dict] = []
    samples = SampleCollector(n_samples)
    per_image = _direction(runner, reverse, clf, evenly_spaced(held[src], max_images), src, samples, skipped)
    rows = [aggregate(f"{src}→{dst}", per_image, KEYS)] if per_image else []
    if reverse is not None:
        back = _direction(reverse, runner, clf, evenly_spaced(held[dst], max_images), dst, samples, skipped)
        if back:
            rows.append(aggregate(f"{dst}→{src}", back, KEYS))
        per_image += back
    if not rows:
        raise EvalError(f"no readable held-out test{src} image under {root}")
    acc = facts["balanced_accuracy"]
    notes = [
        f"domain classifier ({SIZE}x{SIZE} CNN, {classifier_steps} steps, trained on {facts['trained_on']}, "
        f"{facts['train_images']['A']} + {facts['train_images']['B']} images): held-out accuracy "
        f"A {facts['accuracy_a']:.1%}, B {facts['accuracy_b']:.1%}, balanced {acc:.1%} "
        f"({facts['heldout_images']['A']} + {facts['heldout_images']['B']} images).",
        "transfer rate = translated images the classifier assigns to the target domain; baseline = the "
        "untranslated inputs it already assigns there. content PSNR = output vs input.",
    ]
    if not acc >= MIN_ACCURACY:
        notes.append(
            f"WARNING: the classifier separates the real domains poorly ({acc:.1%} < {MIN_ACCURACY:.0%}): "
            "the transfer rates say little."
        )
    if reverse is None:
        notes.append("cycle PSNR needs --reverse-model (the opposite-direction model).")
    if skipped:
        notes.append(f"{len(skipped)} image(s) skipped (unreadable; listed in results.json with --out)")
    return TaskReport(
        task="style_translation",
        columns=COLUMNS,
        rows=rows,
        summary={k: v for k, v in rows[0].items() if k != "name"},
        per_image=per_image,
        samples=samples.rows(),
        sample_labels=["input", "model output"] + (["cycle (reverse model)"] if reverse is not None else []),
        counts={"images": len(per_image), "skipped": len(skipped)},
        notes=notes,
        extra={"source_domain": src, "classifier": facts, **({"skipped": skipped} if skipped else {})},
        first_header="direction",
    )
