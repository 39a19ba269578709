"""Image quality metrics on uint8 images (what a served model returns), plus an optional FID.

Definitions (docs/training.md "Metrics"):

- PSNR = 10 log10(255^2 / MSE) over all pixels (and channels); identical images give +inf, which
  callers cap at `PSNR_CAP` dB when averaging.
- SSIM: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  L = 255, "valid" filtering (the reference MATLAB code's `filter2(..., 'valid')`, as BasicSR
  does); colour images: mean over channels.
- Y channel: ITU-R BT.601 luma as MATLAB `rgb2ycbcr` computes it,
  Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in 0..255 (kept as float, not
  rounded, like BasicSR). SR papers report PSNR/SSIM on Y after cropping `scale` pixels off each
  border: `psnr_y(..., border=scale)`.
- Colourfulness: Hasler & Suesstrunk 2003, M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 +
  mean(yb)^2), rg = R - G, yb = (R + G) / 2 - B.
- Unpaired translation (no ground truth), both computable offline:
  * cycle PSNR: PSNR(a, G_B(G_A(a))) — does the translation keep the content?
  * colour-histogram distance: total-variation distance between the pooled per-channel RGB
    histograms (32 bins) of two image sets, in [0, 1]. d(fake_B, real_B) below d(real_A, real_B)
    means outputs moved towards domain B's colour statistics. It is a colour-statistics proxy
    only: it cannot see shapes or textures. Use FID for a semantic distance.
- FID: Frechet distance between Inception-v3 pool features (2048-d) of two image sets. Only when
  the user supplies an Inception-v3 state_dict file (torchvision layout); torchvision is imported
  lazily. Numbers compare pixforge runs with each other; published FIDs use the TensorFlow
  Inception graph and differ.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from pixforge.errors import PixforgeError

PSNR_CAP = 100.0  # dB reported for identical images (PSNR is infinite)
SSIM_WINDOW = 11  # px: SSIM's Gaussian window, so its smallest image ("valid" filtering)
CHECKERBOARD_MIN = 16  # px: the smallest side checkerboard_db measures (after cropping to a multiple of 4)


class MetricError(PixforgeError):
    """A metric cannot be computed (bad shapes, missing FID weights or torchvision)."""


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise MetricError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a, b


def require_size(image: np.ndarray, min_width: int, min_height: int, what: str) -> None:
    """Refuse an image below `min_width` x `min_height` with a reason naming its own size.

    Callers check the image as the user gave it, before any crop, so the reason says the file's
    real size and the minimum that `what` (e.g. "x4 evaluation") needs.

    Raises:
        MetricError: "WxH is smaller than the MWxMH minimum of <what>".
    """
    height, width = image.shape[:2]
    if width < min_width or height < min_height:
        raise MetricError(f"{width}x{height} is smaller than the {min_width}x{min_height} minimum of {what}")


def crop_border(img: np.ndarray, border: int) -> np.ndarray:
    """Remove `border` pixels from each side of an (H, W[, C]) image."""
    if border <= 0:
        return img
    if img.shape[0] <= 2 * border or img.shape[1] <= 2 * border:
        raise MetricError(
            f"image {img.shape[1]}x{img.shape[0]} is too small to crop {border} px borders "
            f"(needs at least {2 * border + 1}x{2 * border + 1})"
        )
    return img[border:-border, border:-border]


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """uint8-range RGB (H, W, 3) -> BT.601 luma Y in [16, 235] (MATLAB rgb2ycbcr coefficients), float64."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise MetricError(f"rgb_to_y expects (H, W, 3), got {img.shape}")
    return 16.0 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; +inf for identical images."""
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    g = cv2.getGaussianKernel(size, sigma)
    return g @ g.T


def _ssim_channel(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    win = _gaussian_window()
    if a.shape[0] < SSIM_WINDOW or a.shape[1] < SSIM_WINDOW:
        raise MetricError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {a.shape[1]}x{a.shape[0]}"
        )

    def filt(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, -1, win, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]  # 'valid' part

    mu_a, mu_b = filt(a), filt(b)
    sigma_a = filt(a * a) - mu_a**2
    sigma_b = filt(b * b) - mu_b**2
    sigma_ab = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * sigma_ab + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (sigma_a + sigma_b + c2)
    )
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Structural similarity (Gaussian window, standard constants); mean over channels."""
    a, b = _pair(a, b)
    if a.ndim == 2:
        return _ssim_channel(a, b, data_range)
    return float(np.mean([_ssim_channel(a[..., c], b[..., c], data_range) for c in range(a.shape[2])]))


def psnr_y(output: np.ndarray, target: np.ndarray, border: int = 0) -> float:
    """PSNR on the BT.601 Y channel after cropping `border` pixels (SR-paper convention)."""
    return psnr(crop_border(rgb_to_y(output), border), crop_border(rgb_to_y(target), border))


def ssim_y(output: np.ndarray, target: np.ndarray, border: int = 0) -> float:
    """SSIM on the BT.601 Y channel after cropping `border` pixels (SR-paper convention)."""
    return ssim(crop_border(rgb_to_y(output), border), crop_border(rgb_to_y(target), border))


def colorfulness(img: np.ndarray) -> float:
    """Hasler & Suesstrunk colourfulness of an RGB image in 0..255 (0 for grey images)."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise MetricError(f"colorfulness expects (H, W, 3), got {img.shape}")
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(math.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * math.sqrt(rg.mean() ** 2 + yb.mean() ** 2))


CHECKERBOARD_PERIODS = (2, 4)  # pixels: the grids a stride-2 (and two stacked) transposed convolution leaves


def checkerboard_db(img: np.ndarray, periods: tuple[int, ...] = CHECKERBOARD_PERIODS) -> float:
    """Spectral energy at the 2- and 4-pixel periods of the luma, against its neighbourhood, in dB.

    Transposed convolutions with stride 2 print a faint grid on their outputs: sharp peaks in the
    power spectrum at the frequencies 1/2 and 1/4 cycles per pixel (horizontally, vertically and
    diagonally). For each such peak the energy of its bin is compared with the mean energy of the
    bins two steps around it (a photo's spectrum is smooth there), and the mean ratio is returned
    in dB: about 0 dB for real photos, several dB for a visible checkerboard. The image is
    cropped to a multiple of 4 and Hann-windowed so its borders do not leak into the peaks.

    Raises:
        MetricError: not an (H, W, 3) image of at least 16x16 pixels.
    """
    y = rgb_to_y(img)
    h, w = (y.shape[0] // 4) * 4, (y.shape[1] // 4) * 4
    if h < CHECKERBOARD_MIN or w < CHECKERBOARD_MIN:
        raise MetricError(
            f"checkerboard_db needs at least {CHECKERBOARD_MIN}x{CHECKERBOARD_MIN} pixels, "
            f"got {img.shape[1]}x{img.shape[0]}"
        )
    y = y[:h, :w] - y[:h, :w].mean()
    y = y * np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2(y)) ** 2 + 1e-12
    ratios = []
    for p in periods:
        fy, fx = h // p, w // p
        for ky, kx in ((0, fx), (fy, 0), (fy, fx)):
            ring = [
                power[(ky + dy) % h, (kx + dx) % w]
                for dy in (-2, 0, 2)
                for dx in (-2, 0, 2)
                if (dy, dx) != (0, 0)
            ]
            ratios.append(power[ky % h, kx % w] / float(np.mean(ring)))
    # Averaged before the log: one periodogram bin of noise is exponentially distributed, so the
    # mean ratio is 1 (0 dB) for a smooth spectrum, while the mean of log ratios would sit at -2.5 dB.
    return float(10.0 * math.log10(np.mean(ratios)))


def color_histogram(images: list[np.ndarray], bins: int = 32) -> np.ndarray:
    """Pooled, normalised per-channel histograms of uint8 RGB images: shape (3, bins), rows sum to 1."""
    if not images:
        raise MetricError("color_histogram needs at least one image")
    hist = np.zeros((3, bins), dtype=np.float64)
    for img in images:
        img = np.asarray(img)
        for c in range(3):
            hist[c] += np.bincount((img[..., c].astype(np.int64).ravel() * bins) // 256, minlength=bins)[
                :bins
            ]
    return hist / hist.sum(axis=1, keepdims=True)


def color_histogram_distance(images_x: list[np.ndarray], images_y: list[np.ndarray], bins: int = 32) -> float:
    """Total-variation distance between two sets' colour histograms, mean over R, G, B; in [0, 1]."""
    hx, hy = color_histogram(images_x, bins), color_histogram(images_y, bins)
    return float(0.5 * np.abs(hx - hy).sum(axis=1).mean())


def mean_finite(values: list[float], cap: float = PSNR_CAP) -> float:
    """Mean with +inf (identical images) replaced by `cap`."""
    if not values:
        return math.nan
    return float(np.mean([min(v, cap) for v in values]))


# ----------------------------------------------------------------------------- FID


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) for Gaussians N(mu, S).

    Tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of
    S1^(1/2) S2 S1^(1/2), which is symmetric PSD (no scipy needed, no complex parts).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ sigma2 @ root1
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


class FIDScorer:
    """Inception-v3 pool features -> FID between image sets. Needs torchvision and a weights file.

    Args:
        weights_path: an Inception-v3 state_dict (torchvision's `inception_v3_google-*.pth` layout).
        device: torch device string.

    Raises:
        MetricError: the weights file is missing, or torchvision cannot be imported.
    """

    def __init__(self, weights_path: str | Path, device: str = "cpu"):
        if not weights_path or not Path(weights_path).is_file():
            raise MetricError(f"FID needs an Inception-v3 weights file; not found: {weights_path}")
        import torch  # metrics other than FID stay torch-free

        try:
            from torchvision.models import inception_v3  # lazy: optional dependency
        except Exception as exc:  # ImportError, or a broken binary build
            raise MetricError(
                f"FID needs torchvision, which cannot be imported ({exc}); "
                "install a torchvision build matching your torch, or drop the FID metric"
            ) from exc
        net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
        net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        net.fc = torch.nn.Identity()
        self.net = net.eval().to(device)
        self.device = device
        self.torch = torch

    def features(self, images: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """(N, 2048) pool features of uint8 RGB images (resized to 299x299, ImageNet-normalised)."""
        torch = self.torch
        mean = torch.tensor([0.485, 0.456, 0.406], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=self.device).view(1, 3, 1, 1)
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                batch = [
                    cv2.resize(np.asarray(img), (299, 299), interpolation=cv2.INTER_LINEAR)
                    for img in images[i : i + batch_size]
                ]
                x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().to(self.device) / 255.0
                out.append(self.net((x - mean) / std).cpu().double().numpy())
        return np.concatenate(out)

    def score(self, real: list[np.ndarray], fake: list[np.ndarray]) -> float:
        """FID between two sets of uint8 RGB images (each needs >= 2 images)."""
        if len(real) < 2 or len(fake) < 2:
            raise MetricError("FID needs at least 2 images per set")
        fr, ff = self.features(real), self.features(fake)
        return frechet_distance(fr.mean(0), np.cov(fr, rowvar=False), ff.mean(0), np.cov(ff, rowvar=False))
