"""`super_resolution` datasets: any folder of photos (searched recursively) becomes HR/LR pairs.

Design choice (docs/training.md "Super-resolution data"): only high-resolution images are stored;
the low-resolution input is made on the fly from each random HR crop, so any photo folder works
and every epoch sees new crops.

- HR: a random `crop_size` crop (a multiple of `scale`), random flip and 90-degree rotation.
- LR: HR downscaled by `scale`. Default `lr_resize: bicubic_aa` = antialiased bicubic
  (torch `interpolate(mode="bicubic", antialias=True)`, the Keys a = -0.5 kernel widened by the
  scale factor: the same construction as MATLAB `imresize`, which made the LR images of the SR
  benchmarks). `cv2_cubic` = OpenCV INTER_CUBIC (a = -0.75, no antialiasing: aliased LR, kept
  for comparison with code that uses it). LR is rounded to uint8 because that is what a served
  model receives.
- Optional degradations, each applied with probability `degrade_prob`: Gaussian blur of the HR
  before downscaling (sigma ~ U(0.2, blur_sigma)), Gaussian noise on the LR (sigma ~ U(0,
  noise_sigma) in 0..255 units), JPEG re-compression of the LR (quality ~ U[jpeg_quality, 95]).
- Evaluation items: whole images (or a centre `val_size` crop), cut to a multiple of
  scale * size_multiple (top-left, "modcrop"); degradations, when enabled, use a fixed per-image
  RNG so the validation set is the same every time.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .base import KeyedDataset, too_small_is_bad
from .transforms import apply_params, make_multiple, sample_params

# Key of the fixed RNG stream used for evaluation-time degradations.
_VAL_EPOCH = 2**31 - 1


def resize_bicubic_aa(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 HWC -> uint8 HWC of (height, width) by antialiased bicubic (Keys a = -0.5, widened when
    shrinking: PIL's BICUBIC and MATLAB `imresize`, the SR literature's resize in both directions)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(torch.float32)
    y = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return torch.floor(y.clamp(0, 255) + 0.5).to(torch.uint8)[0].permute(1, 2, 0).contiguous().numpy()


def downscale(hr: np.ndarray, scale: int, method: str = "bicubic_aa") -> np.ndarray:
    """uint8 HWC HR image -> uint8 LR image of size (H // scale, W // scale).

    Args:
        method: "bicubic_aa" (antialiased bicubic, MATLAB imresize-like) or "cv2_cubic".
    """
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    if method == "cv2_cubic":
        out = cv2.resize(hr, (w, h), interpolation=cv2.INTER_CUBIC)
        return out if out.ndim == 3 else out[:, :, None]
    return resize_bicubic_aa(hr, h, w)


def degrade(
    hr: np.ndarray,
    scale: int,
    method: str,
    rng: np.random.Generator | None,
    *,
    blur_sigma: float,
    noise_sigma: float,
    jpeg_quality: int,
    prob: float,
) -> np.ndarray:
    """HR crop -> LR input: optional blur, downscale, optional noise and JPEG (see module doc)."""
    if rng is not None and blur_sigma > 0 and rng.random() < prob:
        sigma = float(rng.uniform(0.2, max(0.2, blur_sigma)))
        hr = cv2.GaussianBlur(hr, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)
        hr = hr if hr.ndim == 3 else hr[:, :, None]
    lr = downscale(hr, scale, method)
    if rng is not None and noise_sigma > 0 and rng.random() < prob:
        sigma = float(rng.uniform(0.0, noise_sigma))
        noisy = lr.astype(np.float32) + rng.normal(0.0, sigma, lr.shape).astype(np.float32)
        lr = np.clip(np.floor(noisy + 0.5), 0, 255).astype(np.uint8)
    if rng is not None and jpeg_quality > 0 and rng.random() < prob:
        quality = int(rng.integers(jpeg_quality, 96))
        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(lr, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        if ok:
            lr = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(lr)


class SuperResolutionDataset(KeyedDataset):
    """Items: {"input": LR (3, h, w), "target": HR (3, h*scale, w*scale)} in [-1, 1], and "path"."""

    def __init__(
        self,
        files: list[str],
        *,
        scale: int,
        crop_size: int,
        flip: bool,
        rot90: bool,
        lr_resize: str,
        size_multiple: int,
        seed: int,
        train: bool,
        val_size: int = 0,
        blur_sigma: float = 0.0,
        noise_sigma: float = 0.0,
        jpeg_quality: int = 0,
        degrade_prob: float = 0.5,
    ):
        super().__init__(seed, train)
        self.files = list(files)
        self.scale = scale
        self.crop_size = crop_size
        self.flip = flip
        self.rot90 = rot90
        self.lr_resize = lr_resize
        self.size_multiple = size_multiple
        self.val_size = val_size
        self.degrade_kwargs = dict(
            blur_sigma=blur_sigma, noise_sigma=noise_sigma, jpeg_quality=jpeg_quality, prob=degrade_prob
        )

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        path = self.files[index]
        hr = self.read_image(path)
        with too_small_is_bad(path):
            if rng is not None:
                p = sample_params(rng, hr.shape[0], hr.shape[1], self.crop_size, self.flip, self.rot90)
                hr = apply_params(hr, p)
                degrade_rng = rng
            else:
                if self.val_size and min(hr.shape[:2]) > self.val_size:
                    hr = apply_params(hr, sample_params(None, hr.shape[0], hr.shape[1], self.val_size, False))
                hr = make_multiple(hr, self.scale * self.size_multiple)
                degrade_rng = np.random.default_rng([self.seed, _VAL_EPOCH, index])
        lr = degrade(hr, self.scale, self.lr_resize, degrade_rng, **self.degrade_kwargs)
        return {"input": self.to_unit_tensor(lr), "target": self.to_unit_tensor(hr), "path": path}
