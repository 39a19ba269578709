"""Measure an exported super-resolution model the usual way: Y-channel PSNR/SSIM, scale-pixel border.

    python tools/eval_sr_model.py MODEL.onnx DATA_DIR [DATA_DIR ...]

For each HR image: crop to a multiple of the scale, make the LR input with the same antialiased
bicubic downscale the training data uses, run the ONNX model (reflect-padding the LR input to the
model's size multiple and cropping back, as the server does), and compare with plain bicubic
upscaling. Prints a Markdown table. Needs the train extra (it reuses training's metrics).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from pixforge.contract import contract_from_session
from pixforge.training.data.super_resolution import downscale
from pixforge.training.metrics import psnr_y, ssim_y


def run_model(session, lr: np.ndarray, multiple: int, scale: int) -> np.ndarray:
    h, w = lr.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    padded = np.pad(lr, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    out = session.run(None, {"image": padded[None]})[0][0]
    return out[: h * scale, : w * scale]


def main(argv: list[str]) -> int:
    model, folders = argv[0], argv[1:]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    contract = contract_from_session(session)
    s = contract.scale
    print("| set | images | bicubic PSNR / SSIM | model PSNR / SSIM | gain (dB) |")
    print("|---|---|---|---|---|")
    for folder in folders:
        rows = []
        for path in sorted(Path(folder).glob("*.png")):
            hr = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            hr = hr[: hr.shape[0] // s * s, : hr.shape[1] // s * s]
            lr = downscale(hr, s)
            bic = cv2.resize(lr, (hr.shape[1], hr.shape[0]), interpolation=cv2.INTER_CUBIC)
            sr = run_model(session, lr, contract.size_multiple, s)
            rows.append((psnr_y(bic, hr, s), ssim_y(bic, hr, s), psnr_y(sr, hr, s), ssim_y(sr, hr, s)))
        b_p, b_s, m_p, m_s = np.mean(rows, axis=0)
        print(f"| {Path(folder).name} | {len(rows)} | {b_p:.2f} / {b_s:.4f} | {m_p:.2f} / {m_s:.4f} | {m_p - b_p:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
