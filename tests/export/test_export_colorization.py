"""Colourisation export: RGB photo in (grey replicated or colour), RGB photo out, Lab inside the graph."""

from __future__ import annotations

import numpy as np
import torch
from export_helpers import KINDS, ort_run, quiet, tiny_generator

from pixforge.contract import load_contract
from pixforge.training import image_ops
from pixforge.training.export import ExportConfig, export_generator
from pixforge.training.export.parity import parity_batch


def _lab(batch: np.ndarray) -> np.ndarray:
    rgb = image_ops.uint8_to_float01(torch.from_numpy(batch).permute(0, 3, 1, 2))
    return image_ops.rgb_to_lab(rgb).permute(0, 2, 3, 1).numpy()


def test_export_colorization_turns_gray_into_colour_and_keeps_luminance(repo):
    gen_kwargs, export_kwargs = KINDS["colorization"]
    generator = tiny_generator(**gen_kwargs)
    path = export_generator(generator, ExportConfig(**export_kwargs), repo, "colour", log=quiet).path
    contract = load_contract(path)
    assert (contract.task, contract.input_channels, contract.output_channels) == ("colorization", 3, 3)
    assert contract.metadata["color_space"] == "lab"

    photo = parity_batch(48, 64, 3, seed=11)[1:2]
    gray = np.repeat(photo.mean(axis=-1, keepdims=True).round().astype(np.uint8), 3, axis=-1)
    out = ort_run(path, gray)
    assert out.shape == (1, 48, 64, 3) and out.dtype == np.uint8
    # grey in (R == G == B) -> colour out
    assert (out[..., 0] != out[..., 1]).mean() > 0.5 or (out[..., 1] != out[..., 2]).mean() > 0.5
    assert np.abs(_lab(out)[..., 1:]).mean() > 3.0
    # the output keeps the input's luminance: only ab is predicted (gamut clipping moves L a little)
    dl = np.abs(_lab(out)[..., 0] - _lab(gray)[..., 0])
    assert np.median(dl) < 1.0 and dl.mean() < 3.0

    # the generator sees L/50 - 1 of the input and its ab/110 lands in the output
    with torch.no_grad():
        rgb = image_ops.uint8_to_float01(torch.from_numpy(gray).permute(0, 3, 1, 2))
        ab = generator.eval()(image_ops.rgb_to_l_input(rgb))
    expected = image_ops.float01_to_uint8(image_ops.lab_output_to_rgb(image_ops.rgb_to_l_input(rgb), ab))
    diff = np.abs(out.astype(int) - expected.permute(0, 2, 3, 1).numpy().astype(int))
    assert (diff <= 1).mean() >= 0.999


def test_export_colorization_recolours_a_colour_photo(repo):
    gen_kwargs, export_kwargs = KINDS["colorization"]
    path = export_generator(
        tiny_generator(**gen_kwargs), ExportConfig(**export_kwargs), repo, "c", log=quiet
    ).path
    photo = parity_batch(32, 32, 3, seed=5)[1:2]
    out = ort_run(path, photo)
    # the input's own chroma is discarded, its L is kept: same L as the photo, new ab
    assert np.median(np.abs(_lab(out)[..., 0] - _lab(photo)[..., 0])) < 1.0
    assert np.abs(_lab(out)[..., 1:] - _lab(photo)[..., 1:]).mean() > 3.0
