"""Stochastic depth as the official NF code does it."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelSpecError


class StochasticDepth(nn.Module):
    """Drop a residual branch per example during training.

    Official behaviour (DeepMind ``base.StochDepth``): mask = floor(keep + U[0, 1)) per example and the
    surviving branches are *not* rescaled. ``scale_by_keep=True`` gives the timm/torchvision variant
    that divides by the keep probability. Identity in eval mode or when ``rate == 0``.
    """

    def __init__(self, rate: float, scale_by_keep: bool = False) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ModelSpecError(f"stochastic depth rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.scale_by_keep = scale_by_keep

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """The per-example multiplier (shape N×1×…), or None when nothing is dropped."""
        if not self.training or self.rate == 0.0:
            return None
        return drop_mask(x, self.rate, self.scale_by_keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.keep_mask(x)
        return x if mask is None else x * mask

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4g}, scale_by_keep={self.scale_by_keep}"


def drop_mask(x: torch.Tensor, rate: float, scale_by_keep: bool) -> torch.Tensor:
    """Per-example keep mask (N×1×…) for stochastic depth at ``rate`` (a ``torch.fx`` leaf)."""
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = torch.floor(keep + torch.rand(shape, dtype=x.dtype, device=x.device))
    return mask / keep if scale_by_keep else mask


torch.fx.wrap("drop_mask")


def block_drop_rates(rate: float, num_blocks: int) -> list[float]:
    """Official schedule: block i (0-based, global) gets rate·i/N, so the first block never drops."""
    return [rate * i / num_blocks for i in range(num_blocks)]
