"""Every generator arch exports with the legacy TorchScript ONNX exporter with dynamic N/H/W and
matches torch in onnxruntime at two different input sizes."""

import io
import warnings

import numpy as np
import pytest
import torch

from pixforge.training.registry import GeneratorConfig, build_generator

ort = pytest.importorskip("onnxruntime")

CASES = {
    "unet": GeneratorConfig(arch="unet", depth=3, ngf=4, norm="batch"),
    "unet_sr_bicubic": GeneratorConfig(arch="unet", depth=3, ngf=4, scale=2),
    "unet_sr_pixelshuffle": GeneratorConfig(arch="unet", depth=3, ngf=4, scale=4, upsample="pixelshuffle"),
    "resnet": GeneratorConfig(arch="resnet", n_blocks=1, ngf=4),
    "resnet_sr_bicubic": GeneratorConfig(
        arch="resnet", n_blocks=1, ngf=4, scale=2, in_channels=1, out_channels=2
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generator_onnx_export_dynamic_hw(name):
    cfg = CASES[name]
    g = build_generator(cfg).eval()
    m = g.size_multiple
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter is deprecated but is our contract
        torch.onnx.export(
            g,
            torch.zeros(1, cfg.in_channels, 2 * m, 2 * m),
            buf,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            opset_version=17,
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "oh", 3: "ow"}},
        )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for n, h, w in [(1, 2 * m, 3 * m), (2, 5 * m, m)]:
        h, w = max(h, 8), max(w, 8)
        x = torch.rand(n, cfg.in_channels, h, w) * 2 - 1
        (y,) = sess.run(None, {"x": x.numpy()})
        assert y.shape == (n, cfg.out_channels, h * cfg.scale, w * cfg.scale)
        with torch.no_grad():
            np.testing.assert_allclose(y, g(x).numpy(), atol=1e-5, rtol=1e-4)
