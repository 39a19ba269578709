"""GAN losses on hand-computed cases, gradient penalty, feature matching and the VGG loss errors."""

import math
import sys
import types

import pytest
import torch
from torch import nn

from pixforge.training.losses import (
    GANLoss,
    PerceptualLossUnavailable,
    VGGPerceptualLoss,
    cycle_loss,
    feature_matching_loss,
    gradient_penalty,
    l1_loss,
)


def _p(*values):
    """One-scale discriminator output whose prediction map holds `values`."""
    return [[torch.zeros(1), torch.tensor(values).view(1, 1, 1, -1)]]


def _softplus(v):
    return math.log1p(math.exp(v))


def test_vanilla_hand_case():
    gan = GANLoss("vanilla")
    # BCE(logit, 1) = softplus(-logit); BCE(logit, 0) = softplus(logit)
    assert gan.generator_loss(_p(0.0)).item() == pytest.approx(math.log(2))
    assert gan.generator_loss(_p(-1.0)).item() == pytest.approx(_softplus(1.0))
    d = gan.discriminator_loss(_p(2.0, 0.0), _p(-1.0))
    expected = 0.5 * ((_softplus(-2.0) + _softplus(0.0)) / 2 + _softplus(-1.0))
    assert d.item() == pytest.approx(expected, rel=1e-6)


def test_lsgan_hand_case():
    gan = GANLoss("lsgan")
    assert gan.generator_loss(_p(0.5, 1.0)).item() == pytest.approx(0.125)
    # real (0.5-1)^2, (1.5-1)^2 -> 0.25; fake 0.5^2 -> 0.25
    assert gan.discriminator_loss(_p(0.5, 1.5), _p(0.5)).item() == pytest.approx(0.25)


def test_hinge_hand_case():
    gan = GANLoss("hinge")
    assert gan.discriminator_loss(_p(0.5, 2.0), _p(-0.5, 1.0)).item() == pytest.approx(0.25 + 1.25)
    assert gan.generator_loss(_p(-0.5, 1.0)).item() == pytest.approx(-0.25)


def test_wgan_hand_case():
    gan = GANLoss("wgangp")
    assert gan.uses_gradient_penalty and not GANLoss("hinge").uses_gradient_penalty
    assert gan.discriminator_loss(_p(3.0, 1.0), _p(-1.0, 0.0)).item() == pytest.approx(-0.5 - 2.0)
    assert gan.generator_loss(_p(-1.0, 0.0)).item() == pytest.approx(0.5)


def test_multiscale_losses_average_over_scales():
    gan = GANLoss("lsgan")
    preds = [[torch.full((1, 1, 2, 2), 0.0)], [torch.full((1, 1, 1, 1), 2.0)]]
    assert gan.generator_loss(preds).item() == pytest.approx((1.0 + 1.0) / 2)
    with pytest.raises(ValueError, match="scales"):
        gan.discriminator_loss(preds, preds[:1])
    with pytest.raises(ValueError, match="valid: vanilla, lsgan, wgangp, hinge"):
        GANLoss("relativistic")


class _LinearCritic(nn.Module):
    """D(x) = 1x1 conv, so grad_x sum D = w at every pixel: ||grad|| = ||w|| * sqrt(H*W)."""

    def __init__(self, weight):
        super().__init__()
        self.conv = nn.Conv2d(len(weight), 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(weight).view(1, -1, 1, 1))

    def forward(self, x):
        return [[x, self.conv(x)]]


def test_gradient_penalty_value_and_gradients():
    critic = _LinearCritic([0.3, 0.4, 0.0])  # ||w|| = 0.5
    real, fake = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    gp = gradient_penalty(critic, real, fake, weight=10.0)
    expected = 10.0 * (0.5 * 4 - 1.0) ** 2  # sqrt(16) pixels -> norm 2
    assert gp.item() == pytest.approx(expected, rel=1e-5)
    gp.backward()
    assert critic.conv.weight.grad is not None and critic.conv.weight.grad.abs().sum() > 0


def test_gradient_penalty_on_real_discriminator_is_nonzero():
    from pixforge.training.registry import DiscriminatorConfig, build_discriminator

    d = build_discriminator(DiscriminatorConfig(arch="multiscale", in_channels=3, ndf=4, num_scales=2))
    gp = gradient_penalty(
        d, torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64), generator=torch.Generator().manual_seed(1)
    )
    assert gp.item() > 0
    gp.backward()
    # Every conv weight shapes grad_x D (biases after the last nonlinearity cannot).
    weights = [p for p in d.parameters() if p.dim() == 4]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def test_feature_matching_hand_case():
    real = [[torch.ones(1, 2, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]]
    fake = [[torch.zeros(1, 2, 2, 2), torch.full((1, 1, 2, 2), 2.0), torch.ones(1, 1, 1, 1)]]
    assert feature_matching_loss(real, fake).item() == pytest.approx((1.0 + 2.0) / 2)  # pred ignored
    # two scales average; real features are detached
    r = torch.ones(1, 1, 2, 2, requires_grad=True)
    f = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss = feature_matching_loss(real + [[r, torch.zeros(1)]], fake + [[f, torch.zeros(1)]])
    assert loss.item() == pytest.approx((1.5 + 1.0) / 2)
    loss.backward()
    assert r.grad is None and f.grad is not None


def test_l1_helpers():
    a, b = torch.zeros(2, 3), torch.full((2, 3), 0.5)
    assert l1_loss(a, b).item() == pytest.approx(0.5)
    assert cycle_loss(a, b).item() == pytest.approx(0.5)


def test_vgg_loss_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(PerceptualLossUnavailable, match="VGG19 weights file"):
        VGGPerceptualLoss(None)
    with pytest.raises(PerceptualLossUnavailable, match="not a file"):
        VGGPerceptualLoss(tmp_path / "missing.pth")


def test_vgg_loss_without_torchvision_is_a_clear_error(tmp_path, monkeypatch):
    weights = tmp_path / "vgg19.pth"
    torch.save({}, weights)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(PerceptualLossUnavailable, match="needs torchvision"):
        VGGPerceptualLoss(weights)


class _TinyVGG(nn.Module):
    """Stand-in for torchvision's vgg19 with the same `features` indexing but 4 channels."""

    def __init__(self, weights=None):
        super().__init__()
        layers, c_in = [], 3
        for idx in range(37):
            conv_slots = {0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34}
            if idx in conv_slots:
                layers.append(nn.Conv2d(c_in, 4, 3, padding=1))
                c_in = 4
            elif idx in (4, 9, 18, 27, 36):
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)


def test_vgg_loss_computes_with_given_weights(tmp_path, monkeypatch):
    fake_tv = types.ModuleType("torchvision")
    fake_models = types.ModuleType("torchvision.models")
    fake_models.vgg19 = _TinyVGG
    fake_tv.models = fake_models
    monkeypatch.setitem(sys.modules, "torchvision", fake_tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", fake_models)
    weights = tmp_path / "vgg19.pth"
    torch.save(_TinyVGG().state_dict(), weights)

    loss = VGGPerceptualLoss(weights, layers=("relu1_1", "relu2_1"))
    styled = VGGPerceptualLoss(weights, layers=("relu1_1", "relu2_1"), style_weight=100.0)
    styled.load_state_dict(loss.state_dict())
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    y = (torch.rand(1, 3, 8, 8) * 2 - 1).requires_grad_(True)
    assert loss(x, x).item() == 0.0
    value = loss(y, x)
    assert value.item() > 0 and styled(y, x).item() > value.item()
    value.backward()
    assert y.grad is not None and all(p.grad is None for p in loss.parameters())
    assert loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)).item() == 0.0  # gray input
    with pytest.raises(ValueError, match="relu9_9"):
        VGGPerceptualLoss(weights, layers=("relu9_9",))
