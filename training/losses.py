"""Losses with a narrow interface: GAN objectives, gradient penalty, feature matching, L1 and an
optional VGG perceptual/style loss.

Discriminator outputs are always list[list[Tensor]] (per scale: features, prediction last); GAN
terms read each scale's last tensor and average over scales, so loss magnitudes do not grow with
num_scales (pix2pixHD sums them instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pixforge.errors import PixforgeError

from .vocab import GAN_MODES

DPreds = Sequence[Sequence[torch.Tensor]]


def _predictions(preds: DPreds) -> list[torch.Tensor]:
    if not preds or any(len(scale) == 0 for scale in preds):
        raise ValueError("discriminator output must be a non-empty list of non-empty per-scale lists")
    return [scale[-1] for scale in preds]


class GANLoss:
    """Adversarial objective for one `mode`.

    vanilla: BCE-with-logits (non-saturating generator loss); lsgan: least squares (MSE to 1/0);
    wgangp: Wasserstein critic (pair with `gradient_penalty` in the discriminator step);
    hinge: hinge loss for D, -D(fake) for G.

    `discriminator_loss` is 0.5 * (real + fake) for vanilla/lsgan, like junyanz (slows D relative to
    G); wgangp and hinge use their papers' unscaled sums so the gradient-penalty weight keeps its
    usual meaning.
    """

    def __init__(self, mode: str, real_label: float = 1.0, fake_label: float = 0.0):
        if mode not in GAN_MODES:
            raise ValueError(f"unknown GAN mode {mode!r}; valid: {', '.join(GAN_MODES)}")
        self.mode = mode
        self.real_label = real_label
        self.fake_label = fake_label

    @property
    def uses_gradient_penalty(self) -> bool:
        """True for wgangp: the discriminator step must add `gradient_penalty(...)`."""
        return self.mode == "wgangp"

    def _term(self, pred: torch.Tensor, real: bool) -> torch.Tensor:
        if self.mode in ("vanilla", "lsgan"):
            target = torch.full_like(pred, self.real_label if real else self.fake_label)
            if self.mode == "vanilla":
                return F.binary_cross_entropy_with_logits(pred, target)
            return F.mse_loss(pred, target)
        # wgangp / hinge generator side and wgangp critic side are plain means.
        return -pred.mean() if real else pred.mean()

    def generator_loss(self, preds_fake: DPreds) -> torch.Tensor:
        """Loss for G given D's output on generated images (averaged over scales)."""
        terms = [self._term(p, real=True) for p in _predictions(preds_fake)]
        return torch.stack(terms).mean()

    def discriminator_loss(self, preds_real: DPreds, preds_fake: DPreds) -> torch.Tensor:
        """Loss for D given its output on real and on (detached) generated images."""
        real, fake = _predictions(preds_real), _predictions(preds_fake)
        if len(real) != len(fake):
            raise ValueError(f"real/fake predictions have {len(real)} vs {len(fake)} scales")
        terms = []
        for pr, pf in zip(real, fake, strict=True):
            if self.mode == "hinge":
                terms.append(F.relu(1.0 - pr).mean() + F.relu(1.0 + pf).mean())
            elif self.mode == "wgangp":
                terms.append(pf.mean() - pr.mean())
            else:
                terms.append(0.5 * (self._term(pr, real=True) + self._term(pf, real=False)))
        return torch.stack(terms).mean()


def gradient_penalty(
    discriminator: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float = 10.0,
    constant: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty `weight * E[(||grad D(x_hat)||_2 - constant)^2]` on random interpolates.

    Args:
        discriminator: returns list[list[Tensor]]; the predictions of all scales are summed.
        real / fake: discriminator inputs (for a conditional D, already concatenated with the
            condition); `fake` is detached here.
        weight: lambda_gp. constant: target gradient norm.
        generator: optional RNG for the per-sample interpolation factors.

    Returns:
        A scalar that keeps the graph (add it to the discriminator loss before backward).
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake shapes differ: {tuple(real.shape)} vs {tuple(fake.shape)}")
    alpha = torch.rand(
        (real.shape[0],) + (1,) * (real.dim() - 1), generator=generator, device="cpu", dtype=real.dtype
    ).to(real.device)
    x_hat = (alpha * real.detach() + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    score = sum(p.sum() for p in _predictions(discriminator(x_hat)))
    (grad,) = torch.autograd.grad(score, x_hat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return weight * ((norms - constant) ** 2).mean()


def feature_matching_loss(feats_real: DPreds, feats_fake: DPreds) -> torch.Tensor:
    """pix2pixHD feature matching: mean L1 between D's intermediate features (real detached).

    Averages over layers and scales; pix2pixHD's weighting (4 / (n_layers + 1) per layer, summed)
    equals 4x this value, so use lambda_feat = 40 for their lambda 10.
    """
    if len(feats_real) != len(feats_fake):
        raise ValueError(f"real/fake features have {len(feats_real)} vs {len(feats_fake)} scales")
    per_scale = []
    for fr, ff in zip(feats_real, feats_fake, strict=True):
        if len(fr) != len(ff) or len(fr) < 2:
            raise ValueError("each scale needs the same number (>= 2) of real and fake feature maps")
        layers = [F.l1_loss(b, a.detach()) for a, b in zip(fr[:-1], ff[:-1], strict=True)]
        per_scale.append(torch.stack(layers).mean())
    return torch.stack(per_scale).mean()


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (pix2pix reconstruction term)."""
    return F.l1_loss(output, target)


def l2_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error (the loss PSNR measures; a fine-tune after L1 gains a little PSNR)."""
    return F.mse_loss(output, target)


HUBER_DELTA = 0.1  # in target units: ab / 110 for colourisation (11 ab units), [-1, 1] images


def huber_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Huber loss: quadratic below HUBER_DELTA, linear above (scaled so it equals L1 - delta/2 there).

    For colourisation this is the middle road between L2, which maximises PSNR but washes an object
    that could be red or green out to the mean of both, and L1, which keeps a colour but flips between
    modes in blotches: small errors are averaged, large ones do not dominate the gradient.
    """
    return F.huber_loss(output, target, delta=HUBER_DELTA)


def cycle_loss(reconstructed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """CycleGAN cycle-consistency term ||G_B(G_A(a)) - a||_1 (mean)."""
    return F.l1_loss(reconstructed, real)


def identity_loss(same: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """CycleGAN identity term ||G_A(b) - b||_1 (mean); scale by lambda_identity * lambda_cycle."""
    return F.l1_loss(same, real)


# --- VGG perceptual / style loss --------------------------------------------------------------


class PerceptualLossUnavailable(PixforgeError, RuntimeError):
    """The VGG perceptual loss cannot be built (no weights file or no torchvision)."""


# Index of each named activation in torchvision's vgg19().features.
VGG19_LAYERS = {
    "relu1_1": 1,
    "relu1_2": 3,
    "relu2_1": 6,
    "relu2_2": 8,
    "relu3_1": 11,
    "relu3_2": 13,
    "relu3_3": 15,
    "relu3_4": 17,
    "relu4_1": 20,
    "relu4_2": 22,
    "relu4_3": 24,
    "relu4_4": 26,
    "relu5_1": 29,
    "relu5_2": 31,
    "relu5_3": 33,
    "relu5_4": 35,
}
DEFAULT_VGG_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def gram_matrix(feat: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) Gram matrix normalised by C*H*W."""
    n, c, h, w = feat.shape
    f = feat.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


class VGGPerceptualLoss(nn.Module):
    """L1 distance between frozen VGG19 activations (+ `style_weight` x Gram-matrix MSE).

    Inputs are images in [-1, 1] (1 or 3 channels). torchvision is imported here, lazily, and the
    weights come from a local file (torchvision's `vgg19-dcbb9e9d.pth` state dict): nothing is
    downloaded.

    Raises:
        PerceptualLossUnavailable: `weights_path` missing/not a file, or torchvision not importable.
    """

    def __init__(
        self,
        weights_path: str | Path | None,
        layers: Sequence[str] = DEFAULT_VGG_LAYERS,
        layer_weights: Sequence[float] | None = None,
        style_weight: float = 0.0,
    ):
        super().__init__()
        if weights_path is None or not Path(weights_path).is_file():
            raise PerceptualLossUnavailable(
                "the VGG perceptual loss needs a local VGG19 weights file (torchvision's "
                "vgg19-dcbb9e9d.pth state dict); pass its path, or set the perceptual weight to 0"
                + (f" (not a file: {weights_path})" if weights_path is not None else "")
            )
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if unknown or not layers:
            raise ValueError(f"unknown VGG layer(s) {unknown}; valid: {', '.join(VGG19_LAYERS)}")
        try:
            from torchvision.models import vgg19  # lazy: torchvision is an optional dependency
        except Exception as exc:  # ImportError, or a broken binary install raising RuntimeError
            raise PerceptualLossUnavailable(
                f"the VGG perceptual loss needs torchvision, which cannot be imported ({exc}); install a "
                "torchvision build matching your torch, or set the perceptual weight to 0"
            ) from exc
        vgg = vgg19(weights=None)
        vgg.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        last = max(VGG19_LAYERS[name] for name in layers)
        self.features = vgg.features[: last + 1].eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.layer_index = {VGG19_LAYERS[name]: i for i, name in enumerate(layers)}
        self.layer_weights = list(layer_weights) if layer_weights is not None else [1.0] * len(layers)
        if len(self.layer_weights) != len(layers):
            raise ValueError(f"{len(self.layer_weights)} layer_weights for {len(layers)} layers")
        self.style_weight = style_weight
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        super().train(mode)
        self.features.eval()  # frozen feature extractor, whatever the loop does
        return self

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = ((x + 1.0) * 0.5 - self.mean) / self.std
        acts = []
        for idx, layer in enumerate(self.features):
            x = layer(x)
            if idx in self.layer_index:
                acts.append(x)
        return acts

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        acts_out = self._activations(output)
        with torch.no_grad():
            acts_tgt = self._activations(target)
        loss = output.new_zeros(())
        for w, a, b in zip(self.layer_weights, acts_out, acts_tgt, strict=True):
            loss = loss + w * F.l1_loss(a, b)
            if self.style_weight:
                loss = loss + self.style_weight * w * F.mse_loss(gram_matrix(a), gram_matrix(b))
        return loss
