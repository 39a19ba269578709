"""Measure an exported colourisation model on held-out colour photos.

    python tools/eval_colorization_model.py MODEL.onnx DATA_DIR [DATA_DIR ...]

Each photo is turned gray (BT.601 luma replicated to RGB, so the model never sees the colours),
run through the ONNX model (reflect-padded to its size multiple and cropped back, as the server
does), and compared with the original: RGB PSNR of the model's output vs the gray-input baseline,
and mean colourfulness (Hasler-Suesstrunk) of output, gray input and ground truth. Photos whose
ground truth is itself gray are skipped (and counted). Prints a table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from pixforge.contract import contract_from_session
from pixforge.training.metrics import colorfulness, psnr

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def main(argv: list[str]) -> int:
    model, folders = argv[0], argv[1:]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    m = contract_from_session(session).size_multiple
    rows, skipped = [], 0
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in EXTENSIONS):
            rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            if int(np.abs(rgb.astype(np.int16) - rgb[:, :, :1]).max()) <= 2:
                skipped += 1  # a grayscale ground truth has no colours to recover
                continue
            gray = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
            h, w = gray.shape[:2]
            padded = np.pad(gray, ((0, (-h) % m), (0, (-w) % m), (0, 0)), mode="reflect")
            out = session.run(None, {"image": padded[None]})[0][0][:h, :w]
            rows.append((psnr(out, rgb), psnr(gray, rgb), colorfulness(out), colorfulness(gray), colorfulness(rgb)))
    p_m, p_g, c_m, c_g, c_t = np.mean(rows, axis=0)
    print(f"{skipped} grayscale ground-truth image(s) skipped")
    print("| images | PSNR model | PSNR gray input | colourfulness model / gray / ground truth |")
    print("|---|---|---|---|")
    print(f"| {len(rows)} | {p_m:.2f} dB | {p_g:.2f} dB | {c_m:.1f} / {c_g:.1f} / {c_t:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
