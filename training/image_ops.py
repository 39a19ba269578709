"""Pixel conventions: the ONE owner of every pixel conversion (docs/model-contract.md "Pixel semantics").

Pure torch functions of tensors (no module state, no options) used by BOTH the datasets and the
ONNX export wrapper, so training and serving cannot drift. Every op here is exportable by the
legacy TorchScript ONNX exporter (Cast, Div, Sub, Pow, Where, MatMul-free channel mixing, Floor,
Clip), so the same code runs inside the exported graph.

Conventions:
- Channel axis is ``-3``: functions accept ``(C, H, W)`` and ``(N, C, H, W)`` alike.
- RGB images for the networks: ``x / 127.5 - 1`` in [-1, 1].
- Colourisation works in CIE Lab (D65 white, sRGB companding) with the same numbers as OpenCV's
  float32 ``cv2.COLOR_RGB2Lab`` / ``cv2.COLOR_Lab2RGB``: the generator takes ``L / 50 - 1``
  (1 channel) and predicts ``ab / 110`` (2 channels).
- Back to uint8: clamp to [0, 255] then ``floor(v + 0.5)`` (round half up). ``torch.round`` and
  ONNX ``Round`` round half to even; floor(v + 0.5) is written out so the graph and the reference
  round identically.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "uint8_to_unit",
    "unit_to_uint8",
    "uint8_to_float01",
    "float01_to_uint8",
    "rgb_to_lab",
    "lab_to_rgb",
    "rgb_to_l_input",
    "rgb_to_ab_target",
    "rgb_to_lab_pair",
    "lab_output_to_rgb",
    "hwc_uint8_to_unit_tensor",
    "unit_tensor_to_hwc_uint8",
    "rgb_uint8_to_lab_np",
]

# sRGB (D65) -> CIE XYZ, the matrix OpenCV uses (imgproc/color_lab.cpp, sRGB2XYZ_D65).
_RGB2XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
# Its inverse, as OpenCV uses it (XYZ2sRGB_D65).
_XYZ2RGB = (
    (3.240479, -1.53715, -0.498535),
    (-0.969256, 1.875991, 0.041556),
    (0.055648, -0.204043, 1.057311),
)
_WHITE_D65 = (0.950456, 1.0, 1.088754)
_EPS = 0.008856  # (6/29)^3: CIE linear/cube-root switch point
_KAPPA = 903.3  # CIE kappa (L of the linear segment)
_F_SLOPE = 7.787  # 1 / (3 * (6/29)^2)
_F_OFFSET = 16.0 / 116.0

# Colourisation generator scaling: L/50 - 1 in, ab/110 out (docs/model-contract.md "Pixel semantics").
L_SCALE = 50.0
AB_SCALE = 110.0


# ----------------------------------------------------------------------------- uint8 <-> float
def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or float 0..255) image -> float32 in [-1, 1] as ``x / 127.5 - 1``."""
    return x.to(torch.float32) / 127.5 - 1.0


def unit_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float image in [-1, 1] -> uint8: clamp to [0, 255], round half up (``floor(v + 0.5)``)."""
    return float01_to_uint8((x + 1.0) * 0.5)


def uint8_to_float01(x: torch.Tensor) -> torch.Tensor:
    """uint8 image -> float32 in [0, 1] (``x / 255``)."""
    return x.to(torch.float32) / 255.0


def float01_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float image in [0, 1] -> uint8: scale by 255, clamp, round half up."""
    v = torch.clamp(x.to(torch.float32) * 255.0, 0.0, 255.0)
    return torch.floor(v + 0.5).to(torch.uint8)


# ----------------------------------------------------------------------------- colour spaces
def _mix(x: torch.Tensor, matrix) -> torch.Tensor:
    # Channel mixing written as per-channel multiply-adds (not einsum/matmul): it exports to plain
    # Mul/Add on any opset, keeps the channel axis at -3 for CHW and NCHW, and every float op stays
    # inside what ORT's fp16 path handles.
    c0, c1, c2 = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    rows = [c0 * m[0] + c1 * m[1] + c2 * m[2] for m in matrix]
    return torch.cat(rows, dim=-3)


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    # clamp before pow: a negative base gives NaN in the unselected branch of the ONNX Where.
    hi = torch.pow((torch.clamp(c, min=0.04045) + 0.055) / 1.055, 2.4)
    return torch.where(c <= 0.04045, c / 12.92, hi)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    hi = 1.055 * torch.pow(torch.clamp(c, min=0.0031308), 1.0 / 2.4) - 0.055
    return torch.where(c <= 0.0031308, c * 12.92, hi)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    cube_root = torch.pow(torch.clamp(t, min=_EPS), 1.0 / 3.0)
    return torch.where(t > _EPS, cube_root, _F_SLOPE * t + _F_OFFSET)


def _lab_f_inv(f: torch.Tensor) -> torch.Tensor:
    # (6/29) is where f(t) switches branch; f^3 above it, the linear segment inverted below.
    return torch.where(f > 6.0 / 29.0, f * f * f, (f - _F_OFFSET) / _F_SLOPE)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (channel axis -3) -> CIE Lab (L in [0, 100], a/b roughly [-128, 127]).

    OpenCV's float32 ``cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)`` conversion (D65, sRGB gamma): the same
    formulas; measured on a photo (Set5 baby.png) a and b agree within 0.05.
    """
    lin = _srgb_to_linear(rgb.to(torch.float32))
    xyz = _mix(lin, _RGB2XYZ)
    x = xyz[..., 0:1, :, :] / _WHITE_D65[0]
    y = xyz[..., 1:2, :, :]
    z = xyz[..., 2:3, :, :] / _WHITE_D65[2]
    fx, fy, fz = _lab_f(x), _lab_f(y), _lab_f(z)
    l_chan = torch.where(y > _EPS, 116.0 * fy - 16.0, _KAPPA * y)
    a_chan = 500.0 * (fx - fy)
    b_chan = 200.0 * (fy - fz)
    return torch.cat([l_chan, a_chan, b_chan], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (channel axis -3) -> sRGB in [0, 1] (out-of-gamut colours clamped).

    Inverse of :func:`rgb_to_lab`; matches OpenCV's float32 ``cv2.COLOR_Lab2RGB``.
    """
    lab = lab.to(torch.float32)
    l_chan, a_chan, b_chan = lab[..., 0:1, :, :], lab[..., 1:2, :, :], lab[..., 2:3, :, :]
    # f(Y) straight from L: L = 116 f(Y) - 16 on both branches (the linear one, kappa * Y, is the
    # same line: slope / kappa = 1/116 up to the rounding of OpenCV's constants). This saves the
    # served graph a Pow and a cube root per pixel over computing Y first and f(Y) from it.
    fy = (l_chan + 16.0) / 116.0
    y = torch.where(l_chan > _KAPPA * _EPS, fy * fy * fy, l_chan / _KAPPA)
    x = _lab_f_inv(fy + a_chan / 500.0) * _WHITE_D65[0]
    z = _lab_f_inv(fy - b_chan / 200.0) * _WHITE_D65[2]
    lin = _mix(torch.cat([x, y, z], dim=-3), _XYZ2RGB)
    return torch.clamp(_linear_to_srgb(torch.clamp(lin, 0.0, 1.0)), 0.0, 1.0)


# ----------------------------------------------------------------------------- colourisation I/O
def rgb_to_l_input(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> the colourisation generator's input ``L / 50 - 1`` (1 channel)."""
    return rgb_to_lab(rgb)[..., 0:1, :, :] / L_SCALE - 1.0


# sRGB -> linear for each of the 256 uint8 levels, computed once in float64.
_LEVELS = np.arange(256, dtype=np.float64) / 255.0
_SRGB_TO_LINEAR_U8 = torch.from_numpy(
    np.where(_LEVELS <= 0.04045, _LEVELS / 12.92, ((_LEVELS + 0.055) / 1.055) ** 2.4).astype(np.float32)
)


def uint8_rgb_to_l_input(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 sRGB (channel axis -3) -> ``L / 50 - 1``, as :func:`rgb_to_l_input` of ``rgb / 255``.

    For the served graph: a uint8 input has 256 levels, so the sRGB linearisation is a table
    lookup (one Gather instead of Pow/Where per channel and pixel), and only Y is mixed and only L
    computed (the input's a/b are never used). Equal to the float path to ~1e-5 in L.
    """
    lin = _SRGB_TO_LINEAR_U8[rgb.to(torch.int64)]
    row = _RGB2XYZ[1]
    y = lin[..., 0:1, :, :] * row[0] + lin[..., 1:2, :, :] * row[1] + lin[..., 2:3, :, :] * row[2]
    l_chan = torch.where(y > _EPS, 116.0 * _lab_f(y) - 16.0, _KAPPA * y)
    return l_chan / L_SCALE - 1.0


def rgb_to_ab_target(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> the colourisation generator's target ``ab / 110`` (2 channels)."""
    return rgb_to_lab(rgb)[..., 1:3, :, :] / AB_SCALE


def rgb_to_lab_pair(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sRGB in [0, 1] -> ``(L/50 - 1, ab/110)``: a colourisation training pair in one Lab pass."""
    lab = rgb_to_lab(rgb)
    return lab[..., 0:1, :, :] / L_SCALE - 1.0, lab[..., 1:3, :, :] / AB_SCALE


def lab_output_to_rgb(l_input: torch.Tensor, ab_out: torch.Tensor) -> torch.Tensor:
    """Recombine the generator's input L (``L/50 - 1``) and predicted ab (``ab/110``) -> sRGB [0, 1]."""
    l_chan = (l_input + 1.0) * L_SCALE
    return lab_to_rgb(torch.cat([l_chan, ab_out * AB_SCALE], dim=-3))


# ----------------------------------------------------------------------------- numpy helpers
def hwc_uint8_to_unit_tensor(image: np.ndarray) -> torch.Tensor:
    """A decoded uint8 ``(H, W, C)`` array (pixforge.codec) -> float ``(C, H, W)`` tensor in [-1, 1]."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 (H, W, C) image, got {image.dtype} with shape {image.shape}")
    return uint8_to_unit(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))


def unit_tensor_to_hwc_uint8(tensor: torch.Tensor) -> np.ndarray:
    """A float ``(C, H, W)`` tensor in [-1, 1] -> uint8 ``(H, W, C)`` array (for saving samples)."""
    if tensor.dim() != 3:
        raise ValueError(f"expected a (C, H, W) tensor, got shape {tuple(tensor.shape)}")
    return unit_to_uint8(tensor.detach().cpu()).permute(1, 2, 0).contiguous().numpy()


def rgb_uint8_to_lab_np(image: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` -> float32 Lab ``(H, W, 3)`` (same numbers as :func:`rgb_to_lab`)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} with shape {image.shape}")
    rgb = uint8_to_float01(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    return rgb_to_lab(rgb).permute(1, 2, 0).contiguous().numpy()
