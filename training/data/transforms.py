"""Geometric preprocessing of uint8 HWC images (numpy + OpenCV), with explicit random parameters.

Random choices are drawn once per item from a `numpy.random.Generator` into a `CropParams` and then
applied identically to every image of the item (input and target of a pair get the same crop and
flip). Nothing here touches a global RNG, which is what makes data order + augmentation exactly
reproducible on resume and independent of the number of loader workers.

Preprocess modes (junyanz names):
- resize_and_crop: resize to load_size x load_size, random crop crop_size (eval: resize straight
  to crop_size, so the whole image is seen).
- crop: random crop crop_size from the image as is (eval: centre crop). With scale_min < 1 or
  scale_max > 1 the training crop is zoomed: a window of crop_size / s pixels, s drawn
  log-uniformly in [scale_min, scale_max], resized to crop_size (the same as resizing the photo by
  s, then cropping): s < 1 zooms out (shrinks), s > 1 zooms in (enlarges, bicubic).
- scale_width: resize so width = load_size keeping the aspect ratio (height at least crop_size),
  then random crop crop_size (eval: width = crop_size, then centre crop crop_size).
- none: keep the image, only cut it down to a multiple of the generator's size_multiple
  (top-left), so whole images of any size work (batch_size 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pixforge.errors import PixforgeError


class TooSmallError(PixforgeError, ValueError):
    """The image is smaller than the crop (or the size multiple) it must yield."""


@dataclass(frozen=True)
class CropParams:
    """Where to crop and whether to flip, shared by all images of one item."""

    top: int
    left: int
    size_h: int
    size_w: int
    flip: bool
    rot90: int = 0  # number of 90-degree counter-clockwise turns (super-resolution augmentation)


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with an antialiased filter going down (INTER_AREA) and bicubic going up."""
    if img.shape[1] == width and img.shape[0] == height:
        return img
    shrink = width < img.shape[1] or height < img.shape[0]
    out = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return out if out.ndim == 3 else out[:, :, None]


def make_multiple(img: np.ndarray, multiple: int) -> np.ndarray:
    """Cut the bottom/right so H and W are multiples of `multiple` (never upsamples)."""
    h, w = img.shape[:2]
    h2, w2 = h - h % multiple, w - w % multiple
    if h2 <= 0 or w2 <= 0:
        raise TooSmallError(f"image {w}x{h} is smaller than the size multiple {multiple}")
    return img[:h2, :w2]


def _scale_width_size(w: int, h: int, target_w: int, min_h: int) -> tuple[int, int]:
    new_h = max(min_h, int(round(h * target_w / w)))
    return target_w, new_h


def resize_for_mode(img: np.ndarray, mode: str, load_size: int, crop_size: int, train: bool) -> np.ndarray:
    """The resize step of `mode` (before cropping)."""
    h, w = img.shape[:2]
    if mode == "resize_and_crop":
        side = load_size if train else crop_size
        return resize(img, side, side)
    if mode == "scale_width":
        target = load_size if train else crop_size
        return resize(img, *_scale_width_size(w, h, target, crop_size))
    return img


def sample_params(
    rng: np.random.Generator | None, h: int, w: int, crop: int | None, flip: bool, rot90: bool = False
) -> CropParams:
    """Draw crop offsets (random with `rng`, centred without) and flip/rotation for an h x w image.

    Args:
        rng: None for deterministic evaluation (centre crop, no flip).
        crop: crop side, or None for no crop.
    """
    ch, cw = (h, w) if crop is None else (crop, crop)
    if ch > h or cw > w:
        raise TooSmallError(f"image {w}x{h} is smaller than the {cw}x{ch} crop")
    if rng is None:
        return CropParams((h - ch) // 2, (w - cw) // 2, ch, cw, False, 0)
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    do_flip = bool(flip and rng.random() < 0.5)
    turns = int(rng.integers(0, 4)) if rot90 else 0
    return CropParams(top, left, ch, cw, do_flip, turns)


def apply_params(img: np.ndarray, p: CropParams, factor: int = 1) -> np.ndarray:
    """Crop/flip/rotate `img` with params drawn for an image `factor` times smaller."""
    out = img[p.top * factor : (p.top + p.size_h) * factor, p.left * factor : (p.left + p.size_w) * factor]
    if p.flip:
        out = out[:, ::-1]
    if p.rot90:
        out = np.rot90(out, p.rot90)
    return np.ascontiguousarray(out)


@dataclass(frozen=True)
class Geometry:
    """How the `aligned`, `unaligned` and `colorization` datasets cut an item out of a decoded image:
    the `data.preprocess` mode with its sizes and flip, and the generator's size multiple."""

    preprocess: str
    load_size: int
    crop_size: int
    flip: bool
    size_multiple: int
    scale_min: float = 1.0  # preprocess crop, training only: zoom range [scale_min, scale_max]
    scale_max: float = 1.0  # (both 1: native scale)

    def apply(self, images: list[np.ndarray], rng: np.random.Generator | None) -> list[np.ndarray]:
        """Resize + crop/flip the images of one item per the mode, all with the same random
        parameters (an aligned pair's input and target get the same crop and flip); images after
        the first are resized to the first one's size when they differ. `rng` None: evaluation
        (deterministic crop, no flip).

        Raises:
            TooSmallError: an image is smaller than the crop or the size multiple.
        """
        mode = self.preprocess
        if mode == "crop" and rng is not None and (self.scale_min < 1.0 or self.scale_max > 1.0):
            zoomed = self._zoomed_crop(images, rng)
            if zoomed is not None:
                return zoomed
        resized = [
            resize_for_mode(img, mode, self.load_size, self.crop_size, rng is not None) for img in images
        ]
        h, w = resized[0].shape[:2]
        resized = [img if img.shape[:2] == (h, w) else resize(img, w, h) for img in resized]
        if mode == "none":
            resized = [make_multiple(img, self.size_multiple) for img in resized]
        crop = None if mode == "none" else self.crop_size
        p = sample_params(rng, resized[0].shape[0], resized[0].shape[1], crop, self.flip)
        return [apply_params(img, p) for img in resized]

    def _zoomed_crop(self, images: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray] | None:
        """A training crop seen from further away or closer up, or None when the image is too
        small for the crop.

        Why: a model trained on native-scale crops only ever sees objects at the size they have in
        the training photos. A close-up (a face filling a 512-pixel photo) then looks like nothing
        it knows (a plain bright surface: sky or wall) and gets the wrong colour. Enlarging a
        smaller window (s > 1) shows the photos' small objects, faces among them, at close-up size;
        shrinking a larger one (s < 1, INTER_AREA) shows them smaller, with more context.
        """
        h, w = images[0].shape[:2]
        crop = self.crop_size
        if min(h, w) < crop:
            return None  # the plain path raises TooSmallError with the sizes
        low = max(self.scale_min, crop / min(h, w))  # a window larger than the photo cannot be cut
        high = max(self.scale_max, low)
        s = float(np.exp(rng.uniform(np.log(low), np.log(high)))) if low < high else low
        side = max(1, min(h, w, int(round(crop / s))))
        p = sample_params(rng, h, w, side, self.flip)
        return [resize(apply_params(img, p), crop, crop) for img in images]
