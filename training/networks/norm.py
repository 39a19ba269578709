"""Normalisation layer factory shared by generators and discriminators (junyanz conventions)."""

from __future__ import annotations

from torch import nn

from ..vocab import NORMS


def make_norm(kind: str, channels: int) -> nn.Module:
    """Return the normalisation layer `kind` for `channels` feature maps.

    Instance norm follows junyanz: affine=False and no running statistics, so it has no state-dict
    entries at all (their old checkpoints carry stale running stats that `legacy` drops).
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}")


def conv_uses_bias(kind: str) -> bool:
    """Whether a conv followed by norm `kind` needs its own bias.

    Batch norm's beta makes a conv bias redundant (junyanz uses bias=False there). junyanz also
    drops the bias for norm "none", which leaves those convs without any offset; we keep it
    (`legacy` fills zeros when converting such checkpoints).
    """
    return kind != "batch"
